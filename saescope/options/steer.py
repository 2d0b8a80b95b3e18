"""Options of the steering stage (`saescope steer`, saescope/steer/stage.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from saescope.config import check_fields, check_ranges, option
from saescope.paths import DEFAULT_RUN

OPS = ("add", "clamp", "ablate")
UNITS = ("typical", "absolute")


@dataclass(frozen=True)
class SteerConfig:
    """Options of the steering stage."""

    run: str = option(DEFAULT_RUN, "an LM run (reads acts/, the SAE, latents/; writes steer/)")
    sae: str | None = option(
        None,
        "SAE folder (any format load_sae reads, or hf:OWNER/REPO/PATH on the hub) instead of "
        "the latent cache's SAE",
    )
    features: list[int] = option(
        [], "features to steer together (none: the best --pick features by output score)"
    )
    pick: int = option(
        1, "with no --features: how many of the best-ranked features to steer, one at a time"
    )
    rank: int = option(
        200, "features ranked by output score (the densest alive ones; 0: rank none)"
    )
    op: str = option(
        "add",
        "add: h + s * W_dec[f]; clamp: set the feature to s; ablate: set it to 0 "
        "(clamp and ablate keep the SAE's error term)",
        choices=OPS,
    )
    strength: float = option(2.0, "s: the amount added (add) or the value (clamp)")
    unit: str = option(
        "typical",
        "typical: s times the feature's largest activation in the run (latents/features.parquet); "
        "absolute: s as it is",
        choices=UNITS,
    )
    positions: str = option(
        "all", "where to steer: all, prompt, generated, or from:P (position P of each sequence on)"
    )
    prompts: str | None = option(
        None, "file of prompts, one a line (default: neutral prompts shipped with saescope)"
    )
    max_new_tokens: int = option(24, "tokens generated per prompt")
    sample: bool = option(False, "sample instead of greedy decoding")
    temperature: float = option(1.0, "sampling temperature")
    seed: int = option(0, "seed of the sampling (the same for steered and unsteered)")
    sweep: bool = option(
        False,
        "try --strengths, choose per feature the one that raises the concept most while the "
        "perplexity stays within --max-ppl-ratio of the unsteered text (chosen on half the "
        "prompts, reported on the other half)",
    )
    strengths: list[float] = option([0.5, 1.0, 2.0, 4.0, 8.0], "strengths tried by --sweep")
    max_ppl_ratio: float = option(
        2.0, "--sweep: the perplexity allowed, as a multiple of unsteered"
    )
    lens_tokens: int = option(10, "top logit-lens tokens of a feature used by the output score")
    batch_size: int = option(8, "prompts per forward pass")
    use_cache: bool = option(True, "generate with the KV cache (steering is the same without)")
    device: str = option("auto", "cuda, cpu or auto (cuda when present)")
    model_dtype: str = option(
        "float32", "dtype the model runs in", choices=("float32", "bfloat16", "float16")
    )
    overwrite: bool = option(False, "replace steer/ made with other options")

    def __post_init__(self) -> None:
        check_fields(self)
        at_least_one = (1, math.inf, ">= 1")
        check_ranges(
            self,
            dict.fromkeys(("pick", "lens_tokens", "max_new_tokens", "batch_size"), at_least_one)
            | {
                "rank": (0, math.inf, ">= 0 (0: rank none)"),
                "temperature": (1e-6, math.inf, "> 0 (greedy decoding: leave --sample off)"),
                "max_ppl_ratio": (1e-9, math.inf, "> 0"),
            },
        )
