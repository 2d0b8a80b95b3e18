"""The keywords stage on a corpus with planted topics, and its failure modes."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
from test_keywords_fixture import TOPICS, topic_run

from saescope.errors import SaescopeError
from saescope.examples import load_activations, load_split
from saescope.interp.contrastive import (
    ContrastiveOptions,
    contrastive_keywords,
    log_odds_lower,
    mmr,
)
from saescope.interp.keywords import KeywordsConfig, run
from saescope.paths import RunPaths

TOPIC_WORDS = {
    name: {w for part in parts.values() for s in part for w in re.findall(r"[a-z]+", s.lower())}
    for name, parts in TOPICS.items()
}


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    return topic_run(tmp_path_factory)


def pure_features(run, labels) -> dict[int, str]:
    """Features whose activating rows are >= 80% one topic (at least 10 rows)."""
    acts = load_activations(run, "sae")
    out = {}
    for f in acts.alive().tolist():
        rows, _ = acts.column(f)
        if len(rows) >= 10:
            counts = pd.Series(np.asarray(labels)[rows]).value_counts()
            if counts.iloc[0] / len(rows) >= 0.8:
                out[f] = str(counts.index[0])
    return out


def keyword_hits(kw: pd.DataFrame, pure: dict[int, str]) -> dict[int, float]:
    """Per pure feature: the fraction of its keywords made of its topic's words."""
    out = {}
    for f, topic in pure.items():
        words = kw.set_index("feature").loc[f, "keywords"]
        ok = [all(w in TOPIC_WORDS[topic] for w in k.split()) for k in words]
        out[f] = float(np.mean(ok)) if len(ok) else 0.0
    return out


@pytest.mark.parametrize("method", ["contrastive", "thesis"])
def test_topic_features_get_their_topics_words(planted, method):
    run_dir, labels = planted
    out = run(
        KeywordsConfig(
            run=str(run_dir), method=method, activations="sae", progress=False, overwrite=True
        )
    )
    kw = pd.read_parquet(out)
    assert list(kw.columns) == [
        "feature",
        "keywords",
        "scores",
        "method",
        "n_texts",
        "status",
        "reason",
    ]
    assert kw["feature"].dtype == np.int32 and (kw["method"] == method).all()
    pure = pure_features(run_dir, labels)
    assert len(set(pure.values())) >= 3, pure
    hits = keyword_hits(kw, pure)
    assert all(h >= 0.6 for h in hits.values()), (hits, kw.to_string())
    ok = kw[kw["status"] == "ok"]
    assert all(len(k) == (5 if method == "contrastive" else 3) for k in ok["keywords"])
    assert all(list(s) == sorted(s, reverse=True) for s in ok["scores"]) or method == "contrastive"


def test_keywords_come_only_from_naming_texts(planted):
    run_dir, labels = planted
    out = run(KeywordsConfig(run=str(run_dir), activations="sae", progress=False, overwrite=True))
    kw = pd.read_parquet(out)
    texts = pd.read_parquet(RunPaths(run_dir).corpus)["text"].str.lower().tolist()
    acts = load_activations(run_dir, "sae")
    split = load_split(run_dir, acts.n_rows, seed=1, kind="doc")
    for f, words in zip(kw["feature"], kw["keywords"], strict=True):
        rows, _ = acts.column(int(f))
        naming = rows[split.in_half(rows, "naming")]
        for w in words:
            assert any(re.search(rf"\b{re.escape(w)}\b", texts[r]) for r in naming), (f, w)


def test_rerun_skips_and_other_options_need_overwrite(planted):
    run_dir, _ = planted
    cfg = KeywordsConfig(
        run=str(run_dir), method="thesis", activations="sae", progress=False, overwrite=True
    )
    path = run(cfg)
    mtime = path.stat().st_mtime_ns
    assert run(cfg).stat().st_mtime_ns == mtime
    with pytest.raises(SaescopeError, match="overwrite"):
        run(
            KeywordsConfig(
                run=str(run_dir), method="thesis", n_texts=5, activations="sae", progress=False
            )
        )


def test_dead_and_out_of_range_features(planted):
    run_dir, _ = planted
    acts = load_activations(run_dir, "sae")
    with pytest.raises(SaescopeError, match="out of range"):
        run(
            KeywordsConfig(
                run=str(run_dir), activations="sae", features=[acts.d_sae], overwrite=True
            )
        )
    dead = sorted(set(range(acts.d_sae)) - set(acts.alive().tolist()))
    if dead:
        out = run(
            KeywordsConfig(
                run=str(run_dir),
                activations="sae",
                features=[dead[0]],
                progress=False,
                overwrite=True,
            )
        )
        row = pd.read_parquet(out).iloc[0]
        assert row["status"] == "dead" and len(row["keywords"]) == 0


