"""The files of `families/`, written by the stage and read by `inspect` and the report.

    families.parquet  one row per family: family, parent, round, size, n_children, depth,
                      parent_child, child_child, cooc_ratio, name, parent_label, shared,
                      name_source, members (parent first, then the tree's walk order), merged
    members.parquet   one row per (family, feature): tree_parent (-1 for the parent),
                      depth, weight (normalised co-occurrence with tree_parent)
    tree.json         every family as a nested tree {feature, weight, children}
    splits.parquet    feature splitting across SAE widths (`saescope.families.splits`)
    summary.json      the statistics of all families and of each pair of SAEs

`read_families(run)` gives `FamilyTables` (None when the stage has not run, or ran
on another latent cache than the current one), which answers `families_of(feature)`
and `splits_of(feature)` for the latent cache's SAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from saescope import provenance
from saescope.io import read_frame, read_json, sha256_file
from saescope.paths import RunPaths

if TYPE_CHECKING:  # readers (inspect, the report) need none of the stage's modules
    from saescope.families.naming import FamilyName
    from saescope.families.stats import FamilyStats
    from saescope.families.trees import Family

FORMAT = "saescope.families/1"


def families_frame(
    families: list[Family], stats: list[FamilyStats], names: list[FamilyName]
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "family": pd.Series(range(len(families)), dtype="int32"),
            "parent": pd.Series([f.parent for f in families], dtype="int32"),
            "round": pd.Series([f.round for f in families], dtype="int16"),
            "size": pd.Series([s.size for s in stats], dtype="int32"),
            "n_children": pd.Series([s.n_children for s in stats], dtype="int32"),
            "depth": pd.Series([s.depth for s in stats], dtype="int16"),
            "parent_child": pd.Series([s.parent_child for s in stats], dtype="float32"),
            "child_child": pd.Series([s.child_child for s in stats], dtype="float32"),
            "cooc_ratio": pd.Series([s.ratio for s in stats], dtype="float32"),
            "name": pd.Series([n.name for n in names], dtype="object"),
            "parent_label": pd.Series([n.parent for n in names], dtype="object"),
            "shared": pd.Series([n.shared for n in names], dtype="object"),
            "name_source": pd.Series([n.source for n in names], dtype="object"),
            "members": pd.Series([f.members for f in families], dtype="object"),
            "merged": pd.Series([list(f.merged) for f in families], dtype="object"),
        }
    )


def members_frame(families: list[Family]) -> pd.DataFrame:
    cols: dict[str, list[Any]] = {k: [] for k in ("family", "feature", "tree_parent", "depth")}
    weights: list[float] = []
    for k, fam in enumerate(families):
        depth = fam.depth_of()
        cols["family"].append(k)
        cols["feature"].append(fam.parent)
        cols["tree_parent"].append(-1)
        cols["depth"].append(0)
        weights.append(np.nan)
        for child, (up, w) in fam.tree.items():
            cols["family"].append(k)
            cols["feature"].append(child)
            cols["tree_parent"].append(up)
            cols["depth"].append(depth[child])
            weights.append(w)
    return pd.DataFrame(
        {
            "family": pd.Series(cols["family"], dtype="int32"),
            "feature": pd.Series(cols["feature"], dtype="int32"),
            "tree_parent": pd.Series(cols["tree_parent"], dtype="int32"),
            "depth": pd.Series(cols["depth"], dtype="int16"),
            "weight": pd.Series(weights, dtype="float32"),
        }
    )


def tree_json(families: list[Family], names: list[FamilyName], method: str) -> dict[str, Any]:
    """Every family as a nested tree (the children of a node: strongest edge first)."""
    out = []
    for k, (fam, name) in enumerate(zip(families, names, strict=True)):
        nodes: dict[int, dict[str, Any]] = {fam.parent: {"feature": fam.parent, "children": []}}
        for child, (up, w) in fam.tree.items():
            node = {"feature": child, "weight": round(float(w), 6), "children": []}
            nodes[up]["children"].append(node)
            nodes[child] = node
        out.append({"family": k, "name": name.name, "tree": nodes[fam.parent]})
    return {"format": FORMAT, "method": method, "families": out}


# --- reading -----------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyRef:
    """One family a feature belongs to."""

    family: int
    name: str | None
    parent: int  # the family's parent feature
    size: int
    depth: int  # the feature's depth in the family tree (0: it is the parent)
    tree_parent: int | None  # its parent in the family tree (None for the parent)
    children: list[int]  # its children in the family tree


@dataclass(frozen=True)
class SplitRef:
    """A feature of another SAE width that this feature splits into, or splits from."""

    sae: str  # the other SAE (run-relative folder or path)
    d_sae: int  # its width
    relation: str  # "splits into" (the other is wider) or "split from" (it is narrower)
    feature: int  # the other SAE's feature
    cosine: float
    share: float  # the parent's active rows on which the child fires too
    inside: float  # the child's active rows on which the parent fires too
    top_row: int  # the wider SAE's feature's strongest row


@dataclass(frozen=True)
class FamilyTables:
    families: pd.DataFrame
    members: pd.DataFrame
    splits: pd.DataFrame
    summary: dict[str, Any]
    cache_sae: str  # the name the latent cache's SAE has in `splits`

    def families_of(self, feature: int) -> list[FamilyRef]:
        rows = self.members[self.members["feature"] == feature]
        out = []
        for r in rows.itertuples(index=False):
            fam = self.families.iloc[int(r.family)]
            in_fam = self.members[self.members["family"] == r.family]
            kids = in_fam.loc[in_fam["tree_parent"] == feature, "feature"]
            name = fam["name"]
            out.append(
                FamilyRef(
                    family=int(r.family),
                    name=None if name is None or pd.isna(name) else str(name),
                    parent=int(fam["parent"]),
                    size=int(fam["size"]),
                    depth=int(r.depth),
                    tree_parent=None if int(r.tree_parent) < 0 else int(r.tree_parent),
                    children=[int(c) for c in kids],
                )
            )
        return out

    def splits_of(self, feature: int) -> list[SplitRef]:
        s = self.splits
        into = s[(s["small_sae"] == self.cache_sae) & (s["parent"] == feature)]
        came = s[(s["large_sae"] == self.cache_sae) & (s["child"] == feature)]
        out = [
            SplitRef(
                str(r.large_sae), int(r.large_d_sae), "splits into", int(r.child),
                float(r.cosine), float(r.share), float(r.inside), int(r.child_top_row),
            )
            for r in into.itertuples(index=False)
        ]  # fmt: skip
        out += [
            SplitRef(
                str(r.small_sae), int(r.small_d_sae), "split from", int(r.parent),
                float(r.cosine), float(r.share), float(r.inside), int(r.child_top_row),
            )
            for r in came.itertuples(index=False)
        ]  # fmt: skip
        return out


def is_current(rp: RunPaths) -> bool:
    """True when families/ was made from the latent cache that is there now, and from the
    names there now (keywords and explanations name the families and, with some methods,
    decide which features join)."""
    saved = provenance.saved_upstream(rp.families_record)
    made_from = saved.get("latents")
    if not (
        made_from is not None
        and rp.latents_manifest.exists()
        and made_from == provenance.artifact_id(rp.latents_manifest)
    ):
        return False
    for name, path in (("keywords", rp.keywords), ("explanations", rp.explanations)):
        now = sha256_file(path) if path.exists() else None
        if saved.get(name) != now:
            return False
    return True


def stale_note(rp: RunPaths) -> str | None:
    """ "families/ (made from ...)" when the run has families that are not shown because
    they no longer describe its latent cache and names; else None."""
    if rp.families_table.exists() and not is_current(rp):
        return "families/ (made from another latent cache or other names)"
    return None


def read_families(run: str | Path) -> FamilyTables | None:
    """The families of a run, or None when there are none for its current latent cache."""
    rp = RunPaths(run)
    if not rp.families_table.exists() or not is_current(rp):
        return None
    record = provenance.read_record(rp.families_record) or {}
    if record.get("status") != "complete":
        return None
    summary = read_json(rp.families_summary) if rp.families_summary.exists() else {}
    return FamilyTables(
        families=read_frame(rp.families_table),
        members=read_frame(rp.family_members),
        splits=read_frame(rp.family_splits),
        summary=summary,
        cache_sae=str(summary.get("cache_sae", "")),
    )
