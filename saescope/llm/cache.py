"""A response cache on disk in front of any client, so a re-run or a crash costs nothing twice.

In: a `Client` and a folder (a run's `llm/cache/`). Out: the same `Client`
interface; a request seen before (same model, messages and parameters: the
sha256 of `LLMRequest.key(model)`) is answered from disk with `cached=True`
and sends nothing. Only successful responses are stored, one JSON file each,
written to a temporary name and renamed, so a kill never leaves half an entry;
an unreadable entry counts as a miss. One file per request,
`<directory>/<sha256>.json`, holding the request's text and the answer, never an
API key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

from saescope.llm.types import Client, LLMRequest, LLMResponse


class CachedClient:
    """`inner` with a disk cache; `hits` and `misses` count this object's lookups."""

    def __init__(self, inner: Client, directory: str | Path) -> None:
        self.inner = inner
        self.model = inner.model
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedClient({self.inner!r}, {str(self.directory)!r})"

    def path(self, request: LLMRequest) -> Path:
        digest = hashlib.sha256(request.key(self.model).encode("utf-8")).hexdigest()
        return self.directory / f"{digest}.json"

    def lookup(self, request: LLMRequest) -> LLMResponse | None:
        """The stored response to `request` (marked cached), or None."""
        path = self.path(request)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("key") != request.key(self.model):  # a sha256 collision: never seen
                return None
            return LLMResponse(**(data["response"] | {"cached": True}))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    async def complete(self, request: LLMRequest) -> LLMResponse:
        hit = self.lookup(request)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        response = await self.inner.complete(request)  # an LLMError propagates: nothing stored
        self._store(request, response)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _store(self, request: LLMRequest, response: LLMResponse) -> None:
        path = self.path(request)
        path.parent.mkdir(parents=True, exist_ok=True)
        answer = dataclasses.asdict(response) | {"cached": False}
        record = {"key": request.key(self.model), "response": answer}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
