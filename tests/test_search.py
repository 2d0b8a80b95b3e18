"""Steerable semantic search on a corpus with planted topics: the index, edits by id and by
name, before/after results, search-eval, and one-line errors for bad input."""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

from saescope.cli import main as cli_main
from saescope.errors import SaescopeError
from saescope.io import read_json, write_json
from saescope.options.search import IndexConfig, SearchEvalConfig
from saescope.paths import RunPaths
from saescope.report.data import Annotations, Explanation, Keywords
from saescope.search import stage as index_stage
from saescope.search.evaluate import format_summary, knee_strength, summarize
from saescope.search.evaluate import run as search_eval
from saescope.search.index import ExactIndex, open_index
from saescope.search.query import SearchSession
from saescope.search.select import EditRequest, FeatureNames, boost, parse_spec, suppress
from saescope.store import ActivationStore

# Five topics, each a template: subject + verb + object. 60 texts a topic.
TOPICS = {
    "astronomy": (
        ["The telescope", "Astronomers", "The space probe", "A new observatory", "NASA scientists"],
        ["observed", "detected", "photographed", "measured", "tracked", "mapped"],
        [
            "a distant galaxy",
            "a comet passing Jupiter",
            "the rings of Saturn",
            "a supernova in Andromeda",
            "an exoplanet around a red dwarf",
            "dark matter in a galaxy cluster",
        ],
    ),
    "cooking": (
        ["The chef", "My grandmother", "The recipe", "A home cook", "The bakery"],
        ["roasted", "simmered", "baked", "seasoned", "whisked", "slow-cooked"],
        [
            "garlic and butter into a sauce",
            "a loaf of sourdough bread",
            "tomatoes with fresh basil",
            "a chocolate cake with cream",
            "onions for a French soup",
            "chicken thighs with rosemary",
        ],
    ),
    "football": (
        ["The striker", "The goalkeeper", "The home team", "The coach", "The midfielder"],
        ["scored against", "defended against", "beat", "drew with", "lost to", "trained for"],
        [
            "the league leaders in the derby",
            "their rivals in the cup final",
            "a penalty in extra time",
            "the defending champions at the stadium",
            "a side from the second division",
            "the national team in a qualifier",
        ],
    ),
    "finance": (
        ["The central bank", "Investors", "The stock market", "The finance minister", "Traders"],
        ["raised", "cut", "worried about", "bet on", "reacted to", "forecast"],
        [
            "interest rates to fight inflation",
            "falling bond yields",
            "the quarterly earnings report",
            "a weaker currency exchange rate",
            "rising government debt",
            "the price of shares in banks",
        ],
    ),
    "medicine": (
        ["The doctor", "The hospital", "Nurses", "The surgeon", "The vaccine trial"],
        ["treated", "diagnosed", "operated on", "vaccinated", "monitored", "cared for"],
        [
            "patients with pneumonia",
            "a child with a broken arm",
            "elderly people with diabetes",
            "a man after a heart attack",
            "cancer patients in the ward",
            "people infected with the flu virus",
        ],
    ),
}
PER_TOPIC = 60
COOKING_QUERY = "Fresh herbs and olive oil make a simple tomato sauce."
MIXED_QUERY = "After the match the striker and the goalkeeper baked bread and roasted garlic."


def planted_texts() -> pd.DataFrame:
    rng = random.Random(0)
    rows = []
    for topic, parts in TOPICS.items():
        combos = list(itertools.product(*parts))
        rng.shuffle(combos)
        for i, (s, v, o) in enumerate(combos[:PER_TOPIC]):
            rows.append({"id": f"{topic}-{i}", "text": f"{s} {v} {o}."})
    return pd.DataFrame(rows).sample(frac=1, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="module")
