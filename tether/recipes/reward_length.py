"""A length-controlled reward (``--set length_correction=true``): after training, the reward's linear dependence on
the completion's length within a pair is measured and subtracted at scoring time.

ALGO LOGIC: on reference pairs the model was not trained on (the validation split; without one, a seeded sample of
training pairs), each pair whose answers differ in length gives a slope: its reward difference over its difference in
log(1 + completion tokens). The slope kept is their median (per output), and the saved model scores
``raw - b * log(1 + tokens)``: after it, the longer answer of a reference pair has the higher reward in exactly half of
them (``x - b*a > 0`` iff ``x/a > b``), so the reward has no preference for length left by sign, whatever the size of
the differences. A least-squares slope was tried first and dropped: a few pairs with large length differences set
it, and on held-out HH it over-corrected (the shorter answer then won 65-70% of its pairs; docs/benchmarks.md). It
is the length-controlled idea of AlpacaEval 2 (Dubois et al. 2024: fit the preference with a length term, then read
it with that term at zero) applied to a reward model's own differences, with no change to training. It assumes the
reference pairs' labels do not favour length: where longer answers are truly better more often (PandaLM's chosen
answers are longer in 67% of its pairs), it takes that signal away too. The normalization (mean 0, std 1) is then
taken over the reference pairs' chosen completions, corrected.
"""

from __future__ import annotations

import random
from typing import Any

import torch


def length_feature(tokens: torch.Tensor) -> torch.Tensor:
    """What the correction is linear in: log(1 + completion tokens)."""
    return torch.log1p(tokens.to(torch.float64))


def within_pair_slope(chosen: torch.Tensor, rejected: torch.Tensor, chosen_len: torch.Tensor, rejected_len: torch.Tensor) -> torch.Tensor:
    """The median over pairs of each output's reward difference over the pair's length-feature difference:
    ``chosen``/``rejected`` (R, O) rewards, ``*_len`` (R,) completion tokens -> (O,) reward per unit of
    log(1 + tokens) (0 where every pair's two answers are as long)."""
    dl = length_feature(chosen_len) - length_feature(rejected_len)  # (R,)
    differs = dl != 0
    if not differs.any():
        return torch.zeros(chosen.shape[1], dtype=torch.float64)
    slopes = (chosen - rejected).to(torch.float64)[differs] / dl[differs].unsqueeze(1)  # (R', O)
    return torch.quantile(slopes, 0.5, dim=0)  # the middle value (the mean of the two middle ones for an even count)


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
    slope = within_pair_slope(chosen, rejected, ref["chosen_tokens"], ref["rejected_tokens"])
    lc, lr = length_feature(ref["chosen_tokens"]), length_feature(ref["rejected_tokens"])
    corrected = (chosen.to(torch.float64) - slope * lc.unsqueeze(1), rejected.to(torch.float64) - slope * lr.unsqueeze(1))
    lengths = torch.cat([lc, lr])

    def correlation(rewards: torch.Tensor) -> float:  # the outputs' mean against log length, over both sides
        return float(torch.corrcoef(torch.stack([rewards.mean(dim=1), lengths]))[0, 1]) if len(lengths) > 2 else 0.0

    record = {
        "slope": slope.tolist(),
        "per": "log(1 + completion tokens)",
        "fit_on": name,
        "reward_length_correlation": {"before": correlation(torch.cat([chosen, rejected]).to(torch.float64)), "after": correlation(torch.cat(corrected))},
    }
    return corrected[0], record
