"""The one error type the CLI turns into a one-line message (what is wrong, and how to fix it)."""


class UlmrError(Exception):
    """A user-facing error: the message names the bad thing and the fix, on one line."""
