"""The one exception type for user mistakes.

A `SaescopeError` names the input that is wrong and what to do about it; the CLI
prints it as one line and exits with status 2, with no traceback.
"""


class SaescopeError(Exception):
    """A problem with the user's input, files or environment (not a bug)."""


class DamagedFile(SaescopeError, ValueError):
    """A file saescope wrote that cannot be read any more (cut short or altered). Also a
    ValueError, as the parser's own error was, for callers that treat unreadable as
    absent."""


class SaescopeWarning(UserWarning):
    """Something the user should know that does not stop the work (an approximation made
    on loading, say); the CLI prints it as one line, without the source line."""


def first_rows(rows: list[int], shown: int = 5) -> str:
    """ "3, 8, 9, 12, 40 and 7 more": the first `shown` of `rows`, for messages."""
    more = f" and {len(rows) - shown} more" if len(rows) > shown else ""
    return ", ".join(map(str, rows[:shown])) + more


def describe(exc: BaseException) -> str:
    """`Type: message` of a wrapped exception, in full, on one line.

    For a `SaescopeError` raised `from exc`: the user sees what really failed, and
    `--debug` (or SAESCOPE_DEBUG=1) shows the traceback of both.
    """
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
