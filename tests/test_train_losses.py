"""Training losses and weight handling: JumpReLU estimators, BatchTopK inference,
unit-norm decoder, and the input scale folded into saved weights."""

import math

import pytest
import torch

from saescope.sae import SAE, SAEConfig
from saescope.sae.archs import _loss as L
from saescope.train import TrainConfig, losses, train_on_batches
from saescope.train.trainer import Trainer, project_decoder_grad

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _identity_sae() -> SAE:
    """d_in = d_sae = 1 with h = x and x_hat = z."""
    sae = SAE(SAEConfig("jumprelu", 1, 1))
    with torch.no_grad():
        sae.W_enc.fill_(1.0)
        sae.W_dec.fill_(1.0)
    return sae.double()


def _ctx(n: int, coef: float, eps: float) -> losses.LossContext:
    return losses.LossContext(
        n, torch.zeros(1, dtype=torch.bool), None, 0, 0.0, coef, eps, lambda t: t
    )


@pytest.mark.parametrize("coef", [0.0, 0.3])
def test_jumprelu_log_threshold_gradient_matches_expected_loss(coef):
    # h = x ~ Uniform(0, 2) on a fine grid; x_hat = x * H(x - t), so per row
    # L = x^2 [x < t] + coef [x > t] and E[L](t) = t^3 / 6 + coef * (2 - t) / 2.
    # The kernel-density pseudo-derivative must match d E[L] / d log t = t * dE/dt.
    n, eps, t = 400_001, 0.004, 0.8
    x = torch.linspace(0, 2, n, dtype=torch.float64)[:, None]
    sae = _identity_sae()
    log_t = torch.tensor([math.log(t)], dtype=torch.float64, requires_grad=True)
    out = losses.jumprelu_loss(sae, x, _ctx(n, coef, eps), log_t)
    (grad,) = torch.autograd.grad(out.loss, log_t)

    def expected(lt: float) -> float:
        tt = math.exp(lt)
        return tt**3 / 6 + coef * (2 - tt) / 2

    d = 1e-5
    fd = (expected(math.log(t) + d) - expected(math.log(t) - d)) / (2 * d)
    assert grad.item() == pytest.approx(fd, rel=0.02)
    # the chain-rule factor t matters: without it the gradient would be off by 1/t
    assert abs(grad.item() - fd / t) > 0.1 * abs(fd)


def test_jumprelu_l0_gradient_is_finite_difference_of_smoothed_l0():
    # The L0 pseudo-derivative is exactly the derivative of the rectangle-kernel
    # smoothed step sum S((h - t) / eps), S(u) = clamp(u + 1/2, 0, 1).
    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 6, generator=g, dtype=torch.float64) * 0.3 + 0.5
    eps = 0.2
    log_t = torch.log(torch.tensor([0.3, 0.4, 0.5, 0.6, 0.7, 0.9], dtype=torch.float64))
    lt = log_t.clone().requires_grad_()
    losses.Step.apply(h, lt.exp(), eps).sum().backward()

    def smoothed(lt_: torch.Tensor) -> torch.Tensor:
        return ((h - lt_.exp()) / eps + 0.5).clamp(0, 1).sum(0)

    d = 1e-6
    for j in range(6):
        e = torch.zeros(6, dtype=torch.float64)
        e[j] = d
        fd = (smoothed(log_t + e)[j] - smoothed(log_t - e)[j]) / (2 * d)
        assert lt.grad[j].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-6)


