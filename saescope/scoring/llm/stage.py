"""The LLM scorers' stage: `saescope score --scorer detection|fuzzing|intruder|simulation|surprisal`.

In: the names (`--names explanations`, the default, or `keywords`) with the split they
were made with, the run's activations and rows, and an LLM client (or, for
surprisal, an in-process base model). Every feature is scored on rows of the SCORING
half only, once with its own name and once with another feature's (a seeded
derangement: the shuffled control). Out, with KEY = `score_key(scorer, names)`:
  scores/KEY.jsonl         one line per feature as it finishes: score, shuffled_score,
                           metrics, requests, failures and their reasons, rows used
  scores/KEY.parquet       the table, as the other scorers write it (+ metrics as JSON)
  scores/KEY.summary.json  mean/median of scores and of the control, features scored,
                           the fraction of requests and of features that failed, why
  scores/KEY.png, scores/KEY.usage.json, scores/KEY.config.json, scores/KEY.provenance.json

A feature whose failed requests exceed `--max-failed` is marked failed (not averaged
in); server failures (after the retries) and a spent budget leave it for the next
run, which requests nothing for the features already done.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from saescope import provenance
from saescope.config import config_to_dict
from saescope.errors import SaescopeError
from saescope.examples import Examples, open_examples
from saescope.examples.activations import activation_source
from saescope.examples.shown import RowShower
from saescope.io import atomic_path, write_json
from saescope.llm import jobs, make_client
from saescope.llm.jobs import (
    FINAL,
    ResultsFile,
    failure_reasons,
    run_features,
    sample_features,
)
from saescope.llm.types import LLMRequest, LLMResponse
from saescope.options.llm import LLM_RUNTIME_FIELDS
from saescope.options.score import ScoreConfig, score_key
from saescope.paths import RunPaths
from saescope.scoring.base import derangement, summarize
from saescope.scoring.llm import SCORERS
from saescope.scoring.llm.base import Context, Outcome, Samples, samples
from saescope.scoring.names import Names, read_names, same_activations
from saescope.scoring.stage import SCHEMA as BASE_SCHEMA
from saescope.scoring.stage import plot_scores

# options that change no output (the embedding scorers' options do not apply here)
_IGNORED = (
    "overwrite",
    "run",
    "progress",
    "batch_size",
    "max_pos",
    "n_neg",
    "n_texts",
    "examples",
    *LLM_RUNTIME_FIELDS,
)

# the other scorers' table, plus the LLM scorers' metrics and request counts
SCHEMA = pa.schema(
    [
        *BASE_SCHEMA,
        ("metrics", pa.string()),
        ("shuffled_metrics", pa.string()),
        ("requests", pa.int64()),
        ("failed", pa.int64()),
    ]
)


class _Recorder:
    """A client that only records what would be sent (`--dry-run`); every answer is empty."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.requests: list[LLMRequest] = []

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request)
        return LLMResponse("", 0, 0, self.model)

    async def aclose(self) -> None:
        return None


def _features(cfg: ScoreConfig, names: Names) -> list[int]:
    named = sorted(names.phrases) + sorted(names.not_named)
    if cfg.features is not None:
        missing = sorted(set(cfg.features) - set(named))
        if missing:
            raise SaescopeError(
                f"feature(s) {', '.join(map(str, missing[:5]))} have no {names.kind} in "
                f"{names.path}; name them first"
            )
        return sorted(set(cfg.features))
    return sample_features(set(named), cfg.n_features, cfg.seed, f"features with {names.kind}")


def _nearest(cfg: ScoreConfig, ex: Examples):
    """`nearest(feature, pos_rows)` for `--negatives nearest`, drawing from the scoring half."""
    if cfg.negatives != "nearest":
        return None
    from saescope.examples.nearest import nearest_for_run

    return nearest_for_run(
        cfg.run, ex, cfg.model, cfg.llm_neg, 10 * cfg.llm_neg, cfg.seed, "scoring"
    )


def _status(cfg: ScoreConfig, s: Samples, real: Outcome, shuf: Outcome | None) -> tuple[str, str]:
    both = [real] + ([shuf] if shuf is not None else [])
    reasons = [r for o in both for r in o.reasons]
    if any(o.budget for o in both):
        return "budget", "the request or token budget ran out"
    if any(o.errors for o in both):
        return "error", "; ".join(reasons[:3])
    sent = sum(o.requests for o in both)
    failed = sum(o.failed for o in both)
    if sent and failed / sent > cfg.max_failed:
        return "failed", f"{failed} of {sent} requests failed: " + "; ".join(reasons[:3])
    if math.isnan(real.score):
        return "failed", "nothing could be scored: " + "; ".join(reasons[:3])
    return "ok", ""


