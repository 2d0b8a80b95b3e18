"""Matryoshka BatchTopK: prefix widths, the prefix losses by hand, parity with SAELens'
training loss, and SAELens files both ways (checked against the real sae_lens package)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saescope import export_saelens, load_sae
from saescope.errors import SaescopeError
from saescope.sae import SAE, SAEConfig
from saescope.sae.archs._loss import LossContext
from saescope.sae.archs.matryoshka_batchtopk import DEFAULT_GROUPS, prefix_widths
from saescope.train import TrainConfig, train_on_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D_IN, D_SAE, K, BATCH = 16, 64, 4, 64
WIDTHS = [4, 8, 16, 32, 64]


def test_default_groups_are_the_published_scheme() -> None:
    # Bussmann et al.'s script: groups of d/16, d/16, d/8, d/4, d/2
    assert DEFAULT_GROUPS == [1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2]
    assert prefix_widths(64, DEFAULT_GROUPS) == WIDTHS
    assert prefix_widths(3072, DEFAULT_GROUPS) == [192, 384, 768, 1536, 3072]
    assert prefix_widths(10, DEFAULT_GROUPS) == [1, 3, 10]  # empty groups merge forward
    assert prefix_widths(10, [0.5]) == [10]
    with pytest.raises(SaescopeError):
        prefix_widths(10, [0.7, 0.6])
    with pytest.raises(SaescopeError):
        TrainConfig(architecture="matryoshka_batchtopk", matryoshka_groups=[0.5, -0.1])
    # groups that leave one group are plain BatchTopK, trained under another name
    with pytest.raises(SaescopeError, match="make one group of the 64 latents"):
        TrainConfig(architecture="matryoshka_batchtopk", d_sae=[64], matryoshka_groups=[0.001])


def _tiny() -> SAE:
    """d_in 2, d_sae 3, prefixes 1, 2, 3: h = (x0, x1, 0.5), decoder rows e0, e1, e1."""
    cfg = SAEConfig(
        "matryoshka_batchtopk",
        2,
        3,
        k=3,
        dtype="float64",
        metadata={"matryoshka_widths": [1, 2, 3]},
    )
    sae = SAE(cfg).double()
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, 0.5]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))
    return sae


@pytest.mark.parametrize("path", ["never", "always"])
def test_prefix_losses_by_hand(path: str) -> None:
    sae = _tiny()
    x = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    # all 6 activations are positive and k * n_rows = 6: every one is kept
    # row 0: z = (2, 1, .5): prefix 1 -> (2, 0): err 1;  prefix 2 -> (2, 1): 0;  all -> (2, 1.5): .25
    # row 1: z = (1, 3, .5): prefix 1 -> (1, 0): err 9;  prefix 2 -> (1, 3): 0;  all -> (1, 3.5): .25
    ctx = LossContext(
        2, torch.zeros(3, dtype=torch.bool), 3, 0, 0.0, 0.0, 1e-3, lambda t: t, sparse_backward=path
    )
    out = sae.arch.loss(sae, x, ctx, None)
    assert out.loss.item() == pytest.approx((1 + 0 + 0.25 + 9 + 0 + 0.25) / 2)
    assert out.sq_err.item() == pytest.approx(0.5)  # the full reconstruction's
    assert out.min_kept.item() == pytest.approx(0.5)
    out.loss.backward()
    # d loss / d b_enc[2]: z_2 only enters the last prefix, residual -0.5 in dim 1 for both rows
    assert sae.b_enc.grad[2].item() == pytest.approx(2 * (0.5 + 0.5) / 2)
    # d / d b_enc[0]: z_0 enters all 3 prefixes, residual in dim 0 is 0 for all of them
    assert sae.b_enc.grad[0].item() == pytest.approx(0.0)
    # d / d b_enc[1]: prefix 1 lacks it; prefixes 2 (residual 0) and 3 (residual -0.5 each)
    assert sae.b_enc.grad[1].item() == pytest.approx(2 * (0.5 + 0.5) / 2)


def _saelens_cfg(**kw):
    from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAEConfig

    return MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=K, matryoshka_widths=list(WIDTHS), **kw
    )


def _inputs(n: int = 200, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g) * 1.5 + 0.7


def test_loss_equals_saelens_training_loss() -> None:
    """On the same weights and batch (no dead latents), saescope's loss is SAELens'
    training loss: the full mse plus one mse per inner prefix."""
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAE
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(0)
    lens = MatryoshkaBatchTopKTrainingSAE(_saelens_cfg(rescale_acts_by_decoder_norm=False))
    x = _inputs(BATCH)
    with torch.no_grad():
        lens.b_enc.normal_(0, 0.1)
        lens.b_dec.normal_(0, 0.1)
        lens.W_dec.div_(lens.W_dec.norm(dim=1, keepdim=True))
    step = TrainStepInput(
        sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
    )
    ref = lens.training_forward_pass(step)
    cfg = SAEConfig(
        "matryoshka_batchtopk", D_IN, D_SAE, k=K, metadata={"matryoshka_widths": WIDTHS}
    )
    ours = SAE.from_tensors(
        cfg,
        {n: getattr(lens, n).detach() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        | {"threshold": torch.zeros(D_SAE)},
    )
    for path in ("never", "always"):
        ctx = LossContext(
            BATCH,
            torch.zeros(D_SAE, dtype=torch.bool),
            K,
            0,
            0.0,
            0.0,
            1e-3,
            lambda t: t,
            sparse_backward=path,
        )
        out = ours.arch.loss(ours, x, ctx, None)
        assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
        assert (out.sq_err / BATCH).item() == pytest.approx(ref.losses["mse_loss"].item(), rel=1e-5)
    assert sae_lens.__version__


def test_export_loads_in_saelens_and_back(tmp_path: Path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    batches = [_inputs(128, seed=s) for s in range(4)]
    cfg = TrainConfig(
        architecture="matryoshka_batchtopk", d_sae=[D_SAE], k=[K], batch_size=128, lr=3e-3
    )
    ours = train_on_batches(batches, cfg).saes[0]
    assert ours.cfg.metadata["matryoshka_widths"] == WIDTHS
    out = export_saelens(ours, tmp_path / "export")
    raw = json.loads((out / "cfg.json").read_text())
    assert raw["architecture"] == "jumprelu"
    assert raw["metadata"]["training_architecture"] == "matryoshka_batchtopk"
    assert raw["metadata"]["training_architecture_details"]["matryoshka_widths"] == WIDTHS
    x = _inputs()
    codes = ours.encode(x)
    with torch.no_grad():
        ref = sae_lens.SAE.load_from_disk(str(out)).encode(x)
    assert (codes != 0).sum() > x.shape[0]
    assert torch.equal(ref != 0, codes != 0)
    torch.testing.assert_close(ref, codes, atol=1e-5, rtol=0)
    back = load_sae(out)
    assert back.cfg.architecture == "matryoshka_batchtopk" and back.cfg.k == K
    assert back.cfg.metadata["matryoshka_widths"] == WIDTHS
    torch.testing.assert_close(back.encode(x), codes, atol=1e-6, rtol=0)


def test_train_stage_saves_the_widths_and_export_keeps_them(tmp_path: Path) -> None:
    """`saescope train` writes the prefix widths beside its own metadata, so that the
    saved folder exports to SAELens with its groups (it once kept one prefix, [d_sae])."""
    from test_train_stage import make_store, small

    from saescope.paths import RunPaths
    from saescope.train import run

    store = make_store(tmp_path / "run", n_rows=600)
    run(
        small(
            store,
            architecture="matryoshka_batchtopk",
            matryoshka_groups=[0.25, 0.25, 0.5],
            max_steps=2,
            eval_at_end=False,
        )
    )
    saved = json.loads(RunPaths(store).sae_config.read_text())["metadata"]
    assert saved["matryoshka_widths"] == [16, 32, 64]
    assert saved["source"] == "saescope" and "input_scale" in saved  # the stage's own keys
    out = export_saelens(load_sae(RunPaths(store).sae), tmp_path / "export")
    details = json.loads((out / "cfg.json").read_text())["metadata"]
    assert details["training_architecture_details"]["matryoshka_widths"] == [16, 32, 64]


def test_saelens_trained_matryoshka_files_load(tmp_path: Path) -> None:
    """SAELens trains a Matryoshka BatchTopK SAE; its inference file (jumprelu) and its
    training checkpoint (matryoshka_batchtopk, topk_threshold) load with SAELens' codes."""
    pytest.importorskip("sae_lens")
    from sae_lens import SAE as LensSAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAE
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    lens = MatryoshkaBatchTopKTrainingSAE(_saelens_cfg())
    steps = 12
    gen = torch.Generator().manual_seed(0)

    class Acts:
        def __iter__(self):
            return self

        def __next__(self):
            return torch.randn(BATCH, D_IN, generator=gen) * 1.5 + 0.7

    trainer_cfg = SAETrainerConfig(
        total_training_samples=BATCH * steps,
        train_batch_size_samples=BATCH,
        lr=3e-3,
        lr_end=3e-3,
        n_checkpoints=0,
        checkpoint_path=str(tmp_path),
        save_final_checkpoint=True,
        n_batches_for_norm_estimate=4,
        logger=LoggingConfig(log_to_wandb=False),
    )
    SAETrainer(cfg=trainer_cfg, sae=lens, data_provider=Acts()).fit()
    lens.save_inference_model(str(tmp_path / "inf"))
    (final,) = tmp_path.glob("final_*")
    x = _inputs()
    with torch.no_grad():
        ref = LensSAE.load_from_disk(str(tmp_path / "inf")).encode(x)
    assert (ref != 0).sum() > x.shape[0]
    for folder in (tmp_path / "inf", final):
        sae = load_sae(folder)
        assert sae.cfg.architecture == "matryoshka_batchtopk", folder
        assert sae.cfg.k == K and sae.cfg.metadata["matryoshka_widths"] == WIDTHS
        codes = sae.encode(x)
        assert torch.equal(codes != 0, ref != 0), folder
        torch.testing.assert_close(codes, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["matryoshka_batchtopk", "batchtopk"])
