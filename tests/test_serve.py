"""`saescope serve`: a real server on a free loopback port over a sentence run and an LM run,
its API checked against the run's own tables and the stages' code, its edges (paths outside
the runs, malformed and oversized requests, hostile corpus texts), and its pages in Chromium."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import record_hand_made_names, run_cli
from test_latents import CFG, new_run
from test_report import chromium_page

from saescope.io import read_json, sha256_file, write_json
from saescope.latents import LatentCache, LatentsConfig
from saescope.latents import run as latents
from saescope.paths import RunPaths
from saescope.sae import SAE, SAEConfig
from saescope.store import ActivationStore

MARK = "zebracornish"  # a keyword no text contains: searching it finds one feature
# corpus texts that would run script or break out of an attribute if they were markup
HOSTILE_TAG = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'
HOSTILE_QUOTES = 'He said "hi" onmouseover="window.__pwned = 3" data-x=\'y\' & <b>bold</b></td>'
HOSTILE_NAME = '<img src=x onerror="window.__pwned = 4">texts with markup'
DOCS_SHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "serve-feature.png"


@dataclass(frozen=True)
class Runs:
    news: Path
    lm: Path
    mark: int  # the news feature named MARK
    hostile: int  # the news feature whose top texts are hostile


def _narrow_sae(store: ActivationStore, d_sae: int, seed: int) -> SAE:
    """A random TopK SAE narrower than the run's (families match features across widths)."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig("topk", store.d_in, d_sae, k=4))
    with torch.no_grad():
        w = torch.nn.functional.normalize(torch.randn(d_sae, store.d_in, generator=g), dim=1)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_dec.copy_(torch.cat(list(store.iter_batches(4096, shuffle=False))).mean(0))
    return sae


def _name_features(rd: Path, mark: int, hostile: int, others: list[int]) -> None:
    """Keywords, one explanation and embedding scores written by hand, recorded as made
    from this latent cache."""
    rp = RunPaths(rd)
    feats = [mark, hostile, *others]
    rp.interp.mkdir(exist_ok=True)
    words = [[MARK, "central bank"], ["markup", "quotes"]] + [["word", f"topic{f}"] for f in others]
    pq.write_table(
        pa.table(
            {
                "feature": pa.array(feats, pa.int32()),
                "keywords": words,
                "scores": pa.array([[0.9, 0.5]] * len(feats), pa.list_(pa.float32())),
                "method": ["contrastive"] * len(feats),
                "status": ["ok"] * len(feats),
            }
        ),
        rp.keywords,
    )
    rp.explanations.write_text(
        json.dumps({"feature": hostile, "explanation": HOSTILE_NAME, "method": "llm"}) + "\n"
    )
    rp.scores.mkdir(exist_ok=True)
    pd.DataFrame(
        {
            "feature": np.array(feats, np.int32),
            "score": np.linspace(0.9, 0.2, len(feats)),
            "shuffled_score": np.full(len(feats), 0.05),
            "status": "ok",
        }
    ).to_parquet(rp.score("embedding"), index=False)
    record_hand_made_names(rd, scorers=("embedding",))


