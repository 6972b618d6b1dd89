"""The one error type the CLI turns into a one-line message (what is wrong, and how to fix it)."""


class UlmrError(Exception):
    """A user-facing error: the message names the bad thing and the fix, on one line."""


def first_line(error: BaseException | str, limit: int | None = 200) -> str:
    """The first line of an error's message (cut to `limit` characters), or the exception's type
    name when it has no message: how a library's multi-line failure enters a one-line message."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    return lines[0][:limit]
