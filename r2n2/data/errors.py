"""The one error type for bad input data: its message names the file and what is wrong."""

from __future__ import annotations

import os


class DataError(ValueError):
    """A data file is missing, unreadable or malformed.

    ``str(err)`` reads ``"<path>: <fault>"`` so a log line alone says which file to fix.
    """

    def __init__(self, path: str | os.PathLike | None, fault: str):
        self.path = None if path is None else os.fspath(path)
        self.fault = fault
        super().__init__(fault if path is None else f"{self.path}: {fault}")
