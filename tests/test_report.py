"""The HTML report: its data, its offline-ness, and the page itself in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import record_hand_made_names
from test_latents import CFG, new_run

from saescope.errors import SaescopeError, SaescopeWarning
from saescope.io import read_json
from saescope.latents import LatentsConfig
from saescope.latents import run as latents
from saescope.paths import RunPaths
from saescope.report import ReportConfig
from saescope.report import run as report
from saescope.report.stage import _json_for_script

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MARK = "zebracornish"  # a keyword no text contains: searching it must find one feature


@contextmanager
def chromium_page(problems: list[str]) -> Iterator:
    """A page of headless Chromium (1280 x 900) whose console errors and uncaught page
    errors are appended to `problems`; the browser closes when the block ends."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(
            "the browser tests need Debian's Chromium at /usr/bin/chromium: "
            "install it with `apt-get update && apt-get install -y chromium`"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def run_dir(news_run: Path, tmp_path_factory) -> Path:
    """A run with a latent cache and hand-made keywords, explanations and scores."""
    rd = new_run(news_run, tmp_path_factory.mktemp("report") / "run", "topk")
    latents(LatentsConfig(run=str(rd), **CFG))
    rp = RunPaths(rd)
    feats = pd.read_parquet(rp.features)
    alive = feats.loc[~feats["dead"], "feature"].to_numpy()[:6]
    rp.interp.mkdir()
    kw = pa.table(
        {
            "feature": pa.array(alive, pa.int32()),
            "keywords": [[MARK, "apple"]] + [["word", f"topic{f}"] for f in alive[1:]],
            "scores": pa.array([[0.9, 0.5]] * len(alive), pa.list_(pa.float32())),
            "method": ["contrastive"] * len(alive),
            "status": ["ok"] * (len(alive) - 1) + ["failed"],
        }
    )
    pq.write_table(kw, rp.keywords)
    lines = [
        {"feature": int(alive[1]), "explanation": "texts about a made-up topic", "method": "llm"},
        {"feature": int(alive[2]), "explanation": None, "status": "error", "reason": "timeout"},
    ]
    rp.explanations.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rp.scores.mkdir()
    scores = pd.DataFrame(
        {
            "feature": alive.astype(np.int32),
            "score": np.linspace(0.1, 0.9, len(alive)),
            "shuffled_score": np.full(len(alive), 0.05),
            "status": "ok",
        }
    )
    scores.to_parquet(rp.score("embedding"), index=False)
    record_hand_made_names(rd, scorers=("embedding",))
    report(ReportConfig(run=str(rd)))
    return rd


def page_blob(rd: Path) -> dict:
    page = RunPaths(rd).report_index.read_text()
    m = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', page, re.S)
    assert m, "the data blob is missing"
    return json.loads(m.group(1))


def test_page_data_carries_examples_and_annotations(run_dir: Path) -> None:
    rp = RunPaths(run_dir)
    blob = page_blob(run_dir)
    feats = pd.read_parquet(rp.features).set_index("feature")
    corpus = pd.read_parquet(rp.corpus)
    kw = pd.read_parquet(rp.keywords)
    assert len(blob["features"]) == int((~feats["dead"]).sum())
    by_id = {f["id"]: f for f in blob["features"]}
    first, failed = int(kw["feature"].iloc[0]), int(kw["feature"].iloc[-1])
    assert by_id[first]["keywords"] == [MARK, "apple"]
    assert "keywords" not in by_id[failed]  # a failed naming is not shown as a name
    assert by_id[int(kw["feature"].iloc[1])]["explanation"] == "texts about a made-up topic"
    assert "explanation" not in by_id[int(kw["feature"].iloc[2])]
    assert blob["scorers"] == ["embedding"]
    assert by_id[first]["scores"]["embedding"] == {"score": 0.1, "shuffled_score": 0.05}
    for f in list(by_id.values())[:20]:
        rows = [e[0] for e in f["top"]]
        assert rows == list(feats.at[f["id"], "top_rows"][: len(rows)])
        for row in rows:
            text = corpus["text"][row]
            expect = text if len(text) <= 400 else text[:399].rstrip() + "…"
            assert blob["texts"][str(row)] == expect
        assert max(np.bincount([e[2] for e in f["quant"]])) <= 2


def test_page_needs_no_network(run_dir: Path) -> None:
    rp = RunPaths(run_dir)
    page = rp.report_index.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page
    for src in re.findall(r'src="([^"]+)"', page):
        assert (rp.report / src).is_file(), src
    assert len(re.findall(r'<img src="plots/', page)) == 3


def test_script_blob_cannot_close_the_script_element() -> None:
    text = json.loads(_json_for_script({"t": "</script><script>alert(1)</script>"}))
    assert text == {"t": "</script><script>alert(1)</script>"}
    assert "</" not in _json_for_script({"t": "</script>"})


