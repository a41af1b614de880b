"""The one error type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class PosenasError(Exception):
    """A user-facing error: bad input, bad config, a failed check.

    The message is a single line that names the file, record and field concerned and
    what was expected, so the CLI can print it as is (no traceback).
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))
