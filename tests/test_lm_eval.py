"""The LM metrics of `saescope eval` on a tiny random Llama: exact cases, the CLI, foreign SAEs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import save_file

from saescope import evaluate
from saescope.errors import SaescopeError
from saescope.io import read_json
from saescope.lm import hooks
from saescope.lm.metrics import check_hookpoint, lm_metrics
from saescope.lm.model import load_lm
from saescope.paths import RunPaths
from saescope.sae import SAE, SAEConfig, export_saelens
from saescope.store import split_mask

D = 64  # the tiny Llama's d_model
HOOK = "resid_post.1"  # where the tiny_lm_run store was read


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    return load_lm(str(tiny_lm_dir))


@pytest.fixture(scope="module")
def hp(tiny):
    return hooks.resolve(tiny.model, HOOK)


@pytest.fixture(scope="module")
def contexts(tiny_lm_run):
    """The first 6 contexts of the run (input_ids, attention_mask, keep)."""
    t = load_numpy(str(RunPaths(tiny_lm_run).acts_tokens))
    return t["input_ids"][:6], t["attention_mask"][:6], t["keep"][:6]


@pytest.fixture(scope="module")
def lm_run(tiny_lm_run, tmp_path_factory) -> Path:
    """A copy of the shared token run that this module may write SAEs into."""
    run = tmp_path_factory.mktemp("lm-eval") / "run"
    shutil.copytree(tiny_lm_run, run)
    return run


def sae_of(W_enc, W_dec, b_dec=None, hook: str = HOOK, arch: str = "relu", k=None) -> SAE:
    d_in, d_sae = W_enc.shape
    cfg = SAEConfig(arch, d_in, d_sae, k=k, metadata={"store_meta": {"hookpoint": hook}})
    return SAE.from_tensors(
        cfg,
        {
            "W_enc": W_enc,
            "b_enc": torch.zeros(d_sae),
            "W_dec": W_dec,
            "b_dec": torch.zeros(d_in) if b_dec is None else b_dec,
        },
    )


def perfect_sae(d: int = D) -> SAE:
    """relu(x) - relu(-x) = x exactly: the reconstruction is the input, bit for bit."""
    eye = torch.eye(d)
    return sae_of(torch.cat([eye, -eye], dim=1), torch.cat([eye, -eye], dim=0))


def zero_sae(d: int = D) -> SAE:
    """W_dec = 0, b_dec = 0: the reconstruction is 0, which is zero ablation."""
    g = torch.Generator().manual_seed(0)
    return sae_of(torch.randn(d, 2 * d, generator=g), torch.zeros(2 * d, d))


def random_sae(d: int = D, d_sae: int = 128, seed: int = 1) -> SAE:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, d_sae, generator=g) / math.sqrt(d)
    return sae_of(W, W.T.contiguous(), arch="topk", k=16)


# --- exact cases of the metrics ---------------------------------------------------------


def test_error_added_back_gives_the_clean_model(tiny, hp, contexts, one_torch_thread):
    m = lm_metrics(tiny, hp, random_sae(), *contexts, batch_size=4, progress=False)
    assert m.ce_loss_with_error == pytest.approx(m.ce_loss_without_sae, rel=1e-5)
    assert abs(m.kl_div_with_error) < 1e-5
    # the splice did something: a random SAE is worse than the clean model, KL >= 0
    assert m.ce_loss_with_sae > m.ce_loss_without_sae and m.kl_div_with_sae > 1e-3
    assert m.delta_loss == pytest.approx(m.ce_loss_with_sae - m.ce_loss_without_sae)
    assert min(m.kl_div_with_sae, m.kl_div_with_ablation) > 0
    ids, mask, keep = contexts
    assert m.n_contexts == 6
    assert m.n_kl_tokens == int(keep.sum())
    assert m.n_tokens == int((keep[:, :-1] & mask[:, 1:]).sum())


def test_clean_ce_is_the_models_own_loss_on_the_counted_tokens(
    tiny, hp, contexts, one_torch_thread
):
    """CE at position p counts when p is a store row and p + 1 is a real token: the same as
    transformers' loss with every other label set to -100."""
    ids, mask, keep = contexts
    m = lm_metrics(tiny, hp, perfect_sae(), ids, mask, keep, batch_size=6, progress=False)
    labels = np.full(ids.shape, -100, dtype=np.int64)
    scored = keep[:, :-1].astype(bool) & mask[:, 1:].astype(bool)
    labels[:, 1:][scored] = ids[:, 1:][scored]
    with torch.inference_mode():
        out = tiny.model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            labels=torch.from_numpy(labels),
        )
    assert m.ce_loss_without_sae == pytest.approx(float(out.loss), rel=1e-5)


