"""Data parallelism over torch.distributed (torchrun), gloo on CPU, NCCL on GPUs.

In: the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...).
Out: a `Dist` that slices each global batch into this rank's rows and sums
tensors (gradients, statistics) across ranks, and `rank_device`, the GPU of this
rank (`cuda:LOCAL_RANK`). Without torchrun it is a no-op single-process `Dist`.

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
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from saescope.errors import SaescopeError

# How long the other ranks wait while rank 0 works alone (evaluates the trained SAEs at the
# end of training). A barrier on the default group gives up after that group's timeout
# (10 minutes for NCCL, and its watchdog then kills the process), shorter than evaluating a
# large held-out split can take. So those ranks wait at a barrier of their own: a gloo
# (CPU, TCP) group made with this timeout, which holds no GPU and is not watched by NCCL.
# A long wait cannot hang a failed job: when rank 0 fails, torchrun stops every process.
MAIN_WAIT = timedelta(hours=24)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    wait_group: Any = None  # gloo group with the MAIN_WAIT timeout (see wait_for_main)

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

    def all_sum_grads(self, params: Sequence[torch.Tensor], extra: torch.Tensor) -> torch.Tensor:
        """Sum .grad of `params` over ranks in place (one flat all-reduce).

        `extra` (a small 1-d tensor of the gradients' dtype, e.g. this rank's loss) rides
        in the same all-reduce; its sum over ranks is returned.
        """
        if self.world == 1:
            return extra
        # flattened in memory order, so a transposed layout (the trainer's latent-major
        # W_enc) costs no strided copy: a sum does not care about element order
        grads = [_memory_order(p.grad) for p in params if p.grad is not None]
        flat = torch.cat([g.view(-1) for g in grads] + [extra.reshape(-1)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[offset:]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def wait_for_main(self) -> None:
        """A barrier for ranks that sit idle while rank 0 works alone (see MAIN_WAIT)."""
        if self.world > 1:
            dist.barrier(group=self.wait_group)


def _memory_order(t: torch.Tensor) -> torch.Tensor:
    """A contiguous view of `t`'s storage: `t` itself, or for a transposed matrix `t.T`."""
    if t.is_contiguous():
        return t
    if t.dim() == 2 and t.t().is_contiguous():
        return t.t()
    raise SaescopeError(f"cannot all-reduce a gradient of strides {t.stride()} in place")


def rank_device(device: torch.device) -> torch.device:
    """This process's device: under torchrun a bare `cuda` means `cuda:LOCAL_RANK`.

    Otherwise every rank of a node would train on GPU 0 (which NCCL refuses). An explicit
    `cuda:N` is kept as given (for launchers that give each rank one visible GPU).
    """
    local = os.environ.get("LOCAL_RANK")
    if device.type != "cuda" or device.index is not None or local is None:
        return device
    n = torch.cuda.device_count()
    if int(local) >= n:
        raise SaescopeError(
            f"this is local rank {local}, but only {n} CUDA devices are visible; "
            f"start at most {n} processes per node (torchrun --nproc_per_node {n})"
        )
    return torch.device("cuda", int(local))


def init_dist(device: torch.device) -> Dist:
    """Join the process group torchrun describes, or a single-process Dist.

    `device` is this rank's (`rank_device`). Under torchrun the group is joined even with
    one process, so `--nproc_per_node 1` runs the same set-up as a multi-GPU job.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return Dist()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            # bound to this rank's GPU: NCCL's barriers and collectives then use it too
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    wait_group = dist.new_group(backend="gloo", timeout=MAIN_WAIT)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), wait_group=wait_group)


def close_dist(d: Dist) -> None:
    if d.wait_group is not None and dist.is_initialized():
        dist.destroy_process_group()
