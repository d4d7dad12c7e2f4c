"""The start-up benchmark runs (two light commands, one run each) and its last line is the JSON it promises."""

from __future__ import annotations

import json
import subprocess
import sys


def test_startup_benchmark_json_line(repo, tmp_path):
    cmd = [sys.executable, str(repo / "benchmarks" / "startup.py"), "--repeat", "1", "--commands", "profile",
           "write-config"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path, timeout=300).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["benchmark"], result["repeat"]) == ("startup", 1)
    assert set(result["commands"]) == {"profile", "write-config"}
    assert result["baseline_wall_s"] > 0 and result["baseline_cpu_s"] >= 0
    for name, row in result["commands"].items():
        assert row["wall_s"] > 0 and row["cpu_s"] > 0, name
        assert abs(row["ratio"] - row["wall_s"] / result["baseline_wall_s"]) < 0.1  # both rounded
        assert row["imports"] == [], name
    assert result["max_wall_s"] == max(r["wall_s"] for r in result["commands"].values())
    assert result["torch_free"] is True
    assert result["under_target"] == (result["max_wall_s"] < result["target_s"])
