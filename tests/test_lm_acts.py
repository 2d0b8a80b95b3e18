"""`saescope acts` on a tiny random Llama: hooks, truncation, packing, masking, the index, resume."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli
from safetensors.numpy import load_file as load_numpy

from saescope import CorpusConfig, make_corpus
from saescope.errors import SaescopeError
from saescope.io import read_json
from saescope.lm import hooks
from saescope.lm.acts import run as acts
from saescope.lm.model import load_lm
from saescope.lm.tokens import build_contexts
from saescope.options.acts import ActsConfig
from saescope.paths import RunPaths
from saescope.store import ActivationStore


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    return load_lm(str(tiny_lm_dir))


def _ids(lm, n=3, seq=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, lm.model.config.vocab_size, (n, seq), generator=g)


def test_capture_equals_the_full_forward_hidden_states(tiny, one_torch_thread):
    ids = _ids(tiny)
    with torch.inference_mode():
        hidden = tiny.model(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in range(
        tiny.n_layers - 1
    ):  # the last entry of hidden_states is after the final norm
        post = hooks.capture(tiny.model, hooks.resolve(tiny.model, f"resid_post.{layer}"), ids)
        pre = hooks.capture(tiny.model, hooks.resolve(tiny.model, f"resid_pre.{layer}"), ids)
        assert torch.equal(post, hidden[layer + 1])
        assert torch.equal(pre, hidden[layer])
    # sparsify's and SAELens's names land on the same modules
    assert hooks.resolve(tiny.model, "layers.1") == hooks.resolve(tiny.model, "resid_post.1")
    assert hooks.resolve(tiny.model, "blocks.1.hook_resid_pre").module == "model.layers.1"
    assert hooks.resolve(tiny.model, "blocks.0.hook_mlp_out").module == "model.layers.0.mlp"


def test_mlp_and_attention_sites_read_their_modules_output(tiny, one_torch_thread):
    ids = _ids(tiny)
    seen = {}
    mlp = tiny.model.model.layers[1].mlp
    attn = tiny.model.model.layers[1].self_attn
    h1 = mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("mlp", o))
    h2 = attn.register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o[0]))
    with torch.inference_mode():
        tiny.model(input_ids=ids)
    h1.remove()
    h2.remove()
    assert torch.equal(
        hooks.capture(tiny.model, hooks.resolve(tiny.model, "mlp_out.1"), ids), seen["mlp"]
    )
    assert torch.equal(
        hooks.capture(tiny.model, hooks.resolve(tiny.model, "attn_out.1"), ids), seen["attn"]
    )
    down = hooks.resolve(tiny.model, "model.layers.1.mlp.down_proj")
    assert torch.equal(hooks.capture(tiny.model, down, ids), seen["mlp"])


def test_the_forward_stops_at_the_hookpoint(tiny):
    ran = []
    handles = [
        block.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
        for i, block in enumerate(tiny.model.model.layers)
    ]
    head = tiny.model.lm_head.register_forward_hook(lambda m, a, o: ran.append("head"))
    try:
        hooks.capture(tiny.model, hooks.resolve(tiny.model, "resid_post.0"), _ids(tiny))
        assert ran == [0]
        ran.clear()
        hooks.capture(tiny.model, hooks.resolve(tiny.model, "resid_pre.1"), _ids(tiny))
        assert ran == [0]
        ran.clear()
        hooks.capture(tiny.model, hooks.resolve(tiny.model, "resid_pre.1"), _ids(tiny), stop=False)
        assert ran == [0, 1, 2, "head"]
    finally:
        for h in [*handles, head]:
            h.remove()


def test_replaced_changes_what_later_layers_see(tiny, one_torch_thread):
    ids = _ids(tiny)
    hp = hooks.resolve(tiny.model, "resid_post.0")
    with torch.inference_mode():
        clean = tiny.model(input_ids=ids).logits
        with hooks.replaced(tiny.model, hp, lambda h: h):
            same = tiny.model(input_ids=ids).logits
        with hooks.replaced(tiny.model, hp, torch.zeros_like):
            zeroed = tiny.model(input_ids=ids).logits
    assert torch.equal(clean, same)
    assert not torch.allclose(clean, zeroed)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("resid_post.7", "layer 7 does not exist; the model has layers 0..2"),
        ("model.layers.9.mlp", "neither a site"),
        ("blocks.1.hook_z", "only SAELens hooks"),
    ],
)
def test_bad_hookpoints_are_one_line_errors(tiny, spec, message):
    with pytest.raises(SaescopeError, match=message):
        hooks.resolve(tiny.model, spec)


def test_list_hookpoints_has_sites_and_modules(tiny, tiny_lm_dir, tmp_path):
    names = hooks.list_hookpoints(tiny.model)
    assert names[:4] == ["resid_pre.0", "resid_post.0", "mlp_out.0", "attn_out.0"]
    assert "model.layers.2.mlp.down_proj" in names
    out = run_cli(
        "acts", "--run", str(tmp_path / "r"), "--model", str(tiny_lm_dir), "--list-hookpoints"
    )
    assert "resid_post.2" in out.stdout and "model.layers.0.self_attn.o_proj" in out.stdout


def test_packing_puts_bos_first_and_eos_between_texts(tiny):
    tok = tiny.tokenizer
    texts = ["The cat sat on the mat.", "", "Dogs bark at night, loudly and often.", "Rain."]
    ctx = build_contexts(tok, texts, ctx_len=8)
    assert ctx.input_ids.shape[1] == 8
    assert (ctx.input_ids[:, 0] == tok.bos_token_id).all()
    # the body of the contexts, read in order, is the texts' tokens with EOS between them
    body = ctx.input_ids[:, 1:][ctx.attention_mask[:, 1:]].tolist()
    want = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        if ids:
            want += ([tok.eos_token_id] if want else []) + ids
    assert body == want
    # only text tokens are kept; each kept token knows its text
    assert not ctx.keep[:, 0].any()
    assert (ctx.text_row[ctx.keep] >= 0).all()
    assert set(ctx.text_row[ctx.keep].tolist()) == {0, 2, 3}
    assert int(ctx.keep.sum()) == sum(
        len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts
    )
    # padding only at the end of the last context, never kept
    assert ctx.attention_mask[:-1].all()
    with_special = build_contexts(tok, texts, ctx_len=8, keep_special=True)
    assert with_special.keep[:, 0].all()
    assert (with_special.keep == with_special.attention_mask).all()


def test_document_packing_pads_and_truncates(tiny):
    tok = tiny.tokenizer
    texts = ["one two three four five six seven eight nine ten eleven twelve", "hi"]
    ctx = build_contexts(tok, texts, ctx_len=6, packing="document")
    assert ctx.n_contexts == 2
    assert ctx.attention_mask[0].all() and ctx.attention_mask[1].sum() == 1 + len(
        tok("hi", add_special_tokens=False)["input_ids"]
    )
    assert not ctx.keep[~ctx.attention_mask].any()
    no_bos = build_contexts(tok, texts, ctx_len=6, packing="document", bos=False)
    assert no_bos.keep[0].all()


def test_bad_contexts_are_one_line_errors(tiny):
    with pytest.raises(SaescopeError, match="above the model's limit of 256"):
        build_contexts(tiny.tokenizer, ["a b c"], ctx_len=512, max_positions=256)
    with pytest.raises(SaescopeError, match="no tokens"):
        build_contexts(tiny.tokenizer, ["", ""], ctx_len=16)
    tok = type(tiny.tokenizer).from_pretrained(tiny.tokenizer.name_or_path)
    tok.bos_token = None
    with pytest.raises(SaescopeError, match="no BOS token"):
        build_contexts(tok, ["a b c"], ctx_len=16)
    assert build_contexts(tok, ["a b c"], ctx_len=16, bos=False).keep.any()


def test_store_rows_are_the_tokens_of_the_index(tiny_lm_run, tiny, one_torch_thread):
    rp = RunPaths(tiny_lm_run)
    store = ActivationStore(rp.acts)
    assert store.rows_kind == "tokens" and store.meta["hookpoint"] == "resid_post.1"
    index = pd.read_parquet(rp.acts_index)
    t = load_numpy(str(rp.acts_tokens))
    assert len(index) == store.count == int(t["keep"].sum())
    assert (index["token"].to_numpy() == t["input_ids"][index["context"], index["position"]]).all()
    assert index["doc"].str.startswith("news-").all()
    # rows of two contexts are exactly what a forward of those contexts gives there
    hp = hooks.resolve(tiny.model, "resid_post.1")
    for c in (0, int(index["context"].max())):
        sel = index[index["context"] == c]
        ids = torch.from_numpy(t["input_ids"][c : c + 1].astype(np.int64))
        mask = torch.from_numpy(t["attention_mask"][c : c + 1].astype(np.int64))
        want = hooks.capture(tiny.model, hp, ids, mask)[0, sel["position"].to_numpy().copy()]
        got = store.rows(sel["row"].to_numpy())
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # whole contexts are held out
    held = store.held_out(np.arange(store.count), 0.3)
    by_ctx = pd.Series(held).groupby(index["context"].to_numpy()).nunique()
    assert (by_ctx == 1).all() and 0 < held.mean() < 1


def test_a_rerun_skips_and_an_interrupted_run_resumes_to_the_same_rows(
    tiny_lm_run, tmp_path, monkeypatch
):
    rp = RunPaths(tiny_lm_run)
    before = (rp.acts / "shard-00000.safetensors").stat().st_mtime_ns
    cfg = ActsConfig(
        run=str(tiny_lm_run), model=str(Path(ActivationStore(rp.acts).meta["model"])),
        hookpoint="resid_post.1", ctx_len=64, shard_rows=512,
    )  # fmt: skip
    acts(cfg)  # same options: nothing redone
    assert (rp.acts / "shard-00000.safetensors").stat().st_mtime_ns == before
    with pytest.raises(SaescopeError, match="other inputs or options"):
        acts(ActsConfig(**{**cfg.__dict__, "hookpoint": "resid_post.0"}))

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(rp.corpus, run / rp.corpus.name)
    shutil.copy(rp.corpus_record, run / rp.corpus_record.name)
    import saescope.store as store_mod

    real = store_mod.StoreWriter._flush
    calls = {"n": 0}

    def dies_after_two(self, block):
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if killed after the second shard
        calls["n"] += 1
        real(self, block)

    monkeypatch.setattr(store_mod.StoreWriter, "_flush", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        acts(ActsConfig(**{**cfg.__dict__, "run": str(run)}))
    monkeypatch.setattr(store_mod.StoreWriter, "_flush", real)
    partial = read_json(RunPaths(run).acts_manifest)
    assert not partial["complete"] and partial["count"] == 1024  # two shards of 512 were kept
    acts(ActsConfig(**{**cfg.__dict__, "run": str(run)}))
    a, b = ActivationStore(rp.acts), ActivationStore(RunPaths(run).acts)
    assert a.count == b.count
    assert torch.equal(a.rows(np.arange(a.count)), b.rows(np.arange(b.count)))


def test_not_a_causal_lm_is_refused():
    from saescope.defaults import minilm_path

    with pytest.raises(SaescopeError, match="not a causal language model"):
        load_lm(str(minilm_path()))
    # by its name (which would go to the hub), and a folder that is not there
    with pytest.raises(SaescopeError, match="packaged sentence-embedding model"):
        load_lm("all-MiniLM-L6-v2")
    with pytest.raises(SaescopeError, match="model folder /nonexistent/llm does not exist"):
        load_lm("/nonexistent/llm")


def test_torchrun_two_processes_give_the_single_process_store(tiny_lm_run, tiny_lm_dir, tmp_path):
    rp = RunPaths(tiny_lm_run)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(rp.corpus, run / rp.corpus.name)
    # TMPDIR: torchrun leaves a torchelastic_* log folder in the temp dir
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "saescope", "--", "acts", "--run", str(run), "--model", str(tiny_lm_dir),
        "--hookpoint", "resid_post.1", "--ctx-len", "64", "--shard-rows", "700",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = ActivationStore(rp.acts), ActivationStore(RunPaths(run).acts)
    assert two.count == one.count and two.meta == one.meta
    assert any("parts/rank-00001" in s.file for s in two.shards)
    two.verify()
    assert torch.allclose(one.rows(np.arange(one.count)), two.rows(np.arange(two.count)), atol=1e-5)
    assert pd.read_parquet(RunPaths(run).acts_index).equals(pd.read_parquet(rp.acts_index))


def test_cli_builds_a_token_store_with_document_packing(tiny_lm_dir, tmp_path):
    run = tmp_path / "run"
    make_corpus(CorpusConfig(run=str(run), source="news", limit=20))
    run_cli(
        "acts", "--run", str(run), "--model", str(tiny_lm_dir), "--hookpoint", "mlp_out.0",
        "--packing", "document", "--ctx-len", "32", "--dtype", "bfloat16",
    )  # fmt: skip
    store = ActivationStore(RunPaths(run).acts)
    assert store.dtype == "bfloat16" and store.meta["packing"] == "document"
    index = pd.read_parquet(RunPaths(run).acts_index)
    assert index["context"].nunique() == 20 and (index["position"] >= 1).all()


@pytest.mark.slow
def test_packaged_smollm2_middle_layer_equals_its_full_forward(tmp_path):
    """The embedded default: SmolLM2-135M-Instruct from its GGUF, at resid_post.15."""
    lm = load_lm()
    assert (lm.n_layers, lm.d_model) == (30, 576)
    run = tmp_path / "run"
    make_corpus(CorpusConfig(run=str(run), source="news", limit=12))
    acts(ActsConfig(run=str(run), ctx_len=64), lm=lm)
    rp = RunPaths(run)
    store = ActivationStore(rp.acts)
    assert store.meta["hookpoint"] == "resid_post.15" and store.d_in == 576
    t = load_numpy(str(rp.acts_tokens))
    index = pd.read_parquet(rp.acts_index)
    sel = index[index["context"] == 0]
    ids = torch.from_numpy(t["input_ids"][:1].astype(np.int64))
    with torch.inference_mode():
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[16]
    want = hidden[0, sel["position"].to_numpy()]
    assert torch.allclose(store.rows(sel["row"].to_numpy()), want, atol=1e-4)
