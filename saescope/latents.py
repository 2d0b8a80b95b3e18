"""Latents stage: the activation store and an SAE in, a sparse latent cache and feature tables out.

In: `acts/` (the activation store) and `sae/` (or `--sae DIR`). Out, under `latents/`:
  shard-NNNNN.safetensors  sparse triples of the non-zero codes: `rows` int64 (store row
                           ids), `features` int32, `values` float32, in row order
  manifest.json            d_sae, n_rows, nnz, shards with row ranges and sha256, complete
  index.parquet            row -> doc, position (sentence embeddings: position 0); token
                           runs: row -> doc, context, position (from acts/index.parquet)
  features.parquet         per-feature statistics and example rows (schema in docs/latents.md);
                           token runs add the logit lens of every feature (`saescope.lm.logit_lens`)
  cooccurrence.safetensors pairs of features active in the same row (upper triangle)
  plots/*.png              density, L0 and activation histograms
  config.json              the options, written last (its presence means "done")

The store is streamed once in row order; per-feature count, sum and max are
accumulated on the fly, so memory does not grow with rows. Top, quantile and random
examples (chosen by `saescope.examples`, in blocks of features spilled to disk:
one more read of the shards) and co-occurrence come from passes over the sparse
shards whose number does not grow with rows. Shards are atomic; a
re-run after a crash replays the finished shards into the statistics and encodes
only the rest. `LatentCache` reads a finished cache. Only token runs load a
language model (the store's, for the logit lens), before anything is written.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from tqdm.auto import tqdm

from saescope import paths, provenance
from saescope._version import __version__
from saescope.config import config_to_dict
from saescope.corpus import corpus_column
from saescope.device import pick_device
from saescope.errors import DamagedFile, SaescopeError
from saescope.examples.activations import Activations, csc_from_triples
from saescope.examples.select import ExampleOptions, Picked
from saescope.examples.table import sample_table_examples
from saescope.examples.tokens import store_rows_kind
from saescope.features import FeatureAccumulator, cooccurrence
from saescope.io import (
    atomic_path,
    damaged,
    read_finished_manifest,
    read_frame,
    read_json,
    read_table,
    sha256_file,
    sha256_text,
    write_json,
)
from saescope.options.latents import LatentsConfig
from saescope.paths import RunPaths
from saescope.sae import SAE
from saescope.sae.fit import check_fits_store
from saescope.sae.sparse import encode_sparse, one_thread
from saescope.store import ActivationStore

FORMAT = "saescope.latents/1"
N_HIST_FEATURES = 12
MAX_SHARD_NNZ = 8_000_000  # ~128 MB of pending triples at most

# The exact schema of features.parquet (the keywords and scoring stages rely on it);
# token runs append `saescope.lm.logit_lens.LENS_SCHEMA`.
FEATURES_SCHEMA = pa.schema(
    [
        ("feature", pa.int32()),
        ("count", pa.int64()),
        ("density", pa.float64()),
        ("log10_density", pa.float64()),
        ("max_act", pa.float32()),
        ("mean_act", pa.float32()),
        ("mean_active_act", pa.float32()),
        ("dead", pa.bool_()),
        ("top_rows", pa.list_(pa.int64())),
        ("top_acts", pa.list_(pa.float32())),
        ("quantile_rows", pa.list_(pa.int64())),
        ("quantile_acts", pa.list_(pa.float32())),
        ("quantile_bins", pa.list_(pa.int16())),
        ("random_rows", pa.list_(pa.int64())),
    ]
)


# options that do not change any output
_IGNORED = ("run", "device", "batch_size", "overwrite", "sae", "max_chunk_nnz")


class LatentShard(NamedTuple):
    start: int  # first store row (inclusive)
    stop: int  # last store row (exclusive)
    rows: np.ndarray  # (nnz,) int64, sorted
    features: np.ndarray  # (nnz,) int32
    values: np.ndarray  # (nnz,) float32, > 0


class LatentCache:
    """Read a finished latent cache of a run.

    `iter_shards` streams the sparse shards; `to_csr` and `feature_values` load the
    whole cache into memory once (`saescope.examples.Activations`, 8 bytes a non-zero),
    which is fine for interpretability-sized runs (a few million non-zeros); stream
    with `iter_shards` beyond that.
    """

    def __init__(self, run_dir: str | Path, verify: bool = False, finished: bool = True) -> None:
        """`finished`: refuse a cache whose stage has not finished (its features, index
        and co-occurrence come after the shards); only the latents stage itself reads
        its shards before then."""
        self.paths = RunPaths(run_dir)
        self.dir = self.paths.latents
        saved = provenance.read_record(self.paths.latents_record)
        if finished and saved is not None and saved.get("status") != "complete":
            raise SaescopeError(
                f"the latent cache at {self.dir} is unfinished (its `saescope latents` was "
                f"interrupted or is running); re-run `saescope latents --run {run_dir}` to "
                "finish it"
            )
        m = read_finished_manifest(
            self.paths.latents_manifest,
            FORMAT,
            "latent cache",
            missing=f"no latent cache at {self.dir}; run `saescope latents --run {run_dir}` first",
            finish=f"re-run `saescope latents --run {run_dir}`",
        )
        self.manifest = m
        self._check_store()
        self.d_sae: int = m["d_sae"]
        self.n_rows: int = m["n_rows"]
        self.nnz: int = m["nnz"]
        self.shards: list[dict[str, Any]] = m["shards"]
        self._verify = verify
        self._acts: Activations | None = None

    def _check_store(self) -> None:
        """Refuse a cache whose run's store was re-made since (another model, hookpoint or
        corpus): its rows, statistics and examples would be of the old rows."""
        acts = self.paths.acts_manifest
        made_from = self.manifest["source"].get("store_sha256")
        if made_from is None or not acts.exists():
            return
        shards = read_json(acts).get("shards") or []
        if sha256_text(json.dumps([s.get("sha256") for s in shards])) != made_from:
            raise SaescopeError(
                f"the latent cache at {self.dir} was made from another activation store than "
                f"the one {self.paths.acts} holds now (re-made since); re-run "
                f"`saescope latents --run {self.paths.root} --overwrite`"
            )

    @property
    def sae_sha256(self) -> str:
        """sha256 of the weights of the SAE that encoded the cache."""
        return str(self.manifest["source"]["sae_sha256"])

    def sae_dir(self) -> Path:
        """The SAE folder the cache was encoded with; refuses one whose weights changed since."""
        src = self.manifest["source"]
        folder = self.paths.root / src["sae_dir"]  # relative to the run, or absolute
        weights = folder / paths.NATIVE_SAE_WEIGHTS
        if not weights.exists() or sha256_file(weights) != self.sae_sha256:
            raise SaescopeError(
                f"the latent cache at {self.dir} was made with the SAE at {folder}, which is "
                "missing or has changed since; re-run `saescope latents` (with --overwrite)"
            )
        return folder

    def iter_shards(self) -> Iterator[LatentShard]:
        for s in self.shards:
            yield read_shard(self.dir / s["file"], s, self._verify)

    def triples(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for s in self.iter_shards():
            yield s.rows, s.features, s.values

    def to_csr(self) -> sp.csr_matrix:
        """The whole (n_rows, d_sae) float32 code matrix as scipy CSR."""
        return self._activations().codes.tocsr()

    def feature_values(self, feature: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64 ascending, values float32) where `feature` is active."""
        acts = self._activations()
        acts.check_features([feature])  # names an id out of range
        return acts.column(feature)

    def _activations(self) -> Activations:
        """Every row's codes as one CSC matrix, built once (see `saescope.examples`)."""
        if self._acts is None:
            csc = csc_from_triples(self.triples, self.n_rows, self.d_sae)
            self._acts = Activations(csc, "latents")
        return self._acts

    def features(self) -> pd.DataFrame:
        """features.parquet as a DataFrame."""
        if not self.paths.features.exists():
            raise SaescopeError(
                f"{self.paths.features} is missing; re-run `saescope latents --run {self.paths.root}`"
            )
        return read_frame(self.paths.features)


