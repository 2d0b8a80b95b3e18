"""Compare two SAEs: of one run (the SAEs of a sweep) or of two runs, matched by decoder cosine.

In: the served runs. Every SAE folder of a run is comparable (`RunPaths.sae_folders`:
sae/ and the sae-*/ of a sweep, plus the latent cache's SAE wherever it lives); it is
named `RUN:FOLDER`. Out: `Catalog.compare(a, b, ...)`: for a page of a's features, the
feature of b whose decoder row has the largest cosine with it, whether the match is
mutual, and both features' names and densities where the run's tables describe that SAE
(the latent cache's SAE; the others have no names).

A pair's matching is computed on first request and kept (`saescope.serve.decoder.match`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saescope.errors import SaescopeError
from saescope.serve.decoder import Decoder, Match, match
from saescope.serve.errors import NotFound
from saescope.serve.served import ServedRun
from saescope.serve.tables import finite

COMPARE_SORTS = ("cosine", "id")


@dataclass(frozen=True)
class SaeRef:
    key: str  # RUN:FOLDER
    run: ServedRun
    folder: Path
    described: bool  # the run's latent cache (and so its names) is of this SAE

    def about(self, decoder: Decoder) -> dict[str, Any]:
        return {
            "key": self.key,
            "run": self.run.id,
            "folder": self.folder.name,
            "d_sae": decoder.d_sae,
            "d_in": decoder.d_in,
            "k": decoder.config.get("k"),
            "architecture": decoder.config.get("architecture"),
            "described": self.described,
        }


class Catalog:
    """Every SAE of the served runs, and the matchings asked for so far."""

    def __init__(self, runs: dict[str, ServedRun]) -> None:
        self.refs: dict[str, SaeRef] = {}
        for run in runs.values():
            cache_sae = run.sae_dir.resolve()
            folders = [run.sae_dir, *run.paths.sae_folders()]
            for folder in folders:
                described = folder.resolve() == cache_sae
                key = f"{run.id}:{folder.name}"
                if key not in self.refs:
                    self.refs[key] = SaeRef(key, run, folder, described)
        self._decoders: dict[str, Decoder] = {}
        self._matches: dict[tuple[str, str], Match] = {}
        self._lock = threading.Lock()

    def list(self) -> list[dict[str, Any]]:
        return [self.about(k) for k in self.refs]

    def ref(self, key: str) -> SaeRef:
        if key not in self.refs:
            raise NotFound(f"no SAE {key!r}; the SAEs served are {', '.join(self.refs)}")
        return self.refs[key]

    def decoder(self, key: str) -> Decoder:
        ref = self.ref(key)
        if ref.described:
            return ref.run.decoder
        with self._lock:
            if key not in self._decoders:
                self._decoders[key] = Decoder.load(ref.folder)
            return self._decoders[key]

    def about(self, key: str) -> dict[str, Any]:
        return self.ref(key).about(self.decoder(key))

    def matching(self, a: str, b: str) -> Match:
        da, db = self.decoder(a), self.decoder(b)
        with self._lock:
            if (a, b) not in self._matches:
                self._matches[(a, b)] = match(da, db)
            return self._matches[(a, b)]

    def compare(
        self, a: str, b: str, sort: str = "cosine", descending: bool = True,
        offset: int = 0, limit: int = 50, alive_only: bool = True,
    ) -> dict[str, Any]:  # fmt: skip
        """A page of a's features with their best match in b (see the module docstring)."""
        if sort not in COMPARE_SORTS:
            raise SaescopeError(f"unknown sort {sort!r}; choose {', '.join(COMPARE_SORTS)}")
        ra, rb = self.ref(a), self.ref(b)
        m = self.matching(a, b)
        ids = np.arange(len(m.best))
        if alive_only and ra.described:
            ids = ids[~ra.run.table.dead]
        if sort == "cosine":
            key = -m.cosine[ids] if descending else m.cosine[ids]
            ids = ids[np.lexsort((ids, key))]
        elif descending:
            ids = ids[::-1]
        items = []
        for f in ids[offset : offset + limit].tolist():
            g = int(m.best[f])
            items.append(
                {
                    "a": f,
                    "b": g,
                    "cosine": round(float(m.cosine[f]), 6),
                    "mutual": bool(m.mutual[f]),
                    "a_label": ra.run.label(f) if ra.described else "",
                    "b_label": rb.run.label(g) if rb.described else "",
                    "a_density": _density(ra, f),
                    "b_density": _density(rb, g),
                }
            )
        cos = m.cosine[ids] if len(ids) else np.zeros(1, np.float32)
        return {
            "a": self.about(a),
            "b": self.about(b),
            "total": len(ids),
            "offset": offset,
            "summary": {
                "mean_cosine": round(float(cos.mean()), 6),
                "above_0.7": round(float((cos > 0.7).mean()), 6),
                "mutual": round(float(m.mutual[ids].mean()) if len(ids) else 0.0, 6),
            },
            "items": items,
        }


def _density(ref: SaeRef, f: int) -> float | None:
    return finite(ref.run.table.num["density"][f]) if ref.described else None
