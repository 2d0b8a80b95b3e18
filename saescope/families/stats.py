"""Statistics of families: size, depth, parent-child against child-child co-occurrence,
the block-diagonal co-occurrence ratio against random permutations, coverage.

In: the families, the co-occurrence pairs and the features that could join.
Out: `FamilyStats` per family and a summary dict (written to families/summary.json).

Co-occurrence is read normalised as m_ij = C_ij / min(n_i, n_j) (the share of the
sparser feature's rows on which both fire; 1 when one only fires with the other),
as the saerch statistics do. The block-diagonal ratio orders the joinable features
family by family (a feature in several families goes with the first; features in
none are blocks of one) and takes the share of all their off-diagonal co-occurrence
mass that falls inside the blocks. Its random baseline is the same share when the
features are shuffled among the same blocks: a pair lands in one block with
probability sum_b s_b (s_b - 1) / (N (N - 1)) whatever its mass, so the expected
share over all permutations is exactly that number (no sampling needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from saescope.families.pairs import Chunk, Pairs
from saescope.families.trees import Family

MAX_CHILD_PAIRS = 200_000  # pairs of descendants averaged (a fixed sample beyond)


@dataclass(frozen=True)
class FamilyStats:
    size: int  # members: the parent and its descendants
    n_children: int  # direct children of the parent
    depth: int  # longest parent -> descendant path (1: children only)
    parent_child: float  # mean m(parent, descendant)
    child_child: float | None  # mean m over pairs of descendants (None: one descendant)

    @property
    def ratio(self) -> float | None:
        """parent-child over child-child co-occurrence (None when child-child is 0 or None)."""
        cc = self.child_child
        return None if not cc else self.parent_child / cc


def family_stats(fam: Family, pairs: Pairs) -> FamilyStats:
    desc = np.asarray(fam.descendants, dtype=np.int64)
    pc = float(pairs.m(np.full(len(desc), fam.parent), desc).mean())
    cc = None
    if len(desc) > 1:
        a, b = np.triu_indices(len(desc), 1)
        if len(a) > MAX_CHILD_PAIRS:  # a family of hundreds of features: a seeded sample
            pick = np.random.default_rng(0).choice(len(a), MAX_CHILD_PAIRS, replace=False)
            a, b = a[pick], b[pick]
        cc = float(pairs.m(desc[a], desc[b]).mean())
    return FamilyStats(
        size=len(desc) + 1,
        n_children=len(fam.children_of(fam.parent)),
        depth=fam.depth,
        parent_child=pc,
        child_child=cc,
    )


def block_labels(families: list[Family], nodes: np.ndarray) -> np.ndarray:
    """(d_sae,) block of each joinable feature: its first family, or a block of its own
    (-1 for features that cannot join)."""
    labels = np.full(len(nodes), -1, dtype=np.int64)
    for k, fam in enumerate(families):
        members = np.asarray(fam.members, dtype=np.int64)
        free = members[labels[members] < 0]
        labels[free] = k
    alone = np.flatnonzero(nodes & (labels < 0))
    labels[alone] = len(families) + np.arange(len(alone))
    return labels


def block_ratio(pairs: Pairs, labels: np.ndarray, nodes: np.ndarray) -> tuple[float, float]:
    """(share of the joinable features' off-diagonal co-occurrence mass inside the blocks
    of `labels`, the expected share when the features are randomly permuted)."""
    inside = total = 0.0
    for c in pairs.chunks():
        keep = nodes[c.i] & nodes[c.j]
        i, j = c.i[keep], c.j[keep]
        m = pairs.normalised(Chunk(i, j, c.count[keep]))
        total += float(m.sum())
        inside += float(m[labels[i] == labels[j]].sum())
    sizes = np.bincount(labels[nodes]).astype(np.float64)
    n = float(nodes.sum())
    random = float((sizes * (sizes - 1)).sum() / (n * (n - 1))) if n > 1 else 0.0
    return (inside / total if total else 0.0), random


def summary(
    families: list[Family],
    stats: list[FamilyStats],
    pairs: Pairs,
    nodes: np.ndarray,
    alive: np.ndarray,
) -> dict[str, Any]:
    """Numbers that describe all the families of a run (families/summary.json)."""
    members = np.zeros(len(nodes), dtype=bool)
    for fam in families:
        members[fam.members] = True
    ratio, rand = block_ratio(pairs, block_labels(families, nodes), nodes)
    sizes = np.array([s.size for s in stats])
    cc = [s.child_child for s in stats if s.child_child is not None]
    by_round = np.bincount([f.round for f in families]) if families else np.zeros(0, int)

    def mean(xs: Any) -> float | None:
        return float(np.mean(xs)) if len(xs) else None

    return {
        "n_families": len(families),
        "alive_features": int(alive.sum()),
        "joinable_features": int(nodes.sum()),
        "features_in_families": int(members.sum()),
        "coverage": float((members & alive).sum() / max(int(alive.sum()), 1)),
        "families_by_round": {str(r): int(n) for r, n in enumerate(by_round) if n},
        "merged_duplicates": int(sum(len(f.merged) for f in families)),
        "mean_size": mean(sizes),
        "max_size": int(sizes.max()) if len(sizes) else 0,
        "mean_depth": mean([s.depth for s in stats]),
        "max_depth": max((s.depth for s in stats), default=0),
        "mean_parent_child": mean([s.parent_child for s in stats]),
        "mean_child_child": mean(cc),
        "block_ratio": ratio,
        "block_ratio_random": rand,
        "block_ratio_lift": ratio / rand if rand else None,
        "cooccurring_pairs": len(pairs),
    }