def cache_describes(run_dir: str | Path, sae_sha256: str) -> bool:
    """Whether the run has a latent cache encoded with the SAE whose weights file has this
    sha256, so that its features.parquet (typical activations, logit lens) and the names
    made from it describe that SAE (an unfinished cache, or one of a store re-made since,
    describes nothing)."""
    if not RunPaths(run_dir).latents_manifest.exists():
        return False
    try:
        return LatentCache(run_dir).sae_sha256 == sae_sha256
    except SaescopeError:
        return False


def shard_damage(path: Path, info: dict[str, Any], verify: bool = False) -> str | None:
    """What is wrong with a latent shard (missing, not its recorded size or, with
    `verify`, checksum), or None."""
    if not path.exists():
        return f"latent shard {path} listed in the manifest is missing"
    if path.stat().st_size != info["nbytes"] or (verify and sha256_file(path) != info["sha256"]):
        return f"latent shard {path} is truncated or altered"
    return None


def cache_damage(rp: RunPaths) -> str | None:
    """What is wrong with a finished latent cache's own files (shard sizes, the footers
    of its tables), or None: cheap, no checksums."""
    for info in read_json(rp.latents_manifest)["shards"]:
        bad = shard_damage(rp.latents / info["file"], info)
        if bad is not None:
            return bad
    return damaged([p for p in (rp.features, rp.latent_index) if p.exists()])


