"""The explainers: from a feature's naming-half examples to one chat request.

In: a feature's `FeatureExamples` from the NAMING half of the split, a `RowShower`
(how rows look in a prompt) and, for `contrastive`, the naming-half rows where the
feature is 0 that lie nearest to its activating ones by sentence embedding. Out:
`ExplainPrompt`: the request, the template's hash and the rows shown (recorded
with the explanation, so a test can prove no scorer ever sees them).

  default      top examples and examples from every activation quantile
               (delphi's defaults: 10 top, 40 from 10 quantiles), strongest first;
               token windows with the active tokens marked << >>.
  contrastive  the same, plus the nearest non-activating examples, asking what
               distinguishes the two sets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from saescope.examples import FeatureExamples
from saescope.examples.shown import RowShower, Shown
from saescope.llm.types import LLMRequest
from saescope.prompts import template

EXPLAINERS = ("default", "contrastive")
MARKING = {
    "tokens": "In each example, the tokens where the feature is active are marked <<like this>>.",
    "texts": "Each example is a whole text: the feature responds to the text as a whole.",
}


@dataclass(frozen=True)
class ExplainPrompt:
    request: LLMRequest
    template_sha256: str
    rows: list[int]  # activating rows shown, strongest first
    negatives: list[int]  # non-activating rows shown (contrastive)


def numbered(shown: list[Shown]) -> str:
    """Examples as a numbered list, one per line."""
    return "\n".join(f"Example {i + 1}: {s.text}" for i, s in enumerate(shown))


def activating_rows(fe: FeatureExamples) -> list[int]:
    """Top and quantile rows, each once, strongest first (ties by row id)."""
    rows = np.r_[fe.top_rows, fe.quantile_rows]
    acts = np.r_[fe.top_acts, fe.quantile_acts]
    order = np.lexsort((rows, -acts))
    seen: set[int] = set()
    out = []
    for r in rows[order].tolist():
        if r not in seen:
            seen.add(r)
            out.append(int(r))
    return out


def build(
    method: str,
    fe: FeatureExamples,
    shower: RowShower,
    answer_tokens: int,
    temperature: float,
    nearest: Callable[[int, list[int]], list[int]] | None = None,
) -> ExplainPrompt:
    """The request that asks for `fe.feature`'s explanation by `method`."""
    rows = activating_rows(fe)
    marking = MARKING["tokens" if shower.is_tokens else "texts"]
    fields = {"marking": marking, "examples": numbered(shower.show(fe.feature, rows))}
    negatives: list[int] = []
    if method == "contrastive":
        if nearest is None:
            raise ValueError("the contrastive explainer needs a nearest-negatives function")
        negatives = nearest(fe.feature, rows)
        neg = shower.show(fe.feature, negatives)
        fields["negatives"] = "\n".join(f"Example {i + 1}: {s.text}" for i, s in enumerate(neg))
    t = template(f"explain_{method}")
    req = LLMRequest(t.messages(**fields), temperature=temperature, max_tokens=answer_tokens)
    return ExplainPrompt(req, t.sha256, rows, negatives)
