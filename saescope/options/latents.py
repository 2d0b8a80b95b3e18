"""Options of the latents stage (`saescope latents`, saescope/latents.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from saescope.config import check_fields, check_ranges, option
from saescope.paths import DEFAULT_RUN


@dataclass(frozen=True)
class LatentsConfig:
    """Options of the latents stage."""

    run: str = option(DEFAULT_RUN, "run directory (reads acts/ and sae/, writes latents/)")
    sae: str | None = option(
        None, "SAE folder to use instead of <run>/sae: a name inside the run or a path"
    )
    batch_size: int = option(4096, "rows encoded per forward pass")
    shard_rows: int = option(65536, "store rows per latent shard (the unit of resume)")
    device: str = option("auto", "cuda, cpu or auto (cuda when present)")
    top_n: int = option(20, "top-activating examples kept per feature")
    n_quantiles: int = option(10, "bins a feature's activating rows are split into by activation")
    examples_per_quantile: int = option(5, "random examples drawn from each quantile bin")
    n_random: int = option(20, "random non-activating rows per feature (contrast examples)")
    seed: int = option(0, "seed of the quantile and random example draws")
    cooccurrence: bool = option(True, "count pairs of features active in the same row")
    plots: bool = option(True, "draw the PNG plots under latents/plots/")
    max_chunk_nnz: int = option(
        2_000_000,
        "most non-zeros held in memory at once while sampling examples (about 16 bytes each; "
        "more are spilled to a temporary folder in latents/)",
    )
    overwrite: bool = option(False, "replace a cache made from another SAE or store")

    def __post_init__(self) -> None:
        check_fields(self)
        counts = ("top_n", "n_quantiles", "batch_size", "shard_rows", "max_chunk_nnz")
        check_ranges(
            self,
            dict.fromkeys(counts, (1, math.inf, ">= 1"))
            | dict.fromkeys(("examples_per_quantile", "n_random"), (0, math.inf, ">= 0")),
        )
