"""Embedding scorer: does the name find the feature's held-out texts?

In: per feature an explanation (its keywords joined as "kw1, kw2, kw3"), its
held-out examples (`HeldOut` from the scoring half) and unit vectors of the
example texts under the run's sentence model. Out: ROC AUC of ranking the
activating examples above the non-activating ones by cosine similarity of the
explanation (embedded as a query) to each example. 0.5 = chance, 1.0 = perfect.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

from saescope.scoring.base import HeldOut

NAME = "embedding"


def explanation_text(keywords: list[str]) -> str:
    """The query a list of keywords becomes."""
    return ", ".join(keywords)


def auc(
    query: np.ndarray, examples: HeldOut, row_vectors: Callable[[np.ndarray], np.ndarray]
) -> float:
    """ROC AUC of cos(query, example) separating examples.pos from examples.neg.

    query: (d,) unit vector; row_vectors(rows) -> (len(rows), d) unit vectors.
    """
    rows = np.concatenate([examples.pos, examples.neg])
    labels = np.r_[np.ones(len(examples.pos)), np.zeros(len(examples.neg))]
    sims = row_vectors(rows) @ query  # (n_pos + n_neg,)
    return float(roc_auc_score(labels, sims))
