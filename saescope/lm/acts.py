"""`saescope acts`: token activations of a causal LM at one hookpoint, into the activation store.

In: `corpus.parquet` (texts, documents) and a causal LM (the packaged SmolLM2 by
default). Out, under `acts/`:
  manifest.json + shard-*.safetensors   the store: one row per kept token, in
                                        context order (meta: rows "tokens", model, hookpoint)
  tokens.safetensors                    the contexts: input_ids, attention_mask, text_row,
                                        keep (n_contexts, ctx_len each)
  index.parquet                         store row -> context, position, token, text_row, doc
  config.json, provenance.json          options; inputs and status

The forward stops at the hookpoint (`saescope.lm.hooks.capture`): the blocks after
it never run. Contexts are processed in groups sorted by length (padding is cut
per batch); rows are appended in context order, so a re-run after a crash (or
SIGKILL) continues from the last complete shard and writes exactly the rows an
uninterrupted run writes. Under torchrun each rank takes a contiguous slice of
the contexts and writes its own part (`acts/parts/rank-NNNNN/`); rank 0 then
lists every part's shards, in rank order, in one manifest.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.numpy import save_file as save_numpy
from tqdm.auto import tqdm

from saescope import provenance
from saescope.config import config_to_dict
from saescope.corpus import read_corpus
from saescope.device import pick_device
from saescope.errors import SaescopeError
from saescope.io import atomic_path, write_json
from saescope.lm import hooks
from saescope.lm.model import LM, load_lm
from saescope.lm.tokens import Contexts, build_contexts
from saescope.options.acts import ActsConfig
from saescope.paths import STAGE_CONFIG, RunPaths
from saescope.store import StoreWriter, merge_parts, store_damage

SOURCE = "causal-lm"
ROWS = "tokens"
# options that change no stored row
_IGNORED = ("run", "batch_size", "device", "overwrite", "shard_rows", "list_hookpoints")


def store_meta(cfg: ActsConfig, lm: LM, hp: hooks.Hookpoint, corpus_sha: str) -> dict:
    return {
        "source": SOURCE,
        "rows": ROWS,
        "model": cfg.model,
        "model_class": type(lm.model).__name__,
        "hookpoint": hp.name,
        "module": hp.module,
        "read": hp.read,
        "layer": hp.layer,
        "ctx_len": cfg.ctx_len,
        "packing": cfg.packing,
        "bos": cfg.bos,
        "keep_special": cfg.keep_special,
        "model_dtype": cfg.model_dtype,
        "corpus_sha256": corpus_sha,
    }


def limit_contexts(ctx: Contexts, max_tokens: int | None) -> Contexts:
    """The first contexts holding at most `max_tokens` kept tokens (at least one context)."""
    if max_tokens is None:
        return ctx
    if max_tokens < 1:
        raise SaescopeError(f"--max-tokens must be >= 1, got {max_tokens}")
    starts = ctx.row_starts()
    n = max(1, int(np.searchsorted(starts, max_tokens, side="right")) - 1)
    return ctx.slice(0, n)


def write_contexts(rp: RunPaths, ctx: Contexts, docs: pd.Series) -> None:
    """tokens.safetensors and index.parquet (both atomic; the same bytes for the same input)."""
    with atomic_path(rp.acts_tokens) as tmp:
        save_numpy(
            {
                "input_ids": ctx.input_ids,
                "attention_mask": ctx.attention_mask.astype(np.uint8),
                "text_row": ctx.text_row,
                "keep": ctx.keep.astype(np.uint8),
            },
            str(tmp),
        )
    c, p = np.nonzero(ctx.keep)  # row order: contexts, then positions
    text_row = ctx.text_row[c, p]
    doc_of = docs.astype(str).to_numpy()
    doc = [str(doc_of[r]) if r >= 0 else None for r in text_row.tolist()]
    table = pa.table(
        {
            "row": pa.array(np.arange(len(c), dtype=np.int64)),
            "context": pa.array(c.astype(np.int32)),
            "position": pa.array(p.astype(np.int32)),
            "token": pa.array(ctx.input_ids[c, p].astype(np.int32)),
            "text_row": pa.array(text_row.astype(np.int32)),
            "doc": pa.array(doc, type=pa.string()),
        }
    )
    with atomic_path(rp.acts_index) as tmp:
        pq.write_table(table, tmp)


def extract(
    lm: LM,
    hp: hooks.Hookpoint,
    ctx: Contexts,
    writer: StoreWriter,
    batch_size: int,
    desc: str = "acts",
) -> None:
    """Append the kept tokens' activations of `ctx` to `writer`, resuming after its rows."""
    starts = ctx.row_starts()
    total = int(starts[-1])
    done = writer.rows_done
    if done > total:
        raise SaescopeError(f"{writer.dir} holds {done} rows but these contexts give {total}")
    first = int(np.searchsorted(starts, done, side="right")) - 1  # the context holding row `done`
    lengths = ctx.attention_mask.sum(axis=1)
    device = lm.device
    group = max(batch_size * 8, 1)
    bar = tqdm(total=total, initial=done, unit="tok", desc=desc, dynamic_ncols=True)
    for g_lo in range(first, ctx.n_contexts, group):
        g_hi = min(g_lo + group, ctx.n_contexts)
        # longest first, padding cut per batch; results put back in context order
        order = g_lo + np.argsort(-lengths[g_lo:g_hi], kind="stable")
        out: dict[int, torch.Tensor] = {}
        for b_lo in range(0, len(order), batch_size):
            idx = order[b_lo : b_lo + batch_size]
            width = int(lengths[idx].max())
            ids = torch.from_numpy(ctx.input_ids[idx, :width].astype(np.int64)).to(device)
            mask = torch.from_numpy(ctx.attention_mask[idx, :width]).to(device)
            acts = hooks.capture(lm.model, hp, ids, mask.long())  # (b, width, d)
            keep = ctx.keep[idx, :width]
            for j, c in enumerate(idx.tolist()):
                out[c] = acts[j][torch.from_numpy(keep[j]).to(device)].float().cpu()
        for c in range(g_lo, g_hi):
            rows = out.pop(c)
            if c == first:
                rows = rows[done - int(starts[c]) :]  # rows a previous run already stored
            if len(rows):
                writer.append(rows)
                bar.update(len(rows))
    bar.close()


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _print_hookpoints(cfg: ActsConfig) -> Path:
    lm = load_lm(cfg.model, "cpu")
    names = hooks.list_hookpoints(lm.model)
    print(f"hookpoints of {cfg.model} ({type(lm.model).__name__}, {lm.n_layers} layers):")
    for n in names:
        print(f"  {n}")
    return Path(cfg.run)


