"""Surprisal: does the name, as a prefix, make activating examples likelier?

A base model (in process; the packaged SmolLM2 by default) reads each held-out
example with and without the prefix "Description: <name>\nText: ". The gain of an
example is its mean token loss without the prefix minus with it. Score: ROC AUC of
the gains separating activating from non-activating examples (0.5: the name helps
both alike). No chat requests are sent.
"""

from __future__ import annotations

import asyncio

import numpy as np

from saescope.scoring.llm.base import Context, Outcome, Samples, auc

NAME = "surprisal"
TOKENS_ONLY = False
PREFIX = "Description: {name}\nText: "


async def score(ctx: Context, feature: int, explanation: str, s: Samples) -> Outcome:
    out = Outcome()
    rows = s.pos + s.neg
    if not s.pos or not s.neg:
        return out
    texts = [w.plain for w in ctx.shower.show(feature, rows)]
    labels = np.r_[np.ones(len(s.pos)), np.zeros(len(s.neg))]
    local = ctx.local
    base = await asyncio.to_thread(local.token_losses, "", texts)
    primed = await asyncio.to_thread(local.token_losses, PREFIX.format(name=explanation), texts)
    out.requests = 2
    gain = np.array(base) - np.array(primed)
    out.score = auc(labels, gain)
    out.metrics = {
        "auc": out.score,
        "gain_pos": float(gain[labels == 1].mean()),
        "gain_neg": float(gain[labels == 0].mean()),
    }
    return out