def test_rerun_skips_until_an_input_changes(run_dir: Path) -> None:
    rp = RunPaths(run_dir)
    before = rp.report_index.stat().st_mtime_ns
    report(ReportConfig(run=str(run_dir)))
    assert rp.report_index.stat().st_mtime_ns == before
    extra = rp.score("extra")
    pd.DataFrame({"feature": [0], "score": [0.5]}).to_parquet(extra, index=False)
    plot = rp.scores / "extra.png"
    shutil.copyfile(rp.plots / "density.png", plot)
    try:
        # scores with no record of the names they scored are left out, their plot too, and
        # the page says so
        report(ReportConfig(run=str(run_dir)))
        assert page_blob(run_dir)["scorers"] == ["embedding"]
        assert "scores/extra.parquet (scores of other names)" in rp.report_index.read_text()
        assert "score-extra.png" not in rp.report_index.read_text()
        record_hand_made_names(run_dir, scorers=("extra",))
        report(ReportConfig(run=str(run_dir)))
        assert page_blob(run_dir)["scorers"] == ["embedding", "extra"]
        assert "score-extra.png" in rp.report_index.read_text()
    finally:
        extra.unlink()
        plot.unlink()
        rp.score_record("extra").unlink(missing_ok=True)
        report(ReportConfig(run=str(run_dir)))
    assert page_blob(run_dir)["scorers"] == ["embedding"]
    # the texts the page shows are an input: a corpus put back re-makes the page
    hidden = rp.corpus.with_name("corpus.hidden")
    rp.corpus.rename(hidden)
    try:
        report(ReportConfig(run=str(run_dir)))
        assert "no text for this row" in rp.report_index.read_text()
    finally:
        hidden.rename(rp.corpus)
    report(ReportConfig(run=str(run_dir)))
    assert "no text for this row" not in rp.report_index.read_text()


def test_report_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    # a copy outside the run, opened from file://, proves the page carries everything it needs
    site = tmp_path / "site"
    shutil.copytree(RunPaths(run_dir).report, site)
    kw = pd.read_parquet(RunPaths(run_dir).keywords)
    marked = int(kw["feature"].iloc[0])
    best = int(kw["feature"].iloc[-1])  # highest embedding score in the fixture
    problems: list[str] = []
    requests: list[str] = []
    with chromium_page(problems) as page:
        page.on("request", lambda r: requests.append(r.url))
        page.goto((site / "index.html").as_uri())
        page.wait_for_selector(".card")
        n_all = len(page_blob(run_dir)["features"])
        assert page.inner_text("#count").startswith(f"{n_all} of {n_all} features")
        assert page.locator("img").evaluate_all("imgs => imgs.every(i => i.naturalWidth > 0)")

        page.fill("#search", MARK)
        page.wait_for_function("document.getElementById('count').textContent.startsWith('1 of')")
        cards = page.locator(".card")
        assert cards.count() == 1
        card = page.locator(f'.card[data-feature="{marked}"]')
        assert card.count() == 1
        assert not card.locator(".card-body").is_visible()
        card.locator(".card-head").click()
        body = card.locator(".card-body")
        assert body.is_visible()
        assert MARK in body.inner_text()
        blob = page_blob(run_dir)
        top_row = next(f for f in blob["features"] if f["id"] == marked)["top"][0][0]
        first_text = body.locator("table.examples td.text").first.inner_text()
        assert first_text == blob["texts"][str(top_row)]
        card.scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=False)

        page.fill("#search", "")
        page.select_option("#sort", "score:embedding|desc")
        assert page.locator(".card").first.get_attribute("data-feature") == str(best)
    assert problems == []
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_features", 0), ("top_examples", 0), ("max_text_chars", 0), ("quantile_examples", -1)],
)
def test_counts_out_of_range_are_refused(run_dir: Path, option: str, value: int) -> None:
    with pytest.raises(SaescopeError, match=f"{option} must be >= "):
        ReportConfig(run=str(run_dir), **{option: value})


def test_more_examples_than_the_cache_keeps_are_said(run_dir: Path) -> None:
    kept = read_json(RunPaths(run_dir).latents_config)["top_n"]
    with pytest.warns(
        SaescopeWarning, match=f"--top-examples {kept + 1}: the latent cache keeps {kept}"
    ):
        report(ReportConfig(run=str(run_dir), top_examples=kept + 1))


def test_a_corpus_of_another_length_is_named_as_the_reason_rows_have_no_text(
    run_dir: Path,
) -> None:
    from saescope.report.data import RowTexts

    n = len(pd.read_parquet(RunPaths(run_dir).corpus))
    assert RowTexts(run_dir, n)(0) != "" and "no text" not in RowTexts(run_dir, n)(0)
    said = RowTexts(run_dir, n + 5)(0)
    assert f"corpus.parquet holds {n:,} texts and the store {n + 5:,} rows" in said
