"""Evaluating a saved reward model (``tether eval reward``): load it and compute its figures on preference rows
(tether.models.reward_eval), one section per file of a suite (RewardBench-style), for a reward model or for a DPO
policy's implicit reward. Policies (win-rate, KL, length, red-team) are tether.lifecycle.evaluate_policy's.

A suite is a folder of preference files, one section each, named by the file (``chat.jsonl`` -> ``chat``)::

    suite/
      chat.jsonl            {"prompt": "...", "chosen": "...", "rejected": "..."} per line
      safety.jsonl.gz       HH-RLHF dialogues ({"chosen", "rejected"}) work too
      follows-request.json  a JSON list of rows
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tether.errors import TetherError
from tether.models.reward_eval import concat_scores, evaluate_reward_model, pair_report, score_pairs
from tether.models.reward_model import RewardModel

SUITE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


def evaluate_reward(model_dir: str | Path, rows: list[dict[str, Any]], batch_size: int = 32, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load the reward model in ``model_dir`` (``DIR:ASPECT=W,...`` for a rating model, see tether.models.reward_model) and
    evaluate it on preference ``rows`` (see ``evaluate_reward_model``): ``{"n", "n_ties", "accuracy",
    "accuracy_low", "accuracy_high", "mean_margin", "ece", "length", "by_length", "by_subset"?}``."""
    return evaluate_reward_model(RewardModel.load(model_dir, say=say), rows, batch_size)


def section_name(path: Path) -> str:
    name = path.name
    for suffix in SUITE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def suite_files(folder: Path) -> dict[str, Path]:
    """The sections of a suite folder: every preference file in it (not its subfolders), by name, sorted."""
    if not folder.is_dir():
        raise TetherError(f"suite folder not found: {folder}", fix="give a folder of JSONL files, one section per file (see `tether eval reward --help`)")
    files = {section_name(p): p for p in sorted(folder.iterdir()) if p.is_file() and p.name.endswith(SUITE_SUFFIXES)}
    if not files:
        raise TetherError(f"{folder} holds no .jsonl, .jsonl.gz, .json or .parquet files", fix="put one preference file per section in it")
    return files


def parse_data_specs(specs: Sequence[str]) -> dict[str, str]:
    """``--data NAME=FILE`` (or a plain ``FILE``, named by the file) -> {name: file}; a name given twice is refused."""
    out: dict[str, str] = {}
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq or not name or "/" in name:
            name, path = section_name(Path(spec)) if not spec.startswith("snapshot:") else spec.split(":", 1)[1], spec
        if name in out:
            raise TetherError(f"--data: section {name!r} given twice", fix="name each section once: --data NAME=FILE")
        out[name] = path
    return out


