"""What a run's results depend on, as one hash: resumable state is only reused for the same hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sedm.config import RUNTIME_KEYS


def without_runtime_keys(section: Mapping[str, Any], also: Iterable[str] = ()) -> dict[str, Any]:
    """A config section without its :data:`~sedm.config.RUNTIME_KEYS` (and the keys ``also``).

    Runtime keys change where and how fast a job runs, not its results, so a run may resume on
    another device or with other checkpoint settings. ``also`` names keys of the section that the
    hashed step does not use although they are part of the stage (e.g. prediction settings for
    training).
    """
    drop = RUNTIME_KEYS | set(also)
    return {k: v for k, v in section.items() if k not in drop}


def _hash_path(h: "hashlib._Hash", path: Path) -> None:
    """Content of small metadata files, size of bulk chunk files: cheap, and changes when data does."""
    if path.is_dir():
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = sub.relative_to(path).as_posix()
            h.update(rel.encode())
            if sub.name.endswith(".json") or sub.suffix in (".parquet", ".tsv", ".csv"):
                h.update(sub.read_bytes())
            else:
                h.update(str(sub.stat().st_size).encode())
    elif path.is_file():
        h.update(path.read_bytes() if path.stat().st_size < 2**26 else str(path.stat().st_size).encode())
    else:
        h.update(b"<missing>")


def fingerprint(config: Mapping[str, Any], inputs: Iterable[str | Path] = ()) -> str:
    """Hash of a config mapping and of input files / stores (names, metadata, chunk sizes)."""
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for path in inputs:
        path = Path(path)
        h.update(b"\0" + path.name.encode())
        _hash_path(h, path)
    return h.hexdigest()
