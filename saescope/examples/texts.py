"""The texts and text vectors of example rows.

In: the activation store (whose rows may already be the sentence model's text
embeddings), the corpus texts and a sentence model name. Out: unit vectors of the
texts of given rows, and which sentence model a run's phrases are embedded with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from saescope.store import ActivationStore


def store_is_text_embedding(store: ActivationStore, model: str) -> bool:
    """True when the store rows are `model`'s embeddings of the corpus texts, in order."""
    return store.meta.get("source") == "sentence-transformers" and store.meta.get("model") == model


def run_model_name(store: ActivationStore, override: str | None = None) -> str:
    """The sentence model to embed phrases and queries with: the store's own for
    sentence-embedding runs, else (LM runs, imported vectors) the packaged MiniLM."""
    from saescope.defaults import DEFAULT_EMBED_MODEL

    if override:
        return override
    if store.meta.get("source") == "sentence-transformers" and store.meta.get("model"):
        return str(store.meta["model"])
    return DEFAULT_EMBED_MODEL  # token stores and imported vectors: the packaged MiniLM


def text_vectors(
    store: ActivationStore, texts: Sequence[str], rows: np.ndarray, model_name: str, embedder
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