def evaluate_sections(scorer: Any, sections: dict[str, list[dict[str, Any]]], batch_size: int = 32, *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The pooled report over all pairs (``pair_report``) with each section's own under ``sections``."""
    scored = {name: score_pairs(scorer, rows, batch_size) for name, rows in sections.items()}
    reports = {name: pair_report(s, resamples=resamples, seed=seed) for name, s in scored.items()}
    pooled = reports[next(iter(reports))] if len(reports) == 1 else pair_report(concat_scores(list(scored.values())), resamples=resamples, seed=seed)
    return {**pooled, "sections": reports}


class MemberEnsemble:
    """Separately trained reward models (the members of a `tether loop` ensemble folder) read as one ensemble by
    ``score_pairs``: each member's heads side by side (``raw_scores`` (N, K1 + K2 + ..., A), each with its own
    normalization ``std``), so the report's mean is the members' mean and its spread is theirs."""

    def __init__(self, members: Sequence[Any]):
        aspects = {tuple(m.aspects) for m in members}
        if len(aspects) > 1:
            raise TetherError(f"the ensemble's members rate different aspects: {sorted(aspects)}", fix="put only members trained on the same data kind in one folder")
        self.members, self.tokenizer = list(members), members[0].tokenizer
        self.std = np.concatenate([m.std for m in members], axis=0)  # (K, A)

    def aspect_vector(self) -> np.ndarray:
        return self.members[0].aspect_vector()

    def raw_scores(self, prompts: Sequence[Any], completions: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        return np.concatenate([m.raw_scores(prompts, completions, batch_size) for m in self.members], axis=1)


def load_reward_scorer(model: str, say: Callable[[str], None] | None = None) -> Any:
    """A reward model folder as a ``RewardModel``; a folder of ensemble members (subfolders with tether.json, as
    `tether loop` writes) as a ``MemberEnsemble``."""
    from tether.recipes.reward_specs import member_folders

    folders = member_folders(Path(model))
    if len(folders) == 1:
        return RewardModel.load(model, say=say)
    return MemberEnsemble([RewardModel.load(folder, say=say) for folder in folders])


class ImplicitReward:
    """A DPO policy's implicit reward as a scorer: r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et al.
    2023, Eq. 5; the partition function cancels in every pair), summed over the completion's tokens, rendered as
    the policy was trained (its prompt format; the prompt's start cut past ``max_length``). The interface is the one
    ``score_pairs`` reads from a ``RewardModel``: ``raw_scores`` (N, 1, 1), ``aspect_vector``, ``std``, ``tokenizer``.
    """

    def __init__(self, policy: Any, reference: Any, tokenizer: Any, beta: float, *, max_length: int = 1024, device: Any = "cpu"):
        import torch

        from tether.models.logprobs import TokenLogProbs

        self.policy, self.reference = TokenLogProbs(policy).to(device).eval(), TokenLogProbs(reference).to(device).eval()
        self.tokenizer, self.beta, self.max_length, self.device = tokenizer, float(beta), max_length, torch.device(device)
        self.std = np.ones((1, 1))

    def aspect_vector(self) -> np.ndarray:
        return np.ones(1)

    def raw_scores(self, prompts: Sequence[Any], completions: Sequence[Any], batch_size: int = 8) -> np.ndarray:
        import torch

        from tether.data.batching import truncate_prompt
        from tether.models.logprobs import score_completions
        from tether.models.tokens import encode_texts

        prompt_ids, completion_ids = encode_texts(self.tokenizer, list(prompts), list(completions))
        pairs = []
        for p, c in zip(prompt_ids, completion_ids):
            kept = truncate_prompt(p, [len(c)], self.max_length, min_prompt_tokens=0)
            pairs.append((kept if kept is not None else p, c))  # a completion longer than max_length alone: scored whole
        out = []
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                policy = score_completions(self.policy, chunk, self.tokenizer.pad_token_id, self.device)
                reference = score_completions(self.reference, chunk, self.tokenizer.pad_token_id, self.device)
                out.append((self.beta * (policy - reference)).double().cpu())
        return torch.cat(out).numpy().reshape(-1, 1, 1) if out else np.zeros((0, 1, 1))


def load_implicit_reward(policy_dir: str | Path, reference_dir: str | Path, beta: float | None = None, say: Callable[[str], None] | None = None) -> ImplicitReward:
    """The implicit reward of the DPO policy in ``policy_dir`` against ``reference_dir``; ``beta`` defaults to the
    one the policy was trained with (its tether.json), else refused."""
    from tether.lifecycle.evaluate_policy import load_policy
    from tether.models.hf import read_tether_meta

    meta = read_tether_meta(policy_dir)
    config = meta.get("config", {})
    if beta is None:
        beta = config.get("beta")
        if beta is None:
            raise TetherError(f"{policy_dir} records no beta (no tether.json of a DPO run)", fix="give --beta, the beta the policy was trained with")
    policy, tokenizer = load_policy(policy_dir, say=say)
    reference, reference_tokenizer = load_policy(reference_dir)
    if reference_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise TetherError(f"{reference_dir} has another vocabulary than {policy_dir}: the log-ratio needs the same tokens", fix="give the policy's own reference (the model DPO started from)")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return ImplicitReward(policy, reference, tokenizer, beta, max_length=int(config.get("max_length") or 1024), device=device)
