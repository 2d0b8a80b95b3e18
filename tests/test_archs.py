"""The architecture registry: every registered architecture builds, trains, saves, loads
and exports; the sparse training paths give the dense paths' gradients; ReLU's two L1
penalties; no architecture if-chain outside the registry."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saescope import export_saelens, load_sae
from saescope.errors import SaescopeError
from saescope.sae import SAE, SAEConfig, archs
from saescope.sae.archs import ARCHITECTURES, REGISTRY
from saescope.sae.archs._loss import LossContext
from saescope.train import TrainConfig, train_on_batches
from saescope.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D_IN, D_SAE, K = 16, 48, 4


def _data(n_batches: int, n: int = 128, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(96, D_IN, generator=g)
    out = []
    for _ in range(n_batches):
        z = torch.relu(torch.randn(n, 96, generator=g) - 1.5)
        out.append(z @ basis + 0.3)
    return out


def _k(arch: str) -> int | None:
    return K if archs.get(arch).uses_k else None


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_trains_saves_loads_and_exports(tmp_path: Path, arch: str) -> None:
    cfg = TrainConfig(architecture=arch, d_sae=[D_SAE], k=[K], batch_size=128, lr=3e-3)
    batches = _data(3)
    sae = train_on_batches(batches, cfg).saes[0]
    assert sae.cfg.architecture == arch
    for name, t in sae.state_tensors().items():
        assert torch.isfinite(t).all(), name
    x = batches[0][:64]
    codes = sae.encode(x)
    assert (codes != 0).any()
    # native files
    back = SAE.load(sae.save(tmp_path / "native"))
    assert back.cfg == sae.cfg
    assert torch.equal(back.encode(x), codes)
    # SAELens files, read back by saescope
    out = export_saelens(sae, tmp_path / "saelens")
    again = load_sae(out)
    assert again.cfg.architecture == arch and again.cfg.k == sae.cfg.k
    torch.testing.assert_close(again.encode(x), codes, atol=1e-5, rtol=0)
    # ... and by SAELens itself
    lens = pytest.importorskip("sae_lens")
    with torch.no_grad():
        ref = lens.SAE.load_from_disk(str(out)).encode(x)
    assert torch.equal(ref != 0, codes != 0)
    torch.testing.assert_close(ref, codes, atol=1e-5, rtol=0)


def test_registry_is_the_only_place_that_names_architectures() -> None:
    root = Path(__file__).resolve().parents[1] / "saescope"
    chain = re.compile(r"architecture\s*(==|!=|in \()")
    found = [
        f"{p.relative_to(root)}:{i}"
        for p in root.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if chain.search(line)
    ]
    assert not found, found


def test_registry_entries_are_complete() -> None:
    for name, arch in REGISTRY.items():
        assert arch.name == name and arch.summary
        assert dataclasses.is_dataclass(arch.options)
        for f in dataclasses.fields(arch.options):
            assert f.metadata.get("help"), f"{name}: option {f.name} has no help text"
            assert f.name in {g.name for g in dataclasses.fields(TrainConfig)}
        cfg = SAEConfig(name, D_IN, D_SAE, k=_k(name))
        mapping = arch.to_saelens(cfg)
        assert mapping.architecture in ("standard", "topk", "jumprelu")


def test_help_lists_every_architecture_and_imports_no_torch() -> None:
    code = (
        "import sys; from saescope.train.config import TrainConfig; import dataclasses;"
        "f = {x.name: x for x in dataclasses.fields(TrainConfig)}['architecture'];"
        "print(f.metadata['help']); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    for name in ARCHITECTURES:
        assert f"{name}:" in out
    assert out.strip().endswith("False")


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(SaescopeError, match="matryoshka_batchtopk"):
        SAEConfig("gated", D_IN, D_SAE)
    with pytest.raises(SaescopeError, match="unknown architecture"):
        TrainConfig(architecture="gated")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_another_architectures_option_is_refused_not_ignored(arch: str) -> None:
    """Each architecture accepts its own options away from their defaults and refuses
    every option only other architectures read (it would train without it)."""
    own = archs.option_names(REGISTRY[arch])
    changed = {
        "l1_coefficient": 0.5,
        "relu_l1": "decoder_norm",
        "batchtopk_threshold_rate": 0.5,
        "jumprelu_bandwidth": 0.01,
        "jumprelu_init_l0": 8.0,
        "jumprelu_init_threshold": 0.1,
        "jumprelu_target_coefficient": 2.0,
        "jumprelu_target_l0": 8.0,
        "l0_coefficient": 0.1,
        "pre_act_coefficient": 0.0,
        "matryoshka_groups": [0.5, 0.5],
    }
    every = set().union(*(archs.option_names(a) for a in REGISTRY.values()))
    assert set(changed) == every  # a new option needs a value here
    base = {"architecture": arch, "d_sae": [D_SAE], "k": [4]}
    TrainConfig(**base, **{name: changed[name] for name in own})
    for name in sorted(every - own):
        with pytest.raises(SaescopeError, match=f"{name} is an option of .*{arch}"):
            TrainConfig(**base, **{name: changed[name]})


# -- sparse vs dense training paths ------------------------------------------------


def _random_sae(arch: str, seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(arch, D_IN, D_SAE, k=_k(arch), dtype="float64")
    if arch == "matryoshka_batchtopk":
        cfg = dataclasses.replace(cfg, metadata={"matryoshka_widths": [6, 12, 24, 48]})
    sae = SAE(cfg).double()
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(D_SAE, D_IN, generator=g), dim=1))
        sae.W_enc.copy_(sae.W_dec.t() * 0.8 + 0.1 * torch.randn(D_IN, D_SAE, generator=g))
        sae.b_enc.copy_(torch.randn(D_SAE, generator=g) * 0.1 - 0.6)
        sae.b_dec.copy_(torch.randn(D_IN, generator=g) * 0.1)
    return sae


def _grads(arch: str, path: str, options: TrainConfig, eps: float = 0.05):
    sae = _random_sae(arch)
    x = torch.randn(96, D_IN, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::5] = True  # AuxK reaches these
    extra = None
    if arch == "jumprelu":
        g = torch.Generator().manual_seed(7)
        # thresholds among the pre-activations, so some pairs sit inside the kernel window
        extra = torch.nn.Parameter(
            (torch.rand(D_SAE, generator=g, dtype=torch.float64) + 0.2).log()
        )
    ctx = LossContext(
        n_global=96,
        dead=dead,
        k=_k(arch),
        k_aux=8,
        aux_coefficient=1 / 32,
        sparsity_coefficient=0.05,
        bandwidth=eps,
        all_sum=lambda t: t,
        sparse_backward=path,
        options=options,
    )
    out = sae.arch.loss(sae, x, ctx, extra)
    out.loss.backward()
    params = {n: getattr(sae, n) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if extra is not None:
        params["log_threshold"] = extra
    return out, {n: p.grad.clone() for n, p in params.items()}


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("batchtopk", {}),
        ("matryoshka_batchtopk", {}),
        ("jumprelu", {}),
        ("jumprelu", {"jumprelu_target_l0": 5.0}),
        ("relu", {"relu_l1": "unit_decoder"}),
        ("relu", {"relu_l1": "decoder_norm", "unit_norm_decoder": False}),
    ],
)
def test_sparse_path_gives_the_dense_gradients(arch: str, options: dict) -> None:
    cfg = TrainConfig(architecture=arch, d_sae=[D_SAE], k=[K], **options)
    dense_out, dense = _grads(arch, "never", cfg)
    sparse_out, sparse = _grads(arch, "always", cfg)
    for field in ("loss", "sq_err", "aux", "active", "min_kept"):
        a, b = getattr(dense_out, field), getattr(sparse_out, field)
        torch.testing.assert_close(b.double(), a.double(), rtol=1e-9, atol=1e-12)
    assert torch.equal(dense_out.fired, sparse_out.fired)
    assert dense_out.active > 0
    if arch != "relu":
        assert dense_out.aux > 0
    for name, g in dense.items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(sparse[name], g, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("path", ["never", "always"])
def test_jumprelu_pre_act_loss_reaches_dead_latents_only(path: str) -> None:
    """Anthropic's pre-activation loss on the dead latents: its value by hand, and it is
    the only gradient a dead latent's encoder column gets when the latent is below its
    threshold on every row (it lifts h and lowers the threshold); off at coefficient 0."""
    from saescope.sae.archs.jumprelu import dead_pre_act_loss

    def run(coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        cfg = TrainConfig(architecture="jumprelu", d_sae=[D_SAE], pre_act_coefficient=coef)
        out, grads = _grads("jumprelu", path, cfg)
        return out.loss.detach(), grads, out.fired

    loss_on, on, fired = run(1e-2)
    loss_off, off, _ = run(0.0)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::5] = True  # as _grads marks them
    silent = dead & ~fired  # dead and below the threshold on every row
    assert int(silent.sum()) > 0
    # the term by hand
    sae = _random_sae("jumprelu")
    x = torch.randn(96, D_IN, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    t = torch.rand(D_SAE, generator=g, dtype=torch.float64) + 0.2
    h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    by_hand = (torch.relu(t - h)[:, dead].sum(0) * sae.W_dec[dead].norm(dim=1)).sum()
    with torch.no_grad():
        term = dead_pre_act_loss(sae, x, t, dead)
    assert term is not None
    torch.testing.assert_close(term, by_hand, rtol=1e-9, atol=0)
    torch.testing.assert_close(loss_on - loss_off, 1e-2 * by_hand / 96, rtol=1e-6, atol=0)
    # only the pre-activation loss moves the silent dead latents
    assert off["W_enc"][:, silent].abs().sum() == 0 and off["b_enc"][silent].abs().sum() == 0
    assert bool((on["b_enc"][silent] < 0).all())  # descent raises their pre-activations
    lowered = on["log_threshold"][silent] - off["log_threshold"][silent]
    assert bool((lowered > 0).all())  # and descent lowers their thresholds
    assert dead_pre_act_loss(sae, x, t, torch.zeros(D_SAE, dtype=torch.bool)) is None


@pytest.mark.parametrize("world", [1, 2])
def test_jumprelu_target_term_by_hand(world: int) -> None:
    """With a target T the L0 term is n_global * (m / T - 1)^2, m the global batch's mean
    L0, with d/dl0 = 2 (m / T - 1) / T on this rank's L0 sum: negative below the target
    (descent raises L0), positive above it. Two ranks: each holds half of the batch."""
    from saescope.sae.archs.jumprelu import target_l0_penalty

    ctx = LossContext(
        n_global=10 * world,
        dead=torch.zeros(D_SAE, dtype=torch.bool),
        k=None,
        k_aux=8,
        aux_coefficient=0.0,
        sparsity_coefficient=1.0,
        bandwidth=0.05,
        all_sum=lambda t: t * world,  # every rank holds the same L0 sum here
    )
    for l0_sum, target in ((40.0, 5.0), (70.0, 5.0), (50.0, 5.0)):
        l0 = torch.tensor(l0_sum, dtype=torch.float64, requires_grad=True)
        term = target_l0_penalty(l0, 10, target, ctx)
        term.backward()
        m = l0_sum / 10
        assert float(term.detach()) * world == pytest.approx(10 * world * (m / target - 1) ** 2)
        assert l0.grad is not None
        assert float(l0.grad) == pytest.approx(2 * (m / target - 1) / target)
    # through the loss: the logged sparsity term is (m / T - 1)^2
    cfg = TrainConfig(
        architecture="jumprelu", d_sae=[D_SAE], jumprelu_target_l0=5.0, pre_act_coefficient=0.0
    )
    out, _ = _grads("jumprelu", "never", cfg)
    m = float(out.active) / 96
    assert float(out.aux) == pytest.approx((m / 5.0 - 1) ** 2, rel=1e-9)
    torch.testing.assert_close(
        out.loss.double(), (out.sq_err + 0.05 * 96 * (m / 5.0 - 1) ** 2).double() / 96
    )


def test_jumprelu_training_reaches_its_target_l0() -> None:
    """--jumprelu-target-l0: two targets end near their own L0 on held-out rows (the
    linear penalty at its default coefficient ends near dense on this small dictionary)."""

    def held_l0(target: float) -> float:
        cfg = TrainConfig(
            architecture="jumprelu",
            d_sae=[64],
            batch_size=256,
            lr=3e-3,
            jumprelu_target_l0=target,
            progress=False,
        )
        sae = train_on_batches(_data(300, n=256), cfg).saes[0]
        with torch.no_grad():
            return float((sae.encode(_data(1, n=2000, seed=9)[0]) != 0).sum(1).float().mean())

    for target in (4.0, 12.0):
        assert held_l0(target) == pytest.approx(target, rel=0.2)
    assert held_l0(0.0) > 40  # off: the linear term


def test_jumprelu_target_options_are_checked() -> None:
    for bad in (
        {"jumprelu_target_l0": -1.0},
        {"jumprelu_target_l0": float(D_SAE)},
        {"jumprelu_target_l0": 4.0, "jumprelu_target_coefficient": 0.0},
    ):
        with pytest.raises(SaescopeError, match="jumprelu_target"):
            TrainConfig(architecture="jumprelu", d_sae=[D_SAE], **bad)


def test_jumprelu_sparse_path_covers_the_kernel_window() -> None:
    """Pairs just below the threshold carry a threshold gradient and no code: the sparse
    path must gather them too (else d log_t would lose their term)."""
    cfg = TrainConfig(architecture="jumprelu", d_sae=[D_SAE])
    _, dense = _grads("jumprelu", "never", cfg, eps=0.2)
    _, sparse = _grads("jumprelu", "always", cfg, eps=0.2)
    torch.testing.assert_close(sparse["log_threshold"], dense["log_threshold"], rtol=1e-9, atol=0)


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu", "matryoshka_batchtopk"])
def test_training_is_the_same_on_either_path(arch: str) -> None:
    batches = _data(6)
    saes = [
        train_on_batches(
            batches,
            TrainConfig(architecture=arch, d_sae=[D_SAE], k=[K], batch_size=128, sparse_backward=p),
        ).saes[0]
        for p in ("never", "always")
    ]
    for name, t in saes[0].state_tensors().items():
        torch.testing.assert_close(saes[1].state_tensors()[name], t, rtol=1e-4, atol=1e-5)


# -- ReLU + L1 ---------------------------------------------------------------------


def test_relu_decoder_norm_variant_trains_free_rows_and_saves_unit_rows() -> None:
    cfg = TrainConfig(
        architecture="relu",
        d_sae=[D_SAE],
        batch_size=128,
        lr=1e-2,
        relu_l1="decoder_norm",
        input_norm="none",  # the reconstruction below is checked on rows as they are
    )
    batches = _data(8)
    trainer = Trainer(cfg, D_IN, batches[0], len(batches))
    for b in batches:
        trainer.train_step(b)
    tr = trainer.trainees[0]
    norms = tr.sae.W_dec.detach().norm(dim=1)
    assert (norms - 1).abs().max() > 1e-3  # the rows moved off the unit sphere
    saved = trainer.export(tr)
    assert torch.allclose(saved.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-5)
    x = batches[0][:50]
    with torch.no_grad():  # the same reconstruction as the training SAE
        x_hat_train = tr.sae(trainer.normalise(x)).x_hat / trainer.scale
        torch.testing.assert_close(saved(x).x_hat, x_hat_train, atol=1e-4, rtol=1e-4)


def test_relu_penalty_is_weighted_by_decoder_norms_only_in_the_anthropic_variant() -> None:
    sae = _random_sae("relu")
    with torch.no_grad():
        sae.W_dec.mul_(2.0)  # rows of norm 2
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = torch.relu(sae.pre_activations(x)).detach()
    for variant, factor in (("unit_decoder", 1.0), ("decoder_norm", 2.0)):
        cfg = TrainConfig(architecture="relu", relu_l1=variant, unit_norm_decoder=True)
        ctx = LossContext(
            32,
            torch.zeros(D_SAE, dtype=torch.bool),
            None,
            0,
            0.0,
            1.0,
            1e-3,
            lambda t: t,
            options=cfg,
        )
        out = sae.arch.loss(sae, x, ctx, None)
        assert out.aux.item() == pytest.approx(factor * z.sum().item() / 32, rel=1e-9)


def test_relu_unit_decoder_penalty_needs_unit_rows() -> None:
    with pytest.raises(SaescopeError, match="decoder_norm"):
        TrainConfig(architecture="relu", unit_norm_decoder=False)
    assert math.isfinite(TrainConfig(architecture="relu", relu_l1="decoder_norm").l1_coefficient)


@pytest.mark.parametrize("seed", range(4))
def test_batchtopk_candidate_search_is_exact(seed: int) -> None:
    from saescope.sae.archs.batchtopk import top_values

    g = torch.Generator().manual_seed(seed)
    flat = torch.relu(torch.randn(256 * 384, generator=g) - 1.0)
    flat[: 384 * 8] += 3.0  # hot first rows: the strided sample must not be trusted blindly
    for n in (1, 100, 256 * 8, 256 * 32):
        ref = torch.topk(flat, n).values
        got = top_values(flat, n).sort(descending=True).values
        assert torch.equal(got, ref)


def test_batchtopk_candidate_search_narrows_ordinary_batches() -> None:
    """On an ordinary batch the sampled cut-off lets through about 4n/3 values, so the
    exact topk runs on those and not on the whole batch (it used to keep too few and fall
    back every step)."""
    from saescope.sae.archs.batchtopk import candidates

    g = torch.Generator().manual_seed(0)
    flat = torch.relu(torch.randn(512 * 768, generator=g))
    for n in (512 * 8, 512 * 32):
        cand = candidates(flat, n, 17)
        assert cand is not None
        assert n <= cand.numel() <= 2 * n


def test_train_help_lists_its_own_options_before_the_architectures() -> None:
    """`saescope train --help`: --run and the common options first, then every
    architecture's options in their own group (a dataclass puts inherited fields first)."""
    import argparse

    from saescope.config import add_config_args

    parser = argparse.ArgumentParser(prog="saescope train")
    add_config_args(parser, TrainConfig)
    text = parser.format_help()
    group = text.index("Options of the architectures")
    assert text.index("  --run RUN") < text.index("  --grad-clip GRAD_CLIP") < group
    for flag in ("--sparse-backward", "--l0-coefficient", "--matryoshka-groups", "--relu-l1"):
        assert text.index(f"  {flag}") > group, flag
    args = parser.parse_args(["--run", "r", "--l0-coefficient", "0.5"])
    assert args.run == "r" and args.l0_coefficient == 0.5


