"""A client for any OpenAI-compatible chat server (vLLM, llama.cpp, Ollama, OpenRouter, `transformers serve`).

In: a base URL, a model name and the NAME of the environment variable holding
the API key (the key itself is read from the environment, handed to the
`openai` package, and never written or logged, and taken out of any error
message a server echoes it in; a server on loopback gets a placeholder when the
variable is unset). Out: `LLMResponse`s, or an `LLMError`
whose kind says why a request failed for good.

At most `concurrency` requests are in flight per client. Timeouts, connection
errors, 429, 5xx and unreadable answers (a body that is not JSON, no choices)
are retried `retries` times with jittered exponential backoff, honouring
`Retry-After`; other 4xx errors are not retried (they would fail again). The
`openai` package's own retries are off, so every attempt is ours and counted.
The answer body is parsed here rather than by the `openai` models, so a server
that leaves out fields (usage, logprobs) still gives a response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
from typing import Any
from urllib.parse import urlsplit

import openai

from saescope.errors import SaescopeError
from saescope.llm.retry import RetryPolicy, parse_retry_after
from saescope.llm.types import LLMError, LLMRequest, LLMResponse

log = logging.getLogger("saescope.llm")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
NO_KEY = "no-key"  # what a loopback server gets when no key is set; such servers accept any


class _Attempt(Exception):
    """One failed attempt: its failure kind and the wait the server asked for."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


def is_loopback(base_url: str) -> bool:
    host = urlsplit(base_url).hostname or ""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


class OpenAIClient:
    """Chat completions from an OpenAI-compatible server, with bounded concurrency and retries.

    `attempts` counts HTTP requests sent (retries included), `retried` the retries.
    Use one client per event loop; `aclose()` it when done.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retries: int = 5,
        concurrency: int = 8,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_retry_after: float = 60.0,
        seed: int | None = None,
        require_key: bool = True,
    ) -> None:
        if concurrency < 1:
            raise SaescopeError(f"concurrency must be at least 1, got {concurrency}")
        if retries < 0:
            raise SaescopeError(f"retries must be 0 or more, got {retries}")
        key = os.environ.get(api_key_env, "")
        if not key:
            if require_key and not is_loopback(base_url):
                raise SaescopeError(
                    f"the LLM server {base_url} needs an API key: set the environment variable "
                    f"{api_key_env} (or name another one with --api-key-env)"
                )
            key = NO_KEY
        self.base_url = base_url
        self.model = model
        self.policy = RetryPolicy(retries, backoff, max_backoff, max_retry_after)
        self.seed = seed
        self.attempts = 0
        self.retried = 0
        self._sem = asyncio.Semaphore(concurrency)
        self._rng = random.Random()
        self._secret = key if key != NO_KEY else ""
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=key, timeout=timeout, max_retries=0
        )

    def __repr__(self) -> str:  # no key in here, ever
        return f"OpenAIClient({self.base_url!r}, {self.model!r})"

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """The server's answer to `request`, after up to `retries` retries; LLMError when none came."""
        last: _Attempt | None = None
        for attempt in range(self.policy.retries + 1):
            if last is not None:
                wait = self.policy.delay(attempt - 1, last.retry_after, self._rng)
                log.info(
                    "%s: %s; retry %d in %.1f s", self.base_url, self._redact(last), attempt, wait
                )
                self.retried += 1
                await asyncio.sleep(wait)
            try:
                async with self._sem:
                    self.attempts += 1
                    return await self._once(request)
            except _Attempt as exc:
                last = exc
            except LLMError as exc:  # a 4xx that will not change: no retry
                raise LLMError(exc.kind, self._redact(exc)) from None
        assert last is not None
        n = self.policy.retries + 1
        why = self._redact(last)
        raise LLMError(last.kind, f"{self.base_url}: {why} ({n} attempt{'s' * (n > 1)})")

    async def aclose(self) -> None:
        await self._client.close()

    def _redact(self, exc: Exception) -> str:
        """The message of `exc` without the API key (a server may echo what it was sent)."""
        text = str(exc)
        return text.replace(self._secret, "***") if self._secret else text

    async def _once(self, request: LLMRequest) -> LLMResponse:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": role, "content": text} for role, text in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if request.top_logprobs > 0:
            kwargs.update(logprobs=True, top_logprobs=request.top_logprobs)
        if self.seed is not None:
            kwargs["seed"] = self.seed
        try:
            raw = await self._client.chat.completions.with_raw_response.create(**kwargs)
        except openai.APITimeoutError as exc:
            raise _Attempt("timeout", f"no answer within the timeout ({exc})") from exc
        except openai.APIConnectionError as exc:
            raise _Attempt("connection", f"cannot reach the server ({exc})") from exc
        except openai.APIStatusError as exc:
            raise _status_failure(exc) from exc
        return parse_completion(raw.text, self.model)


