"""Dawid & Skene (1979): the EM that estimates each annotator's confusion matrix and each unit's latent true
class from redundant labels. Aggregation (tether.feedback.aggregation) and annotator reliability (tether.qc)
both use it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DawidSkeneResult:
    """Posteriors (n_units, K), class priors (K,), confusion matrices (n_annotators, K, K): row = true class."""

    posteriors: np.ndarray
    priors: np.ndarray
    confusion: np.ndarray
    iterations: int

    @property
    def reliability(self) -> np.ndarray:
        """Each annotator's expected accuracy, sum_k prior_k * confusion[w, k, k]; shape (n_annotators,)."""
        return np.einsum("k,wkk->w", self.priors, self.confusion)


def dawid_skene(
    unit_idx: np.ndarray,
    annotator_idx: np.ndarray,
    labels: np.ndarray,
    n_units: int,
    n_annotators: int,
    n_classes: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 0.01,
) -> DawidSkeneResult:
    """Dawid & Skene (1979) EM: each annotator has a K x K confusion matrix, each unit a latent true class.

    Inputs are parallel int arrays of shape (n_answers,). Starts from the vote shares (majority vote), then
    alternates the M-step (priors and confusions from the posteriors, with ``smoothing`` pseudo-counts so a
    class an annotator never used keeps a small probability) and the E-step (posteriors from the likelihood).
    """
    unit_idx, annotator_idx, labels = (np.asarray(x, dtype=np.int64) for x in (unit_idx, annotator_idx, labels))
    # Start: vote shares per unit (units nobody answered stay uniform).
    post = np.zeros((n_units, n_classes))
    np.add.at(post, (unit_idx, labels), 1.0)
    empty = post.sum(1) == 0
    post[empty] = 1.0
    post /= post.sum(1, keepdims=True)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        # M-step: class priors and each annotator's confusion rows P(label | true class).
        priors = (post.sum(0) + smoothing) / (n_units + n_classes * smoothing)
        counts = np.full((n_annotators, n_classes, n_classes), smoothing)
        for k in range(n_classes):
            np.add.at(counts[:, k, :], (annotator_idx, labels), post[unit_idx, k])
        confusion = counts / counts.sum(2, keepdims=True)
        # E-step: log P(true = k | answers) = log prior_k + sum over the unit's answers of log confusion[w, k, label].
        log_post = np.tile(np.log(priors), (n_units, 1))
        np.add.at(log_post, unit_idx, np.log(confusion[annotator_idx, :, labels]))
        log_post -= log_post.max(1, keepdims=True)
        new_post = np.exp(log_post)
        new_post /= new_post.sum(1, keepdims=True)
        change = float(np.abs(new_post - post).max())
        post = new_post
        if change < tol:
            break
    return DawidSkeneResult(posteriors=post, priors=priors, confusion=confusion, iterations=iterations)
