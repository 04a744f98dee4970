"""The project's own error types.

Every error raised on bad user input is a `MimoInputError` (a `ValueError`): its
message names the file or setting, the row or value, and what to do about it.
"""

from __future__ import annotations


class MimoError(Exception):
    """Base class of mimo_pipeline's errors."""


class MimoInputError(MimoError, ValueError):
    """Bad user input: a file, a setting or a model reference.

    The message always says *where* (file, row, setting), *what* is wrong and
    *what to do*.
    """

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None):
        where = []
        if source is not None:
            where.append(str(source))
        if row is not None:
            where.append(f"row {row}")
        prefix = f"{': '.join(where)}: " if where else ""
        super().__init__(prefix + message)
        self.source = source
        self.row = row


class ModelNotFoundError(MimoInputError):
    """A model reference resolves to nothing available offline or online."""
