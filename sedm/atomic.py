"""Write-then-rename helpers, so an interrupted job never leaves a half-written output behind.

A temporary is named after its output, host and process (``.<name>.tmp-<host>-<pid>``), so the next
writer of the same output can tell a leftover of a killed job (kill -9, a node that died) from a
temporary that a live job is still writing, here or on another node of a shared file system, and
removes only the leftovers (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

STALE_AFTER_S = 14 * 24 * 3600
"""A temporary of another host counts as left over once it is this old (longer than any job may run):
a process on another node cannot be asked whether it is still alive."""

_KINDS = ("tmp", "old")  # the temporary being written; the replaced directory, while it is deleted
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{_HOST}-{os.getpid()}")


def _owner(path: Path, tmp: Path) -> tuple[str | None, int] | None:
    """(host, pid) of a temporary of ``path`` named by :func:`_sibling`; None for any other name."""
    m = re.fullmatch(rf"\.{re.escape(path.name)}\.(?:{'|'.join(_KINDS)})-(?:(.+)-)?(\d+)", tmp.name)
    return (m.group(1), int(m.group(2))) if m else None  # no host: named by an older sedm, by pid only


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # exists, owned by another user
    return True


def _is_stale(host: str | None, pid: int, mtime: float) -> bool:
    if host == _HOST:
        return pid != os.getpid() and not _alive(pid)
    return time.time() - mtime > STALE_AFTER_S


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporaries of ``path`` whose writer is provably gone; returns what was removed.

    Provably gone: written on this host by a process that no longer exists, or on another host and
    older than :data:`STALE_AFTER_S`. A temporary of a live process, or a young one of another
    host, is left alone.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*-*") if path.parent.is_dir() else []:
        owner = _owner(path, tmp)
        try:
            stale = owner is not None and _is_stale(*owner, tmp.lstat().st_mtime)
        except FileNotFoundError:  # removed meanwhile by another writer
            continue
        if stale:
            log.warning("removing %s, left over by process %d on %s", tmp, owner[1], owner[0] or "another host")
            with contextlib.suppress(FileNotFoundError):
                _remove(tmp)
            removed.append(tmp)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some network file systems cannot sync a directory; they order renames anyway
        if not path.is_dir() or exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (file or directory) and rename it onto ``path`` on success.

    On an exception the temporary is removed and ``path`` is left as it was. A file is flushed to
    disk before the rename and the folder after it, so a node that dies right after the rename leaves
    the new file, not a renamed but empty or truncated one. Leftover temporaries of ``path`` from
    killed writers are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _sibling(path, "tmp")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_file():
            _fsync(tmp)
    except BaseException:
        _remove(tmp)
        raise
    if path.exists() and path.is_dir():
        old = _sibling(path, "old")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    _fsync(path.parent)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write a binary file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
