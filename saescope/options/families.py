"""Options of the families stage (`saescope families`, saescope/families/stage.py).

A threshold left at None takes the chosen method's published value
(`saescope.families.methods`); the values used are saved in the stage's result.
"""

from __future__ import annotations

from dataclasses import dataclass

from saescope.config import check_fields, option
from saescope.paths import DEFAULT_RUN

# the name of each family-finding method in saescope/families/methods.py (a test checks)
METHODS = ("saerch", "thesis")


@dataclass(frozen=True)
class FamiliesConfig:
    """Options of the families stage."""

    run: str = option(DEFAULT_RUN, "run directory (reads latents/ and interp/, writes families/)")
    method: str = option(
        "saerch",
        "saerch: seed 004's co-occurrence trees (rebuilt each round without the parents found, "
        "nested sub-families); thesis: seeds 000/001's variant (one tree, keyword-score filter)",
        choices=METHODS,
    )
    threshold: float | None = option(
        None,
        "edges whose normalised co-occurrence (pair count / count of the sparser feature) is "
        "below this are dropped (default: 0.1 for both methods)",
    )
    max_density: float | None = option(
        None,
        "features active on more than this fraction of rows stay out of the trees "
        "(default: saerch 0.2, thesis 1.0)",
    )
    min_count: int = option(1, "features active on fewer rows stay out of the trees")
    rounds: int | None = option(
        None,
        "rounds of family finding; each round drops the parents found so far (default: "
        "saerch 4, a tree and 3 rebuilt ones; thesis 3 on one tree)",
    )
    min_children: int | None = option(
        None, "a family's parent has at least this many children (default: saerch 3, thesis 1)"
    )
    min_descendants: int | None = option(
        None,
        "a family has at least this many features below its parent (default: saerch 4, thesis 1)",
    )
    jaccard: float | None = option(
        None,
        "families whose members overlap more than this (Jaccard) are merged into the first "
        "kept one (default: 0.6 for both methods)",
    )
    keyword_percentile: float | None = option(
        None,
        "only features whose top keyword score reaches this percentile join the trees "
        "(needs `saescope keywords`; default: thesis 75, saerch none)",
    )
    splits: bool = option(
        True, "match features with SAEs of other widths trained on the same store"
    )
    split_saes: list[str] | None = option(
        None,
        "SAE folders or files (any format load_sae reads) to match against the latent cache's "
        "SAE (default: every other SAE folder of the run, sae-<d_sae>-k<k>/ from a sweep)",
    )
    split_min_cosine: float | None = option(
        None,
        "a larger SAE's feature splits its nearest smaller-SAE feature only when their "
        "decoder cosine is at least this (default: none, as saerch)",
    )
    batch_size: int = option(4096, "store rows encoded per batch by the other SAEs")
    progress: bool = option(True, "show progress bars")
    overwrite: bool = option(False, "replace families made from other inputs or options")

    def __post_init__(self) -> None:
        check_fields(self)
