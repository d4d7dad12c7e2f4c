"""Parse + DAG time of the workflow on a large sample sheet: `snakemake -n` over 200 slides in < 5 s.

No pixels are needed: the demo is disabled and the sheet points at empty placeholder slides and
annotations in a temporary folder (a dry run only checks that inputs exist). The baseline is the
same dry run over 10 slides, in the same process; the ratio shows how parse-time work scales.

    python benchmarks/dag.py [--slides 200] [--keep DIR]

Last line: {"slides", "dry_run_s", "dry_run_cpu_s", "jobs", "baseline_slides", "baseline_dry_run_s",
"baseline_jobs", "ratio", "limit_s", "ok"}.
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


def make_cohort(folder: Path, n_slides: int) -> Path:
    """Placeholder slides/annotations, a sample sheet and a config (demo off) in ``folder``; returns the config."""
    (folder / "slides").mkdir(parents=True, exist_ok=True)
    rows = ["slide_id\tpatient_id\tslide_path\tannotation_path\trole"]
    for i in range(n_slides):
        slide_id, role = f"S{i:04d}", ROLES[i % len(ROLES)]
        slide = folder / "slides" / f"{slide_id}.svs"
        slide.touch()
        annotation = ""
        if role != "unlabelled":
            annotation = str(folder / "slides" / f"{slide_id}.geojson")
            Path(annotation).touch()
        rows.append(f"{slide_id}\tP{i // 2:04d}\t{slide}\t{annotation}\t{role}")
    (folder / "samples.tsv").write_text("\n".join(rows) + "\n")
    config = folder / "config.yaml"
    config.write_text(f"samples: {folder / 'samples.tsv'}\nresults: {folder / 'results'}\ndemo:\n  enabled: false\n")
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
        base_s, base_cpu, base_jobs = dry_run(make_cohort(root / "baseline", args.baseline_slides))
        big_s, big_cpu, big_jobs = dry_run(make_cohort(root / "large", args.slides))
    print(f"baseline: {args.baseline_slides} slides, {base_jobs} jobs, {base_s:.2f} s ({base_cpu:.2f} s CPU)")
    print(f"large:    {args.slides} slides, {big_jobs} jobs, {big_s:.2f} s ({big_cpu:.2f} s CPU), "
          f"{big_s / base_s:.2f}x the baseline")
    print(json.dumps({"slides": args.slides, "dry_run_s": round(big_s, 3), "dry_run_cpu_s": round(big_cpu, 3),
                      "jobs": big_jobs, "baseline_slides": args.baseline_slides,
                      "baseline_dry_run_s": round(base_s, 3), "baseline_jobs": base_jobs,
                      "ratio": round(big_s / base_s, 3), "limit_s": LIMIT_S, "ok": big_s < LIMIT_S}))


if __name__ == "__main__":
    main()
