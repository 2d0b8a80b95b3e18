"""Statistics of families: size, depth, parent-child against child-child co-occurrence,
the block-diagonal co-occurrence ratio against random permutations, coverage.

In: the families, the co-occurrence table and the features that could join.
Out: `FamilyStats` per family and a summary dict (written to families/summary.json).

Co-occurrence is read normalised as m_ij = C_ij / min(n_i, n_j) (the share of the
sparser feature's rows on which both fire; 1 when one only fires with the other),
as the saerch statistics do. The block-diagonal ratio orders the features family
by family (a feature in several families goes with the first; features in none are
blocks of one) and takes the share of all off-diagonal co-occurrence mass that falls
inside the family blocks; the same share under random permutations of the features
(block sizes kept) says how much of it structure explains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from saescope.families.trees import Family
from saescope.features import Cooccurrence


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


@dataclass(frozen=True)
class Normalised:
    """m_ij of the pairs among the joinable features (upper triangle), and as a matrix."""

    i: np.ndarray  # (nnz,) int64
    j: np.ndarray  # (nnz,) int64
    m: np.ndarray  # (nnz,) float64
    matrix: sp.csr_matrix  # (d_sae, d_sae) symmetric, zero diagonal


def normalised(co: Cooccurrence, nodes: np.ndarray) -> Normalised:
    i = co.indices[0].astype(np.int64)
    j = co.indices[1].astype(np.int64)
    keep = nodes[i] & nodes[j]
    i, j = i[keep], j[keep]
    n = co.diagonal.astype(np.float64)
    m = co.counts[keep] / np.maximum(np.minimum(n[i], n[j]), 1.0)
    d = len(n)
    upper = sp.csr_matrix((m, (i, j)), shape=(d, d))
    return Normalised(i, j, m, (upper + upper.T).tocsr())


def family_stats(fam: Family, norm: Normalised) -> FamilyStats:
    desc = np.asarray(fam.descendants, dtype=np.int64)
    parent_row = norm.matrix[fam.parent]  # (1, d_sae)
    pc = float(parent_row[:, desc].mean())
    cc = None
    if len(desc) > 1:
        sub = norm.matrix[desc][:, desc]  # (n_desc, n_desc), zero diagonal
        cc = float(sub.sum()) / (len(desc) * (len(desc) - 1))
    return FamilyStats(
        size=len(desc) + 1,
        n_children=len(fam.children_of(fam.parent)),
        depth=fam.depth,
        parent_child=pc,
        child_child=cc,
    )


def block_labels(families: list[Family], nodes: np.ndarray) -> np.ndarray:
    """(d_sae,) block of each joinable feature: its first family, or a block of its own."""
    labels = np.full(len(nodes), -1, dtype=np.int64)
    for k, fam in enumerate(families):
        members = np.asarray(fam.members, dtype=np.int64)
        free = members[labels[members] < 0]
        labels[free] = k
    alone = np.flatnonzero(nodes & (labels < 0))
    labels[alone] = len(families) + np.arange(len(alone))
    return labels


def block_ratio(norm: Normalised, labels: np.ndarray) -> float:
    """Share of the off-diagonal co-occurrence mass inside the blocks of `labels`."""
    total = float(norm.m.sum())
    if total == 0:
        return 0.0
    return float(norm.m[labels[norm.i] == labels[norm.j]].sum()) / total


def random_block_ratio(
    norm: Normalised, labels: np.ndarray, nodes: np.ndarray, n_perm: int, seed: int
) -> float:
    """Mean block ratio when the joinable features are shuffled among the same blocks."""
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(nodes)
    out = []
    for _ in range(n_perm):
        shuffled = labels.copy()
        shuffled[idx] = labels[idx][rng.permutation(len(idx))]
        out.append(block_ratio(norm, shuffled))
    return float(np.mean(out)) if out else float("nan")


def summary(
    families: list[Family],
    stats: list[FamilyStats],
    norm: Normalised,
    nodes: np.ndarray,
    alive: np.ndarray,
    n_perm: int,
    seed: int,
) -> dict[str, Any]:
    """Numbers that describe all the families of a run (families/summary.json)."""
    members = np.zeros(len(nodes), dtype=bool)
    for fam in families:
        members[fam.members] = True
    labels = block_labels(families, nodes)
    ratio = block_ratio(norm, labels)
    rand = random_block_ratio(norm, labels, nodes, n_perm, seed)
    sizes = np.array([s.size for s in stats])
    cc = [s.child_child for s in stats if s.child_child is not None]
    by_round = np.bincount([f.round for f in families]) if families else np.zeros(0, int)
    rounds = {str(r): int(n) for r, n in enumerate(by_round) if n}

    def mean(xs: Any) -> float | None:
        return float(np.mean(xs)) if len(xs) else None

    return {
        "n_families": len(families),
        "alive_features": int(alive.sum()),
        "joinable_features": int(nodes.sum()),
        "features_in_families": int(members.sum()),
        "coverage": float((members & alive).sum() / max(int(alive.sum()), 1)),
        "families_by_round": rounds,
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
        "n_permutations": n_perm,
    }
