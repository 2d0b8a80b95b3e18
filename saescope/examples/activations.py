"""Every row's feature activations, one column per feature, in one copy.

In: a run directory with the latent cache (`latents/`) or with `acts/` and `sae/`.
Out: `Activations`, a (n_rows, d_sae) CSC matrix of the non-zero codes.

The CSC arrays are filled straight from the sparse (row, feature, value) triples
by a counting sort (`csc_from_triples`): one pass counts each feature's non-zeros,
a second writes every triple to its place. Memory is the matrix itself (8 bytes a
non-zero: int32 row, float32 value) plus one shard at a time, never a COO or CSR
copy of the whole cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from saescope import paths, provenance
from saescope.errors import SaescopeError
from saescope.options.examples import ACTIVATION_SOURCES
from saescope.paths import RunPaths
from saescope.store import ActivationStore

# A callable that yields (rows, features, values) triples, rows ascending within and across.
TripleSource = Callable[[], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class Activations:
    """Feature activations of every row: `codes` is CSC (n_rows, d_sae), rows ascending."""

    codes: sp.csc_matrix
    source: str

    @property
    def n_rows(self) -> int:
        return int(self.codes.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.codes.shape[1])

    def column(self, feature: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64 ascending, values float32) where `feature` is active."""
        lo, hi = self.codes.indptr[feature], self.codes.indptr[feature + 1]
        return self.codes.indices[lo:hi].astype(np.int64), self.codes.data[lo:hi]

    def counts(self) -> np.ndarray:
        """(d_sae,) int64: rows where each feature is active."""
        return np.diff(self.codes.indptr).astype(np.int64)

    def alive(self) -> np.ndarray:
        """Ids of features active on at least one row."""
        return np.flatnonzero(self.counts() > 0).astype(np.int64)

    def check_features(self, features: list[int] | None) -> np.ndarray:
        """The requested feature ids (all alive ones when None), range-checked."""
        if features is None:
            return self.alive()
        ids = np.asarray(sorted(set(int(f) for f in features)), dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= self.d_sae)]
        if len(bad):
            raise SaescopeError(
                f"feature id(s) {', '.join(map(str, bad[:5]))} out of range: the SAE has "
                f"d_sae={self.d_sae} features (ids 0..{self.d_sae - 1})"
            )
        return ids


def csc_from_triples(source: TripleSource, n_rows: int, d_sae: int) -> sp.csc_matrix:
    """The (n_rows, d_sae) float32 CSC matrix of the triples of `source` (read twice).

    Zeros in the triples are dropped. Within a column rows stay in the order the
    source gives them (ascending for a latent cache).
    """
    counts = np.zeros(d_sae, dtype=np.int64)
    for _, feats, vals in source():
        counts += np.bincount(feats[vals != 0], minlength=d_sae)
    nnz = int(counts.sum())
    idx_t = np.int32 if max(nnz, n_rows) < 2**31 else np.int64
    indptr = np.zeros(d_sae + 1, dtype=idx_t)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(nnz, dtype=idx_t)  # row of each non-zero
    data = np.empty(nnz, dtype=np.float32)
    cursor = indptr[:-1].astype(np.int64)  # next free slot of each column
    for rows, feats, vals in source():
        keep = vals != 0
        rows, feats, vals = rows[keep], feats[keep], vals[keep]
        order = np.argsort(feats, kind="stable")  # by feature, rows in source order
        f_sorted = feats[order]
        c = np.bincount(f_sorted, minlength=d_sae)
        first = np.cumsum(c) - c  # position of each feature's first triple in `order`
        pos = cursor[f_sorted] + (np.arange(len(order)) - first[f_sorted])
        indices[pos] = rows[order]
        data[pos] = vals[order]
        cursor += c
    return sp.csc_matrix((data, indices, indptr), shape=(n_rows, d_sae), copy=False)


def _from_latents(run: Path) -> sp.csc_matrix:
    from saescope.latents import LatentCache  # the latents stage imports this package

    rp = RunPaths(run)
    if not (rp.latents / paths.MANIFEST).exists():
        raise SaescopeError(
            f"no latent cache at {rp.latents}; run `saescope latents --run {run}` first "
            "(or pass --activations sae to encode the store with the SAE here)"
        )
    cache = LatentCache(run)
    return csc_from_triples(cache.triples, cache.n_rows, cache.d_sae)


def encode_store(run: Path, batch_size: int = 4096) -> sp.csc_matrix:
    """Encode every store row with the run's SAE; (n_rows, d_sae) sparse float32.

    The triples of the whole store are held once before they become the matrix
    (twice the matrix's memory at the peak); the latent cache avoids that.
    """
    import torch

    from saescope.sae import SAE
    from saescope.sae.sparse import encode_sparse

    rp = RunPaths(run)
    if not rp.sae_weights.exists():
        raise SaescopeError(f"no SAE at {rp.sae}; run `saescope train --run {run}` first")
    sae = SAE.load(rp.sae)
    store = ActivationStore(rp.acts)
    if store.d_in != sae.cfg.d_in:
        raise SaescopeError(
            f"the SAE at {rp.sae} takes d_in={sae.cfg.d_in} but {rp.acts} holds d_in={store.d_in}"
        )
    triples = []
    start = 0
    bar = tqdm(total=store.count, desc="encode store", unit="row")
    with torch.inference_mode():
        for x in store.iter_batches(batch_size, shuffle=False):
            r, f, v = encode_sparse(sae, x)
            triples.append(((r + start).numpy(), f.numpy().astype(np.int32), v.float().numpy()))
            start += len(x)
            bar.update(len(x))
    bar.close()
    return csc_from_triples(lambda: iter(triples), store.count, sae.cfg.d_sae)


def activation_source(rp: RunPaths, activations: str) -> tuple[Path, dict[str, str]]:
    """(SAE folder, upstream identities) of the activations the names or scores read.

    With the latent cache, the SAE is the one the cache was encoded with (recorded in
    the cache), never whatever `sae/` holds now. "sae" is the identity of the SAE's
    weights in both cases, so names and scores can be checked to use the same codes.
    """
    up = provenance.upstream_ids({"corpus": rp.corpus, "acts": rp.acts_manifest})
    if activations == "latents":
        from saescope.latents import LatentCache  # the latents stage imports this package

        cache = LatentCache(rp.root)
        up |= {"latents": provenance.artifact_id(rp.latents_manifest), "sae": cache.sae_sha256}
        return cache.sae_dir(), up
    if not rp.sae_weights.exists():
        raise SaescopeError(f"no SAE at {rp.sae}; run `saescope train --run {rp.root}` first")
    return rp.sae, up | {"sae": provenance.artifact_id(rp.sae_weights)}


def load_activations(run: str | Path, source: str = "latents") -> Activations:
    """All feature activations of a run, from the latent cache or by encoding the store."""
    if source not in ACTIVATION_SOURCES:
        raise SaescopeError(
            f"unknown activation source {source!r}; choose {' or '.join(ACTIVATION_SOURCES)}"
        )
    run = Path(run)
    csc = _from_latents(run) if source == "latents" else encode_store(run)
    return Activations(csc, source)