@provenance.locked("acts")
def run(cfg: ActsConfig, *, lm: LM | None = None) -> Path:
    """Fill `acts/` with token activations for `cfg`; return the store folder.

    `lm`: an already loaded model to use instead of loading `cfg.model`.
    """
    if cfg.list_hookpoints:
        return _print_hookpoints(cfg)
    if cfg.batch_size < 1 or cfg.shard_rows < 1:
        raise SaescopeError("--batch-size and --shard-rows must be >= 1")
    rank, world = _rank()
    rp = RunPaths(cfg.run)
    corpus = read_corpus(cfg.run)
    up = provenance.upstream_ids({"corpus": rp.corpus})
    record = provenance.Record.make(rp.acts_record, "acts", cfg, up, _IGNORED)
    decision = None
    if rank == 0:
        decision = record.decide(
            cfg.overwrite, rp.acts, exists=rp.acts.exists(), damage=lambda: store_damage(rp.acts)
        )
    group = _init_group(world)
    decision = _share(decision, group)
    if decision is provenance.Decision.SKIP:
        _close_group(group)
        return rp.acts
    device = pick_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    lm = lm if lm is not None else load_lm(cfg.model, device, cfg.model_dtype)
    hp = hooks.resolve(lm.model, cfg.hookpoint)
    ctx = build_contexts(
        lm.tokenizer,
        corpus["text"].astype(str).tolist(),
        cfg.ctx_len,
        cfg.packing,
        cfg.bos,
        cfg.keep_special,
        lm.max_positions,
    )
    ctx = limit_contexts(ctx, cfg.max_tokens)
    meta = store_meta(cfg, lm, hp, up["corpus"])
    fresh = decision is provenance.Decision.FRESH
    if rank == 0:
        if fresh and rp.acts.exists():
            import shutil

            shutil.rmtree(rp.acts)
        rp.acts.mkdir(parents=True, exist_ok=True)
        record.start()
        write_contexts(rp, ctx, corpus["doc"] if "doc" in corpus else corpus["id"])
    _barrier(group)
    if world == 1:
        writer = StoreWriter(rp.acts, lm.d_model, cfg.dtype, cfg.shard_rows, meta)
        extract(lm, hp, ctx, writer, cfg.batch_size)
        writer.close()
    else:
        lo, hi = ctx.n_contexts * rank // world, ctx.n_contexts * (rank + 1) // world
        writer = StoreWriter(rp.acts_part(rank), lm.d_model, cfg.dtype, cfg.shard_rows, meta)
        extract(lm, hp, ctx.slice(lo, hi), writer, cfg.batch_size, desc=f"acts rank {rank}")
        writer.close()
        _barrier(group)
        if rank == 0:
            merge_parts(rp.acts, [rp.acts_part(r) for r in range(world)])
    if rank == 0:
        n = int(ctx.keep.sum())
        write_json(rp.acts / STAGE_CONFIG, config_to_dict(cfg) | {"n_contexts": ctx.n_contexts})
        record.finish({"tokens": n, "contexts": ctx.n_contexts})
        print(
            f"acts: {n:,} tokens of {ctx.n_contexts:,} contexts at {hp.name} ({hp.module})",
            file=sys.stderr,
        )
    _close_group(group)
    return rp.acts


# --- torchrun: a gloo group for the decision and the barriers ------------------------


def _init_group(world: int):
    if world == 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
        return "ours"
    return "theirs"


def _share(decision, group):
    if group is None:
        return decision
    import torch.distributed as dist

    box = [decision.value if decision is not None else None]
    dist.broadcast_object_list(box, src=0)
    return provenance.Decision(box[0])


def _barrier(group) -> None:
    if group is not None:
        import torch.distributed as dist

        dist.barrier()


def _close_group(group) -> None:
    if group == "ours":
        import torch.distributed as dist

        dist.destroy_process_group()
