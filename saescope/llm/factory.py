"""Build the client a stage's `LLMOptions` describe: server or local, cached, within budget.

In: `LLMOptions` (or a stage config inheriting from it) and the run's cache
folder. Out: a `Budget` (a `Client` with `usage` and `estimate`) around a
`CachedClient` (unless `cache` is off) around an `OpenAIClient` or a
`LocalClient`.
"""

from __future__ import annotations

from pathlib import Path

from saescope.errors import SaescopeError
from saescope.llm.budget import Budget
from saescope.llm.cache import CachedClient
from saescope.llm.types import Client
from saescope.options.llm import LOCAL, LLMOptions


def make_client(opts: LLMOptions, cache_dir: str | Path | None) -> Budget:
    """The client of `opts`; `cache_dir` None (or `opts.cache` False) means no response cache."""
    if opts.concurrency < 1:
        raise SaescopeError(f"--concurrency must be at least 1, got {opts.concurrency}")
    if opts.retries < 0:
        raise SaescopeError(f"--retries must be 0 or more, got {opts.retries}")
    if opts.timeout <= 0:
        raise SaescopeError(f"--timeout must be positive, got {opts.timeout}")
    for name in ("max_requests", "max_tokens"):
        value = getattr(opts, name)
        if value is not None and value < 0:
            flag = "--" + name.replace("_", "-")
            raise SaescopeError(f"{flag} must be 0 or more, got {value}")
    inner: Client
    if opts.llm == LOCAL:
        from saescope.llm.local import LocalClient

        inner = LocalClient(opts.llm_model)
    elif opts.llm.startswith(("http://", "https://")):
        if not opts.llm_model:
            raise SaescopeError(
                f"--llm {opts.llm} needs --llm-model: the name of a model the server serves "
                f"(its /models endpoint lists them)"
            )
        from saescope.llm.openai_client import OpenAIClient

        inner = OpenAIClient(
            opts.llm,
            opts.llm_model,
            api_key_env=opts.api_key_env,
            timeout=opts.timeout,
            retries=opts.retries,
            concurrency=opts.concurrency,
            require_key=not opts.dry_run,  # a dry run sends nothing: it needs no key
        )
    else:
        raise SaescopeError(
            f"--llm must be 'local' or a server's base URL (http://... or https://...), "
            f"got {opts.llm!r}"
        )
    if opts.cache and cache_dir is not None:
        inner = CachedClient(inner, cache_dir)
    return Budget(inner, opts.max_requests, opts.max_tokens)
