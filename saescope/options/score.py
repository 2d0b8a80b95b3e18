"""Options of the score stage (`saescope score`, saescope/scoring/stage.py)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from saescope.config import check_fields, check_ranges, option, refuse_unread
from saescope.errors import SaescopeError
from saescope.options.examples import activations_option
from saescope.options.llm import LLMOptions
from saescope.paths import DEFAULT_RUN

# the NAME of each scorer module in saescope/scoring/ and saescope/scoring/llm/
# (a test checks they agree)
EMBEDDING_SCORERS = ("embedding", "keyword-relevance")
LLM_SCORERS = ("detection", "fuzzing", "intruder", "simulation", "surprisal")
SCORERS = EMBEDDING_SCORERS + LLM_SCORERS
NAME_KINDS = ("keywords", "explanations")
NEGATIVES = ("random", "nearest")


def default_names(scorer: str) -> str:
    """What a scorer scores unless told: LLM scorers the explanations, the others keywords."""
    return "explanations" if scorer in LLM_SCORERS else "keywords"


def score_key(scorer: str, names: str | None) -> str:
    """The file stem of a scorer's output: the scorer, plus the names when not its default
    (`detection` scores explanations, `detection-keywords` keywords)."""
    names = names or default_names(scorer)
    return scorer if names == default_names(scorer) else f"{scorer}-{names}"


@dataclass(frozen=True)
class ScoreConfig(LLMOptions):
    """Options of the score stage (the LLM client options matter to the LLM scorers only)."""

    run: str = option(DEFAULT_RUN, "run directory (reads interp/, writes scores/)")
    scorer: str = option(
        "embedding",
        "which scorer: embedding and keyword-relevance embed the names; detection, fuzzing "
        "(token runs), intruder, simulation ask an LLM; surprisal reads a base model's loss",
        choices=SCORERS,
    )
    names: str | None = option(
        None,
        "what to score: keywords or explanations (default: explanations for the LLM scorers, "
        "keywords for the others)",
        choices=NAME_KINDS,
    )
    activations: str = activations_option()
    model: str | None = option(
        None,
        "sentence model that embeds names and held-out texts (default: the store's model, the "
        "one the keywords were made with; all-mpnet-base-v2, packaged, scores independently)",
    )
    max_pos: int = option(100, "embedding: most activating held-out texts per feature")
    n_neg: int = option(100, "embedding: held-out non-activating texts per feature")
    min_pos: int = option(2, "features with fewer held-out activating examples are not scored")
    n_texts: int = option(10, "keyword-relevance: top texts per feature")
    examples: str = option(
        "scoring",
        "keyword-relevance: texts from the held-out scoring half, or the naming half (the thesis)",
        choices=("scoring", "naming"),
    )
    features: list[int] | None = option(None, "LLM scorers: score only these features")
    n_features: int | None = option(
        None, "LLM scorers: a seeded random sample of this many named features (default: all)"
    )
    llm_pos: int = option(20, "LLM scorers: activating held-out examples per feature")
    llm_neg: int = option(20, "LLM scorers: non-activating held-out examples per feature")
    negatives: str = option(
        "random",
        "LLM scorers: non-activating examples at random, or nearest to the activating ones "
        "by sentence embedding",
        choices=NEGATIVES,
    )
    per_prompt: int = option(10, "detection, fuzzing, simulation: examples per request")
    n_groups: int = option(5, "intruder: groups per feature")
    group_size: int = option(5, "intruder: examples per group, the intruder included")
    max_chars: int = option(300, "LLM scorers: a text example is cut to this many characters")
    answer_tokens: int = option(60, "LLM scorers: longest answer asked for, in tokens")
    max_failed: float = option(
        0.5,
        "LLM scorers: a feature with a larger fraction of failed requests is marked failed, "
        "not averaged in",
    )
    surprisal_model: str | None = option(
        None, "surprisal: the base model (default: the packaged SmolLM2)"
    )
    seed: int = option(0, "seed of the samples and of the shuffled control")
    batch_size: int = option(256, "phrases per embedding batch")
    progress: bool = option(True, "show progress bars")
    overwrite: bool = option(False, "replace scores made with other options")

    def __post_init__(self) -> None:
        check_fields(self)
        # counts a scorer cannot work without (0 or less scored no feature and replaced
        # the scores that were there)
        counts = ("max_pos", "n_neg", "min_pos", "n_texts", "llm_pos", "llm_neg",
                  "per_prompt", "n_groups", "batch_size")  # fmt: skip
        ranges: dict[str, tuple[float, float, str]] = dict.fromkeys(counts, (1, math.inf, ">= 1"))
        ranges["group_size"] = (2, math.inf, ">= 2 (the intruder and one more)")
        ranges |= {
            "max_chars": (1, math.inf, ">= 1"),
            "answer_tokens": (1, math.inf, ">= 1"),
            "max_failed": (0.0, 1.0, "a fraction between 0 and 1"),
            "n_features": (1, math.inf, ">= 1"),
        }
        check_ranges(self, ranges)
        if self.scorer in EMBEDDING_SCORERS and (self.features or self.n_features):
            raise SaescopeError(
                f"--features and --n-features choose the features of the LLM scorers; the "
                f"{self.scorer} scorer scores every named feature (drop them)"
            )
        refuse_unread(self, unread_options(self.scorer), f"--scorer {self.scorer}")


# the options only some scorers read (beyond the LLM client's, which a config file may well
# share between scorers): another scorer's set away from its default is refused
SCORER_ONLY = {
    "max_pos": ("embedding",),
    "n_neg": ("embedding",),
    "n_texts": ("keyword-relevance",),
    "examples": ("keyword-relevance",),
    "per_prompt": ("detection", "fuzzing", "simulation"),
    "n_groups": ("intruder",),
    "group_size": ("intruder",),
    "surprisal_model": ("surprisal",),
} | dict.fromkeys(
    ("llm_pos", "llm_neg", "negatives", "max_chars", "answer_tokens", "max_failed"), LLM_SCORERS
)


def unread_options(scorer: str) -> tuple[str, ...]:
    """The options of `SCORER_ONLY` that `scorer` does not read."""
    return tuple(name for name, readers in SCORER_ONLY.items() if scorer not in readers)


# options only the LLM scorers read: the embedding scorers' records leave them out
LLM_ONLY_OPTIONS = tuple(f.name for f in dataclasses.fields(LLMOptions)) + (
    "features",
    "n_features",
    "llm_pos",
    "llm_neg",
    "negatives",
    "per_prompt",
    "n_groups",
    "group_size",
    "max_chars",
    "answer_tokens",
    "max_failed",
    "surprisal_model",
)
