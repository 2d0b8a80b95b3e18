"""The models a served run loads on first use: for the text inspector and the steering pages.

In: a `ServedRun`. Out: `RunModels`, whose methods answer one request each:
  inspect(text, n)   sentence runs: the text embedded as the corpus was, the features
                     it activates (strongest first); LM runs: the text run through the
                     LM to the hookpoint, the features strongest on any token, with
                     their activation on every token
  search(...)        steered semantic search (`SearchSession`), results before and after
  generate(...)      unsteered and steered continuations of one prompt (`Steerer`)

Models load once per server, on the first request that needs them (the sentence
model, or the LM with its hookpoint and the latent cache's SAE; the search session
with its index). A model serves one request at a time: a lock per model (steering
hooks change the LM while they generate), waited for at most `LOCK_SECONDS`.
Generation is bounded in tokens (`Limits.max_new_tokens`) and in time
(`Limits.generation_seconds`, shared by the two generations of a request: the
model's `generation_config.max_time`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from saescope.errors import SaescopeError
from saescope.inspect import TextHit, TokenFeature, TokenHits
from saescope.serve.errors import Busy
from saescope.serve.limits import LOCK_SECONDS

if TYPE_CHECKING:
    from saescope.serve.served import ServedRun

GEN_OPS = {"add": "add", "clamp": "clamp", "ablate": "zero"}
DEFAULT_NEW_TOKENS = 24  # a generation request that names no length
DEFAULT_GEN_STRENGTH = 2.0  # an edit that names no strength (typical units: 2x max act)


@dataclass(frozen=True)
class FeatureEdit:
    """An edit as a page asks for it: a feature id or a word of its name."""

    target: int | str
    op: str = "add"  # generation: add | clamp | ablate;  search: boost | suppress | clamp | zero
    strength: float | None = None


@contextmanager
def _holding(lock: threading.Lock, what: str) -> Iterator[None]:
    if not lock.acquire(timeout=LOCK_SECONDS):
        raise Busy(f"the {what} is busy with another request; try again in a moment")
    try:
        yield
    finally:
        lock.release()


class RunModels:
    """Models of one run, loaded on first use (see the module docstring)."""

    def __init__(self, run: ServedRun, device: str = "cpu") -> None:
        self.run = run
        self.device = device
        self._sentence: Any = None
        self._lm: Any = None  # (LM, Hookpoint, SAE)
        self._sae: Any = None
        self._search: Any = None
        self._locks = {k: threading.Lock() for k in ("sentence", "lm", "search")}

    def _need(self, page: str) -> None:
        why = self.run.missing()[page]
        if why:
            raise SaescopeError(why)

    def _cache_sae(self) -> Any:
        from saescope.sae import SAE

        if self._sae is None:
            sae = SAE.load(self.run.sae_dir, device=self.device).eval()
            self._sae = sae.requires_grad_(False)
        return self._sae

    # --- text inspector ---------------------------------------------------------------

    def inspect(self, text: str, n: int) -> dict[str, Any]:
        if not text.strip():
            raise SaescopeError("the text is empty; paste a text to inspect")
        self._need("inspect")
        if self.run.kind == "tokens":
            with _holding(self._locks["lm"], "language model"):
                return asdict(self._token_hits(text, n)) | {"kind": "tokens"}
        with _holding(self._locks["sentence"], "sentence model"):
            return {"kind": "texts", "text": text, "features": self._text_hits(text, n)}

    def _text_hits(self, text: str, n: int) -> list[dict[str, Any]]:
        import torch

        from saescope.embed import encode_texts, load_query_model

        meta = self.run.meta
        if self._sentence is None:
            self._sentence = load_query_model(str(meta["model"]), meta, str(self.device))
        sae = self._cache_sae()
        x = encode_texts(self._sentence, [text], 1, bool(meta.get("normalize", False)))
        with torch.inference_mode():
            codes = sae.encode(x.to(self.device))[0].float().cpu().numpy()  # (d_sae,)
        active = np.flatnonzero(codes > 0)
        order = active[np.lexsort((active, -codes[active]))][:n]
        out = []
        t = self.run.table
        for f in order.tolist():
            kw = self.run.ann.keywords.get(f)
            top = t.lists["top_rows"](f) if "top_rows" in t.lists else np.empty(0, np.int64)
            hit = TextHit(
                f, float(codes[f]), float(t.num["density"][f]), kw.words if kw else [],
                self.run.short_text(int(top[0])) if len(top) else "",
            )  # fmt: skip
            out.append(asdict(hit) | {"label": self.run.label(f)})
        return out

    def _lm_parts(self) -> tuple[Any, Any, Any]:
        """(LM, hookpoint, SAE) of an LM run, loaded once."""
        if self._lm is None:
            from saescope.lm import hooks
            from saescope.lm.metrics import check_hookpoint, sae_hookpoint
            from saescope.lm.model import load_lm

            meta = self.run.meta
            lm = load_lm(str(meta["model"]), self.device, str(meta.get("model_dtype", "float32")))
            hp = hooks.resolve(lm.model, str(meta["hookpoint"]))
            sae = self._cache_sae()
            check_hookpoint(sae_hookpoint(sae), meta, str(self.run.sae_dir), lm.model)
            self._lm = (lm, hp, sae)
        return self._lm

    def _token_hits(self, text: str, n: int) -> TokenHits:
        """The same answer as `saescope.inspect.token_text_features` (the same encoding,
        `encode_text_tokens`), with the models kept loaded between requests."""
        from saescope.inspect import encode_text_tokens, strongest

        lm, hp, sae = self._lm_parts()
        strings, codes, truncated = encode_text_tokens(lm, hp, sae, self.run.meta, text)
        top, order = strongest(codes, n)
        feats = []
        t = self.run.table
        lens = t.lists.get("promoted_tokens")
        for f in order:
            kw = self.run.ann.keywords.get(f)
            acts = [round(float(a), 6) for a in codes[:, f]]
            promotes = [str(s) for s in lens(f)[:5]] if lens is not None else []
            feats.append(
                TokenFeature(f, float(top[f]), float(t.num["density"][f]),
                             kw.words if kw else [], promotes, acts)
            )  # fmt: skip
        return TokenHits(text, list(strings), feats, truncated)

    # --- search steering --------------------------------------------------------------

    def search(
        self,
        query: str,
        edits: Sequence[FeatureEdit],
        k: int,
        strength: float | None,
        unit: str,
    ) -> dict[str, Any]:
        from saescope.search.query import SearchSession
        from saescope.search.select import EditRequest

        self._need("search")
        requests = [EditRequest(e.op, e.target, e.strength) for e in edits]
        with _holding(self._locks["search"], "search index"):
            if self._search is None:
                self._search = SearchSession(self.run.path)
            result = self._search.search(query, edits=requests, k=k, strength=strength, unit=unit)
            default = self._search.default_strength
        return asdict(result) | {"default_strength": default}

    # --- generation steering -------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        edits: Sequence[FeatureEdit],
        max_new_tokens: int | None,
        positions: str,
        unit: str,
    ) -> dict[str, Any]:
        from saescope.edits import Edit, resolve
        from saescope.steer.generate import generate, prompt_ids
        from saescope.steer.hook import Positions, Steerer

        self._need("generate")
        limits = self.run.limits
        if max_new_tokens is None:
            max_new_tokens = min(DEFAULT_NEW_TOKENS, limits.max_new_tokens)
        if not 1 <= max_new_tokens <= limits.max_new_tokens:
            raise SaescopeError(
                f"max_new_tokens must be 1..{limits.max_new_tokens} (this server's limit)"
            )
        where = Positions.parse(positions)
        if unit not in ("typical", "absolute"):
            raise SaescopeError(f"unknown unit {unit!r}; choose typical or absolute")
        if not prompt.strip():
            raise SaescopeError("the prompt is empty")
        chosen, rid = [], self.run.id
        for e in edits:
            if e.op not in GEN_OPS:
                raise SaescopeError(f"unknown edit {e.op!r}; choose {', '.join(GEN_OPS)}")
            f = e.target if isinstance(e.target, int) else self.run.names.choose(e.target, rid)
            strength = DEFAULT_GEN_STRENGTH if e.strength is None else float(e.strength)
            chosen.append(Edit(f, GEN_OPS[e.op], strength if e.op != "ablate" else 0.0, unit))
        typical = self.run.table.num["max_act"]  # the unit of `typical` strengths
        absolute = resolve(chosen, typical, self.run.table.d_sae)
        with _holding(self._locks["lm"], "language model"):
            lm, hp, sae = self._lm_parts()
            ids = prompt_ids(lm, [prompt], max_new_tokens)
            # each of the two generations may take half the request's time
            lm.model.generation_config.max_time = limits.generation_seconds / 2
            t0 = time.perf_counter()
            plain = generate(lm, ids, max_new_tokens)
            steerer = Steerer(lm.model, hp, sae, absolute, where) if absolute else None
            steered = generate(lm, ids, max_new_tokens, steerer)
            seconds = time.perf_counter() - t0
        eos = lm.tokenizer.eos_token_id
        new = [len(g.continuation(0)) for g in (plain, steered)]
        ended = [
            n == max_new_tokens or (n > 0 and int(g.continuation(0)[-1]) == eos)
            for n, g in zip(new, (plain, steered), strict=True)
        ]
        return {
            "prompt": prompt,
            "prompt_tokens": len(ids[0]),
            "unsteered": plain.texts[0],
            "steered": steered.texts[0],
            "new_tokens": new,
            "stopped_by_time": [not x for x in ended],
            "max_new_tokens": max_new_tokens,
            "seconds": round(seconds, 3),
            "positions": positions,
            "edits": [
                {
                    "feature": a.feature,
                    "label": self.run.label(a.feature),
                    "op": e.op,
                    "strength": c.value,
                    "unit": unit,
                    "absolute": a.value,
                }
                for e, c, a in zip(edits, chosen, absolute, strict=True)
            ],  # fmt: skip
        }
