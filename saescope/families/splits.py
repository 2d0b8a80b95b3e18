"""Feature splitting across SAE widths: which features of a wider SAE split a narrower one's.

In: the latent cache (codes of the SAE it was encoded with), the activation store,
and other SAEs of other widths trained on the same store (the folders a sweep
writes, `sae-<d_sae>-k<k>/`, or any file `load_sae` reads). Out: one table row per
live feature of the wider SAE of each pair: the narrower SAE's feature it splits
(the one whose decoder direction is nearest, by cosine, as saerch matches them),
the cosine, and how their examples divide the parent's:

    share    the parent's active rows on which this child fires too
    inside   the child's active rows on which the parent fires too
    covered  the parent's active rows on which any of its children fires

Each pair is (the latent cache's SAE, another SAE), ordered narrower -> wider; the
other SAE's codes come from encoding the store once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from saescope.errors import SaescopeError
from saescope.io import sha256_file, sha256_text
from saescope.paths import NATIVE_SAE_WEIGHTS, RunPaths
from saescope.sae import SAE, detect_format, load_sae
from saescope.sae.sparse import encode_sparse
from saescope.store import ActivationStore

COLUMNS = {
    "small_sae": "string",
    "large_sae": "string",
    "small_d_sae": "int32",
    "large_d_sae": "int32",
    "parent": "int32",  # feature of the narrower SAE
    "child": "int32",  # feature of the wider SAE
    "cosine": "float32",
    "parent_count": "int64",
    "child_count": "int64",
    "overlap": "int64",  # rows where both fire
    "share": "float32",
    "inside": "float32",
    "covered": "float32",
    "child_top_row": "int64",  # the child's strongest row (its examples are not cached)
}


@dataclass(frozen=True)
class OtherSAE:
    name: str  # run-relative folder, or the absolute path of an SAE outside the run
    path: Path


@dataclass(frozen=True)
class Codes:
    """The non-zero codes of one SAE over every store row."""

    rows: np.ndarray  # (nnz,) int64
    feats: np.ndarray  # (nnz,) int64
    vals: np.ndarray  # (nnz,) float32
    d_sae: int

    def counts(self) -> np.ndarray:
        return np.bincount(self.feats, minlength=self.d_sae).astype(np.int64)

    def top_rows(self) -> np.ndarray:
        """(d_sae,) the row of each feature's largest activation (-1: never fires; on equal
        values the first such row)."""
        best = np.full(self.d_sae, -np.inf, dtype=np.float32)
        np.maximum.at(best, self.feats, self.vals)
        hit = np.flatnonzero(self.vals == best[self.feats])[::-1]  # the first row written last
        out = np.full(self.d_sae, -1, dtype=np.int64)
        out[self.feats[hit]] = self.rows[hit]
        return out


def sae_name(rp: RunPaths, path: Path) -> str:
    folder, root = Path(path).resolve(), rp.root.resolve()
    return str(folder.relative_to(root)) if folder.is_relative_to(root) else str(folder)


def other_saes(
    rp: RunPaths, cache_sae: Path, cache_sha256: str, explicit: list[str] | None
) -> list[OtherSAE]:
    """The SAEs to match with the cache's: `explicit`, or the run's other SAE folders
    (the cache's own SAE, or a copy of its weights, left out)."""
    own = Path(cache_sae).resolve()
    paths = [Path(p) for p in explicit] if explicit is not None else rp.sae_folders()
    out = []
    for p in paths:
        where = detect_format(p)  # names a path that holds no SAE
        native = where.path / NATIVE_SAE_WEIGHTS
        if where.path.resolve() == own or (
            where.format == "saescope" and sha256_file(native) == cache_sha256
        ):
            continue
        out.append(OtherSAE(sae_name(rp, where.path), where.path))
    return out


def weights_id(path: Path) -> str:
    """Identity of an SAE's weights (its weight files' sha256)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    files = sorted(q for q in p.iterdir() if q.suffix in (".safetensors", ".pt", ".pth"))
    return sha256_text("\n".join(f"{q.name}\t{sha256_file(q)}" for q in files))


def upstream(others: list[OtherSAE]) -> dict[str, str]:
    return {f"split_sae:{o.name}": weights_id(o.path) for o in others}


def unit_directions(sae: SAE) -> np.ndarray:
    """(d_sae, d_in) decoder rows scaled to unit norm."""
    w = sae.W_dec.detach().float()
    return torch.nn.functional.normalize(w, dim=1).numpy()


def nearest(
    small: np.ndarray, large: np.ndarray, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `large` (d_large, d_in): the nearest row of `small` (d_small, d_in)
    by cosine, and that cosine. Both unit rows; done in blocks of the larger SAE."""
    match = np.empty(len(large), dtype=np.int64)
    cos = np.empty(len(large), dtype=np.float32)
    for lo in range(0, len(large), block):
        sims = large[lo : lo + block] @ small.T  # (block, d_small)
        match[lo : lo + block] = sims.argmax(axis=1)
        cos[lo : lo + block] = sims.max(axis=1)
    return match, cos


def cache_codes(triples: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]], d_sae: int) -> Codes:
    parts = list(triples)
    if not parts:
        empty = np.zeros(0, np.int64)
        return Codes(empty, empty, np.zeros(0, np.float32), d_sae)
    rows, feats, vals = (np.concatenate(p) for p in zip(*parts, strict=True))
    return Codes(rows.astype(np.int64), feats.astype(np.int64), vals.astype(np.float32), d_sae)