@pytest.fixture(scope="module")
def runs(news_run: Path, tiny_lm_run: Path, tmp_path_factory) -> Runs:
    from saescope.families.stage import run as families
    from saescope.options.families import FamiliesConfig
    from saescope.options.search import IndexConfig
    from saescope.search import stage as index_stage
    from saescope.train import TrainConfig
    from saescope.train import run as train

    tmp = tmp_path_factory.mktemp("serve")
    # the sentence run: a random TopK SAE (and a narrower one), names, families, an index
    news = new_run(news_run, tmp / "news", "topk")
    _narrow_sae(ActivationStore(news / "acts"), 64, seed=3).save(news / "sae-64-k4")
    latents(LatentsConfig(run=str(news), **CFG))
    rp = RunPaths(news)
    table = pd.read_parquet(rp.features)
    alive = table.loc[~table["dead"], "feature"].to_numpy()
    mark, hostile = int(alive[0]), int(alive[1])
    corpus = pd.read_parquet(rp.corpus)
    top = list(table.at[hostile, "top_rows"][:2])
    corpus.loc[top[0], "text"], corpus.loc[top[1], "text"] = HOSTILE_TAG, HOSTILE_QUOTES
    corpus.to_parquet(rp.corpus, index=False)
    # the store stands in for one made from the hostile corpus: it records that corpus
    # (else every page refuses it as made from another), and the latents follow the store
    manifest = read_json(rp.acts_manifest)
    manifest["meta"]["corpus_sha256"] = sha256_file(rp.corpus)
    write_json(rp.acts_manifest, manifest)
    latents(LatentsConfig(run=str(news), overwrite=True, **CFG))
    _name_features(news, mark, hostile, [int(f) for f in alive[2:6]])
    families(FamiliesConfig(run=str(news), progress=False))
    index_stage.run(IndexConfig(run=str(news), progress=False))
    (news / "extra").mkdir()
    (news / "extra" / "outside.json").symlink_to(news_run / "corpus.provenance.json")
    # the LM run: the tiny Llama's tokens with a small trained SAE
    lm = tmp / "tinylm"
    shutil.copytree(tiny_lm_run, lm)
    train(TrainConfig(run=str(lm), d_sae=[128], k=[8], batch_size=256, epochs=2.0, lr=3e-3,
                      progress=False, eval_at_end=False, checkpoint_every=0))  # fmt: skip
    latents(LatentsConfig(run=str(lm), plots=False))
    return Runs(news, lm, mark, hostile)


@dataclass(frozen=True)
class Server:
    url: str
    host: str
    port: int
    runs: Runs
    log: Path


