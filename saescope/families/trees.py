"""Families from co-occurrence trees: rounds of spanning forests, families, duplicates merged.

In: the co-occurrence table, the features that may join (a boolean mask), the
feature counts and the method's `Rules`. Out: `Family` objects, each a parent, its
descendants and the tree that links them, with the round it was found in.

A family is a parent with its descendants in a tree of the forest. saerch: every
root (no parent) with at least `min_children` children, and, inside its tree, every
descendant that has `min_children` children itself and hangs from such a parent
(nested families); each round builds a new forest without the parents found so far.
thesis: every root with its descendants; each round removes the roots from the same
forest. Finally families with fewer than `min_descendants` are dropped and
near-duplicates (Jaccard of their members above `jaccard`) are merged into the
family kept: the larger one (saerch) or the first found (thesis).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from saescope.families.graph import Edges, Forest, cooccurrence_edges, spanning_forest
from saescope.families.methods import Rules
from saescope.families.pairs import Pairs


@dataclass(frozen=True)
class Family:
    """A parent feature and the tree of its descendants."""

    parent: int
    round: int  # 0 for the first forest
    # child -> (its parent in the family tree, edge weight), in the order a walk from
    # the family's parent reaches them (the strongest edge first)
    tree: dict[int, tuple[int, float]]
    merged: tuple[int, ...] = field(default=())  # parents of near-duplicates merged into it

    @property
    def descendants(self) -> list[int]:
        return list(self.tree)

    @property
    def members(self) -> list[int]:
        return [self.parent, *self.tree]

    def depth_of(self) -> dict[int, int]:
        """Feature -> depth in the family tree (the parent 0)."""
        depth = {self.parent: 0}
        for child, (up, _) in self.tree.items():  # parents are reached before children
            depth[child] = depth[up] + 1
        return depth

    @property
    def depth(self) -> int:
        return max(self.depth_of().values())

    def children_of(self, feature: int) -> list[int]:
        return [c for c, (up, _) in self.tree.items() if up == feature]


def _walk(root: int, children: dict[int, list[tuple[int, float]]]) -> dict[int, tuple[int, float]]:
    """Descendants of `root` (depth first, strongest edge first): child -> (parent, weight).

    The oriented forest can give a feature two parents (both denser than it); the walk
    keeps the first path that reaches it, as a depth-first tree does.
    """
    tree: dict[int, tuple[int, float]] = {}
    seen = {root}
    stack = [(root, iter(children.get(root, [])))]
    while stack:
        node, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            stack.pop()
            continue
        child, w = nxt
        if child in seen:
            continue
        seen.add(child)
        tree[child] = (node, w)
        stack.append((child, iter(children.get(child, []))))
    return tree


def _subtree(tree: dict[int, tuple[int, float]], top: int) -> dict[int, tuple[int, float]]:
    """The part of a walk's `tree` below `top`, in the walk's order."""
    below = {top}
    out = {}
    for child, (up, w) in tree.items():
        if up in below:
            below.add(child)
            out[child] = (up, w)
    return out


def _saerch_round(forest: Forest, d_sae: int, rules: Rules, rnd: int) -> list[Family]:
    """Roots with `min_children` children and, nested in their trees, every such descendant."""
    children = forest.children()
    indeg = forest.in_degree(d_sae)
    found = []
    roots = [p for p, cs in sorted(children.items()) if indeg[p] == 0]
    for root in roots:
        tree = _walk(root, children)
        kids: dict[int, list[int]] = {}
        for child, (up, _) in tree.items():
            kids.setdefault(up, []).append(child)
        todo = [root]
        while todo:  # descend only through family parents, as the reference recursion does
            node = todo.pop(0)
            if len(kids.get(node, [])) < rules.min_children:
                continue
            sub = tree if node == root else _subtree(tree, node)
            found.append(Family(node, rnd, sub))
            if rules.nested:
                todo.extend(kids[node])
    return found


def _thesis_round(forest: Forest, gone: np.ndarray, d_sae: int, rnd: int) -> list[Family]:
    """Every root of what is left of the forest, with all its descendants."""
    keep = ~gone[forest.parent] & ~gone[forest.child]
    left = Forest(forest.parent[keep], forest.child[keep], forest.weight[keep])
    children = left.children()
    indeg = left.in_degree(d_sae)
    roots = [p for p in sorted(children) if indeg[p] == 0 and not gone[p]]
    return [Family(p, rnd, _walk(p, children)) for p in roots]


def find_families(
    pairs: Pairs, nodes: np.ndarray, rules: Rules
) -> tuple[list[Family], list[Forest]]:
    """The families among the features of the boolean mask `nodes` (d_sae,), duplicates
    merged, and the forest of every round."""
    d_sae = pairs.d_sae
    edges: Edges = cooccurrence_edges(pairs, nodes, rules)
    gone = np.zeros(d_sae, dtype=bool)  # parents taken out by earlier rounds
    found: list[Family] = []
    forests: list[Forest] = []
    first = spanning_forest(edges, d_sae)
    for rnd in range(rules.rounds):
        if rules.rebuild:
            forest = first if rnd == 0 else spanning_forest(edges.among(~gone), d_sae)
            new = _saerch_round(forest, d_sae, rules, rnd)
        else:
            forest = first
            new = _thesis_round(forest, gone, d_sae, rnd)
        forests.append(forest)
        if not new:
            break
        found += new
        gone[[f.parent for f in new]] = True
    big = [f for f in found if len(f.tree) >= rules.min_descendants]
    big = [f for f in big if _enough_children(f, rules.min_children)]
    return merge_duplicates(big, rules), forests


def _enough_children(f: Family, min_children: int) -> bool:
    return len(f.children_of(f.parent)) >= min_children


def merge_duplicates(families: list[Family], rules: Rules) -> list[Family]:
    """Drop a family whose members overlap a kept one's by Jaccard > `rules.jaccard`,
    recording its parent in the kept family's `merged`."""
    order = list(range(len(families)))
    if rules.keep_larger:  # the larger first; ties: earlier round, then lower parent
        order.sort(key=lambda i: (-len(families[i].tree), families[i].round, families[i].parent))
    kept: list[Family] = []
    sets: list[set[int]] = []
    merged: list[list[int]] = []
    by_feature: dict[int, list[int]] = {}  # feature -> kept families holding it
    for i in order:
        fam = families[i]
        mem = set(fam.members)
        candidates = sorted({k for f in mem for k in by_feature.get(f, [])})
        dup = next(
            (k for k in candidates if len(mem & sets[k]) / len(mem | sets[k]) > rules.jaccard),
            None,
        )
        if dup is not None:
            merged[dup].append(fam.parent)
            continue
        for f in mem:
            by_feature.setdefault(f, []).append(len(kept))
        kept.append(fam)
        sets.append(mem)
        merged.append([])
    return [Family(f.parent, f.round, f.tree, tuple(m)) for f, m in zip(kept, merged, strict=True)]
