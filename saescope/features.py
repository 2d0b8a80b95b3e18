"""Per-feature statistics over sparse latent triples, with memory that does not grow with rows.

In: sparse (row, feature, value) triples, a batch or a shard at a time, in any grouping.
Out: per feature the count of active rows and the sum and max of its activations,
and a histogram of L0 per row (`FeatureAccumulator`); then, from a second pass over
the sparse shards, the co-occurrence counts of pairs of features (`cooccurrence`,
read back with `read_cooccurrence`). The top, quantile and random examples are
chosen by `saescope.examples` (the one place that picks a feature's examples).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.numpy import load_file as load_numpy

if TYPE_CHECKING:  # saescope.examples imports this module
    from saescope.examples.activations import TripleSource


class FeatureAccumulator:
    """Running count, sum and max of every feature, plus the L0 histogram."""

    def __init__(self, d_sae: int) -> None:
        self.d_sae = d_sae
        self.n_rows = 0
        self.count = torch.zeros(d_sae, dtype=torch.int64)
        self.sum = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.zeros(d_sae, dtype=torch.float32)
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


def cooccurrence(source: TripleSource, d_sae: int, chunk_rows: int = 16384) -> Cooccurrence:
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