@pytest.fixture(scope="module")
def server(runs: Runs, tmp_path_factory) -> Server:
    """`saescope serve` over both runs on a free loopback port, stopped after the module."""
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    args = ["serve", "--run", str(runs.news), "--run", str(runs.lm), "--port", "0", "--quiet"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "saescope", *args + ["--max-new-tokens", "16"]],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
    try:
        deadline = time.time() + 180
        while not (m := re.search(r"open (http://([\d.]+):(\d+)/)", log.read_text())):
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"saescope serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield Server(m.group(1), m.group(2), int(m.group(3)), runs, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def call(s: Server, path: str, body: object = None, raw: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON answer) of GET path, or POST of `body` as JSON (or `raw` bytes)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(s.url + path.lstrip("/"), data=data)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def raw_get(s: Server, path: str) -> tuple[int, bytes]:
    """GET a path exactly as written (no client-side normalisation of `..` or `%2e`)."""
    conn = http.client.HTTPConnection(s.host, s.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# --- the server and its API ------------------------------------------------------------


def test_it_listens_on_loopback_and_says_what_each_run_can_do(server: Server) -> None:
    assert server.host == "127.0.0.1"
    text = server.log.read_text()
    assert re.search(r"ready in [\d.]+s \(tables [\d.]+s\)", text)
    status, body = call(server, "/api/runs")
    assert status == 200
    news, lm = body["runs"]
    assert (news["id"], news["kind"], lm["id"], lm["kind"]) == ("news", "texts", "tinylm", "tokens")
    assert news["missing"]["search"] is None and news["index"] == ["exact"]
    assert "LM run" in news["missing"]["generate"]
    assert lm["missing"]["generate"] is None and "sentence-embedding" in lm["missing"]["search"]
    assert news["scorers"] == ["embedding"] and news["families"] > 0
    status, doc = call(server, "/openapi.json")
    assert status == 200 and "/api/runs/{run}/features/{feature}" in doc["paths"]
    assert raw_get(server, "/docs")[0] == 404  # FastAPI's own page needs a CDN: off


def test_a_feature_page_answers_from_the_run_tables(server: Server) -> None:
    rd, f = server.runs.news, server.runs.mark
    rp = RunPaths(rd)
    row = pd.read_parquet(rp.features).iloc[f]
    corpus = pd.read_parquet(rp.corpus)["text"]
    status, v = call(server, f"/api/runs/news/features/{f}")
    assert status == 200
    assert [e["row"] for e in v["top"]] == list(row["top_rows"][: len(v["top"])])
    assert all(e["text"] == corpus[e["row"]] for e in v["top"] + v["quantiles"])
    assert v["count"] == int(row["count"]) and v["max_act"] == pytest.approx(row["max_act"])
    assert v["keywords"] == [MARK, "central bank"] and v["keyword_method"] == "contrastive"
    assert v["scores"]["embedding"] == {"score": pytest.approx(0.9), "shuffled_score": 0.05}
    # the histogram counts every active row once; bins span [0, max act]
    h = v["histogram"]
    assert sum(h["counts"]) == v["count"] and h["edges"][-1] == pytest.approx(v["max_act"])
    values = LatentCache(rd).feature_values(f)[1]
    assert np.array_equal(np.histogram(values, bins=np.array(h["edges"]))[0], h["counts"])
    # nearest features: the largest decoder cosines, brute force
    w = torch.nn.functional.normalize(SAE.load(rp.sae).W_dec.detach(), dim=1)
    cos = (w @ w[f]).numpy()
    cos[f] = -np.inf
    want = np.argsort(-cos, kind="stable")[:10]
    assert [n["feature"] for n in v["neighbours"]] == want.tolist()
    np.testing.assert_allclose([n["cosine"] for n in v["neighbours"]], cos[want], atol=1e-5)
    # the families and splits `saescope families` found, as `inspect` shows them
    from saescope.inspect import feature_view

    member = next(iter(pd.read_parquet(rp.family_members)["feature"]))
    status, fv = call(server, f"/api/runs/news/features/{member}")
    view = feature_view(rd, int(member))
    assert [x["family"] for x in fv["families"]] == [x.family for x in view.families]
    assert [(x["feature"], x["sae"]) for x in fv["splits"]] == [
        (x.feature, x.sae) for x in view.splits
    ]
    assert fv["families"] and "logit_lens" not in fv


def test_lm_examples_colour_their_tokens_as_the_latent_cache_says(server: Server) -> None:
    from saescope.examples.tokens import TokenRows, feature_window

    rd = server.runs.lm
    table = pd.read_parquet(RunPaths(rd).features)
    f = int(table.loc[~table["dead"]].sort_values("count").iloc[-1]["feature"])
    status, v = call(server, f"/api/runs/tinylm/features/{f}")
    assert status == 200 and v["kind"] == "tokens"
    assert v["logit_lens"]["promoted"] and len(v["logit_lens"]["promoted"][0]) == 2
    tokens, cache = TokenRows(rd), LatentCache(rd)
    for e in v["top"][:5] + v["quantiles"][:5]:
        w = feature_window(tokens, cache, f, e["row"])
        assert e["tokens"] == w.tokens and e["center"] == w.center
        np.testing.assert_allclose(e["acts"], w.acts, atol=1e-6)
        assert e["acts"][e["center"]] == pytest.approx(e["act"], rel=1e-5)


def test_the_browser_searches_filters_sorts_and_pages(server: Server) -> None:
    r = server.runs
    table = pd.read_parquet(RunPaths(r.news).features)
    _, page = call(server, f"/api/runs/news/features?q={MARK}")
    assert page["total"] == 1 and page["items"][0]["id"] == r.mark
    _, page = call(server, f"/api/runs/news/features?q=%23{r.hostile}")
    assert [x["id"] for x in page["items"]] == [r.hostile]
    # example text is searched too: a word only the hostile rows hold
    _, page = call(server, "/api/runs/news/features?q=onmouseover&dead=all")
    assert r.hostile in [x["id"] for x in page["items"]]
    _, page = call(server, "/api/runs/news/features?q=markup")  # the explanation's word
    assert [x["id"] for x in page["items"]] == [r.hostile]
    _, page = call(server, "/api/runs/news/features?sort=score:embedding&limit=3")
    assert [x["id"] for x in page["items"]][:2] == [r.mark, r.hostile]
    q = "scorer=embedding&score_min=0.5&score_max=0.95&sort=id&order=asc"
    _, page = call(server, f"/api/runs/news/features?{q}")
    assert all(0.5 <= x["scores"]["embedding"] <= 0.95 for x in page["items"])
    assert [x["id"] for x in page["items"]] == sorted(x["id"] for x in page["items"])
    _, page = call(server, "/api/runs/news/features?sort=max_act&order=asc&dead=all&limit=200")
    want = table.sort_values(["max_act", "feature"], kind="stable")["feature"].head(200)
    assert [x["id"] for x in page["items"]] == want.tolist()
    _, dead = call(server, "/api/runs/news/features?dead=dead&limit=200")
    assert dead["total"] == int(table["dead"].sum())
    _, p2 = call(server, "/api/runs/news/features?offset=50&limit=50")
    _, p1 = call(server, "/api/runs/news/features?limit=100")
    assert [x["id"] for x in p2["items"]] == [x["id"] for x in p1["items"][50:]]
    _, fams = call(server, "/api/runs/news/families")
    fam = fams["families"][0]
    _, page = call(server, f"/api/runs/news/features?family={fam['family']}&dead=all")
    assert page["total"] == fam["size"]


def test_the_inspector_matches_the_store_and_inspect(server: Server) -> None:
    from saescope.inspect import token_text_features

    rd = server.runs.news
    row = 7  # a corpus text embeds to its own store row
    text = pd.read_parquet(RunPaths(rd).corpus)["text"][row]
    status, r = call(server, "/api/runs/news/inspect", {"text": text, "n": 5})
    assert status == 200, r
    with torch.inference_mode():
        codes = SAE.load(RunPaths(rd).sae).encode(ActivationStore(rd / "acts").rows([row]))[0]
    want = torch.argsort(codes, descending=True)[:5]
    assert [h["feature"] for h in r["features"]] == want.tolist()
    np.testing.assert_allclose([h["act"] for h in r["features"]], codes[want], rtol=1e-3)
    # an LM run: per-token activations, the same as `saescope inspect --text`
    text = "The central bank raised interest rates again."
    status, t = call(server, "/api/runs/tinylm/inspect", {"text": text, "n": 4})
    want_t = token_text_features(server.runs.lm, text, 4)
    assert status == 200 and t["tokens"] == want_t.tokens
    assert [x["feature"] for x in t["features"]] == [x.feature for x in want_t.features]
    for got, ref in zip(t["features"], want_t.features, strict=True):
        np.testing.assert_allclose(got["acts"], ref.acts, atol=1e-4)


def test_search_steering_brings_the_boosted_feature_into_the_results(server: Server) -> None:
    f = server.runs.mark
    body = {"query": "The central bank raised interest rates.", "k": 10,
            "edits": [{"feature": MARK, "op": "boost", "strength": 4}]}  # fmt: skip
    status, r = call(server, "/api/runs/news/search", body)
    assert status == 200, r
    (edit,) = r["edits"]
    assert edit["feature"] == f and edit["target"] == MARK and len(r["after"]) == 10
    before = np.mean([h["edited"][str(f)] for h in r["before"]])
    after = np.mean([h["edited"][str(f)] for h in r["after"]])
    assert after > before and r["overlap"] < 1.0
    status, plain = call(server, "/api/runs/news/search", {"query": body["query"], "k": 10})
    assert plain["after"] is None
    assert [h["row"] for h in plain["before"]] == [h["row"] for h in r["before"]]


def test_generation_steering_is_the_steer_modules_answer_and_bounded(
    server: Server, one_torch_thread
) -> None:
    from saescope.edits import Edit
    from saescope.lm import hooks
    from saescope.lm.model import load_lm
    from saescope.steer.generate import generate, prompt_ids
    from saescope.steer.hook import Steerer

    body = {"prompt": "Markets fell as", "max_new_tokens": 12,
            "edits": [{"feature": 5, "op": "add", "strength": 40}], "unit": "absolute"}  # fmt: skip
    status, r = call(server, "/api/runs/tinylm/generate", body)
    assert status == 200, r
    meta = json.loads((server.runs.lm / "acts" / "manifest.json").read_text())["meta"]
    lm = load_lm(meta["model"])
    hp = hooks.resolve(lm.model, meta["hookpoint"])
    sae = SAE.load(server.runs.lm / "sae").eval()
    ids = prompt_ids(lm, [body["prompt"]], 12)
    plain = generate(lm, ids, 12)
    steered = generate(lm, ids, 12, Steerer(lm.model, hp, sae, [Edit(5, "add", 40.0, "absolute")]))
    assert (r["unsteered"], r["steered"]) == (plain.texts[0], steered.texts[0])
    assert r["unsteered"] != r["steered"] and max(r["new_tokens"]) <= 12
    status, over = call(server, "/api/runs/tinylm/generate", body | {"max_new_tokens": 17})
    assert status == 400 and "1..16" in over["detail"]  # the server's --max-new-tokens


def test_generation_stops_at_its_time_limit(runs: Runs) -> None:
    from saescope.serve.limits import Limits
    from saescope.serve.served import ServedRun

    run = ServedRun("lm", runs.lm, Limits(max_new_tokens=64, generation_seconds=1e-4))
    r = run.models.generate("Once upon a time", [], 64, "all", "typical")
    assert r["stopped_by_time"] == [True, True] and max(r["new_tokens"]) < 64


def test_files_made_again_while_it_serves_are_said_not_mixed_in(runs: Runs, tmp_path: Path) -> None:
    """The run is read once: a stage re-run meanwhile does not change what is shown (the
    SAE's metrics included, which were read anew on every summary) but is named."""
    import shutil

    from saescope.serve.served import ServedRun

    rd = tmp_path / "news"
    shutil.copytree(runs.news, rd)
    run = ServedRun("news", rd)
    before = run.summary()
    assert before["changed"] == []
    from saescope.cli import main

    assert main(["eval", "--run", str(rd), "--progress", "false"]) == 0  # measured now
    assert (rd / "sae" / "metrics.json").exists()
    kw = rd / "interp" / "keywords.parquet"
    kw.write_bytes(kw.read_bytes())  # made again, the same bytes at a later time
    after = run.summary()
    assert after["metrics"] == before["metrics"]
    assert after["changed"] == ["interp/keywords.parquet", "sae/metrics.json"]


# --- the edges ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/runs/news/files/../corpus.parquet",
        "/runs/news/files/../../../../etc/passwd",
        "/runs/news/files/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/runs/news/files/..%2f..%2f..%2fetc%2fpasswd",
        "/runs/news/files/%252e%252e/etc/passwd",
        "/runs/news/files//etc/passwd",
        "/runs/news/files/%2Fetc%2Fpasswd",
        "/runs/news/files/extra/outside.json",  # a link out of the run
        "/runs/news/files/.lock",
        "/runs/news/files/corpus.parquet",  # not a type the pages link to
        "/runs/news/files/latents/shard-00000.safetensors",
        "/runs/news/files/sae/sae.safetensors",
        "/runs/nosuchrun/files/latents/plots/density.png",
        "/static/../served.py",
        "/static/%2e%2e/served.py",
        "/static/..%2fserved.py",
    ],
)
def test_only_files_of_the_runs_are_served(server: Server, path: str) -> None:
    status, body = raw_get(server, path)
    assert status in (400, 404), (path, status)
    assert b"root:" not in body and b"PAR1" not in body and b"Traceback" not in body


