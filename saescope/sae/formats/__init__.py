"""Read SAEs saved by other libraries, and write SAELens folders.

`load_sae(path)` finds out which format `path` holds and returns a native `SAE`
whose `encode` gives the home library's codes (same active latents, same values):

| format          | what is on disk                                              |
| --------------- | ------------------------------------------------------------ |
| saescope        | `config.json` + `sae.safetensors` (`SAE.save`)               |
| saelens         | `cfg.json` + `sae_weights.safetensors`                       |
| sparsify        | `cfg.json` + `sae.safetensors` (one folder per hookpoint)    |
| saerch          | `{domain}_{k}_{n}_{batch}.pth` state dict (seed 004)         |
| batchtopk_repo  | `config.json` + `sae.pt` (BatchTopK repository, seed 000)    |

Any of them on the Hugging Face hub is named `hf:OWNER/REPO[@REVISION][/PATH]`
(`hub.py`): only that SAE's files are fetched, into the hub's cache.

The loaded SAE's `cfg.metadata["source_format"]` names the format and
`cfg.metadata["conversion"]` lists what was folded or changed on the way.
`export_saelens(sae, out_dir)` writes `cfg.json` + `sae_weights.safetensors`;
`export_sparsify(sae, out_dir)` writes a TopK SAE as `cfg.json` + `sae.safetensors`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

from saescope import paths
from saescope.errors import SaescopeError
from saescope.sae.formats import hub
from saescope.sae.formats.batchtopk_repo import load_batchtopk_repo
from saescope.sae.formats.saelens import export_saelens, load_saelens, saelens_config
from saescope.sae.formats.saerch import load_saerch
from saescope.sae.formats.sparsify import export_sparsify, load_sparsify
from saescope.sae.model import SAE

FORMATS = ("saescope", "saelens", "sparsify", "saerch", "batchtopk_repo")
# file names that stand for the folder holding them
_FOLDER_FILES = {
    paths.SAELENS_CFG,
    paths.SAELENS_WEIGHTS,
    paths.SPARSIFY_WEIGHTS,
    paths.NATIVE_SAE_CONFIG,
    paths.BATCHTOPK_WEIGHTS,
}


class Located(NamedTuple):
    format: str  # one of FORMATS
    path: Path  # the SAE's folder, or the .pth file for saerch

    @property
    def weights(self) -> Path:
        """The file that holds the SAE's weights: what provenance records hash to tell
        whether the SAE changed (a saerch SAE is its one file)."""
        if self.format == "saerch":
            return self.path
        return self.path / _WEIGHTS[self.format]


# the weights file of each folder format
_WEIGHTS = {
    "saescope": paths.NATIVE_SAE_WEIGHTS,
    "saelens": paths.SAELENS_WEIGHTS,
    "sparsify": paths.SPARSIFY_WEIGHTS,
    "batchtopk_repo": paths.BATCHTOPK_WEIGHTS,
}


def _folder_format(folder: Path) -> str | None:
    def has(name: str) -> bool:
        return (folder / name).is_file()

    if has(paths.SAELENS_CFG) and has(paths.SAELENS_WEIGHTS):
        return "saelens"
    if has(paths.SPARSIFY_CFG) and has(paths.SPARSIFY_WEIGHTS):
        return "sparsify"
    if has(paths.NATIVE_SAE_CONFIG) and has(paths.NATIVE_SAE_WEIGHTS):
        return "saescope"
    if has(paths.BATCHTOPK_CFG) and has(paths.BATCHTOPK_WEIGHTS):
        return "batchtopk_repo"
    return None


def untrained_hint(folder: Path) -> str:
    """ "; run `saescope train` ..." when `folder` is where a run's trained SAE would be (an
    empty or missing sae/ or sae-*/ beside the run's acts/), else ""."""
    folder = Path(folder)
    is_run_sae = folder.name == "sae" or folder.name.startswith("sae-")
    if is_run_sae and (folder.parent / "acts").is_dir() and not any(folder.glob("*.safetensors")):
        return f"; no SAE was trained there yet: run `saescope train --run {folder.parent}` first"
    return ""


