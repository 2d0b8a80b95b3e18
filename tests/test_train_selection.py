"""TopK latent selection in a cheaper dtype (bfloat16, int8): the rerank by exact values,
and `select_precision auto` timing float32 against int8 on CPUs without AMX."""

import os
import subprocess
import sys

import pytest
import torch

from saescope.sae import SAE, SAEConfig
from saescope.sae.archs import _loss as L
from saescope.sae.archs import topk
from saescope.sae.kernels import quantize_int8
from saescope.train import TrainConfig, train_on_batches
from saescope.train import trainer as trainer_mod
from saescope.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sae_and_rows(seed: int = 3) -> tuple[SAE, torch.Tensor]:
    """A TopK SAE (d_in 64, d_sae 512, k 8) with random weights and 400 random rows."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig("topk", 64, 512, k=8))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(64, 512, generator=g) / 8)
        sae.b_enc.copy_(torch.randn(512, generator=g) * 0.05)
        sae.b_dec.copy_(torch.randn(64, generator=g) * 0.1)
    return sae, torch.randn(400, 64, generator=g)


def _ctx(n: int, dt: torch.dtype) -> L.LossContext:
    dead = torch.zeros(512, dtype=torch.bool)
    return L.LossContext(n, dead, 8, 32, 1 / 32, 0.0, 1e-3, lambda t: t, select_dtype=dt)


def _as_sets(idx: torch.Tensor) -> torch.Tensor:
    return idx.sort(dim=1).values


def test_quantize_int8_round_trips_within_half_a_step():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(50, 30, generator=g) * torch.logspace(-3, 3, 50).unsqueeze(1)
    q, scale = quantize_int8(t)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    assert scale.shape == (50, 1)
    assert ((q.float() * scale - t).abs() <= scale / 2 * (1 + 1e-6)).all()
    # every row uses its whole range: the small rows are not flattened to zero
    assert (q.abs().amax(1) == 127).all()
    # a narrower range (the CPUs whose int8 product saturates beyond 64)
    q, scale = quantize_int8(t, levels=64)
    assert (q.abs().amax(1) == 64).all()
    assert ((q.float() * scale - t).abs() <= scale / 2 * (1 + 1e-6)).all()


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.int8])
def test_cheap_selection_reranked_gives_the_exact_top_k(dt):
    """The approximate product alone misranks the k-th latent in some rows; keeping
    k + k/2 candidates and taking the k largest exact values gives the float32 top k,
    with exact values."""
    sae, x = _sae_and_rows()
    with torch.no_grad():
        h = L.select_pre_acts(sae, x, torch.float64).float()  # exact reference
        exact = torch.topk(h, 8, dim=1).indices
        approx = L.selection_scores(sae, x, dt)(0, len(x)).float()
        plain = torch.topk(approx, 8, dim=1).indices
    assert (_as_sets(plain) != _as_sets(exact)).any(dim=1).sum() > 0  # the rerank matters
    sel = topk.select(sae, x, _ctx(len(x), dt))
    assert torch.equal(_as_sets(sel.idx), _as_sets(exact))
    assert sel.vals.dtype == torch.float32
    torch.testing.assert_close(sel.vals, h.gather(1, sel.idx), rtol=1e-5, atol=1e-6)


def test_int8_selection_takes_any_shape():
    """d_in 37 (no multiple of 8) and a d_sae below the rerank width's need."""
    g = torch.Generator().manual_seed(6)
    sae = SAE(SAEConfig("topk", 37, 20, k=16))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(37, 20, generator=g))
    x = torch.randn(9, 37, generator=g)
    ctx = _ctx(9, torch.int8)._replace(k=16, dead=torch.zeros(20, dtype=torch.bool))
    sel = topk.select(sae, x, ctx)  # 16 + 8 candidates asked of 20 latents: all 20
    want = torch.topk(L.select_pre_acts(sae, x, torch.float32), 16, dim=1).indices
    assert torch.equal(_as_sets(sel.idx), _as_sets(want))


