"""Options of every stage that talks to an LLM (`saescope explain`, the LLM scorers).

`LLMOptions` is a frozen dataclass the stage configs inherit from
(`class ExplainConfig(LLMOptions): ...`), so its fields become flags of those
stages (`--llm`, `--llm-model`, `--max-requests`, `--dry-run`, ...): the CLI
builder makes one flag per field and does not descend into nested dataclasses.
`saescope.llm.make_client(options, cache_dir)` builds the client they describe.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from saescope.config import option

LOCAL = "local"  # the in-process transformers client

# fields that change how requests are sent or limited, not what is asked or answered:
# a stage compares its saved config to the new one ignoring these
LLM_RUNTIME_FIELDS = (
    "api_key_env",
    "concurrency",
    "timeout",
    "retries",
    "max_requests",
    "max_tokens",
    "dry_run",
    "cache",
)


@dataclass(frozen=True)
class LLMOptions:
    """Which LLM answers, and how requests to it are sent, retried, cached and limited."""

    llm: str = option(
        LOCAL,
        "'local' (a transformers model in this process) or the base URL of an OpenAI-compatible "
        "server, e.g. http://127.0.0.1:8080/v1 (vLLM, llama.cpp, Ollama, OpenRouter, "
        "transformers serve)",
    )
    llm_model: str | None = option(
        None,
        "model name: for 'local' a Hugging Face causal LM, folder or .gguf (default: the packaged "
        "SmolLM2-135M-Instruct); for a server the name it serves (required)",
    )
    api_key_env: str = option(
        "OPENAI_API_KEY",
        "environment variable holding the server's API key (the key is never written anywhere; "
        "a server on 127.0.0.1/localhost needs none)",
    )
    concurrency: int = option(4, "requests in flight at once")
    timeout: float = option(60.0, "seconds to wait for one answer before retrying")
    retries: int = option(
        5,
        "retries of a request after a timeout, connection error, 429 or 5xx (none after other 4xx)",
    )
    temperature: float = option(0.0, "sampling temperature (0: greedy, reproducible)")
    max_requests: int | None = option(
        None, "budget: stop cleanly after this many requests sent (cache hits are free)"
    )
    max_tokens: int | None = option(
        None, "budget: stop cleanly after this many tokens, prompt plus completion"
    )
    dry_run: bool = option(
        False, "print the number of requests and the estimated tokens, then stop without sending"
    )
    cache: bool = option(True, "answer repeated requests from the run's LLM response cache")


def llm_options(config: Any) -> LLMOptions:
    """The `LLMOptions` part of a stage config that inherits from it."""
    return LLMOptions(**{f.name: getattr(config, f.name) for f in fields(LLMOptions)})