def _data(n_batches: int, n: int = 256, d_in: int = 16, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(64, d_in, generator=g)
    out = []
    for _ in range(n_batches):
        z = torch.relu(torch.randn(n, 64, generator=g) - 1.5)
        out.append((z @ basis + 0.3) * scale)
    return out


def test_batchtopk_codes_do_not_depend_on_the_batch():
    cfg = TrainConfig(architecture="batchtopk", d_sae=[48], k=[4], batch_size=256, lr=3e-3)
    batches = _data(30)
    sae = train_on_batches(batches, cfg).saes[0]
    assert sae.threshold.min() > 0 and torch.all(sae.threshold == sae.threshold[0])
    x = batches[0][:40]
    together = sae.encode(x)
    alone = torch.cat([sae.encode(x[i : i + 1]) for i in range(len(x))])
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    shuffled = sae.encode(torch.cat([x[perm], batches[1][:7]]))[: len(x)]
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together[perm], shuffled, atol=1e-5)
    assert 2.0 < (together > 0).sum(1).float().mean() < 8.0  # k = 4 on average


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_decoder_rows_stay_unit_norm(arch):
    cfg = TrainConfig(
        architecture=arch, d_sae=[40], k=[4], batch_size=128, lr=1e-2, l1_coefficient=0.1
    )
    trainer = Trainer(cfg, 16, _data(1)[0], 20)
    for b in _data(8, n=128, seed=1):
        trainer.train_step(b)
    norms = trainer.trainees[0].sae.W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_decoder_gradient_parallel_component_removed():
    W = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(5, 3), dim=1))
    W.grad = torch.randn(5, 3)
    project_decoder_grad(W)
    assert torch.allclose((W.grad * W).sum(1), torch.zeros(5), atol=1e-6)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_saved_sae_on_raw_inputs_equals_training_sae_on_scaled_inputs(arch):
    # rows as they come (input_norm auto would standardise these): what is checked is
    # the scaling alone
    cfg = TrainConfig(
        architecture=arch, d_sae=[40], k=[4], batch_size=128, lr=3e-3, input_norm="none"
    )
    batches = _data(6, n=128, scale=50.0)  # far from unit norm
    trainer = Trainer(cfg, 16, batches[0], 6)
    for b in batches:
        trainer.train_step(b)
    s = trainer.scale
    assert s < 0.1
    tr = trainer.trainees[0]
    saved = trainer.export(tr)
    x = batches[0][:50]
    xs = trainer.normalise(x)
    with torch.no_grad():
        h_train = tr.sae.pre_activations(xs)
        h_raw = saved.encode_full(x).pre_acts
        assert torch.allclose(h_raw * s, h_train, atol=1e-4)
        codes_raw = saved.encode(x)
        x_hat_raw = saved.decode(codes_raw)
        x_hat_train = tr.sae.decode(codes_raw * s)
        assert torch.allclose(x_hat_raw * s, x_hat_train, atol=1e-4)
        if arch == "topk":
            assert torch.allclose(codes_raw * s, tr.sae.encode(xs), atol=1e-5)
        if arch in ("batchtopk", "jumprelu"):
            t_train = (
                torch.full((40,), tr.batch_threshold)
                if arch == "batchtopk"
                else tr.log_threshold.detach().exp()
            )
            assert torch.allclose(saved.threshold * s, t_train, rtol=1e-5)


def test_auxk_trains_dead_latents_only_through_the_residual():
    cfg = TrainConfig(d_sae=[64], k=[2], batch_size=128, lr=1e-2, dead_after_samples=1000)
    trainer = Trainer(cfg, 16, _data(1)[0], 10)
    tr = trainer.trainees[0]
    dead = torch.zeros(64, dtype=torch.bool)
    dead[32:] = True
    tr.samples_since_fired[dead] = 10_000  # latents 32.. count as dead
    before = tr.sae.W_enc.detach().clone()
    trainer.train_step(_data(1, n=128, seed=3)[0], want_metrics=True)
    assert tr.last["aux"] > 0 and tr.last["dead_fraction"] > 0
    moved = (tr.sae.W_enc.detach() - before).abs().sum(0) > 0  # (d_sae,)
    assert moved[dead].float().mean() > 0.5  # the aux loss reached dead latents' encoders
    cfg_off = TrainConfig(d_sae=[64], k=[2], batch_size=128, aux_coefficient=0.0)
    off = Trainer(cfg_off, 16, _data(1)[0], 10)
    off.trainees[0].samples_since_fired[dead] = 10_000
    off.train_step(_data(1, n=128, seed=3)[0], want_metrics=True)
    assert off.trainees[0].last["aux"] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_dead", [5, 32, 40, 300])
