"""Error types that map to the contract's exit codes.

`UsageError` is bad input found at the boundary (exit 2, one line, no traceback).
`CellError` is a per-cell fault that retrying cannot fix (the cell is marked failed, the grid goes on).
"""


class UsageError(ValueError):
    """Bad user input: unknown name, malformed config, out-of-range value. Exit code 2."""


class CellError(RuntimeError):
    """A deterministic fault of one cell (diverged loss, mode not applicable, corrupt parent).

    Tune does not retry it: the same inputs would fail the same way.
    """


class Diverged(CellError):
    """An unlearning whose loss or weights became NaN or inf: a tuning trial scores it the worst."""


class MissingInput(Exception):
    """An optional input of a cell did not finish (it failed or was blocked): the metrics needing it stay empty."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised in the driver's main thread to leave Ray Tune's loop at once (a BaseException,
    so no `except Exception` on the way swallows it). Exit code 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def first_line(err: BaseException) -> str:
    """An exception's message in one line (its type's name when it has none): what a one-line error quotes."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