def topics_run(tmp_path_factory) -> Path:
    """300 planted-topic texts, MiniLM embeddings, a small TopK SAE trained on them,
    its latent cache, keyword names and an exact index."""
    from saescope import CorpusConfig, EmbedConfig, embed_corpus, make_corpus
    from saescope.interp.keywords import KeywordsConfig
    from saescope.interp.keywords import run as keywords
    from saescope.latents import LatentsConfig
    from saescope.latents import run as latents
    from saescope.train import TrainConfig
    from saescope.train import run as train

    tmp = tmp_path_factory.mktemp("topics")
    csv = tmp / "texts.csv"
    planted_texts().to_csv(csv, index=False)
    run = str(tmp / "run")
    make_corpus(CorpusConfig(run=run, source=str(csv), id_column="id"))
    embed_corpus(EmbedConfig(run=run, shard_rows=128))
    train(
        TrainConfig(
            run=run,
            d_sae=[16],
            k=[3],
            batch_size=60,
            epochs=100.0,
            lr=3e-3,
            dead_after_samples=600,
            progress=False,
        )
    )
    latents(LatentsConfig(run=run, plots=False))
    keywords(KeywordsConfig(run=run, progress=False))
    index_stage.run(IndexConfig(run=run, progress=False))
    return Path(run)


def topic_of(run: Path) -> np.ndarray:
    ids = pd.read_parquet(RunPaths(run).corpus, columns=["id"])["id"]
    return ids.str.split("-").str[0].to_numpy()


def topic_features(run: Path) -> dict[str, int]:
    """Per topic the feature whose firing best matches the topic's rows (F1), from the cache."""
    from saescope.latents import LatentCache

    fires = LatentCache(run).to_csr().toarray() > 0  # (n_rows, d_sae)
    topic = topic_of(run)
    out = {}
    for t in TOPICS:
        m = topic == t
        tp = (fires & m[:, None]).sum(0)
        f1 = 2 * tp / (fires.sum(0) + m.sum())
        out[t] = int(f1.argmax())
        assert f1.max() > 0.6, (t, f1.max())  # the SAE found the topic
    return out


def test_boost_brings_a_topic_into_the_top_10_and_suppress_removes_one(topics_run):
    topic = topic_of(topics_run)
    feats = topic_features(topics_run)
    s = SearchSession(topics_run)
    r = s.search(COOKING_QUERY, edits=[boost(feats["astronomy"], 2.0)])
    assert [topic[h.row] for h in r.before].count("cooking") == 10
    after = [topic[h.row] for h in r.after]
    assert after.count("astronomy") >= 8, after
    # the boosted feature fires on the results it brought in
    assert sum(h.edited[feats["astronomy"]] > 0 for h in r.after) >= 8
    assert r.cosine < 0.9 and r.overlap <= 0.2

    r = s.search(MIXED_QUERY, edits=[suppress(feats["football"], 2.0)])
    before = [topic[h.row] for h in r.before]
    after = [topic[h.row] for h in r.after]
    assert before.count("football") >= 3, before
    assert after.count("football") == 0, after
    assert after.count("cooking") >= 5, after  # the rest of the query still counts


def test_an_edit_free_query_is_the_plain_embedding_search(topics_run):
    s = SearchSession(topics_run)
    x = s.embed(COOKING_QUERY)
    store = ActivationStore(RunPaths(topics_run).acts)
    rows = store.rows(np.arange(store.count)).numpy()
    cos = rows @ x.numpy() / (np.linalg.norm(rows, axis=1) * np.linalg.norm(x.numpy()))
    plain = np.argsort(-cos, kind="stable")[:10]
    r = s.search(COOKING_QUERY)
    assert [h.row for h in r.before] == plain.tolist() and r.after is None
    np.testing.assert_allclose([h.score for h in r.before], cos[plain], rtol=1e-5)
    assert torch.equal(s.edited(x, []), x)  # no edit: the very same vector
    # an edit of strength zero keeps the SAE's error term: the same results
    r0 = s.search(COOKING_QUERY, edits=[boost(3, 0.0)])
    assert [h.row for h in r0.after] == [h.row for h in r0.before] and r0.cosine > 0.9999
    # a row query: the row itself comes first
    rr = s.search(row=int(plain[0]), k=3)
    assert rr.before[0].row == int(plain[0]) and rr.before[0].score == pytest.approx(1.0)