def test_aux_indices_are_the_top_dead_pre_activations(dtype, n_dead):
    """Searching only the dead columns picks what ranking the whole masked row picks."""
    gen = torch.Generator().manual_seed(n_dead)
    h = torch.randn(64, 1024, generator=gen).to(dtype)
    dead = torch.zeros(1024, dtype=torch.bool)
    dead[torch.randperm(1024, generator=gen)[:n_dead]] = True
    k_aux = 32
    ctx = losses.LossContext(64, dead, 4, k_aux, 1 / 32, 0.0, 1e-3, lambda t: t)
    idx = losses._aux_indices(h, ctx)
    assert idx is not None and idx.shape == (64, min(k_aux, n_dead))
    assert dead[idx].all()
    ref = torch.topk(h.float().masked_fill(~dead, -math.inf), min(k_aux, n_dead), dim=1).values
    got = h.float().gather(1, idx).sort(dim=1, descending=True).values
    assert torch.equal(got, ref)
    assert losses._aux_indices(h, ctx._replace(dead=torch.zeros_like(dead))) is None


def _random_topk(d_in: int, d_sae: int, k: int, g: torch.Generator, dtype: torch.dtype) -> SAE:
    """A TopK SAE with every weight drawn from `g` (scale 0.3), in `dtype`."""
    sae = SAE(SAEConfig("topk", d_in, d_sae, k=k)).to(dtype)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.3)
    return sae