def detect_format(path: str | Path, hookpoint: str | None = None) -> Located:
    """Which supported format `path` (or `path/hookpoint`) holds, or a SaescopeError.
    A hub name (`hf:OWNER/REPO/PATH`) is fetched first (`saescope.sae.formats.hub`)."""
    if hub.is_hub_name(path):
        return detect_format(hub.fetch(path, hookpoint))
    p = Path(path) / hookpoint if hookpoint else Path(path)
    if not p.exists():
        raise SaescopeError(f"{p} does not exist{untrained_hint(p)}")
    if p.is_file():
        if p.name in _FOLDER_FILES:
            p = p.parent
        elif p.suffix in (".pth", ".pt"):
            return Located("saerch", p)
        else:
            raise SaescopeError(f"{p} is not an SAE file; give an SAE folder or a saerch .pth file")
    fmt = _folder_format(p)
    if fmt is not None:
        return Located(fmt, p)
    pth = sorted(q.name for q in p.glob("*.pth"))
    if len(pth) == 1:
        return Located("saerch", p / pth[0])
    if len(pth) > 1:
        raise SaescopeError(f"{p} holds several .pth SAEs ({', '.join(pth)}); give one file")
    subs = sorted(d.name for d in p.iterdir() if d.is_dir() and _folder_format(d) is not None)
    if subs and paths.RunPaths(p).acts.is_dir():
        raise SaescopeError(
            f"{p} is a run directory, not an SAE; its SAEs: " + ", ".join(str(p / s) for s in subs)
        )
    if subs:
        raise SaescopeError(
            f"{p} is a checkpoint with one SAE per hookpoint ({', '.join(subs)}); "
            "choose one with hookpoint= (--hookpoint) or give path/<hookpoint>"
        )
    raise SaescopeError(
        f"no SAE found in {p}: expected saescope (config.json + sae.safetensors), SAELens "
        "(cfg.json + sae_weights.safetensors), sparsify (cfg.json + sae.safetensors), "
        "BatchTopK repo (config.json + sae.pt) or a saerch {domain}_{k}_{n}_{batch}.pth file"
    )


def load_sae(
    path: str | Path,
    *,
    hookpoint: str | None = None,
    k: int | None = None,
    device: str = "cpu",
) -> SAE:
    """Load an SAE of any supported format as a native `SAE`.

    path: a folder, a saerch .pth file, or a hub name `hf:OWNER/REPO[@REVISION][/PATH]`.
    hookpoint: the sub-folder of a sparsify (or any) checkpoint with one SAE per hookpoint.
    k: active latents for a saerch file whose name does not carry k.
    device: cpu, cuda, cuda:N or auto.
    The SAE comes ready for inference: eval mode, no gradients
    (`sae.requires_grad_(True)` to train it further).
    """
    from saescope.device import pick_device

    device = str(pick_device(device))  # an unknown device is named as such, not as a bad file
    return _load(path, hookpoint, k, device).eval().requires_grad_(False)


def _load(path: str | Path, hookpoint: str | None, k: int | None, device: str) -> SAE:
    where = detect_format(path, hookpoint)
    if k is not None and where.format != "saerch":
        raise SaescopeError(
            f"k can only be given for saerch .pth files; {where.path} is {where.format} "
            "and stores its own k"
        )
    if where.format == "saescope":
        sae = SAE.load(where.path, device=device)
        sae.cfg = dataclasses.replace(
            sae.cfg, metadata={**sae.cfg.metadata, "source_format": "saescope"}
        )
        return sae
    if where.format == "saelens":
        return load_saelens(where.path, device)
    if where.format == "sparsify":
        return load_sparsify(where.path, device)
    if where.format == "batchtopk_repo":
        return load_batchtopk_repo(where.path, device)
    return load_saerch(where.path, k=k, device=device)


__all__ = [
    "FORMATS",
    "Located",
    "detect_format",
    "export_saelens",
    "export_sparsify",
    "load_sae",
    "saelens_config",
]
