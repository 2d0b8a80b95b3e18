"""Features of tokens: the latents stage, windows, logit lens, inspect and report on an LM run."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import run_cli, token_run_with_latents
from test_report import CHROMIUM, CHROMIUM_ARGS, page_blob

from saescope.cli import main as cli
from saescope.examples import load_activations
from saescope.examples.split import load_split
from saescope.examples.tokens import TokenRows, feature_column, feature_window
from saescope.latents import FEATURES_SCHEMA, LatentCache
from saescope.lm import hooks
from saescope.lm.logit_lens import LENS_SCHEMA, logit_lens, norm_gain, unembedding
from saescope.lm.model import load_lm
from saescope.paths import RunPaths
from saescope.report import ReportConfig
from saescope.report import run as report
from saescope.sae import SAE
from saescope.store import ActivationStore

SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def lm_run(tiny_lm_run: Path, tmp_path_factory) -> Path:
    """A copy of the tiny LM run with a small trained TopK SAE and a finished latent cache."""
    return token_run_with_latents(tiny_lm_run, tmp_path_factory.mktemp("lm-features") / "run")


@pytest.fixture(scope="module")
def dense(lm_run: Path) -> np.ndarray:
    """(n_rows, d_sae) codes of every store row by brute force."""
    store = ActivationStore(RunPaths(lm_run).acts)
    sae = SAE.load(LatentCache(lm_run).sae_dir())
    with torch.inference_mode():
        return sae.encode(store.rows(np.arange(store.count))).numpy()


def busiest(run: Path) -> int:
    feats = pd.read_parquet(RunPaths(run).features)
    return int(feats["count"].idxmax())


def test_index_carries_context_and_position_and_splits_by_document(lm_run: Path) -> None:
    rp = RunPaths(lm_run)
    idx = pd.read_parquet(rp.latent_index)
    acts_idx = pd.read_parquet(rp.acts_index)
    assert list(idx.columns) == ["row", "doc", "context", "position"]
    np.testing.assert_array_equal(idx["row"], np.arange(len(acts_idx)))
    for col in ("context", "position"):
        np.testing.assert_array_equal(idx[col], acts_idx[col])
    assert idx["doc"].tolist() == acts_idx["doc"].tolist()
    # the naming/scoring split keeps every token of a document in one half
    split = load_split(lm_run, len(idx), seed=1)
    halves = pd.Series(split.scoring).groupby(idx["doc"].to_numpy()).nunique()
    assert split.kind == "doc" and (halves == 1).all() and 0 < split.scoring.mean() < 1


def test_features_table_appends_the_logit_lens_columns(lm_run: Path) -> None:
    rp = RunPaths(lm_run)
    schema = pq.read_schema(rp.features).remove_metadata()
    assert schema == pa.schema(list(FEATURES_SCHEMA) + list(LENS_SCHEMA))
    feats = pd.read_parquet(rp.features)
    assert all(len(x) == 10 for x in feats["promoted_tokens"])
    about = json.loads(rp.latents_config.read_text())["logit_lens"]
    assert about["norm"] == "model.norm" and about["centre"] is False and about["n"] == 10


def test_window_activations_equal_the_codes_of_their_rows(lm_run: Path, dense) -> None:
    f = busiest(lm_run)
    feats = pd.read_parquet(RunPaths(lm_run).features)
    tokens = TokenRows(lm_run)
    acts = load_activations(lm_run)
    cache = LatentCache(lm_run)
    col_acts, col_cache = feature_column(acts, f), feature_column(cache, f)
    np.testing.assert_array_equal(col_acts[0], col_cache[0])
    np.testing.assert_array_equal(col_acts[1], col_cache[1])
    for row, act in zip(feats.at[f, "top_rows"][:4], feats.at[f, "top_acts"][:4], strict=True):
        w = feature_window(tokens, acts, f, int(row))
        assert w == feature_window(tokens, cache, f, int(row))
        assert w.rows[w.center] == row and len(w.tokens) <= 32
        assert w.acts[w.center] == pytest.approx(act, rel=1e-5)
        expect = [dense[r, f] if r >= 0 else 0.0 for r in w.rows]
        np.testing.assert_allclose(w.acts, expect, rtol=1e-4, atol=1e-6)
        assert w.marked().count("<<") == 1 and f"<<{w.tokens[w.center]}>>" in w.marked()


def test_windows_stay_within_the_tokens_own_text(lm_run: Path) -> None:
    """Packed contexts join texts (EOS between, which is no row): a window shows only
    the tokens of its token's text, though the span around it holds others."""
    tokens = TokenRows(lm_run)
    idx = pd.read_parquet(RunPaths(lm_run).acts_index)
    text_of, ctx, pos = (idx[c].to_numpy() for c in ("text_row", "context", "position"))
    near_a_boundary = 0
    for row in range(0, len(idx), 5):
        w = tokens.window(row)
        assert w.rows[w.center] == row
        assert {int(text_of[r]) for r in w.rows if r >= 0} == {int(text_of[row])}
        span = (ctx == ctx[row]) & (pos >= pos[row] - 24) & (pos <= pos[row] + 7)
        near_a_boundary += len(set(text_of[span].tolist())) > 1
    assert near_a_boundary > 10  # the rule was tested where it cuts


