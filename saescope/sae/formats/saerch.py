"""The scientific-embedding TopK SAEs of seed 004 (saerch): `{domain}_{k}_{n}_{batch}.pth`.

One `torch.save`d state dict: `encoder.weight` (d_sae, d_in), `decoder.weight`
(d_in, d_sae) whose columns are the atoms, `pre_bias` (d_in) subtracted before
encoding and added after decoding, `latent_bias` (d_sae). Codes are the top k
pre-activations per row, then relu (so a row can have fewer than k non-zeros):
exactly native topk. k exists only in the file name (or is given by the caller).
"""

from __future__ import annotations

import re
from pathlib import Path

from saescope.errors import SaescopeError
from saescope.sae.config import SAEConfig
from saescope.sae.formats.common import build_sae, read_torch_state_dict, take, tensor_dtype_name
from saescope.sae.model import SAE

NAME = re.compile(r"^(?P<domain>.+)_(?P<k>\d+)_(?P<n>\d+)_(?P<batch>\d+)$")
KEYS = ("encoder.weight", "decoder.weight", "pre_bias", "latent_bias")
# buffers the training code keeps in the same state dict; they do not affect codes
IGNORED = ("stats_last_nonzero",)


def looks_like_saerch(path: Path) -> bool:
    return path.suffix in (".pth", ".pt") and NAME.match(path.stem) is not None


def load_saerch(path: Path, k: int | None = None, device: str = "cpu") -> SAE:
    match = NAME.match(path.stem)
    if k is None and match is None:
        raise SaescopeError(
            f"{path.name}: cannot read k from the file name (expected "
            "{domain}_{k}_{n}_{batch}.pth); pass k explicitly (--k)"
        )
    if k is not None and match is not None and int(k) != int(match["k"]):
        raise SaescopeError(
            f"{path.name}: the file name says k={match['k']}, which its SAE was trained with; "
            f"k={k} is only for names that carry no k (drop --k)"
        )
    tensors = read_torch_state_dict(path)
    if "encoder.weight" not in tensors:
        raise SaescopeError(f"{path} lacks the tensor 'encoder.weight' (not a saerch TopK SAE)")
    d_sae, d_in = tuple(tensors["encoder.weight"].shape)
    enc = take(tensors, "encoder.weight", (d_sae, d_in), path)
    dec = take(tensors, "decoder.weight", (d_in, d_sae), path)
    weights = {
        "W_enc": enc.T,
        "b_enc": take(tensors, "latent_bias", (d_sae,), path),
        "W_dec": dec.T,
        "b_dec": take(tensors, "pre_bias", (d_in,), path),
    }
    extra = sorted(set(tensors) - set(KEYS) - set(IGNORED))
    if extra:
        raise SaescopeError(f"{path} holds tensors saescope does not know: {', '.join(extra)}")
    if match is not None and int(match["n"]) != d_sae:
        raise SaescopeError(
            f"{path.name}: the name says n={match['n']} latents but encoder.weight has {d_sae}"
        )
    k_used = int(k) if k is not None else int(match["k"])  # type: ignore[index]
    cfg = SAEConfig(
        architecture="topk",
        d_in=d_in,
        d_sae=d_sae,
        k=k_used,
        dtype=tensor_dtype_name(enc, str(path)),
        metadata={
            "source_format": "saerch",
            "source_path": str(path),
            "domain": match["domain"] if match else None,
            "train_batch_size": int(match["batch"]) if match else None,
            "conversion": [
                "W_enc = encoder.weight.T, W_dec = decoder.weight.T, b_dec = pre_bias, "
                "b_enc = latent_bias"
            ],
        },
    )
    return build_sae(cfg, weights, path, device)
