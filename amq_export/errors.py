"""User-facing errors: one line that names the problem and the fix; the CLI exits with code 2."""


class AMQError(Exception):
    """An error caused by the user's input (file, flag, data), not by a bug.

    The message must say what is wrong and how to fix it. The CLI prints it on one line
    and exits with status 2.
    """

    exit_code = 2
