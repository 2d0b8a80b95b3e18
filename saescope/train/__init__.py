"""Training sparse autoencoders: the `saescope train` stage and a loop for any batch stream.

- `run(TrainConfig) -> Path`: the stage (reads `<run>/acts`, writes `<run>/sae/...`).
- `train_on_batches(batches, cfg)`: train on any iterable of raw (batch_size, d_in)
  tensors, no files; for benchmarks and notebooks.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from saescope._lazy import lazy_exports
from saescope.errors import SaescopeError
from saescope.train.config import ROW_KINDS, TrainConfig

if TYPE_CHECKING:
    import torch

    from saescope.sae import SAE
    from saescope.train.stage import run

# the stage loads torch: imported on first use, so `saescope train --help` stays fast
__getattr__, __dir__ = lazy_exports(__name__, {"run": ("saescope.train.stage", "run")})


class TrainResult(NamedTuple):
    saes: list[SAE]  # one per (d_sae, k) of the config, for raw inputs
    steps: int
    samples: int
    seconds: float  # wall time of the steps after the first (the first pays warm-up)
    samples_per_s: float
    selection: str = ""  # the TopK selection matmul's dtype and why (`Trainer.selection`)


def train_on_batches(
    batches: Iterable[torch.Tensor],
    cfg: TrainConfig,
    total_steps: int | None = None,
    init_sample: torch.Tensor | None = None,
    rows: str = "texts",
) -> TrainResult:
    """Train every SAE of `cfg` on `batches` (raw rows), one step per batch.

    `init_sample` (n_rows, d_in) sets b_dec and the input scale, and whether
    `input_norm="auto"` standardises the rows (`TrainConfig.resolved_input_norm`); by
    default the first batch. `total_steps` sets the LR schedule (and the dead-latent
    window); by default len(batches), and a stream with no len() needs it (or
    cfg.max_steps). Batches are tensors or numpy arrays (n_rows, d_in). The SAEs come
    back ready for inference (eval mode, no gradients). `rows` says what a row is,
    "texts" (embeddings) or "tokens" (an LM's activations), for the options whose
    default depends on it (`input_norm="auto"`).
    """
    from saescope.train.trainer import Trainer

    if rows not in ROW_KINDS:
        raise SaescopeError(f"rows must be one of {', '.join(ROW_KINDS)}, got {rows!r}")
    it = iter(batches)
    try:
        first = _batch(next(it), None, 0)
    except StopIteration:
        raise SaescopeError("train_on_batches got no batches") from None
    if total_steps is None:
        try:  # a DataLoader of an IterableDataset has __len__ and raises in it
            total_steps = len(batches)  # type: ignore[arg-type]
        except TypeError:
            total_steps = cfg.max_steps
    if not total_steps or total_steps < 1:
        raise SaescopeError(
            "train_on_batches needs the number of steps for the LR schedule, the dead-latent "
            "window and BatchTopK's threshold: pass total_steps= (or cfg.max_steps) with a "
            "stream that has no len()"
        )
    sample = first if init_sample is None else _batch(init_sample, first.shape[1], None)
    trainer = Trainer(cfg, first.shape[1], sample, int(total_steps), rows=rows)
    trainer.train_step(first)
    t0, n0 = time.perf_counter(), trainer.samples
    for batch in it:
        if cfg.max_steps and trainer.step >= cfg.max_steps:
            break
        trainer.train_step(_batch(batch, first.shape[1], trainer.step))
    seconds = time.perf_counter() - t0
    done = trainer.samples - n0
    return TrainResult(
        [trainer.export(tr).eval().requires_grad_(False) for tr in trainer.trainees],
        trainer.step,
        trainer.samples,
        seconds,
        done / seconds if seconds > 0 else 0.0,
        trainer.selection,
    )


def _batch(x: object, d_in: int | None, step: int | None) -> torch.Tensor:
    """`x` as a float (n_rows, d_in) tensor (numpy arrays taken too), or a `SaescopeError`
    naming the batch (`step`; None: the init sample)."""
    import numpy as np
    import torch

    what = "init_sample" if step is None else f"batch {step}"
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise SaescopeError(f"{what} is a {type(x).__name__}; expected a tensor (n_rows, d_in)")
    if x.ndim != 2 or (d_in is not None and x.shape[1] != d_in) or not x.shape[0]:
        need = f"(n_rows, {d_in})" if d_in is not None else "(n_rows, d_in)"
        raise SaescopeError(f"{what} has shape {tuple(x.shape)}; expected {need}")
    if not x.is_floating_point():
        x = x.float()
    return x


__all__ = ["TrainConfig", "TrainResult", "run", "train_on_batches"]
