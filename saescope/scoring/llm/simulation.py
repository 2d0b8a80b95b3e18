"""Simulation: predict the activation from the name; correlate with the truth.

Text runs: `per_prompt` held-out examples a request, one predicted activation (0-10)
per example. Token runs: one short window (12 tokens before the row's token, 3
after) a request, one prediction per token. Score: the Pearson correlation of
predictions and true activations over every example (every token) of the feature;
0 when the predictions are constant.
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
    batches,
    numbered,
    parse_failed,
    pearson,
)

NAME = "simulation"
TOKENS_ONLY = False
BEFORE, AFTER = 12, 3  # the short window of a token row


async def _predict(ctx: Context, out: Outcome, req: LLMRequest, n: int) -> list[float] | None:
    r = await ask(ctx, out, req)
    if r is None:
        return None
    try:
        return parse.number_list(r.text, n, 0, 10)
    except parse.ParseError as exc:
        parse_failed(out, exc, r)
        return None


async def score(ctx: Context, feature: int, explanation: str, s: Samples) -> Outcome:
    out = Outcome()
    rows = s.pos + s.neg
    truth: list[float] = []
    pred: list[float] = []
    if ctx.shower.is_tokens:
        t = template("simulation_tokens")
        for r in rows:
            w = ctx.shower.window(feature, r, BEFORE, AFTER)
            listing = "\n".join(f"{i + 1}\t{tok!r}" for i, tok in enumerate(w.tokens))
            req = LLMRequest(
                t.messages(explanation=explanation, examples=listing, n=len(w.tokens)),
                temperature=ctx.temperature,
                max_tokens=max(ctx.answer_tokens, 4 * len(w.tokens)),
            )
            p = await _predict(ctx, out, req, len(w.tokens))
            if p is not None:
                truth += w.acts
                pred += p
    else:
        t = template(NAME)
        shown = ctx.shower.show(feature, rows)
        for b in batches(len(rows), ctx.per_prompt):
            req = LLMRequest(
                t.messages(
                    explanation=explanation,
                    examples=numbered([shown[i].plain for i in b]),
                    n=len(b),
                ),
                temperature=ctx.temperature,
                max_tokens=ctx.answer_tokens,
            )
            p = await _predict(ctx, out, req, len(b))
            if p is not None:
                truth += [shown[i].activation for i in b]
                pred += p
    if pred:
        out.score = pearson(np.array(pred), np.array(truth))
        out.metrics = {"correlation": out.score, "n_predictions": float(len(pred))}
    return out
