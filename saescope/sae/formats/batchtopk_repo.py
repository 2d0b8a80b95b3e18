"""Checkpoints of the BatchTopK repository (seed 000's thesis): `sae.pt` + `config.json`.

config.json: `sae_type` (vanilla, topk, batchtopk, jumprelu), `act_size` (d_in),
`dict_size` (d_sae), `top_k`, `input_unit_norm`, `dtype` as "torch.float32"; real
files also carry `device: "cuda"` and, for jumprelu, an unused `top_k`: both are
ignored here. Mapping onto native rules:
  vanilla  : relu((x - b_dec) @ W_enc + b_enc)                     -> relu
  topk     : k largest of relu((x - b_dec) @ W_enc), b_enc unused  -> topk, b_enc = 0
  batchtopk: like topk but over the whole batch, no inference threshold -> per-row
             topk with k = top_k (codes differ from batch mode; a warning says so);
             a fork's scalar `threshold` buffer (eval: relu(h) where > threshold) ->
             batchtopk with that threshold
  jumprelu : p = relu(x @ W_enc + b_enc); p * (p > exp(log_threshold)); b_dec NOT
             subtracted -> jumprelu with b_enc + b_dec @ W_enc folded in
`input_unit_norm` (per-row mean/std standardisation) -> input_norm="row_standardize".
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from saescope import paths
from saescope.errors import SaescopeError, SaescopeWarning
from saescope.sae.config import SAEConfig
from saescope.sae.formats.common import (
    build_sae,
    dtype_name,
    int_field,
    read_json_file,
    read_torch_state_dict,
    reject_extra,
    take,
)
from saescope.sae.model import SAE

SAE_TYPES = ("vanilla", "topk", "batchtopk", "jumprelu")
BATCHTOPK_NOTE = (
    "BatchTopK-repo batchtopk SAE has no inference threshold (its codes depend on the "
    "batch); loaded as per-row topk with k = top_k"
)


def load_batchtopk_repo(folder: Path, device: str = "cpu") -> SAE:
    cfg_path, w_path = folder / paths.BATCHTOPK_CFG, folder / paths.BATCHTOPK_WEIGHTS
    raw = read_json_file(cfg_path)
    sae_type = raw.get("sae_type")
    if sae_type not in SAE_TYPES:
        raise SaescopeError(
            f"{cfg_path}: unknown sae_type {sae_type!r}; expected one of {', '.join(SAE_TYPES)}"
        )
    d_in, d_sae = int_field(raw, "act_size", cfg_path), int_field(raw, "dict_size", cfg_path)
    dtype = dtype_name(raw.get("dtype", "torch.float32"), str(cfg_path))
    tensors = read_torch_state_dict(w_path)
    f64 = torch.float64
    W_enc = take(tensors, "W_enc", (d_in, d_sae), w_path).to(f64)
    b_enc = take(tensors, "b_enc", (d_sae,), w_path).to(f64)
    W_dec = take(tensors, "W_dec", (d_sae, d_in), w_path).to(f64)
    b_dec = take(tensors, "b_dec", (d_in,), w_path).to(f64)
    # num_batches_not_active: dead-latent statistics some versions keep as a buffer
    known = {"W_enc", "b_enc", "W_dec", "b_dec", "num_batches_not_active"}
    notes: list[str] = []
    k = None
    threshold = None
    arch = {"vanilla": "relu", "topk": "topk", "batchtopk": "topk", "jumprelu": "jumprelu"}[
        sae_type
    ]
    if sae_type in ("topk", "batchtopk"):
        k = int_field(raw, "top_k", cfg_path)
        b_enc = torch.zeros_like(b_enc)
        notes.append("b_enc is unused by this repo's topk/batchtopk encoder: set to 0")
    if sae_type == "batchtopk" and "threshold" in tensors:
        # forks that learn a global threshold keep it as a scalar buffer and use
        # relu(h) where > threshold at eval: exactly native batchtopk
        known.add("threshold")
        threshold = take(tensors, "threshold", (), w_path).to(f64).expand(d_sae).clone()
        arch = "batchtopk"
        notes.append("scalar inference threshold found: loaded as batchtopk")
    elif sae_type == "batchtopk":
        notes.append(BATCHTOPK_NOTE)
        warnings.warn(f"{w_path}: {BATCHTOPK_NOTE}", SaescopeWarning, stacklevel=3)
    if sae_type == "jumprelu":
        known.add("jumprelu.log_threshold")
        threshold = take(tensors, "jumprelu.log_threshold", (d_sae,), w_path).exp().to(f64)
        # the repo encodes x without subtracting b_dec; native always subtracts it
        b_enc = b_enc + b_dec @ W_enc
        notes.append(
            "b_dec not subtracted by this repo's jumprelu: b_dec @ W_enc folded into b_enc"
        )
        notes.append("threshold = exp(jumprelu.log_threshold)")
    reject_extra(tensors, known, w_path, f"BatchTopK-repo {sae_type}")
    cfg = SAEConfig(
        architecture=arch,
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        input_norm="row_standardize" if raw.get("input_unit_norm") else "none",
        dtype=dtype,
        metadata={
            "source_format": "batchtopk_repo",
            "source_path": str(folder),
            "source_architecture": sae_type,
            "batchtopk_repo_config": raw,
            "conversion": notes,
        },
    )
    weights = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        weights["threshold"] = threshold
    return build_sae(cfg, weights, w_path, device)
