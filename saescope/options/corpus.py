"""Options of the corpus stage (`saescope corpus`, saescope/corpus.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from saescope.config import check_fields, check_ranges, option
from saescope.errors import SaescopeError
from saescope.paths import DEFAULT_RUN


@dataclass(frozen=True)
class CorpusConfig:
    """Options of the corpus stage."""

    run: str = option(DEFAULT_RUN, "run directory to write corpus.parquet into")
    source: str = option(
        "news",
        "built-in corpus (news, tweets), a local .txt/.jsonl/.csv/.parquet file, or a Hugging "
        "Face dataset name or folder (prefix hf: to force that)",
    )
    text_column: str = option("text", "column holding the text (files and datasets)")
    id_column: str | None = option(None, "column holding a stable id; row numbers when unset")
    hf_split: str = option("train", "split of a Hugging Face dataset")
    hf_config: str | None = option(None, "configuration name of a Hugging Face dataset")
    sentences_per_chunk: int = option(
        2, "news: sentences per text (the articles have no paragraphs, so they are cut into runs)"
    )
    min_chars: int = option(20, "drop texts shorter than this many characters")
    max_chars: int = option(2000, "drop texts longer than this many characters")
    dedupe: bool = option(True, "drop exact duplicate texts (first one kept)")
    shuffle: bool = option(False, "shuffle the texts (seeded) before the limit")
    seed: int = option(0, "seed of the shuffle")
    limit: int | None = option(None, "keep at most this many texts")
    overwrite: bool = option(False, "replace a corpus.parquet made with other options")

    def __post_init__(self) -> None:
        check_fields(self)
        check_ranges(
            self,
            {
                "limit": (1, math.inf, ">= 1 (or unset: every text)"),
                "sentences_per_chunk": (1, math.inf, ">= 1"),
            },
        )
        if not 0 <= self.min_chars <= self.max_chars:
            raise SaescopeError(
                f"need 0 <= min_chars <= max_chars, got {self.min_chars} and {self.max_chars}"
            )
