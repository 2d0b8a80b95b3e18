"""Data-parallel training under torchrun (2 CPU processes, gloo) equals one process."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_train_stage import make_store, small

from saescope.errors import SaescopeError
from saescope.io import read_json
from saescope.paths import RunPaths
from saescope.train import run
from saescope.train.ddp import rank_device


@pytest.mark.parametrize(
    ("arch", "timed"),
    [("topk", False), ("topk", True), ("batchtopk", False), ("jumprelu", False)],
)
def test_two_gloo_processes_match_one_process(tmp_path, monkeypatch, arch, timed):
    """BatchTopK too: its batch-wide selection runs over the global batch on every rank.
    timed: select_precision auto times float32 against int8 (oneDNN capped below AMX, as
    on a CPU without it), and the ranks vote on one path. JumpReLU aimed at an L0: its
    term takes the global batch's mean L0 (an all-reduce)."""
    if timed:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    one = make_store(tmp_path / "one", n_rows=1600)
    two = make_store(tmp_path / "two", n_rows=1600)
    flags = dict(max_steps=6, epochs=1.0, eval_at_end=False, checkpoint_every=0)
    target = ["--jumprelu-target-l0", "6"] if arch == "jumprelu" else []
    if target:
        flags["jumprelu_target_l0"] = 6.0
    run(small(one, architecture=arch, **flags))
    # TMPDIR: torchrun leaves a torchelastic_* log folder in the temp dir
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "saescope", "--", "train", "--run", str(two), "--architecture", arch,
        "--d-sae", "64", "--k", "4",
        "--batch-size", "200", "--epochs", "1", "--lr", "0.003", "--dead-after-samples", "400",
        "--checkpoint-every", "0", "--progress", "false", "--log-every", "3",
        "--max-steps", "6", "--eval-at-end", "false", *target,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(RunPaths(one).sae_weights))
    b = load_file(str(RunPaths(two).sae_weights))
    conf = (RunPaths(two).sae_config).read_text()
    assert '"world_size": 2' in conf
    if timed:  # whichever path won, the selection is the exact top k on both sides
        assert "ms for 100 rows" in read_json(RunPaths(two).sae_config)["trained"]["selection"]
    for name in a:
        assert torch.allclose(a[name], b[name], atol=2e-5, rtol=1e-4), (
            name,
            (a[name] - b[name]).abs().max(),
        )
    # the runs did move away from their (identical) initialisation
    assert not torch.allclose(a["b_enc"], torch.zeros_like(a["b_enc"]))


# One rank of a 2-process gloo job started by hand (not torchrun), so that the test can
# patch the code it runs. argv: mode, run dir, port, default-group timeout in seconds.
_WORKER = """
import datetime, os, sys, time
import torch.distributed as dist
from saescope import evaluate
from saescope.errors import SaescopeError
from saescope.store import ActivationStore
from saescope.train import TrainConfig, run

mode, run_dir, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rank = int(os.environ["RANK"])
if mode == "slow_eval":  # rank 0 evaluates for longer than the default group's timeout
    real_eval = evaluate.run
    def slow_eval(cfg):
        time.sleep(2.5 * timeout)
        return real_eval(cfg)
    evaluate.run = slow_eval
if mode == "nan":  # a NaN in a row of rank 1's half of the 3rd global batch
    real_iter = ActivationStore.iter_batches
    def iter_batches(self, *args, **kw):
        for i, batch in enumerate(real_iter(self, *args, **kw)):
            if kw.get("drop_last") and i == 2:
                batch = batch.clone()
                batch[150, 0] = float("nan")
            yield batch
    ActivationStore.iter_batches = iter_batches
# the store's own timeout is long: only the group's collectives get the short one
store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, datetime.timedelta(seconds=120))
dist.init_process_group(
    "gloo", store=store, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=timeout)
)
cfg = TrainConfig(
    run=run_dir, d_sae=[64], k=[4], batch_size=200, epochs=1.0, max_steps=4, lr=3e-3,
    dead_after_samples=400, checkpoint_every=2, progress=False, log_every=2, threads=1,
    eval_at_end=(mode == "slow_eval"),
)
try:
    run(cfg)
except SaescopeError as exc:
    print("ERROR", exc)
    sys.exit(3)
"""


def _two_ranks(mode: str, run_dir, timeout_s: float) -> list[subprocess.CompletedProcess]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(
            os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", OMP_NUM_THREADS="1"
        )
        args = [sys.executable, "-c", _WORKER, mode, str(run_dir), str(port), str(timeout_s)]
        procs.append(
            subprocess.Popen(
                args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def test_other_ranks_outwait_an_evaluation_longer_than_the_group_timeout(tmp_path):
    """Rank 0 evaluates for 2.5x the default group's timeout; rank 1 must not time out."""
    run_dir = make_store(tmp_path / "r", n_rows=1600)
    for proc in _two_ranks("slow_eval", run_dir, timeout_s=4.0):
        assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_json(RunPaths(run_dir).sae_metrics)
    assert metrics["config"]["device"] == "cpu" and metrics["n_rows"] > 0


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    run_dir = make_store(tmp_path / "r", n_rows=1600)
    procs = _two_ranks("nan", run_dir, timeout_s=60.0)
    for proc in procs:
        assert proc.returncode == 3, proc.stderr[-3000:]
        assert "step 3: sae got a non-finite loss" in proc.stdout, proc.stdout
        assert "step-00000002.pt, is kept" in proc.stdout
    ckpts = sorted(RunPaths(run_dir).checkpoints.glob("step-*.pt"))
    assert [p.name for p in ckpts] == ["step-00000002.pt"]


def test_each_torchrun_rank_takes_the_gpu_of_its_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert rank_device(torch.device("cuda", 0)) == torch.device("cuda", 0)  # as given
    assert rank_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(SaescopeError, match="only 2 CUDA devices"):
        rank_device(torch.device("cuda"))
    monkeypatch.delenv("LOCAL_RANK")
    assert rank_device(torch.device("cuda")) == torch.device("cuda")
