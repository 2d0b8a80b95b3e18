"""The one exception type for user mistakes.

A `SaescopeError` names the input that is wrong and what to do about it; the CLI
prints it as one line and exits with status 2, with no traceback.
"""


class SaescopeError(Exception):
    """A problem with the user's input, files or environment (not a bug)."""
