"""One exception type for every problem a user can fix (bad input, missing weights, bad answers).

The CLI prints it as a single line and exits with status 2; anything else is a bug and keeps its traceback.
"""


class ZsharmError(Exception):
    """A clear, one-line problem with the user's input or environment."""
