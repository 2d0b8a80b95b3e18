"""Index stage: build the search index over a run's activation store (the corpus embeddings).

In: `acts/` of a sentence-embedding run. Out: `index/<kind>/` (see saescope/search/index.py)
with `manifest.json` (the store's identity, the files), `config.json` and `provenance.json`:
  exact  block-NNNNN.safetensors, one per store shard: its rows L2-normalised (float32)
  ivf    index.faiss, a faiss IndexIVFFlat (inner product, `nlist` lists trained on
         `train_rows` sampled rows) of the normalised rows; built as trained.faiss plus
         one part-NNNNN.faiss per store shard, merged at the end
`--kind auto` builds ivf for stores of `approximate_from` rows and more when faiss is
installed, exact otherwise; both kinds can sit side by side. Each file is written
atomically and listed in the manifest when done, so an interrupted build resumes at the
next store shard; `saescope search` refuses an index whose store has changed since.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file
from tqdm.auto import tqdm

from saescope import provenance
from saescope.config import config_to_dict
from saescope.errors import SaescopeError, SaescopeWarning
from saescope.examples.tokens import store_rows_kind
from saescope.io import atomic_path, read_json, sha256_file, write_json
from saescope.options.search import KINDS, IndexConfig
from saescope.paths import RunPaths
from saescope.search.index import (
    FORMAT,
    TENSOR,
    default_nlist,
    default_nprobe,
    faiss_available,
    import_faiss,
    normalise,
)
from saescope.store import ActivationStore

# options that change nothing in the index of a kind (the rest of the ivf ones, for exact)
_ALWAYS_IGNORED = ("run", "progress", "overwrite", "approximate_from")
_IVF_ONLY = ("nlist", "train_rows", "seed")


def refuse_token_runs(run: str | Path) -> None:
    if store_rows_kind(run) == "tokens":
        raise SaescopeError(
            f"the rows of {run}'s store are tokens of a language model; semantic search is "
            "for sentence-embedding runs (`saescope embed`)"
        )


def resolve_kind(cfg: IndexConfig, count: int) -> str:
    if cfg.kind in KINDS:
        return cfg.kind
    if cfg.kind != "auto":
        raise SaescopeError(f"unknown index kind {cfg.kind!r}; choose auto, {', '.join(KINDS)}")
    return "ivf" if count >= cfg.approximate_from and faiss_available() else "exact"


def _check(cfg: IndexConfig) -> None:
    if cfg.nlist is not None and cfg.nlist < 1:
        raise SaescopeError(f"--nlist must be >= 1, got {cfg.nlist}")
    if cfg.train_rows < 1:
        raise SaescopeError(f"--train-rows must be >= 1, got {cfg.train_rows}")


@provenance.locked("index")
def run(cfg: IndexConfig) -> Path:
    """Build (or resume, or skip) the index of `cfg` under `index/<kind>/`; return the folder."""
    rp = RunPaths(cfg.run)
    _check(cfg)
    refuse_token_runs(cfg.run)
    store = ActivationStore(rp.acts)
    if store.count == 0:
        raise SaescopeError(f"the store at {rp.acts} holds no rows; nothing to index")
    kind = resolve_kind(cfg, store.count)
    if kind == "ivf":
        import_faiss()  # a missing faiss is named before anything is written
    ignore = _ALWAYS_IGNORED + (_IVF_ONLY if kind == "exact" else ())
    options = config_to_dict(cfg) | {"kind": kind}
    up = provenance.upstream_ids({"acts": rp.acts_manifest})
    record = provenance.Record.make(rp.index_record(kind), "index", options, up, ignore)
    folder = rp.index_dir(kind)
    decision = record.decide(cfg.overwrite, folder, exists=rp.index_manifest(kind).exists())
    if decision is provenance.Decision.SKIP:
        return folder
    if decision is provenance.Decision.FRESH and folder.exists():
        shutil.rmtree(folder)
    record.start()
    old = read_json(rp.index_manifest(kind)) if rp.index_manifest(kind).exists() else {}
    manifest = _Manifest(rp, kind, store, up["acts"], old)
    if old.get("complete") and manifest.files:
        pass  # killed after the last file was written: only the record was left to finish
    elif kind == "exact":
        _build_exact(manifest, store, cfg.progress)
    else:
        _build_ivf(manifest, store, cfg)
    write_json(rp.index_config(kind), options)
    record.finish({"kind": kind, "count": store.count, **manifest.params})
    print(f"{kind} index of {store.count:,} rows -> {folder}")
    return folder


class _Manifest:
    """index/<kind>/manifest.json while the index is built: the files done so far."""

    def __init__(
        self, rp: RunPaths, kind: str, store: ActivationStore, store_id: str, old: dict[str, Any]
    ) -> None:
        self.rp, self.kind, self.store_id = rp, kind, store_id
        self.d_in, self.count = store.d_in, store.count
        same = old.get("store") == store_id and old.get("kind") == kind
        # files finished by an interrupted build of the same store (the record said RESUME)
        self.files: list[dict[str, Any]] = list(old.get("files", [])) if same else []
        self.params: dict[str, Any] = dict(old.get("params", {})) if same else {}

    def done(self, path: Path, start: int, stop: int) -> None:
        self.files.append(
            {
                "file": path.name,
                "start": start,
                "stop": stop,
                "sha256": sha256_file(path),
                "nbytes": path.stat().st_size,
            }
        )
        self.write(False)

    def write(self, complete: bool, **extra: Any) -> None:
        write_json(
            self.rp.index_manifest(self.kind),
            {
                "format": FORMAT,
                "kind": self.kind,
                "d_in": self.d_in,
                "count": self.count,
                "store": self.store_id,
                "params": self.params,
                "files": self.files,
                "complete": complete,
                **extra,
            },
        )

    def shard_done(self, i: int, path: Path) -> bool:
        """Whether store shard i's file was finished by an earlier, interrupted build."""
        names = [f["file"] for f in self.files]
        return path.name in names and path.exists()


