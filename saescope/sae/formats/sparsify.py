"""EleutherAI sparsify folders (`cfg.json` + `sae.safetensors`) as native topk SAEs.

sparsify encodes `relu((x - b_dec) @ encoder.weight.T + encoder.bias)` and keeps
the k largest per row; native topk takes the k largest pre-activations, then relu,
which leaves the same non-zero latents with the same values. d_sae is
`num_latents` when set, else `expansion_factor * d_in`. Transcoders, skip
connections and `groupmax` have no native equivalent and are refused.
A training checkpoint (one sub-folder per hookpoint) is read as `path/hookpoint`.
"""

from __future__ import annotations

from pathlib import Path

from saescope import paths
from saescope.errors import SaescopeError
from saescope.sae.config import SAEConfig
from saescope.sae.formats.common import (
    build_sae,
    int_field,
    read_json_file,
    read_safetensors,
    reject_extra,
    take,
    tensor_dtype_name,
)
from saescope.sae.model import SAE


def load_sparsify(folder: Path, device: str = "cpu") -> SAE:
    cfg_path, w_path = folder / paths.SPARSIFY_CFG, folder / paths.SPARSIFY_WEIGHTS
    raw = read_json_file(cfg_path)
    d_in = int_field(raw, "d_in", cfg_path)
    k = int_field(raw, "k", cfg_path)
    num_latents = raw.get("num_latents") or 0
    if num_latents:
        d_sae = int_field(raw, "num_latents", cfg_path)
    else:
        d_sae = d_in * int_field(raw, "expansion_factor", cfg_path)
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise SaescopeError(
            f"{cfg_path}: sparsify activation {activation!r} is not supported (only 'topk')"
        )
    if raw.get("transcode"):
        raise SaescopeError(
            f"{cfg_path} is a sparsify transcoder (it predicts another module's output); "
            "saescope loads sparse autoencoders only"
        )
    if raw.get("skip_connection"):
        raise SaescopeError(
            f"{cfg_path} has a skip connection (W_skip), which saescope's SAE cannot represent"
        )
    tensors = read_safetensors(w_path)
    weight = take(tensors, "encoder.weight", (d_sae, d_in), w_path)  # (d_sae, d_in) nn.Linear
    weights = {
        "W_enc": weight.T,
        "b_enc": take(tensors, "encoder.bias", (d_sae,), w_path),
        "W_dec": take(tensors, "W_dec", (d_sae, d_in), w_path),
        "b_dec": take(tensors, "b_dec", (d_in,), w_path),
    }
    reject_extra(tensors, {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}, w_path, "sparsify")
    cfg = SAEConfig(
        architecture="topk",
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        dtype=tensor_dtype_name(weight, str(w_path)),
        metadata={
            "source_format": "sparsify",
            "source_path": str(folder),
            "hook_name": folder.name,
            "sparsify_config": raw,
            "conversion": ["encoder.weight transposed into W_enc"],
        },
    )
    return build_sae(cfg, weights, w_path, device)
