"""Activation store: safetensors shards plus a manifest.

In: rows of activations (one vector per text, or per token for LMs), appended in
order. Out: `<dir>/manifest.json` and `<dir>/shard-NNNNN.safetensors`, each shard
holding one tensor `acts` of shape (rows, d_in) in the store's dtype.

The manifest lists every complete shard with its row range and sha256. Shards and
the manifest are written atomically, so after a crash the store holds exactly the
shards listed, and a writer reopened on it continues after the last one.
Rows holding NaN or inf, or values a float16 store cannot hold, are refused with
an error that names them, before they are written (whatever their source). A
store filled by importing files lists them under `imports` in its manifest.

Reading: `ActivationStore.iter_batches` streams shuffled batches through a bounded
shuffle buffer (memory does not grow with the store), deterministic for a seed;
`ActivationStore.rows` reads rows by id without loading whole shards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from saescope import paths
from saescope._version import __version__
from saescope.errors import SaescopeError, first_rows
from saescope.io import (
    atomic_path,
    read_finished_manifest,
    read_json,
    read_table,
    sha256_file,
    write_json,
)

FORMAT = "saescope.acts/1"
TENSOR = "acts"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FLOAT16_MAX = 65504.0  # largest finite float16; LM residual streams can exceed it


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise SaescopeError(f"unknown storage dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


class BadRows(NamedTuple):
    rows: list[int]  # positions of the bad rows in the checked block
    what: str  # what is wrong with them
    hint: str  # what to do about it


def find_bad_rows(rows: torch.Tensor, dtype: str) -> BadRows | None:
    """The rows of `rows` (n, d) that a `dtype` store cannot hold, or None.

    Bad: a NaN or inf anywhere in the row, or, for a float16 store, a value beyond
    float16's range (it would be stored as inf).
    """
    bad = ~torch.isfinite(rows).all(dim=1)
    what, hint = "NaN or inf values", "check the model or the input that produced them"
    if not bad.any() and dtype == "float16":
        bad = rows.abs().amax(dim=1) > FLOAT16_MAX
        what = f"values beyond float16's range (|x| > {FLOAT16_MAX:g})"
        hint = "store them as --dtype bfloat16 (the range of float32) or float32"
    if not bad.any():
        return None
    return BadRows(torch.nonzero(bad).squeeze(1).tolist(), what, hint)


def making_stage(meta: dict[str, Any]) -> str:
    """The stage that fills a store whose manifest meta is `meta`: acts for an LM's token
    rows, embed otherwise."""
    return "acts" if meta.get("rows") == "tokens" else "embed"


def bad_rows_error(bad: BadRows, first_row: int, where: str) -> SaescopeError:
    """The error for `bad`, numbering rows from `first_row` (the row of the block's start)."""
    shown = first_rows([first_row + i for i in bad.rows])
    return SaescopeError(
        f"{where}: row(s) {shown} hold {bad.what}; nothing was stored for them; {bad.hint}"
    )


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    file: str
    start: int  # first row (inclusive)
    stop: int  # last row (exclusive)
    sha256: str
    nbytes: int


class StoreWriter:
    """Append rows to a store, one atomic shard at a time.

    `meta` describes where the rows come from (model, layer, source...). Reopening a
    store whose manifest has the same `meta`, `d_in` and dtype continues it; a store
    with different `meta` is refused unless `overwrite` is set.
    """

    def __init__(
        self,
        directory: str | Path,
        d_in: int,
        dtype: str = "float32",
        shard_rows: int = 16384,
        meta: dict[str, Any] | None = None,
        overwrite: bool = False,
        append: bool = False,
    ) -> None:
        self.dir = Path(directory)
        self.d_in = int(d_in)
        self.dtype = dtype
        self._torch_dtype = torch_dtype(dtype)
        if shard_rows < 1:
            raise SaescopeError(f"shard_rows must be >= 1, got {shard_rows}")
        self.shard_rows = int(shard_rows)
        self.meta = dict(meta or {})
        self.shards: list[ShardInfo] = []
        # files whose rows were imported (`embed --vectors`): file, sha256, start, stop, complete
        self.imports: list[dict[str, Any]] = []
        self._pending: list[torch.Tensor] = []
        self._pending_rows = 0
        manifest = self.dir / paths.MANIFEST
        if manifest.exists() and overwrite:
            for f in self.dir.glob("shard-*.safetensors"):
                f.unlink()
            manifest.unlink()
        if manifest.exists():
            self._reopen(read_json(manifest), append)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _reopen(self, m: dict[str, Any], append: bool) -> None:
        where = self.dir / paths.MANIFEST
        if m.get("d_in") != self.d_in:
            raise SaescopeError(
                f"{where} holds vectors of dimension {m.get('d_in')}, not {self.d_in}; "
                "write to a new run directory or pass --overwrite"
            )
        if m.get("dtype") != self.dtype:
            raise SaescopeError(
                f"{where} stores {m.get('dtype')}, not {self.dtype}; use the same --dtype or --overwrite"
            )
        # a store's meta without `rows` (made before it existed, or by hand) holds texts
        saved, new = ({"rows": "texts"} | meta for meta in (m["meta"], self.meta))
        differs = sorted(k for k in set(saved) | set(new) if saved.get(k) != new.get(k))
        if differs and not append:
            raise SaescopeError(
                f"{self.dir} holds a different run ({', '.join(differs)} differ); "
                "use another run directory or pass --overwrite"
            )
        self.shard_rows = int(m.get("shard_rows", self.shard_rows))
        self.shards = [ShardInfo(**s) for s in m["shards"]]
        self.imports = [dict(r) for r in m.get("imports", [])]
        if append:
            self.meta = m["meta"]

    @property
    def rows_done(self) -> int:
        """Rows in complete shards (the row a resumed run starts from)."""
        return self.shards[-1].stop if self.shards else 0

    def append(self, rows: torch.Tensor) -> None:
        """Append (n, d_in) rows; full shards are flushed as they fill."""
        if rows.ndim != 2 or rows.shape[1] != self.d_in:
            raise SaescopeError(
                f"cannot append rows of shape {tuple(rows.shape)} to a store of dimension {self.d_in}"
            )
        # before the cast (float16 would turn large values into inf) and before any write
        bad = find_bad_rows(rows, self.dtype)
        if bad is not None:
            at = self._pending_rows + bad.rows[0]  # rows after the last complete shard
            shard = paths.shard_name(len(self.shards) + at // self.shard_rows)
            where = f"{self.dir} (store rows, {shard})"
            raise bad_rows_error(bad, self.rows_done + self._pending_rows, where)
        self._pending.append(rows.detach().to("cpu", self._torch_dtype))
        self._pending_rows += rows.shape[0]
        while self._pending_rows >= self.shard_rows:
            block = torch.cat(self._pending)
            self._flush(block[: self.shard_rows])
            rest = block[self.shard_rows :]
            self._pending = [rest] if len(rest) else []
            self._pending_rows = len(rest)

    def _flush(self, block: torch.Tensor) -> None:
        start = self.rows_done
        name = paths.shard_name(len(self.shards))
        target = self.dir / name
        with atomic_path(target) as tmp:
            save_file({TENSOR: block.contiguous()}, str(tmp))
        self.shards.append(
            ShardInfo(name, start, start + len(block), sha256_file(target), target.stat().st_size)
        )
        self._write_manifest(complete=False)

    def record_imports(self, imports: list[dict[str, Any]]) -> None:
        """Set the list of imported files and save it in the manifest now (before their rows)."""
        self.imports = [dict(r) for r in imports]
        self._write_manifest(complete=False)

    def _write_manifest(self, complete: bool) -> None:
        manifest = {
            "format": FORMAT,
            "saescope_version": __version__,
            "d_in": self.d_in,
            "dtype": self.dtype,
            "count": self.rows_done,
            "shard_rows": self.shard_rows,
            "complete": complete,
            "meta": self.meta,
            "shards": [dataclasses.asdict(s) for s in self.shards],
        }
        if self.imports:  # only import stores carry the key; embedding manifests stay as they were
            manifest["imports"] = self.imports
        write_json(self.dir / paths.MANIFEST, manifest)

    def flush(self) -> None:
        """Write the pending rows now, as a shard shorter than `shard_rows` if need be."""
        if self._pending_rows:
            self._flush(torch.cat(self._pending))
            self._pending, self._pending_rows = [], 0

    def close(self) -> Path:
        """Flush the last partial shard and mark the store complete."""
        self.flush()
        self._write_manifest(complete=True)
        return self.dir


def merge_parts(directory: str | Path, parts: Sequence[str | Path]) -> Path:
    """Write `<directory>/manifest.json` listing the shards of the complete stores `parts`
    (sub-folders of `directory`), in order, as one store; the shard files stay where they are.

    Used by `saescope acts` under torchrun: each rank fills its own part with its slice of
    the contexts, in order, so the merged store's rows are the single-process store's rows.
    """
    directory = Path(directory)
    shards: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    offset = 0
    for part in parts:
        part = Path(part)
        m = read_finished_manifest(
            part / paths.MANIFEST,
            FORMAT,
            "activation store part",
            missing=f"store part {part} has no manifest",
            finish="re-run the extraction",
        )
        if first is None:
            first = m
        elif (m["d_in"], m["dtype"], m["meta"]) != (first["d_in"], first["dtype"], first["meta"]):
            raise SaescopeError(
                f"store part {part} was made with other options than the first part"
            )
        rel = part.resolve().relative_to(directory.resolve())
        for s in m["shards"]:
            n = s["stop"] - s["start"]
            shards.append(s | {"file": str(rel / s["file"]), "start": offset, "stop": offset + n})
            offset += n
    if first is None:
        raise SaescopeError(f"no store parts to merge into {directory}")
    write_json(
        directory / paths.MANIFEST,
        {k: first[k] for k in ("format", "d_in", "dtype", "shard_rows", "meta")}
        | {"saescope_version": __version__, "count": offset, "complete": True, "shards": shards},
    )
    return directory


def split_mask(rows: np.ndarray, eval_fraction: float, seed: int = 0) -> np.ndarray:
    """True for rows in the held-out split: a fixed hash of the row id, not of its order."""
    if eval_fraction <= 0:
        return np.zeros(len(rows), dtype=bool)
    x = (rows.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) & np.uint64(
        0xFFFFFFFFFFFFFFFF
    )
    # splitmix64 finaliser: cheap and well mixed
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53) < eval_fraction


class ActivationStore:
    """Read a complete store: metadata, shuffled batches and random access."""

    def __init__(self, directory: str | Path, verify: bool = True) -> None:
        self.dir = Path(directory)
        m = read_finished_manifest(
            self.dir / paths.MANIFEST,
            FORMAT,
            "activation store",
            missing=f"no activation store at {self.dir} (missing {paths.MANIFEST}); "
            "run `saescope embed` first",
            finish="re-run the command that made it to finish it",
        )
        self.manifest = m
        self.d_in: int = m["d_in"]
        self.dtype: str = m["dtype"]
        self.meta: dict[str, Any] = m["meta"]
        self.shards = [ShardInfo(**s) for s in m["shards"]]
        self.count: int = m["count"]
        self._verify = verify
        self._verified: set[str] = set()
        self._starts = np.array([s.start for s in self.shards], dtype=np.int64)
        self._contexts: np.ndarray | None = None  # token stores: context of each row

    def __len__(self) -> int:
        return self.count

    @property
    def rows_kind(self) -> str:
        """What a row is: "texts" (one embedding per corpus text) or "tokens" (LM runs)."""
        return str(self.meta.get("rows", "texts"))

    def split_keys(self, ids: np.ndarray) -> np.ndarray:
        """What the held-out split hashes for rows `ids`: the row id, or for token stores the
        id of the row's context, so that whole contexts are held out (the LM metrics of
        `saescope eval` run the model on held-out contexts)."""
        if self.rows_kind != "tokens":
            return ids
        if self._contexts is None:
            index = self.dir / paths.TOKEN_INDEX
            if not index.exists():
                raise SaescopeError(f"{index} is missing: the token store has no row index")
            self._contexts = read_table(index, columns=["context"])["context"].to_numpy()
        return self._contexts[ids].astype(np.int64)

    def held_out(self, ids: np.ndarray, eval_fraction: float) -> np.ndarray:
        """(len(ids),) bool: which rows are in the held-out split (`split_mask` of their keys)."""
        return split_mask(self.split_keys(np.asarray(ids, dtype=np.int64)), eval_fraction)

    @property
    def _remake(self) -> str:
        """How a damaged store is made again (a re-run with the same options keeps it)."""
        if self.meta.get("source") == "vectors":
            return f"remove {self.dir} and import the vectors again (`saescope embed --vectors`)"
        return f"`saescope {making_stage(self.meta)} --overwrite` makes it again"

    def _check_size(self, shard: ShardInfo) -> Path:
        path = self.dir / shard.file
        if not path.exists():
            raise SaescopeError(f"shard {path} listed in the manifest is missing; {self._remake}")
        if path.stat().st_size != shard.nbytes:
            raise SaescopeError(
                f"shard {path} is truncated or altered ({path.stat().st_size} bytes, "
                f"manifest says {shard.nbytes}); {self._remake}"
            )
        return path

    def check_files(self) -> None:
        """Every shard there at the size the manifest records (no checksum: cheap enough
        to run before a stage trusts or replaces what it made from the store)."""
        for s in self.shards:
            self._check_size(s)

    def _check(self, shard: ShardInfo) -> Path:
        path = self.dir / shard.file
        if shard.file in self._verified:
            return path
        self._check_size(shard)
        if self._verify and sha256_file(path) != shard.sha256:
            raise SaescopeError(f"shard {path} fails its sha256 checksum; {self._remake}")
        self._verified.add(shard.file)
        return path

    def verify(self) -> None:
        """Check every shard's size and checksum; raise on the first bad one."""
        for s in self.shards:
            self._check(s)

    def load_shard(self, index: int) -> torch.Tensor:
        shard = self.shards[index]
        path = self._check(shard)
        try:
            with safe_open(str(path), framework="pt") as fh:
                out = fh.get_tensor(TENSOR)
        except (SafetensorError, OSError) as exc:
            raise SaescopeError(f"cannot read shard {path}: {exc}") from exc
        if out.shape != (shard.stop - shard.start, self.d_in):
            raise SaescopeError(f"shard {path} has shape {tuple(out.shape)}, manifest disagrees")
        return out

    def rows(self, row_ids: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """(len(row_ids), d_in) float32 rows by id, reading only the rows asked for.

        `row_ids` is a 1-D sequence of whole numbers; a boolean mask is refused (it would
        read as ids 0 and 1), as are fractions and nested lists."""
        given = row_ids.cpu().numpy() if isinstance(row_ids, torch.Tensor) else np.asarray(row_ids)
        if given.ndim != 1 or (len(given) and given.dtype.kind not in "iu"):
            kind = "a boolean mask" if given.dtype.kind == "b" else f"{given.dtype} values"
            raise SaescopeError(
                "row ids must be a 1-D sequence of whole numbers, got "
                + (f"shape {given.shape}" if given.ndim != 1 else kind)
                + (" (np.flatnonzero(mask) gives the ids)" if given.dtype.kind == "b" else "")
            )
        ids = given.astype(np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.count):
            raise SaescopeError(
                f"row ids must lie in [0, {self.count}); got {ids.min()}..{ids.max()}"
            )
        out = torch.empty(len(ids), self.d_in, dtype=torch.float32)
        which = np.searchsorted(self._starts, ids, side="right") - 1
        for si in np.unique(which):
            shard = self.shards[si]
            path = self._check(shard)
            sel = np.nonzero(which == si)[0]
            local = ids[sel] - shard.start
            with safe_open(str(path), framework="pt") as fh:
                if len(sel) > (shard.stop - shard.start) // 8:
                    block = fh.get_tensor(TENSOR)[torch.from_numpy(local)]
                else:
                    sl = fh.get_slice(TENSOR)
                    block = torch.stack([sl[int(i) : int(i) + 1][0] for i in local])
            out[torch.from_numpy(sel)] = block.float()
        return out

    def _shard_rows_for_split(self, index: int, split: str, eval_fraction: float):
        shard = self.shards[index]
        x = self.load_shard(index).float()  # (rows, d_in)
        ids = np.arange(shard.start, shard.stop, dtype=np.int64)
        if split != "all":
            keep = self.held_out(ids, eval_fraction)
            if split == "train":
                keep = ~keep
            x, ids = x[torch.from_numpy(keep)], ids[keep]
        return x, ids

    def iter_batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        buffer_rows: int = 65536,
        seed: int = 0,
        split: str = "all",
        eval_fraction: float = 0.0,
        drop_last: bool = False,
        with_ids: bool = False,
    ) -> Iterator[Any]:
        """Stream float32 batches of (batch_size, d_in).

        shuffle: shard order is permuted, and rows pass through a fixed buffer of
        `buffer_rows` rows: each batch is drawn from random buffer slots, which are
        refilled from the incoming shard. Memory is the buffer plus one shard,
        whatever the size of the store.
        split: "all", "train" or "eval"; eval rows are a fixed `eval_fraction` of
        row ids (`split_mask`), the same whatever the batch size or seed.
        with_ids: yield (rows, row_ids) pairs.
        """
        if split not in ("all", "train", "eval"):
            raise SaescopeError(f"split must be all, train or eval, not {split!r}")
        if batch_size < 1:
            raise SaescopeError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= eval_fraction < 1:
            raise SaescopeError(f"eval_fraction must lie in [0, 1), got {eval_fraction}")
        if split == "eval" and eval_fraction == 0:
            raise SaescopeError(
                "split='eval' with eval_fraction 0 holds no rows; pass the held-out fraction "
                "(the SAE's TrainConfig.eval_fraction)"
            )

        def out(x: torch.Tensor, i: np.ndarray) -> Any:
            return (x, torch.from_numpy(i)) if with_ids else x

        if not shuffle:
            yield from self._iter_in_order(batch_size, split, eval_fraction, drop_last, out)
            return
        rng = np.random.default_rng(seed)
        cap = max(int(buffer_rows), batch_size)
        buf = torch.empty(cap, self.d_in)  # (cap, d_in) the shuffle buffer
        buf_ids = np.empty(cap, dtype=np.int64)
        filled = 0
        pending: list[tuple[torch.Tensor, np.ndarray]] = []
        pending_rows = 0
        for si in rng.permutation(len(self.shards)):
            x, ids = self._shard_rows_for_split(int(si), split, eval_fraction)
            pos = 0
            if filled < cap:  # fill the buffer first
                take = min(cap - filled, len(x))
                buf[filled : filled + take] = x[:take]
                buf_ids[filled : filled + take] = ids[:take]
                filled += take
                pos = take
            while pos < len(x):  # buffer full: each batch leaves random slots, new rows take them
                n = min(batch_size, len(x) - pos)
                slots = rng.choice(cap, size=n, replace=False)
                t_slots = torch.from_numpy(slots)
                batch, batch_ids = buf[t_slots], buf_ids[slots].copy()
                buf[t_slots] = x[pos : pos + n]
                buf_ids[slots] = ids[pos : pos + n]
                pos += n
                if n == batch_size:
                    yield out(batch, batch_ids)
                else:  # a short draw at a shard's end: keep it for the next batch
                    pending.append((batch, batch_ids))
                    pending_rows += n
                    if pending_rows >= batch_size:
                        px = torch.cat([p[0] for p in pending])
                        pi = np.concatenate([p[1] for p in pending])
                        yield out(px[:batch_size], pi[:batch_size])
                        pending = [(px[batch_size:], pi[batch_size:])]
                        pending_rows -= batch_size
        # drain the buffer and the pending rows in random order, gathering batch by batch
        # (no second copy of the buffer)
        pend_x = torch.cat([p[0] for p in pending]) if pending else torch.empty(0, self.d_in)
        pend_i = np.concatenate([p[1] for p in pending]) if pending else np.empty(0, dtype=np.int64)
        perm = rng.permutation(filled + len(pend_x))
        stop = (len(perm) // batch_size) * batch_size if drop_last else len(perm)
        for lo in range(0, stop, batch_size):
            idx = perm[lo : lo + batch_size]
            in_buf, in_pend = idx[idx < filled], idx[idx >= filled] - filled
            x = torch.cat([buf[torch.from_numpy(in_buf)], pend_x[torch.from_numpy(in_pend)]])
            yield out(x, np.concatenate([buf_ids[in_buf], pend_i[in_pend]]))

    def _iter_in_order(self, batch_size, split, eval_fraction, drop_last, out):
        carry_x, carry_i = torch.empty(0, self.d_in), np.empty(0, dtype=np.int64)
        for si in range(len(self.shards)):
            x, ids = self._shard_rows_for_split(si, split, eval_fraction)
            x, ids = torch.cat([carry_x, x]), np.concatenate([carry_i, ids])
            n_full = (len(x) // batch_size) * batch_size
            yield from _batches(x[:n_full], ids[:n_full], batch_size, True, out)
            carry_x, carry_i = x[n_full:], ids[n_full:]
        yield from _batches(carry_x, carry_i, batch_size, drop_last, out)


def _batches(
    x: torch.Tensor, ids: np.ndarray, batch_size: int, drop_last: bool, out
) -> Iterator[Any]:
    stop = (len(x) // batch_size) * batch_size if drop_last else len(x)
    for lo in range(0, stop, batch_size):
        yield out(x[lo : lo + batch_size], ids[lo : lo + batch_size])


def store_damage(directory: str | Path) -> str | None:
    """What is wrong with a finished store's own files (its manifest, a shard missing or
    not at its recorded size), or None: what `Record.decide(damage=...)` and `saescope
    status` ask of a store."""
    try:
        ActivationStore(directory, verify=False).check_files()
    except SaescopeError as exc:
        return str(exc)
    return None
