"""Where a feature's examples come from, and the naming/scoring split.

In: a run directory with `acts/` and either a latent cache (`latents/`, made by
`saescope latents`) or an SAE (`sae/`). Out: `Activations`, a sparse
(n_rows, d_sae) matrix of feature activations (CSC: one column per feature),
and helpers for text vectors.

The split: every row of the corpus is assigned, by a fixed hash of its row id
(`saescope.store.split_mask(rows, 0.5, seed)`), to the NAMING half (False) or the
SCORING half (True). Keywords are extracted only from naming rows; scorers use
only scoring rows, so a name is never scored on the texts it was read from.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from saescope import paths
from saescope.errors import SaescopeError
from saescope.paths import RunPaths
from saescope.store import ActivationStore, split_mask

ACTIVATION_SOURCES = ("latents", "sae")
SPLIT_FRACTION = 0.5


def scoring_mask(rows: np.ndarray, seed: int) -> np.ndarray:
    """True where a row belongs to the scoring half, False for the naming half."""
    return split_mask(np.asarray(rows, dtype=np.int64), SPLIT_FRACTION, seed)


@dataclass(frozen=True)
class Activations:
    """Feature activations of every row: `codes` is CSC (n_rows, d_sae)."""

    codes: sp.csc_matrix
    source: str

    @property
    def n_rows(self) -> int:
        return int(self.codes.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.codes.shape[1])

    def column(self, feature: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) where `feature` is active, rows ascending."""
        lo, hi = self.codes.indptr[feature], self.codes.indptr[feature + 1]
        return self.codes.indices[lo:hi].astype(np.int64), self.codes.data[lo:hi]

    def alive(self) -> np.ndarray:
        """Ids of features active on at least one row."""
        return np.nonzero(np.diff(self.codes.indptr) > 0)[0].astype(np.int64)

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


def _from_latents(run: Path) -> sp.csr_matrix:
    rp = RunPaths(run)
    if not (rp.latents / paths.MANIFEST).exists():
        raise SaescopeError(
            f"no latent cache at {rp.latents}; run `saescope latents --run {run}` first "
            "(or pass --activations sae to encode the store with the SAE here)"
        )
    try:
        mod = importlib.import_module("saescope.latents")
    except ImportError as exc:
        raise SaescopeError(
            "this saescope has no latent cache reader (saescope.latents); pass --activations sae"
        ) from exc
    return sp.csr_matrix(mod.LatentCache(run).to_csr(), dtype=np.float32)


def encode_store(run: Path, batch_size: int = 4096) -> sp.csr_matrix:
    """Encode every store row with the run's SAE; (n_rows, d_sae) sparse float32."""
    from saescope.sae import SAE

    rp = RunPaths(run)
    if not rp.sae_weights.exists():
        raise SaescopeError(f"no SAE at {rp.sae}; run `saescope train --run {run}` first")
    sae = SAE.load(rp.sae)
    store = ActivationStore(rp.acts)
    if store.d_in != sae.cfg.d_in:
        raise SaescopeError(
            f"the SAE at {rp.sae} takes d_in={sae.cfg.d_in} but {rp.acts} holds d_in={store.d_in}"
        )
    blocks = []
    bar = tqdm(total=store.count, desc="encode store", unit="row")
    with torch.inference_mode():
        for x in store.iter_batches(batch_size, shuffle=False):
            blocks.append(sp.csr_matrix(sae.encode(x).numpy()))
            bar.update(len(x))
    bar.close()
    return sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, sae.cfg.d_sae), dtype="f4")


def load_activations(run: str | Path, source: str = "latents") -> Activations:
    """All feature activations of a run, from the latent cache or by encoding the store."""
    if source not in ACTIVATION_SOURCES:
        raise SaescopeError(
            f"unknown activation source {source!r}; choose {' or '.join(ACTIVATION_SOURCES)}"
        )
    run = Path(run)
    csr = _from_latents(run) if source == "latents" else encode_store(run)
    csr.eliminate_zeros()
    return Activations(csr.tocsc(), source)


def store_is_text_embedding(store: ActivationStore, model: str) -> bool:
    """True when the store rows are `model`'s embeddings of the corpus texts, in order."""
    return store.meta.get("source") == "sentence-transformers" and store.meta.get("model") == model


def run_model_name(store: ActivationStore, override: str | None = None) -> str:
    """The sentence model to embed phrases and queries with."""
    from saescope.defaults import DEFAULT_EMBED_MODEL

    return override or store.meta.get("model") or DEFAULT_EMBED_MODEL


def text_vectors(
    store: ActivationStore, texts: list[str], rows: np.ndarray, model_name: str, embedder
) -> np.ndarray:
    """(len(rows), d) unit vectors of the texts of `rows` under `model_name`.

    The store rows themselves when the store holds this model's text embeddings
    (cosine ignores whether they were normalised); otherwise the texts are embedded.
    """
    from saescope.interp.candidates import unit_rows

    rows = np.asarray(rows, dtype=np.int64)
    if store_is_text_embedding(store, model_name):
        return unit_rows(store.rows(rows).numpy())
    return embedder.unit([texts[int(r)] for r in rows])
