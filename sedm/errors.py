"""The one error type for bad user input.

A user who fed sedm a wrong file should read one message naming the file, the field and the fix,
before any compute starts; a traceback through zarr or torch helps nobody.
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input: which file, which field, what is wrong and how to fix it."""

    def __init__(self, file: str | Path | None, field: str | None, problem: str, fix: str) -> None:
        self.file = None if file is None else str(file)
        self.field = field
        self.problem = problem
        self.fix = fix
        where = self.file or "<input>"
        if field:
            where += f" [{field}]"
        super().__init__(f"{where}: {problem}. Fix: {fix}")

    def __reduce__(self):  # picklable, e.g. raised in a worker process
        return type(self), (self.file, self.field, self.problem, self.fix)