def test_auxk_reaches_latents_silent_for_one_step_by_default(arch: str) -> None:
    """Matryoshka's default dead window is one step, so after the first step the latents
    that kept no activation get AuxK's gradient; BatchTopK's window (a tenth of training)
    still counts none of them dead."""
    from saescope.train.trainer import Trainer

    ROWS = 8  # 32 kept activations a step: at least half of the 64 latents stay silent

    cfg = TrainConfig(architecture=arch, d_sae=[D_SAE], k=[K], batch_size=ROWS, lr=3e-3)
    trainer = Trainer(cfg, D_IN, _inputs(256), total_steps=100)
    assert trainer.dead_after == (ROWS if arch == "matryoshka_batchtopk" else 100 * ROWS // 10)
    tr = trainer.trainees[0]
    trainer.train_step(_inputs(ROWS, seed=2), want_metrics=True)
    silent = tr.samples_since_fired > 0  # kept no activation in the first step
    assert 0 < int(silent.sum()) < D_SAE
    before = tr.sae.W_enc.detach().clone()
    trainer.train_step(_inputs(ROWS, seed=3), want_metrics=True)
    moved = (tr.sae.W_enc.detach() - before).abs().sum(0) > 0  # (d_sae,)
    # silent in both steps: only AuxK can give their encoder columns a gradient
    still = tr.samples_since_fired >= 2 * ROWS
    assert int(still.sum()) > 0
    if arch == "matryoshka_batchtopk":
        assert tr.last["aux"] > 0
        assert moved[still].float().mean() > 0.5  # those among AuxK's k_aux with h > 0
    else:
        assert tr.last["aux"] == 0 and tr.last["dead_fraction"] == 0
        assert not bool(moved[still].any())
