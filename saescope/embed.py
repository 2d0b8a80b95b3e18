"""Embedding stage: `corpus.parquet` in, an activation store in `acts/` out.

Encodes the corpus with any sentence-transformers model (default: the packaged
all-MiniLM-L6-v2), one store shard at a time: each shard's texts are encoded in
batches sorted by length, so a re-run after a crash continues from the last
complete shard and yields exactly the rows an uninterrupted run yields.

`--backend` runs the model through sentence-transformers (torch) or an exported
graph on ONNX Runtime or OpenVINO (saescope/embed_backends.py); the default,
auto, takes the fastest installed one whose vectors match torch's (cosine >= 0.999).

`--vectors FILE` instead imports vectors people already have (.npy,
.safetensors, or a Parquet list column), with an optional ids file.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from saescope import embed_backends, provenance
from saescope.config import config_to_dict
from saescope.corpus import read_corpus
from saescope.defaults import resolve_embed_model
from saescope.device import pick_device
from saescope.errors import SaescopeError, describe
from saescope.io import atomic_path, read_frame, read_json, sha256_file, write_json
from saescope.options.embed import EmbedConfig
from saescope.paths import STAGE_CONFIG, RunPaths
from saescope.store import StoreWriter, bad_rows_error, find_bad_rows, store_damage


def load_sentence_model(name: str, device: str = "cpu"):
    """A SentenceTransformer by name or path, with a clear error when it cannot load."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    path = resolve_embed_model(name)
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Loading weights" bar on every query is noise
    try:
        return SentenceTransformer(path, device=device)
    except Exception as exc:  # hub, IO and config errors all mean "cannot load this model"
        raise SaescopeError(
            f"cannot load sentence-transformers model {name!r}: {describe(exc)}"
        ) from exc
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def load_embedding_model(
    name: str, device: str = "cpu", backend: str | None = None, resume: str | None = None
):
    """The model that embeds with `backend` (None: auto); `resume`: the backend of the
    store being continued, which auto keeps so that one store never mixes backends."""
    choice = backend or embed_backends.AUTO
    if choice != embed_backends.AUTO:
        embed_backends.require(choice)  # before the model load: a missing extra fails fast
    elif resume is not None:
        choice = resume
    on_cpu = choice not in ("torch", embed_backends.AUTO)  # exported graphs run on CPU
    st = load_sentence_model(name, "cpu" if on_cpu else device)
    if choice == embed_backends.AUTO:
        choice, why = embed_backends.choose(st, name, device)
        print(f"embed: backend {choice} ({why})", file=sys.stderr)
    return embed_backends.wrap(st, name, choice)


def load_query_model(name: str, meta: Mapping[str, Any], device: str = "cpu"):
    """The model that embeds queries and phrases beside a store whose manifest meta is
    `meta`: `name` on the backend that embedded the store, when the store holds `name`'s
    vectors and that backend is a float32 one that can run here (its vectors equal
    torch's to ~1e-6, and it is the faster one: auto measured it so); torch otherwise.

    A bfloat16 or int8 backend is not reused: its vectors depend on the batch a text is
    in, so a query embedded alone would not reproduce its own store row either
    (`embed_backends.choose`), and torch's float32 is the reference. A backend that
    cannot run here (its extra missing, another CPU) falls back to torch with a note.
    """
    backend = str(meta.get("backend", "torch")) if meta.get("model") == name else "torch"
    known = embed_backends.BACKENDS.get(backend)
    if device != "cpu" or known is None or known.precision != "f32" or backend == "torch":
        return load_sentence_model(name, device)
    try:
        return load_embedding_model(name, device, backend)
    except SaescopeError as exc:
        print(f"embed: queries run on torch ({exc})", file=sys.stderr)
        return load_sentence_model(name, device)


def encode_texts(
    model, texts: list[str], batch_size: int, normalize: bool, progress: tqdm | None = None
) -> torch.Tensor:
    """(len(texts), d) float32 embeddings, in input order.

    Texts are sorted by their token count (longest first; sentence-transformers
    itself sorts by characters, which pads more), and encoded a few batches at a
    time so the progress bar moves.
    """
    lengths = token_lengths(model, texts)
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    out = torch.empty(len(texts), model_dim(model))
    group = batch_size * 4
    with torch.inference_mode():
        for lo in range(0, len(order), group):
            idx = order[lo : lo + group]
            vecs = model.encode(
                [texts[i] for i in idx],
                batch_size=batch_size,
                convert_to_tensor=True,
                normalize_embeddings=normalize,
                show_progress_bar=False,
            )
            out[torch.tensor(idx)] = vecs.float().cpu()
            if progress is not None:
                progress.update(len(idx))
    return out


