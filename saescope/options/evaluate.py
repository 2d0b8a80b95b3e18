"""Options of the eval stage (`saescope eval`, saescope/evaluate.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from saescope.config import check_fields, check_ranges, option
from saescope.errors import SaescopeError
from saescope.paths import DEFAULT_RUN


@dataclass(frozen=True)
class EvalConfig:
    """Evaluate an SAE on the held-out rows of its run's activation store."""

    run: str = option(DEFAULT_RUN, "run directory (reads <run>/acts)")
    sae: str = option(
        "sae",
        "SAE folder: a name inside the run (sae, sae-4096-k16) or a path (a hub SAE: "
        "`saescope convert --src hf:...` into the run first)",
    )
    eval_fraction: float = option(
        -1.0, "held-out fraction of row ids (negative: the one the SAE was trained with)"
    )
    batch_size: int = option(4096, "rows per batch")
    max_rows: int = option(0, "evaluate at most this many held-out rows (0: all)")
    retrieval: str = option(
        "auto",
        "compute recall@k of nearest neighbours (auto: for sentence embeddings)",
        choices=("auto", "on", "off"),
    )
    retrieval_rows: int = option(5000, "rows used for the nearest-neighbour recall")
    retrieval_k: int = option(10, "neighbours compared per row")
    lm_contexts: int = option(
        32,
        "LM runs: contexts the model runs with the SAE spliced in for CE/KL (0: no LM metrics)",
    )
    lm_split: str = option(
        "eval",
        "LM runs: which contexts the LM metrics take (eval: held out from training)",
        choices=("eval", "train", "all"),
    )
    lm_batch_size: int = option(8, "LM runs: contexts per forward pass of the LM metrics")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        check_fields(self)
        at_least_one = (1, math.inf, ">= 1")
        check_ranges(
            self,
            {
                "batch_size": at_least_one,
                "max_rows": (0, math.inf, ">= 0 (0: all)"),
                "retrieval_rows": (0, math.inf, ">= 0"),
                "retrieval_k": at_least_one,
                "lm_contexts": (0, math.inf, ">= 0 (0: no LM metrics)"),
                "lm_batch_size": at_least_one,
            },
        )
        if not self.eval_fraction < 1:
            raise SaescopeError(
                f"eval_fraction must lie in [0, 1) (negative: as trained), got {self.eval_fraction}"
            )
