"""Building the monitoring report: ingest logged interactions, measure drift and failure modes per time window, raise alerts.

The report compares every time window with a reference ("baseline") window:

- **reward drift**: population stability index (PSI) over the baseline's deciles, and the two-sample
  Kolmogorov-Smirnov test (scipy);
- **input drift**: the prompt-length distribution (PSI, KS) and the prompts' embeddings (MiniLM sentence
  embeddings, or hashed bag-of-words when MiniLM is not installed) compared by the maximum mean discrepancy (MMD,
  Gretton et al. 2012, RBF kernel, median-distance bandwidth) with a permutation p-value;
- **reward-human agreement**: on records that people judged (thumbs in the logged feedback, or review judgments
  made through ``tether monitor sample``), the AUC of the reward for thumbs-up vs thumbs-down, with the
  Hanley-McNeil (1982) standard error;
- **failure modes**: rule violations (PII in the completion via ``tether.checks.pii``, plus ``tether.checks.rules`` when
  present), refusal rate, degenerate repetition (rates on a random sample of each window), and completion-length
  growth (a sign of reward hacking; exact over all records).

Counts, lengths and stored rewards are aggregated in SQL and numpy over all records (no ORM objects); text checks,
embeddings and reward-model scoring run on a seeded random sample of each window (``sample_per_window``).
p-values are compared with ``alpha / number of compared windows`` (Bonferroni), so a long history without drift
does not alarm by chance, and each test is paired with an effect-size floor so that a huge window does not alarm
on a negligible shift.
"""


from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from tether.checks.refusal import is_refusal
from tether.errors import TetherError
from tether.lifecycle.monitor.columns import Columns, load_columns, load_review_thumbs, load_texts
from tether.lifecycle.monitor.detectors import default_rule_fn, is_degenerate
from tether.lifecycle.monitor.stats import auc_thumbs, mmd_permutation_test, psi, rate_rise_pvalue
from tether.lifecycle.monitor.thresholds import (
    EmbedFn,
    ReportOptions,
    ScoreFn,
    Thresholds,
    parse_duration,
    parse_time,
)


@dataclass
class Alert:
    kind: str  # reward_drift, input_length_drift, embedding_drift, agreement, violation_rate, refusal_rate, repetition, length_growth
    window: str
    metric: str
    value: float
    threshold: float
    message: str


def _baseline_mask(cols: Columns, spec: str, window_s: float, t0: float, win: np.ndarray) -> np.ndarray:
    if spec == "first":
        return win == 0
    if ".." in spec:
        start_text, end_text = spec.split("..", 1)
        try:
            start, end = parse_time(start_text).timestamp(), parse_time(end_text).timestamp()
        except ValueError as exc:
            raise TetherError(f"bad --baseline {spec!r}: {exc}", fix="write START..END, e.g. 2024-05-01..2024-05-08") from None
        return (cols.t >= start) & (cols.t < end)
    try:
        span = parse_duration(spec)
    except TetherError:
        raise TetherError(f"bad --baseline {spec!r}", fix="use 'first', a duration such as 7d, or START..END (ISO dates)") from None
    return cols.t < t0 + span


@dataclass
class _Report:
    """What the per-window checks of one report read: the records' columns, their windows and the baseline, the
    rewards and thumbs, the text flags of the sample, the baseline's figures, and where alerts go."""

    cols: Columns
    options: ReportOptions
    thresholds: Thresholds
    window_s: float
    t0: float
    order: np.ndarray  # record indices sorted by window
    bounds: np.ndarray  # (n_windows + 1,): window w's records are order[bounds[w]:bounds[w + 1]]
    base: np.ndarray  # (N,) bool: in the baseline
    base_only: np.ndarray  # (n_windows,) bool: the window lies wholly inside the baseline
    tested: np.ndarray  # (n_windows,) bool
    alpha: float  # per-window significance level (Bonferroni)
    sample_idx: list[np.ndarray]
    base_sample: np.ndarray
    reward: np.ndarray = None
    has_reward: np.ndarray = None
    thumbs: np.ndarray = None
    flags: dict[str, np.ndarray] = None
    texts: dict[int, tuple[str, str]] = None
    alerts: list[Alert] = None

    def members(self, w: int) -> np.ndarray:
        return self.order[self.bounds[w] : self.bounds[w + 1]]

    def alert(self, *args: Any) -> None:
        self.alerts.append(Alert(*args))


