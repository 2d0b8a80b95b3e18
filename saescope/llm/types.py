"""What every LLM client takes and gives back: one request, one response, one error.

In: an `LLMRequest` (chat messages and sampling parameters). Out: an
`LLMResponse` (the text, token counts, per-token top log-probabilities when the
server returns them). Clients (`openai_client.OpenAIClient` for any
OpenAI-compatible server, `local.LocalClient` for a transformers model in this
process) implement the `Client` protocol; `cache.CachedClient` and
`budget.Budget` wrap any of them. Explainers and scorers only see `Client`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from saescope.errors import SaescopeError

# why a request failed, as recorded in the results (`status`/`reason` of a feature)
FAILURE_KINDS = ("timeout", "connection", "rate_limit", "server", "client", "format", "budget")


@dataclass(frozen=True)
class LLMRequest:
    """One chat completion. `messages` are (role, content) pairs."""

    messages: tuple[tuple[str, str], ...]
    temperature: float = 0.0
    max_tokens: int = 256
    top_logprobs: int = 0  # > 0 asks for that many alternatives per generated token

    def key(self, model: str) -> str:
        """A stable text of (model, messages, parameters): the cache key's source."""
        d = asdict(self) | {"model": model}
        return json.dumps(d, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class LLMResponse:
    """A completion. `top_logprobs[i]` maps candidate tokens to log-probabilities at step i."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    top_logprobs: list[dict[str, float]] | None = None  # None: the server gave none
    cached: bool = False
    finish_reason: str = ""


@dataclass
class Usage:
    """Requests and tokens a stage spent (cache hits counted apart, they cost nothing)."""

    requests: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # kind -> count
    held_back: int = 0  # requests not sent because the budget was spent (not failures)

    def add(self, r: LLMResponse) -> None:
        if r.cached:
            self.cached += 1
            return
        self.requests += 1
        self.prompt_tokens += r.prompt_tokens
        self.completion_tokens += r.completion_tokens

    def fail(self, kind: str) -> None:
        self.failed += 1
        self.failures[kind] = self.failures.get(kind, 0) + 1

    def plus_saved(self, path: Path) -> dict[str, Any]:
        """This usage plus the one saved at `path` by the earlier runs of a resumed stage
        (a JSON `Usage`; missing or unreadable: nothing to add), as a dict to save."""
        out = asdict(self)
        try:
            saved = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return out
        for name in ("requests", "cached", "failed", "prompt_tokens", "completion_tokens",
                     "held_back"):  # fmt: skip
            out[name] += int(saved.get(name) or 0)
        for kind, n in (saved.get("failures") or {}).items():
            out["failures"][kind] = out["failures"].get(kind, 0) + int(n)
        return out


class LLMError(SaescopeError):
    """A request that failed for good (after the retries it deserved)."""

    def __init__(self, kind: str, message: str) -> None:
        assert kind in FAILURE_KINDS, kind
        super().__init__(message)
        self.kind = kind


class BudgetExceeded(LLMError):
    """A request refused because the stage's `--max-requests`/`--max-tokens` is spent."""

    def __init__(self, message: str) -> None:
        super().__init__("budget", message)


class Client(Protocol):
    """Anything that answers chat requests. `model` names the model in the cache key."""

    model: str

    async def complete(self, request: LLMRequest) -> LLMResponse: ...

    async def aclose(self) -> None: ...


def unwrap(client: Client) -> Client:
    """The client at the bottom of wrappers (`Budget`, `CachedClient` keep theirs in `.inner`)."""
    while hasattr(client, "inner"):
        client = client.inner
    return client
