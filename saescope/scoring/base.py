"""What every keyword scorer shares: held-out examples, controls, results.

In: a run's examples (`saescope.examples.Examples`, with the naming/scoring split
the keywords were made with). Out: per feature its held-out examples (`HeldOut`:
top activating rows and a seeded sample of rows where it is 0, all from the
SCORING half, as `saescope.examples` picks them), the seeded derangement that
gives each feature another feature's explanation (the shuffled control), and the
fixed per-feature result type `FeatureScore`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from saescope.examples import ExampleOptions, Examples


class HeldOut(NamedTuple):
    """A feature's examples from one half of the split."""

    pos: np.ndarray  # (n_pos,) activating row ids, highest activation first
    neg: np.ndarray  # (n_neg,) row ids where the feature is 0


class FeatureScore(NamedTuple):
    score: float  # NaN when status != "ok"
    shuffled_score: float
    n_pos: int
    n_neg: int
    status: str  # ok | no_keywords | too_few_examples
    reason: str


def held_out(ex: Examples, feature: int, half: str, max_pos: int, n_neg: int, seed: int) -> HeldOut:
    """A feature's examples from one half of the split, as `saescope.examples` picks them.

    pos: the `max_pos` most activating rows of that half; neg: `n_neg` random rows of
    that half where the feature is 0 (drawn with a generator seeded by (seed, feature)).
    """
    fe = ex.of(
        feature, half, ExampleOptions(n_top=max_pos, n_quantiles=0, n_random=n_neg, seed=seed)
    )
    return HeldOut(fe.top_rows, fe.random_rows)


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point (identity for n < 2)."""
    if n < 2:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    for i in range(n):
        if perm[i] == i:  # swap with a neighbour; keeps it a permutation, removes the fixed point
            j = (i + 1) % n
            perm[i], perm[j] = perm[j], perm[i]
    return perm


def summarize(scores: np.ndarray, shuffled: np.ndarray) -> dict[str, float | int | None]:
    """Mean and median of real and shuffled scores over the scored features."""
    ok = ~np.isnan(scores)
    okc = ~np.isnan(shuffled)

    def stat(fn, x: np.ndarray) -> float | None:
        return float(fn(x)) if len(x) else None

    out: dict[str, float | int | None] = {
        "n_scored": int(ok.sum()),
        "mean": stat(np.mean, scores[ok]),
        "median": stat(np.median, scores[ok]),
        "shuffled_mean": stat(np.mean, shuffled[okc]),
        "shuffled_median": stat(np.median, shuffled[okc]),
    }
    return out
