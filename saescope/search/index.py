"""Search indexes over a run's activation store: exact (torch) and approximate (faiss IVF).

In: an index folder written by `saescope index` (saescope/search/stage.py):
  index/exact/  block-NNNNN.safetensors   the rows of store shard N, L2-normalised float32
  index/ivf/    index.faiss               a faiss IndexIVFFlat (inner product) of the normalised
                                          rows, with store row ids
  index/<kind>/manifest.json              kind, d_in, count, the identity of the store it was
                                          built from (sha256 of acts/manifest.json), its files
Out: `open_index(run, kind)` -> `ExactIndex` or `IvfIndex`, refused when the store changed
since the index was built. Both answer `search(q, k, exclude)`: the k rows most similar by
cosine to each query vector (raw vectors; they are normalised here), as `Hits`.

Exact search holds the normalised rows in one (count, d_in) float32 tensor and scores them
in chunks (one matrix-vector product for a single query); approximate search visits
`nprobe` of the index's `nlist` lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from safetensors.torch import load_file

from saescope import provenance
from saescope.errors import SaescopeError, describe
from saescope.io import read_json, sha256_file
from saescope.options.search import KINDS
from saescope.paths import RunPaths

FORMAT = "saescope.index/1"
TENSOR = "vectors"
CHUNK_SCORES = 1 << 24  # most (row, query) scores held at once by exact search (64 MB)


class Hits(NamedTuple):
    """Results of `n_q` queries; rows -1 (score -inf) pad queries with fewer than k results."""

    scores: np.ndarray  # (n_q, k) float32 cosine similarity, best first
    rows: np.ndarray  # (n_q, k) int64 store row ids

    def of(self, i: int) -> list[tuple[int, float]]:
        """(row, score) of query i's results, best first, padding dropped."""
        return [
            (int(r), float(s)) for r, s in zip(self.rows[i], self.scores[i], strict=True) if r >= 0
        ]


class Index(Protocol):
    kind: str
    count: int
    d_in: int

    def search(
        self, q: torch.Tensor, k: int, exclude: Sequence[int] | np.ndarray | None = None
    ) -> Hits: ...


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows of x (n, d) scaled to unit L2 norm, float32 (zero rows stay zero)."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _as_queries(q: torch.Tensor, d_in: int) -> torch.Tensor:
    q = torch.as_tensor(q)
    q = q.reshape(1, -1) if q.dim() == 1 else q
    if q.shape[-1] != d_in:
        raise SaescopeError(
            f"the query has {q.shape[-1]} dimensions but the index holds {d_in}-d rows"
        )
    return normalise(q)


def _check_k(k: int) -> None:
    if k < 1:
        raise SaescopeError(f"the number of results must be >= 1, got {k}")