def encode_codes(sae: SAE, store: ActivationStore, batch_size: int, progress: bool) -> Codes:
    """The SAE's non-zero codes over every store row, in row order."""
    if sae.cfg.d_in != store.d_in:
        raise SaescopeError(
            f"an SAE to match takes d_in={sae.cfg.d_in} but the store holds d_in={store.d_in}; "
            "give SAEs trained on this run's store (--split-saes)"
        )
    rows, feats, vals = [], [], []
    start = 0
    bar = tqdm(total=store.count, desc=f"encode d_sae={sae.cfg.d_sae}", disable=not progress)
    with torch.inference_mode():
        for x in store.iter_batches(batch_size, shuffle=False):
            r, f, v = encode_sparse(sae, x)
            rows.append(r.numpy() + start)
            feats.append(f.numpy())
            vals.append(v.float().numpy())
            start += len(x)
            bar.update(len(x))
    bar.close()
    return cache_codes(iter(zip(rows, feats, vals, strict=True)), sae.cfg.d_sae)


def split_rows(
    small: Codes,
    large: Codes,
    match: np.ndarray,
    cos: np.ndarray,
    min_cos: float | None,
) -> pd.DataFrame:
    """One row per live feature of `large` that splits a feature of `small` (no names yet)."""
    ds = small.d_sae
    small_keys = np.sort(small.rows * ds + small.feats)
    child_count = large.counts()
    ok = child_count > 0
    if min_cos is not None:
        ok &= cos >= min_cos
    sel = ok[large.feats]
    q = large.rows[sel] * ds + match[large.feats[sel]]
    pos = np.minimum(np.searchsorted(small_keys, q), max(len(small_keys) - 1, 0))
    found = small_keys[pos] == q if len(small_keys) else np.zeros(len(q), dtype=bool)
    overlap = np.bincount(large.feats[sel][found], minlength=large.d_sae)
    covered_keys = np.unique(q[found])
    covered = np.bincount(covered_keys % ds, minlength=ds)
    parent_count = small.counts()
    child = np.flatnonzero(ok)
    parent = match[child]
    pc = parent_count[parent]
    return pd.DataFrame(
        {
            "parent": parent,
            "child": child,
            "cosine": cos[child],
            "parent_count": pc,
            "child_count": child_count[child],
            "overlap": overlap[child],
            "share": overlap[child] / np.maximum(pc, 1),
            "inside": overlap[child] / child_count[child],
            "covered": covered[parent] / np.maximum(pc, 1),
            "child_top_row": large.top_rows()[child],
        }
    ).sort_values(["parent", "cosine"], ascending=[True, False], kind="stable")


def pair_table(
    cache_name: str,
    cache_sae: SAE,
    cache: Codes,
    other: OtherSAE,
    store: ActivationStore,
    batch_size: int,
    min_cos: float | None,
    progress: bool,
) -> pd.DataFrame | None:
    """The split table of (the cache's SAE, `other`); None when both have one width."""
    sae = load_sae(other.path)
    if sae.cfg.d_sae == cache_sae.cfg.d_sae:
        return None
    codes = encode_codes(sae, store, batch_size, progress)
    sides = [(cache_name, cache_sae, cache), (other.name, sae, codes)]
    (s_name, s_sae, s_codes), (l_name, l_sae, l_codes) = sorted(sides, key=lambda t: t[1].cfg.d_sae)
    match, cos = nearest(unit_directions(s_sae), unit_directions(l_sae))
    df = split_rows(s_codes, l_codes, match, cos, min_cos)
    df.insert(0, "large_d_sae", l_sae.cfg.d_sae)
    df.insert(0, "small_d_sae", s_sae.cfg.d_sae)
    df.insert(0, "large_sae", l_name)
    df.insert(0, "small_sae", s_name)
    return df


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})


def typed(df: pd.DataFrame) -> pd.DataFrame:
    return df[list(COLUMNS)].astype(COLUMNS).reset_index(drop=True)


def pair_summary(df: pd.DataFrame) -> dict[str, float | int]:
    """How the narrower SAE's features split, in numbers (for families/summary.json)."""
    per_parent = df.groupby("parent")
    n_children = per_parent.size()
    return {
        "small_d_sae": int(df["small_d_sae"].iloc[0]),
        "large_d_sae": int(df["large_d_sae"].iloc[0]),
        "children": len(df),
        "parents": int(n_children.size),
        "parents_split_in_2_or_more": int((n_children >= 2).sum()),
        "mean_children": float(n_children.mean()),
        "mean_cosine": float(df["cosine"].mean()),
        "median_inside": float(df["inside"].median()),
        "mean_covered": float(per_parent["covered"].first().mean()),
    }
