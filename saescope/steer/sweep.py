"""Choose a steering strength for the user: the most concept for a bounded loss of fluency.

In: for one feature (or group), the unsteered measures and the steered measures
at each strength over the same prompts. Out: `SweepResult`: per strength the
concept gain and perplexity ratio on each half of the prompts, and the chosen
strength. The prompts are split in two (even and odd indices); the strength is
chosen on the first half (the largest concept gain among the strengths whose
perplexity stays within `max_ppl_ratio` times the unsteered text's) and its
figures are reported on the second half, so the choice is not scored on the
prompts it was made on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saescope.steer.measure import TextMeasures


@dataclass(frozen=True)
class StrengthRow:
    strength: float
    half: str  # "choose" (even prompts) or "report" (odd prompts)
    concept: float  # mean feature activation on the steered continuations
    concept_gain: float  # minus the same on the unsteered continuations
    perplexity: float
    ppl_ratio: float  # steered / unsteered perplexity


@dataclass(frozen=True)
class SweepResult:
    rows: list[StrengthRow]
    chosen: float | None  # None: no strength kept the perplexity within bounds
    report: StrengthRow | None  # the chosen strength's figures on the report half


def halves(n: int) -> dict[str, np.ndarray]:
    idx = np.arange(n)
    return {"choose": idx[0::2], "report": idx[1::2]}


def choose_strength(
    unsteered: TextMeasures, steered: dict[float, TextMeasures], max_ppl_ratio: float
) -> SweepResult:
    n = len(unsteered.concept)
    rows: list[StrengthRow] = []
    for half, idx in halves(n).items():
        base = unsteered.subset(idx)
        base_concept = float(base.concept.mean()) if len(idx) else float("nan")
        for s, m in sorted(steered.items()):
            sub = m.subset(idx)
            c = float(sub.concept.mean()) if len(idx) else float("nan")
            rows.append(
                StrengthRow(
                    s, half, c, c - base_concept, sub.perplexity, sub.perplexity / base.perplexity
                )
            )
    ok = [r for r in rows if r.half == "choose" and r.ppl_ratio <= max_ppl_ratio]
    if not ok:
        return SweepResult(rows, None, None)
    best = max(ok, key=lambda r: (r.concept_gain, -r.strength))
    report = next(r for r in rows if r.half == "report" and r.strength == best.strength)
    return SweepResult(rows, best.strength, report)