def test_features_are_found_by_a_word_of_their_names(topics_run):
    s = SearchSession(topics_run)
    feats = topic_features(topics_run)
    f = feats["astronomy"]
    others = {w for g, kws in s.names.keywords.items() if g != f for w in kws}
    word = next(w for w in s.names.keywords[f] if w not in others and not w.isdigit())
    (chosen,) = s.choose([boost(word)])
    assert chosen.feature == f and chosen.label
    # typical units: the strength times the feature's largest activation on the run
    table = pd.read_parquet(RunPaths(topics_run).features).sort_values("feature")
    assert chosen.absolute == pytest.approx(s.default_strength * table["max_act"].iloc[f])
    with pytest.raises(SaescopeError, match="no feature name"):
        s.choose([boost("zzzunknownword")])


def test_feature_names_rank_exact_keywords_first_then_partial_then_explanations():
    ann = Annotations(
        keywords={
            0: Keywords(["rates", "bank"], [1.0, 0.5], "c"),
            1: Keywords(["bank", "money"], [1.0, 0.5], "c"),
            2: Keywords(["central bank"], [1.0], "c"),
            3: Keywords(["river"], [1.0], "c"),
        },
        explanations={4: Explanation("Texts about a bank of a river.", "llm", "m")},
    )
    names = FeatureNames(ann, density=[0.1, 0.2, 0.3, 0.4, 0.5])
    assert names.find("bank") == [1, 0, 2, 4]  # exact at rank 0, rank 1, partial, explanation
    assert names.find("River") == [3, 4]
    assert names.find("ban") == []  # whole words only
    # where the word can be embedded: among the features its name matches, the one the
    # word itself drives most (names are noisy; the drive reads what the SAE learned)
    drive = np.array([0.0, -1.0, 3.0, 9.0, 1.0])  # feature 3 is not named by "bank"
    assert names.find("bank", lambda word: drive) == [2, 4, 0, 1]
    assert names.choose("bank", "run", lambda word: drive) == 2
    assert names.label(1) == "bank, money" and names.label(4).startswith("Texts")
    assert parse_spec("boost", "telescope") == EditRequest("boost", "telescope", None)
    assert parse_spec("suppress", " 12:0.5 ") == EditRequest("suppress", 12, 0.5)
    assert parse_spec("zero", "7") == EditRequest("zero", 7, None)
    with pytest.raises(SaescopeError, match="is not a number"):
        parse_spec("boost", "3:abc")
    with pytest.raises(SaescopeError, match="positive"):
        parse_spec("boost", "3:-1")


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


