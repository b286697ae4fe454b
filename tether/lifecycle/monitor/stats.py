"""The statistics of the monitoring report (numpy; hand-checked in tests/test_monitor.py): PSI, the AUC of thumbs,
the MMD permutation test, the one-sided test of a rate rise."""

from __future__ import annotations

import math

import numpy as np


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index: sum over the reference's quantile bins of (q - p) * ln(q / p), where p and q
    are the reference's and the current sample's shares of each bin (floored at ``eps``)."""
    reference = np.asarray(reference, dtype=float)
    current = np.asarray(current, dtype=float)
    if reference.size == 0 or current.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=edges.size + 1) / reference.size
    q = np.bincount(np.searchsorted(edges, current, side="right"), minlength=edges.size + 1) / current.size
    p, q = np.maximum(p, eps), np.maximum(q, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def auc_thumbs(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, int, int]:
    """AUC of ``scores`` separating ``labels`` True from False (Mann-Whitney U / (n1 n0), ties count half) and its
    Hanley-McNeil standard error; returns (auc, se, n_pos, n_neg)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return float("nan"), float("nan"), n1, n0
    ranks = rankdata(scores)
    auc = (ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / (n1 * n0)
    return float(auc), float(math.sqrt(max(var, 0.0))), n1, n0


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, permutations: int = 1000, seed: int = 0, stop_above: float | None = None
) -> tuple[float, float]:
    """Biased MMD^2 between samples ``x`` (n, d) and ``y`` (m, d) with an RBF kernel whose bandwidth is the median
    pairwise distance of the pooled sample; p-value = (1 + #{permuted MMD^2 >= observed}) / (1 + permutations).

    ``stop_above``: stop early once the p-value can no longer fall below it (the test has already failed); the
    p-value returned is then the estimate from the permutations drawn so far."""
    z = np.concatenate([x, y]).astype(np.float64)
    n, total = len(x), len(x) + len(y)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off_diag = d2[np.triu_indices(total, k=1)]
    sigma2 = np.median(off_diag) if off_diag.size else 1.0
    kernel = np.exp(-d2 / (2 * max(sigma2, 1e-12)))

    kernel32 = kernel.astype(np.float32)
    total_sum = float(kernel.sum())

    def stat(assign: np.ndarray) -> np.ndarray:  # assign: (P, total), 1 for the x side
        ak = assign.astype(np.float32, copy=False) @ kernel32  # (P, total): row sums of K over the x side
        kxx = np.sum(ak * assign, axis=1, dtype=np.float64)  # sum over x, x'
        kxy = np.sum(ak, axis=1, dtype=np.float64) - kxx  # sum over x, y
        kyy = total_sum - kxx - 2 * kxy  # sum over y, y' (all pairs sum to total_sum)
        m = total - n
        return kxx / n**2 + kyy / m**2 - 2 * kxy / (n * m)

    observed = float(stat(np.r_[np.ones(n), np.zeros(total - n)][None, :])[0])
    rng = np.random.default_rng(seed)
    count = done = 0
    side = np.r_[np.ones(n, dtype=np.float32), np.zeros(total - n, dtype=np.float32)]
    while done < permutations:
        p = min(256, permutations - done)
        assign = rng.permuted(np.broadcast_to(side, (p, total)), axis=1)  # each row: a random relabelling
        count += int(np.sum(stat(assign) >= observed - 1e-6))
        done += p
        if stop_above is not None and (1 + count) / (1 + permutations) >= stop_above:
            return observed, (1 + count) / (1 + done)
    return observed, (1 + count) / (1 + permutations)


def rate_rise_pvalue(k1: int, n1: int, k0: int, n0: int) -> float:
    """One-sided two-proportion z-test p-value that rate k1/n1 exceeds k0/n0 (pooled variance)."""
    from scipy.stats import norm

    if n1 == 0 or n0 == 0:
        return float("nan")
    pooled = (k1 + k0) / (n1 + n0)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    if se == 0:
        return 1.0 if k1 / n1 <= k0 / n0 else 0.0
    return float(norm.sf((k1 / n1 - k0 / n0) / se))
