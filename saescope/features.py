"""Per-feature statistics over sparse latent triples, with memory that does not grow with rows.

In: sparse (row, feature, value) triples, a batch or a shard at a time, in any grouping.
Out: per feature the count of active rows, the sum and max of its activations,
its top-N (value, row) pairs (ties broken by the smaller row id, so the result does
not depend on how the rows were batched), and a histogram of L0 per row
(`FeatureAccumulator`); then, from a second pass over the sparse shards,
quantile-binned and random contrast examples (`sample_examples`) and the
co-occurrence counts of pairs of features (`cooccurrence`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

# A callable that yields (rows, features, values) triples of every shard, in row order.
ShardSource = Callable[[], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run small torch ops on one thread: on a busy machine, waking a second intra-op
    thread for each of dozens of tiny ops per batch costs far more than the ops."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class FeatureAccumulator:
    """Running count, sum, max and top-N of every feature, plus the L0 histogram."""

    def __init__(self, d_sae: int, top_n: int) -> None:
        self.d_sae = d_sae
        self.top_n = top_n
        self.n_rows = 0
        self.count = torch.zeros(d_sae, dtype=torch.int64)
        self.sum = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.zeros(d_sae, dtype=torch.float32)
        self.top_vals = torch.full((d_sae, top_n), -torch.inf)  # (d_sae, top_n), descending
        self.top_rows = torch.full((d_sae, top_n), -1, dtype=torch.int64)
        self.l0_hist = torch.zeros(d_sae + 1, dtype=torch.int64)  # rows with L0 == i

    def add(
        self,
        rows: torch.Tensor,
        features: torch.Tensor,
        values: torch.Tensor,
        start: int,
        stop: int,
    ) -> None:
        """Fold in the non-zeros of rows [start, stop): rows int64, features int64, values float32."""
        n = stop - start
        self.n_rows += n
        per_row = torch.bincount(rows - start, minlength=n)  # (n,)
        self.l0_hist += torch.bincount(per_row, minlength=self.d_sae + 1)[: self.d_sae + 1]
        if len(values) == 0:
            return
        self.count += torch.bincount(features, minlength=self.d_sae)
        self.sum.index_add_(0, features, values.double())
        self.max = torch.maximum(
            self.max, torch.zeros_like(self.max).scatter_reduce(0, features, values, "amax")
        )
        # only values that reach a feature's current N-th best can enter its top-N;
        # after the first batches that is a small fraction of the triples
        cand = values >= self.top_vals[:, -1][features]
        if bool(cand.any()):
            self._merge_top(rows[cand], features[cand], values[cand])

    def _merge_top(self, rows: torch.Tensor, features: torch.Tensor, values: torch.Tensor) -> None:
        # order triples by (feature, value desc, row asc): triples arrive row-major, so two
        # stable sorts keep the smaller row first among equal values
        v_sorted, order = torch.sort(values, descending=True, stable=True)
        f_sorted, order2 = torch.sort(features[order], stable=True)
        v_sorted, r_sorted = v_sorted[order2], rows[order][order2]
        counts = torch.bincount(f_sorted, minlength=self.d_sae)
        rank = torch.arange(len(f_sorted)) - (torch.cumsum(counts, 0) - counts)[f_sorted]
        keep = rank < self.top_n
        touched = torch.nonzero(counts).squeeze(1)  # (t,) features with candidates
        slot = torch.searchsorted(touched, f_sorted[keep])
        cand_v = torch.full((len(touched), self.top_n), -torch.inf)
        cand_r = torch.full((len(touched), self.top_n), -1, dtype=torch.int64)
        cand_v[slot, rank[keep]] = v_sorted[keep]
        cand_r[slot, rank[keep]] = r_sorted[keep]
        vals, rws = top_merge(
            torch.cat([self.top_vals[touched], cand_v], 1),
            torch.cat([self.top_rows[touched], cand_r], 1),
            self.top_n,
        )
        self.top_vals[touched] = vals
        self.top_rows[touched] = rws


def top_merge(vals: torch.Tensor, rows: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best n per row of (d_sae, m) candidates: value descending, then row id ascending."""
    # empty slots (row -1, value -inf) sort last either way
    key_rows = torch.where(rows < 0, torch.iinfo(torch.int64).max, rows)
    _, by_row = torch.sort(key_rows, dim=1, stable=True)
    vals, rows = vals.gather(1, by_row), rows.gather(1, by_row)
    _, by_val = torch.sort(vals, dim=1, descending=True, stable=True)
    return vals.gather(1, by_val[:, :n]), rows.gather(1, by_val[:, :n])


