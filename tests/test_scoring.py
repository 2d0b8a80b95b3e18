"""Scorers on the planted-topic run: real names beat their shuffled controls."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from sklearn.metrics import roc_auc_score
from test_keywords import pure_features
from test_keywords_fixture import topic_run

from saescope import EmbedConfig, embed_corpus
from saescope.errors import SaescopeError
from saescope.examples import open_examples
from saescope.interp.keywords import KeywordsConfig
from saescope.interp.keywords import run as keywords
from saescope.paths import RunPaths
from saescope.scoring.base import HeldOut, derangement, held_out
from saescope.scoring.embedding import auc
from saescope.scoring.stage import ScoreConfig, run


@pytest.fixture(scope="session")
def named(tmp_path_factory):
    run_dir, labels = topic_run(tmp_path_factory)
    keywords(KeywordsConfig(run=str(run_dir), activations="sae", progress=False, overwrite=True))
    return run_dir, labels


def test_embedding_scorer_separates_real_names_from_shuffled(named):
    run_dir, labels = named
    out = run(ScoreConfig(run=str(run_dir), activations="sae", progress=False, overwrite=True))
    df = pd.read_parquet(out)
    assert list(df.columns) == [
        "feature", "score", "shuffled_score", "n_pos", "n_neg", "method", "source", "status", "reason",
    ]  # fmt: skip
    assert (df["method"] == "embedding").all() and (df["source"] == "contrastive").all()
    ok = df[df["status"] == "ok"].set_index("feature")
    pure = pure_features(run_dir, labels)
    assert len(pure) >= 3
    for f in pure:
        assert ok.loc[f, "score"] > 0.8, ok.to_string()
    assert abs(ok["shuffled_score"] - 0.5).mean() < 0.25, ok.to_string()
    assert ok["score"].mean() - ok["shuffled_score"].mean() > 0.25
    rp = RunPaths(run_dir)
    summary = json.loads(rp.score_summary("embedding").read_text())
    assert summary["mean"] == pytest.approx(ok["score"].mean())
    assert summary["shuffled_median"] == pytest.approx(ok["shuffled_score"].median())
    assert rp.score_plot("embedding").read_bytes()[:4] == b"\x89PNG"


def test_keyword_relevance_scorer_and_its_control(named):
    run_dir, _ = named
    out = run(
        ScoreConfig(
            run=str(run_dir),
            scorer="keyword-relevance",
            activations="sae",
            progress=False,
            overwrite=True,
        )
    )
    ok = pd.read_parquet(out).query("status == 'ok'")
    assert len(ok) >= 3 and (ok["n_neg"] == 0).all() and (ok["n_pos"] <= 10).all()
    assert ok["score"].mean() > ok["shuffled_score"].mean() + 0.1


def test_held_out_examples_come_from_the_scoring_half_only(named):
    run_dir, _ = named
    ex = open_examples(run_dir, "sae", split_seed=1)
    for f in ex.acts.alive().tolist():
        h = held_out(ex, f, "scoring", max_pos=100, n_neg=50, seed=0)
        assert ex.split.in_half(h.pos, "scoring").all()
        assert ex.split.in_half(h.neg, "scoring").all()
        active = set(ex.acts.column(f)[0].tolist())
        assert not active & set(h.neg.tolist()) and set(h.pos.tolist()) <= active
        assert len(set(h.neg.tolist())) == len(h.neg)


def test_auc_matches_sklearn_and_derangement_has_no_fixed_point():
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(30, 8))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    q = vecs[0]
    h = HeldOut(np.arange(0, 10), np.arange(10, 30))
    want = roc_auc_score(np.r_[np.ones(10), np.zeros(20)], vecs @ q)
    assert auc(q, h, lambda rows: vecs[rows]) == pytest.approx(want)
    for n in (2, 3, 7, 50):
        p = derangement(n, seed=n)
        assert sorted(p.tolist()) == list(range(n)) and (p != np.arange(n)).all()


def test_score_without_keywords_or_latents_is_a_clear_error(tmp_path, named):
    run_dir, _ = named
    with pytest.raises(SaescopeError, match="saescope keywords"):
        run(ScoreConfig(run=str(tmp_path / "empty")))
    with pytest.raises(SaescopeError, match="latents"):
        run(ScoreConfig(run=str(run_dir), activations="latents", overwrite=True))
    proc = run_cli("score", "--run", str(tmp_path / "empty"), check=False)
    assert proc.returncode == 2 and "saescope keywords" in proc.stderr


@pytest.fixture(scope="module")
def doc_run(tmp_path_factory):
    """The topic run with documents of several rows: 6 texts of one topic per document."""
    import shutil

    src, labels = topic_run(tmp_path_factory)
    run_dir = tmp_path_factory.mktemp("docs") / "run"
    shutil.copytree(src, run_dir)
    rp = RunPaths(run_dir)
    corpus = pd.read_parquet(rp.corpus)
    lab = pd.Series(labels)
    corpus["doc"] = [f"{t}-{i // 6}" for t, i in zip(lab, lab.groupby(lab).cumcount(), strict=True)]
    corpus.to_parquet(rp.corpus)
    # the store records the corpus file it embedded: embed the edited one (same texts)
    embed_corpus(EmbedConfig(run=str(run_dir), batch_size=64, overwrite=True))
    return run_dir, corpus["doc"].to_numpy()


def test_scorer_never_scores_on_documents_the_names_were_read_from(doc_run, monkeypatch):
    from saescope.examples.select import Examples

    run_dir, docs = doc_run
    seen: dict[str, dict[int, set[int]]] = {"naming": {}, "scoring": {}}
    of = Examples.of

    def spy(self, feature, half="all", opts=None):
        fe = of(self, feature, half, opts) if opts is not None else of(self, feature, half)
        rows = np.r_[fe.top_rows, fe.quantile_rows, fe.random_rows, fe.hard_rows]
        seen[half].setdefault(int(feature), set()).update(rows.tolist())
        return fe

    monkeypatch.setattr(Examples, "of", spy)
    keywords(KeywordsConfig(run=str(run_dir), activations="sae", progress=False, overwrite=True))
    kcfg = json.loads(RunPaths(run_dir).keywords_config.read_text())
    assert kcfg["split"] == "doc" and kcfg["split_seed"] == 1
    out = run(ScoreConfig(run=str(run_dir), activations="sae", progress=False, overwrite=True))
    scored = pd.read_parquet(out).query("status == 'ok'")
    assert len(scored) >= 3

    split = open_examples(run_dir, "sae", 1, "doc").split
    assert split.kind == "doc"
    by_doc = pd.Series(split.scoring).groupby(docs).nunique()
    assert (by_doc == 1).all() and len(by_doc) == len(docs) // 6  # every document in one half
    assert 0.35 < split.scoring.mean() < 0.65
    assert seen["naming"] and seen["scoring"]
    for f in scored["feature"].tolist():
        naming_docs = {docs[r] for r in seen["naming"][f]}
        scoring_docs = {docs[r] for r in seen["scoring"][f]}
        assert naming_docs and scoring_docs and not naming_docs & scoring_docs, f
