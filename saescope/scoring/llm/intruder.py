"""Intruder: given the name, which example of a group does not belong?

`n_groups` groups of `group_size` held-out examples: all activating but one
non-activating intruder at a random place (shown without marks, so the marks give
nothing away). Score: the fraction of groups whose intruder the LLM names
(chance: 1 / group_size).
"""

from __future__ import annotations

import numpy as np

from saescope.llm.types import LLMRequest
from saescope.prompts import parse, template
from saescope.scoring.llm.base import (
    Context,
    Outcome,
    Samples,
    ask,
    numbered,
    parse_failed,
    rng_for,
)

NAME = "intruder"
TOKENS_ONLY = False


def groups(ctx: Context, feature: int, s: Samples) -> list[tuple[list[int], int]]:
    """(rows, index of the intruder) per group; as many groups as the samples allow."""
    rng = rng_for(ctx, feature, 4)
    k = ctx.group_size - 1
    n = min(ctx.n_groups, len(s.pos) // max(1, k), len(s.neg))
    pos = rng.permutation(np.asarray(s.pos, dtype=np.int64))
    neg = rng.permutation(np.asarray(s.neg, dtype=np.int64))
    out = []
    for g in range(n):
        rows = pos[g * k : (g + 1) * k].tolist()
        at = int(rng.integers(0, k + 1))
        rows.insert(at, int(neg[g]))
        out.append((rows, at))
    return out


async def score(ctx: Context, feature: int, explanation: str, s: Samples) -> Outcome:
    t = template(NAME)
    out = Outcome()
    hits: list[bool] = []
    for rows, intruder in groups(ctx, feature, s):
        texts = [w.plain for w in ctx.shower.show(feature, rows)]
        req = LLMRequest(
            t.messages(explanation=explanation, examples=numbered(texts)),
            temperature=ctx.temperature,
            max_tokens=ctx.answer_tokens,
        )
        r = await ask(ctx, out, req)
        if r is None:
            continue
        try:
            hits.append(parse.choice(r.text, len(rows)) == intruder)
        except parse.ParseError as exc:
            parse_failed(out, exc, r)
    if hits:
        out.score = float(np.mean(hits))
        out.metrics = {"accuracy": out.score, "chance": 1.0 / ctx.group_size}
    return out
