"""Options of the keywords stage (`saescope keywords`, saescope/interp/keywords.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from saescope.config import check_fields, check_ranges, option, refuse_unread
from saescope.options.examples import SPLIT_KINDS, activations_option
from saescope.paths import DEFAULT_RUN

METHODS = ("contrastive", "thesis")
THESIS_ONLY = ("n_texts", "top_n")
CONTRASTIVE_ONLY = ("max_texts", "min_df", "prior", "confidence", "shortlist", "sae_weight",
                    "mmr_lambda")  # fmt: skip


@dataclass(frozen=True)
class KeywordsConfig:
    """Options of the keywords stage."""

    run: str = option(DEFAULT_RUN, "run directory (reads latents/ or sae/, writes interp/)")
    method: str = option("contrastive", "naming method", choices=METHODS)
    activations: str = activations_option()
    features: list[int] | None = option(None, "name only these feature ids (default: all alive)")
    split_seed: int = option(1, "seed of the naming/scoring split of rows (scorers must match)")
    split: str = option(
        "doc",
        "naming/scoring split: every row of a document in the same half (doc; rows without "
        "a document by row id), or each row on its own (row)",
        choices=SPLIT_KINDS,
    )
    model: str | None = option(None, "sentence model for phrases (default: the store's model)")
    batch_size: int = option(256, "phrases per embedding batch")
    n_keywords: int | None = option(None, "keywords per feature (default: thesis 3, contrastive 5)")
    ngram_max: int | None = option(None, "longest n-gram (default: thesis 1, contrastive 2)")
    n_texts: int = option(10, "thesis: top naming texts per feature")
    top_n: int = option(5, "thesis: keywords kept per text")
    max_texts: int = option(200, "contrastive: top naming texts per feature")
    min_df: int = option(2, "contrastive: a phrase must occur in this many naming texts")
    prior: float = option(10.0, "contrastive: strength of the log-odds prior")
    confidence: float = option(
        2.0, "contrastive: standard errors taken off a phrase's log-odds ratio before ranking"
    )
    shortlist: int = option(30, "contrastive: phrases per feature re-ranked by the SAE")
    sae_weight: float = option(0.7, "contrastive: weight of the SAE pre-activation (0..1)")
    mmr_lambda: float = option(0.7, "contrastive: relevance versus diversity in MMR (0..1)")
    progress: bool = option(True, "show progress bars")
    overwrite: bool = option(False, "replace keywords made with other options")

    def __post_init__(self) -> None:
        check_fields(self)
        at_least_one = (1, math.inf, ">= 1")
        counts = ("batch_size", "n_keywords", "ngram_max", "n_texts", "top_n", "max_texts",
                  "min_df", "shortlist")  # fmt: skip
        share = (0, 1, "between 0 and 1")
        check_ranges(
            self,
            dict.fromkeys(counts, at_least_one)
            | {"sae_weight": share, "mmr_lambda": share}
            | {"prior": (1e-9, math.inf, "> 0"), "confidence": (0, math.inf, ">= 0")},
        )
        own = THESIS_ONLY if self.method == "thesis" else CONTRASTIVE_ONLY
        refuse_unread(
            self, set(THESIS_ONLY + CONTRASTIVE_ONLY) - set(own), f"--method {self.method}"
        )
