#!/usr/bin/env bash
# The CUDA checks of issue 16 in one go, from the repository root, on a machine with a GPU
# and PyTorch (no network needed; saescope runs from the source tree):
#   single-GPU training with AuxK active (the chunked gather) and its evaluation on the GPU,
#   gather_dots timings and peak memory, `latents` on CUDA, and `torchrun
#   --nproc_per_node 1` with NCCL (init_dist, collectives, training, eval at the end).
#   bash bench/gpu_check.sh [work dir]        (GPU_CHECK_SMALL=1: tiny sizes, CPU)
set -uo pipefail
PY=${PYTHON:-python3}
WORK=${1:-$(mktemp -d)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
step() { echo; echo "== $1 ($(date +%T))"; }

step "environment"
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

step "store"
$PY bench/gpu_check.py store "$WORK/one" || exit 1
cp -r "$WORK/one/acts" "$WORK/acts-copy"

step "single-GPU training + eval"
$PY bench/gpu_check.py train "$WORK/one"

step "gather_dots on the GPU"
$PY bench/gpu_check.py gather

step "latents on the GPU"
t0=$SECONDS
$PY -m saescope latents --run "$WORK/one" --device auto --plots false 2>&1 | tail -n 5
echo "latents: $((SECONDS - t0)) s; $(ls "$WORK/one/latents" | tr '\n' ' ')"

step "torchrun --nproc_per_node 1: init_dist on NCCL"
$PY -m torch.distributed.run --standalone --nproc_per_node 1 bench/gpu_check.py nccl 2>&1 | grep -v "^W\|^\*"

step "torchrun --nproc_per_node 1: training + eval at the end"
mkdir -p "$WORK/two" && mv "$WORK/acts-copy" "$WORK/two/acts"
[ "${GPU_CHECK_SMALL:-}" = 1 ] && size="--d-sae 256 --batch-size 256" || size="--d-sae 16384 --batch-size 4096"
# shellcheck disable=SC2086
$PY -m torch.distributed.run --standalone --nproc_per_node 1 -m saescope -- train \
  --run "$WORK/two" $size --k 32 --max-steps 20 --dead-after-samples 20480 \
  --checkpoint-every 10 --progress false --device auto 2>&1 | grep -v "^W\|^\*" | tail -n 20
$PY bench/gpu_check.py report "$WORK/two"
step "done"
