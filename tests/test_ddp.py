"""Data-parallel training under torchrun (2 CPU processes, gloo) equals one process."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_train_stage import make_store, small

from saescope.paths import RunPaths
from saescope.train import run


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_two_gloo_processes_match_one_process(tmp_path, arch):
    """BatchTopK too: its batch-wide selection runs over the global batch on every rank."""
    one = make_store(tmp_path / "one", n_rows=1600)
    two = make_store(tmp_path / "two", n_rows=1600)
    flags = dict(max_steps=6, epochs=1.0, eval_at_end=False, checkpoint_every=0)
    run(small(one, architecture=arch, **flags))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "saescope", "--", "train", "--run", str(two), "--architecture", arch,
        "--d-sae", "64", "--k", "4",
        "--batch-size", "200", "--epochs", "1", "--lr", "0.003", "--dead-after-samples", "400",
        "--checkpoint-every", "0", "--progress", "false", "--log-every", "3",
        "--max-steps", "6", "--eval-at-end", "false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(RunPaths(one).sae_weights))
    b = load_file(str(RunPaths(two).sae_weights))
    conf = (RunPaths(two).sae_config).read_text()
    assert '"world_size": 2' in conf
    for name in a:
        assert torch.allclose(a[name], b[name], atol=2e-5, rtol=1e-4), (
            name,
            (a[name] - b[name]).abs().max(),
        )
    # the runs did move away from their (identical) initialisation
    assert not torch.allclose(a["b_enc"], torch.zeros_like(a["b_enc"]))
