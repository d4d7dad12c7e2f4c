"""Commands whose work uses no tensor (:data:`sedm.cli.TENSOR_FREE`) never import torch or diffusers.

``import torch`` costs seconds of start-up, and some of these commands run once per slide. Each check
runs in a fresh interpreter, since this test process has torch loaded already (``conftest.py``):

* every tensor-free command starts (``sedm <command> --help``: its module imported, its parser built)
  with neither library in ``sys.modules``;
* ``sedm style-stats`` and ``sedm style-table`` do their whole work on a toy store under an import
  guard that refuses torch and diffusers and records every attempt, so a library that tries
  ``import torch`` and carries on without it is caught too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builders.segmentation import write_samples
from builders.toy_stores import make_toy_store
from sedm.cli import COMMANDS, TENSOR_FREE

HEAVY = ("torch", "diffusers")
"""What a tensor-free command must not import."""

_HELP = """
import json, sys
from sedm.cli import main
try:
    main([sys.argv[1], "--help"])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})))
"""

_GUARDED = """
import json, sys

class NoTensor:
    attempts = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {heavy!r}:
            self.attempts.append(name)
            raise ImportError(f"{{name}} imported by a tensor-free command")
        return None

guard = NoTensor()
sys.meta_path.insert(0, guard)
from sedm.cli import main
rcs = [main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({{"rcs": rcs, "attempts": guard.attempts,
                   "loaded": sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})}}))
"""


def _python(repo: Path, code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_tensor_free_commands_exist():
    assert TENSOR_FREE <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(TENSOR_FREE))
def test_tensor_free_command_starts_without_torch(repo, command):
    loaded = json.loads(_python(repo, _HELP.format(heavy=HEAVY), command))
    assert loaded == [], f"sedm {command} imports {loaded} (python -X importtime shows who)"


DEFERRED = {"report": ("scipy", "matplotlib", "zarr"), "evaluate": ("scipy", "matplotlib", "zarr"),
            "style-table": ("scipy", "matplotlib", "zarr")}
"""Libraries these commands' work needs only in part (a statistic, a figure, a store) and that would double
their start-up if imported with the module: they are imported where used."""


@pytest.mark.parametrize("command", sorted(DEFERRED))
def test_commands_start_without_what_they_use_late(repo, command):
    loaded = json.loads(_python(repo, _HELP.format(heavy=DEFERRED[command]), command))
    assert loaded == [], f"sedm {command} imports {loaded} at start-up (python -X importtime shows who)"


def test_style_stats_and_table_run_without_torch(repo, tmp_path):
    store = make_toy_store(tmp_path / "s1.zarr", slide_id="s1", size=96, classes=["tumor", "stroma"], tile_size=32)
    samples = write_samples(tmp_path / "samples.tsv", [("s1", "P1", "test")])
    stats, table = tmp_path / "s1.stats.json", tmp_path / "cohort.tsv"
    argvs = [["style-stats", "--store", str(store), "--out", str(stats), "--threads", "2"],
             ["style-table", "--samples", str(samples), "--stats", str(stats), "--out", str(table)]]
    result = json.loads(_python(repo, _GUARDED.format(heavy=HEAVY), json.dumps(argvs)))
    assert result == {"rcs": [0, 0], "attempts": [], "loaded": []}
    assert json.loads(stats.read_text())["tissue_pixels"] > 0
    assert "s1" in table.read_text()