@dataclass
class ExactIndex:
    """Every normalised row in memory; cosine top-k by matrix products, chunk by chunk."""

    vectors: torch.Tensor  # (count, d_in) float32, unit rows
    kind: str = "exact"

    @property
    def count(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.vectors.shape[1])

    @torch.inference_mode()
    def search(
        self, q: torch.Tensor, k: int, exclude: Sequence[int] | np.ndarray | None = None
    ) -> Hits:
        _check_k(k)
        q = _as_queries(q, self.d_in)  # (n_q, d_in)
        n_q = q.shape[0]
        drop = None if exclude is None else torch.as_tensor(np.asarray(exclude, dtype=np.int64))
        chunk = max(1024, CHUNK_SCORES // max(n_q, 1))
        best_s: list[torch.Tensor] = []  # per chunk (n_q, <=k)
        best_r: list[torch.Tensor] = []
        for lo in range(0, self.count, chunk):
            block = self.vectors[lo : lo + chunk]  # (rows, d_in)
            if n_q == 1:
                s = torch.mv(block, q[0]).unsqueeze(0)  # (1, rows): one pass over the rows
            else:
                s = q @ block.T  # (n_q, rows)
            if drop is not None:
                local = drop[(drop >= lo) & (drop < lo + block.shape[0])] - lo
                s[:, local] = -math.inf
            v, i = torch.topk(s, min(k, s.shape[1]), dim=1)
            best_s.append(v)
            best_r.append(i + lo)
        if not best_s:
            return _empty(n_q, k)
        s_all, r_all = torch.cat(best_s, dim=1), torch.cat(best_r, dim=1)
        v, j = torch.topk(s_all, min(k, s_all.shape[1]), dim=1)
        rows = torch.gather(r_all, 1, j)
        rows[torch.isinf(v)] = -1  # left-out rows never count as results
        return _padded(v.numpy(), rows.numpy(), k)


class IvfIndex:
    """A faiss IndexIVFFlat over the normalised rows (ids are store rows)."""

    kind = "ivf"

    def __init__(self, index: Any, nprobe: int) -> None:
        self.index = index
        self.nprobe = int(nprobe)
        self.count = int(index.ntotal)
        self.d_in = int(index.d)

    def search(
        self, q: torch.Tensor, k: int, exclude: Sequence[int] | np.ndarray | None = None
    ) -> Hits:
        faiss = import_faiss()
        _check_k(k)
        x = np.ascontiguousarray(_as_queries(q, self.d_in).numpy(), dtype=np.float32)
        sel = None
        if exclude is not None and len(exclude):
            batch = faiss.IDSelectorBatch(np.asarray(exclude, dtype=np.int64))
            sel = faiss.IDSelectorNot(batch)
        params = faiss.SearchParametersIVF(nprobe=self.nprobe, sel=sel)
        scores, rows = self.index.search(x, k, params=params)
        return Hits(scores.astype(np.float32), rows.astype(np.int64))


def _empty(n_q: int, k: int) -> Hits:
    return Hits(np.full((n_q, k), -np.inf, np.float32), np.full((n_q, k), -1, np.int64))


def _padded(scores: np.ndarray, rows: np.ndarray, k: int) -> Hits:
    if scores.shape[1] == k:
        return Hits(scores.astype(np.float32), rows.astype(np.int64))
    out = _empty(scores.shape[0], k)
    out.scores[:, : scores.shape[1]] = scores
    out.rows[:, : rows.shape[1]] = rows
    return out


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise SaescopeError(
            "the ivf index needs faiss: pip install faiss-cpu (or pip install 'saescope[search]')"
        ) from exc
    return faiss


def faiss_available() -> bool:
    try:
        import_faiss()
    except SaescopeError:
        return False
    return True


def default_nlist(count: int, train_rows: int) -> int:
    """4 x sqrt(rows), at most training rows / 39 (faiss wants 39 training points a list)."""
    return max(1, min(round(4 * math.sqrt(count)), min(count, train_rows) // 39))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: nlist / 16, at least 8 (recall@10 in docs/search.md)."""
    return max(1, min(nlist, max(8, nlist // 16)))


# --- reading an index folder -------------------------------------------------------


def read_manifest(rp: RunPaths, kind: str) -> dict[str, Any] | None:
    """The manifest of index/<kind>/, or None when there is none (or it is not finished)."""
    path = rp.index_manifest(kind)
    if not path.exists():
        return None
    m = read_json(path)
    if m.get("format") != FORMAT:
        raise SaescopeError(
            f"{path} is not a saescope index manifest; remove {path.parent} and re-run "
            "`saescope index` to rebuild it"
        )
    return m if m.get("complete") else None


def available(rp: RunPaths) -> list[str]:
    """Kinds of finished index under the run's index/."""
    return [k for k in KINDS if read_manifest(rp, k) is not None]


def choose_kind(rp: RunPaths, kind: str) -> str:
    """The index `kind` names (auto: ivf when built, else exact); errors when it is not built."""
    built = available(rp)
    if kind == "auto":
        if not built:
            raise SaescopeError(
                f"no search index under {rp.index}; run `saescope index --run {rp.root}` first"
            )
        return "ivf" if "ivf" in built else "exact"
    if kind not in KINDS:
        raise SaescopeError(f"unknown index kind {kind!r}; choose auto, {', '.join(KINDS)}")
    if kind not in built:
        raise SaescopeError(
            f"no finished {kind} index at {rp.index_dir(kind)}; run "
            f"`saescope index --run {rp.root} --kind {kind}` first"
        )
    return kind


def check_store(rp: RunPaths, manifest: dict[str, Any]) -> None:
    """Refuse an index that was built from another store than the run's current one."""
    now = provenance.artifact_id(rp.acts_manifest)
    if manifest.get("store") != now:
        raise SaescopeError(
            f"the index at {rp.index_dir(manifest['kind'])} was built from another store "
            f"(acts/manifest.json {str(manifest.get('store'))[:12]} -> {now[:12]}); "
            f"re-run `saescope index --run {rp.root} --overwrite`"
        )


def _checked_file(folder: Path, entry: dict[str, Any], verify: bool) -> Path:
    path = folder / entry["file"]
    # the same options and store skip: the damaged index must go before it is rebuilt
    remake = f"remove {folder} and re-run `saescope index` to rebuild it"
    if not path.exists() or path.stat().st_size != entry["nbytes"]:
        raise SaescopeError(f"index file {path} is missing or truncated; {remake}")
    if verify and sha256_file(path) != entry["sha256"]:
        raise SaescopeError(f"index file {path} fails its sha256 checksum; {remake}")
    return path


def open_index(
    run: str | Path, kind: str = "auto", nprobe: int | None = None, verify: bool = False
) -> ExactIndex | IvfIndex:
    """The run's finished index of `kind`, checked against the store it was built from.

    verify: also check every file's sha256 (sizes are always checked).
    """
    rp = RunPaths(run)
    kind = choose_kind(rp, kind)
    m = read_manifest(rp, kind)
    assert m is not None  # choose_kind saw it finished
    check_store(rp, m)
    folder = rp.index_dir(kind)
    if kind == "exact" and nprobe is not None:
        raise SaescopeError(
            "--nprobe is for the ivf index, but this search uses the exact one (it visits "
            "every row); build one with `saescope index --kind ivf`, or drop --nprobe"
        )
    if kind == "exact":
        out = torch.empty(int(m["count"]), int(m["d_in"]), dtype=torch.float32)
        for entry in m["files"]:
            path = _checked_file(folder, entry, verify)
            try:
                block = load_file(str(path))[TENSOR]
            except Exception as exc:  # safetensors and OS errors alike
                raise SaescopeError(f"cannot read index file {path}: {describe(exc)}") from exc
            out[entry["start"] : entry["stop"]] = block
        return ExactIndex(out)
    faiss = import_faiss()
    (entry,) = m["files"]
    path = _checked_file(folder, entry, verify)
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise SaescopeError(f"cannot read faiss index {path}: {describe(exc)}") from exc
    if nprobe is not None and nprobe < 1:
        raise SaescopeError(f"--nprobe must be >= 1, got {nprobe}")
    return IvfIndex(index, nprobe or int(m["params"]["nprobe"]))