def read_shard(path: Path, info: dict[str, Any], verify: bool = False) -> LatentShard:
    bad = shard_damage(path, info, verify)
    if bad is not None:
        raise DamagedFile(f"{bad}; `saescope latents --overwrite` makes the cache again")
    try:
        t = load_numpy(str(path))
    except (SafetensorError, OSError) as exc:
        raise SaescopeError(f"cannot read latent shard {path}: {exc}") from exc
    return LatentShard(info["start"], info["stop"], t["rows"], t["features"], t["values"])


class _ShardWriter:
    """Appends sparse triples; writes one atomic shard (and the manifest) per `shard_rows` rows,
    or sooner when MAX_SHARD_NNZ non-zeros are pending (dense codes would otherwise hold
    shard_rows * L0 triples in memory)."""

    def __init__(self, rp: RunPaths, source: dict[str, Any], shard_rows: int):
        self.rp = rp
        self.source = source
        self.shard_rows = shard_rows
        self.shards: list[dict[str, Any]] = []
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._pending_start = 0
        self._pending_nnz = 0
        # the provenance record has decided: a manifest still here is one to resume
        m = read_json(rp.latents_manifest) if rp.latents_manifest.exists() else None
        if m is not None:
            self.shard_rows = m["shard_rows"]
            self.shards = m["shards"]
            self._pending_start = self.rows_done
        rp.latents.mkdir(parents=True, exist_ok=True)

    @property
    def rows_done(self) -> int:
        return self.shards[-1]["stop"] if self.shards else 0

    def add(self, rows: torch.Tensor, feats: torch.Tensor, vals: torch.Tensor, stop: int) -> None:
        self._pending.append((rows, feats, vals))
        self._pending_nnz += len(rows)
        if stop - self._pending_start >= self.shard_rows or self._pending_nnz >= MAX_SHARD_NNZ:
            self._flush(stop)

    def _flush(self, stop: int) -> None:
        rows = torch.cat([p[0] for p in self._pending]).numpy()
        feats = torch.cat([p[1] for p in self._pending]).numpy().astype(np.int32)
        vals = torch.cat([p[2] for p in self._pending]).numpy().astype(np.float32)
        name = paths.shard_name(len(self.shards))
        target = self.rp.latents / name
        with atomic_path(target) as tmp:
            save_numpy({"rows": rows, "features": feats, "values": vals}, str(tmp))
        self.shards.append(
            {
                "file": name,
                "start": self._pending_start,
                "stop": stop,
                "nnz": len(rows),
                "sha256": sha256_file(target),
                "nbytes": target.stat().st_size,
            }
        )
        self._pending, self._pending_start, self._pending_nnz = [], stop, 0
        self._write_manifest(complete=False)

    def close(self, n_rows: int) -> None:
        if self._pending or self.rows_done < n_rows:
            self._flush(n_rows)
        self._write_manifest(complete=True)

    def _write_manifest(self, complete: bool) -> None:
        write_json(
            self.rp.latents_manifest,
            {
                "format": FORMAT,
                "saescope_version": __version__,
                "d_sae": self.source["d_sae"],
                "n_rows": self.source["n_rows"],
                "rows_done": self.rows_done,
                "nnz": sum(s["nnz"] for s in self.shards),
                "shard_rows": self.shard_rows,
                "complete": complete,
                "source": self.source,
                "shards": self.shards,
            },
        )


