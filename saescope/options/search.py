"""Options of steerable semantic search: `saescope index`, `saescope search-eval` (stages,
saescope/search/stage.py and saescope/search/evaluate.py) and `saescope search` (a
command, saescope/search/cli.py). Light: imports nothing heavy, for `--help`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from saescope.config import check_fields, option
from saescope.paths import DEFAULT_RUN

KINDS = ("exact", "ivf")  # the index kinds `saescope index` builds
INDEX_CHOICES = ("auto", *KINDS)
UNITS = ("typical", "absolute")
# The strength of an edit that names none, when the run has no search-eval recommendation:
# in units of the feature's largest activation; search-eval's recommendation on the demo
# run (docs/search.md).
DEFAULT_STRENGTH = 12.0


@dataclass(frozen=True)
class IndexConfig:
    """Options of the index stage."""

    run: str = option(DEFAULT_RUN, "run directory (reads acts/, writes index/<kind>/)")
    kind: str = option(
        "auto",
        "exact: cosine top-k over every row (torch, streamed in blocks); ivf: approximate "
        "faiss IndexIVFFlat (needs faiss-cpu); auto: ivf from --approximate-from rows on "
        "when faiss is installed, else exact",
        choices=INDEX_CHOICES,
    )
    approximate_from: int = option(1_000_000, "auto: stores with this many rows get an ivf index")
    nlist: int | None = option(
        None, "ivf: inverted lists (default: 4 x sqrt(rows), at most training rows / 39)"
    )
    train_rows: int = option(100_000, "ivf: rows sampled to train the coarse quantizer")
    seed: int = option(0, "ivf: seed of the training sample and of k-means")
    progress: bool = option(True, "show a progress bar")
    overwrite: bool = option(False, "replace an index built from another store or other options")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class SearchEvalConfig:
    """Options of search-eval."""

    run: str = option(
        DEFAULT_RUN, "run directory (reads acts/, index/, latents/, the SAE; writes search/)"
    )
    index: str = option(
        "auto", "index to search (auto: ivf if built, else exact)", choices=INDEX_CHOICES
    )
    nprobe: int | None = option(None, "ivf: lists visited per query (default: the index's)")
    queries: str | None = option(
        None,
        "file of query texts (.txt one a line, or .parquet/.csv/.jsonl with a text column), "
        "embedded with the run's model; default: --n-queries rows of the corpus, left out of "
        "the index (never returned as results)",
    )
    n_queries: int = option(200, "queries drawn from the corpus (or from --queries)")
    strengths: list[float] = option(
        [0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0],
        "edit strengths tried, in units of each feature's largest activation on the run",
    )
    boost_from: str = option(
        "all",
        "features boosted: any feature inactive on the query (all), or one inactive on it "
        "that fires on some of its 50 nearest rows (near: a nearby topic)",
        choices=("all", "near"),
    )
    k: int = option(10, "results per query")
    min_count: int = option(
        20, "features edited must fire on at least this many rows (so k results can hold them)"
    )
    seed: int = option(0, "seed of the queries and of the features edited")
    progress: bool = option(True, "show a progress bar")
    overwrite: bool = option(False, "replace search/eval.* made from other inputs or options")

    def __post_init__(self) -> None:
        check_fields(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`saescope search`'s flags."""
    parser.add_argument("query", nargs="?", help="the query text (or --row)")
    parser.add_argument(
        "--run", default=DEFAULT_RUN, help=f"run directory (default: {DEFAULT_RUN})"
    )
    parser.add_argument(
        "--row",
        help="query with a row of the store instead of a text: its number, or its corpus id",
    )
    edit = "FEATURE[:STRENGTH]: a feature id or a word of its name (keywords, explanations)"
    parser.add_argument(
        "--boost",
        action="append",
        default=[],
        metavar="SPEC",
        help=f"add the feature to the query (repeatable); {edit}",
    )
    parser.add_argument(
        "--suppress",
        action="append",
        default=[],
        metavar="SPEC",
        help=f"subtract the feature from the query (repeatable); {edit}",
    )
    parser.add_argument(
        "--clamp",
        action="append",
        default=[],
        metavar="SPEC",
        help="set the feature's code in the query to STRENGTH (repeatable)",
    )
    parser.add_argument(
        "--zero",
        action="append",
        default=[],
        metavar="FEATURE",
        help="remove the feature from the query, and nothing else (repeatable)",
    )
    parser.add_argument(
        "--strength",
        type=float,
        default=None,
        help="strength of edits that name none (default: the run's search-eval recommendation, "
        f"else {DEFAULT_STRENGTH})",
    )
    parser.add_argument(
        "--unit",
        choices=UNITS,
        default="typical",
        help="typical: strengths times the feature's largest activation on the run "
        "(latents/features.parquet); absolute: as given (default: typical)",
    )
    parser.add_argument("-k", "--k", type=int, default=10, help="results (default: 10)")
    parser.add_argument(
        "--index", choices=INDEX_CHOICES, default="auto", help="index (default: auto: ivf if built)"
    )
    parser.add_argument("--nprobe", type=int, default=None, help="ivf: lists visited per query")
    parser.add_argument(
        "--sae",
        default=None,
        help="SAE (any format load_sae reads) instead of the latent cache's; its edits take "
        "absolute strengths and features by id unless latents/ was made with it",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="sentence model for the query text (default: the one that embedded the store)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--width", type=int, default=0, help="line width (default: the terminal's, at least 80)"
    )
