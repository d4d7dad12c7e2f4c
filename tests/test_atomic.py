"""Atomic writes: durable renames, and leftovers of killed writers removed only when provably stale."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from sedm import atomic
from sedm.atomic import STALE_AFTER_S, atomic_path, remove_stale_temporaries, write_text


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this pid until the kernel hands it out again


def _leftover(path, host: str, pid: int, directory: bool = True):
    tmp = path.with_name(f".{path.name}.tmp-{host}-{pid}")
    if directory:
        (tmp / "0").mkdir(parents=True)
        (tmp / "0" / "c").write_bytes(b"half")
    else:
        tmp.write_bytes(b"half")
    return tmp


def test_leftover_of_a_dead_process_on_this_host_is_removed(tmp_path):
    out = tmp_path / "S1.zarr"
    dead = _leftover(out, atomic._HOST, _dead_pid())
    with atomic_path(out) as tmp:
        (tmp / "zarr.json").parent.mkdir()
        (tmp / "zarr.json").write_text("{}")
    assert not dead.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S1.zarr"]


def test_temporaries_of_live_writers_are_kept(tmp_path):
    """A live process here, a young temporary of another node, another output's temporary: all kept."""
    out = tmp_path / "S1.zarr"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _leftover(out, atomic._HOST, sleeper.pid)
        other_node = _leftover(out, "node-17.cluster", _dead_pid())
        other_output = _leftover(tmp_path / "S10.zarr", atomic._HOST, _dead_pid())
        assert remove_stale_temporaries(out) == []
        assert live.exists() and other_node.exists() and other_output.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temporaries(out) == [live]  # its writer is gone now


def test_old_temporary_of_another_node_is_removed(tmp_path):
    out = tmp_path / "model.pt"
    young = _leftover(out, "node-3", 4242, directory=False)
    old = _leftover(out, "node-4", 4242, directory=False)
    past = time.time() - STALE_AFTER_S - 60
    os.utime(old, (past, past))
    assert remove_stale_temporaries(out) == [old]
    assert young.exists()


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "a.txt"
    write_text(out, "old\n")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("new")
        raise RuntimeError("killed")
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_file_and_folder_are_synced_before_and_after_the_rename(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(atomic, "_fsync", synced.append)
    out = tmp_path / "sub" / "ckpt.pt"
    write_text(out, "x")
    assert [p.name for p in synced] == [f".ckpt.pt.tmp-{atomic._HOST}-{os.getpid()}", "sub"]
    assert out.read_text() == "x"