def build_report(
    url: str,
    *,
    options: ReportOptions | None = None,
    thresholds: Thresholds | None = None,
    score_fn: ScoreFn | None = None,
    embed_fn: EmbedFn | None = None,
    rule_fn: Callable[[str, str], list[str]] | None = None,
    reward_source: str | None = None,
) -> dict[str, Any]:
    """Drift, agreement and failure-mode figures per window, and the alerts they raise (see the module doc).

    ``score_fn(prompts, completions) -> rewards`` scores a sample of each window (and every record with feedback)
    with a reward model; without it the ``reward`` logged with the records is used for all of them.
    Returns a JSON-ready dict: ``windows`` (each with flat ``group/name`` metrics), ``baseline``, ``alerts``.
    """
    options = options or ReportOptions()
    thresholds = thresholds or Thresholds()
    cols = load_columns(url, options)
    if cols.t.size == 0:
        raise TetherError("no production records in range", fix="load some with `tether monitor ingest FILE`, or widen --since/--until")
    rng = np.random.default_rng(options.seed)
    r = _windows(cols, options, thresholds, rng)
    r.thumbs = _thumbs(url, options, cols)
    # ---- rewards: logged for every record, or scored on the sample (+ records with thumbs) by the reward model
    r.reward = cols.reward.copy()
    if score_fn is not None:
        r.reward[:] = np.nan
        need = np.unique(np.concatenate([*r.sample_idx, r.base_sample, np.flatnonzero(~np.isnan(r.thumbs))]))
        texts = load_texts(url, cols.id[need])
        r.reward[need] = np.asarray(score_fn([texts[int(cols.id[i])][0] for i in need], [texts[int(cols.id[i])][1] for i in need]), dtype=float)
        reward_source = reward_source or "reward model (sampled)"
    r.has_reward = ~np.isnan(r.reward)
    reward_source = reward_source or ("logged reward" if r.has_reward.any() else None)
    # ---- text checks on the sample
    all_sample = np.unique(np.concatenate([*r.sample_idx, r.base_sample]))
    r.texts = load_texts(url, cols.id[all_sample])
    r.flags = text_flags(r.texts, cols.id, all_sample, rule_fn or default_rule_fn(), cols.t.size)
    # ---- embeddings of a smaller prompt sample
    emb_base = None
    if embed_fn is not None:
        pick = rng.choice(r.base_sample, size=min(r.base_sample.size, options.embed_sample), replace=False)
        emb_base = embed_fn([r.texts[int(cols.id[i])][0] for i in pick])
    permutations = max(options.permutations, math.ceil(2 / r.alpha))
    # ---- baseline figures
    base = r.base
    base_reward = r.reward[base & r.has_reward]
    base_thumbs_mask = base & r.has_reward & ~np.isnan(r.thumbs)
    base_auc, base_se, _, _ = auc_thumbs(r.reward[base_thumbs_mask], r.thumbs[base_thumbs_mask] == 1)
    base_len = float(cols.completion_len[base].mean())
    base_rates = {name: (int(r.flags[name][r.base_sample].sum()), int(r.base_sample.size)) for name in r.flags}

    windows, r.alerts = [], []
    for w in range(len(r.bounds) - 1):
        members = r.members(w)
        start = datetime.fromtimestamp(r.t0 + w * r.window_s, tz=timezone.utc)
        label = start.isoformat().replace("+00:00", "Z")
        m: dict[str, Any] = {}
        windows.append({"window": label, "start": label, "end": (start + timedelta(seconds=r.window_s)).isoformat().replace("+00:00", "Z"),
                        "n": int(members.size), "baseline": bool(r.base_only[w]), "tested": bool(r.tested[w]), "metrics": m})
        if members.size == 0:
            continue
        _reward_drift(r, w, label, members, m, base_reward)
        _input_drift(r, w, label, members, m)
        if emb_base is not None and r.tested[w] and r.sample_idx[w].size >= 2:
            pick = rng.choice(r.sample_idx[w], size=min(r.sample_idx[w].size, options.embed_sample), replace=False)
            emb = embed_fn([r.texts[int(cols.id[i])][0] for i in pick])
            mmd2, p = mmd_permutation_test(emb_base, emb, permutations=permutations, seed=options.seed + w, stop_above=r.alpha)
            m["input/embed_mmd2"], m["input/embed_pvalue"] = mmd2, p
            if p < r.alpha and mmd2 > thresholds.min_embed_mmd:
                r.alert("embedding_drift", label, "input/embed_mmd2", mmd2, thresholds.min_embed_mmd,
                        f"prompt embeddings moved (MMD^2 {mmd2:.4f}, permutation p={p:.2g} < {r.alpha:.2g}): new topics or phrasing")
        _agreement(r, w, label, members, m, base_auc, base_se)
        _failure_modes(r, w, label, members, m, base_len, base_rates)

    return {
        "records": int(cols.t.size),
        "window": options.window,
        "reward_source": reward_source,
        "embedder": getattr(embed_fn, "name", None) if embed_fn is not None else None,
        "baseline": {
            "spec": options.baseline,
            "n": int(base.sum()),
            "reward_mean": float(base_reward.mean()) if base_reward.size else None,
            "agreement_auc": None if math.isnan(base_auc) else base_auc,
            "completion_len_mean": base_len,
            "rates": {name: (k / n if n else None) for name, (k, n) in base_rates.items()},
        },
        "alpha_per_window": r.alpha,
        "thresholds": asdict(thresholds),
        "windows": windows,
        "alerts": [asdict(a) for a in r.alerts],
    }


