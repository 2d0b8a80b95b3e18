"""The texts of store rows, whatever a row is: a corpus text, or a token in its context.

In: a run directory. The store's manifest says what its rows are (`rows`:
"texts" or "tokens"); nothing here assumes row i is text i. Out:
  row_texts(run)   a sequence: row -> text (a corpus text, or a token's short window)
  TokenRows(run)   for token runs: each row's context window as tokens, and
                   which store row every token of the window is
  feature_window(tokens, source, feature, row)
                   a row's window with one feature's activation on every token
                   (source: the run's `Activations` or its `LatentCache`)

Token windows never cross their context, nor, in packed contexts, the text of the
token (the texts before and after it were other documents: joined without their EOS
they read as one), and leave out BOS and padding. The
default window is delphi's 32 tokens (24 before the token, the token, 7 after);
`text()` joins a window into a string, optionally marking the token `<<like this>>`.
For naming and scoring, a token row stands for the short window before and at it
(`NAME_BEFORE` tokens and `NAME_AFTER` after), so the phrases found are the ones
around the activating token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from safetensors.numpy import load_file as load_numpy

from saescope.errors import SaescopeError
from saescope.examples.activations import Activations
from saescope.io import read_json, read_table
from saescope.paths import RunPaths

if TYPE_CHECKING:
    from saescope.latents import LatentCache  # the latents stage imports this package

WINDOW_BEFORE, WINDOW_AFTER = 24, 7  # 32 tokens with the token itself
NAME_BEFORE, NAME_AFTER = 6, 2  # the window a token row stands for when naming/scoring


def store_rows_kind(run: str | Path) -> str:
    """ "texts" or "tokens": what the rows of the run's store are (from its manifest)."""
    m = RunPaths(run).acts_manifest
    if not m.exists():
        return "texts"
    return str(read_json(m).get("meta", {}).get("rows", "texts"))


def load_tokenizer(model: str):
    """The tokenizer of the LM a token store was made with (no model weights are loaded)."""
    from transformers import AutoTokenizer

    from saescope.lm.model import resolve_lm

    try:
        return AutoTokenizer.from_pretrained(resolve_lm(model))
    except Exception as exc:  # hub, IO and config errors alike
        from saescope.errors import describe

        raise SaescopeError(f"cannot load the tokenizer of {model!r}: {describe(exc)}") from exc


@dataclass(frozen=True)
class Window:
    """A token's context window: token strings, their store rows (-1: not a row), the token."""

    tokens: list[str]
    rows: list[int]
    center: int  # index of the token itself in `tokens`