def test_zero_reconstruction_scores_zero_and_perfect_scores_one(
    tiny, hp, contexts, one_torch_thread
):
    zero = lm_metrics(tiny, hp, zero_sae(), *contexts, batch_size=4, progress=False)
    assert zero.ce_loss_with_sae == zero.ce_loss_with_ablation  # the same forward, exactly
    assert zero.ce_loss_score == 0.0 and zero.kl_div_score == 0.0
    assert zero.kl_div_with_ablation > 0  # ablation changes the model (a random one: not its CE)
    perfect = lm_metrics(tiny, hp, perfect_sae(), *contexts, batch_size=4, progress=False)
    assert perfect.ce_loss_with_sae == perfect.ce_loss_without_sae
    assert perfect.ce_loss_score == 1.0 and perfect.kl_div_score == 1.0
    assert perfect.kl_div_with_sae == 0.0 and perfect.delta_loss == 0.0
    # batching and padding cut per batch change nothing
    one = lm_metrics(tiny, hp, zero_sae(), *contexts, batch_size=1, progress=False)
    assert one.ce_loss_with_ablation == pytest.approx(zero.ce_loss_with_ablation, rel=1e-5)


def test_only_store_rows_are_replaced(tiny, hp, contexts, one_torch_thread):
    """BOS (not a store row) keeps its clean activation under zero ablation."""
    ids, mask, keep = contexts
    assert not keep[:, 0].any()  # BOS
    seen: list[torch.Tensor] = []
    later = hooks.resolve(tiny.model, "resid_pre.2")  # what the next block reads
    from saescope.lm.metrics import _replacement, _splicer

    rows = torch.from_numpy(keep[:2].astype(bool))
    x = torch.from_numpy(ids[:2].astype(np.int64))
    clean = hooks.capture(tiny.model, later, x)
    with hooks.replaced(
        tiny.model, hp, _splicer(zero_sae(), hp, rows, _replacement(zero_sae(), "ablation"))
    ):
        seen.append(hooks.capture(tiny.model, later, x))
    assert torch.equal(seen[0][~rows], clean[~rows])
    assert torch.equal(seen[0][rows], torch.zeros_like(clean[rows]))


# --- the eval stage -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(lm_run) -> Path:
    from saescope.train import TrainConfig
    from saescope.train import run as train

    train(
        TrainConfig(
            run=str(lm_run),
            d_sae=[128],
            k=[8],
            batch_size=256,
            epochs=1.0,
            eval_fraction=0.2,
            threads=1,
            progress=False,
            checkpoint_every=0,
            eval_at_end=False,
        )
    )
    return RunPaths(lm_run).root / "sae"


def test_cli_eval_writes_the_lm_metrics(lm_run, trained):
    proc = run_cli("eval", "--run", str(lm_run), "--lm-contexts", "5", "--device", "cpu")
    m = read_json(trained / "metrics.json")
    lm = m["lm"]
    assert lm["split"] == "eval" and lm["n_contexts"] == 5 and lm["n_tokens"] > 0
    assert lm["hookpoint"] == HOOK and lm["sae_hookpoint"] == HOOK
    for key in ("ce_loss_score", "kl_div_score", "ce_loss_with_sae", "kl_div_with_ablation"):
        assert math.isfinite(lm[key]), key
    assert lm["ce_loss_with_error"] == pytest.approx(lm["ce_loss_without_sae"], rel=1e-5)
    assert abs(lm["kl_div_with_error"]) < 1e-5 and lm["kl_div_with_sae"] >= 0
    assert lm["delta_loss"] == pytest.approx(lm["ce_loss_with_sae"] - lm["ce_loss_without_sae"])
    assert "ce_loss_score" in proc.stderr and "kl_div_score" in proc.stderr
    # input_norm "auto" on a token store: rows standardised, undone on the way out, so
    # the error term added back still gives exactly the clean loss (asserted above)
    assert read_json(trained / "config.json")["input_norm"] == "row_standardize"
    record = read_json(trained / "metrics.provenance.json")
    assert record["config"]["lm_contexts"] == 5 and record["config"]["lm_split"] == "eval"
    assert "tokens" in record["upstream"]


def test_lm_metrics_take_held_out_contexts(lm_run, trained, one_torch_thread):
    n_ctx = len(load_numpy(str(RunPaths(lm_run).acts_tokens))["input_ids"])
    ids, split = evaluate.lm_contexts(n_ctx, 1000, "eval", 0.2)
    assert split == "eval" and len(ids) > 0 and split_mask(ids, 0.2).all()
    train_ids, _ = evaluate.lm_contexts(n_ctx, 1000, "train", 0.2)
    assert len(ids) + len(train_ids) == n_ctx and not split_mask(train_ids, 0.2).any()
    first, split = evaluate.lm_contexts(n_ctx, 3, "eval", 0.0)  # nothing held out: all
    assert first.tolist() == [0, 1, 2] and split == "all"
    cfg = evaluate.EvalConfig(run=str(lm_run), lm_contexts=0)
    assert "lm" not in read_json(evaluate.run(cfg))
    cfg = evaluate.EvalConfig(run=str(lm_run), lm_contexts=2, lm_split="all")
    lm = read_json(evaluate.run(cfg))["lm"]
    assert lm["split"] == "all" and lm["n_contexts"] == 2


