"""EleutherAI sparsify folders (`cfg.json` + `sae.safetensors`) as native topk SAEs.

sparsify encodes `relu((x - b_dec) @ encoder.weight.T + encoder.bias)` and keeps
the k largest per row; native topk takes the k largest pre-activations, then relu,
which leaves the same non-zero latents with the same values. d_sae is
`num_latents` when set, else `expansion_factor * d_in`. Transcoders, skip
connections and `groupmax` have no native equivalent and are refused.
A training checkpoint (one sub-folder per hookpoint) is read as `path/hookpoint`.

`export_sparsify(sae, out)` writes the same two files for a native TopK SAE, so that
sparsify's `SparseCoder.load_from_disk` (and delphi, which reads sparsify folders)
gives its codes. Only TopK maps: BatchTopK and JumpReLU keep what passes a
threshold, ReLU has no k, and sparsify has no per-row standardisation.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from saescope import paths
from saescope.errors import SaescopeError
from saescope.io import atomic_path
from saescope.sae import archs
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


def sparsify_config(sae: SAE) -> dict[str, object]:
    """sparsify's `cfg.json` for a native SAE (`d_in` beside the SparseCoderConfig
    fields, as sparsify saves it); refuses an SAE sparsify cannot run."""
    cfg = sae.cfg
    if not archs.get(cfg.architecture).sparsify_rule or cfg.k is None:
        raise SaescopeError(
            f"sparsify keeps the k largest latents of every row; a {cfg.architecture} SAE "
            "encodes by another rule (export it to SAELens instead: --to saelens)"
        )
    if cfg.input_norm != "none":
        raise SaescopeError(
            f"the SAE standardises each row before encoding (input_norm={cfg.input_norm}), "
            "which sparsify cannot do; export it to SAELens instead (--to saelens)"
        )
    return {
        "activation": "topk",
        "expansion_factor": max(1, cfg.d_sae // cfg.d_in),  # num_latents says the width
        "normalize_decoder": True,
        "num_latents": cfg.d_sae,
        "k": cfg.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": cfg.d_in,
    }


def export_sparsify(sae: SAE, out_dir: str | Path) -> Path:
    """Write `cfg.json` + `sae.safetensors` (atomically) that sparsify loads."""
    config = sparsify_config(sae)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dt = sae.W_enc.dtype  # the SAE's own (sparsify loads in the dtype of the file)
    tensors = {
        "encoder.weight": sae.W_enc.detach().T,  # (d_sae, d_in), nn.Linear's layout
        "encoder.bias": sae.b_enc.detach(),
        "W_dec": sae.W_dec.detach(),
        "b_dec": sae.b_dec.detach(),
    }
    tensors = {n: t.to("cpu", dt).contiguous() for n, t in tensors.items()}
    with atomic_path(out / paths.SPARSIFY_WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(out / paths.SPARSIFY_CFG) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    return out
