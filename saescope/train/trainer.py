"""The training loop over any stream of batches, for one or several SAEs at once.

In: a `TrainConfig`, d_in, an init sample (n_rows, d_in) of raw inputs and an
iterator of raw global batches (batch_size, d_in). Out: trained `SAE`s that take
raw inputs (the training scale folded into their weights), plus per-step metrics
through a callback. `Trainer.state_dict()` / `load_state_dict()` hold everything a
bit-exact resume needs; the stage (`saescope.train.stage`) adds files around it.

One step, per SAE: loss (its architecture's, `saescope.sae.archs`) -> backward -> sum
gradients over ranks -> remove the decoder-gradient component parallel to each row ->
clip -> Adam with the scheduled LR -> renormalise decoder rows -> update dead-latent
counters and the architecture's running value (the BatchTopK threshold). Nothing here
depends on which architecture trains: the trainer asks the registry.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from saescope.device import onednn_allows
from saescope.errors import SaescopeError, SaescopeWarning
from saescope.sae import SAE, SAEConfig, archs
from saescope.sae.archs import Architecture
from saescope.sae.model import row_standardize
from saescope.train import losses
from saescope.train.config import TrainConfig
from saescope.train.ddp import Dist
from saescope.train.init import init_sae, input_scale
from saescope.train.optim import Adam


class NonFiniteTraining(SaescopeError):
    """A NaN or infinite loss, gradient or weight: training stops before it is stored."""

    def __init__(self, step: int, name: str, what: str, kept: str) -> None:
        self.step = step  # 1-based, as in metrics.jsonl and the checkpoint names
        self.name = name  # the SAE variant, e.g. sae-4096-k32
        super().__init__(
            f"training stopped at step {step}: {name} got a non-finite {what}; {kept}. "
            "Look for NaN or inf (or float16 overflow) in the activation store, "
            "or retrain with a lower --lr"
        )


@dataclass
class Trainee:
    """One SAE in training with its optimiser and counters."""

    name: str
    sae: SAE
    k: int | None
    base_lr: float
    optimizer: Adam
    # the architecture's (d_sae,) float32 tensor trained beside the weights (jumprelu: the
    # log threshold); saved in checkpoints as "log_threshold"
    extra: torch.nn.Parameter | None
    samples_since_fired: torch.Tensor  # (d_sae,) int64
    # the architecture's running value (batchtopk family: mean of the smallest kept act)
    batch_threshold: float = math.inf
    last: dict[str, float] = field(default_factory=dict)

    @property
    def log_threshold(self) -> torch.nn.Parameter | None:
        return self.extra

    def params(self) -> list[torch.nn.Parameter]:
        ps = [self.sae.W_enc, self.sae.b_enc, self.sae.W_dec, self.sae.b_dec]
        return ps + ([self.extra] if self.extra is not None else [])


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Warm-up then (after lr_decay_start of training) linear or cosine decay."""
    warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else min(1000, total_steps // 20)
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if cfg.lr_decay == "none" or total_steps <= 0:
        return warm
    start = cfg.lr_decay_start * total_steps
    if step < start:
        return warm
    frac = min(1.0, (step - start) / max(1.0, total_steps - start))
    end = cfg.lr_end_fraction
    if cfg.lr_decay == "linear":
        return warm * (1.0 - (1.0 - end) * frac)
    return warm * (end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def project_decoder_grad(W_dec: torch.Tensor) -> None:
    """Remove from W_dec.grad the component parallel to each (unit) decoder row."""
    if W_dec.grad is None:
        return
    with torch.no_grad():
        # grad -= (<grad, w> / |w|^2) w per row, without materialising the unit rows or the
        # elementwise product: three passes over (d_sae, d_in) instead of six (the six took
        # 68 ms a step at d_sae 4608, d_in 576 on 2 busy cores)
        sq_norm = torch.linalg.vector_norm(W_dec, dim=1).square_().clamp_min_(1e-16)
        coef = torch.linalg.vecdot(W_dec.grad, W_dec).div_(sq_norm)  # (d_sae,)
        W_dec.grad.addcmul_(coef.unsqueeze(1), W_dec, value=-1.0)


SELECT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}
# auto takes int8 over float32 only when its timed selection is at least this much faster
# (close calls keep float32, whose selection needs no rerank)
INT8_MARGIN = 0.9
# (architecture, d_in, d_sae, k, threads) -> the dtype auto timed fastest in this process:
# every Trainer of a process then takes the same path (runs compared in one process stay
# comparable)
_TIMED: dict[tuple[str, int, int, int, int], torch.dtype] = {}


def select_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The dtype of the TopK selection matmul, or None where "auto" has to time it.

    auto: bfloat16 on CUDA and on CPUs with AMX tiles that oneDNN may use; on other CPUs
    None, and the trainer times float32 against int8 on the SAE at hand
    (`Trainer.selection`)."""
    if name != "auto":
        if name == "int8" and device.type != "cpu":
            raise SaescopeError("select_precision int8 runs on CPU only; use bfloat16 on GPUs")
        return SELECT_DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16
    if device.type != "cpu":
        return torch.float32
    # AMX only: on a CPU with AVX512-BF16 but no AMX, the selection matmul (4096 x 576 by
    # 576 x 4608) took 250 ms in bfloat16 against 160 ms in float32 (measured 2026-11-30)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if amx and onednn_allows("AMX") else None


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        d_in: int,
        init_sample: torch.Tensor,
        total_steps: int,
        dist: Dist | None = None,
        names: list[str] | None = None,
        device: torch.device | str = "cpu",
        rows: str = "texts",
    ) -> None:
        self.cfg = cfg
        self.d_in = d_in
        self.total_steps = total_steps
        self.dist = dist or Dist()
        self.device = torch.device(device)
        self.step = 0
        self.samples = 0
        self.arch: Architecture = archs.get(cfg.architecture)
        selects = "select_precision" in self.arch.reads  # only TopK has a selection matmul
        chosen = select_dtype(cfg.select_precision, self.device) if selects else torch.float32
        self.select_dtype = chosen or torch.float32
        self.unit_norm = self.arch.unit_norm_decoder(cfg)
        variants = cfg.variants()
        names = names or [f"sae-{d}-k{k}" if k else f"sae-{d}" for d, k in variants]
        self.rows = rows  # "texts" or "tokens"
        self.input_norm = cfg.resolved_input_norm(rows, init_sample)
        normed = init_sample.float()
        if self.input_norm == "row_standardize":
            normed = row_standardize(normed)[0]
        self.scale = input_scale(normed) if cfg.scale_inputs else 1.0
        sample = normed * self.scale
        self.trainees = [
            self._make(name, d_sae, k, sample, cfg.seed + i)
            for i, (name, (d_sae, k)) in enumerate(zip(names, variants, strict=True))
        ]
        # which selection matmul runs and why (recorded with the trained SAE)
        if not selects:
            self.selection = "none (no selection matmul in this architecture)"
        else:
            why = f"select_precision {cfg.select_precision}"
            if cfg.select_precision == "auto":
                why = {"cuda": "auto: CUDA", "cpu": "auto: AMX"}.get(self.device.type, "auto")
            self.selection = f"{_dtype_name(self.select_dtype)} ({why})"
        self.timed_selection = chosen is None
        if chosen is None:
            self.select_dtype, self.selection = self._time_selection(sample)

    def _make(
        self, name: str, d_sae: int, k: int | None, sample: torch.Tensor, seed: int
    ) -> Trainee:
        cfg = self.cfg
        sae_cfg = SAEConfig(
            cfg.architecture,
            self.d_in,
            d_sae,
            k=k,
            input_norm=self.input_norm,
            metadata=self.arch.sae_metadata(cfg, d_sae),
        )
        sae = init_sae(sae_cfg, sample, cfg.b_dec_init, seed, cfg).to(self.device)
        # W_enc (d_in, d_sae) stored latent-major while training: the TopK kernels read it
        # as W_enc.t() and write its gradient as a transpose, so either would otherwise
        # cost a strided copy of the whole matrix every step
        sae.W_enc = torch.nn.Parameter(sae.W_enc.detach().t().contiguous().t())
        sae.threshold.requires_grad_(False)
        extra = self.arch.extra_parameter(cfg, sae, self.device)
        lr = cfg.learning_rate(d_sae)
        params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec] + (
            [extra] if extra is not None else []
        )
        opt = Adam(params, cfg.adam_betas)
        counters = torch.zeros(d_sae, dtype=torch.int64, device=self.device)
        return Trainee(name, sae, k, lr, opt, extra, counters)

    def _time_selection(self, sample: torch.Tensor) -> tuple[torch.dtype, str]:
        """select_precision auto on a CPU without AMX: float32 or int8, whichever selects
        faster on the first SAE and up to a batch of sample rows (int8 needs a 10% lead;
        int8 pays a fixed cost per step, quantizing W_enc, so fewer rows would favour
        float32). Decided once per process and shape; under torchrun by a vote of the
        ranks."""
        tr = self.trainees[0]
        d_sae, k = tr.sae.cfg.d_sae, int(tr.k or 0)
        key = (self.arch.name, self.d_in, d_sae, k, torch.get_num_threads())
        if key in _TIMED:
            dt = _TIMED[key]
            why = "auto, timed earlier in this process"
        else:
            # at most ~8 GFLOP per timed selection (64 rows at least)
            cap = max(64, int(8e9 // (2 * self.d_in * d_sae)))
            rows = max(1, min(len(sample), self.cfg.batch_size // self.dist.world, cap))
            x = sample[:rows].to(self.device)
            ctx = self._context(tr, rows)
            f32 = self.arch.selection_seconds(tr.sae, x, ctx._replace(select_dtype=torch.float32))
            if f32 is None:
                return torch.float32, "float32 (this architecture has no selection matmul)"
            i8: float | None
            try:
                i8 = self.arch.selection_seconds(tr.sae, x, ctx._replace(select_dtype=torch.int8))
            except (RuntimeError, NotImplementedError):  # no int8 matmul here, or no exact one
                i8 = None
            faster = i8 is not None and i8 < INT8_MARGIN * f32
            votes = self.dist.all_sum(torch.tensor([float(faster)], device=self.device))
            dt = torch.int8 if 2 * float(votes[0]) > self.dist.world else torch.float32
            _TIMED[key] = dt
            i8_ms = "n/a" if i8 is None else f"{i8 * 1e3:.1f} ms"
            why = f"auto: int8 {i8_ms}, float32 {f32 * 1e3:.1f} ms for {rows} rows"
        return dt, f"{_dtype_name(dt)} ({why})"

    # -- one step ----------------------------------------------------------------
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw rows -> what the SAE trains on: row-standardised if asked, then scaled."""
        x = x.to(self.device, torch.float32)
        x, _, _ = self.trainees[0].sae._standardize(x)
        return x * self.scale

    @property
    def dead_after(self) -> int:
        if self.cfg.dead_after_samples >= 0:
            return self.cfg.dead_after_samples
        return self.arch.default_dead_after(self.cfg, self.total_steps * self.cfg.batch_size)

    def _context(self, tr: Trainee, n_global: int) -> losses.LossContext:
        cfg = self.cfg
        dead = tr.samples_since_fired >= self.dead_after
        ramp = 1.0
        if cfg.sparsity_warmup_steps > 0:
            ramp = min(1.0, (self.step + 1) / cfg.sparsity_warmup_steps)
        coef = self.arch.sparsity_coefficient(cfg)
        return losses.LossContext(
            n_global=n_global,
            dead=dead,
            k=tr.k,
            k_aux=cfg.k_aux or self.d_in // 2,
            aux_coefficient=cfg.aux_coefficient,
            sparsity_coefficient=coef * ramp,
            bandwidth=cfg.jumprelu_bandwidth,
            all_sum=self.dist.all_sum,
            all_cat=self.dist.all_cat,
            select_dtype=self.select_dtype,
            sparse_backward=cfg.sparse_backward,
            options=cfg,
        )

    def _loss(self, tr: Trainee, x: torch.Tensor, ctx: losses.LossContext) -> losses.LossOutput:
        return self.arch.loss(tr.sae, x, ctx, tr.extra)

    def _optimise(self, tr: Trainee, loss: torch.Tensor) -> float:
        """Sum gradients over ranks, check them, clip, step; returns the gradient norm."""
        cfg = self.cfg
        params = tr.params()
        # the loss rides in the gradients' all-reduce, so every rank judges the global loss
        # and all of them stop at the same step
        global_loss = self.dist.all_sum_grads(params, loss.detach().reshape(1))
        if self.unit_norm:
            project_decoder_grad(tr.sae.W_dec)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        )
        # One host sync per step and SAE. A non-finite loss usually means non-finite
        # gradients, but an inf gradient can come with a finite loss and an overflowing loss
        # with finite gradients, so both are checked; the clip's global norm covers every
        # gradient element at no extra pass. Checked before Adam, so neither the weights
        # nor the moments ever hold a NaN.
        loss_value, norm_value = torch.cat([global_loss, grad_norm.reshape(1)]).tolist()
        if not math.isfinite(loss_value) or not math.isfinite(norm_value):
            tr.optimizer.zero_grad()
            what = (
                f"loss ({loss_value})"
                if not math.isfinite(loss_value)
                else f"gradient (norm {norm_value})"
            )
            raise NonFiniteTraining(self.step + 1, tr.name, what, "the weights did not take it")
        lr = tr.base_lr * lr_factor(cfg, self.step, self.total_steps)
        tr.optimizer.step(lr)
        tr.optimizer.zero_grad()
        if self.unit_norm:
            tr.sae.normalize_decoder()
        tr.last["lr"] = lr
        return norm_value

    def train_step(self, batch: torch.Tensor, want_metrics: bool = False) -> None:
        """One optimiser step of every SAE on a raw global batch (batch_size, d_in)."""
        n_global = batch.shape[0]
        x = self.normalise(self.dist.local_rows(batch))  # (n_local, d_in)
        sq_norm_stats = None
        if want_metrics:
            sq_norm_stats = torch.cat([x.sum(0), x.pow(2).sum().reshape(1)]).double()
        for tr in self.trainees:
            ctx = self._context(tr, n_global)
            out = self._loss(tr, x, ctx)
            out.loss.backward()
            self._optimise(tr, out.loss)
            fired = self.dist.all_sum(out.fired.to(torch.int32)) > 0
            tr.samples_since_fired += n_global
            tr.samples_since_fired[fired] = 0
            tr.batch_threshold = self.arch.update_running(
                tr.batch_threshold, out, self.cfg, self.step, self.total_steps
            )
            if want_metrics and sq_norm_stats is not None:
                tr.last.update(self._metrics(tr, out, sq_norm_stats, n_global))
        self.step += 1
        self.samples += n_global

    def _metrics(
        self, tr: Trainee, out: losses.LossOutput, stats: torch.Tensor, n_global: int
    ) -> dict[str, float]:
        local = torch.cat(
            [stats, torch.stack([out.sq_err, out.aux, out.active.to(out.sq_err.dtype)]).double()]
        )
        tot = self.dist.all_sum(local)
        d_in = self.d_in
        mean = tot[:d_in] / n_global
        var = float(tot[d_in] - n_global * mean.pow(2).sum())
        sq_err, aux, active = (float(v) for v in tot[d_in + 1 :])
        dead = float((tr.samples_since_fired >= self.dead_after).float().mean())
        m = {
            "loss": sq_err / n_global,
            "nmse": sq_err / max(var, 1e-12),
            "aux": aux,
            "l0": active / n_global,
            "dead_fraction": dead,
        }
        return m | self.arch.metrics(tr.batch_threshold)

    # -- results -----------------------------------------------------------------
    def export(self, tr: Trainee) -> SAE:
        """A copy of `tr.sae` for raw inputs: thresholds set, training scale folded in, and
        the architecture's last changes (`prepare_export`) made.

        Trained on x_s = s * x: h_s = (x_s - b_dec) @ W_enc + b_enc. With b_dec / s, b_enc / s
        and threshold / s, the copy gives h = h_s / s on raw x; codes are 1/s of the training
        codes and x_hat = x_hat_s / s. W_enc and W_dec are unchanged (decoder rows stay unit).
        """
        src = tr.sae
        out = SAE(src.cfg)
        s = self.scale
        thr = self.arch.inference_threshold(tr.batch_threshold, tr.extra, src.cfg.d_sae)
        with torch.no_grad():
            out.W_enc.copy_(src.W_enc)
            out.W_dec.copy_(src.W_dec)
            out.b_dec.copy_(src.b_dec / s)
            out.b_enc.copy_(src.b_enc / s)
            out.threshold.copy_(thr / s)
        self.arch.prepare_export(out, self.cfg)
        return out

    def check_finite_weights(self) -> None:
        """Raise `NonFiniteTraining` if an SAE's weights hold NaN or inf (call before saving).

        One pass over the weights and one host sync: negligible beside writing them. The
        same on every rank (the weights are), so under torchrun all ranks raise together.
        """
        for tr in self.trainees:
            ok = torch.stack([torch.isfinite(p).all() for p in tr.params()]).all()
            if not bool(ok):
                raise NonFiniteTraining(self.step, tr.name, "weight", "nothing was saved")

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "samples": self.samples,
            "scale": self.scale,
            "input_norm": self.input_norm,
            "select_dtype": _dtype_name(self.select_dtype),
            "threads": torch.get_num_threads(),  # CPU sums are taken in its order
            "trainees": [
                {
                    "name": tr.name,
                    "weights": {k: v.cpu().clone() for k, v in tr.sae.state_tensors().items()},
                    "log_threshold": None if tr.extra is None else tr.extra.detach().cpu().clone(),
                    "optimizer": tr.optimizer.state_dict(),
                    "samples_since_fired": tr.samples_since_fired.cpu().clone(),
                    "batch_threshold": tr.batch_threshold,
                    "base_lr": tr.base_lr,
                }
                for tr in self.trainees
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.samples = int(state["samples"])
        self.scale = float(state["scale"])
        # the input norm the run started with, even if auto's rule changed since; a
        # checkpoint without one predates auto's look at the rows (no sample: that rule)
        started = state.get("input_norm") or self.cfg.resolved_input_norm(self.rows)
        if started != self.input_norm:
            self.input_norm = started
            for tr in self.trainees:
                tr.sae.cfg = replace(tr.sae.cfg, input_norm=started)
        if self.timed_selection and state.get("select_dtype") in ("float32", "int8"):
            # a resumed run keeps the selection path auto timed when it started
            resumed = SELECT_DTYPES[state["select_dtype"]]
            if resumed != self.select_dtype:
                self.select_dtype = resumed
                self.selection = f"{state['select_dtype']} (auto, kept from the checkpoint)"
        started_on = state.get("threads")
        if self.device.type == "cpu" and started_on and started_on != torch.get_num_threads():
            warnings.warn(
                f"resuming on {torch.get_num_threads()} CPU threads; the run started on "
                f"{started_on}, and CPU sums split across threads round in another order, "
                "so the weights will differ in their last bits from an uninterrupted run "
                f"(--threads {started_on} keeps them identical)",
                SaescopeWarning,
                stacklevel=2,
            )
        for tr, st in zip(self.trainees, state["trainees"], strict=True):
            with torch.no_grad():
                for k, v in st["weights"].items():
                    getattr(tr.sae, k).copy_(v)
                if tr.extra is not None:
                    tr.extra.copy_(st["log_threshold"])
            tr.optimizer.load_state_dict(st["optimizer"])
            tr.samples_since_fired.copy_(st["samples_since_fired"])
            tr.batch_threshold = float(st["batch_threshold"])
            # the lr the run started with, even if the default formula changed since
            tr.base_lr = float(st.get("base_lr", tr.base_lr))


class Throughput:
    """Samples per second over the run so far (excluding the first step's warm-up)."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.n = 0

    def tick(self, n: int) -> float:
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now
            return 0.0
        self.n += n
        return self.n / max(now - self.t0, 1e-9)
