"""The CUDA checks of issue 16, one phase per call (bench/gpu_check.sh runs them all).

    python bench/gpu_check.py store RUN      # a synthetic store: 65536 rows, d_in 2048
    python bench/gpu_check.py train RUN      # single-GPU training (AuxK active) + eval
    python bench/gpu_check.py gather         # gather_dots: chunked vs whole vs fused, on CUDA
    python bench/gpu_check.py nccl           # under torchrun: init_dist on NCCL, collectives
    python bench/gpu_check.py report RUN     # what a torchrun training wrote

GPU_CHECK_SMALL=1 shrinks every size and runs on the CPU (to try the script without a GPU).
Prints plain lines; nothing here is part of the test suite.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

SMALL = os.environ.get("GPU_CHECK_SMALL") == "1"
DEVICE = "cpu" if SMALL else "cuda"
N_ROWS, D_IN, D_SAE, BATCH = (4096, 64, 256, 256) if SMALL else (65536, 2048, 16384, 4096)
GIB = 1 << 30


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _peak_reset() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak() -> float:
    return torch.cuda.max_memory_allocated() / GIB if DEVICE == "cuda" else float("nan")


def store(run: str) -> None:
    from saescope.paths import RunPaths
    from saescope.store import StoreWriter

    g = torch.Generator(device=DEVICE).manual_seed(0)
    n_true = 4 * D_IN  # sparse ground-truth features
    basis = torch.randn(n_true, D_IN, generator=g, device=DEVICE) / D_IN**0.5
    w = StoreWriter(RunPaths(run).acts, D_IN, shard_rows=16384, meta={"source": "vectors"})
    for start in range(0, N_ROWS, 8192):
        n = min(8192, N_ROWS - start)
        z = torch.relu(torch.randn(n, n_true, generator=g, device=DEVICE) - 2.5)
        rows = z @ basis + 0.05 * torch.randn(n, D_IN, generator=g, device=DEVICE)
        w.append(rows.cpu())
    w.close()
    print(f"store: {N_ROWS} rows, d_in {D_IN}, {RunPaths(run).acts}")


def train(run: str) -> None:
    from saescope.paths import RunPaths
    from saescope.sae import SAE
    from saescope.train import TrainConfig
    from saescope.train import run as train_run
    from saescope.train.trainer import select_dtype

    cfg = TrainConfig(
        run=run,
        d_sae=[D_SAE],
        k=[32],
        batch_size=BATCH,
        epochs=5.0,
        max_steps=60,
        dead_after_samples=5 * BATCH,  # latents idle for 5 steps count as dead: AuxK runs
        checkpoint_every=20,
        log_every=10,
        progress=False,
        device="auto",
    )
    _peak_reset()
    t0 = time.perf_counter()
    train_run(cfg)
    _sync()
    seconds = time.perf_counter() - t0
    rp = RunPaths(run)
    log = [json.loads(x) for x in rp.train_log.read_text().splitlines()]
    for row in log:
        print(
            "  step {step:3d}  loss {loss:.4f}  nmse {nmse:.4f}  l0 {l0:.1f}  "
            "dead {dead_fraction:.3f}  aux {aux:.4f}  {samples_per_s:,.0f} rows/s".format(**row)
        )
    k_aux = D_IN // 2
    whole = BATCH * (32 + k_aux) * D_IN * 4 / GIB
    print(
        f"train: {len(log) and log[-1]['step']} steps in {seconds:.1f}s (with eval), "
        f"select dtype {select_dtype('auto', torch.device(DEVICE))}, "
        f"peak CUDA memory {_peak():.2f} GiB (an unchunked AuxK gather alone: {whole:.1f} GiB)"
    )
    sae = SAE.load(rp.sae)
    finite = all(bool(torch.isfinite(t).all()) for t in sae.state_tensors().values())
    metrics = json.loads(rp.sae_metrics.read_text())
    conf = json.loads(rp.sae_config.read_text())
    print(f"train: weights finite {finite}; trained {conf['trained']}")
    keep = ("nmse", "fve", "l0", "dead_fraction", "cosine", "recall_at_k", "n_rows")
    print(
        f"eval: device {metrics['config']['device']}; "
        + json.dumps({k: metrics.get(k) for k in keep})
    )


def _time(fn, reps: int = 3) -> tuple[float, float, torch.Tensor]:
    out = fn()  # warm-up
    _peak_reset()
    base = torch.cuda.memory_allocated() / GIB if DEVICE == "cuda" else 0.0
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
    _sync()
    return (time.perf_counter() - t0) / reps * 1e3, _peak() - base, out


def gather() -> None:
    shapes = (
        [(256, 48, 64, 256)]
        if SMALL
        else [(4096, 32 + 1024, 2048, 16384), (4096, 32 + 2048, 4096, 65536)]
    )
    for shape in shapes:
        _gather_case(*shape)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


def _gather_case(n: int, m: int, d: int, d_sae: int) -> None:
    """gather_dots on (n, m) indices into a (d_sae, d) table, three ways, float32."""
    from saescope.sae.kernels import GATHER_BUDGET_BYTES, gather_dots, gather_dots_chunked

    g = torch.Generator(device=DEVICE).manual_seed(0)
    table = torch.randn(d_sae, d, generator=g, device=DEVICE)
    dense = torch.randn(n, d, generator=g, device=DEVICE)
    idx = torch.randint(0, d_sae, (n, m), generator=g, device=DEVICE)
    whole_gib = n * m * d * 4 / GIB
    print(f"gather n_rows {n}, m {m}, d {d}, d_sae {d_sae}: whole buffer {whole_gib:.1f} GiB")
    ms, extra, ref = _time(lambda: gather_dots_chunked(dense, table, idx))
    print(f"  chunked ({GATHER_BUDGET_BYTES >> 20} MiB): {ms:8.2f} ms  peak +{extra:.2f} GiB")
    ms, extra, out = _time(lambda: gather_dots(dense, table, idx))
    err = float((out - ref).abs().max())
    print(f"  gather_dots:          {ms:8.2f} ms  peak +{extra:.2f} GiB  max diff {err:.2e}")
    if whole_gib < 48:
        ms, extra, out = _time(lambda: gather_dots_chunked(dense, table, idx, 1 << 50))
        err = float((out - ref).abs().max())
        print(f"  whole:             {ms:8.2f} ms  peak +{extra:.2f} GiB  max diff {err:.2e}")
    bag = torch.arange(n, device=DEVICE).repeat_interleave(m)
    offsets = torch.arange(0, n * m, m, device=DEVICE)

    def fused() -> torch.Tensor:
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(
            dense, table, idx.reshape(-1), offsets, bag, 0, -1
        ).view(n, m)

    ms, extra, out = _time(fused)
    err = float((out - ref).abs().max())
    print(f"  fused embedding_bag:  {ms:8.2f} ms  peak +{extra:.2f} GiB  max diff {err:.2e}")
    ms, extra, out = _time(lambda: (dense @ table.t()).gather(1, idx))
    err = float((out - ref).abs().max())
    print(f"  dense matmul+gather:  {ms:8.2f} ms  peak +{extra:.2f} GiB  max diff {err:.2e}")


def nccl() -> None:
    import torch.distributed as dist

    from saescope.device import pick_device
    from saescope.train.ddp import close_dist, init_dist, rank_device

    device = rank_device(pick_device("auto"))
    d = init_dist(device)
    t = torch.full((4,), float(d.rank + 1), device=device)
    dist.all_reduce(t)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    dist.barrier()
    d.wait_for_main()
    dist.barrier(group=d.wait_group)
    print(
        f"nccl: LOCAL_RANK {os.environ.get('LOCAL_RANK')} -> {device}, backend "
        f"{dist.get_backend()}, wait group {dist.get_backend(d.wait_group)}, rank {d.rank}/"
        f"{d.world}, all_reduce {t.tolist()}, all_gather {len(parts)} parts"
    )
    close_dist(d)


def report(run: str) -> None:
    from saescope.paths import RunPaths

    rp = RunPaths(run)
    conf = json.loads(rp.sae_config.read_text())
    metrics = json.loads(rp.sae_metrics.read_text())
    print(f"torchrun: trained {conf['trained']}")
    print(f"torchrun: eval device {metrics['config']['device']}, nmse {metrics['nmse']:.4f}")


if __name__ == "__main__":
    phase, args = sys.argv[1], sys.argv[2:]
    {"store": store, "train": train, "gather": gather, "nccl": nccl, "report": report}[phase](*args)
