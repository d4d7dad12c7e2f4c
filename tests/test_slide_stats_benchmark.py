"""The slide-statistics benchmark runs end to end (small stores) and its last line is the JSON it promises."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_slide_stats_benchmark_json_line(repo, tmp_path):
    cmd = [sys.executable, str(repo / "benchmarks" / "slide_stats.py"), "--sizes", "1024x1024", "3000x2048",
           "--blocks", "2", "--workdir", str(tmp_path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path, timeout=600).stdout
    result = json.loads(out.strip().splitlines()[-1])
    for key in ("dask_mpx_per_s", "vs_zarr_read", "vs_zarr_read_all", "vs_serial", "dask_cores_used", "peak_rss_mb", "peak_rss_mb_small",
                "peak_rss_ratio"):
        assert result[key] > 0, key
    large = result["per_size"]["3000x2048"]
    assert (large["height"], large["width"]) == (3000, 2048)
    # the statistics counted exactly the tissue written (two blocks that do not overlap, all tissue-coloured)
    assert large["tissue_px"] == large["tissue_px_written"] == 2 * 256 * 2048
    assert result["vs_zarr_read"] == round(large["read_wall_s"] / large["dask_wall_s"], 2)