def test_run_without_latents_is_a_clear_error(planted):
    run_dir, _ = planted
    with pytest.raises(SaescopeError, match="latents"):
        run(KeywordsConfig(run=str(run_dir), activations="latents", overwrite=True))


def test_log_odds_favours_phrases_of_the_feature():
    # phrase 0: in 8 of 10 feature texts, 10 of 1000 overall; phrase 1: equally common everywhere
    z = log_odds_lower(np.array([8.0, 1.0]), 10, np.array([10.0, 100.0]), 1000, prior=10.0)
    assert z[0] > 2 and z[1] < 0


def test_a_phrase_only_the_features_texts_contain_ranks_first():
    # the dictionary case of issue 16: "yucca" in 6 of the feature's 20 naming texts and in
    # no other of 53,484; "whip" in 3 of 20 and 13 overall; a z-score put whip first
    n_all = 53_484
    y_a, y_all = np.array([6.0, 3.0]), np.array([6.0, 13.0])
    bound = log_odds_lower(y_a, 20, y_all, n_all, prior=10.0)
    assert bound[0] > bound[1] > 0
    # ... and through the whole method: 20 feature texts among 400 others
    rng = np.random.default_rng(0)
    filler = ["tall", "stiff", "white", "leaves", "handle", "terminal", "southern", "plant"]
    texts = []
    for i in range(20):  # the feature's texts: yucca in 6, whip in 3, common words throughout
        words = (
            list(rng.choice(filler, 5))
            + (["yucca"] if i < 6 else [])
            + (["whip"] if i in (6, 7, 8) else [])
        )
        texts.append(" ".join(rng.permutation(words)))
    for i in range(400):  # the rest: whip in 10, never yucca
        words = list(rng.choice(filler + ["river", "city", "market", "garden"], 6))
        texts.append(" ".join(words + (["whip"] if i < 10 else [])))

    class Embedder:  # no re-rank (sae=None) and an MMR that only sees distinct words
        def embed(self, phrases, desc=""):
            pass

        def unit(self, phrases):
            return np.eye(len(phrases), dtype=np.float32)

    out = contrastive_keywords(
        {0: np.arange(20)}, np.arange(len(texts)), texts, Embedder(), None,
        ContrastiveOptions(ngram_range=(1, 1)), progress=False,
    )  # fmt: skip
    assert out[0].status == "ok" and out[0].keywords[0] == "yucca"


def test_mmr_skips_near_duplicates():
    unit = np.array([[1.0, 0.0], [0.999, 0.0447], [0.0, 1.0]])
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    assert mmr(np.array([1.0, 0.95, 0.6]), unit, k=2, lam=0.5) == [0, 2]


def test_phrases_are_ranked_without_an_sae_of_another_space(planted, tmp_path, capsys):
    """On imported vectors the phrases (embedded by MiniLM) were pushed through an SAE of
    another space, and the names changed without a word."""
    import json
    import shutil

    src, _ = planted
    run_dir = tmp_path / "imported"
    shutil.copytree(src, run_dir, ignore=shutil.ignore_patterns("interp", "latents"))
    manifest = RunPaths(run_dir).acts_manifest
    data = json.loads(manifest.read_text())
    data["meta"] = {"source": "vectors", "rows": "texts"}  # as `embed --vectors` records
    manifest.write_text(json.dumps(data))

    def names(**kw):
        cfg = KeywordsConfig(run=str(run_dir), activations="sae", progress=False, overwrite=True)
        out = pd.read_parquet(run(dataclasses.replace(cfg, **kw)))
        return out.set_index("feature")["keywords"].map(list).to_dict()

    default = names()
    assert names(sae_weight=0.0) == default
    assert "--sae-weight unused" not in capsys.readouterr().err  # not asked for: no note
    assert names(sae_weight=0.9) == default
    assert "ranked without the SAE (--sae-weight unused)" in capsys.readouterr().err


def test_options_of_the_other_method_and_out_of_range_values_are_refused():
    with pytest.raises(SaescopeError, match="--max-texts is not read by --method thesis"):
        KeywordsConfig(method="thesis", max_texts=3)
    with pytest.raises(SaescopeError, match="--n-texts is not read by --method contrastive"):
        KeywordsConfig(n_texts=3)
    for bad, message in (
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"sae_weight": 2.0}, "sae_weight must be between 0 and 1"),
        ({"confidence": float("nan")}, "confidence must be >= 0"),
        ({"n_keywords": 0}, "n_keywords must be >= 1"),
        ({"min_df": 0}, "min_df must be >= 1"),
    ):
        with pytest.raises(SaescopeError, match=message):
            KeywordsConfig(**bad)
