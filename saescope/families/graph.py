"""Co-occurrence edges and their maximum spanning forest, oriented from parent to child.

In: the latent cache's co-occurrence table (`Pairs`: pair counts C_ij of the upper
triangle and each feature's count n_i), the features that
may join (`nodes`), and the method's `Rules`. Out: `Edges` (the pairs that pass the
threshold, with their weight) and `Forest` (the tree edges, each directed from the
parent to the child).

The weight of a pair is C_ij / (n_child + smoothing), where the child is the sparser
feature of the pair: the fraction of the child's rows on which the parent fires too.
(Both reference implementations normalise one row of the matrix by its count and
then read an undirected graph from the asymmetric matrix, which takes the weight
of whichever direction the feature ids put last; normalising by the sparser
feature is the direction the parent -> child reading means.) The parent is the
denser feature (more rows; ties: the lower id).

Exact ties in the spanning tree (a feature that fires only together with both its
parent and its grandparent has the same weight to both) go to the more specific
parent, the one of whose rows the pair takes the larger share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import minimum_spanning_tree

from saescope.families.methods import Rules
from saescope.families.pairs import Pairs

TIE_BREAK = 1e-6  # scale of the share-of-the-parent term that only decides exact ties


@dataclass(frozen=True)
class Edges:
    """Pairs of features whose normalised co-occurrence passes the threshold."""

    parent: np.ndarray  # (n_edges,) int64 feature ids, the denser of each pair
    child: np.ndarray  # (n_edges,) int64
    weight: np.ndarray  # (n_edges,) float64: C / (n_child + smoothing)
    tie: np.ndarray  # (n_edges,) float64: C / (n_parent + smoothing), breaks exact ties

    def among(self, keep: np.ndarray) -> Edges:
        """The edges whose both ends are in the boolean mask `keep` (d_sae,)."""
        m = keep[self.parent] & keep[self.child]
        return Edges(self.parent[m], self.child[m], self.weight[m], self.tie[m])

    def __len__(self) -> int:
        return len(self.weight)


@dataclass(frozen=True)
class Forest:
    """A maximum spanning forest: every tree edge directed from parent to child."""

    parent: np.ndarray  # (n_tree_edges,) int64
    child: np.ndarray  # (n_tree_edges,) int64
    weight: np.ndarray  # (n_tree_edges,) float64

    def children(self) -> dict[int, list[tuple[int, float]]]:
        """parent -> [(child, weight)], the strongest edge first (then the lower id)."""
        out: dict[int, list[tuple[int, float]]] = {}
        order = np.lexsort((self.child, -self.weight))
        for e in order.tolist():
            out.setdefault(int(self.parent[e]), []).append(
                (int(self.child[e]), float(self.weight[e]))
            )
        return out

    def in_degree(self, d_sae: int) -> np.ndarray:
        return np.bincount(self.child, minlength=d_sae)


def cooccurrence_edges(pairs: Pairs, nodes: np.ndarray, rules: Rules) -> Edges:
    """Edges between features of the boolean mask `nodes` (d_sae,) that pass the threshold
    (the table is read a chunk at a time: only the edges that pass are kept)."""
    n = pairs.n
    parts = []
    for c in pairs.chunks():
        keep = nodes[c.i] & nodes[c.j]
        i, j, cnt = c.i[keep], c.j[keep], c.count[keep].astype(np.float64)
        # the parent is the denser feature; on equal counts the lower id (i < j in the table)
        i_parent = n[i] >= n[j]
        parent = np.where(i_parent, i, j)
        child = np.where(i_parent, j, i)
        weight = cnt / (n[child] + rules.smoothing)
        ok = weight > rules.threshold if rules.strict else weight >= rules.threshold
        tie = cnt[ok] / (n[parent[ok]] + rules.smoothing)
        parts.append((parent[ok], child[ok], weight[ok], tie))
    if not parts:
        empty = np.zeros(0, np.int64)
        return Edges(empty, empty, np.zeros(0), np.zeros(0))
    parent, child, weight, tie = (np.concatenate(x) for x in zip(*parts, strict=True))
    return Edges(parent.astype(np.int64), child.astype(np.int64), weight, tie)


def spanning_forest(edges: Edges, d_sae: int) -> Forest:
    """The maximum spanning forest of `edges` (one tree per connected component)."""
    if len(edges) == 0:
        empty = np.zeros(0, np.int64)
        return Forest(empty, empty, np.zeros(0, np.float64))
    # The spanning tree of a component has a fixed number of edges, so minimising the
    # sum of (2 - w) maximises the sum of w; 2 - w > 0 keeps every edge an edge.
    cost = 2.0 - (edges.weight + TIE_BREAK * edges.tie)
    g = sp.csr_matrix((cost, (edges.parent, edges.child)), shape=(d_sae, d_sae))
    tree = minimum_spanning_tree(g).tocoo()
    a, b = tree.row.astype(np.int64), tree.col.astype(np.int64)
    # the tree keeps the direction we gave each edge (parent, child); look up its weight
    key = edges.parent * d_sae + edges.child
    order = np.argsort(key)
    pos = order[np.searchsorted(key[order], a * d_sae + b)]
    return Forest(edges.parent[pos], edges.child[pos], edges.weight[pos])
