"""The two answers of the dashboard that are not a 400: something not there, or busy.

Both are `SaescopeError`s (one line naming the input and what to do), so the stages'
own errors and these reach the client the same way; `saescope.serve.app` answers
`NotFound` with 404, `Busy` with 503 and any other `SaescopeError` with 400.
"""

from __future__ import annotations

from saescope.errors import SaescopeError


class NotFound(SaescopeError):
    """A run, feature, SAE, page or file that is not served."""


class Busy(SaescopeError):
    """A model is serving another request; the client may try again."""