def _source(
    rp: RunPaths,
    store: ActivationStore,
    sae: SAE,
    sae_dir: Path,
    sae_sha256: str,
    shard_rows: int,
) -> dict[str, Any]:
    """What the cache was made from (readers find the SAE of the cache here).

    The SAE folder is kept relative to the run when it lies inside it, so the cache
    still finds it after the run directory is moved or read from another cwd.
    """
    folder, root = sae_dir.resolve(), rp.root.resolve()
    return {
        "sae_dir": str(folder.relative_to(root) if folder.is_relative_to(root) else folder),
        "sae_sha256": sae_sha256,
        "store_sha256": sha256_text(json.dumps([s.sha256 for s in store.shards])),
        "n_rows": store.count,
        "d_in": store.d_in,
        "d_sae": sae.cfg.d_sae,
        "shard_rows": shard_rows,
    }


def encode_store(
    store: ActivationStore,
    sae: SAE,
    writer: _ShardWriter,
    acc: FeatureAccumulator,
    cfg: LatentsConfig,
    device: str,
) -> None:
    """Encode the rows not yet in the cache, feeding the writer and the accumulator."""
    start = writer.rows_done
    if start >= store.count:
        writer.close(store.count)
        return
    bar = tqdm(total=store.count, initial=start, unit="row", desc="latents", dynamic_ncols=True)
    batches = store.iter_batches(cfg.batch_size, shuffle=False, with_ids=True)
    with torch.inference_mode():
        for x, ids in batches:  # ids are consecutive: the store is read in row order
            lo, hi = int(ids[0]), int(ids[-1]) + 1
            if hi <= start:
                continue
            if lo < start:
                x, lo = x[start - lo :], start
            r, f, v = encode_sparse(sae, x.to(device))
            r, f, v = r.cpu() + lo, f.cpu(), v.float().cpu()
            with one_thread():
                acc.add(r, f, v, lo, hi)
                writer.add(r, f, v, hi)
            bar.update(hi - lo)
    bar.close()
    writer.close(store.count)