async def _score_one(
    cfg: ScoreConfig,
    f: int,
    other: int | None,
    names: Names,
    ex: Examples,
    ctx: Context,
    nearest,
) -> dict[str, Any]:
    module = SCORERS[cfg.scorer]
    base: dict[str, Any] = {"feature": f, "name": None, "score": None, "shuffled_score": None}
    if f not in names.phrases:
        return base | {"status": "no_name", "reason": names.not_named.get(f, "")}
    s = samples(ex, f, cfg.llm_pos, cfg.llm_neg, cfg.seed, nearest)
    base |= {"name": names.text(f), "n_pos": len(s.pos), "n_neg": len(s.neg), "rows": s.pos + s.neg}
    if len(s.pos) < cfg.min_pos or not s.neg:
        why = f"{len(s.pos)} activating and {len(s.neg)} other held-out examples"
        return base | {"status": "too_few_examples", "reason": why}
    real = await module.score(ctx, f, names.text(f), s)
    shuf = await module.score(ctx, f, names.text(other), s) if other not in (f, None) else None
    status, reason = _status(cfg, s, real, shuf)
    ok = status == "ok"
    return base | {
        "status": status,
        "reason": reason,
        "score": real.score if ok else None,
        "shuffled_score": shuf.score if ok and shuf is not None else None,
        "metrics": real.metrics,
        "shuffled_metrics": shuf.metrics if shuf is not None else {},
        "requests": real.requests + (shuf.requests if shuf else 0),
        "failed": real.failed + (shuf.failed if shuf else 0),
        "failures": real.reasons + (shuf.reasons if shuf else []),
    }


def _context(cfg: ScoreConfig, client, shower: RowShower) -> Context:
    local = None
    if cfg.scorer == "surprisal":
        from saescope.llm.local import LocalClient

        local = LocalClient(cfg.surprisal_model)
    return Context(
        client=client,
        shower=shower,
        answer_tokens=cfg.answer_tokens,
        temperature=cfg.temperature,
        per_prompt=cfg.per_prompt,
        n_groups=cfg.n_groups,
        group_size=cfg.group_size,
        seed=cfg.seed,
        local=local,
    )


@provenance.locked("score")
def run(cfg: ScoreConfig) -> Path:
    """Score the names of a run with an LLM scorer (see the module docstring)."""
    rp = RunPaths(cfg.run)
    names_kind = cfg.names or "explanations"
    key = score_key(cfg.scorer, cfg.names)
    names = read_names(cfg.run, names_kind)
    _, upstream = activation_source(rp, cfg.activations)
    same_activations(names, upstream)
    upstream |= provenance.upstream_ids({names_kind: names.path})
    ex = open_examples(cfg.run, cfg.activations, *names.split)
    shower = RowShower(cfg.run, ex.acts, cfg.max_chars)
    if SCORERS[cfg.scorer].TOKENS_ONLY and not shower.is_tokens:
        raise SaescopeError(
            f"the {cfg.scorer} scorer marks tokens: it needs an LM run (token rows), and "
            f"{cfg.run} holds texts; use detection, intruder or simulation"
        )
    feats = _features(cfg, names)
    named = [f for f in feats if f in names.phrases]  # only a name can stand in for another
    other = dict(zip(named, [named[i] for i in derangement(len(named), cfg.seed)], strict=True))
    nearest = _nearest(cfg, ex)
    if cfg.dry_run:
        return _dry_run(cfg, rp, key, feats, other, names, ex, shower, nearest)
    record = provenance.Record.make(rp.score_record(key), "score", cfg, upstream, ignore=_IGNORED)
    results_file = ResultsFile(rp.score_results(key))
    out_path = rp.score(key)
    exists = out_path.exists() or results_file.path.exists()
    decision = record.decide(cfg.overwrite, out_path, exists=exists)
    if decision is provenance.Decision.SKIP:
        return out_path
    if decision is provenance.Decision.FRESH:
        results_file.reset()
        rp.score_usage(key).unlink(missing_ok=True)
    client = make_client(cfg, rp.llm_cache) if cfg.scorer != "surprisal" else None
    ctx = _context(cfg, client, shower)
    record.start()

    async def go() -> dict[int, dict[str, Any]]:
        try:
            return await run_features(
                feats,
                lambda f: _score_one(cfg, f, other.get(f), names, ex, ctx, nearest),
                results_file,
                cfg.concurrency,
                f"score: {key}",
                cfg.progress,
                tokens=(lambda: client.usage.prompt_tokens + client.usage.completion_tokens)
                if client is not None
                else None,
            )
        finally:
            if client is not None:
                await client.aclose()

    results = jobs.run(go())
    if client is not None:
        write_json(rp.score_usage(key), client.usage.plus_saved(rp.score_usage(key)))
    summary = _write(cfg, rp, key, names, results)
    unfinished = [f for f, r in results.items() if r.get("status") not in FINAL]
    if unfinished:
        print(
            f"score: {len(unfinished)} of {len(results)} features are not done (server errors "
            "or the budget); run the same command again to do only those"
            f"{failure_reasons(results)}"
        )
    else:
        record.finish({k: summary[k] for k in ("n_scored", "mean", "shuffled_mean")})
    _print(summary)
    return out_path


