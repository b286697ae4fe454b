"""Policy evaluation: the tuned policy against a baseline on held-out prompts.

For each prompt one completion is sampled from the policy and one from the baseline (same sampling settings), and:

- **win-rate** by the reward model: P(r(policy) > r(baseline)) with ties counted half, and a 95% bootstrap
  confidence interval over prompts; by a gold preference too when one is given (the demo's hidden guidelines);
- **KL(policy || baseline)**, a sampled estimate: the mean over policy samples of
  sum_t [log pi(y_t | x, y_<t) - log pi_base(y_t | x, y_<t)] (the k1 estimator, unbiased; needs one tokenizer),
  with its standard error. A KL is never negative, so a negative estimate is flagged (``kl_negative``): within
  its noise of 0 it counts as its 95% upper bound for the ``max_kl`` gate; below that it is no figure at all;
- **length** of the completions (tokens and words);
- **rule violations** (tether.checks.rules): the fraction of completions that trip a ``pii`` or ``forbidden`` rule, and
  each rule's rate; personal data alone (tether.checks.pii) when no rules file is given;
- **refusals** on red-team prompts (SimpleSafetyTests, AdvBench: higher is better) and on XSTest's safe prompts
  that look unsafe (over-refusal: lower is better), by the refusal detector (tether.checks.refusal);
- **sample pairs**, side by side, for the report.

The reward-model part of evaluation (accuracy, calibration) lives in tether/evaluate.py.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tether.checks.refusal import is_refusal
from tether.errors import TetherError
from tether.models.reward_eval import bootstrap_interval

VIOLATION_KINDS = ("pii", "forbidden")


# ---------------------------------------------------------------------------------------------------------------
# Statistics (pure functions, tested by hand)
# ---------------------------------------------------------------------------------------------------------------


def win_outcomes(policy_scores: Sequence[float], baseline_scores: Sequence[float], tie_margin: float = 0.0) -> np.ndarray:
    """Per prompt: 1 when the policy's score is higher, 0 when lower, 0.5 within ``tie_margin``. shape (N,)."""
    diff = np.asarray(policy_scores, dtype=np.float64) - np.asarray(baseline_scores, dtype=np.float64)
    return np.where(np.abs(diff) <= tie_margin, 0.5, (diff > 0).astype(np.float64))


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (tether.models.reward_eval's, with 2,000
    resamples)."""
    return bootstrap_interval(np.asarray(values, dtype=np.float64), resamples=n_boot, level=level, seed=seed)


def win_rate(policy_scores: Sequence[float], baseline_scores: Sequence[float], *, tie_margin: float = 0.0, seed: int = 0) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high", "wins", "ties", "losses", "n"}``."""
    outcomes = win_outcomes(policy_scores, baseline_scores, tie_margin)
    low, high = bootstrap_ci(outcomes, seed=seed)
    return {
        "value": float(outcomes.mean()) if len(outcomes) else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "wins": int((outcomes == 1).sum()),
        "ties": int((outcomes == 0.5).sum()),
        "losses": int((outcomes == 0).sum()),
        "n": int(len(outcomes)),
    }


def violations(rules: Any, texts: Sequence[str]) -> tuple[list[bool], dict[str, float]]:
    """Which texts violate a pii/forbidden rule, and each such rule's violation rate."""
    flagged = [False] * len(texts)
    by_rule: dict[str, float] = {}
    for rule in rules.rules:
        if rule.kind not in VIOLATION_KINDS:
            continue
        hits = [rule.value(t) < 0 for t in texts]
        by_rule[rule.name] = sum(hits) / max(1, len(texts))
        flagged = [f or h for f, h in zip(flagged, hits)]
    return flagged, by_rule


def default_rules() -> Any:
    """Personal data only: what a policy must never write, whatever the task."""
    from tether.checks.rules import parse_rules

    return parse_rules({"rules": [{"name": "pii", "pii": "all"}]}, "default rules")


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------


