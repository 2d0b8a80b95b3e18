"""Fuzzing (token runs): is the marked span the one where the feature is active?

Activating held-out windows, half of them with the tokens where the feature is
active marked << >> (correct), half with as many tokens marked where it is 0
(wrong); shuffled, `per_prompt` per request, the LLM answers a 0/1 list (1 =
correctly marked). Score: balanced accuracy; F1, and AUC from log-probabilities
when the server returns them.
"""

from __future__ import annotations

import numpy as np

from saescope.examples.shown import mark_tokens
from saescope.scoring.llm.base import Context, Outcome, Samples, judge_binary, rng_for

NAME = "fuzzing"
TOKENS_ONLY = True


def marked_examples(ctx: Context, feature: int, s: Samples) -> tuple[list[str], np.ndarray]:
    """(texts, labels): each activating window marked correctly (1) or wrongly (0)."""
    rng = rng_for(ctx, feature, 3)
    shown = ctx.shower.show(feature, s.pos)
    texts, labels = [], []
    for i, w in enumerate(shown):
        active = np.array(w.acts) > 0
        if i % 2 == 0:
            texts.append(mark_tokens(w.tokens, active.tolist()))
            labels.append(1)
            continue
        idle = np.flatnonzero(~active)
        if not len(idle):
            continue  # every token active: no wrong marking exists
        n = min(max(1, int(active.sum())), len(idle))
        wrong = np.zeros(len(active), dtype=bool)
        wrong[rng.choice(idle, size=n, replace=False)] = True
        texts.append(mark_tokens(w.tokens, wrong.tolist()))
        labels.append(0)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], np.array(labels, dtype=np.int64)[order]


async def score(ctx: Context, feature: int, explanation: str, s: Samples) -> Outcome:
    texts, labels = marked_examples(ctx, feature, s)
    return await judge_binary(ctx, NAME, explanation, texts, labels)
