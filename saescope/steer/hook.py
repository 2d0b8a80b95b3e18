"""The steering hook: feature edits at the SAE's hookpoint, at the positions asked for, with or without the KV cache.

`Steerer(lm, hp, sae, edits, positions)` is a context manager. While it is
active, every forward of the model has the hidden states at the hookpoint
replaced by `saescope.edits.apply_edits` at the selected positions:

    all         every position (prompt and generated tokens)
    prompt      the prompt's tokens only
    generated   the generated tokens only
    from:P      every token at position >= P of its own sequence (0 = its first token)

Positions are absolute: a pre-hook on the model reads how many positions the KV
cache already holds (`get_seq_length()` of the cache it is given) before each forward, so
the single new token of a cached generation step is steered exactly as it is
when the whole sequence is recomputed without a cache (the SAELens tutorial and
seed 003's demo skip the hook when the sequence length is 1: with the cache, only
their prompt is steered). Batches may be left-padded: `begin(attention_mask)`
takes the prompts' mask, and a row's own positions start after its padding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch

from saescope.edits import Edit, apply_edits
from saescope.errors import SaescopeError
from saescope.lm import hooks

POSITION_KINDS = ("all", "prompt", "generated")
_FROM = re.compile(r"^from:(\d+)$")


@dataclass(frozen=True)
class Positions:
    kind: str  # all | prompt | generated | from
    start: int = 0  # kind "from": first position of a row's own tokens that is steered

    def __post_init__(self) -> None:
        if self.kind not in (*POSITION_KINDS, "from") or self.start < 0:
            raise SaescopeError(
                f"unknown positions {self.kind!r}; choose all, prompt, generated or from:P "
                "(Positions.parse reads the from:P spelling)"
            )

    @classmethod
    def parse(cls, spec: str) -> Positions:
        spec = spec.strip()
        if spec in POSITION_KINDS:
            return cls(spec)
        m = _FROM.match(spec)
        if m:
            return cls("from", int(m.group(1)))
        raise SaescopeError(
            f"unknown positions {spec!r}; choose all, prompt, generated or from:P (P >= 0)"
        )


class Steerer:
    """Edits applied at a hookpoint while active (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        hp: hooks.Hookpoint,
        sae: Any,
        edits: Sequence[Edit],
        positions: Positions = Positions("all"),
    ) -> None:
        self.model, self.hp, self.sae = model, hp, sae
        self.edits = list(edits)
        self.positions = positions
        self._offset = 0  # positions already in the KV cache before this forward
        self._pad: torch.Tensor | None = None  # (batch,) left padding of each prompt
        self._prompt_len = 0  # padded prompt length
        self._stack: ExitStack | None = None

    def begin(self, attention_mask: torch.Tensor) -> Steerer:
        """Set the prompts of the coming generation: (batch, prompt_len) mask, left padded."""
        mask = attention_mask.to(torch.long)
        self._prompt_len = int(mask.shape[1])
        # left padding: a row's pads are its zeros before its first real token
        self._pad = (mask.cumsum(dim=1) == 0).sum(dim=1).cpu()
        return self

    def _before_forward(self, _module: Any, args: tuple, kwargs: dict) -> None:
        # transformers 5 passes the KV cache as `cache`, older versions as `past_key_values`
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._offset = int(cache.get_seq_length()) if cache is not None else 0

    def selected(self, batch: int, seq: int) -> torch.Tensor:
        """(batch, seq) bool: which positions of this forward are steered."""
        absolute = self._offset + torch.arange(seq)  # (seq,)
        kind = self.positions.kind
        if kind == "all":
            return torch.ones(batch, seq, dtype=torch.bool)
        if kind == "prompt":
            return (absolute < self._prompt_len).expand(batch, seq)
        if kind == "generated":
            if not self._prompt_len:
                raise SaescopeError("positions 'generated' need begin(prompt_mask) first")
            return (absolute >= self._prompt_len).expand(batch, seq)
        pad = self._pad if self._pad is not None and len(self._pad) == batch else torch.zeros(batch)
        own = absolute[None, :] - pad[:, None].to(absolute.dtype)  # (batch, seq)
        return own >= self.positions.start

    def _edit(self, h: torch.Tensor) -> torch.Tensor:
        if not self.edits:
            return h
        sel = self.selected(h.shape[0], h.shape[1]).to(h.device)
        if not bool(sel.any()):
            return h
        edited = apply_edits(self.sae, h, self.edits)
        return torch.where(sel[..., None], edited, h)

    def __enter__(self) -> Steerer:
        self._stack = ExitStack()
        handle = self.model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        self._stack.callback(handle.remove)
        self._stack.enter_context(hooks.replaced(self.model, self.hp, self._edit))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