def test_run_files_the_pages_link_are_served(server: Server) -> None:
    status, body = raw_get(server, "/runs/news/files/latents/plots/density.png")
    assert status == 200 and body.startswith(b"\x89PNG")
    status, body = raw_get(server, "/runs/news/files/latents/config.json")
    assert status == 200 and json.loads(body)["top_n"] == CFG["top_n"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/api/runs/nosuch", None, 404, "no run 'nosuch'"),
        ("GET", "/api/runs/news/features/99999", None, 404, "out of range"),
        ("GET", "/api/runs/news/features/-1", None, 404, "out of range"),
        ("GET", "/api/runs/news/features/abc", None, 422, "feature"),
        ("GET", "/api/runs/news/features?sort=nosuch", None, 400, "unknown sort key"),
        ("GET", "/api/runs/news/features?limit=100000", None, 422, "limit"),
        ("GET", "/api/runs/news/features?scorer=nosuch&score_min=0.1", None, 400, "no scores"),
        ("GET", "/api/runs/news/features?family=99999", None, 400, "no family"),
        ("GET", "/api/runs/news/features?q=" + "x" * 300, None, 422, "q"),
        ("GET", "/api/compare?a=news:sae&b=nosuch:sae", None, 404, "no SAE"),
        ("GET", "/api/compare?a=news:sae&b=tinylm:sae", None, 400, "same activations"),
        ("POST", "/api/runs/news/inspect", b"{not json", 422, ""),
        ("POST", "/api/runs/news/inspect", {"text": ""}, 422, "text"),
        ("POST", "/api/runs/news/inspect", {"text": "x" * 5000}, 422, "text"),
        ("POST", "/api/runs/news/inspect", {"text": "hi", "extra": 1}, 422, "extra"),
        ("POST", "/api/runs/news/inspect", b'{"text": "hi", "n": NaN}', 422, "n"),
        ("POST", "/api/runs/news/search", {"query": "q", "edits": [{"feature": 0}] * 9}, 422, "edits"),
        ("POST", "/api/runs/news/search", b'{"query": "q", "strength": Infinity}', 422, "strength"),
        ("POST", "/api/runs/news/search", {"query": "q", "edits": [{"feature": "zzzunknownword"}]}, 400, "no feature name"),
        ("POST", "/api/runs/news/search", {"query": "q", "edits": [{"feature": 99999}]}, 400, "out of range"),
        ("POST", "/api/runs/news/search", {"query": "q", "edits": [{"feature": True}]}, 422, "feature"),
        ("POST", "/api/runs/tinylm/search", {"query": "q"}, 400, "sentence-embedding runs"),
        ("POST", "/api/runs/news/generate", {"prompt": "Hello"}, 400, "LM run"),
        ("POST", "/api/runs/tinylm/generate", {"prompt": "Hi", "positions": "nowhere"}, 400, "unknown positions"),
        ("POST", "/api/runs/tinylm/generate", {"prompt": "Hi", "edits": [{"feature": 0, "op": "melt"}]}, 400, "unknown edit"),
        ("POST", "/api/runs/news/inspect", b"x" * 70_000, 413, "larger than"),
    ],
)  # fmt: skip
def test_malformed_requests_get_a_4xx_with_a_message(
    server: Server, method: str, path: str, body: object, status: int, message: str
) -> None:
    raw = body if isinstance(body, bytes) else None
    got, answer = call(server, path, None if raw is not None else body, raw)
    assert got == status, answer
    assert isinstance(answer["detail"], str) and message in answer["detail"]
    assert "Traceback" not in answer["detail"]