def _status_failure(exc: openai.APIStatusError) -> Exception:
    """The attempt failure (or, for a 4xx that will not change, the final LLMError) of an HTTP error."""
    status = exc.status_code
    headers = exc.response.headers
    wait = parse_retry_after(headers.get("retry-after"))
    ms = parse_retry_after(headers.get("retry-after-ms"))
    if wait is None and ms is not None:
        wait = ms / 1000
    detail = _brief(exc.response.text)
    if status == 429:
        return _Attempt("rate_limit", f"rate limited (429): {detail}", wait)
    if status >= 500:
        return _Attempt("server", f"server error ({status}): {detail}", wait)
    if status == 408:
        return _Attempt("timeout", f"the server timed out the request (408): {detail}", wait)
    return LLMError("client", f"the server refused the request ({status}): {detail}")


def parse_completion(body_text: str, model: str) -> LLMResponse:
    """An `LLMResponse` from a chat-completion body; `_Attempt("format"|"server")` when unusable."""
    try:
        body = json.loads(body_text)
    except ValueError as exc:
        raise _Attempt("format", f"the answer is not JSON: {_brief(body_text)}") from exc
    if not isinstance(body, dict):
        raise _Attempt("format", f"the answer is not a JSON object: {_brief(body_text)}")
    choices = body.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        if body.get("error"):  # some gateways send errors with status 200
            raise _Attempt("server", f"the server answered with an error: {_brief(body_text)}")
        raise _Attempt("format", f"the answer has no choices: {_brief(body_text)}")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise _Attempt("format", f"the answer's first choice has no message: {_brief(body_text)}")
    text = message.get("content") or ""
    if not isinstance(text, str):
        raise _Attempt("format", f"the message content is not text: {_brief(body_text)}")
    usage = body["usage"] if isinstance(body.get("usage"), dict) else {}
    prompt_tokens = _int(usage.get("prompt_tokens"))
    completion_tokens = _int(usage.get("completion_tokens"))
    return LLMResponse(
        text=text,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        model=body["model"] if isinstance(body.get("model"), str) else model,
        top_logprobs=_top_logprobs(choice.get("logprobs")),
        finish_reason=str(choice.get("finish_reason") or ""),
    )


def _top_logprobs(logprobs: Any) -> list[dict[str, float]] | None:
    """`logprobs.content[i].top_logprobs` as one {token: logprob} per generated token; None if absent."""
    if not isinstance(logprobs, dict) or not isinstance(logprobs.get("content"), list):
        return None
    steps = []
    for item in logprobs["content"]:
        if not isinstance(item, dict):
            return None
        alts = item.get("top_logprobs") or []
        step: dict[str, float] = {}
        for alt in alts:
            if isinstance(alt, dict) and isinstance(alt.get("token"), str):
                lp = float(alt.get("logprob", -math.inf))
                step[alt["token"]] = max(lp, step.get(alt["token"], -math.inf))
        if not step and isinstance(item.get("token"), str):  # only the chosen token was given
            step[item["token"]] = float(item.get("logprob", -math.inf))
        steps.append(step)
    return steps or None


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _brief(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[:n] + "...")