def test_sae_with_another_width_is_refused_in_one_line(lm_run):
    bad = lm_run / "narrow"
    random_sae(d=32).save(bad)
    proc = run_cli("eval", "--run", str(lm_run), "--sae", "narrow", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "d_in=32" in lines[0] and "resid_post.1" in lines[0]
    assert not (bad / "metrics.json").exists()


# --- foreign SAEs ---------------------------------------------------------------------------


def sparsify_folder(folder: Path, sae: SAE) -> Path:
    """A sparsify folder (cfg.json + sae.safetensors) holding `sae` (topk)."""
    folder.mkdir(parents=True)
    cfg = {"d_in": sae.cfg.d_in, "k": sae.cfg.k, "num_latents": sae.cfg.d_sae}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {
            "encoder.weight": sae.W_enc.detach().T.contiguous(),
            "encoder.bias": sae.b_enc.detach().clone(),
            "W_dec": sae.W_dec.detach().clone(),
            "b_dec": sae.b_dec.detach().clone(),
        },
        str(folder / "sae.safetensors"),
    )
    return folder


def test_sparsify_sae_at_layers_1_is_evaluated_and_layers_0_refused(
    lm_run, tmp_path, tiny, hp, one_torch_thread
):
    sae = random_sae()
    good = sparsify_folder(tmp_path / "ckpt" / "layers.1", sae)
    cfg = evaluate.EvalConfig(run=str(lm_run), sae=str(good), lm_contexts=3, lm_split="all")
    m = read_json(evaluate.run(cfg))
    assert m["split"] == "all"  # a foreign SAE never saw this store
    assert m["lm"]["sae_hookpoint"] == "layers.1" and m["lm"]["n_contexts"] == 3
    # the same numbers as the native SAE on the same contexts
    t = load_numpy(str(RunPaths(lm_run).acts_tokens))
    ref = lm_metrics(
        tiny, hp, sae, t["input_ids"][:3], t["attention_mask"][:3], t["keep"][:3], progress=False
    )
    assert m["lm"]["ce_loss_with_sae"] == pytest.approx(ref.ce_loss_with_sae, rel=1e-5)

    wrong = sparsify_folder(tmp_path / "ckpt" / "layers.0", sae)
    with pytest.raises(SaescopeError, match=r"trained at hookpoint 'layers.0'.*'resid_post.1'"):
        evaluate.run(evaluate.EvalConfig(run=str(lm_run), sae=str(wrong)))
    assert not (wrong / "metrics.json").exists()


def test_saelens_hooks_are_mapped_or_refused(lm_run, tmp_path, one_torch_thread):
    sae = random_sae()
    model = read_json(RunPaths(lm_run).acts_manifest)["meta"]["model"]
    for hook, ok in (("blocks.1.hook_resid_post", True), ("blocks.1.hook_z", False)):
        meta = {"hook_name": hook, "model_name": model}
        lens = SAE.from_tensors(SAEConfig("topk", D, 128, k=16, metadata=meta), sae.state_tensors())
        folder = export_saelens(lens, tmp_path / hook)
        cfg = evaluate.EvalConfig(run=str(lm_run), sae=str(folder), lm_contexts=2)
        if ok:
            assert read_json(evaluate.run(cfg))["lm"]["sae_hookpoint"] == hook
        else:
            with pytest.raises(SaescopeError, match="hook_z.*no single Hugging Face module"):
                evaluate.run(cfg)
    # a SAELens file of another model (its model_name) is refused, not evaluated here
    meta = {"hook_name": "blocks.1.hook_resid_post", "model_name": "gpt2"}
    lens = SAE.from_tensors(SAEConfig("topk", D, 128, k=16, metadata=meta), sae.state_tensors())
    folder = export_saelens(lens, tmp_path / "gpt2")
    with pytest.raises(SaescopeError, match="trained on gpt2's activations"):
        evaluate.run(evaluate.EvalConfig(run=str(lm_run), sae=str(folder), lm_contexts=2))


def test_check_hookpoint_spellings(tiny):
    meta = {"hookpoint": "resid_post.1", "model": "m"}
    for same in ("resid_post.1", "layers.1", "blocks.1.hook_resid_post", None):
        check_hookpoint(same, meta, "x")
    check_hookpoint("model.layers.1", meta, "x", tiny.model)  # a module name, resolved
    for other in ("resid_pre.1", "blocks.2.hook_resid_post", "mlp_out.1"):
        with pytest.raises(SaescopeError, match="but the store holds 'resid_post.1'"):
            check_hookpoint(other, meta, "x")
    with pytest.raises(SaescopeError, match="does not have"):
        check_hookpoint("layers.7", meta, "x", tiny.model)
