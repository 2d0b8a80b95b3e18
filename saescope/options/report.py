"""Options of the report stage (`saescope report`, saescope/report/stage.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from saescope.config import check_fields, check_ranges, option
from saescope.paths import DEFAULT_RUN


@dataclass(frozen=True)
class ReportConfig:
    """Options of the report stage."""

    run: str = option(
        DEFAULT_RUN, "run directory (reads latents/, interp/, scores/; writes report/)"
    )
    max_features: int = option(
        5000, "most features listed (alive features, the most active first when there are more)"
    )
    top_examples: int = option(10, "top-activating examples per feature card")
    quantile_examples: int = option(2, "examples per activation quantile bin per card")
    max_text_chars: int = option(400, "texts are cut to this many characters")
    title: str | None = option(None, "page title (default: the run directory's name)")

    def __post_init__(self) -> None:
        check_fields(self)
        counts = ("max_features", "top_examples", "max_text_chars")
        check_ranges(
            self,
            dict.fromkeys(counts, (1, math.inf, ">= 1"))
            | {"quantile_examples": (0, math.inf, ">= 0 (0: none)")},
        )
