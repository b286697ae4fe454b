"""A length-controlled reward (``--set length_correction=true``): after training, the reward's linear dependence on
the completion's length within a pair is measured and subtracted at scoring time.

ALGO LOGIC: on reference pairs the model was not trained on (the validation split; without one, a seeded sample of
training pairs), regress each output's reward difference on the pair's difference in completion tokens, through
the origin (a pair's difference is antisymmetric): ``b = sum(dr * dL) / sum(dL^2)``. The saved model scores
``raw - b * L``, so within a pair two answers that differ only in length no longer differ in reward by ``b`` per
token. It is the length-controlled idea of AlpacaEval 2 (Dubois et al. 2024: fit the preference with a length term,
then read it with that term at zero) applied to a reward model's own differences, and the closed form of ODIN's
aim (Chen et al. 2024: a reward uncorrelated with length) for a linear length effect, with no change to training.
The normalization (mean 0, std 1) is then taken over the reference pairs' chosen completions, corrected.
"""

from __future__ import annotations

import random
from typing import Any

import torch


def within_pair_slope(chosen: torch.Tensor, rejected: torch.Tensor, chosen_len: torch.Tensor, rejected_len: torch.Tensor) -> torch.Tensor:
    """Least-squares slope through the origin of each output's reward difference on the length difference:
    ``chosen``/``rejected`` (R, O) rewards, ``*_len`` (R,) completion tokens -> (O,) reward per token (0 where every
    pair's two answers are as long)."""
    dl = (chosen_len - rejected_len).to(torch.float64).unsqueeze(1)  # (R, 1)
    denom = (dl * dl).sum()
    if denom == 0:
        return torch.zeros(chosen.shape[1], dtype=torch.float64)
    return ((chosen - rejected).to(torch.float64) * dl).sum(dim=0) / denom


def reference_pairs(data: dict[str, Any], validation: dict[str, Any] | None, max_rows: int | None, seed: int) -> tuple[dict[str, Any], str]:
    """The pairs the slope is fit on: the validation split's, else a seeded sample of at most ``max_rows`` training
    pairs. Returns their sequences and completion tokens (``chosen``, ``rejected``, ``chosen_tokens``,
    ``rejected_tokens``) and their name."""
    if validation is not None and len(validation["chosen"]) > 0:
        return validation, f"{len(validation['chosen'])} validation pairs"
    picked = list(range(len(data["chosen"])))
    if max_rows and len(picked) > max_rows:
        picked = sorted(random.Random(seed + 2).sample(picked, max_rows))
    ref = {k: [data[k][i] for i in picked] for k in ("chosen", "rejected")}
    ref.update({k: data[k][picked] for k in ("chosen_tokens", "rejected_tokens")})
    return ref, f"{len(picked)} training pairs (a seeded sample)"


def length_correction(chosen: torch.Tensor, rejected: torch.Tensor, ref: dict[str, Any], name: str) -> tuple[torch.Tensor, dict[str, Any]]:
    """The slope and what tether.json keeps of it (under ``reward.normalization.length_correction``), from the
    reference pairs' raw rewards (R, O). Returns the corrected chosen rewards (R, O) too, the normalization's
    reference."""
    lc, lr = ref["chosen_tokens"].to(torch.float64), ref["rejected_tokens"].to(torch.float64)
    slope = within_pair_slope(chosen, rejected, lc, lr)
    corrected = (chosen.to(torch.float64) - slope * lc.unsqueeze(1), rejected.to(torch.float64) - slope * lr.unsqueeze(1))
    lengths = torch.cat([lc, lr])

    def correlation(rewards: torch.Tensor) -> float:  # the outputs' mean against length, over both sides
        return float(torch.corrcoef(torch.stack([rewards.mean(dim=1), lengths]))[0, 1]) if len(lengths) > 2 else 0.0

    record = {
        "slope_per_token": slope.tolist(),
        "fit_on": name,
        "reward_length_correlation": {"before": correlation(torch.cat([chosen, rejected]).to(torch.float64)), "after": correlation(torch.cat(corrected))},
    }
    return corrected[0], record
