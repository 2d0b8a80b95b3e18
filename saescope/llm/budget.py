"""Cost control: count what a stage spends and stop it cleanly when its budget is spent.

In: a `Client` (usually a `CachedClient`) and the stage's `--max-requests` /
`--max-tokens`. Out: the same `Client` interface plus `usage` (requests,
tokens in and out, cache hits, failures by kind, requests held back). A request
that would start once the budget is spent raises `BudgetExceeded` before anything
is sent (held back, not failed); a request the cache can answer costs nothing and
is always allowed.

What counts: every request handed to the server (answered or failed) counts
against `max_requests`; prompt plus completion tokens, as the server reports
them (or about a token per 4 characters when it reports none), count against
`max_tokens`. A request starts while the tokens spent are under the budget;
with others in flight it must also fit beside what they may spend (their
prompt estimate plus `max_tokens`), so the budget is overshot by at most one
request's tokens.

`estimate` is the `--dry-run`: how many requests would be sent (cache hits
left out) and about how many tokens they would cost, before sending any.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from saescope.llm.types import BudgetExceeded, Client, LLMError, LLMRequest, LLMResponse, Usage

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text when no tokenizer is given
MESSAGE_OVERHEAD = 4  # role markers and separators a chat template adds per message


class Estimate(NamedTuple):
    """What a list of requests would cost: requests to send and tokens in and out (at most)."""

    requests: int
    prompt_tokens: int
    completion_tokens: int


def prompt_tokens(request: LLMRequest, tokenizer: Any = None) -> int:
    """Tokens of `request`'s prompt: counted by `tokenizer` (with its chat template) or chars / 4."""
    if tokenizer is None:
        chars = sum(len(text) for _, text in request.messages)
        return math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD * len(request.messages)
    messages = [{"role": role, "content": text} for role, text in request.messages]
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return len(enc["input_ids"])
    n = sum(len(tokenizer.encode(m["content"], add_special_tokens=False)) for m in messages)
    return n + MESSAGE_OVERHEAD * len(messages)


class Budget:
    """`inner` with request and token budgets (None: unlimited) and a `Usage` tally."""

    def __init__(
        self, inner: Client, max_requests: int | None = None, max_tokens: int | None = None
    ) -> None:
        self.inner = inner
        self.model = inner.model
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.usage = Usage()
        self.sent = 0  # requests handed to `inner` that the cache did not answer
        self.tokens = 0  # tokens those requests spent (reported, else estimated)
        self._flying = 0
        self._flying_tokens = 0

    def __repr__(self) -> str:
        return f"Budget({self.inner!r}, max_requests={self.max_requests}, max_tokens={self.max_tokens})"

    @property
    def spent(self) -> bool:
        """True once no further request (other than a cache hit) would be allowed."""
        return self._refusal(0) is not None

    def estimate(self, requests: list[LLMRequest], tokenizer: Any = None) -> Estimate:
        """Requests that would be sent (cache hits left out) and their tokens, prompt and completion."""
        todo = [r for r in requests if self._lookup(r) is None]
        return Estimate(
            len(todo),
            sum(prompt_tokens(r, tokenizer) for r in todo),
            sum(r.max_tokens for r in todo),
        )

    async def complete(self, request: LLMRequest) -> LLMResponse:
        hit = self._lookup(request)
        if hit is not None:
            self.usage.add(hit)
            return hit
        reserve = prompt_tokens(request) + request.max_tokens
        why = self._refusal(reserve)
        if why is not None:
            self.usage.held_back += 1  # not sent: no failure of the server
            raise BudgetExceeded(why)
        self._flying += 1
        self._flying_tokens += reserve
        try:
            response = await self.inner.complete(request)
        except LLMError as exc:
            if not isinstance(exc, BudgetExceeded):
                self.sent += 1
            self.usage.fail(exc.kind)
            raise
        finally:
            self._flying -= 1
            self._flying_tokens -= reserve
        self.usage.add(response)
        if not response.cached:
            self.sent += 1
            self.tokens += _tokens_spent(request, response)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _refusal(self, reserve: int) -> str | None:
        """Why a request reserving `reserve` tokens may not start now; None when it may."""
        if self.max_requests is not None and self.sent + self._flying >= self.max_requests:
            return f"the request budget ({self.max_requests} requests, --max-requests) is spent"
        if self.max_tokens is not None:
            committed = self.tokens + self._flying_tokens
            if committed >= self.max_tokens or (
                self._flying and committed + reserve > self.max_tokens
            ):
                return f"the token budget ({self.max_tokens} tokens, --max-tokens) is spent"
        return None

    def _lookup(self, request: LLMRequest) -> LLMResponse | None:
        lookup = getattr(self.inner, "lookup", None)
        return lookup(request) if callable(lookup) else None


def _tokens_spent(request: LLMRequest, response: LLMResponse) -> int:
    reported = response.prompt_tokens + response.completion_tokens
    if reported > 0:
        return reported
    return prompt_tokens(request) + math.ceil(len(response.text) / CHARS_PER_TOKEN)