def test_compare_matches_features_by_decoder_cosine(server: Server) -> None:
    rd = server.runs.news
    _, saes = call(server, "/api/saes")
    keys = [s["key"] for s in saes["saes"]]
    assert keys == ["news:sae", "news:sae-64-k4", "tinylm:sae"]
    _, same = call(server, "/api/compare?a=news:sae&b=news:sae&limit=5")
    assert all(x["a"] == x["b"] and x["mutual"] for x in same["items"])
    assert same["items"][0]["cosine"] == pytest.approx(1.0)
    _, r = call(server, "/api/compare?a=news:sae-64-k4&b=news:sae&sort=id&order=asc&limit=64")
    a = torch.nn.functional.normalize(SAE.load(rd / "sae-64-k4").W_dec.detach(), dim=1)
    b = torch.nn.functional.normalize(SAE.load(rd / "sae").W_dec.detach(), dim=1)
    cos = a @ b.T
    assert [x["b"] for x in r["items"]] == cos.argmax(dim=1).tolist()
    np.testing.assert_allclose([x["cosine"] for x in r["items"]], cos.max(dim=1).values, atol=1e-5)
    assert r["items"][0]["a_label"] == "" and r["a"]["described"] is False


def test_a_host_other_than_loopback_is_warned_about(tmp_path: Path) -> None:
    proc = run_cli("serve", "--host", "0.0.0.0", "--port", "0", "--run", str(tmp_path / "none"),
                   check=False)  # fmt: skip
    assert "warning: listening on 0.0.0.0" in proc.stderr
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr.splitlines()[-1]