@dataclass(frozen=True)
class ExampleSets:
    """Per-feature example lists (index = feature id); dead features have empty arrays."""

    quantile_rows: list[np.ndarray]  # int64, grouped by bin ascending, activation ascending
    quantile_acts: list[np.ndarray]  # float32
    quantile_bins: list[np.ndarray]  # int16, 0 = lowest activations
    random_rows: list[np.ndarray]  # int64, rows where the feature is 0
    hists: dict[int, tuple[np.ndarray, np.ndarray]]  # feature -> (counts, bin edges)


def feature_blocks(counts: np.ndarray, max_nnz: int) -> list[tuple[int, int]]:
    """Split [0, d_sae) into feature ranges holding at most max_nnz non-zeros (one feature at least)."""
    blocks, lo, acc = [], 0, 0
    for f, c in enumerate(counts.tolist()):
        if acc and acc + c > max_nnz:
            blocks.append((lo, f))
            lo, acc = f, 0
        acc += c
    blocks.append((lo, len(counts)))
    return blocks


def sample_examples(
    source: ShardSource,
    counts: np.ndarray,
    n_rows: int,
    *,
    n_quantiles: int,
    per_quantile: int,
    n_random: int,
    seed: int,
    max_nnz: int,
    hist_features: Iterable[int] = (),
    hist_bins: int = 40,
) -> ExampleSets:
    """Quantile-binned examples and random non-activating rows for every feature.

    A feature's activating rows are sorted by activation and cut into `n_quantiles`
    bins of (nearly) equal size by rank; up to `per_quantile` rows are drawn at random
    from each bin. Each feature draws from its own generator seeded by (seed, feature),
    so results do not depend on how features are grouped. Features are processed in
    blocks of at most `max_nnz` non-zeros, one pass over the shards per block, which
    bounds memory whatever the number of rows.
    """
    d_sae = len(counts)
    empty_i, empty_f = np.empty(0, np.int64), np.empty(0, np.float32)
    q_rows, q_acts = [empty_i] * d_sae, [empty_f] * d_sae
    q_bins, rand = [np.empty(0, np.int16)] * d_sae, [empty_i] * d_sae
    hist_set = set(int(f) for f in hist_features)
    hists: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for lo, hi in feature_blocks(counts, max_nnz):
        if counts[lo:hi].sum() == 0:
            continue
        parts = []
        for rows, feats, vals in source():
            m = (feats >= lo) & (feats < hi)
            parts.append((rows[m], feats[m], vals[m]))
        rows = np.concatenate([p[0] for p in parts])
        feats = np.concatenate([p[1] for p in parts])
        vals = np.concatenate([p[2] for p in parts])
        order = np.lexsort((rows, vals, feats))  # feature, then value asc, then row asc
        rows, feats, vals = rows[order], feats[order], vals[order]
        bounds = np.searchsorted(feats, np.arange(lo, hi + 1))
        for f in range(lo, hi):
            s, e = bounds[f - lo], bounds[f - lo + 1]
            if s == e:
                continue
            rng = np.random.default_rng([seed, f])
            r, v = rows[s:e], vals[s:e]
            pick, bins = _quantile_pick(len(r), n_quantiles, per_quantile, rng)
            q_rows[f], q_acts[f], q_bins[f] = r[pick], v[pick], bins
            rand[f] = _random_inactive(np.sort(r), n_rows, n_random, rng)
            if f in hist_set:
                hists[f] = np.histogram(v, bins=hist_bins, range=(0.0, float(v[-1])))
    return ExampleSets(q_rows, q_acts, q_bins, rand, hists)