def _windows(cols: Columns, options: ReportOptions, thresholds: Thresholds, rng: np.random.Generator) -> _Report:
    """The records' windows, the baseline, which windows are tested, and each window's random text sample."""
    window_s = parse_duration(options.window)
    t0 = math.floor(cols.t.min() / window_s) * window_s
    win = ((cols.t - t0) // window_s).astype(np.int64)
    n_windows = int(win.max()) + 1
    base = _baseline_mask(cols, options.baseline, window_s, t0, win)
    if base.sum() < thresholds.min_window_records:
        raise TetherError(
            f"the baseline ({options.baseline}) holds {int(base.sum())} records, fewer than min_window_records={thresholds.min_window_records}",
            fix="choose a longer --baseline (e.g. 7d) or a longer --window",
        )
    # A window that lies wholly inside the baseline is the reference itself: reported, not tested.
    base_only = np.bincount(win, weights=base.astype(float), minlength=n_windows) == np.bincount(win, minlength=n_windows)
    counts = np.bincount(win, minlength=n_windows)
    tested = (~base_only) & (counts >= thresholds.min_window_records)
    alpha = thresholds.ks_pvalue / max(int(tested.sum()), 1)  # Bonferroni over the compared windows
    # ---- text sample per window (and the baseline): ids chosen in numpy, texts fetched by id
    order = np.argsort(win, kind="stable")
    bounds = np.searchsorted(win[order], np.arange(n_windows + 1))
    sample_idx: list[np.ndarray] = []
    for w in range(n_windows):
        members = order[bounds[w] : bounds[w + 1]]
        take = min(members.size, options.sample_per_window)
        sample_idx.append(np.sort(rng.choice(members, size=take, replace=False)) if take else members)
    base_members = np.flatnonzero(base)
    base_sample = np.sort(rng.choice(base_members, size=min(base_members.size, options.sample_per_window), replace=False))
    return _Report(cols, options, thresholds, window_s, t0, order, bounds, base, base_only, tested, alpha, sample_idx, base_sample)


def _thumbs(url: str, options: ReportOptions, cols: Columns) -> np.ndarray:
    """Logged thumbs (1, 0, or NaN), overridden by review judgments; ids are not in time order, so they are looked up
    sorted."""
    review = load_review_thumbs(url, options.review_project)
    thumbs = cols.thumbs.copy()
    if review:
        rids = np.array(sorted(review), dtype=np.int64)
        labels = np.array([1.0 if review[int(r)] else 0.0 for r in rids])
        by_id = np.argsort(cols.id)
        loc = np.minimum(np.searchsorted(cols.id[by_id], rids), cols.id.size - 1)
        found = cols.id[by_id][loc] == rids
        thumbs[by_id[loc[found]]] = labels[found]
    return thumbs


def text_flags(texts: dict[int, tuple[str, str]], ids: np.ndarray, rows: np.ndarray, rule_fn: Callable[[str, str], list[str]], n: int) -> dict[str, np.ndarray]:
    """Which of the sampled ``rows`` (record ``ids[row]``, texts by id) break a rule, leak PII, refuse (the one refusal
    detector, tether.checks.refusal) or repeat themselves: (n,) bool arrays, False outside the sample."""
    flags = {name: np.zeros(n, dtype=bool) for name in ("violation", "pii", "refusal", "repetition")}
    for i in rows:
        prompt, completion = texts[int(ids[i])]
        violated = rule_fn(prompt, completion)
        flags["violation"][i] = bool(violated)
        flags["pii"][i] = any(v.startswith("pii:") for v in violated)
        flags["refusal"][i] = is_refusal(completion)
        flags["repetition"][i] = is_degenerate(completion)
    return flags


def _reward_drift(r: _Report, w: int, label: str, members: np.ndarray, m: dict[str, Any], base_reward: np.ndarray) -> None:
    # ALGO LOGIC: reward drift, PSI and KS against the baseline
    th = r.thresholds
    values = r.reward[members][r.has_reward[members]]
    if not values.size:
        return
    m["reward/mean"] = float(values.mean())
    m["reward/p10"], m["reward/p50"], m["reward/p90"] = (float(v) for v in np.quantile(values, [0.1, 0.5, 0.9]))
    m["reward/n"] = int(values.size)
    if not (base_reward.size and values.size >= 2):
        return
    from scipy.stats import ks_2samp

    m["reward/psi"] = psi(base_reward, values)
    ks = ks_2samp(base_reward, values)
    m["reward/ks_stat"], m["reward/ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
    if r.tested[w] and values.size >= th.min_window_records:
        if m["reward/psi"] > th.max_reward_psi:
            r.alert("reward_drift", label, "reward/psi", m["reward/psi"], th.max_reward_psi,
                    f"reward PSI {m['reward/psi']:.3f} > {th.max_reward_psi} (mean {m['reward/mean']:.3f} vs baseline {base_reward.mean():.3f})")
        elif m["reward/ks_pvalue"] < r.alpha and m["reward/ks_stat"] >= th.min_ks_stat:
            r.alert("reward_drift", label, "reward/ks_stat", m["reward/ks_stat"], th.min_ks_stat,
                    f"reward distribution differs from the baseline (KS D={m['reward/ks_stat']:.3f}, p={m['reward/ks_pvalue']:.2g} < {r.alpha:.2g})")


def _input_drift(r: _Report, w: int, label: str, members: np.ndarray, m: dict[str, Any]) -> None:
    # ALGO LOGIC: input drift, prompt length over all records (the embeddings are compared in build_report)
    th, cols = r.thresholds, r.cols
    plen = cols.prompt_len[members]
    m["input/prompt_len_mean"] = float(plen.mean())
    m["input/prompt_len_psi"] = psi(cols.prompt_len[r.base], plen)
    if r.tested[w] and m["input/prompt_len_psi"] > th.max_input_psi:
        r.alert("input_length_drift", label, "input/prompt_len_psi", m["input/prompt_len_psi"], th.max_input_psi,
                f"prompt-length PSI {m['input/prompt_len_psi']:.3f} > {th.max_input_psi} (mean {plen.mean():.0f} vs baseline {cols.prompt_len[r.base].mean():.0f} chars)")


def _agreement(r: _Report, w: int, label: str, members: np.ndarray, m: dict[str, Any], base_auc: float, base_se: float) -> None:
    # ALGO LOGIC: reward-human agreement, the AUC of the reward for thumbs up against thumbs down
    th = r.thresholds
    fb = members[r.has_reward[members] & ~np.isnan(r.thumbs[members])]
    if not fb.size:
        return
    auc, se, n_pos, n_neg = auc_thumbs(r.reward[fb], r.thumbs[fb] == 1)
    m["agreement/n"], m["agreement/n_up"], m["agreement/n_down"] = int(fb.size), n_pos, n_neg
    if not math.isnan(auc):
        m["agreement/auc"], m["agreement/auc_se"] = auc, se
    if not (r.tested[w] and min(n_pos, n_neg) >= th.min_feedback):
        return
    if auc < th.min_agreement:
        r.alert("agreement", label, "agreement/auc", auc, th.min_agreement, f"reward-human agreement AUC {auc:.3f} < {th.min_agreement} on {fb.size} judged records")
    elif not math.isnan(base_auc) and base_auc - auc > th.max_agreement_drop:
        from scipy.stats import norm

        p = float(norm.sf((base_auc - auc) / math.sqrt(se**2 + base_se**2)))
        if p < r.alpha:
            r.alert("agreement", label, "agreement/auc", auc, base_auc - th.max_agreement_drop, f"reward-human agreement fell from {base_auc:.3f} to {auc:.3f} (p={p:.2g})")


def _failure_modes(r: _Report, w: int, label: str, members: np.ndarray, m: dict[str, Any], base_len: float, base_rates: dict[str, tuple[int, int]]) -> None:
    # ALGO LOGIC: failure modes: length growth (all records), violation / refusal / repetition rates (the sample)
    th = r.thresholds
    clen = r.cols.completion_len[members]
    m["length/completion_mean"] = float(clen.mean())
    m["length/growth"] = float(clen.mean() / base_len) if base_len > 0 else float("nan")
    if r.tested[w] and m["length/growth"] > th.max_length_growth:
        r.alert("length_growth", label, "length/growth", m["length/growth"], th.max_length_growth,
                f"completions are {m['length/growth']:.2f}x the baseline length ({clen.mean():.0f} vs {base_len:.0f} chars): possible reward hacking")
    s = r.sample_idx[w]
    m["failure/sample"] = int(s.size)
    for name, kind, metric in (("violation", "violation_rate", "failure/violation_rate"), ("pii", None, "failure/pii_rate"),
                               ("refusal", "refusal_rate", "failure/refusal_rate"), ("repetition", "repetition", "failure/repetition_rate")):
        k = int(r.flags[name][s].sum())
        rate = k / s.size if s.size else float("nan")
        m[metric] = rate
        if kind is None or not r.tested[w] or s.size < th.min_window_records:
            continue
        k0, n0 = base_rates[name]
        base_rate = k0 / n0 if n0 else 0.0
        if name == "violation" and rate > th.max_violation_rate:
            r.alert(kind, label, metric, rate, th.max_violation_rate, f"{rate:.1%} of sampled completions break a rule (max {th.max_violation_rate:.0%})")
        elif rate - base_rate > th.max_rate_rise and rate_rise_pvalue(k, s.size, k0, n0) < r.alpha:
            r.alert(kind, label, metric, rate, base_rate + th.max_rate_rise, f"{name} rate rose to {rate:.1%} from {base_rate:.1%} in the baseline")
