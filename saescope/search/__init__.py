"""Steerable semantic search over a sentence-embedding run, and its evaluation.

  index.py     exact (torch) and approximate (faiss IVF) indexes over acts/; `open_index`
  stage.py     `saescope index`: builds index/<kind>/, resumable, tied to its store
  select.py    edit requests (boost, suppress, clamp, zero) and features found by name
  query.py     `SearchSession`: query -> SAE codes -> edits -> query vector -> top k, explained
  cli.py       `saescope search`: results before and after the edits, side by side
  evaluate.py  `saescope search-eval`: edit success against query drift, with no LLM judge

Names are imported on first use (this package's modules load torch).
"""

from typing import TYPE_CHECKING

from saescope._lazy import lazy_exports

if TYPE_CHECKING:
    from saescope.search.evaluate import run as evaluate_search
    from saescope.search.index import ExactIndex, Hits, IvfIndex, open_index
    from saescope.search.query import Hit, SearchResult, SearchSession
    from saescope.search.select import EditRequest, boost, suppress
    from saescope.search.stage import run as build_index

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "EditRequest": ("saescope.search.select", "EditRequest"),
        "ExactIndex": ("saescope.search.index", "ExactIndex"),
        "Hit": ("saescope.search.query", "Hit"),
        "Hits": ("saescope.search.index", "Hits"),
        "IvfIndex": ("saescope.search.index", "IvfIndex"),
        "SearchResult": ("saescope.search.query", "SearchResult"),
        "SearchSession": ("saescope.search.query", "SearchSession"),
        "boost": ("saescope.search.select", "boost"),
        "build_index": ("saescope.search.stage", "run"),
        "evaluate_search": ("saescope.search.evaluate", "run"),
        "open_index": ("saescope.search.index", "open_index"),
        "suppress": ("saescope.search.select", "suppress"),
    },
)

__all__ = [
    "EditRequest",
    "ExactIndex",
    "Hit",
    "Hits",
    "IvfIndex",
    "SearchResult",
    "SearchSession",
    "boost",
    "build_index",
    "evaluate_search",
    "open_index",
    "suppress",
]
