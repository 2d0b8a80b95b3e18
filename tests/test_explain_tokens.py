"""LLM explanations and scorers on token rows (an LM run): marked windows, fuzzing,
surprisal, and answers that cannot be read, with the in-process client."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, token_run_with_latents

from saescope.examples import open_examples
from saescope.examples.shown import RowShower, mark_tokens
from saescope.explain.stage import prompts
from saescope.llm.jobs import ResultsFile
from saescope.options.explain import ExplainConfig
from saescope.paths import RunPaths
from saescope.scoring.llm import fuzzing
from saescope.scoring.llm.base import Context, samples


@pytest.fixture(scope="module")
def lm_run(tiny_lm_run, tmp_path_factory):
    return token_run_with_latents(tiny_lm_run, tmp_path_factory.mktemp("explain-lm") / "run")


def busiest(run) -> int:
    feats = pd.read_parquet(RunPaths(run).features)
    return int(feats["count"].idxmax())


def test_marks_wrap_runs_of_active_tokens():
    toks = ["The", " cat", " sat", " on", " the", " mat"]
    assert mark_tokens(toks, [0, 1, 1, 0, 0, 1]) == "The <<cat sat>> on the <<mat>>"
    assert mark_tokens(toks, [0] * 6) == "The cat sat on the mat"


def test_explain_prompts_show_token_windows_with_active_tokens_marked(lm_run):
    cfg = ExplainConfig(
        run=str(lm_run), features=[busiest(lm_run)], n_top=4, n_quantiles=4, n_examples=4
    )
    ex = open_examples(lm_run, "latents", cfg.split_seed, cfg.split)
    p = prompts(cfg, ex, cfg.features)[busiest(lm_run)]
    user = p.request.messages[1][1]
    assert "<<like this>>" in user and user.count("Example ") == len(p.rows)
    shower = RowShower(lm_run, ex.acts)
    for row, s in zip(p.rows, shower.show(busiest(lm_run), p.rows), strict=True):
        assert s.activation > 0 and max(s.acts) > 0
        assert "<<" in s.text and s.text in user
        assert ex.split.in_half(np.array([row]), "naming").all()


def test_fuzzing_marks_the_active_tokens_or_as_many_inactive_ones(lm_run):
    f = busiest(lm_run)
    ex = open_examples(lm_run, "latents", 1, "doc")
    shower = RowShower(lm_run, ex.acts)
    ctx = Context(None, shower, 40, 0.0, 10, 5, 5, seed=0)
    s = samples(ex, f, 10, 10, seed=0)
    texts, labels = fuzzing.marked_examples(ctx, f, s)
    assert len(texts) == len(labels) and set(labels.tolist()) == {0, 1}
    correct = {mark_tokens(w.tokens, [a > 0 for a in w.acts]) for w in shower.show(f, s.pos)}
    for text, label in zip(texts, labels, strict=True):
        assert (text in correct) == bool(label)


def test_unreadable_answers_are_failures_with_the_raw_answer(lm_run, tiny_lm_dir):
    """The tiny random LM answers noise: every feature fails, with its reason and answer."""
    f = busiest(lm_run)
    args = ["--run", str(lm_run), "--features", str(f), "--llm", "local"]
    args += ["--llm-model", str(tiny_lm_dir), "--answer-tokens", "12", "--progress", "false"]
    out = run_cli("explain", *args)
    r = ResultsFile(RunPaths(lm_run).explanations).load()[f]
    assert r["status"] == "failed" and r["explanation"] is None
    assert r["reason"].startswith("format:") and r["raw"]
    assert "1 failed" in out.stdout
    # nothing to score: the LLM scorers say so instead of scoring a placeholder
    proc = run_cli("score", "--scorer", "fuzzing", *args[:4], check=False)
    assert proc.returncode == 0
    scored = pd.read_parquet(RunPaths(lm_run).score("fuzzing"))
    assert (scored["status"] == "no_name").all() and scored["score"].isna().all()


def test_surprisal_scores_keywords_with_an_in_process_base_model(lm_run, tiny_lm_dir):
    run_cli("keywords", "--run", str(lm_run), "--progress", "false")
    args = ["--run", str(lm_run), "--scorer", "surprisal", "--names", "keywords"]
    args += ["--surprisal-model", str(tiny_lm_dir), "--n-features", "4", "--llm-pos", "4"]
    run_cli("score", *args, "--llm-neg", "4", "--progress", "false")
    rp = RunPaths(lm_run)
    df = pd.read_parquet(rp.score("surprisal-keywords")).query("status == 'ok'")
    assert len(df) >= 2 and df["score"].between(0, 1).all()
    m = json.loads(df["metrics"].iloc[0])
    assert set(m) == {"auc", "gain_pos", "gain_neg"}
    summary = json.loads(rp.score_summary("surprisal-keywords").read_text())
    assert summary["requests"] == 4 * summary["n_scored"]  # with and without, real and shuffled


def test_local_client_answers_concurrent_requests_in_one_batch_as_it_would_alone(tiny_lm_dir):
    import asyncio

    from saescope.llm.local import LocalClient
    from saescope.llm.types import LLMRequest

    reqs = [
        LLMRequest((("user", "Name a colour."),), max_tokens=6, top_logprobs=3),
        LLMRequest(
            (("system", "Be brief."), ("user", "What is two plus two, in words?")), max_tokens=9
        ),
        LLMRequest((("user", "Hi"),), max_tokens=4),
    ]
    client = LocalClient(str(tiny_lm_dir), batch_size=8)
    alone = [client.complete_sync(r) for r in reqs]

    async def together():
        return await asyncio.gather(*(client.complete(r) for r in reqs))

    calls = []
    original = client.complete_many
    client.complete_many = lambda rs: calls.append(len(rs)) or original(rs)  # type: ignore[method-assign]
    batched = asyncio.run(together())
    assert calls == [3]  # one generate call for the three
    for a, b, r in zip(alone, batched, reqs, strict=True):
        assert a.text == b.text and a.completion_tokens == b.completion_tokens <= r.max_tokens
        assert a.prompt_tokens == b.prompt_tokens and a.finish_reason == b.finish_reason
    assert batched[0].top_logprobs is not None and len(batched[0].top_logprobs) == 6
    assert batched[1].top_logprobs is None
    for step, lp in zip(alone[0].top_logprobs, batched[0].top_logprobs, strict=True):
        assert list(step) == list(lp)
