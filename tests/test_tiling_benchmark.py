"""The tiling benchmark runs end to end (tiny slides) and its last line is the JSON it promises."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest


@pytest.mark.slow
def test_tiling_benchmark_json_line(repo, tmp_path):
    cmd = [sys.executable, str(repo / "benchmarks" / "tiling.py"), "--sizes", "1024", "2048", "--repeat", "2",
           "--naive-tiles", "10", "--workdir", str(tmp_path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path, timeout=600).stdout
    result = json.loads(out.strip().splitlines()[-1])
    for key in ("tiles_per_s", "vs_naive", "vs_decode", "vs_decode_median", "vs_decode_same_tiles", "peak_rss_mb",
                "slide_px", "peak_rss_mb_small", "decode_tiles_per_s", "decode_same_tiles_per_s", "vs_tifffile_read",
                "tifffile_read_tiles_per_s"):
        assert result[key] > 0, key
    assert (result["slide_px"], result["slide_px_small"], result["repeat"]) == (2048, 1024, 2)
    n = len(pd.read_parquet(tmp_path / "out_2048" / "bench.tiles.parquet"))  # the last run's store is kept
    assert result["n_tiles"] == n > 0
    assert result["vs_decode"] == round(result["tiles_per_s"] / result["decode_tiles_per_s"], 2)
    assert result["vs_decode_same_tiles"] == round(result["tiles_per_s"] / result["decode_same_tiles_per_s"], 2)
    assert result["vs_tifffile_read"] == round(result["tiles_per_s"] / result["tifffile_read_tiles_per_s"], 2)
    from sedm.tiling.workers import can_fork_workers

    assert result["workers"] == ("processes" if can_fork_workers() else "threads")
    assert 0 <= result["workers_private_mb"] < result["peak_rss_mb"]
