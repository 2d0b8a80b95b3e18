"""The family-finding methods: each one's rules and published thresholds, in one registry.

In: a `FamiliesConfig`. Out: `Rules`, every threshold resolved (an option left at
None takes the method's published value). Where the values come from:

saerch (seed 004; the reference code is the authors' `matrix.py` / `family.py`)
    co-occurrence normalised by (count + 1), edges below 0.1 dropped, a maximum
    spanning tree with edges from the denser feature to the sparser, families = roots
    with more than 2 children and, recursively, their descendants with more than 2
    children; only families with more than 3 descendants kept; 3 further rounds, each
    on a tree rebuilt without the parents found so far; features of density 0.2 or
    more left out; duplicates of Jaccard above 0.6 dropped, the larger kept.
thesis (seeds 000/001; the thesis repository's `extract_feature_families.py` and
    `coactivation_graph.py`)
    co-occurrence normalised by the count (no + 1), edges at or below 0.1 dropped, one
    maximum spanning tree oriented from the more frequent feature, only features whose
    top keyword score reaches the 75th percentile, families = every root with its
    descendants (any size), 3 rounds that remove the roots from the same tree,
    duplicates of Jaccard above 0.6 dropped, the first kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from saescope.errors import SaescopeError
from saescope.options.families import METHODS, FamiliesConfig


@dataclass(frozen=True)
class Rules:
    """Everything that decides the families of one run (saved in the stage's result)."""

    method: str
    threshold: float  # normalised co-occurrence an edge needs
    strict: bool  # edge kept when w > threshold (thesis) rather than w >= threshold (saerch)
    smoothing: float  # added to the count that normalises a pair (saerch 1; thesis ~0)
    max_density: float
    min_count: int
    rounds: int
    rebuild: bool  # each round builds a new tree without the parents found (saerch)
    nested: bool  # sub-families inside a family's tree count too (saerch)
    min_children: int
    min_descendants: int
    jaccard: float
    keep_larger: bool  # of two duplicates keep the larger (saerch) or the first found (thesis)
    keyword_percentile: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# the published values, method by method (see the module docstring)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "saerch": {
        "threshold": 0.1,
        "strict": False,
        "smoothing": 1.0,
        "max_density": 0.2,
        "rounds": 4,
        "rebuild": True,
        "nested": True,
        "min_children": 3,
        "min_descendants": 4,
        "jaccard": 0.6,
        "keep_larger": True,
        "keyword_percentile": None,
    },
    "thesis": {
        "threshold": 0.1,
        "strict": True,
        "smoothing": 1e-6,
        "max_density": 1.0,
        "rounds": 3,
        "rebuild": False,
        "nested": False,
        "min_children": 1,
        "min_descendants": 1,
        "jaccard": 0.6,
        "keep_larger": False,
        "keyword_percentile": 75.0,
    },
}
assert tuple(_DEFAULTS) == METHODS


def rules(cfg: FamiliesConfig) -> Rules:
    """The rules of `cfg`: its options, the method's published value where one is None."""
    if cfg.method not in _DEFAULTS:
        raise SaescopeError(f"unknown families method {cfg.method!r}; choose {', '.join(METHODS)}")
    d = dict(_DEFAULTS[cfg.method])
    for name in (
        "threshold",
        "max_density",
        "rounds",
        "min_children",
        "min_descendants",
        "jaccard",
        "keyword_percentile",
    ):
        value = getattr(cfg, name)
        if value is not None:
            d[name] = value
    r = Rules(method=cfg.method, min_count=cfg.min_count, **d)
    _check(r)
    return r


def _check(r: Rules) -> None:
    if not 0.0 <= r.threshold <= 1.0:
        raise SaescopeError(f"--threshold must be between 0 and 1, got {r.threshold}")
    if not 0.0 < r.max_density <= 1.0:
        raise SaescopeError(f"--max-density must be in (0, 1], got {r.max_density}")
    if not 0.0 <= r.jaccard <= 1.0:
        raise SaescopeError(f"--jaccard must be between 0 and 1, got {r.jaccard}")
    for name in ("rounds", "min_children", "min_descendants", "min_count"):
        if getattr(r, name) < 1:
            raise SaescopeError(f"--{name.replace('_', '-')} must be >= 1")
    p = r.keyword_percentile
    if p is not None and not 0.0 <= p <= 100.0:
        raise SaescopeError(f"--keyword-percentile must be between 0 and 100, got {p}")
