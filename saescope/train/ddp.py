"""Data parallelism over torch.distributed (torchrun), gloo on CPU, NCCL on GPUs.

In: the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...).
Out: a `Dist` that slices each global batch into this rank's rows and sums
tensors (gradients, statistics) across ranks. Without torchrun it is a no-op
single-process `Dist`.

Every rank reads the same global batches in the same order and keeps the rows
[rank * n / world, (rank + 1) * n / world); losses are scaled by the global batch
size, so the summed gradient equals the single-process gradient. Gradients are
summed with one all-reduce over a flat buffer per step (what DDP does, without
wrapping the module, so several SAEs and the decoder-gradient projection need
no special cases).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from saescope.errors import SaescopeError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_rows(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch (n_rows, d_in)."""
        if self.world == 1:
            return x
        n = x.shape[0]
        if n % self.world:
            raise SaescopeError(
                f"batch of {n} rows does not split evenly over {self.world} processes; "
                "choose a batch_size divisible by the number of processes"
            )
        per = n // self.world
        return x[self.rank * per : (self.rank + 1) * per]

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_cat(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's `t` (same shape on each), concatenated along dim 0 in rank order."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def all_sum_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Sum .grad of `params` over ranks in place (one flat all-reduce)."""
        if self.world == 1:
            return
        # flattened in memory order, so a transposed layout (the trainer's latent-major
        # W_enc) costs no strided copy: a sum does not care about element order
        grads = [_memory_order(p.grad) for p in params if p.grad is not None]
        flat = torch.cat([g.view(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _memory_order(t: torch.Tensor) -> torch.Tensor:
    """A contiguous view of `t`'s storage: `t` itself, or for a transposed matrix `t.T`."""
    if t.is_contiguous():
        return t
    if t.dim() == 2 and t.t().is_contiguous():
        return t.t()
    raise SaescopeError(f"cannot all-reduce a gradient of strides {t.stride()} in place")


def init_dist(device: torch.device) -> Dist:
    """Join the process group torchrun describes, or a single-process Dist."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size())


def close_dist(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
