"""Options of the convert stage (`saescope convert`, saescope/convert.py)."""

from __future__ import annotations

from dataclasses import dataclass

from saescope.config import check_fields, option

TARGETS = ("native", "saelens", "sparsify")


@dataclass(frozen=True)
class ConvertConfig:
    """Options of the convert stage."""

    src: str = option(
        "",
        "SAE to read: a folder (saescope, SAELens, sparsify, BatchTopK repo), a saerch .pth "
        "file, or either on the Hugging Face hub as hf:OWNER/REPO[@REVISION][/PATH]",
    )
    out: str = option("", "folder to write the converted SAE into")
    to: str = option("native", "format to write", choices=TARGETS)
    hookpoint: str | None = option(
        None, "sub-folder of a checkpoint with one SAE per hookpoint (sparsify)"
    )
    k: int | None = option(None, "active latents of a saerch .pth whose name does not carry k")
    overwrite: bool = option(
        False,
        "replace what --out holds: another conversion's SAE files, or a trained SAE with its "
        "training record, metrics and checkpoints",
    )

    def __post_init__(self) -> None:
        check_fields(self)
