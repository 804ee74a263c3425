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