def load_prompts(path: Path, limit: int | None = None) -> list[Any]:
    """Prompts from a file of prompt rows (JSONL/JSON/CSV/parquet with a ``prompt`` field, or preference rows)."""
    from tether.data.rows import load_rows

    rows = load_rows(str(path), "prompt")
    prompts = [r["prompt"] for r in rows]
    return prompts[:limit] if limit else prompts


def _csv_column(path: Path, column: str, where: dict[str, str] | None = None) -> list[str]:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r[column] for r in rows if r.get(column) and all(r.get(k) == v for k, v in (where or {}).items())]


def load_redteam(path: Path) -> dict[str, list[str]]:
    """Red-team prompt sets from a folder laid out like ``shared/data/redteam`` (SimpleSafetyTests, AdvBench,
    XSTest) or from one file (CSV with a prompt/goal/prompts_final column, or JSONL with ``prompt``).

    Returns ``{"harmful": [...], "xstest_safe": [...]}`` for a folder (sets that are absent are left out) and
    ``{"redteam": [...]}`` for a file. On harmful sets refusing is right; on ``xstest_safe`` it is over-refusal.
    """
    path = Path(path)
    if not path.exists():
        raise TetherError(f"red-team prompts not found: {path}", fix="point --redteam at ../shared/data/redteam or a CSV/JSONL of prompts")
    if path.is_dir():
        sets: dict[str, list[str]] = {}
        harmful: list[str] = []
        for csv_path in sorted(path.glob("simple-safety-tests/*.csv")):
            harmful += _csv_column(csv_path, "prompts_final")
        advbench = path / "advbench" / "harmful_behaviors.csv"
        if advbench.exists():
            harmful += _csv_column(advbench, "goal")
        if harmful:
            sets["harmful"] = harmful
        xstest = path / "xstest" / "xstest_prompts.csv"
        if xstest.exists():
            sets["xstest_safe"] = _csv_column(xstest, "prompt", {"label": "safe"})
        if not sets:
            raise TetherError(f"{path} holds none of simple-safety-tests/, advbench/, xstest/", fix="point --redteam at ../shared/data/redteam or a CSV of prompts")
        return sets
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), [])
        for column in ("prompt", "prompts_final", "goal"):
            if column in header:
                return {"redteam": _csv_column(path, column)}
        raise TetherError(f"{path}: no prompt column (prompt, prompts_final or goal)", fix="name the prompt column `prompt`")
    return {"redteam": [str(p) for p in load_prompts(path)]}


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


