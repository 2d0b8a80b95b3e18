"""The naming/scoring split: which half of the corpus each row belongs to.

In: the run's row -> document map (`latents/index.parquet`, else the token index
`acts/index.parquet` of an LM run, else the `doc` column of `corpus.parquet`), a
seed and a kind. Out: `Split`, one boolean per row (True = the
SCORING half, False = the NAMING half).

Kind "doc" (the default) hashes the document id, so every row of one document falls
in the same half: the news corpus cuts one article into about a dozen chunks, and a
name read from some chunks of an article must not be scored on their siblings (nor
a name read from some tokens of a document on its other tokens). Rows
without a document id fall back to their row id. Kind "row" hashes row ids only (the
split of keywords made before the document split existed). Both hashes are fixed
functions of (seed, id), the same in every process and on every machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from saescope.errors import SaescopeError
from saescope.io import read_frame
from saescope.options.examples import SPLIT_KINDS
from saescope.paths import RunPaths
from saescope.store import split_mask

HALVES = ("naming", "scoring", "all")
SCORING_FRACTION = 0.5


def _check_half(half: str) -> None:
    if half not in HALVES:
        raise SaescopeError(f"unknown half {half!r}; choose {', '.join(HALVES)}")


@dataclass(frozen=True)
class Split:
    """One naming/scoring assignment per row."""

    scoring: np.ndarray  # (n_rows,) bool, True = scoring half
    seed: int
    kind: str  # what was hashed: "doc" (document ids, rows without one by row id) or "row"
    _rows: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_rows(self) -> int:
        return len(self.scoring)

    def in_half(self, rows: np.ndarray, half: str) -> np.ndarray:
        """(len(rows),) bool: which of `rows` belong to `half`."""
        _check_half(half)
        if half == "all":
            return np.ones(len(rows), dtype=bool)
        s = self.scoring[rows]
        return s if half == "scoring" else ~s

    def rows(self, half: str) -> np.ndarray:
        """Sorted int64 ids of the rows of `half` (computed once per half)."""
        _check_half(half)
        if half not in self._rows:
            if half == "all":
                self._rows[half] = np.arange(self.n_rows, dtype=np.int64)
            else:
                mask = self.scoring if half == "scoring" else ~self.scoring
                self._rows[half] = np.flatnonzero(mask).astype(np.int64)
        return self._rows[half]


def _doc_hash_scoring(docs: np.ndarray, seed: int) -> np.ndarray:
    """(len(docs),) bool for distinct document ids: blake2b of (seed, id) below the fraction."""
    cut = int(SCORING_FRACTION * 2**64)
    prefix = f"{seed}\x00".encode()
    out = np.empty(len(docs), dtype=bool)
    for i, d in enumerate(docs.tolist()):
        h = hashlib.blake2b(prefix + str(d).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "little") < cut
    return out


def make_split(docs: Any, n_rows: int, seed: int, kind: str = "doc") -> Split:
    """The split of `n_rows` rows whose document ids are `docs` (None: no documents)."""
    if kind not in SPLIT_KINDS:
        raise SaescopeError(f"unknown split kind {kind!r}; choose {' or '.join(SPLIT_KINDS)}")
    with np.errstate(over="ignore"):  # the row hash wraps around on purpose
        by_row = split_mask(np.arange(n_rows, dtype=np.int64), SCORING_FRACTION, seed)
    if kind == "row" or docs is None:
        return Split(by_row, seed, "row")
    docs = pd.Series(docs)
    if len(docs) != n_rows:
        raise SaescopeError(f"{len(docs)} document ids for {n_rows} rows")
    missing = docs.isna().to_numpy() | (docs.astype(str).str.len() == 0).to_numpy()
    codes, uniques = pd.factorize(docs.astype(str), use_na_sentinel=True)
    per_doc = _doc_hash_scoring(np.asarray(uniques), seed)
    scoring = np.where(missing, by_row, per_doc[np.maximum(codes, 0)] if len(uniques) else by_row)
    return Split(np.asarray(scoring, dtype=bool), seed, "doc" if not missing.all() else "row")


def run_docs(run: str | Path, n_rows: int) -> pd.Series | None:
    """Each row's document id: from the latent index, else the token index of an LM run, else
    the corpus; None when none fits."""
    from saescope.corpus import check_store_corpus

    rp = RunPaths(run)
    for path in (rp.latent_index, rp.acts_index, rp.corpus):
        if path == rp.corpus:
            check_store_corpus(run)
        if path.exists() and "doc" in pq.read_schema(path).names:
            col = read_frame(path, columns=["doc"])["doc"]
            if len(col) == n_rows:
                return col
    return None


def load_split(run: str | Path, n_rows: int, seed: int, kind: str = "doc") -> Split:
    """The naming/scoring split of a run's `n_rows` rows."""
    return make_split(run_docs(run, n_rows) if kind == "doc" else None, n_rows, seed, kind)