class TokenRows:
    """Token rows of an LM run: context windows as strings (see the module docstring)."""

    def __init__(self, run: str | Path, tokenizer: Any = None) -> None:
        rp = RunPaths(run)
        if not rp.acts_tokens.exists() or not rp.acts_index.exists():
            raise SaescopeError(
                f"{rp.acts} has no token contexts ({rp.acts_tokens.name}, {rp.acts_index.name}); "
                f"run `saescope acts --run {run}`"
            )
        t = load_numpy(str(rp.acts_tokens))
        self.input_ids: np.ndarray = t["input_ids"]  # (n_ctx, ctx_len)
        self.attention: np.ndarray = t["attention_mask"].astype(bool)
        self.text_row: np.ndarray = t["text_row"]
        index = read_table(rp.acts_index, columns=["context", "position"])
        self.context: np.ndarray = index["context"].to_numpy().astype(np.int64)
        self.position: np.ndarray = index["position"].to_numpy().astype(np.int64)
        # store row of every (context, position), -1 where the token is not a row
        self.row_at = np.full(self.input_ids.shape, -1, dtype=np.int64)
        self.row_at[self.context, self.position] = np.arange(len(self.context))
        self.model = str(read_json(rp.acts_manifest)["meta"].get("model"))
        self._tokenizer = tokenizer
        self._strings: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.context)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model)
        return self._tokenizer

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each token id as the text it stands for (decoded alone, cached)."""
        known = self._strings  # a membership test per id: no copy of the cache per call
        missing = sorted({int(i) for i in ids if int(i) not in known})
        if missing:
            for i, s in zip(
                missing, self.tokenizer.batch_decode([[i] for i in missing]), strict=True
            ):
                self._strings[i] = s
        return [self._strings[int(i)] for i in ids]

    def token(self, row: int) -> str:
        return self.token_strings([self.input_ids[self.context[row], self.position[row]]])[0]

    def window(self, row: int, before: int = WINDOW_BEFORE, after: int = WINDOW_AFTER) -> Window:
        """The tokens around store row `row` within its context and its text (no BOS, no
        padding; a special token that is a row keeps the tokens of the texts around it)."""
        if not 0 <= row < len(self.context):
            raise SaescopeError(f"row {row} is out of range: the store has rows 0..{len(self) - 1}")
        c, p = int(self.context[row]), int(self.position[row])
        lo, hi = max(0, p - before), min(self.input_ids.shape[1], p + after + 1)
        span = np.arange(lo, hi)
        # keep text tokens and tokens that are rows (a kept special token); never padding
        ok = self.attention[c, span] & ((self.text_row[c, span] >= 0) | (self.row_at[c, span] >= 0))
        own = int(self.text_row[c, p])
        if own >= 0:  # the token's own text only
            ok &= self.text_row[c, span] == own
        ok |= span == p
        span = span[ok]
        return Window(
            self.token_strings(self.input_ids[c, span].tolist()),
            self.row_at[c, span].tolist(),
            int(np.flatnonzero(span == p)[0]),
        )

    def text(
        self, row: int, before: int = WINDOW_BEFORE, after: int = WINDOW_AFTER, mark: bool = False
    ) -> str:
        """The window of `row` as one string; with `mark`, the token itself as <<token>>."""
        w = self.window(row, before, after)
        parts = list(w.tokens)
        if mark:
            parts[w.center] = f"<<{parts[w.center]}>>"
        return "".join(parts)


class TokenTexts(Sequence[str]):
    """row -> the short window a token row stands for when naming and scoring (cached)."""

    def __init__(self, tokens: TokenRows, before: int = NAME_BEFORE, after: int = NAME_AFTER):
        self.tokens, self.before, self.after = tokens, before, after
        self._cache: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...

    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i not in self._cache:
            self._cache[i] = self.tokens.text(i, self.before, self.after).strip()
        return self._cache[i]


def row_texts(run: str | Path, n_rows: int | None = None) -> Sequence[str]:
    """row -> text for every store row of a run: corpus texts, or token windows (`TokenTexts`).

    `n_rows`: the number of rows the caller's activations have; a mismatch is an error.
    """
    kind = store_rows_kind(run)
    if kind == "tokens":
        texts: Sequence[str] = TokenTexts(TokenRows(run))
    else:
        from saescope.corpus import corpus_column

        texts = corpus_column(run, "text").astype(str).tolist()
    manifest = RunPaths(run).acts_manifest
    store_rows = None
    if kind != "tokens" and manifest.exists():
        store_rows = read_json(manifest).get("count")
    if store_rows is not None and len(texts) != store_rows:
        raise SaescopeError(
            f"the store of {run} holds {store_rows} rows but its corpus.parquet {len(texts)} "
            "texts, so its rows are not one per text (vectors imported from another set?); "
            "re-make the corpus or the store so that they match"
        )
    if n_rows is not None and len(texts) != n_rows:
        raise SaescopeError(
            f"the run {run} has {len(texts)} rows of text but the activations have {n_rows}; "
            "re-run `saescope latents` (and the stages after it)"
        )
    return texts


def feature_column(
    source: Activations | LatentCache, feature: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64 ascending, values float32) where `feature` is active.

    source: `Activations` (one column of the matrix in memory), or a `LatentCache`,
    whose shards are then streamed once for this one feature (no matrix is built).
    """
    if isinstance(source, Activations):
        source.check_features([feature])
        return source.column(feature)
    if not 0 <= feature < source.d_sae:
        raise SaescopeError(
            f"feature {feature} is out of range: the SAE has features 0..{source.d_sae - 1}"
        )
    rows, vals = [], []
    for r, f, v in source.triples():
        hit = f == feature
        rows.append(r[hit].astype(np.int64))
        vals.append(v[hit].astype(np.float32))
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(rows), np.concatenate(vals)  # shards are in row order


def values_at(column: tuple[np.ndarray, np.ndarray], rows: Sequence[int]) -> np.ndarray:
    """(len(rows),) float32: a feature's values at `rows` (0 where inactive, or a row is -1)."""
    col_rows, col_vals = column
    rows_arr = np.asarray(rows, dtype=np.int64)
    out = np.zeros(len(rows_arr), dtype=np.float32)
    if not len(col_rows):
        return out
    pos = np.minimum(np.searchsorted(col_rows, rows_arr), len(col_rows) - 1)
    hit = (col_rows[pos] == rows_arr) & (rows_arr >= 0)
    out[hit] = col_vals[pos[hit]]
    return out


@dataclass(frozen=True)
class ActiveWindow:
    """A token's window with one feature's activation on each of its tokens."""

    feature: int
    row: int
    tokens: list[str]
    rows: list[int]  # store row of each token, -1 where it is not a row
    acts: list[float]  # the feature's activation on each token (0: inactive or not a row)
    center: int  # index of the row's own token

    def marked(self) -> str:
        """The window as one string, the row's token as <<token>>."""
        parts = list(self.tokens)
        parts[self.center] = f"<<{parts[self.center]}>>"
        return "".join(parts)


def feature_window(
    tokens: TokenRows,
    source: Activations | LatentCache | None,
    feature: int,
    row: int,
    before: int = WINDOW_BEFORE,
    after: int = WINDOW_AFTER,
    column: tuple[np.ndarray, np.ndarray] | None = None,
) -> ActiveWindow:
    """The window of `row` with `feature`'s activation on every token of it.

    source: the run's `Activations` or `LatentCache` (see `feature_column`); pass
    `column` (its result) to reuse it for many rows of one feature.
    """
    if column is None:
        if source is None:
            raise ValueError("feature_window needs a source or a column")
        column = feature_column(source, feature)
    w = tokens.window(row, before, after)
    acts = values_at(column, w.rows)
    return ActiveWindow(int(feature), int(row), w.tokens, w.rows, acts.tolist(), w.center)
