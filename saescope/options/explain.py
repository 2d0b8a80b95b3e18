"""Options of the explain stage (`saescope explain`, saescope/explain/stage.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from saescope.config import changed_options, check_fields, check_ranges, option
from saescope.errors import SaescopeError
from saescope.options.examples import SPLIT_KINDS, activations_option
from saescope.options.llm import LLMOptions
from saescope.paths import DEFAULT_RUN

EXPLAINERS = ("default", "contrastive")
CONTRASTIVE_ONLY = ("n_negatives", "contrastive_pool", "model")  # read by that explainer only


@dataclass(frozen=True)
class ExplainConfig(LLMOptions):
    """Options of the explain stage (and of its LLM client, below)."""

    run: str = option(DEFAULT_RUN, "run directory (reads latents/, writes interp/explanations.*)")
    method: str = option(
        "default",
        "explainer: activating examples (default), or those plus the nearest non-activating "
        "ones (contrastive)",
        choices=EXPLAINERS,
    )
    activations: str = activations_option()
    features: list[int] | None = option(None, "explain only these feature ids")
    n_features: int | None = option(
        None, "explain a seeded random sample of this many alive features (default: all)"
    )
    seed: int = option(0, "seed of the feature sample and of the quantile examples")
    split_seed: int = option(1, "seed of the naming/scoring split (scorers read it from here)")
    split: str = option(
        "doc", "naming/scoring split: by document (doc) or by row (row)", choices=SPLIT_KINDS
    )
    n_top: int = option(10, "top activating examples shown")
    n_quantiles: int = option(10, "activation quantiles the other examples come from")
    n_examples: int = option(
        40, "examples drawn from the quantiles, n_examples / n_quantiles from each (a multiple)"
    )
    min_examples: int = option(3, "features with fewer naming-half examples are not explained")
    n_negatives: int = option(10, "contrastive: nearest non-activating examples shown")
    contrastive_pool: int = option(
        200, "contrastive: random non-activating rows the nearest are picked from"
    )
    max_chars: int = option(300, "a text example is cut to this many characters")
    answer_tokens: int = option(80, "longest answer asked for, in tokens")
    model: str | None = option(
        None, "contrastive: sentence model that finds the nearest rows (default: the store's)"
    )
    progress: bool = option(True, "show progress bars")
    overwrite: bool = option(False, "replace explanations made with other options")

    def __post_init__(self) -> None:
        check_fields(self)
        at_least_one = (1, math.inf, ">= 1")
        check_ranges(
            self,
            dict.fromkeys(
                (
                    "n_quantiles",
                    "min_examples",
                    "contrastive_pool",
                    "max_chars",
                    "answer_tokens",
                    "n_features",
                ),
                at_least_one,
            )  # fmt: skip
            | dict.fromkeys(("n_top", "n_examples", "n_negatives"), (0, math.inf, ">= 0")),
        )
        if self.n_top + self.n_examples < 1:
            raise SaescopeError(
                "--n-top and --n-examples are both 0: the prompts would show no example"
            )
        if self.n_examples % self.n_quantiles:
            raise SaescopeError(
                f"--n-examples {self.n_examples} is not a multiple of --n-quantiles "
                f"{self.n_quantiles}: each quantile gives the same number of examples"
            )
        if self.features is not None and self.n_features is not None:
            raise SaescopeError("give --features or --n-features, not both")
        changed = changed_options(self, CONTRASTIVE_ONLY) if self.method != "contrastive" else []
        if changed:
            raise SaescopeError(
                f"--{changed[0].replace('_', '-')} is an option of --method contrastive; "
                f"the {self.method} explainer shows no non-activating examples"
            )
