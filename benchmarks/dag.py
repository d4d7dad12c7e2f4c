"""Parse + DAG time of the workflow on a large sample sheet: `snakemake -n` over 200 slides in < 5 s.

The demo is disabled and the sheet points at small real slides (pyramidal TIFFs, a tissue blob each)
and their GeoJSON in a temporary folder: the workflow's start opens and checks every one of them
(`sedm validate`'s checks) the first time, and only new or changed ones later (the check cache). The
first dry run is timed as `first_dry_run_s`, the second (every slide cached) as `dry_run_s`. The
baseline is the same pair over 10 slides, in the same process; the ratio shows how parse-time work
scales.

    python benchmarks/dag.py [--slides 200] [--keep DIR]

Last line: {"slides", "first_dry_run_s", "dry_run_s", "dry_run_cpu_s", "jobs", "baseline_slides",
"baseline_dry_run_s", "baseline_jobs", "ratio", "limit_s", "ok"}.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 5.0
ROLES = ("labelled", "unlabelled", "test", "test")  # a quarter labelled, a quarter unlabelled, half test


SIZE = 256
"""Slide side, pixels at 1 µm/px: enough for a tissue blob and one 64 px tile pyramid level."""


def _slide(path: Path, seed: int) -> None:
    import numpy as np

    from sedm.demo.tiff import write_pyramidal_tiff

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    blob = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE / 3) ** 2
    rgb = np.full((SIZE, SIZE, 3), 240, np.uint8)
    rgb[blob] = (rng.integers(150, 200), 80, rng.integers(130, 180))
    rgb[:8, :8] = np.array([seed % 256, seed // 256 % 256, 7], np.uint8)  # no two slides alike: none is a copy
    write_pyramidal_tiff(path, rgb, 1.0, tile=64, min_size=SIZE)


def _annotation(path: Path, name: str) -> None:
    c, r = SIZE / 2, SIZE / 4
    ring = [[c - r, c - r], [c + r, c - r], [c + r, c + r], [c - r, c + r], [c - r, c - r]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "id": name, "properties": {"classification": {"name": "tumour"}},
        "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))


def make_cohort(folder: Path, n_slides: int) -> Path:
    """Small slides/annotations, a sample sheet and a config (demo off) in ``folder``; returns the config."""
    (folder / "slides").mkdir(parents=True, exist_ok=True)
    rows = ["slide_id\tpatient_id\tslide_path\tannotation_path\trole"]
    for i in range(n_slides):
        slide_id, role = f"S{i:04d}", ROLES[i % len(ROLES)]
        slide = folder / "slides" / f"{slide_id}.tiff"
        _slide(slide, i)
        annotation = ""
        if role != "unlabelled":
            annotation = str(folder / "slides" / f"{slide_id}.geojson")
            _annotation(Path(annotation), slide_id)  # QuPath's object ids: no two exports alike
        rows.append(f"{slide_id}\tP{i // 2:04d}\t{slide}\t{annotation}\t{role}")
    (folder / "samples.tsv").write_text("\n".join(rows) + "\n")
    config = folder / "config.yaml"
    config.write_text(json.dumps({"samples": str(folder / "samples.tsv"), "results": str(folder / "results"),
                                  "classes": ["tumour"], "tissue": {"thumbnail_mpp": 4.0, "min_object_um2": 500.0},
                                  "tiling": {"tile_size": 64, "pyramid_levels": 1}}))
    return config


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dry_run(config: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds of `snakemake -n` (parse, validation, DAG) and the number of jobs it plans.

    The CPU seconds do not grow when other processes load the machine; the wall seconds do."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(config.parent), "--configfile", str(config), "--cores", "1"]
    t0, cpu0 = time.perf_counter(), _children_cpu_s()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t0, _children_cpu_s() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    total = re.search(r"^total\s+(\d+)\s*$", proc.stdout, flags=re.M)
    if total is None:
        raise SystemExit(f"no job count in the dry run's output:\n{proc.stdout[-2000:]}")
    return seconds, cpu, int(total.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=200)
    parser.add_argument("--baseline-slides", type=int, default=10)
    parser.add_argument("--keep", help="write the cohort here instead of a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sedm-dag-") as tmp:
        root = Path(args.keep or tmp)
        base, large = make_cohort(root / "baseline", args.baseline_slides), make_cohort(root / "large", args.slides)
        dry_run(base)  # the first run checks every slide; then the runs compared, cached alike
        base_s, base_cpu, base_jobs = dry_run(base)
        first_s, _, _ = dry_run(large)
        big_s, big_cpu, big_jobs = dry_run(large)
    print(f"baseline: {args.baseline_slides} slides, {base_jobs} jobs, {base_s:.2f} s ({base_cpu:.2f} s CPU)")
    print(f"large:    {args.slides} slides, {big_jobs} jobs, {big_s:.2f} s ({big_cpu:.2f} s CPU), "
          f"{big_s / base_s:.2f}x the baseline; first run (every slide checked) {first_s:.2f} s")
    print(json.dumps({"slides": args.slides, "first_dry_run_s": round(first_s, 3), "dry_run_s": round(big_s, 3),
                      "dry_run_cpu_s": round(big_cpu, 3), "jobs": big_jobs, "baseline_slides": args.baseline_slides,
                      "baseline_dry_run_s": round(base_s, 3), "baseline_jobs": base_jobs,
                      "ratio": round(big_s / base_s, 3), "limit_s": LIMIT_S, "ok": big_s < LIMIT_S}))


if __name__ == "__main__":
    main()