def test_the_index_skips_resumes_and_is_refused_for_another_store(
    topics_run, tmp_path, monkeypatch
):
    run = _copy(topics_run, tmp_path / "run")
    rp = RunPaths(run)
    shutil.rmtree(rp.index)
    cfg = IndexConfig(run=str(run), kind="exact", progress=False)
    real_save = index_stage.save_file
    calls = {"n": 0}

    def dies_on_the_second_block(tensors, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while writing block 1
        real_save(tensors, path)

    monkeypatch.setattr(index_stage, "save_file", dies_on_the_second_block)
    with pytest.raises(KeyboardInterrupt):
        index_stage.run(cfg)
    monkeypatch.setattr(index_stage, "save_file", real_save)
    first = rp.index_block("exact", 0)
    assert read_json(rp.index_manifest("exact"))["complete"] is False
    mtime = first.stat().st_mtime_ns
    index_stage.run(cfg)  # resumes: block 0 is kept, blocks 1.. are written
    assert first.stat().st_mtime_ns == mtime
    m = read_json(rp.index_manifest("exact"))
    assert m["complete"] and [f["file"] for f in m["files"]] == [
        f"block-{i:05d}.safetensors" for i in range(3)
    ]
    idx = open_index(run, "exact", verify=True)
    store = ActivationStore(rp.acts)
    want = store.rows(np.arange(store.count))
    assert isinstance(idx, ExactIndex)
    torch.testing.assert_close(idx.vectors, want / want.norm(dim=1, keepdim=True))
    index_stage.run(cfg)  # same store and options: skipped
    assert first.stat().st_mtime_ns == mtime
    # the store changes: the index no longer describes it
    manifest = read_json(rp.acts_manifest)
    manifest["meta"]["note"] = "re-embedded"
    write_json(rp.acts_manifest, manifest)
    with pytest.raises(SaescopeError, match="built from another store"):
        open_index(run)
    with pytest.raises(SaescopeError, match="Pass --overwrite"):
        index_stage.run(cfg)
    index_stage.run(IndexConfig(run=str(run), kind="exact", progress=False, overwrite=True))
    assert open_index(run).count == store.count


def test_ivf_index_finds_what_exact_search_finds(topics_run, tmp_path):
    pytest.importorskip("faiss")
    run = _copy(topics_run, tmp_path / "run")
    index_stage.run(IndexConfig(run=str(run), kind="ivf", nlist=4, progress=False))
    rp = RunPaths(run)
    assert [f["file"] for f in read_json(rp.index_manifest("ivf"))["files"]] == ["index.faiss"]
    assert not list(rp.index_dir("ivf").glob("part-*"))  # the parts were merged
    exact, ivf = open_index(run, "exact"), open_index(run, "ivf", nprobe=4)
    assert open_index(run).kind == "ivf"  # auto prefers the approximate index once built
    q = ActivationStore(rp.acts).rows([0, 5, 9])
    a, b = exact.search(q, 10), ivf.search(q, 10)
    np.testing.assert_array_equal(a.rows, b.rows)  # every list visited: exact results
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    left_out = ivf.search(q, 10, exclude=[0, 5, 9])
    assert not np.isin(left_out.rows, [0, 5, 9]).any()
    np.testing.assert_array_equal(left_out.rows, exact.search(q, 10, exclude=[0, 5, 9]).rows)


def test_more_lists_than_training_rows_are_said_and_recorded(topics_run, tmp_path):
    """faiss trains a centroid per list from the sampled rows; --nlist above them was
    cut in silence while config.json kept the value asked for."""
    pytest.importorskip("faiss")
    from saescope.errors import SaescopeWarning

    run = _copy(topics_run, tmp_path / "run")
    cfg = IndexConfig(run=str(run), kind="ivf", nlist=100_000, train_rows=64, progress=False)
    with pytest.warns(SaescopeWarning, match="--nlist 100000: 64 rows train the lists"):
        index_stage.run(cfg)
    assert read_json(RunPaths(run).index_manifest("ivf"))["params"]["nlist"] == 64


def test_an_interrupted_ivf_build_resumes_from_its_parts(topics_run, tmp_path, monkeypatch):
    faiss = pytest.importorskip("faiss")
    run = _copy(topics_run, tmp_path / "run")
    rp = RunPaths(run)
    cfg = IndexConfig(run=str(run), kind="ivf", nlist=4, progress=False)
    real_write = faiss.write_index
    written: list[str] = []

    def dies_on_the_second_part(index, path):
        written.append(path)
        if written[-1].startswith(str(rp.index_dir("ivf") / ".part-00001")) and len(written) == 3:
            raise KeyboardInterrupt  # trained.faiss, part 0, then killed writing part 1
        real_write(index, path)

    monkeypatch.setattr(faiss, "write_index", dies_on_the_second_part)
    with pytest.raises(KeyboardInterrupt):
        index_stage.run(cfg)
    m = read_json(rp.index_manifest("ivf"))
    assert not m["complete"] and [f["file"] for f in m["files"]] == ["part-00000.faiss"]
    trained = rp.ivf_trained().read_bytes()
    written.clear()
    index_stage.run(cfg)  # resumes: the trained quantizer and part 0 are kept
    assert [Path(p).name.split(".")[1] for p in written] == ["part-00001", "part-00002", "index"]
    assert not rp.ivf_trained().exists() and trained  # merged, then the pieces removed
    q = ActivationStore(rp.acts).rows([1, 2])
    got = open_index(run, "ivf", nprobe=4).search(q, 10)
    np.testing.assert_array_equal(got.rows, open_index(run, "exact").search(q, 10).rows)


def test_search_eval_measures_success_and_drift_and_recommends_a_strength(topics_run, tmp_path):
    run = _copy(topics_run, tmp_path / "run")
    cfg = SearchEvalConfig(
        run=str(run), n_queries=40, strengths=[0.25, 1.0, 2.0, 4.0], min_count=10, progress=False
    )
    out = search_eval(cfg)
    rp = RunPaths(run)
    table = pd.read_parquet(out)
    summary = read_json(rp.search_eval_summary)
    assert rp.search_eval_plot.stat().st_size > 10_000
    assert set(table["op"]) == {"boost", "suppress"}
    assert table["query"].nunique() == 40
    per = {r["strength"]: r for r in summary["per_strength"]}
    assert per[0.0]["boost_cosine"] == pytest.approx(1.0) and per[0.0]["success"] == 0
    assert per[4.0]["boost_fires"] > per[0.0]["boost_fires"] + 0.5
    assert per[4.0]["suppress_fires"] < per[0.0]["suppress_fires"] - 0.3
    drift = [per[s]["drift"] for s in sorted(per)]
    overlap = [per[s]["boost_overlap"] for s in sorted(per)]
    assert drift == sorted(drift) and overlap == sorted(overlap, reverse=True)
    assert summary["recommended_strength"] in cfg.strengths
    # `saescope search` takes the recommendation as its default strength
    assert SearchSession(run).default_strength == summary["recommended_strength"]
    mtime = out.stat().st_mtime_ns
    search_eval(cfg)  # skipped: same inputs and options
    assert out.stat().st_mtime_ns == mtime


def test_the_knee_is_where_the_share_of_success_most_exceeds_the_drift():
    rows = [
        {"strength": 0.0, "success": 0.0, "success_share": 0.0, "drift": 0.0},
        {"strength": 1.0, "success": 0.1, "success_share": 0.2, "drift": 0.05},
        {"strength": 2.0, "success": 0.4, "success_share": 0.8, "drift": 0.3},
        {"strength": 4.0, "success": 0.5, "success_share": 1.0, "drift": 0.7},
    ]
    assert knee_strength(rows) == 2.0
    flat = [dict(r, success=0.0, success_share=0.0) for r in rows]
    assert knee_strength(flat) is None


@pytest.mark.parametrize(
    ("strengths", "edge", "knee"),
    [
        ([0.5, 1.0], "largest", 1.0),
        ([0.5], "largest", 0.5),
        ([4.0, 8.0], "smallest", 4.0),
        ([1.0, 2.0, 8.0], None, 2.0),
    ],
)
def test_a_knee_at_the_end_of_the_sweep_is_called_so(strengths, edge, knee):
    """Success and drift that rise with the strength up to a knee at 2 (beyond it only drift
    grows): a sweep that stops short of 2, or starts past it, reports its own end as the
    knee, and says that the knee may lie beyond it."""
    records = []
    for s in [0.0, *strengths]:
        fires = min(s, 2.0) / 2.0 * 0.8 + 0.1
        cosine = 1.0 - 0.02 * min(s, 2.0) - 0.2 * max(s - 2.0, 0.0)
        for op, f in (("boost", fires), ("suppress", 1.0 - fires)):
            records.append({"op": op, "strength": s, "query": 0, "fires": f, "cosine": cosine,
                            "overlap": cosine, "relevance": 1.0})  # fmt: skip
    summary = summarize(pd.DataFrame.from_records(records))
    assert summary["recommended_strength"] == knee
    assert summary["recommended_at_edge"] == edge
    text = format_summary(summary)
    assert ("the knee may lie above it" in text) is (edge == "largest")
    assert ("the knee may lie below it" in text) is (edge == "smallest")


def test_the_cli_prints_results_before_and_after_side_by_side(topics_run):
    topic = topic_of(topics_run)
    f = topic_features(topics_run)["astronomy"]
    args = ("search", COOKING_QUERY, "--run", str(topics_run), "--boost", f"{f}:2")
    out = run_cli(*args, "--width", "160").stdout
    assert f"boost #{f}" in out and "+2 x its max act" in out and "edited query: cosine" in out
    table = [line for line in out.splitlines() if " | " in line]
    assert "before" in table[0] and "after" in table[0] and len(table) == 11
    data = json.loads(run_cli(*args, "--json").stdout)
    assert [topic[h["row"]] for h in data["before"]].count("cooking") == 10
    assert [topic[h["row"]] for h in data["after"]].count("astronomy") >= 8
    zero = ("search", "--row", "0", "--run", str(topics_run), "--zero", str(f), "--json")
    data = json.loads(run_cli(*zero).stdout)
    assert data["row"] == 0 and data["edits"][0]["op"] == "zero" and len(data["after"]) == 10
    assert data["before"][0]["row"] == 0


def _error(capsys, *args: str) -> str:
    """The error `saescope ARGS` prints (in-process), checked to be one line with status 2."""
    capsys.readouterr()
    assert cli_main(list(args)) == 2
    err = capsys.readouterr().err
    # (a model's loading bar may come first on stderr: that is the library's, not the error)
    lines = [line for line in err.splitlines() if line.startswith("saescope ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_input_is_one_line_each(topics_run, tmp_path, capsys):
    run = str(topics_run)
    q = COOKING_QUERY
    assert "out of range" in _error(capsys, "search", q, "--run", run, "--boost", "999")
    assert "is not a number" in _error(capsys, "search", q, "--run", run, "--boost", "3:strong")
    assert "give a query text or --row" in _error(capsys, "search", "--run", run)
    assert "-k must be >= 1" in _error(capsys, "search", q, "--run", run, "-k", "0")
    assert "no row of" in _error(capsys, "search", "--run", run, "--row", "no-such-id")
    # a run without latents (and without an index)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copytree(RunPaths(topics_run).acts, RunPaths(bare).acts)
    shutil.copy(RunPaths(topics_run).corpus, RunPaths(bare).corpus)
    assert "no search index" in _error(capsys, "search", q, "--run", str(bare))
    index_stage.run(IndexConfig(run=str(bare), progress=False))
    assert "no latent cache" in _error(capsys, "search", q, "--run", str(bare))
    assert "no latent cache" in _error(capsys, "search-eval", "--run", str(bare))
    # an index of another store
    moved = _copy(topics_run, tmp_path / "moved")
    manifest = read_json(RunPaths(moved).acts_manifest)
    manifest["meta"]["note"] = "changed"
    write_json(RunPaths(moved).acts_manifest, manifest)
    assert "built from another store" in _error(capsys, "search", q, "--run", str(moved))
    # token runs are not searched
    tokens = tmp_path / "tokens"
    shutil.copytree(RunPaths(topics_run).acts, RunPaths(tokens).acts)
    manifest = read_json(RunPaths(tokens).acts_manifest)
    manifest["meta"]["rows"] = "tokens"
    write_json(RunPaths(tokens).acts_manifest, manifest)
    assert "tokens of a language model" in _error(capsys, "index", "--run", str(tokens))
    # an empty result set, and search-eval with every row a query
    s = SearchSession(topics_run)
    with pytest.raises(SaescopeError, match="no results"):
        s.search(q, exclude=list(range(s.store.count)))
    assert "leaves no row" in _error(capsys, "search-eval", "--run", run, "--n-queries", "300")
    assert "positive" in _error(capsys, "search-eval", "--run", run, "--strengths", "0", "1")
    # the default strength is in typical units: an absolute edit must give its own
    f = str(topic_features(topics_run)["astronomy"])
    args = ("search", q, "--run", run, "--unit", "absolute")
    assert "has no strength" in _error(capsys, *args, "--boost", f)
    assert "has no strength" not in _error(capsys, *args, "--boost", f"{f}:nan")
    assert "zero takes no strength" in _error(capsys, "search", q, "--run", run, "--zero", "3:1")
    exact = ("search", q, "--run", run, "--index", "exact", "--nprobe", "4")
    assert "--nprobe is for the ivf index" in _error(capsys, *exact)


def test_a_query_model_of_another_dimension_is_refused(topics_run, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer, models

    from saescope.defaults import minilm_path
    from saescope.embed import model_dim

    base = SentenceTransformer(str(minilm_path()), device="cpu")
    dense = models.Dense(model_dim(base), 16)
    SentenceTransformer(modules=[*base, dense], device="cpu").save(str(tmp_path / "m16"))
    msg = _error(
        capsys, "search", COOKING_QUERY, "--run", str(topics_run), "--model", str(tmp_path / "m16")
    )
    assert "makes 16-d vectors" in msg and "384-d rows" in msg
