"""Errors that reach the user as one clear line (exit code 2), never as a traceback."""


class UserError(Exception):
    """A problem with the user's config or data.

    The message is shown as-is on one line: it should name the file, the key or the
    row/column, what is wrong and what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
