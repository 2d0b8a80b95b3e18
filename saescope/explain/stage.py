"""Explain stage: name features with an LLM, from examples of the NAMING half only.

In: the run's activations (latent cache or SAE over the store), its rows (texts or
token windows) and the naming/scoring split. Out:
  interp/explanations.jsonl          one line per feature, appended as it finishes:
                                     feature, status, reason, explanation, method, model,
                                     prompt_sha256, prompt_tokens, completion_tokens,
                                     cached, raw (the answer), rows / negatives shown
  interp/explanations.usage.json     requests, cache hits, failures, tokens in and out
  interp/explanations.config.json    options, version
  interp/explanations.provenance.json

A feature's status: ok; failed (the answer could not be read: the reason and the raw
answer are kept, never a placeholder explanation); too_few_examples; error (the
server failed after every retry) or budget (`--max-requests`/`--max-tokens` spent):
those two are done again by the next run, which requests nothing for finished
features. `--dry-run` prints the number of requests and an estimate of tokens, and
sends nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saescope import provenance
from saescope.config import config_to_dict
from saescope.errors import SaescopeError
from saescope.examples import ExampleOptions, Examples, open_examples
from saescope.examples.activations import activation_source
from saescope.examples.nearest import NearestInactive, nearest_for_run
from saescope.examples.shown import RowShower
from saescope.explain.explainers import ExplainPrompt, build
from saescope.io import write_json
from saescope.llm import jobs, make_client
from saescope.llm.jobs import (
    FINAL,
    TRANSIENT,
    ResultsFile,
    failure_reasons,
    run_features,
    sample_features,
)
from saescope.llm.types import Client, LLMError, Usage
from saescope.options.explain import ExplainConfig
from saescope.options.llm import LLM_RUNTIME_FIELDS
from saescope.paths import RunPaths
from saescope.prompts import parse

_IGNORED = ("overwrite", "run", "progress", *LLM_RUNTIME_FIELDS)


def choose_features(ex: Examples, cfg: ExplainConfig) -> list[int]:
    """The features to explain: `--features`, else a seeded sample of `--n-features` alive
    features, else every alive feature."""
    ids = ex.acts.check_features(cfg.features)
    if cfg.features is not None:
        return [int(f) for f in ids]
    return sample_features(ids, cfg.n_features, cfg.seed, "alive features")


def example_options(cfg: ExplainConfig) -> ExampleOptions:
    per_q = cfg.n_examples // cfg.n_quantiles  # ExplainConfig: a multiple, n_quantiles >= 1
    return ExampleOptions(
        n_top=cfg.n_top, n_quantiles=cfg.n_quantiles, per_quantile=per_q, n_random=0, seed=cfg.seed
    )


def _nearest(cfg: ExplainConfig, ex: Examples) -> NearestInactive | None:
    if cfg.method != "contrastive":
        return None
    return nearest_for_run(
        cfg.run, ex, cfg.model, cfg.n_negatives, cfg.contrastive_pool, cfg.seed, "naming"
    )


def prompts(cfg: ExplainConfig, ex: Examples, features: list[int]) -> dict[int, Any]:
    """feature -> its `ExplainPrompt`, or a too_few_examples result."""
    shower = RowShower(cfg.run, ex.acts, cfg.max_chars)
    nearest = _nearest(cfg, ex)
    opts = example_options(cfg)
    out: dict[int, Any] = {}
    for f in features:
        fe = ex.of(f, "naming", opts)
        if fe.n_active < cfg.min_examples:
            out[f] = {
                "feature": f,
                "status": "too_few_examples",
                "reason": f"{fe.n_active} activating rows in the naming half",
                "explanation": None,
                "method": cfg.method,
            }
            continue
        out[f] = build(cfg.method, fe, shower, cfg.answer_tokens, cfg.temperature, nearest)
    return out


async def _explain_one(
    f: int, p: ExplainPrompt | dict, client: Client, cfg: ExplainConfig
) -> dict[str, Any]:
    if isinstance(p, dict):
        return p
    base: dict[str, Any] = {
        "feature": f,
        "method": cfg.method,
        "model": client.model,
        "prompt_sha256": p.template_sha256,
        "rows": p.rows,
        "negatives": p.negatives,
        "explanation": None,
    }
    try:
        r = await client.complete(p.request)
    except LLMError as exc:
        status = "budget" if exc.kind == "budget" else "error"
        if exc.kind not in TRANSIENT and exc.kind != "budget":
            status = "failed"
        return base | {"status": status, "reason": f"{exc.kind}: {exc}"}
    base |= {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cached": r.cached,
        "raw": r.text,
    }
    try:
        text = parse.explanation(r.text, truncated=r.finish_reason == "length")
    except parse.ParseError as exc:
        return base | {"status": "failed", "reason": f"format: {exc}"}
    return base | {"status": "ok", "reason": "", "explanation": text}


def summarize(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    statuses = [r.get("status", "missing") for r in results.values()]
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    return {"n_features": len(results), "statuses": counts}


@provenance.locked("explain")
def run(cfg: ExplainConfig) -> Path:
    """Write `interp/explanations.jsonl` (+ usage, config, record) for `cfg`."""
    rp = RunPaths(cfg.run)
    _, upstream = activation_source(rp, cfg.activations)
    ex = open_examples(cfg.run, cfg.activations, cfg.split_seed, cfg.split)
    features = choose_features(ex, cfg)
    if not features:
        raise SaescopeError(f"no features to explain in {cfg.run}: none is alive")
    todo = prompts(cfg, ex, features)
    client = make_client(cfg, rp.llm_cache)
    requests = [p.request for p in todo.values() if isinstance(p, ExplainPrompt)]
    if cfg.dry_run:
        est = client.estimate(requests)
        print(
            f"explain (dry run): {len(features)} features, {est.requests} requests to "
            f"{client.model}, about {est.prompt_tokens:,} prompt and up to "
            f"{est.completion_tokens:,} answer tokens (nothing sent)"
        )
        return rp.explanations
    record = provenance.Record.make(
        rp.explanations_record, "explain", cfg, upstream, ignore=_IGNORED
    )
    results_file = ResultsFile(rp.explanations)
    decision = record.decide(cfg.overwrite, rp.explanations)
    if decision is provenance.Decision.SKIP:
        return rp.explanations
    if decision is provenance.Decision.FRESH:
        results_file.reset()
        rp.explanations_usage.unlink(missing_ok=True)
    record.start()

    async def go() -> dict[int, dict[str, Any]]:
        try:
            return await run_features(
                features,
                lambda f: _explain_one(f, todo[f], client, cfg),
                results_file,
                cfg.concurrency,
                f"explain ({cfg.method})",
                cfg.progress,
                tokens=lambda: client.usage.prompt_tokens + client.usage.completion_tokens,
            )
        finally:
            await client.aclose()

    results = jobs.run(go())
    write_json(rp.explanations_usage, client.usage.plus_saved(rp.explanations_usage))
    write_json(rp.explanations_config, config_to_dict(cfg))
    summary = summarize(results)
    unfinished = [f for f, r in results.items() if r.get("status") not in FINAL]
    if unfinished:
        print(
            f"explain: {len(unfinished)} of {len(results)} features are not done "
            f"({', '.join(f'{k} {v}' for k, v in summary['statuses'].items())}); "
            f"run the same command again to do only those{failure_reasons(results)}"
        )
    else:
        record.finish(summary)
        if summary["statuses"].get("failed"):
            print(f"explain: {summary['statuses']['failed']} failed{failure_reasons(results)}")
    _print(summary, client.usage)
    return rp.explanations


def _print(summary: dict[str, Any], u: Usage) -> None:
    parts = ", ".join(f"{v} {k}" for k, v in summary["statuses"].items())
    print(
        f"explain: {summary['n_features']} features ({parts}); {u.requests} requests, "
        f"{u.cached} from the cache, {u.failed} failed"
        + (f", {u.held_back} held back by the budget" if u.held_back else "")
        + "; "
        f"{u.prompt_tokens:,} prompt + {u.completion_tokens:,} answer tokens"
    )