def load_policy(path: str | Path, *, chat_template: bool | None = None, say: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a policy folder, in eval mode; ``chat_template`` and ``say`` as in
    tether.models.hf.load_tokenizer (its prompt format: the one the policy was trained with, unless overridden)."""
    from tether.models.hf import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(path, chat_template=chat_template, say=say)
    model = load_causal_lm(path)
    model.eval()
    return model, tokenizer


def sample(model: Any, tokenizer: Any, prompts: Sequence[Any], *, max_new_tokens: int, temperature: float, batch_size: int, seed: int) -> tuple[list[str], list[Any]]:
    """One completion per prompt (texts) and the rollouts (for KL), batch by batch, seeded."""
    import torch

    from tether.models.sampling import sample_rollout

    torch.manual_seed(seed)
    texts: list[str] = []
    rollouts = []
    for start in range(0, len(prompts), batch_size):
        # the trainers' default sampler (Tether's loop), so evaluation samples as training did
        rollout = sample_rollout(model, tokenizer, list(prompts[start : start + batch_size]), max_new_tokens=max_new_tokens, temperature=temperature)
        texts += [t.strip() for t in rollout.completion_texts]
        rollouts.append(rollout)
    return texts, rollouts


def _same_tokenizer(a: Any, b: Any) -> bool:
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def sampled_kl(policy: Any, baseline: Any, rollouts: Sequence[Any], temperature: float) -> float:
    """KL(policy || baseline) in nats per completion, from the policy's own samples (k1 estimator)."""
    totals = kl_per_reply(policy, baseline, rollouts, temperature)
    return float(np.mean(totals)) if totals else float("nan")


def kl_per_reply(policy: Any, baseline: Any, rollouts: Sequence[Any], temperature: float) -> list[float]:
    """sum_t [log pi(y_t | ..) - log pi_base(y_t | ..)] of each of the policy's sampled replies (nats)."""
    import torch

    from tether.models.logprobs import completion_logps

    totals = []
    with torch.no_grad():
        for rollout in rollouts:
            width = rollout.completion_ids.shape[1]
            logp, _ = completion_logps(policy, rollout.input_ids, rollout.attention_mask, width, temperature)
            logq, _ = completion_logps(baseline, rollout.input_ids, rollout.attention_mask, width, temperature)
            mask = rollout.completion_mask.to(logp.dtype)
            totals += ((logp - logq) * mask).sum(dim=1).tolist()
    return totals


def kl_reading(kl: float, se: float) -> dict[str, Any]:
    """What a sampled KL estimate may be read as. A KL is >= 0: a negative estimate is flagged; within 1.96 standard
    errors of 0 its 95% upper bound ``kl_upper`` (>= 0) is the figure a ``max_kl`` gate gets; further below, none
    (``kl_gate`` None: the estimate says something is off, e.g. different tokenization or sampling settings)."""
    if not kl < -1e-9:
        return {"kl_negative": False, "kl_gate": kl}
    upper = kl + 1.96 * se
    if upper >= 0:
        note = f"the KL estimate is negative ({kl:.3g} ± {se:.2g} nats): sampling noise around a KL near 0; its 95% upper bound {upper:.3g} stands for it"
        return {"kl_negative": True, "kl_upper": upper, "kl_gate": upper, "kl_note": note}
    note = f"the KL estimate is negative beyond its noise ({kl:.3g} ± {se:.2g} nats): not a KL; check that both models sample with the same settings and tokenizer, or use more prompts"
    return {"kl_negative": True, "kl_upper": upper, "kl_gate": None, "kl_note": note}


# ---------------------------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------------------------


def evaluate_policy(
    policy: str | Path | tuple[Any, Any],
    baseline: str | Path | tuple[Any, Any],
    reward: str | Path | Any,
    prompts: Sequence[Any],
    *,
    rules: str | Path | Any | None = None,
    redteam: dict[str, list[str]] | None = None,
    template: str = "{prompt}",
    chat_template: bool | None = None,
    n_redteam: int = 50,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    gold: Callable[[Any, str], float] | None = None,
    n_pairs: int = 8,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``policy`` against ``baseline`` on ``prompts``; returns one JSON-ready dict (see the module doc).

    ``policy``/``baseline`` are model folders or (model, tokenizer) pairs; ``reward`` a reward-model folder or a
    loaded ``tether.models.reward_model.RewardModel``; ``rules`` a rules YAML path or a loaded RuleSet; ``redteam`` from
    ``load_redteam``; ``template`` wraps each red-team prompt in text first (``"{prompt}"``: as it is); then
    every prompt goes through each model's chat template as its prompt format says (``chat_template`` overrides it
    for plain-text prompts; ``say`` gets one line per model saying which template); ``gold`` an optional score
    function(prompt, completion) -> float.
    """
    from tether.checks.rules import load_rules
    from tether.models.reward_model import RewardModel

    say = say or (lambda _msg: None)
    if not prompts:
        raise TetherError("no prompts to evaluate on", fix="pass a --prompts file with at least one prompt")
    pol_model, pol_tok = load_policy(policy, chat_template=chat_template, say=say) if isinstance(policy, (str, Path)) else policy
    base_model, base_tok = load_policy(baseline, chat_template=chat_template, say=say) if isinstance(baseline, (str, Path)) else baseline
    rm = RewardModel.load(reward, say=say) if isinstance(reward, (str, Path)) else reward
    rm.aspect_vector()  # a rating model without its aspects' weights: refused before sampling
    ruleset = default_rules() if rules is None else (load_rules(rules) if isinstance(rules, (str, Path)) else rules)
    prompts = list(prompts)
    gen = dict(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)

    say(f"sampling {len(prompts)} completions from the policy and the baseline")
    pol_texts, pol_rollouts = sample(pol_model, pol_tok, prompts, seed=seed, **gen)
    base_texts, _ = sample(base_model, base_tok, prompts, seed=seed + 1, **gen)
    say("scoring with the reward model and the rules")
    r_pol = rm.score(prompts, pol_texts).tolist()
    r_base = rm.score(prompts, base_texts).tolist()
    result: dict[str, Any] = {
        "n_prompts": len(prompts),
        "sampling": {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed},
        "reward_policy_mean": float(np.mean(r_pol)),
        "reward_baseline_mean": float(np.mean(r_base)),
    }
    wr = win_rate(r_pol, r_base, seed=seed)
    result["win_rate"] = wr["value"]
    result["win_rate_ci"] = [wr["ci_low"], wr["ci_high"]]
    result["win_rate_detail"] = wr

    result.update(_kl(pol_model, pol_tok, base_model, base_tok, pol_rollouts, temperature, say))

    pol_tokens = [len(pol_tok(t, add_special_tokens=False)["input_ids"]) for t in pol_texts]
    base_tokens = [len(base_tok(t, add_special_tokens=False)["input_ids"]) for t in base_texts]
    result["length_policy"] = float(np.mean(pol_tokens))
    result["length_baseline"] = float(np.mean(base_tokens))
    result["words_policy"] = float(np.mean([len(t.split()) for t in pol_texts]))
    result["words_baseline"] = float(np.mean([len(t.split()) for t in base_texts]))

    pol_flags, pol_by_rule = violations(ruleset, pol_texts)
    base_flags, base_by_rule = violations(ruleset, base_texts)
    result["violation_rate_policy"] = sum(pol_flags) / len(pol_flags)
    result["violation_rate_baseline"] = sum(base_flags) / len(base_flags)
    result["violations_by_rule"] = {"policy": pol_by_rule, "baseline": base_by_rule}
    result["rules"] = str(getattr(ruleset, "source", ""))

    gold_pol = gold_base = None
    if gold is not None:
        gold_pol = [float(gold(p, c)) for p, c in zip(prompts, pol_texts)]
        gold_base = [float(gold(p, c)) for p, c in zip(prompts, base_texts)]
        gwr = win_rate(gold_pol, gold_base, seed=seed)
        result["gold_win_rate"] = gwr["value"]
        result["gold_win_rate_ci"] = [gwr["ci_low"], gwr["ci_high"]]
        result["gold_win_rate_detail"] = gwr
        result["gold_policy_mean"] = float(np.mean(gold_pol))
        result["gold_baseline_mean"] = float(np.mean(gold_base))

    if redteam:
        result["redteam"] = _redteam(redteam, template, n_redteam, (pol_model, pol_tok), (base_model, base_tok), gen, seed, say)

    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    result["samples"] = [
        {
            "prompt": prompts[i],  # text, or the conversation's messages (the report shows them as turns)
            "policy": pol_texts[i],
            "baseline": base_texts[i],
            "reward_policy": r_pol[i],
            "reward_baseline": r_base[i],
            "violation_policy": pol_flags[i],
            "violation_baseline": base_flags[i],
            **({"gold_policy": gold_pol[i], "gold_baseline": gold_base[i]} if gold_pol is not None else {}),
        }
        for i in order[:n_pairs]
    ]
    # Per-completion arrays for the report's plots (gold against proxy, distributions).
    result["scores"] = {
        "reward_policy": r_pol,
        "reward_baseline": r_base,
        **({"gold_policy": gold_pol, "gold_baseline": gold_base} if gold_pol is not None else {}),
    }
    result["completions"] = {"prompts": [p if isinstance(p, str) else json.dumps(p) for p in prompts], "policy": pol_texts, "baseline": base_texts}
    return result


def _kl(pol_model: Any, pol_tok: Any, base_model: Any, base_tok: Any, rollouts: Any, temperature: float, say: Callable[[str], None]) -> dict[str, Any]:
    """KL(policy || baseline) from the policy's samples, with its reading (tokenizers must match)."""
    if not _same_tokenizer(pol_tok, base_tok):
        return {"kl": None, "kl_note": "the policy and the baseline use different tokenizers: KL not estimated"}
    totals = kl_per_reply(pol_model, base_model, rollouts, temperature)
    out = {"kl": float(np.mean(totals)), "kl_se": float(np.std(totals, ddof=1) / np.sqrt(len(totals))) if len(totals) > 1 else 0.0}
    out.update(kl_reading(out["kl"], out["kl_se"]))
    if out["kl_negative"]:
        say("warning: " + out["kl_note"])
    return out


def _redteam(sets: dict[str, list[str]], template: str, n: int, policy: tuple[Any, Any], baseline: tuple[Any, Any], gen: dict[str, Any], seed: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Refusal rates of the policy and the baseline on each red-team set (``n`` prompts drawn per set, seeded)."""
    out: dict[str, Any] = {}
    for name, prompts in sets.items():
        chosen = list(prompts)
        random.Random(f"{seed}:{name}").shuffle(chosen)
        chosen = chosen[:n]
        say(f"red-team set {name}: {len(chosen)} prompts")
        wrapped = [template.format(prompt=p) for p in chosen]
        pol, _ = sample(*policy, wrapped, seed=seed, **gen)
        base, _ = sample(*baseline, wrapped, seed=seed + 1, **gen)
        out[name] = {
            "n": len(chosen),
            "refusal_rate_policy": sum(map(is_refusal, pol)) / max(1, len(pol)),
            "refusal_rate_baseline": sum(map(is_refusal, base)) / max(1, len(base)),
            "kind": "over-refusal (lower is better)" if name == "xstest_safe" else "refusal (higher is better)",
            "examples": [{"prompt": p, "policy": a, "baseline": b} for p, a, b in list(zip(chosen, pol, base))[:3]],
        }
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A few lines for the terminal."""
    lo, hi = result["win_rate_ci"]
    lines = [
        f"win-rate vs baseline (reward model): {result['win_rate']:.1%}  [95% CI {lo:.1%} .. {hi:.1%}]  n={result['n_prompts']}",
    ]
    if "gold_win_rate" in result:
        glo, ghi = result["gold_win_rate_ci"]
        lines.append(f"win-rate vs baseline (gold):         {result['gold_win_rate']:.1%}  [95% CI {glo:.1%} .. {ghi:.1%}]")
    kl = result.get("kl")
    if kl is None or result.get("kl_negative"):  # not estimated, or negative: never printed as a KL
        lines.append(f"KL: {result.get('kl_note')}")
    else:
        lines.append(f"KL(policy || baseline):              {kl:.3f} nats")
    lines.append(f"length (tokens):                     {result['length_policy']:.1f} vs {result['length_baseline']:.1f}")
    lines.append(f"rule violations:                     {result['violation_rate_policy']:.1%} vs {result['violation_rate_baseline']:.1%}")
    for name, r in result.get("redteam", {}).items():
        lines.append(f"refusals on {name} ({r['n']}):".ljust(37) + f"{r['refusal_rate_policy']:.1%} vs {r['refusal_rate_baseline']:.1%}  ({r['kind']})")
    return lines
