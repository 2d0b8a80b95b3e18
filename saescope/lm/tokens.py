"""Corpus texts to fixed-length token contexts, and which of their tokens become store rows.

In: a tokenizer, the corpus texts (one text = one corpus row), the context length
and the packing. Out: `Contexts`, arrays of shape (n_contexts, ctx_len):
  input_ids       int32 token ids (padding where a context is shorter)
  attention_mask  bool, False on padding
  text_row        int32 corpus row each token comes from, -1 for BOS, separators, padding
  keep            bool, the tokens that become store rows (row order: contexts in
                  order, positions in order)

Packing "pack" (default, as SAELens and delphi do): the texts' tokens are
concatenated in corpus order with the EOS token between texts, and cut into
contexts of ctx_len - 1 tokens, each preceded by BOS; the last, shorter context
is padded. Packing "document": one context per text, BOS first, truncated to
ctx_len and padded. Special tokens (BOS, EOS separators, padding, and any token
the tokenizer calls special) are not kept unless `keep_special` is set; padding
is never kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from saescope.errors import SaescopeError

PACKINGS = ("pack", "document")


@dataclass(frozen=True)
class Contexts:
    input_ids: np.ndarray  # (n_ctx, ctx_len) int32
    attention_mask: np.ndarray  # (n_ctx, ctx_len) bool
    text_row: np.ndarray  # (n_ctx, ctx_len) int32, -1 where no corpus text
    keep: np.ndarray  # (n_ctx, ctx_len) bool, store rows

    @property
    def n_contexts(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def ctx_len(self) -> int:
        return int(self.input_ids.shape[1])

    def rows_per_context(self) -> np.ndarray:
        """(n_ctx,) int64 store rows each context holds."""
        return self.keep.sum(axis=1).astype(np.int64)

    def row_starts(self) -> np.ndarray:
        """(n_ctx + 1,) int64 first store row of each context (and the total at the end)."""
        return np.concatenate([[0], np.cumsum(self.rows_per_context())]).astype(np.int64)

    def slice(self, lo: int, hi: int) -> Contexts:
        return Contexts(
            self.input_ids[lo:hi],
            self.attention_mask[lo:hi],
            self.text_row[lo:hi],
            self.keep[lo:hi],
        )


def _token_id(tokenizer, which: str) -> int | None:
    tid = getattr(tokenizer, f"{which}_token_id", None)
    return int(tid) if tid is not None else None


def tokenize_texts(tokenizer, texts: list[str], batch: int = 1000) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    out: list[list[int]] = []
    bar = tqdm(total=len(texts), desc="tokenize", unit="text", leave=False)
    for lo in range(0, len(texts), batch):
        enc = tokenizer(texts[lo : lo + batch], add_special_tokens=False)["input_ids"]
        out.extend(list(ids) for ids in enc)
        bar.update(min(batch, len(texts) - lo))
    bar.close()
    return out


def build_contexts(
    tokenizer,
    texts: list[str],
    ctx_len: int = 256,
    packing: str = "pack",
    bos: bool = True,
    keep_special: bool = False,
    max_positions: int | None = None,
) -> Contexts:
    """The contexts of `texts` (see the module docstring)."""
    if packing not in PACKINGS:
        raise SaescopeError(f"unknown packing {packing!r}; choose {' or '.join(PACKINGS)}")
    if ctx_len < 2:
        raise SaescopeError(f"the context length must be >= 2 tokens, got {ctx_len}")
    if max_positions is not None and ctx_len > max_positions:
        raise SaescopeError(
            f"context length {ctx_len} is above the model's limit of {max_positions} positions"
        )
    bos_id = _token_id(tokenizer, "bos")
    if bos and bos_id is None:
        raise SaescopeError(
            "the tokenizer has no BOS token; pass --no-bos (contexts then start with text)"
        )
    eos_id = _token_id(tokenizer, "eos")
    pad_id = _token_id(tokenizer, "pad")
    pad_id = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    special = np.array(sorted(set(getattr(tokenizer, "all_special_ids", []) or [])), dtype=np.int64)
    ids_per_text = tokenize_texts(tokenizer, texts)
    if not any(len(t) for t in ids_per_text):
        raise SaescopeError("the corpus has no tokens: every text is empty after tokenisation")
    head = 1 if bos else 0
    body = ctx_len - head
    if packing == "pack":
        stream: list[int] = []
        rows: list[int] = []
        for i, ids in enumerate(ids_per_text):
            if not ids:
                continue
            if stream and eos_id is not None:  # a separator between texts
                stream.append(eos_id)
                rows.append(-1)
            stream.extend(ids)
            rows.extend([i] * len(ids))
        n_ctx = -(-len(stream) // body)
        flat_ids = np.full(n_ctx * body, pad_id, dtype=np.int64)
        flat_rows = np.full(n_ctx * body, -1, dtype=np.int64)
        flat_mask = np.zeros(n_ctx * body, dtype=bool)
        flat_ids[: len(stream)] = stream
        flat_rows[: len(stream)] = rows
        flat_mask[: len(stream)] = True
        ids_arr = flat_ids.reshape(n_ctx, body)
        row_arr = flat_rows.reshape(n_ctx, body)
        mask = flat_mask.reshape(n_ctx, body)
    else:
        kept = [(i, ids[:body]) for i, ids in enumerate(ids_per_text) if ids]
        n_ctx = len(kept)
        ids_arr = np.full((n_ctx, body), pad_id, dtype=np.int64)
        row_arr = np.full((n_ctx, body), -1, dtype=np.int64)
        mask = np.zeros((n_ctx, body), dtype=bool)
        for c, (i, ids) in enumerate(kept):
            ids_arr[c, : len(ids)] = ids
            row_arr[c, : len(ids)] = i
            mask[c, : len(ids)] = True
    if bos:
        ids_arr = np.concatenate([np.full((n_ctx, 1), bos_id), ids_arr], axis=1)
        row_arr = np.concatenate([np.full((n_ctx, 1), -1), row_arr], axis=1)
        mask = np.concatenate([np.ones((n_ctx, 1), dtype=bool), mask], axis=1)
    is_special = np.isin(ids_arr, special) | (row_arr < 0)
    keep = mask & (keep_special | ~is_special)
    if not keep.any():
        raise SaescopeError("no tokens are left to store once special tokens are left out")
    return Contexts(ids_arr.astype(np.int32), mask, row_arr.astype(np.int32), keep)
