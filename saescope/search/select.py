"""Edits of a search query as a user asks for them: an operation, a feature, a strength.

In: specs such as `--boost telescope`, `--boost 812:1.5`, `--suppress 1234`, `--zero 17`
(`EditRequest`), and the run's feature names (`FeatureNames`: keywords, and LLM
explanations when they exist). Out: `saescope.edits.Edit`s on feature ids:

    boost S      add    +S     (the feature added to the query)
    suppress S   add    -S     (the feature subtracted: the query pushed away from it)
    clamp S      clamp  S      (the query's code of the feature set to S)
    zero         zero          (the feature's own part of the query removed, nothing more)

S is in units of the feature's largest activation on the run (`unit="typical"`), or
absolute. A feature named by a word is one whose name holds it (a keyword that is the word
or holds it, or an explanation holding it). Where the word can be embedded as the corpus
was (search on a sentence-embedding run), it is the one of those that the word's own
embedding drives most (the SAE's pre-activation): keyword names are noisy, and "japan"
may rank second in a feature about an autopsy. Otherwise the best name match: an exact
keyword first, then a keyword holding the word, then an explanation holding it; among
equals the one where it ranks higher, then the denser feature.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from saescope.edits import Edit
from saescope.errors import SaescopeError
from saescope.report.data import Annotations

OPS = ("boost", "suppress", "clamp", "zero")


@dataclass(frozen=True)
class EditRequest:
    """One edit as asked for: `target` is a feature id or a word of its name."""

    op: str  # boost | suppress | clamp | zero
    target: int | str
    strength: float | None = None  # None: the session's default strength (unused by zero)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise SaescopeError(f"unknown search edit {self.op!r}; choose {', '.join(OPS)}")
        if self.strength is not None:
            if not math.isfinite(self.strength):
                raise SaescopeError(f"the strength of --{self.op} {self.target} is not finite")
            if self.op in ("boost", "suppress") and self.strength < 0:
                raise SaescopeError(
                    f"--{self.op} {self.target}:{self.strength:g}: give a positive strength "
                    "(--suppress subtracts it, --boost adds it)"
                )


def boost(target: int | str, strength: float | None = None) -> EditRequest:
    return EditRequest("boost", target, strength)


def suppress(target: int | str, strength: float | None = None) -> EditRequest:
    return EditRequest("suppress", target, strength)


def parse_spec(op: str, spec: str) -> EditRequest:
    """`FEATURE[:STRENGTH]` (FEATURE: an id or a word of a feature's name) -> EditRequest."""
    text = spec.strip()
    target, strength = text, None
    if op == "zero" and re.fullmatch(r"[^:]+:\s*[-+.\deE]+\s*", text):
        raise SaescopeError(
            f"--zero {spec!r}: zero takes no strength (it removes the feature); "
            "write --zero FEATURE, or --clamp FEATURE:VALUE to set it"
        )
    if op != "zero" and ":" in text:
        target, _, number = text.rpartition(":")
        try:
            strength = float(number)
        except ValueError:
            raise SaescopeError(
                f"--{op} {spec!r}: the strength {number!r} is not a number "
                "(write FEATURE:STRENGTH, e.g. 812:0.5)"
            ) from None
    target = target.strip()
    if not target:
        raise SaescopeError(f"--{op} {spec!r} names no feature")
    return EditRequest(op, int(target) if re.fullmatch(r"-?\d+", target) else target, strength)


def to_edit(request: EditRequest, feature: int, default: float, unit: str) -> Edit:
    """The `Edit` of a request on `feature` (strength `default` when it gives none)."""
    s = default if request.strength is None else request.strength
    if request.op == "boost":
        return Edit(feature, "add", s, unit)
    if request.op == "suppress":
        return Edit(feature, "add", -s, unit)
    if request.op == "clamp":
        return Edit(feature, "clamp", s, unit)
    return Edit(feature, "zero", 0.0, unit)


class FeatureNames:
    """Feature names of a run (keywords; explanations when there are), searchable by word."""

    def __init__(self, ann: Annotations, density: Sequence[float] | None = None) -> None:
        self.keywords = {f: [w.lower() for w in k.words] for f, k in ann.keywords.items()}
        self.explanations = {f: e.text.lower() for f, e in ann.explanations.items()}
        self._words = {f: list(k.words) for f, k in ann.keywords.items()}
        self._explained = {f: e.text for f, e in ann.explanations.items()}
        self.density = density

    def __bool__(self) -> bool:
        return bool(self.keywords or self.explanations)

    def label(self, feature: int, n: int = 3) -> str:
        """A short name: the first keywords, else the explanation, else ''."""
        if feature in self._words:
            return ", ".join(self._words[feature][:n])
        return self._explained.get(feature, "")

    def find(self, term: str, drive: Callable[[str], np.ndarray] | None = None) -> list[int]:
        """Features whose name matches `term`, best first (see the module docstring):
        `drive(term)` is the (d_sae,) pre-activation of the word's own embedding."""
        word = term.strip().lower()
        pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)")
        ranked: list[tuple[tuple[float, ...], int]] = []
        for f in set(self.keywords) | set(self.explanations):
            kws = self.keywords.get(f, [])
            best: tuple[float, ...] | None = None
            for rank, kw in enumerate(kws):
                if kw == word:
                    key: tuple[float, ...] = (0, rank)
                elif pattern.search(kw):
                    key = (1, rank)
                else:
                    continue
                best = key if best is None else min(best, key)
            if best is None and pattern.search(self.explanations.get(f, "")):
                best = (2, 0)
            if best is not None:
                dens = -float(self.density[f]) if self.density is not None else 0.0
                ranked.append(((*best, dens, f), f))
        found = [f for _, f in sorted(ranked)]
        if drive is not None and found:
            h = drive(term)
            found.sort(key=lambda f: -float(h[f]))  # stable: ties keep the name order
        return found

    def choose(self, term: str, run: str, drive: Callable[[str], np.ndarray] | None = None) -> int:
        if not self:
            raise SaescopeError(
                f"{run} has no feature names to find {term!r} in; run `saescope keywords "
                f"--run {run}`, or give a feature id"
            )
        found = self.find(term, drive)
        if not found:
            raise SaescopeError(
                f"no feature name of {run} matches {term!r}; give a feature id (`saescope "
                f'inspect --run {run} --text "{term}"` lists the features a text activates)'
            )
        return found[0]
