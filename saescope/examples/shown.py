"""Rows as an LLM is shown them: a text, or a token window with the active tokens marked.

In: a run (its rows are texts or tokens, as the store manifest says) and the run's
`Activations`. Out: `Shown` per (feature, row):
  text      what goes into a prompt: a text row's text (cut at `max_chars`), or a token
            row's window with every token where the feature is active wrapped in
            << >> (consecutive active tokens form one span)
  plain     the same without marks
  tokens    the window's tokens (token rows; a text row is one "token", its text)
  acts      the feature's activation on each of `tokens`
  activation  the feature's value at the row itself

Explainers and every LLM scorer show rows through this module, so a prompt shows a
row the same way wherever it is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saescope.examples.activations import Activations
from saescope.examples.tokens import (
    WINDOW_AFTER,
    WINDOW_BEFORE,
    TokenRows,
    feature_window,
    row_texts,
    store_rows_kind,
    values_at,
)

OPEN, CLOSE = "<<", ">>"


@dataclass(frozen=True)
class Shown:
    """One row of one feature as a prompt shows it (see the module docstring)."""

    row: int
    text: str
    plain: str
    tokens: list[str]
    acts: list[float]
    activation: float


def mark_tokens(tokens: Sequence[str], marked: Sequence[bool]) -> str:
    """The tokens joined, each run of consecutive marked tokens wrapped in << >>.

    Leading spaces stay outside the marks (`" the"` marked reads ` <<the>>`).
    """
    out: list[str] = []
    inside = False
    for tok, m in zip(tokens, marked, strict=True):
        if m and not inside:
            stripped = tok.lstrip()
            out.append(tok[: len(tok) - len(stripped)] + OPEN + stripped)
            inside = True
            continue
        if not m and inside:
            out.append(CLOSE)
            inside = False
        out.append(tok)
    if inside:
        out.append(CLOSE)
    return "".join(out)


def _cut(text: str, max_chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


class RowShower:
    """Shows rows of a run to an LLM (see the module docstring).

    before/after: the token window around a token row (delphi's 32 tokens by default).
    """

    def __init__(
        self,
        run: str | Path,
        acts: Activations,
        max_chars: int = 400,
        before: int = WINDOW_BEFORE,
        after: int = WINDOW_AFTER,
    ) -> None:
        self.acts, self.max_chars, self.before, self.after = acts, max_chars, before, after
        self.kind = store_rows_kind(run)
        self.tokens: TokenRows | None = TokenRows(run) if self.kind == "tokens" else None
        self.texts: Sequence[str] = () if self.tokens else row_texts(run, acts.n_rows)
        self._column: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def is_tokens(self) -> bool:
        return self.tokens is not None

    def column(self, feature: int) -> tuple[np.ndarray, np.ndarray]:
        """The feature's (rows, values), kept for the feature last asked about."""
        if self._column is None or self._column[0] != feature:
            self._column = (feature, self.acts.column(feature))
        return self._column[1]

    def show(self, feature: int, rows: Sequence[int] | np.ndarray) -> list[Shown]:
        """Each of `rows` as shown for `feature`, in the order given."""
        col = self.column(feature)
        rows = [int(r) for r in rows]
        at = values_at(col, rows)
        if self.tokens is None:
            out = []
            for r, a in zip(rows, at, strict=True):
                t = _cut(self.texts[r], self.max_chars)
                out.append(Shown(r, t, t, [t], [float(a)], float(a)))
            return out
        shown = []
        for r, a in zip(rows, at, strict=True):
            w = feature_window(self.tokens, None, feature, r, self.before, self.after, column=col)
            text = mark_tokens(w.tokens, [x > 0 for x in w.acts])
            shown.append(Shown(r, text, "".join(w.tokens), w.tokens, w.acts, float(a)))
        return shown

    def window(self, feature: int, row: int, before: int, after: int) -> Shown:
        """One token row with a window of its own size (the simulation scorer's short one)."""
        assert self.tokens is not None
        w = feature_window(
            self.tokens, None, feature, row, before, after, column=self.column(feature)
        )
        text = mark_tokens(w.tokens, [x > 0 for x in w.acts])
        act = float(w.acts[w.center])
        return Shown(int(row), text, "".join(w.tokens), w.tokens, w.acts, act)
