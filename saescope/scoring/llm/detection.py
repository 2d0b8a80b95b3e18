"""Detection: does the name tell activating held-out examples from non-activating ones?

Per prompt, `per_prompt` shuffled examples (the SCORING half's activating and
non-activating rows, shown without marks); the LLM answers a 0/1 list. Score:
balanced accuracy; also F1 and, when the server returns log-probabilities, ROC AUC
from P("1") at each answer digit.
"""

from __future__ import annotations

import numpy as np

from saescope.scoring.llm.base import Context, Outcome, Samples, judge_binary, rng_for

NAME = "detection"
TOKENS_ONLY = False


async def score(ctx: Context, feature: int, explanation: str, s: Samples) -> Outcome:
    rows = np.array(s.pos + s.neg, dtype=np.int64)
    labels = np.r_[np.ones(len(s.pos)), np.zeros(len(s.neg))].astype(np.int64)
    order = rng_for(ctx, feature, 2).permutation(len(rows))
    shown = ctx.shower.show(feature, rows[order])
    return await judge_binary(ctx, NAME, explanation, [w.plain for w in shown], labels[order])
