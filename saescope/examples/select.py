"""Which rows stand for a feature: top, activation quantiles, random and hard non-activating rows.

In: `Activations`, a `Split` and a half ("naming", "scoring" or "all"), and
`ExampleOptions`. Out: `FeatureExamples` (fixed fields, below), from
`Examples.of(feature, half, opts)`; or, for the table the latents stage wrote,
`from_features_row(row)` (half "all").

`pick` applies the rules to one feature's activating rows; `Examples.of` and the
latents stage's streamed table (`saescope.examples.table`) both call it, so
`Examples.of(f, "all", opts)` with the stage's options and seed gives exactly the
rows of `features.parquet`. The rules:
- top: the `n_top` highest activations of the half, ties to the smaller row id;
- quantiles: the half's activating rows sorted by activation (ties by row id) are
  cut into `n_quantiles` bins of (nearly) equal size by rank; up to `per_quantile`
  rows are drawn at random from each bin (`quantile_pick`);
- random: `n_random` distinct rows of the half where the feature is 0 (`random_inactive`);
- hard: up to `n_hard` rows of the half where the feature is 0 but the features it
  co-occurs with most (cosine of their binary activation patterns) fire strongest:
  the nearest miss in the SAE's own terms, at the cost of a column read per neighbour.
  The co-occurrence counts come from the latent cache (`cooccurrence.safetensors`)
  or, when it has none, from the activations once (a d_sae x d_sae product).
Each feature draws from its own generator seeded by (seed, feature): results do not
depend on which other features are asked for or in what order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from saescope.examples.activations import Activations, load_activations
from saescope.examples.split import Split, load_split
from saescope.features import Cooccurrence, read_cooccurrence
from saescope.paths import RunPaths

_EMPTY_I = np.empty(0, np.int64)
_EMPTY_F = np.empty(0, np.float32)


@dataclass(frozen=True)
class ExampleOptions:
    """How many examples of each kind to draw."""

    n_top: int = 20  # highest activations
    n_quantiles: int = 10  # bins of the activating rows by activation rank
    per_quantile: int = 5  # random rows drawn from each bin
    n_random: int = 20  # random rows where the feature is 0
    n_hard: int = 0  # rows where the feature is 0 but its co-occurring features fire
    n_neighbours: int = 4  # co-occurring features the hard rows come from
    seed: int = 0


class FeatureExamples(NamedTuple):
    """The rows that stand for one feature, all from one half of the split."""

    feature: int
    half: str  # naming | scoring | all
    n_active: int  # activating rows of the feature in this half
    top_rows: np.ndarray  # (n_top,) int64, highest activation first
    top_acts: np.ndarray  # (n_top,) float32
    quantile_rows: np.ndarray  # int64, grouped by bin ascending, activation ascending
    quantile_acts: np.ndarray  # float32
    quantile_bins: np.ndarray  # int16, 0 = lowest activations
    random_rows: np.ndarray  # int64, rows where the feature is 0
    hard_rows: np.ndarray  # int64, rows where the feature is 0, nearest misses first

    def limit(self, n_top: int | None = None, per_quantile: int | None = None) -> FeatureExamples:
        """The first `n_top` top rows and the first `per_quantile` rows of each bin."""
        q = np.arange(len(self.quantile_rows))
        if per_quantile is not None and len(q):
            bins = self.quantile_bins.astype(np.int64)
            first = np.searchsorted(bins, bins, side="left")  # bins are grouped ascending
            q = q[q - first < per_quantile]
        return self._replace(
            top_rows=self.top_rows[:n_top],
            top_acts=self.top_acts[:n_top],
            quantile_rows=self.quantile_rows[q],
            quantile_acts=self.quantile_acts[q],
            quantile_bins=self.quantile_bins[q],
        )


class Picked(NamedTuple):
    """The rows `pick` chooses for one feature: the `FeatureExamples` fields of the rules."""

    top_rows: np.ndarray  # (<= n_top,) int64, highest activation first
    top_acts: np.ndarray  # float32
    quantile_rows: np.ndarray  # int64, grouped by bin ascending, activation ascending
    quantile_acts: np.ndarray  # float32
    quantile_bins: np.ndarray  # int16, 0 = lowest activations
    random_rows: np.ndarray  # int64, rows of the pool where the feature is 0


NOTHING_PICKED = Picked(_EMPTY_I, _EMPTY_F, _EMPTY_I, _EMPTY_F, np.empty(0, np.int16), _EMPTY_I)


def pick(
    rows: np.ndarray,
    vals: np.ndarray,
    pool: int | np.ndarray,
    opts: ExampleOptions,
    feature: int,
    active: np.ndarray | None = None,
) -> Picked:
    """The top, quantile and random rows of `feature` (the rules of the module docstring).

    rows: (c,) int64 ascending, the rows of a half where the feature is active;
    vals: (c,) float32, its activations there. pool: the half's row ids, ascending, or
    n_rows for all rows: where random rows come from. active: every row where the
    feature is active, ascending (default `rows`): random rows avoid them, and a
    feature active nowhere gets none.
    """
    active = rows if active is None else active
    top = top_indices(vals, opts.n_top)
    rng = np.random.default_rng([opts.seed, feature])
    chosen, bins = quantile_pick(len(rows), opts.n_quantiles, opts.per_quantile, rng)
    by_act = np.lexsort((rows, vals))[chosen] if len(chosen) else _EMPTY_I  # act asc, then row
    rand = random_inactive(active, pool, opts.n_random, rng) if len(active) else _EMPTY_I
    return Picked(
        top_rows=rows[top],
        top_acts=vals[top].astype(np.float32),
        quantile_rows=rows[by_act],
        quantile_acts=vals[by_act].astype(np.float32),
        quantile_bins=bins,
        random_rows=rand,
    )


def from_features_row(row: Mapping[str, Any]) -> FeatureExamples:
    """The examples one row of `latents/features.parquet` holds (half "all", no hard rows)."""

    def arr(name: str, dtype: Any) -> np.ndarray:
        v = row.get(name)
        return _EMPTY_I.astype(dtype) if v is None else np.asarray(v, dtype=dtype)

    return FeatureExamples(
        feature=int(row["feature"]),
        half="all",
        n_active=int(row["count"]),
        top_rows=arr("top_rows", np.int64),
        top_acts=arr("top_acts", np.float32),
        quantile_rows=arr("quantile_rows", np.int64),
        quantile_acts=arr("quantile_acts", np.float32),
        quantile_bins=arr("quantile_bins", np.int16),
        random_rows=arr("random_rows", np.int64),
        hard_rows=_EMPTY_I,
    )


def top_indices(vals: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest of `vals` (in row order), largest first, ties to the smaller index.

    A partition first, so a column of a million rows is not sorted for twenty of them.
    """
    if n <= 0 or not len(vals):
        return _EMPTY_I
    if n < len(vals):
        cut = vals[np.argpartition(-vals, n - 1)[:n]].min()
        cand = np.flatnonzero(vals >= cut)  # every tie of the n-th value, in row order
    else:
        cand = np.arange(len(vals))
    return cand[np.lexsort((cand, -vals[cand]))][:n]