def _quantile_pick(
    c: int, n_quantiles: int, per_quantile: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into c activation-sorted rows (and their bins): up to per_quantile per bin."""
    bins = (np.arange(c) * n_quantiles) // c  # bin of each rank, 0 = lowest
    keys = rng.random(c)
    order = np.lexsort((keys, bins))  # within each bin, a random order
    bin_sorted = bins[order]
    first = np.searchsorted(bin_sorted, bin_sorted, side="left")
    chosen = np.sort(order[np.arange(c) - first < per_quantile])  # bin asc, then act asc
    return chosen, bins[chosen].astype(np.int16)


def _random_inactive(
    active_sorted: np.ndarray, n_rows: int, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to n distinct random rows of [0, n_rows) not in active_sorted."""
    n_free = n_rows - len(active_sorted)
    n = min(n, n_free)
    if n <= 0:
        return np.empty(0, np.int64)
    if n_free < 4 * n:  # few free rows: enumerate them
        free = np.setdiff1d(np.arange(n_rows, dtype=np.int64), active_sorted, assume_unique=True)
        return rng.choice(free, size=n, replace=False)
    picked: list[int] = []
    seen: set[int] = set()
    while len(picked) < n:
        cand = rng.integers(0, n_rows, size=2 * n)
        pos = np.searchsorted(active_sorted, cand)
        hit = (pos < len(active_sorted)) & (
            active_sorted[np.minimum(pos, len(active_sorted) - 1)] == cand
        )
        for x in cand[~hit].tolist():
            if x not in seen:
                seen.add(x)
                picked.append(x)
                if len(picked) == n:
                    break
    return np.array(picked, dtype=np.int64)


@dataclass(frozen=True)
class Cooccurrence:
    """Rows in which two features are both active, upper triangle only."""

    indices: np.ndarray  # (2, nnz) int32, indices[0] < indices[1]
    counts: np.ndarray  # (nnz,) int64
    diagonal: np.ndarray  # (d_sae,) int64: rows where each feature is active

    def dense(self) -> np.ndarray:
        """(d_sae, d_sae) symmetric counts with the diagonal (only for small d_sae)."""
        d = len(self.diagonal)
        out = np.zeros((d, d), dtype=np.int64)
        out[self.indices[0], self.indices[1]] = self.counts
        out[self.indices[1], self.indices[0]] = self.counts
        out[np.arange(d), np.arange(d)] = self.diagonal
        return out


DENSE_COOCCURRENCE_MAX = 4096  # up to this d_sae a dense int64 table (<= 134 MB) is cheaper


def cooccurrence(source: ShardSource, d_sae: int, chunk_rows: int = 16384) -> Cooccurrence:
    """X^T X of the binarised (n_rows, d_sae) codes, summed over chunks of rows.

    Each chunk's product is a scipy sparse matrix; they are summed into a dense
    table for d_sae <= DENSE_COOCCURRENCE_MAX and as a sparse matrix beyond, so no
    dense d_sae x d_sae table is ever made for large SAEs.
    """
    dense = d_sae <= DENSE_COOCCURRENCE_MAX
    total: np.ndarray | sp.csr_matrix = (
        np.zeros((d_sae, d_sae), np.int64)
        if dense
        else sp.csr_matrix((d_sae, d_sae), dtype=np.int64)
    )
    for rows, feats, _ in source():
        if len(rows) == 0:
            continue
        r0 = int(rows[0])  # rows are sorted within a shard
        local = rows - r0
        for lo in range(0, int(local[-1]) + 1, chunk_rows):
            a, b = np.searchsorted(local, [lo, lo + chunk_rows])
            if a == b:
                continue
            x = sp.csr_matrix(
                (np.ones(b - a, np.int32), (local[a:b] - lo, feats[a:b])),
                shape=(chunk_rows, d_sae),
            )
            xtx = x.T.tocsr() @ x  # (d_sae, d_sae) int32 counts of this chunk
            if dense:
                total += xtx.toarray()
            else:
                total = total + xtx.astype(np.int64)
    if dense:
        diagonal = np.diagonal(total).copy()
        i, j = np.nonzero(np.triu(total, 1))  # row-major: sorted by (i, j)
        counts = total[i, j]
    else:
        diagonal = np.asarray(total.diagonal(), dtype=np.int64)
        upper = sp.triu(total, k=1).tocoo()
        keep = upper.data > 0
        order = np.lexsort((upper.col[keep], upper.row[keep]))
        i, j, counts = upper.row[keep][order], upper.col[keep][order], upper.data[keep][order]
    return Cooccurrence(
        np.ascontiguousarray(np.stack([i, j]).astype(np.int32)),
        np.asarray(counts, dtype=np.int64),
        diagonal.astype(np.int64),
    )
