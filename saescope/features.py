"""Per-feature statistics over sparse latent triples, with memory that does not grow with rows.

In: sparse (row, feature, value) triples, a batch or a shard at a time, in any grouping.
Out: per feature the count of active rows, the sum and max of its activations,
its top-N (value, row) pairs (ties broken by the smaller row id, so the result does
not depend on how the rows were batched), and a histogram of L0 per row
(`FeatureAccumulator`); then, from a second pass over the sparse shards, the
co-occurrence counts of pairs of features (`cooccurrence`, read back with
`read_cooccurrence`). The quantile and random examples are chosen by
`saescope.examples` (the one place that picks a feature's examples).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.numpy import load_file as load_numpy

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


def read_cooccurrence(path: Path) -> Cooccurrence:
    """The co-occurrence table the latents stage saved (`cooccurrence.safetensors`)."""
    t = load_numpy(str(path))
    return Cooccurrence(t["indices"], t["counts"], t["diagonal"])


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