# --- the pages in a real browser --------------------------------------------------------------


def test_the_pages_in_headless_chromium(server: Server, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    r = server.runs
    corpus = pd.read_parquet(RunPaths(r.news).corpus)["text"]
    problems: list[str] = []
    dialogs: list[str] = []
    outside: list[str] = []
    with chromium_page(problems) as page:
        page.set_default_timeout(90_000)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on(
            "request",
            lambda q: None if q.url.startswith((server.url, "data:")) else outside.append(q.url),
        )

        # the browser: search a keyword, one feature is left; open it
        page.goto(server.url + "runs/news")
        page.wait_for_selector("#features tr[data-feature]")
        page.fill("#q", MARK)
        expect(page.locator("#count")).to_have_text(re.compile(r"^1 of "))
        page.screenshot(path=str(tmp_path / "browser.png"))
        page.click(f'#features tr[data-feature="{r.mark}"] a')
        page.wait_for_selector("#top-examples td.text")
        v = call(server, f"/api/runs/news/features/{r.mark}")[1]
        texts = page.locator("#top-examples td.text").all_inner_texts()
        assert texts == [corpus[e["row"]] for e in v["top"]]
        assert page.locator("#histogram svg rect.bar").count() == 24
        assert page.locator("#neighbours a.flink").count() == 10
        page.screenshot(path=str(tmp_path / "feature.png"))
        if not DOCS_SHOT.exists() or os.environ.get("SAESCOPE_DOCS_SCREENSHOTS"):
            DOCS_SHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "feature.png", DOCS_SHOT)

        # hostile corpus texts and names are shown as text, never run
        page.goto(server.url + f"runs/news/features/{r.hostile}")
        page.wait_for_selector("#top-examples td.text")
        shown = page.locator("#top-examples td.text").all_inner_texts()
        assert shown[:2] == [HOSTILE_TAG, HOSTILE_QUOTES]
        assert page.locator(".explanation").inner_text() == HOSTILE_NAME
        assert page.locator("main script, main img, main b").count() == 0
        assert page.evaluate("window.__pwned") is None
        page.screenshot(path=str(tmp_path / "hostile.png"))

        # the text inspector
        page.goto(server.url + "runs/news/inspect")
        page.fill("#text", corpus[7])
        page.click("#inspect")
        page.wait_for_selector("#result tr[data-feature]")
        assert page.locator("#result tr[data-feature]").count() == 8  # the SAE's k
        page.screenshot(path=str(tmp_path / "inspect.png"))

        # search steering: boost the MARK feature by its name
        page.goto(server.url + "runs/news/search")
        page.fill("#query", "The central bank raised interest rates.")
        page.fill(".edit .feature-input", MARK)
        page.fill(".edit input.strength", "4")
        page.click("#search-go")
        page.wait_for_selector("#result .cols")
        assert page.locator("#result h3").all_inner_texts() == ["Before", "After"]
        assert page.locator("#result tr[data-row]").count() == 20
        page.screenshot(path=str(tmp_path / "search.png"))

        # an LM run: tokens coloured by activation, generation side by side
        f = int(call(server, "/api/runs/tinylm/features?limit=1")[1]["items"][0]["id"])
        page.goto(server.url + f"runs/tinylm/features/{f}")
        page.wait_for_selector("#top-examples .tok.at")
        assert page.locator("#top-examples .tok").count() > 20
        page.screenshot(path=str(tmp_path / "lm-feature.png"))
        page.goto(server.url + f"runs/tinylm/generate?feature={f}")
        page.fill("#max-new-tokens", "8")
        page.click("#generate-go")
        page.wait_for_selector("#result .gen")
        assert page.locator("#result .gen").count() == 2
        page.screenshot(path=str(tmp_path / "generate.png"))

        # compare, and a page the run cannot have says why
        page.goto(server.url + "compare?a=news:sae-64-k4&b=news:sae")
        page.wait_for_selector("#result table.list tr td")
        page.screenshot(path=str(tmp_path / "compare.png"))
        page.goto(server.url + "runs/tinylm/search")
        assert "sentence-embedding runs" in page.locator(".note").inner_text()
    assert problems == [] and dialogs == [] and outside == []
    for name in ("browser", "feature", "hostile", "inspect", "search", "lm-feature", "generate"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000, name