@pytest.mark.parametrize("select", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("n_dead", [6, 40])
def test_auxk_through_positive_pairs_only_equals_the_dense_auxk(select, n_dead):
    """AuxK encodes and decodes only the dead pairs with a positive pre-activation; value
    and every gradient are those of relu over all of them through dense autograd, whether
    the selection pre-activations are exact (float64 here) or rounded (bfloat16)."""
    g = torch.Generator().manual_seed(n_dead)
    sae = _random_topk(16, 64, 4, g, torch.float64)
    x = torch.randn(128, 16, generator=g, dtype=torch.float64)
    x_hat = torch.randn(128, 16, generator=g, dtype=torch.float64)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[torch.randperm(64, generator=g)[:n_dead]] = True
    ctx = L.LossContext(128, dead, 4, 24, 1.0, 0.0, 1e-3, lambda t: t)  # k_aux 24
    params = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    with torch.no_grad():
        h = sae.pre_activations(x)
    aux_idx = L.aux_indices(h.to(select), ctx)
    assert aux_idx is not None
    codes = L.aux_codes(sae, x, L.aux_pairs(sae, x, aux_idx, h.to(select).gather(1, aux_idx)))
    assert codes is not None
    n_pairs = aux_idx.numel()
    assert 0 < codes.rg.rows.numel() < n_pairs  # some pairs are dropped, some kept
    loss, _ = L.add_aux(torch.zeros((), dtype=torch.float64), sae, x, x_hat, codes, ctx)
    ours = torch.autograd.grad(loss, params)

    z = torch.relu(sae.pre_activations(x).gather(1, aux_idx))  # (128, m), dense autograd
    e_hat = (z.unsqueeze(2) * sae.W_dec[aux_idx]).sum(1)
    ref_loss = L.aux_loss(e_hat, x - x_hat, ctx)
    ref = torch.autograd.grad(ref_loss, params)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    for name, a, b in zip(("W_enc", "b_enc", "W_dec", "b_dec"), ours, ref, strict=True):
        assert b.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("select", [torch.float32, torch.bfloat16, torch.int8])
def test_topk_selection_in_row_chunks_equals_the_whole_batch(monkeypatch, select):
    """On CPU the TopK selection matmul runs a chunk of rows at a time; loss, AuxK and every
    gradient are those of one matmul over the whole batch."""
    g = torch.Generator().manual_seed(11)
    sae = _random_topk(24, 96, 5, g, torch.float32)
    x = torch.randn(200, 24, generator=g)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[::4] = True
    ctx = L.LossContext(200, dead, 5, 12, 1 / 32, 0.0, 1e-3, lambda t: t, select_dtype=select)
    params = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    results = []
    for chunk_bytes in (1 << 30, 32 * 96 * 4):  # whole; 32 rows a chunk (7 chunks)
        monkeypatch.setattr(L, "CHUNK_BYTES", chunk_bytes)
        expected = 200 if chunk_bytes > 1 << 20 else 32
        assert L.chunk_rows(200, 96, torch.float32, x.device) >= expected
        out = sae.arch.loss(sae, x, ctx, None)
        results.append((out, torch.autograd.grad(out.loss, params)))
    (whole, g_whole), (chunked, g_chunked) = results
    assert whole.aux > 0
    for field in ("loss", "sq_err", "aux", "active"):
        torch.testing.assert_close(getattr(chunked, field), getattr(whole, field))
    assert torch.equal(chunked.fired, whole.fired)
    for a, b in zip(g_chunked, g_whole, strict=True):
        torch.testing.assert_close(a, b)


def test_topk_loss_with_auxk_has_the_gradients_of_dense_autograd():
    """TopK's sparse step (latents and AuxK pairs through one encoder backward, positive
    AuxK pairs only) against the same loss written densely."""
    g = torch.Generator().manual_seed(21)
    sae = _random_topk(12, 48, 4, g, torch.float64)
    x = torch.randn(64, 12, generator=g, dtype=torch.float64)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[::3] = True
    ctx = L.LossContext(64, dead, 4, 10, 0.5, 0.0, 1e-3, lambda t: t, select_dtype=torch.float64)
    params = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    out = sae.arch.loss(sae, x, ctx, None)
    ours = torch.autograd.grad(out.loss, params)

    h = sae.pre_activations(x)  # (64, 48), dense autograd
    top = torch.topk(h.detach(), 4, dim=1).indices
    z = torch.zeros_like(h).scatter(1, top, torch.relu(h.gather(1, top)))
    x_hat = z @ sae.W_dec + sae.b_dec
    dead_pre = h.detach().masked_fill(~dead, -math.inf)
    aux_idx = torch.topk(dead_pre, 10, dim=1).indices
    e = torch.zeros_like(h).scatter(1, aux_idx, torch.relu(h.gather(1, aux_idx)))
    aux = L.aux_loss(e @ sae.W_dec, (x - x_hat).detach(), ctx)
    ref_loss = (x_hat - x).pow(2).sum() / 64 + 0.5 * aux
    ref = torch.autograd.grad(ref_loss, params)
    assert aux > 0
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-10, atol=1e-12)
    for name, a, b in zip(("W_enc", "b_enc", "W_dec", "b_dec"), ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize(
    ("amx", "cap", "expected"),
    [
        (True, None, torch.bfloat16),
        # oneDNN capped below AMX (bfloat16 is emulated there), or no AMX: None, the trainer
        # times float32 against int8 (tests/test_train_selection.py)
        (True, "AVX2", None),
        (True, "avx512_core_amx", torch.bfloat16),
        (True, "ALL", torch.bfloat16),
        (False, None, None),
    ],
)
def test_auto_selection_takes_bfloat16_only_where_onednn_may_use_amx(
    monkeypatch, amx, cap, expected
):
    from saescope.train.trainer import select_dtype

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    cpu = torch.device("cpu")
    assert select_dtype("auto", cpu) == expected
    assert select_dtype("float32", cpu) == torch.float32  # an explicit choice wins
    assert select_dtype("bfloat16", cpu) == torch.bfloat16
    assert select_dtype("int8", cpu) == torch.int8
