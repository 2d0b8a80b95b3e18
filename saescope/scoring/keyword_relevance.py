"""Keyword-relevance scorer: the thesis's own measure, for comparison.

In: a feature's keywords and its top activating texts. Out: the mean cosine
similarity between each keyword's embedding and each text's embedding (mean
over keywords and texts), as the thesis judged how well keywords match the
texts. It has no negatives, so unlike the embedding scorer it cannot tell a
name that fits the feature from a generic name that fits every text; the
shuffled control shows how much of it is specific.

By default the texts come from the scoring half (held out); `--examples naming`
reproduces the thesis, which scored keywords on the texts they came from.
"""

from __future__ import annotations

import numpy as np

NAME = "keyword-relevance"


def relevance(keyword_unit: np.ndarray, text_unit: np.ndarray) -> float:
    """Mean cosine of keywords (n_kw, d) to texts (n_texts, d), both unit rows."""
    if not len(keyword_unit) or not len(text_unit):
        return float("nan")
    return float((keyword_unit @ text_unit.T).mean())
