"""Options of the score stage (`saescope score`, saescope/scoring/stage.py)."""

from __future__ import annotations

from dataclasses import dataclass

from saescope.config import option
from saescope.options.examples import activations_option
from saescope.paths import DEFAULT_RUN

# the NAME of each scorer module in saescope/scoring/ (a test checks they agree)
SCORERS = ("embedding", "keyword-relevance")


@dataclass(frozen=True)
class ScoreConfig:
    """Options of the score stage."""

    run: str = option(DEFAULT_RUN, "run directory (reads interp/keywords.parquet, writes scores/)")
    scorer: str = option("embedding", "which scorer", choices=SCORERS)
    activations: str = activations_option()
    model: str | None = option(
        None,
        "sentence model that embeds names and held-out texts (default: the store's model, the "
        "one the keywords were made with; all-mpnet-base-v2, packaged, scores independently)",
    )
    max_pos: int = option(100, "embedding: most activating held-out texts per feature")
    n_neg: int = option(100, "embedding: held-out non-activating texts per feature")
    min_pos: int = option(2, "features with fewer held-out activating texts are not scored")
    n_texts: int = option(10, "keyword-relevance: top texts per feature")
    examples: str = option(
        "scoring",
        "keyword-relevance: texts from the held-out scoring half, or the naming half (the thesis)",
        choices=("scoring", "naming"),
    )
    seed: int = option(0, "seed of the negative sample and of the shuffled control")
    batch_size: int = option(256, "phrases per embedding batch")
    progress: bool = option(True, "show progress bars")
    overwrite: bool = option(False, "replace scores made with other options")