def test_int8_selection_trains_like_float32():
    """Same latents, so the same loss and gradients (to float32 rounding) as the float32
    path, AuxK included (26 dead latents, no more than k_aux: all of them are taken; with
    more, AuxK ranks them by the approximate product)."""
    sae, x = _sae_and_rows(5)
    dead = torch.zeros(512, dtype=torch.bool)
    dead[::20] = True
    params = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    results = []
    for dt in (torch.float32, torch.int8):
        ctx = _ctx(len(x), dt)._replace(dead=dead)
        out = sae.arch.loss(sae, x, ctx, None)
        results.append((out, torch.autograd.grad(out.loss, params)))
    (f32, g32), (i8, gi8) = results
    assert f32.aux > 0
    for field in ("loss", "sq_err", "aux", "active"):
        torch.testing.assert_close(getattr(i8, field), getattr(f32, field), rtol=1e-5, atol=1e-6)
    for a, b in zip(gi8, g32, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# Run under ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN reads it at its first use, hence a new process):
# what an AVX2-only CPU gets. Prints the levels chosen, whether the product at those levels
# is exact, whether it is at 127, and whether the reranked int8 selection is the exact top k.
_AVX2_CHECK = """
import torch
from saescope.sae import SAE, SAEConfig
from saescope.sae.archs import _loss as L, topk
from saescope.sae.kernels import int8_matmul_levels, quantize_int8

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 384, generator=g)
w = torch.randn(3072, 384, generator=g)
levels = int8_matmul_levels()
xq, _ = quantize_int8(x)
def exact(wq):
    return torch.equal(torch._int_mm(xq, wq.t()).long(), xq.long() @ wq.long().t())
sae = SAE(SAEConfig("topk", 384, 3072, k=32))
with torch.no_grad():
    sae.W_enc.copy_(w.t() / 20)
dead = torch.zeros(3072, dtype=torch.bool)
ctx = L.LossContext(256, dead, 32, 64, 1 / 32, 0.0, 1e-3, lambda t: t, select_dtype=torch.int8)
sel = topk.select(sae, x, ctx).idx.sort(1).values
want = torch.topk(L.select_pre_acts(sae, x, torch.float64), 32, dim=1).indices.sort(1).values
print(levels, exact(quantize_int8(w, levels)[0]), exact(quantize_int8(w)[0]),
      torch.equal(sel, want))
"""


def test_int8_selection_is_exact_on_an_avx2_cpu():
    """Without VNNI, oneDNN sums int8 products in int16 pairs, which saturate: W_enc's
    int8 copy at 127 levels came out 25% off. The probe then narrows it to 64, where the
    product is exact and the reranked selection is the exact top k."""
    env = os.environ | {"ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _AVX2_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    levels, exact, exact_at_127, selection_exact = out.stdout.split()
    assert exact == "True" and selection_exact == "True"
    # 127 wherever the full range is exact, 64 only where it is not
    assert levels == ("127" if exact_at_127 == "True" else "64")


@pytest.fixture
def no_amx(monkeypatch):
    """A CPU without AMX, and an empty cache of timed decisions."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(trainer_mod, "_TIMED", {})


def _fake_seconds(monkeypatch, int8: float, float32: float) -> list[torch.dtype]:
    """Make the TopK selection timing report these seconds; returns the dtypes timed."""
    timed: list[torch.dtype] = []

    def seconds(self, sae, x, ctx):
        timed.append(ctx.select_dtype)
        return int8 if ctx.select_dtype == torch.int8 else float32

    monkeypatch.setattr(topk.TopK, "selection_seconds", seconds)
    return timed


def _trainer(x: torch.Tensor, **kw) -> Trainer:
    cfg = TrainConfig(architecture="topk", d_sae=[128], k=[4], batch_size=64, **kw)
    return Trainer(cfg, x.shape[1], x, total_steps=4)


def test_auto_takes_int8_only_with_a_clear_lead(no_amx, monkeypatch):
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    timed = _fake_seconds(monkeypatch, int8=0.095, float32=0.1)  # 5% faster: not enough
    tr = _trainer(x)
    assert timed == [torch.float32, torch.int8]
    assert tr.select_dtype == torch.float32
    assert tr.selection.startswith("float32 (auto: int8 95.0 ms, float32 100.0 ms")

    monkeypatch.setattr(trainer_mod, "_TIMED", {})
    timed = _fake_seconds(monkeypatch, int8=0.05, float32=0.1)
    tr = _trainer(x)
    assert tr.select_dtype == torch.int8
    assert tr.selection.startswith("int8 (auto: int8 50.0 ms")
    # a second trainer of the same shape in this process takes the same path untimed
    timed.clear()
    assert _trainer(x).select_dtype == torch.int8 and timed == []
    # an explicit choice is never timed
    assert _trainer(x, select_precision="float32").select_dtype == torch.float32
    assert timed == []


def test_auto_timed_int8_trains_and_a_resume_keeps_the_path(no_amx, monkeypatch):
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(2))
    _fake_seconds(monkeypatch, int8=0.01, float32=0.1)
    tr = _trainer(x)
    for b in x.split(64)[:3]:
        tr.train_step(b, want_metrics=True)
    assert tr.select_dtype == torch.int8
    assert tr.trainees[0].last["l0"] == pytest.approx(4.0)
    state = tr.state_dict()
    assert state["select_dtype"] == "int8"

    # resumed where timing now favours float32: the run keeps int8
    monkeypatch.setattr(trainer_mod, "_TIMED", {})
    _fake_seconds(monkeypatch, int8=0.1, float32=0.01)
    resumed = _trainer(x)
    assert resumed.select_dtype == torch.float32
    resumed.load_state_dict(state)
    assert resumed.select_dtype == torch.int8
    assert "kept from the checkpoint" in resumed.selection


def test_auto_times_the_real_selection_and_reports_it(no_amx):
    """Unpatched: the timing runs both real selections and the result names its choice."""
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(4))
    cfg = TrainConfig(architecture="topk", d_sae=[128], k=[4], batch_size=64)
    result = train_on_batches(list(x.split(64)), cfg, init_sample=x)
    assert result.selection.split(" ")[0] in ("float32", "int8")
    assert "auto: int8 " in result.selection and " ms for 64 rows" in result.selection  # a batch
    # an architecture without a selection matmul is not timed
    relu = TrainConfig(architecture="relu", d_sae=[128], batch_size=64)
    assert train_on_batches(list(x.split(64)), relu).selection.startswith("none (no selection")


def test_int8_selection_is_refused_off_cpu():
    from saescope.errors import SaescopeError
    from saescope.train.trainer import select_dtype

    with pytest.raises(SaescopeError, match="int8 runs on CPU only"):
        select_dtype("int8", torch.device("cuda"))
