"""One exception type for every problem a user can fix (bad input, missing weights, bad answers).

The CLI prints it as a single line and exits with status 2; anything else is a bug and keeps its traceback.
"""


class ZsharmError(Exception):
    """A clear, one-line problem with the user's input or environment."""


def one_line(error, limit: int = 300, with_type: bool = False) -> str:
    """An exception or a text as one line for a message, at most `limit` characters: an exception's first line
    (tracebacks and advice follow it), a text's whitespace collapsed (a server's multi-line answer); `with_type`
    names the exception's type unless it is a ZsharmError (whose text says it all)."""
    if isinstance(error, BaseException):
        lines = str(error).strip().splitlines()
        text = " ".join(lines[0].split()) if lines else ""
    else:
        text = " ".join(str(error).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if isinstance(error, BaseException) and not isinstance(error, ZsharmError):
        if with_type:
            return f"{type(error).__name__}: {text}" if text else type(error).__name__
        return text or type(error).__name__
    return text
