"""Training logs as CSV that survive resume."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sedm.atomic import atomic_path


class CsvLog:
    """Append-only CSV training log that survives resume: rows after the resumed step are dropped."""

    def __init__(self, path: str | Path, columns: list[str], resume_step: int = 0) -> None:
        self.path = Path(path)
        self.columns = columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, str]] = []
        if resume_step > 0 and self.path.is_file():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r.get("step", 0)) <= resume_step]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: Mapping[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:  # the columns are the log's published names (readers import them): no silent extras
            raise KeyError(f"{self.path.name} has no column(s) {sorted(unknown)}")
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.columns, extrasaction="ignore").writerow(
                {k: ("" if v is None else v) for k, v in row.items()})