@provenance.locked("latents")
def run(cfg: LatentsConfig) -> Path:
    """Fill `latents/` for `cfg` (resuming an interrupted run); return the folder."""
    rp = RunPaths(cfg.run)
    sae_dir = rp.sae_folder(cfg.sae)
    store = ActivationStore(rp.acts)
    device = str(pick_device(cfg.device))
    sae = SAE.load(sae_dir, device=device).eval()  # names a missing or foreign folder
    check_fits_store(sae, store.meta, store.d_in, str(sae_dir))
    sae_weights = sae_dir / paths.NATIVE_SAE_WEIGHTS
    up = provenance.upstream_ids({"acts": rp.acts_manifest, "sae": sae_weights})
    record = provenance.Record.make(rp.latents_record, "latents", cfg, up, _IGNORED)
    exists = rp.latents_manifest.exists()
    decision = record.decide(
        cfg.overwrite, rp.latents, exists=exists, quiet=True, damage=lambda: cache_damage(rp)
    )
    if decision is provenance.Decision.SKIP and _outputs_present(rp, cfg):
        record.up_to_date(rp.latents)
        return rp.latents
    source = _source(rp, store, sae, sae_dir, record.upstream["sae"], cfg.shard_rows)
    tokens = store_rows_kind(rp.root) == "tokens"
    lens: dict[str, list[list[Any]]] = {}
    lens_about: dict[str, Any] | None = None
    if tokens:  # before anything is touched: a model that cannot load leaves the cache as it was
        from saescope.lm.logit_lens import store_logit_lens

        lens, lens_about = store_logit_lens(store.meta, sae.W_dec, device=device)
    # nothing was changed before this point: a refused run leaves a finished cache intact.
    # Shards encoded by the same SAE from the same store are kept when only the
    # statistics options changed; the tables are rewritten from them.
    if decision is provenance.Decision.FRESH and rp.latents.exists():
        store.check_files()  # a store that cannot be read replaces no finished cache
        old = read_json(rp.latents_manifest) if rp.latents_manifest.exists() else {}
        if old.get("source") != source or cache_damage(rp) is not None:  # damaged: not kept
            shutil.rmtree(rp.latents)
    record.start()
    writer = _ShardWriter(rp, source, cfg.shard_rows)
    acc = FeatureAccumulator(sae.cfg.d_sae)
    for shard in _finished_shards(rp):  # replay what a previous run already cached
        acc.add(
            torch.from_numpy(shard.rows),
            torch.from_numpy(shard.features.astype(np.int64)),
            torch.from_numpy(shard.values),
            shard.start,
            shard.stop,
        )
    clock = _Clock()
    clock.mark("encode")
    encode_store(store, sae, writer, acc, cfg, device)
    clock.mark("features")
    cache = LatentCache(cfg.run, finished=False)  # the shards are done; the rest comes now
    write_index(rp, store, tokens)
    write_features(rp, cache, acc, cfg, lens)
    clock.mark("cooccurrence")
    if cfg.cooccurrence:
        co = cooccurrence(cache.triples, cache.d_sae)
        with atomic_path(rp.cooccurrence) as tmp:
            save_numpy(
                {"indices": co.indices, "counts": co.counts, "diagonal": co.diagonal}, str(tmp)
            )
    # wall and CPU seconds of each phase (this run only: a resumed run counts what it redid)
    wall, cpu = clock.done()
    # the SAE folder is in `source` (relative to the run): a cwd-relative copy would mislead
    extra = {"source": source, "seconds": wall, "cpu_seconds": cpu}
    if lens_about is not None:
        extra["logit_lens"] = lens_about
    write_json(rp.latents_config, config_to_dict(cfg) | extra)
    record.finish({"seconds": wall})
    return rp.latents