def test_batchtopk_threshold_follows_a_drifting_cut_off_in_a_short_run() -> None:
    """The running threshold's rate is at least 10 / total steps: over a 40-step run whose
    smallest kept activation drifts down (as it did on MiniLM embeddings, 0.072 to 0.058)
    the saved threshold ends near the last cut-offs, where the configured 0.05 alone lags
    behind by over a quarter of the drift; a long run keeps the configured rate."""
    from saescope.sae.archs.batchtopk import threshold_rate, threshold_step

    steps = 40
    cuts = [0.072 - 0.014 * s / (steps - 1) for s in range(steps)]

    def final(rate: float) -> float:
        running = math.inf
        for step, cut in enumerate(cuts):
            running = threshold_step(running, cut, rate, step)
        return running

    assert threshold_rate(0.05, steps) == pytest.approx(0.25)
    assert threshold_rate(0.05, 10_000) == 0.05 and threshold_rate(0.05, 0) == 0.05
    last_tenth = sum(cuts[-4:]) / 4
    assert abs(final(threshold_rate(0.05, steps)) - last_tenth) < 0.1 * 0.014
    assert final(0.05) - cuts[-1] > 0.25 * 0.014


def test_jumprelu_starts_at_the_asked_l0_with_a_fitted_encoder_scale() -> None:
    """--jumprelu-init-l0: the initial threshold keeps that many latents a row of the init
    sample, the encoder is scaled to the least-squares fit of those codes (a 10% larger or
    smaller scale reconstructs worse), and the trained log threshold starts there; 0 keeps
    the fixed --jumprelu-init-threshold and the tied encoder unscaled."""
    from saescope.train.trainer import Trainer

    g = torch.Generator().manual_seed(3)
    sample = torch.relu(torch.randn(512, 64, generator=g) - 1.0) @ torch.randn(
        64, D_IN, generator=g
    )
    sample = sample / sample.pow(2).sum(1).mean().sqrt()  # unit mean square norm, as trained

    def start(l0: float) -> tuple[SAE, torch.Tensor]:
        cfg = TrainConfig(
            architecture="jumprelu",
            d_sae=[D_SAE],
            jumprelu_init_l0=l0,
            scale_inputs=False,
            input_norm="none",  # the threshold is checked on `sample` as it is
        )
        tr = Trainer(cfg, D_IN, sample, total_steps=10).trainees[0]
        assert tr.extra is not None
        return tr.sae, tr.extra.detach().exp()

    sae, t = start(6.0)
    with torch.no_grad():
        h = sae.pre_activations(sample)
    assert float((h > t).sum(1).float().mean()) == pytest.approx(6.0, abs=0.01)
    torch.testing.assert_close(t, sae.threshold.detach().float(), rtol=1e-6, atol=0)

    def sq_err(scale: float) -> float:
        z = scale * h * (h > t)  # the same latents: threshold and codes scale together
        with torch.no_grad():
            return float(((sample - sae.b_dec) - z @ sae.W_dec).pow(2).sum())

    assert sq_err(1.0) < min(sq_err(0.9), sq_err(1.1))
    fixed, t0 = start(0.0)
    torch.testing.assert_close(t0, torch.full((D_SAE,), 0.05), rtol=1e-6, atol=0)
    torch.testing.assert_close(fixed.W_enc, fixed.W_dec.t())  # tied, unscaled
