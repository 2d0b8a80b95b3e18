"""The co-occurrence table as pairs: read in chunks, and looked up pair by pair.

In: `saescope.features.Cooccurrence` (upper-triangle pair counts, tens of millions
of pairs for a wide SAE on a large cache, and each feature's count). Out: `Pairs`,
which walks the table in fixed-size chunks (so no pass holds more than one chunk's
temporaries) and answers the count of any pair, and the normalised co-occurrence
m_ij = C_ij / min(n_i, n_j) used by the statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from saescope.features import Cooccurrence

CHUNK = 1 << 22  # pairs per chunk: ~4M, a few tens of MB of temporaries


@dataclass(frozen=True)
class Chunk:
    i: np.ndarray  # (n,) int32 (or int64), i < j
    j: np.ndarray  # (n,) same dtype
    count: np.ndarray  # (n,) int64


class Pairs:
    """Pair counts of one co-occurrence table."""

    def __init__(self, co: Cooccurrence) -> None:
        self.co = co
        self.d_sae = len(co.diagonal)
        self.n = co.diagonal.astype(np.int64)  # (d_sae,) rows where each feature fires
        # pair keys i * d_sae + j, ascending as the table is written (sorted once if not)
        self._dtype = np.int32 if self.d_sae**2 < 2**31 else np.int64
        self._keys: np.ndarray | None = None
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.co.counts)

    def chunks(self, size: int = CHUNK) -> Iterator[Chunk]:
        ind, counts = self.co.indices, self.co.counts
        for lo in range(0, len(counts), size):
            hi = lo + size
            yield Chunk(ind[0, lo:hi], ind[1, lo:hi], counts[lo:hi])  # views, no copies

    def normalised(self, c: Chunk) -> np.ndarray:
        """m of a chunk's pairs: the share of the sparser feature's rows where both fire."""
        return c.count / np.maximum(np.minimum(self.n[c.i], self.n[c.j]), 1)

    def _index(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._keys is None:
            ind = self.co.indices
            keys = ind[0].astype(self._dtype) * self._dtype(self.d_sae) + ind[1].astype(self._dtype)
            order = None
            if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
                order = np.argsort(keys, kind="stable")
                keys = keys[order]
            self._keys, self._order = keys, order
        return self._keys, self._order

    def count(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(n,) int64 rows where features a[k] and b[k] both fire (a[k] != b[k])."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        keys, order = self._index()
        q = (lo * self.d_sae + hi).astype(keys.dtype)
        pos = np.searchsorted(keys, q)
        pos = np.minimum(pos, max(len(keys) - 1, 0))
        hit = keys[pos] == q if len(keys) else np.zeros(len(q), dtype=bool)
        idx = order[pos] if order is not None else pos
        return np.where(hit, self.co.counts[idx] if len(keys) else 0, 0).astype(np.int64)

    def m(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(n,) float64 normalised co-occurrence of the pairs (a[k], b[k])."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        return self.count(a, b) / np.maximum(np.minimum(self.n[a], self.n[b]), 1)