def _dry_run(cfg, rp, key, feats, other, names, ex, shower, nearest) -> Path:
    if cfg.scorer == "surprisal":
        n = sum(1 for f in feats if f in names.phrases)
        print(f"score {key} (dry run): {n} features; no chat requests (an in-process model)")
        return rp.score(key)
    client = make_client(cfg, rp.llm_cache)
    rec = _Recorder(client.model)
    ctx = _context(cfg, rec, shower)

    async def go() -> None:
        for f in feats:
            await _score_one(cfg, f, other.get(f), names, ex, ctx, nearest)

    jobs.run(go())
    est = client.estimate(rec.requests)
    print(
        f"score {key} (dry run): {len(feats)} features, {est.requests} requests to "
        f"{client.model}, about {est.prompt_tokens:,} prompt and up to "
        f"{est.completion_tokens:,} answer tokens (nothing sent)"
    )
    return rp.score(key)


def _write(
    cfg: ScoreConfig, rp: RunPaths, key: str, names: Names, results: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    fs = sorted(results)
    rows = [results[f] for f in fs]

    def num(r: dict[str, Any], k: str) -> float:
        v = r.get(k)
        return float(v) if v is not None else math.nan

    tbl = pa.table(
        {
            "feature": fs,
            "score": [num(r, "score") for r in rows],
            "shuffled_score": [num(r, "shuffled_score") for r in rows],
            "n_pos": [int(r.get("n_pos", 0)) for r in rows],
            "n_neg": [int(r.get("n_neg", 0)) for r in rows],
            "method": [cfg.scorer] * len(fs),
            "source": [f"{names.kind}:{names.method}"] * len(fs),
            "status": [str(r.get("status", "missing")) for r in rows],
            "reason": [str(r.get("reason", "")) for r in rows],
            "metrics": [json.dumps(r.get("metrics", {})) for r in rows],
            "shuffled_metrics": [json.dumps(r.get("shuffled_metrics", {})) for r in rows],
            "requests": [int(r.get("requests", 0)) for r in rows],
            "failed": [int(r.get("failed", 0)) for r in rows],
        },
        schema=SCHEMA,
    )
    with atomic_path(rp.score(key)) as tmp:
        pq.write_table(tbl, tmp)
    real = np.array([num(r, "score") for r in rows])
    shuf = np.array([num(r, "shuffled_score") for r in rows])
    statuses = [str(r.get("status", "missing")) for r in rows]
    sent = sum(int(r.get("requests", 0)) for r in rows)
    failed = sum(int(r.get("failed", 0)) for r in rows)
    kinds: dict[str, int] = {}
    for r in rows:
        for why in r.get("failures", []):
            k = str(why).split(":", 1)[0]
            kinds[k] = kinds.get(k, 0) + 1
    extra = _metric_means(rows)
    summary: dict[str, Any] = {
        "scorer": cfg.scorer,
        "names": names.kind,
        "source": names.method,
        "model": None if cfg.scorer == "surprisal" else cfg.llm_model or cfg.llm,
        "n_features": len(fs),
        **summarize(real, shuf),
        "metrics": extra,
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "requests": sent,
        "failed_requests": failed,
        "failed_request_fraction": failed / sent if sent else 0.0,
        "failed_feature_fraction": statuses.count("failed") / len(fs) if fs else 0.0,
        "failure_kinds": kinds,
    }
    write_json(rp.score_summary(key), summary)
    plot_scores(real, shuf, key, f"{names.kind} ({names.method})", rp.score_plot(key))
    write_json(rp.score_config(key), config_to_dict(cfg))
    return summary


def _metric_means(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean of every metric over the scored features, real and shuffled."""
    out: dict[str, dict[str, float | None]] = {}
    for which in ("metrics", "shuffled_metrics"):
        vals: dict[str, list[float]] = {}
        for r in rows:
            if r.get("status") != "ok":
                continue
            for k, v in (r.get(which) or {}).items():
                if v is not None and not math.isnan(float(v)):
                    vals.setdefault(k, []).append(float(v))
        out[which] = {k: float(np.mean(v)) for k, v in vals.items()}
    return out


def _print(s: dict[str, Any]) -> None:
    def fmt(x) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    auc = s["metrics"]["metrics"].get("auc")
    auc_txt = f", AUC {fmt(auc)} (shuffled {fmt(s['metrics']['shuffled_metrics'].get('auc'))})"
    print(
        f"{s['scorer']} ({s['names']}: {s['source']}), {s['n_scored']} of {s['n_features']} "
        f"features: mean {fmt(s['mean'])} (shuffled {fmt(s['shuffled_mean'])}), median "
        f"{fmt(s['median'])}{auc_txt if auc is not None else ''}; "
        f"{s['failed_requests']} of {s['requests']} requests failed, "
        f"{s['failed_feature_fraction']:.1%} of features"
    )