class _Clock:
    """Wall and process CPU seconds between named marks."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float, float]] = []

    def mark(self, name: str) -> None:
        self.marks.append((name, time.perf_counter(), time.process_time()))

    def done(self) -> tuple[dict[str, float], dict[str, float]]:
        self.mark("")
        pairs = list(zip(self.marks, self.marks[1:], strict=False))
        wall = {a[0]: round(b[1] - a[1], 3) for a, b in pairs}
        cpu = {a[0]: round(b[2] - a[2], 3) for a, b in pairs}
        return wall, cpu


def _outputs_present(rp: RunPaths, cfg: LatentsConfig) -> bool:
    """Every file a finished cache has (a complete record with a file removed by hand redoes)."""
    files = [rp.latents_config, rp.features, rp.latent_index]
    return all(p.exists() for p in files) and (not cfg.cooccurrence or rp.cooccurrence.exists())


def _finished_shards(rp: RunPaths) -> Iterator[LatentShard]:
    if not rp.latents_manifest.exists():
        return
    for s in read_json(rp.latents_manifest)["shards"]:
        yield read_shard(rp.latents / s["file"], s, verify=True)


def write_index(rp: RunPaths, store: ActivationStore, tokens: bool = False) -> None:
    """index.parquet: row -> doc, position. Sentence-embedding rows are whole texts (position 0);
    token rows (`tokens`) add their context, with doc and position from acts/index.parquet."""
    n = store.count
    if tokens:
        if not rp.acts_index.exists():
            raise SaescopeError(
                f"the token store {rp.acts} has no {rp.acts_index.name}; re-run `saescope acts`"
            )
        acts_index = read_table(rp.acts_index, columns=["doc", "context", "position"])
        if acts_index.num_rows != n:
            raise SaescopeError(
                f"{rp.acts_index} lists {acts_index.num_rows} tokens but the store holds {n} "
                "rows; re-run `saescope acts` (with --overwrite)"
            )
        table = pa.table(
            {
                "row": pa.array(np.arange(n, dtype=np.int64)),
                "doc": acts_index["doc"].cast(pa.string()),
                "context": acts_index["context"].cast(pa.int32()),
                "position": acts_index["position"].cast(pa.int32()),
            }
        )
    else:
        doc = pd.Series([None] * n, dtype="object")
        if rp.corpus.exists():
            corpus_doc = corpus_column(rp.root, "doc")
            if len(corpus_doc) == n:
                doc = corpus_doc.astype(str)
        table = pa.table(
            {
                "row": pa.array(np.arange(n, dtype=np.int64)),
                "doc": pa.array(doc.tolist(), type=pa.string()),
                "position": pa.array(np.zeros(n, dtype=np.int32)),
            }
        )
    with atomic_path(rp.latent_index) as tmp:
        pq.write_table(table, tmp)


def write_features(
    rp: RunPaths,
    cache: LatentCache,
    acc: FeatureAccumulator,
    cfg: LatentsConfig,
    lens: dict[str, list[list[Any]]] | None = None,
) -> None:
    """features.parquet (exact schema `FEATURES_SCHEMA`, then the logit-lens columns `lens`
    of a token run, `LENS_SCHEMA`) and the plots."""
    n_rows, d_sae = cache.n_rows, cache.d_sae
    count = acc.count.numpy()
    dead = count == 0
    density = count / max(n_rows, 1)
    with np.errstate(divide="ignore"):
        log10 = np.where(dead, np.nan, np.log10(np.where(dead, 1.0, density)))
    hist_feats = np.argsort(-count, kind="stable")[: min(N_HIST_FEATURES, int((~dead).sum()))]
    opts = ExampleOptions(
        n_top=cfg.top_n,
        n_quantiles=cfg.n_quantiles,
        per_quantile=cfg.examples_per_quantile,
        n_random=cfg.n_random,
        seed=cfg.seed,
    )
    ex = sample_table_examples(
        cache.triples,
        count,
        n_rows,
        opts,
        max_nnz=cfg.max_chunk_nnz,
        hist_features=hist_feats.tolist(),
        spill_dir=rp.latents,
    )
    sums = acc.sum.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_active = np.where(dead, np.nan, sums / np.maximum(count, 1))
    cols = {
        "feature": np.arange(d_sae, dtype=np.int32),
        "count": count.astype(np.int64),
        "density": density.astype(np.float64),
        "log10_density": log10,
        "max_act": acc.max.numpy().astype(np.float32),
        "mean_act": (sums / max(n_rows, 1)).astype(np.float32),
        "mean_active_act": mean_active.astype(np.float32),
        "dead": dead,
        # top_rows ... random_rows: what `saescope.examples` picks (dead features: empty)
        **{name: [getattr(p, name) for p in ex.picked] for name in Picked._fields},
    }
    schema = FEATURES_SCHEMA
    if lens:
        from saescope.lm.logit_lens import LENS_SCHEMA

        schema = pa.schema(list(FEATURES_SCHEMA) + list(LENS_SCHEMA))
        cols |= lens
    table = pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema)
    with atomic_path(rp.features) as tmp:
        pq.write_table(table, tmp)
    if cfg.plots:
        from saescope import plots  # matplotlib is slow to import: only when drawing

        rp.plots.mkdir(parents=True, exist_ok=True)
        plots.density_histogram(log10, rp.plots / "density.png")
        plots.l0_histogram(acc.l0_hist.numpy(), rp.plots / "l0.png")
        plots.activation_grid(ex.hists, density, rp.plots / "activations.png")
