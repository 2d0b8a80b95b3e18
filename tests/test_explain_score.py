"""LLM explanations and LLM scorers end to end, against a real HTTP server on loopback.

The server (`oracle_server`) answers like a model that knows the topic run's five
topics, so the pipeline's results can be checked: explanations name the right
topic, real names beat their shuffled controls, no scorer sees a row or a document
the explainer saw, finished features are never requested again, and budgets,
dry runs and unreadable answers behave as documented.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from fault_server import FaultServer
from oracle_server import Oracle
from test_keywords import pure_features
from test_keywords_fixture import TOPICS, topic_run

from saescope import provenance
from saescope.examples import load_split, open_examples
from saescope.llm.jobs import ResultsFile
from saescope.paths import RunPaths
from saescope.prompts import template
from saescope.store import ActivationStore


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """(run, labels, server, base URL): a copy of the topic run with keywords, and a loopback
    server answering as the oracle between scripted faults."""
    src, labels = topic_run(tmp_path_factory)
    run = tmp_path_factory.mktemp("explain") / "topics"
    shutil.copytree(src, run)
    run_cli("keywords", "--run", str(run), "--activations", "sae", "--progress", "false")
    server = FaultServer(answer=Oracle(TOPICS)).start()
    try:
        yield run, labels, server, server.url
    finally:
        server.stop()


def llm_args(run, url, *more: str) -> list[str]:
    return [
        "--run", str(run), "--activations", "sae", "--llm", url, "--llm-model", "oracle",
        "--progress", "false", *more,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def explained(oracle):
    run, labels, o, url = oracle
    run_cli("explain", *llm_args(run, url))
    return run, labels, o, url


def test_explanations_name_the_topic_of_pure_features(explained):
    run, labels, _, _ = explained
    rp = RunPaths(run)
    res = ResultsFile(rp.explanations).load()
    pure = pure_features(run, labels)
    assert len(pure) >= 3
    for f, topic in pure.items():
        r = res[f]
        assert r["status"] == "ok", r
        # the answer's preamble, markdown and quotes are gone
        assert r["explanation"] == f"Sentences about {topic}", r["raw"]
        assert r["prompt_sha256"] == template("explain_default").sha256
        assert r["model"] == "oracle" and r["prompt_tokens"] > 0
    usage = json.loads(rp.explanations_usage.read_text())
    assert usage["requests"] == len(res) and usage["failed"] == 0
    assert provenance.read_record(rp.explanations_record)["status"] == "complete"


def test_detection_real_names_beat_the_shuffled_control(explained):
    run, labels, _, url = explained
    run_cli("score", "--scorer", "detection", *llm_args(run, url))
    rp = RunPaths(run)
    df = pd.read_parquet(rp.score("detection")).set_index("feature")
    pure = pure_features(run, labels)
    for f in pure:
        assert df.loc[f, "status"] == "ok" and df.loc[f, "score"] > 0.8, df.loc[f].to_dict()
        assert json.loads(df.loc[f, "metrics"])["auc"] > 0.8
    ok = df[df["status"] == "ok"]
    # 8 features share 5 topics: a shuffled name is sometimes the same topic's
    assert ok["score"].mean() > ok["shuffled_score"].mean() + 0.2
    s = json.loads(rp.score_summary("detection").read_text())
    assert s["n_scored"] == len(ok) and s["failed_request_fraction"] == 0.0
    assert s["metrics"]["metrics"]["auc"] > s["metrics"]["shuffled_metrics"]["auc"]


def test_no_scorer_sees_a_row_or_document_the_explainer_saw(explained):
    run, _, _, url = explained
    run_cli("score", "--scorer", "detection", *llm_args(run, url, "--overwrite", "true"))
    rp = RunPaths(run)
    shown = ResultsFile(rp.explanations).load()
    scored = ResultsFile(rp.score_results("detection")).load()
    split = load_split(run, int(pd.read_parquet(rp.corpus).shape[0]), 1, "doc")
    docs = pd.read_parquet(rp.corpus)["doc"].to_numpy()
    checked = 0
    for f, r in scored.items():
        if r["status"] != "ok":
            continue
        seen, used = np.array(shown[f]["rows"]), np.array(r["rows"])
        assert not split.in_half(seen, "scoring").any() and split.in_half(used, "scoring").all()
        assert not set(docs[seen]) & set(docs[used])
        checked += 1
    assert checked >= 3


def test_intruder_and_simulation_beat_their_controls(explained):
    run, _, _, url = explained
    for scorer in ("intruder", "simulation"):
        run_cli("score", "--scorer", scorer, *llm_args(run, url))
        ok = pd.read_parquet(RunPaths(run).score(scorer)).query("status == 'ok'")
        assert len(ok) >= 3
        assert ok["score"].mean() > ok["shuffled_score"].mean() + 0.2, (scorer, ok.to_string())


def test_keyword_names_scored_by_the_same_llm_scorer(explained):
    run, _, _, url = explained
    run_cli("score", "--scorer", "detection", "--names", "keywords", *llm_args(run, url))
    rp = RunPaths(run)
    df = pd.read_parquet(rp.score("detection-keywords"))
    assert (df["source"] == "keywords:contrastive").all() and (df["status"] == "ok").sum() >= 3
    assert provenance.saved_upstream(rp.score_record("detection-keywords"))["keywords"]


def test_finished_features_are_never_requested_again(explained):
    run, _, o, url = explained
    before = o.requests
    out = run_cli("explain", *llm_args(run, url, "--cache", "false"))
    assert o.requests == before, out.stdout


def test_budget_stops_cleanly_and_the_rerun_does_only_the_rest(oracle, tmp_path):
    src, _, o, url = oracle
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("explanations*", "llm-cache", "scores"))
    before = o.requests
    out = run_cli("explain", *llm_args(run, url, "--max-requests", "2", "--concurrency", "1"))
    assert o.requests - before == 2
    assert "not done" in out.stdout and "most often: budget" in out.stdout
    res = ResultsFile(RunPaths(run).explanations).load()
    statuses = [r["status"] for r in res.values()]
    assert statuses.count("ok") == 2 and statuses.count("budget") == len(res) - 2
    assert provenance.read_record(RunPaths(run).explanations_record)["status"] == "running"
    mid = o.requests
    run_cli("explain", *llm_args(run, url, "--cache", "false"))
    assert o.requests - mid == len(res) - 2
    res = ResultsFile(RunPaths(run).explanations).load()
    assert all(r["status"] == "ok" for r in res.values())
    # the usage file counts what both runs spent, and a finished stage's re-run keeps it
    usage = RunPaths(run).explanations_usage
    assert json.loads(usage.read_text())["requests"] == len(res)
    out = run_cli("explain", *llm_args(run, url, "--cache", "false"))
    assert o.requests - mid == len(res) - 2 and "up to date" in out.stderr
    assert json.loads(usage.read_text())["requests"] == len(res)


def test_dry_run_sends_nothing(oracle, tmp_path):
    src, _, o, url = oracle
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("explanations*", "llm-cache", "scores"))
    before = o.requests
    out = run_cli("explain", *llm_args(run, url, "--dry-run", "true"))
    assert o.requests == before
    assert "requests" in out.stdout and "nothing sent" in out.stdout
    assert not RunPaths(run).explanations.exists()


def test_more_features_than_there_are_is_said(oracle, tmp_path):
    src, _, o, url = oracle
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("explanations*", "llm-cache", "scores"))
    out = run_cli("explain", *llm_args(run, url, "--dry-run", "true", "--n-features", "99999"))
    assert "--n-features 99999: there are only" in out.stderr and "taking all" in out.stderr


def test_fuzzing_needs_token_rows(explained):
    run, _, _, url = explained
    proc = run_cli("score", "--scorer", "fuzzing", *llm_args(run, url), check=False)
    assert proc.returncode == 2 and "needs an LM run" in proc.stderr


def test_llm_scorer_without_explanations_says_what_to_run(oracle, tmp_path):
    src, _, _, url = oracle
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("explanations*"))
    proc = run_cli("score", "--scorer", "detection", *llm_args(run, url), check=False)
    assert proc.returncode == 2 and "saescope explain" in proc.stderr


def test_inspect_and_report_show_explanations_and_llm_scores(explained, tmp_path):
    run, labels, _, url = explained
    run_cli("score", "--scorer", "detection", *llm_args(run, url, "--overwrite", "true"))
    run_cli("latents", "--run", str(run))
    f, topic = next(iter(pure_features(run, labels).items()))
    shown = json.loads(run_cli("inspect", str(f), "--run", str(run), "--json").stdout)
    assert shown["explanation"] == f"Sentences about {topic}"
    assert shown["scores"]["detection"]["score"] > 0.8
    run_cli("report", "--run", str(run))
    page = RunPaths(run).report_index.read_text()
    assert f"Sentences about {topic}" in page and '"detection"' in page


def test_contrastive_explainer_shows_nearest_inactive_naming_rows(oracle, tmp_path):
    src, labels, _, url = oracle
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("explanations*", "llm-cache", "scores"))
    run_cli("explain", *llm_args(run, url, "--method", "contrastive", "--n-negatives", "5"))
    res = ResultsFile(RunPaths(run).explanations).load()
    ex = open_examples(run, "sae", 1, "doc")
    store = ActivationStore(RunPaths(run).acts)
    pure = pure_features(run, labels)
    for f, topic in pure.items():
        r = res[f]
        assert r["status"] == "ok" and r["explanation"] == f"Sentences about {topic}"
        assert r["prompt_sha256"] == template("explain_contrastive").sha256
        neg = np.array(r["negatives"])
        assert len(neg) == 5 and ex.split.in_half(neg, "naming").all()
        assert not set(neg.tolist()) & set(ex.acts.column(f)[0].tolist())
        # nearest: closer to the active examples' centre than the other inactive naming rows
        pos = np.array(r["rows"])
        centre = unit(store.rows(pos).numpy()).mean(0)
        others = np.setdiff1d(ex.split.rows("naming"), np.r_[neg, ex.acts.column(f)[0]])
        assert (unit(store.rows(neg).numpy()) @ centre).min() >= np.median(
            unit(store.rows(others).numpy()) @ centre
        )


def test_server_faults_are_retried_recorded_and_a_rerun_does_only_the_missing(oracle, tmp_path):
    src, _, server, url = oracle
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("explanations*", "llm-cache", "scores"))
    before = server.requests
    # one feature answered after a 429 and a 500; one whose server fails 4 times (3 retries);
    # one answer cut at the length limit (no retry: the answer is what it is); the rest fine
    server.play("429:0", "500", "ok", "503", "503", "503", "503", "length")
    args = llm_args(run, url, "--retries", "3", "--concurrency", "1", "--timeout", "10")
    out = run_cli("explain", *args)
    res = ResultsFile(RunPaths(run).explanations).load()
    by_status: dict[str, list[dict]] = {}
    for r in res.values():
        by_status.setdefault(r["status"], []).append(r)
    assert len(by_status["error"]) == 1 and by_status["error"][0]["reason"].startswith("server")
    failed = by_status["failed"]
    assert len(failed) == 1 and failed[0]["raw"] == "The feature fires on words about"
    assert failed[0]["explanation"] is None and "cut at the length limit" in failed[0]["reason"]
    assert len(by_status["ok"]) == len(res) - 2
    assert server.requests - before == len(res) + 2 + 3  # every feature once, plus the retries
    usage = json.loads(RunPaths(run).explanations_usage.read_text())
    assert usage["failed"] == 1 and usage["failures"] == {"server": 1}
    assert "not done" in out.stdout
    # the summary says why: the commonest reasons, with their counts
    assert "most often: server" in out.stdout and "(1 feature)" in out.stdout
    # the faults are over: the re-run asks only for the feature the server failed
    mid = server.requests
    run_cli("explain", *args)
    assert server.requests - mid == 1
    res = ResultsFile(RunPaths(run).explanations).load()
    assert [r["status"] for r in res.values()].count("ok") == len(res) - 1
    # a feature with no explanation is listed, never scored nor lent as another's control
    run_cli("score", "--scorer", "detection", *args)
    df = pd.read_parquet(RunPaths(run).score("detection")).set_index("feature")
    unnamed = [f for f, r in res.items() if r["status"] != "ok"]
    assert df.loc[unnamed, "status"].tolist() == ["no_name"]
    assert (df.drop(index=unnamed)["status"] == "ok").sum() >= 3


def test_nearest_negatives_come_from_the_scoring_half_and_are_inactive(explained):
    run, _, server, url = explained
    more = ("--negatives", "nearest", "--overwrite", "true")
    run_cli("score", "--scorer", "detection", *llm_args(run, url, *more))
    rp = RunPaths(run)
    ex = open_examples(run, "sae", 1, "doc")
    checked = 0
    for f, r in ResultsFile(rp.score_results("detection")).load().items():
        if r["status"] != "ok":
            continue
        neg = np.array(r["rows"][r["n_pos"] :])
        assert len(neg) == r["n_neg"] > 0 and ex.split.in_half(neg, "scoring").all()
        assert not set(neg.tolist()) & set(ex.acts.column(f)[0].tolist())
        checked += 1
    assert checked >= 3
    before = server.requests
    args = llm_args(run, url, "--dry-run", "true", "--seed", "7")
    dry = run_cli("score", "--scorer", "intruder", *args)
    assert "nothing sent" in dry.stdout and server.requests == before


def test_detection_one_example_a_request_asks_yes_or_no(explained):
    run, labels, server, url = explained
    before = server.requests
    args = llm_args(
        run, url, "--per-prompt", "1", "--llm-pos", "6", "--llm-neg", "6", "--cache", "false"
    )
    run_cli("score", "--scorer", "detection", *args, "--overwrite", "true")
    rp = RunPaths(run)
    df = pd.read_parquet(rp.score("detection")).set_index("feature")
    ok = df[df["status"] == "ok"]
    assert server.requests - before == int(ok["requests"].sum())
    assert (ok["requests"] == 2 * (ok["n_pos"] + ok["n_neg"])).all()  # one per example, twice
    for f in pure_features(run, labels):
        assert ok.loc[f, "score"] > 0.8 and json.loads(ok.loc[f, "metrics"])["auc"] > 0.8
    assert ok["score"].mean() > ok["shuffled_score"].mean() + 0.2
    assert "Answer Yes or No" in server.bodies[-1]["messages"][-1]["content"]


@pytest.mark.parametrize(
    ("stage", "flags", "message"),
    [
        ("explain", ["--n-top", "0", "--n-examples", "0"], "would show no example"),
        ("explain", ["--n-examples", "15"], "not a multiple of --n-quantiles 10"),
        ("explain", ["--max-chars", "0"], "max_chars must be >= 1"),
        ("explain", ["--answer-tokens", "0"], "answer_tokens must be >= 1"),
        ("explain", ["--n-features", "0"], "n_features must be >= 1"),
        ("explain", ["--features", "1", "--n-features", "3"], "not both"),
        ("explain", ["--n-negatives", "5"], "is an option of --method contrastive"),
        ("score", ["--scorer", "detection", "--max-chars", "-5"], "max_chars must be >= 1"),
        ("score", ["--scorer", "detection", "--max-failed", "-1"], "max_failed must be a fraction"),
        ("score", ["--scorer", "detection", "--answer-tokens", "0"], "answer_tokens must be >= 1"),
        ("score", ["--scorer", "embedding", "--features", "1", "2"], "scores every named feature"),
    ],
)
def test_values_that_would_change_results_in_silence_are_refused(oracle, stage, flags, message):
    """Each of these used to run: with no example in the prompts (explanations 'ok' from
    nothing), with fewer examples than asked, with texts cut to '…', or, for the embedding
    scorer, on every feature while the user asked for some."""
    run, _, _, url = oracle
    proc = run_cli(stage, *llm_args(run, url), *flags, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