def token_lengths(model, texts: list[str]) -> list[int]:
    """Token count of each text (capped at the model's max length); characters if no tokenizer."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or not callable(tok):
        return [len(t) for t in texts]
    enc = tok(texts, add_special_tokens=True, truncation=True, max_length=model.max_seq_length)
    return [len(ids) for ids in enc["input_ids"]]


def model_dim(model) -> int:
    """Output dimension of a SentenceTransformer (the method was renamed in v5)."""
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


# options that change no stored row (shard_rows only cuts the same rows into files)
_IGNORED = ("run", "batch_size", "device", "overwrite", "append", "shard_rows")


def _corpus_record(cfg: EmbedConfig, rp: RunPaths) -> provenance.Record:
    up = provenance.upstream_ids({"corpus": rp.corpus})
    return provenance.Record.make(rp.acts_record, "embed", cfg, up, _IGNORED)


def _embed_corpus(cfg: EmbedConfig, rp: RunPaths, model=None) -> tuple[Path, str]:
    """Fill the store; return it and the backend that made its rows."""
    corpus = read_corpus(cfg.run)
    texts = corpus["text"].tolist()
    record = _corpus_record(cfg, rp)
    exists = rp.acts_manifest.exists()
    decision = record.decide(
        cfg.overwrite, rp.acts, exists=exists, damage=lambda: store_damage(rp.acts)
    )
    if decision is provenance.Decision.SKIP:  # no model load
        return rp.acts, read_json(rp.acts_manifest)["meta"].get("backend", "torch")
    corpus_sha = record.upstream["corpus"]
    if model is None:
        resume = None
        if decision is provenance.Decision.RESUME and rp.acts_manifest.exists():
            resume = read_json(rp.acts_manifest)["meta"].get("backend", "torch")
        device = str(pick_device(cfg.device))
        model = load_embedding_model(cfg.model, device, cfg.backend, resume)
    backend = getattr(model, "backend", "torch")  # a SentenceTransformer is torch
    if cfg.max_seq_length is not None:
        limit = _position_limit(model)
        if limit is not None and cfg.max_seq_length > limit:
            raise SaescopeError(
                f"--max-seq-length {cfg.max_seq_length} is more than the {limit} positions "
                f"{cfg.model} has; use at most {limit}"
            )
        model.max_seq_length = cfg.max_seq_length
    d_in = model_dim(model)
    meta = {
        "source": "sentence-transformers",
        "rows": "texts",  # one row per corpus text (LM stores say "tokens")
        "model": cfg.model,
        "normalize": cfg.normalize,
        "max_seq_length": model.max_seq_length,
        "corpus_sha256": corpus_sha,
    }
    if backend != "torch":  # torch stores keep the meta they had before backends existed
        meta["backend"] = backend
    fresh = decision is provenance.Decision.FRESH
    writer = StoreWriter(rp.acts, d_in, cfg.dtype, cfg.shard_rows, meta, overwrite=fresh)
    record.start()
    start = writer.rows_done
    bar = tqdm(total=len(texts), initial=start, unit="text", desc="embed", dynamic_ncols=True)
    for lo in range(start, len(texts), writer.shard_rows):
        chunk = texts[lo : lo + writer.shard_rows]
        writer.append(encode_texts(model, chunk, cfg.batch_size, cfg.normalize, bar))
    bar.close()
    return writer.close(), backend


def _position_limit(model: Any) -> int | None:
    """The most tokens the model's transformer takes (its position embeddings), where it
    says; a longer `max_seq_length` fails mid-run on the first long text."""
    st = getattr(model, "st", model)  # a backend wraps the SentenceTransformer
    try:
        return int(st[0].auto_model.config.max_position_embeddings)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


def _read_vectors(cfg: EmbedConfig) -> np.ndarray:
    path = Path(cfg.vectors or "")
    if not path.is_file():
        raise SaescopeError(f"vectors file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r")
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            if cfg.vectors_key is None and len(tensors) > 1:
                raise SaescopeError(
                    f"{path} holds {len(tensors)} tensors ({', '.join(tensors)}); choose one "
                    "with --vectors-key"
                )
            key = cfg.vectors_key or next(iter(tensors))
            if key not in tensors:
                raise SaescopeError(f"{path} has no tensor {key!r}; it has {', '.join(tensors)}")
            arr = tensors[key]
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
            key = cfg.vectors_key or "embedding"
            if key not in df.columns:
                raise SaescopeError(
                    f"{path} has no column {key!r}; columns are {', '.join(df.columns)} (use --vectors-key)"
                )
            arr = np.stack(df[key].to_numpy())
        else:
            raise SaescopeError(
                f"unknown vectors file type {suffix!r}; use .npy, .safetensors or .parquet"
            )
    except SaescopeError:
        raise
    except (OSError, ValueError) as exc:
        raise SaescopeError(f"cannot read vectors from {path}: {describe(exc)}") from exc
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise SaescopeError(
            f"{path} must hold a 2-D float array, got {arr.dtype} of shape {arr.shape}"
        )
    if not len(arr):
        raise SaescopeError(f"{path} holds no rows (shape {arr.shape})")
    return arr


def _read_ids(path_str: str, n: int) -> list[str]:
    path = Path(path_str)
    if not path.is_file():
        raise SaescopeError(f"ids file {path} does not exist")
    if path.suffix == ".npy":
        ids = [str(x) for x in np.load(path)]
    elif path.suffix == ".parquet":
        ids = pd.read_parquet(path).iloc[:, 0].astype(str).tolist()
    else:
        ids = path.read_text().splitlines()
    if len(ids) != n:
        raise SaescopeError(f"{path} has {len(ids)} ids but the vectors file has {n} rows")
    repeated = pd.Index(ids).duplicated()
    if repeated.any():
        twice = ids[int(np.argmax(repeated))]
        raise SaescopeError(
            f"{path}: the id {twice!r} is given more than once; ids name one row each"
        )
    return ids


def _check_vectors(
    arr: np.ndarray, path: Path, block_rows: int, dtype: str, normalize: bool
) -> None:
    """Refuse a vectors file holding NaN/inf (or values `dtype` cannot hold, as stored:
    after --normalize) before any write."""
    first, rows = None, []  # the first kind of problem met, and every row that has it
    for lo in range(0, len(arr), block_rows):
        block = torch.from_numpy(np.array(arr[lo : lo + block_rows], dtype=np.float32))
        if normalize and bool(torch.isfinite(block).all()):
            block = torch.nn.functional.normalize(block, dim=1)
        bad = find_bad_rows(block, dtype)
        if bad is not None and (first is None or bad.what == first.what):
            first = first or bad
            rows += [lo + i for i in bad.rows]
    if first is not None:
        where = f"vectors file {path} (rows counted from 0)"
        raise bad_rows_error(first._replace(rows=rows), 0, where)


def _this_import(writer: StoreWriter, path: Path, sha: str, n: int, append: bool) -> dict | None:
    """The store's record of importing `path` (new or unfinished), or None if it is complete.

    A file already imported (same sha256) is never appended twice; an unfinished
    import is resumed; a store holding other rows takes new ones only with --append.
    """
    same = [r for r in writer.imports if r["sha256"] == sha]
    if same and same[0]["complete"]:
        return None
    if same:
        return same[0]
    unfinished = [r for r in writer.imports if not r["complete"]]
    if unfinished:
        raise SaescopeError(
            f"{writer.dir} holds an unfinished import of {unfinished[0]['file']}; re-run that "
            "import to finish it (or pass --overwrite to start the store again)"
        )
    if writer.rows_done and not append:
        raise SaescopeError(
            f"{writer.dir} already holds {writer.rows_done} rows; pass --append to add {path}, "
            "or --overwrite to replace them"
        )
    start = writer.rows_done
    return {"file": path.name, "sha256": sha, "start": start, "stop": start + n, "complete": False}


def _vectors_record(cfg: EmbedConfig, rp: RunPaths) -> provenance.Record:
    """The record of a store filled by imports: its options and every imported file.

    Which files are in the store is the manifest's `imports` (one entry per file, so
    appends are idempotent and resumable); the options must be the same for all.
    """
    m = read_json(rp.acts_manifest) if rp.acts_manifest.exists() else {}
    up = {
        f"vectors {r['file']} (rows {r['start']}..{r['stop']})": r["sha256"]
        for r in m.get("imports", [])
    }
    ignore = (*_IGNORED, "vectors", "vectors_key", "ids")  # these name one import
    return provenance.Record.make(rp.acts_record, "embed", cfg, up, ignore)


def _import_vectors(cfg: EmbedConfig, rp: RunPaths) -> Path:
    """Import a vectors file: idempotent (a file already in the store adds nothing) and
    resumable (an interrupted import continues after its last complete shard)."""
    path = Path(cfg.vectors or "")
    saved = provenance.read_record(rp.acts_record)
    changed = _vectors_record(cfg, rp).option_changes(saved) if saved else []
    if changed and not cfg.overwrite and rp.acts_manifest.exists():
        raise SaescopeError(
            f"{rp.acts} holds rows made with other options ({'; '.join(changed)}); appending "
            "would mix them. Pass --overwrite to replace the store, or use another --run"
        )
    arr = _read_vectors(cfg)
    ids = _read_ids(cfg.ids, len(arr)) if cfg.ids else None
    _check_vectors(arr, path, cfg.shard_rows, cfg.dtype, cfg.normalize)
    sha = sha256_file(path)
    meta = {"source": "vectors", "rows": "texts", "model": None, "normalize": cfg.normalize}
    writer = StoreWriter(
        rp.acts,
        arr.shape[1],
        cfg.dtype,
        cfg.shard_rows,
        meta,
        overwrite=cfg.overwrite,
        append=cfg.append,
    )
    rec = _this_import(writer, path, sha, len(arr), cfg.append)
    if rec is None:
        done = next(r for r in writer.imports if r["sha256"] == sha)
        print(
            f"embed: {path} is already in {rp.acts} (rows {done['start']}..{done['stop'] - 1}, "
            f"imported from {done['file']}); nothing appended",
            file=sys.stderr,
        )
        return rp.acts
    if rec not in writer.imports:  # recorded before its first row, so a crash can be resumed
        writer.record_imports([*writer.imports, rec])
    start = writer.rows_done - rec["start"]  # rows of this file already stored
    for lo in tqdm(range(start, len(arr), writer.shard_rows), desc="import", unit="shard"):
        block = torch.from_numpy(np.array(arr[lo : lo + writer.shard_rows], dtype=np.float32))
        if cfg.normalize:
            block = torch.nn.functional.normalize(block, dim=1)
        writer.append(block)
    writer.flush()  # every row is on disk before the import is marked complete
    if ids is not None:
        ids_path = rp.acts / "ids.parquet"
        old = read_frame(ids_path) if ids_path.exists() else None
        new = pd.DataFrame({"row": np.arange(rec["start"], rec["stop"]), "id": ids})
        # rows before this import keep their ids; a resumed import rewrites its own
        table = pd.concat([old[old["row"] < rec["start"]], new]) if old is not None else new
        with atomic_path(ids_path) as tmp:
            table.to_parquet(tmp, index=False)
    # the import and the store are marked complete in one manifest write
    writer.imports = [r | {"complete": True} if r["sha256"] == sha else r for r in writer.imports]
    out = writer.close()
    _say_if_rows_are_not_the_corpus(rp, writer.rows_done)
    return out


def _say_if_rows_are_not_the_corpus(rp: RunPaths, n_rows: int) -> None:
    """A run with a corpus shows store row i as text i (inspect, keywords, score...): say
    so when the imported rows cannot be one per text (a later --append may still fill
    them, so this is a note, not an error)."""
    if not rp.corpus.exists():
        return
    import pyarrow.parquet as pq

    try:
        n_texts = pq.ParquetFile(rp.corpus).metadata.num_rows
    except Exception:  # an unreadable corpus is reported by the stages that read it
        return
    if n_texts != n_rows:
        print(
            f"embed: note: {rp.acts} now holds {n_rows} rows and {rp.corpus} {n_texts} texts; "
            "the stages that show texts need one row per text, in corpus order",
            file=sys.stderr,
        )


@provenance.locked("embed")
def run(cfg: EmbedConfig, *, model=None) -> Path:
    """Fill `acts/` for `cfg` (resuming an interrupted run); return the store folder.

    `model`: an already loaded SentenceTransformer to use instead of loading `cfg.model`
    (for callers that embed several runs with one model).
    """
    rp = RunPaths(cfg.run)
    result = {}
    if cfg.vectors:
        out = _import_vectors(cfg, rp)
        record = _vectors_record(cfg, rp)
    else:
        out, backend = _embed_corpus(cfg, rp, model)
        record = _corpus_record(cfg, rp)
        result["backend"] = backend  # what auto chose, or what was asked for
    write_json(out / STAGE_CONFIG, config_to_dict(cfg))
    record.finish(result)
    return out