def test_logit_lens_is_the_decoder_through_the_norm_gain_and_unembedding(
    lm_run: Path, tiny_lm_dir: Path
) -> None:
    lm = load_lm(str(tiny_lm_dir))
    sae = SAE.load(LatentCache(lm_run).sae_dir())
    W_dec = sae.W_dec.detach()
    vocab = len(lm.tokenizer)
    # the table the stage wrote: the model as it is (norm weight all ones)
    feats = pd.read_parquet(RunPaths(lm_run).features)
    direct = W_dec @ lm.model.lm_head.weight[:vocab].T  # (d_sae, vocab)
    for f in (0, busiest(lm_run)):
        top = torch.topk(direct[f], 10)
        assert feats.at[f, "promoted_ids"].tolist() == top.indices.tolist()
        np.testing.assert_allclose(feats.at[f, "promoted_logits"], top.values, rtol=1e-4)
        assert list(feats.at[f, "promoted_tokens"]) == lm.tokenizer.batch_decode(
            [[i] for i in top.indices.tolist()]
        )
    # a norm whose gain is not one: the gain is applied, the normalisation is not
    with torch.no_grad():
        lm.model.model.norm.weight.copy_(torch.rand(64, generator=torch.Generator().manual_seed(0)))
    un = unembedding(lm.model, vocab)
    assert un.norm == "model.norm" and not un.centre
    lens = logit_lens(un, W_dec, n=7, chunk=16)
    direct = (W_dec * lm.model.model.norm.weight) @ lm.model.lm_head.weight[:vocab].T
    top, bottom = torch.topk(direct, 7, dim=1), torch.topk(direct, 7, dim=1, largest=False)
    np.testing.assert_array_equal(lens.promoted_ids, top.indices.numpy())
    np.testing.assert_array_equal(lens.suppressed_ids, bottom.indices.numpy())
    np.testing.assert_allclose(lens.promoted_logits, top.values.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(lens.suppressed_logits, bottom.values.numpy(), rtol=1e-5, atol=1e-7)
    assert (np.diff(lens.promoted_logits, axis=1) <= 0).all()
    assert (np.diff(lens.suppressed_logits, axis=1) >= 0).all()
    assert (lens.suppressed_logits[:, 0] < lens.promoted_logits[:, 0]).all()


def test_norm_gain_reads_rms_gemma_and_layer_norms() -> None:
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(9, generator=g), torch.randn(9, generator=g)

    class RMS(torch.nn.Module):
        def __init__(self, offset: float) -> None:
            super().__init__()
            self.weight, self.offset = torch.nn.Parameter(w.clone()), offset

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (
                x
                * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
                * (self.offset + self.weight)
            )

    ln = torch.nn.LayerNorm(9)
    with torch.no_grad():
        ln.weight.copy_(w)
        ln.bias.copy_(b)
    for mod, expect, centre in ((RMS(0.0), w, False), (RMS(1.0), 1 + w, False), (ln, w, True)):
        gain, centres = norm_gain(mod, 9)  # an odd size: the probe's mean is not 0
        assert centres is centre
        torch.testing.assert_close(gain, expect, rtol=1e-4, atol=1e-5)
    assert norm_gain(None, 4)[0].tolist() == [1.0] * 4


def test_inspect_feature_shows_marked_windows_and_the_logit_lens(lm_run: Path, capsys) -> None:
    f = busiest(lm_run)
    feats = pd.read_parquet(RunPaths(lm_run).features)
    tokens = TokenRows(lm_run)
    out = run_cli("inspect", str(f), "--run", str(lm_run), "-n", "4", "--width", "120").stdout
    lines = out.splitlines()
    assert lines[0].startswith(f"feature {f}") and all(len(x) <= 120 for x in lines)
    promoted = json.dumps(str(feats.at[f, "promoted_tokens"][0]), ensure_ascii=False)
    assert any(x.startswith(f"  promotes: {promoted}") for x in lines)
    assert any(x.startswith("  suppresses: ") for x in lines)
    table = lines[lines.index("top examples") + 2 :]
    assert len(table) == 4
    for line, row in zip(table, feats.at[f, "top_rows"], strict=False):
        assert int(line.split()[2]) == row
        assert f"<<{tokens.token(int(row))}>>".strip() in " ".join(line.split())

    assert cli(["inspect", str(f), "--run", str(lm_run), "-n", "3", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["logit_lens"]["promoted"][0][0] == feats.at[f, "promoted_tokens"][0]
    for e, act in zip(js["top"], feats.at[f, "top_acts"], strict=False):
        assert e["tokens"][e["center"]] == tokens.token(e["row"])
        assert e["acts"][e["center"]] == pytest.approx(act, rel=1e-5)
        assert len(e["acts"]) == len(e["tokens"]) and "<<" in e["text"]


def test_inspect_text_prints_per_token_activations(lm_run: Path, tiny_lm_dir: Path, capsys) -> None:
    text = "The World Bank said on Tuesday that prices rose."
    assert cli(["inspect", "--run", str(lm_run), "--text", text, "-n", "5", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    lm = load_lm(str(tiny_lm_dir))
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert js["tokens"] == lm.tokenizer.batch_decode([[i] for i in ids])  # BOS run, not shown
    hp = hooks.resolve(lm.model, "resid_post.1")
    x = hooks.capture(lm.model, hp, torch.tensor([[lm.tokenizer.bos_token_id, *ids]]))
    sae = SAE.load(LatentCache(lm_run).sae_dir())
    with torch.inference_mode():
        codes = sae.encode(x[0])[1:].numpy()  # (n_tokens, d_sae)
    best = np.argsort(-codes.max(axis=0), kind="stable")[:5]
    assert [h["feature"] for h in js["features"]] == best.tolist()
    for h in js["features"]:
        np.testing.assert_allclose(h["acts"], codes[:, h["feature"]], rtol=1e-4, atol=1e-5)
        assert h["max_act"] == pytest.approx(codes[:, h["feature"]].max(), rel=1e-5)

    out = run_cli("inspect", "--run", str(lm_run), "--text", text, "-n", "3").stdout
    lines = out.splitlines()
    assert lines[1].split() == ["token"] + [f"#{f}" for f in best[:3]]
    rows = lines[2 : 2 + len(ids)]
    assert rows[0].startswith('  "The" ') and rows[1].startswith('  " World" ')
    for r, i in zip(rows, range(len(ids)), strict=True):
        cells = r.rsplit(maxsplit=3)[1:]
        for cell, f in zip(cells, best[:3], strict=True):
            a = codes[i, f]
            assert cell == "." if a == 0 else float(cell) == pytest.approx(a, rel=6e-3)


@pytest.fixture(scope="module")
def scripted(lm_run: Path, tmp_path_factory) -> tuple[Path, int, int]:
    """A report of a copy of the run where one token of a top example decodes to <script>.

    Returns (run, feature, row of the token shown as <script>)."""
    rd = tmp_path_factory.mktemp("lm-report") / "run"
    shutil.copytree(lm_run, rd)
    f = busiest(rd)
    row = int(pd.read_parquet(RunPaths(rd).features).at[f, "top_rows"][0])
    tokens = TokenRows(rd)
    tid = int(tokens.input_ids[tokens.context[row], tokens.position[row]])
    mp = pytest.MonkeyPatch()
    original = TokenRows.token_strings

    def token_strings(self, ids):
        return [
            SCRIPT if int(i) == tid else s for i, s in zip(ids, original(self, ids), strict=True)
        ]

    mp.setattr(TokenRows, "token_strings", token_strings)
    try:
        report(ReportConfig(run=str(rd), top_examples=5, quantile_examples=1))
    finally:
        mp.undo()
    return rd, f, row


def test_report_colours_tokens_by_activation(scripted, dense) -> None:
    rd, f, _ = scripted
    blob = page_blob(rd)
    feats = pd.read_parquet(RunPaths(rd).features)
    card = next(x for x in blob["features"] if x["id"] == f)
    assert [p[0] for p in card["promoted"]] == list(feats.at[f, "promoted_tokens"])
    assert len(card["suppressed"]) == 10
    tokens = TokenRows(rd)
    for row, act in card["top"]:
        w = tokens.window(row)
        assert blob["tokens"][str(row)]["pos"] == w.center
        assert len(blob["tokens"][str(row)]["tokens"]) == len(w.tokens)
        acts = dict(card["tok_acts"][str(row)])
        assert acts[w.center] == pytest.approx(act, rel=1e-5)
        for i, r in enumerate(w.rows):
            want = dense[r, f] if r >= 0 else 0.0
            assert acts.get(i, 0.0) == pytest.approx(want, rel=1e-4, abs=1e-6)
    page = RunPaths(rd).report_index.read_text()
    assert "alpha(a, maxAct)" in page and "act / maxAct" in page  # colour alpha = act / max_act
    assert '>hookpoint</div><div class="v">resid_post.1<' in page  # the run summary


def test_report_escapes_a_script_token(scripted) -> None:
    rd, f, row = scripted
    page = RunPaths(rd).report_index.read_text()
    assert SCRIPT not in page and "alert(1)" in page
    assert page.count("<script") == 2  # the data blob and the page's own script
    blob = page_blob(rd)
    w = blob["tokens"][str(row)]
    assert w["tokens"][w["pos"]] == SCRIPT
    if not CHROMIUM.exists():
        pytest.skip("no Chromium at /usr/bin/chromium to render the page")
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page_ = browser.new_page()
            page_.on("pageerror", lambda e: problems.append(str(e)))
            page_.on("dialog", lambda d: problems.append("dialog: " + d.message))
            page_.goto(RunPaths(rd).report_index.as_uri())
            card = page_.locator(f'.card[data-feature="{f}"]')
            card.locator(".card-head").click()
            first = card.locator("table.examples td.text").first
            at = first.locator(".tok.at")
            assert at.inner_text() == SCRIPT  # shown as text, never run
            style = at.get_attribute("style") or ""
            assert re.search(r"background: rgb\(255, 150, 30\)", style), style  # act = max: alpha 1
            shaded = first.locator(".tok[style]").count()
            assert 1 <= shaded <= first.locator(".tok").count()
            assert card.locator(".lens .up span.t").count() == 10
        finally:
            browser.close()
    assert not problems, problems
