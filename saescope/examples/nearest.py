"""Non-activating rows nearest to where a feature fires (contrastive negatives, hard negatives).

In: the run's `Examples`, its store and row texts, and a sentence embedder. Out, for a
feature and its activating rows: the `n` rows of a seeded pool of the feature's
inactive rows of one half (naming for the contrastive explainer, scoring for the
scorers' `--negatives nearest`) whose sentence embeddings are nearest (cosine) to
the mean of the activating rows' embeddings. Embedding runs read the vectors from
the store; LM runs embed each token row's short window (`TokenTexts`) with the
packaged MiniLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from saescope.examples import ExampleOptions, Examples, store_is_text_embedding, text_vectors
from saescope.store import ActivationStore


class NearestInactive:
    def __init__(
        self,
        ex: Examples,
        store: ActivationStore,
        texts: Sequence[str],
        model_name: str,
        embedder,
        n: int,
        pool: int,
        seed: int,
        half: str = "naming",
    ) -> None:
        self.ex, self.store, self.texts = ex, store, texts
        self.model_name, self.embedder = model_name, embedder
        self.n, self.pool, self.seed, self.half = n, pool, seed, half

    def _vectors(self, rows: np.ndarray) -> np.ndarray:
        return text_vectors(self.store, self.texts, rows, self.model_name, self.embedder)

    def __call__(self, feature: int, rows: list[int]) -> list[int]:
        opts = ExampleOptions(n_top=0, n_quantiles=0, n_random=self.pool, seed=self.seed)
        cand = self.ex.of(feature, self.half, opts).random_rows
        if not len(cand) or not rows:
            return []
        pos = np.asarray(rows, dtype=np.int64)
        if not store_is_text_embedding(self.store, self.model_name):  # one batch for both
            self.embedder.embed(
                [self.texts[int(r)] for r in np.r_[pos, cand]], desc="contrastive: embed"
            )
        centre = self._vectors(pos).mean(axis=0)
        centre /= max(float(np.linalg.norm(centre)), 1e-12)
        sims = self._vectors(cand) @ centre  # (pool,)
        order = np.lexsort((cand, -sims))[: self.n]
        return [int(r) for r in cand[order]]


def nearest_for_run(
    run: str | Path,
    ex: Examples,
    model: str | None,
    n: int,
    pool: int,
    seed: int,
    half: str,
) -> NearestInactive:
    """`NearestInactive` over a run's store and rows, with its sentence model (or `model`)."""
    from saescope.embed import load_query_model
    from saescope.examples.texts import run_model_name
    from saescope.examples.tokens import row_texts
    from saescope.interp.candidates import PhraseEmbedder
    from saescope.paths import RunPaths

    store = ActivationStore(RunPaths(run).acts, verify=False)
    model_name = run_model_name(store, model)
    embedder = PhraseEmbedder(load_query_model(model_name, store.meta), 256, progress=False)
    texts = row_texts(run, ex.n_rows)
    return NearestInactive(ex, store, texts, model_name, embedder, n, pool, seed, half)
