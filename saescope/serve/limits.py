"""What one request may ask of the server: sizes, counts, tokens and seconds.

Every limit is checked before any work is done; a request over one is answered with
a 4xx and a message naming the limit (413 for a body that is too large, 422 for a
field out of range). The generation limits come from `saescope serve` options.
"""

from __future__ import annotations

from dataclasses import dataclass

from saescope.options.serve import DEFAULT_GENERATION_SECONDS, DEFAULT_MAX_NEW_TOKENS

MAX_BODY_BYTES = 64 * 1024  # a request body (JSON) larger than this is refused with 413
MAX_TEXT_CHARS = 2000  # a text to inspect, a search query, a prompt
MAX_QUERY_CHARS = 200  # the browser's search box
MAX_PAGE = 200  # features per page of the browser
MAX_EDITS = 8  # features edited by one search or generation request
MAX_K = 50  # search results per request
MAX_INSPECT_FEATURES = 50  # features listed for an inspected text
MAX_COMPARE_PAGE = 200  # matched pairs per page of the compare view
LOCK_SECONDS = 60.0  # a request waits this long for a model another request is using


@dataclass(frozen=True)
class Limits:
    """The generation limits of a server (the others are the constants above)."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    generation_seconds: float = DEFAULT_GENERATION_SECONDS
    max_text_chars: int = MAX_TEXT_CHARS
    max_body_bytes: int = MAX_BODY_BYTES
