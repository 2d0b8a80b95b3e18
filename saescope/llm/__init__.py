"""LLM clients: one interface for any OpenAI-compatible server and for a model in this process.

  types.py          LLMRequest, LLMResponse, Usage, LLMError (kinds), BudgetExceeded, Client, unwrap
  openai_client.py  OpenAIClient: any OpenAI-compatible server; concurrency, timeouts, retries
  retry.py          RetryPolicy (jittered exponential backoff), Retry-After parsing
  local.py          LocalClient: a transformers chat model in this process; token_losses
  cache.py          CachedClient: responses on disk, keyed by (model, messages, parameters)
  budget.py         Budget: usage tally, --max-requests/--max-tokens, the --dry-run estimate
  factory.py        make_client(LLMOptions, cache_dir): the client a stage's options describe

Explainers and scorers see only `Client`. Names other than the types are
imported on first use (the clients load `openai` or torch).
"""

from typing import TYPE_CHECKING

from saescope._lazy import lazy_exports
from saescope.llm.types import (
    FAILURE_KINDS,
    BudgetExceeded,
    Client,
    LLMError,
    LLMRequest,
    LLMResponse,
    Usage,
    unwrap,
)
from saescope.options.llm import LLM_RUNTIME_FIELDS, LLMOptions, llm_options

if TYPE_CHECKING:
    from saescope.llm.budget import Budget, Estimate, prompt_tokens
    from saescope.llm.cache import CachedClient
    from saescope.llm.factory import make_client
    from saescope.llm.local import LocalClient
    from saescope.llm.openai_client import OpenAIClient
    from saescope.llm.retry import RetryPolicy

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Budget": ("saescope.llm.budget", "Budget"),
        "CachedClient": ("saescope.llm.cache", "CachedClient"),
        "Estimate": ("saescope.llm.budget", "Estimate"),
        "LocalClient": ("saescope.llm.local", "LocalClient"),
        "OpenAIClient": ("saescope.llm.openai_client", "OpenAIClient"),
        "RetryPolicy": ("saescope.llm.retry", "RetryPolicy"),
        "make_client": ("saescope.llm.factory", "make_client"),
        "prompt_tokens": ("saescope.llm.budget", "prompt_tokens"),
    },
)

__all__ = [
    "FAILURE_KINDS",
    "LLM_RUNTIME_FIELDS",
    "Budget",
    "BudgetExceeded",
    "CachedClient",
    "Client",
    "Estimate",
    "LLMError",
    "LLMOptions",
    "LLMRequest",
    "LLMResponse",
    "LocalClient",
    "OpenAIClient",
    "RetryPolicy",
    "Usage",
    "llm_options",
    "make_client",
    "prompt_tokens",
    "unwrap",
]