def _build_exact(m: _Manifest, store: ActivationStore, progress: bool) -> None:
    bar = tqdm(total=store.count, unit="row", desc="index", disable=not progress)
    for i, shard in enumerate(store.shards):
        path = m.rp.index_block("exact", i)
        if not m.shard_done(i, path):
            x = normalise(store.load_shard(i))  # (rows, d_in)
            with atomic_path(path) as tmp:
                save_file({TENSOR: x.contiguous()}, str(tmp))
            m.done(path, shard.start, shard.stop)
        bar.update(shard.stop - shard.start)
    bar.close()
    m.write(True)


def _build_ivf(m: _Manifest, store: ActivationStore, cfg: IndexConfig) -> None:
    faiss = import_faiss()
    rp = m.rp
    trained = rp.ivf_trained()
    if not trained.exists():
        n_train = min(cfg.train_rows, store.count)
        # faiss trains one centroid per list from the sampled rows: no more lists than rows
        nlist = min(cfg.nlist or default_nlist(store.count, cfg.train_rows), n_train)
        if cfg.nlist is not None and nlist < cfg.nlist:
            warnings.warn(
                f"--nlist {cfg.nlist}: {n_train:,} rows train the lists, so the index has "
                f"{nlist:,} (index/ivf/manifest.json records it)",
                SaescopeWarning,
                stacklevel=2,
            )
        rng = np.random.default_rng(cfg.seed)
        sample = np.sort(rng.choice(store.count, size=n_train, replace=False))
        x = np.ascontiguousarray(normalise(store.rows(sample)).numpy())  # (n_train, d_in)
        quantizer = faiss.IndexFlatIP(store.d_in)
        index = faiss.IndexIVFFlat(quantizer, store.d_in, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = cfg.seed
        index.train(x)
        with atomic_path(trained) as tmp:
            faiss.write_index(index, str(tmp))
        m.params = {"nlist": nlist, "nprobe": default_nprobe(nlist), "train_rows": n_train}
        m.write(False)
    if not m.params:  # killed between writing trained.faiss and the manifest
        nlist = int(faiss.read_index(str(trained)).nlist)
        n_train = min(cfg.train_rows, store.count)
        m.params = {"nlist": nlist, "nprobe": default_nprobe(nlist), "train_rows": n_train}
    bar = tqdm(total=store.count, unit="row", desc="index", disable=not cfg.progress)
    parts = []
    for i, shard in enumerate(store.shards):
        path = rp.ivf_part(i)
        parts.append(path)
        if not m.shard_done(i, path):
            part = faiss.read_index(str(trained))
            x = np.ascontiguousarray(normalise(store.load_shard(i)).numpy())
            part.add_with_ids(x, np.arange(shard.start, shard.stop, dtype=np.int64))
            with atomic_path(path) as tmp:
                faiss.write_index(part, str(tmp))
            m.done(path, shard.start, shard.stop)
        bar.update(shard.stop - shard.start)
    bar.close()
    full = faiss.read_index(str(trained))
    for path in parts:  # the lists of each part appended to the full index's lists
        full.merge_from(faiss.read_index(str(path)), 0)
    final = rp.ivf_index()
    with atomic_path(final) as tmp:
        faiss.write_index(full, str(tmp))
    m.files = []
    m.done(final, 0, store.count)
    m.write(True)
    for path in [*parts, trained]:
        path.unlink(missing_ok=True)
