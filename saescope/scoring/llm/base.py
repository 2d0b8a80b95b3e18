"""What the LLM scorers share: held-out samples, one request, the outcome, the metrics.

In: a feature, its name (an explanation or a keyword list as one text), the run's
`Examples` (the SCORING half only: never a row the names were made from) and an LLM
client. Out: `Outcome` per (feature, name): the score, the scorer's other metrics,
and how many requests were sent and failed (with the reasons).

`samples` draws, from the scoring half, activating rows spread over the activation
quantiles (delphi's test sampling) and non-activating rows, random or nearest to
the activating ones by sentence embedding (`--negatives`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from saescope.examples import ExampleOptions, Examples
from saescope.examples.shown import RowShower
from saescope.llm.jobs import TRANSIENT
from saescope.llm.types import Client, LLMError, LLMRequest, LLMResponse
from saescope.prompts import parse, template


class Samples(NamedTuple):
    """A feature's held-out rows (scoring half)."""

    pos: list[int]  # activating, spread over the activation quantiles
    neg: list[int]  # non-activating


@dataclass
class Outcome:
    """One (feature, name) scored: the score (NaN when nothing could be scored) and more."""

    score: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    failed: int = 0
    errors: int = 0  # failures of the server (not of the answer): the feature is redone later
    budget: bool = False
    reasons: list[str] = field(default_factory=list)


@dataclass
class Context:
    """Everything a scorer needs besides the feature and its name."""

    client: Client | None  # None for scorers that need no chat model (surprisal)
    shower: RowShower
    answer_tokens: int
    temperature: float
    per_prompt: int
    n_groups: int
    group_size: int
    seed: int
    top_logprobs: int = 5
    local: Any = None  # the in-process model of the surprisal scorer


def samples(
    ex: Examples,
    feature: int,
    n_pos: int,
    n_neg: int,
    seed: int,
    nearest: Callable[[int, list[int]], list[int]] | None = None,
) -> Samples:
    """`n_pos` activating rows from 10 activation quantiles and `n_neg` non-activating
    rows, all from the scoring half; negatives random, or by `nearest(feature, pos)`."""
    per_q = max(1, math.ceil(n_pos / 10))
    opts = ExampleOptions(n_top=0, n_quantiles=10, per_quantile=per_q, n_random=n_neg, seed=seed)
    fe = ex.of(feature, "scoring", opts)
    rng = np.random.default_rng([seed, feature, 1])
    pos = fe.quantile_rows
    if len(pos) > n_pos:  # thin evenly over the quantiles, the rest at random
        pos = np.sort(rng.choice(pos, size=n_pos, replace=False))
    pos_list = [int(r) for r in pos]
    neg = nearest(feature, pos_list) if nearest is not None else [int(r) for r in fe.random_rows]
    return Samples(pos_list, neg[:n_neg])


async def ask(ctx: Context, out: Outcome, request: LLMRequest) -> LLMResponse | None:
    """Send one request; a failure is counted in `out` (and None returned)."""
    assert ctx.client is not None
    out.requests += 1
    try:
        return await ctx.client.complete(request)
    except LLMError as exc:
        out.failed += 1
        if exc.kind == "budget":
            out.budget = True
        elif exc.kind in TRANSIENT:
            out.errors += 1
        out.reasons.append(f"{exc.kind}: {exc}")
        return None


def parse_failed(out: Outcome, exc: parse.ParseError, r: LLMResponse) -> None:
    out.failed += 1
    cut = " (cut at --answer-tokens)" if r.finish_reason == "length" else ""
    out.reasons.append(f"format: {exc}{cut}; answer {r.text[:120]!r}")


def numbered(texts: list[str]) -> str:
    return "\n".join(f"Example {i + 1}: {t}" for i, t in enumerate(texts))


def batches(n: int, size: int) -> list[np.ndarray]:
    idx = np.arange(n)
    return [idx[i : i + size] for i in range(0, n, max(1, size))]


def balanced_accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    tpr = float((preds[labels == 1] == 1).mean()) if (labels == 1).any() else math.nan
    tnr = float((preds[labels == 0] == 0).mean()) if (labels == 0).any() else math.nan
    return float(np.nanmean([tpr, tnr]))


def f1(labels: np.ndarray, preds: np.ndarray) -> float:
    tp = float(((preds == 1) & (labels == 1)).sum())
    fp = float(((preds == 1) & (labels == 0)).sum())
    fn = float(((preds == 0) & (labels == 1)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (NaN when one class is missing)."""
    if len(set(labels.tolist())) < 2:
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (a prediction that says nothing)."""
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def rng_for(ctx: Context, feature: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([ctx.seed, feature, salt])


async def judge_binary(
    ctx: Context, name: str, explanation: str, texts: list[str], labels: np.ndarray
) -> Outcome:
    """Ask template `name` for a 0/1 per text, `per_prompt` texts a request; score the
    answers against `labels`: balanced accuracy (the score), F1, and ROC AUC from P("1")
    when every answer came with log-probabilities.

    With `per_prompt` 1 each request shows one text and asks Yes or No (template
    `<name>_one`), which small models answer far more reliably than a list; AUC then
    comes from P(yes) at the first answer token."""
    one = ctx.per_prompt == 1
    t = template(f"{name}_one" if one else name)
    out = Outcome()
    got: list[int] = []
    preds: list[int] = []
    probs: list[float] | None = []
    for b in batches(len(texts), ctx.per_prompt):
        examples = texts[b[0]] if one else numbered([texts[i] for i in b])
        req = LLMRequest(
            t.messages(explanation=explanation, examples=examples, n=len(b)),
            temperature=ctx.temperature,
            max_tokens=3 if one else ctx.answer_tokens,
            top_logprobs=ctx.top_logprobs,
        )
        r = await ask(ctx, out, req)
        if r is None:
            continue
        try:
            answer = [parse.yes_no(r.text)] if one else parse.binary_list(r.text, len(b))
        except parse.ParseError as exc:
            parse_failed(out, exc, r)
            continue
        got += labels[b].tolist()
        preds += answer
        if one:
            q = parse.yes_probability(r.top_logprobs)
            p = None if q is None else [q]
        else:
            p = parse.binary_probabilities(r.top_logprobs, len(b))
        probs = None if p is None or probs is None else probs + p
    if got:
        y, yhat = np.array(got), np.array(preds)
        out.score = balanced_accuracy(y, yhat)
        out.metrics = {"balanced_accuracy": out.score, "f1": f1(y, yhat)}
        if probs is not None:
            out.metrics["auc"] = auc(y, np.array(probs))
    return out
