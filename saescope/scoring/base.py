"""What every keyword scorer shares: held-out examples, controls, results.

In: feature activations (`saescope.interp.examples.Activations`) and the
naming/scoring split seed the keywords were made with. Out: per feature its
held-out examples (`HeldOut`: activating rows and a seeded sample of rows where
it is 0, all from the SCORING half), the seeded derangement that gives each
feature another feature's explanation (the shuffled control), and the fixed
per-feature result type `FeatureScore`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from saescope.interp.examples import Activations, scoring_mask


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


def held_out(
    acts: Activations,
    feature: int,
    split_seed: int,
    max_pos: int,
    n_neg: int,
    rng: np.random.Generator,
    half: str = "scoring",
) -> HeldOut:
    """Activating and non-activating rows of `feature` in one half of the split.

    pos: the `max_pos` most activating rows of that half; neg: `n_neg` rows drawn
    with `rng` among that half's rows where the feature is 0.
    """
    rows, vals = acts.column(feature)
    in_half = scoring_mask(rows, split_seed)
    if half == "naming":
        in_half = ~in_half
    rows, vals = rows[in_half], vals[in_half]
    pos = rows[np.argsort(-vals, kind="stable")][:max_pos]
    active = np.zeros(acts.n_rows, dtype=bool)
    active[acts.column(feature)[0]] = True
    neg = np.zeros(0, dtype=np.int64)
    if n_neg > 0:
        # rejection sampling: features are sparse, so a few rounds are enough
        want = n_neg
        picked: list[np.ndarray] = []
        for _ in range(20):
            cand = rng.integers(0, acts.n_rows, size=4 * want + 16)
            mask = scoring_mask(cand, split_seed)
            ok = cand[(mask if half == "scoring" else ~mask) & ~active[cand]]
            picked.append(ok)
            uniq = np.unique(np.concatenate(picked))
            if len(uniq) >= want:
                break
        uniq = np.unique(np.concatenate(picked)) if picked else neg
        neg = rng.permutation(uniq)[:want].astype(np.int64)
    return HeldOut(pos.astype(np.int64), neg)


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