def quantile_pick(
    c: int, n_quantiles: int, per_quantile: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into c activation-sorted rows (and their bins): up to per_quantile per bin."""
    if c == 0 or n_quantiles < 1 or per_quantile < 1:
        return _EMPTY_I, np.empty(0, np.int16)
    bins = (np.arange(c) * n_quantiles) // c  # bin of each rank, 0 = lowest
    keys = rng.random(c)
    order = np.lexsort((keys, bins))  # within each bin, a random order
    bin_sorted = bins[order]
    first = np.searchsorted(bin_sorted, bin_sorted, side="left")
    chosen = np.sort(order[np.arange(c) - first < per_quantile])  # bin asc, then act asc
    return chosen, bins[chosen].astype(np.int16)


def is_in(sorted_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) bool: which of `rows` are in the ascending array `sorted_rows`."""
    if not len(sorted_rows):
        return np.zeros(len(rows), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_rows, rows), len(sorted_rows) - 1)
    return sorted_rows[pos] == rows


def random_inactive(
    active_sorted: np.ndarray, pool: int | np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to n distinct random rows of `pool` not in active_sorted.

    pool: the row ids to draw from, ascending, or an int n_rows for [0, n_rows).
    """
    size = pool if isinstance(pool, int) else len(pool)
    in_pool = active_sorted if isinstance(pool, int) else active_sorted[is_in(pool, active_sorted)]
    n_free = size - len(in_pool)
    n = min(n, n_free)
    if n <= 0:
        return _EMPTY_I
    if n_free < 4 * n:  # few free rows: enumerate them
        every = np.arange(size, dtype=np.int64) if isinstance(pool, int) else pool
        free = np.setdiff1d(every, in_pool, assume_unique=True)
        return rng.choice(free, size=n, replace=False)
    picked: list[int] = []
    seen: set[int] = set()
    while len(picked) < n:
        cand = rng.integers(0, size, size=2 * n)
        if not isinstance(pool, int):
            cand = pool[cand]
        for x in cand[~is_in(active_sorted, cand)].tolist():
            if x not in seen:
                seen.add(x)
                picked.append(x)
                if len(picked) == n:
                    break
    return np.array(picked, dtype=np.int64)


def neighbour_table(co: Cooccurrence, m: int) -> np.ndarray:
    """(d_sae, m) int64: each feature's m most co-occurring features (cosine), -1 padded."""
    d = len(co.diagonal)
    out = np.full((d, m), -1, dtype=np.int64)
    if m < 1 or not len(co.counts):
        return out
    i, j = co.indices[0].astype(np.int64), co.indices[1].astype(np.int64)
    diag = co.diagonal.astype(np.float64)
    cos = co.counts / np.sqrt(np.maximum(diag[i] * diag[j], 1.0))
    a, b, s = np.r_[i, j], np.r_[j, i], np.r_[cos, cos]
    order = np.lexsort((b, -s, a))  # by feature, best neighbour first, ties to smaller id
    a, b = a[order], b[order]
    rank = np.arange(len(a)) - np.searchsorted(a, a, side="left")
    keep = rank < m
    out[a[keep], rank[keep]] = b[keep]
    return out


def cooccurrence_of(acts: Activations) -> Cooccurrence:
    """Co-occurrence counts computed from the activations (B^T B of the binarised codes)."""
    c = acts.codes
    b = sp.csc_matrix((np.ones(c.nnz, np.float32), c.indices, c.indptr), shape=c.shape)
    xtx = (b.T @ b).tocoo()  # (d_sae, d_sae)
    upper = xtx.row < xtx.col
    order = np.lexsort((xtx.col[upper], xtx.row[upper]))
    return Cooccurrence(
        np.stack([xtx.row[upper][order], xtx.col[upper][order]]).astype(np.int32),
        np.rint(xtx.data[upper][order]).astype(np.int64),
        acts.counts(),
    )


@dataclass
class Examples:
    """The one place that picks a feature's example rows (see the module docstring).

    `of(feature, half, opts)` -> FeatureExamples. `half_rows(half)` are all the rows
    of a half (the background some namers contrast a feature's rows with).
    """

    acts: Activations
    split: Split
    cooccurrence: Cooccurrence | None = None  # for hard rows; computed when needed if None
    _neighbours: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def n_rows(self) -> int:
        return self.acts.n_rows

    def half_rows(self, half: str) -> np.ndarray:
        return self.split.rows(half)

    def neighbours(self, m: int) -> np.ndarray:
        """(d_sae, m) each feature's m most co-occurring features, -1 padded."""
        if m not in self._neighbours:
            if self.cooccurrence is None:
                self.cooccurrence = cooccurrence_of(self.acts)
            self._neighbours[m] = neighbour_table(self.cooccurrence, m)
        return self._neighbours[m]

    def of(
        self, feature: int, half: str = "all", opts: ExampleOptions = ExampleOptions()
    ) -> FeatureExamples:
        """The examples of `feature` from `half` of the split."""
        all_rows, all_vals = self.acts.column(feature)  # rows ascending
        keep = self.split.in_half(all_rows, half)
        rows, vals = all_rows[keep], all_vals[keep]
        pool: int | np.ndarray = self.n_rows if half == "all" else self.split.rows(half)
        picked = pick(rows, vals, pool, opts, feature, active=all_rows)
        hard = self._hard(feature, all_rows, half, opts) if opts.n_hard > 0 else _EMPTY_I
        return FeatureExamples(
            feature=int(feature), half=half, n_active=len(rows), **picked._asdict(), hard_rows=hard
        )

    def _hard(
        self, feature: int, active_sorted: np.ndarray, half: str, opts: ExampleOptions
    ) -> np.ndarray:
        """Rows of `half` where `feature` is 0, strongest on its co-occurring features first."""
        lists = []
        for g in self.neighbours(opts.n_neighbours)[feature].tolist():
            if g < 0:
                break
            rows, vals = self.acts.column(g)
            ok = self.split.in_half(rows, half) & ~is_in(active_sorted, rows)
            rows, vals = rows[ok], vals[ok]
            n = min(opts.n_hard, len(rows))
            best = np.argpartition(-vals, n - 1)[:n] if n else _EMPTY_I
            lists.append(rows[best[np.lexsort((rows[best], -vals[best]))]])
        # round robin over the neighbours, best first, each row once
        out: list[int] = []
        seen: set[int] = set()
        for i in range(max((len(x) for x in lists), default=0)):
            for x in lists:
                if i < len(x) and int(x[i]) not in seen and len(out) < opts.n_hard:
                    seen.add(int(x[i]))
                    out.append(int(x[i]))
        return np.asarray(out, dtype=np.int64)


def open_examples(
    run: str | Path, activations: str = "latents", split_seed: int = 1, split_kind: str = "doc"
) -> Examples:
    """The examples of a run: its activations (latent cache or SAE) and its split.

    Hard rows use the cache's co-occurrence table when the activations come from it.
    """
    acts = load_activations(run, activations)
    split = load_split(run, acts.n_rows, split_seed, split_kind)
    co_path = RunPaths(run).cooccurrence
    co = read_cooccurrence(co_path) if activations == "latents" and co_path.exists() else None
    return Examples(acts, split, co)
