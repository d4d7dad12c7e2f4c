"""Running the real workflow on the tiny cohort (.test/config.yaml) in a temporary folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

from sedm.demo.cohort import cohort_slides, demo_counts, sample_sheet, sample_sheet_text

REPO = Path(__file__).resolve().parents[2]


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(workdir / "config.yaml"), *args]


def snakemake(workdir: Path, *args: str, check: bool = True, cores: str = "2", timeout: float = 900,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = snakemake_cmd(workdir, *(["--cores", cores] if cores else []), *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=None if env is None else {**os.environ, **env})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def make_workdir(path: Path, **overrides: dict) -> Path:
    """A workdir holding the tiny test config (sections updated by ``overrides``) and its sample sheet."""
    path.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO / ".test/config.yaml").read_text())
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    slides = cohort_slides(*demo_counts(config["demo"]))
    (path / "samples.tsv").write_text(sample_sheet_text(sample_sheet(config["demo"]["out"], slides)))
    return path


def edit_config(workdir: Path, section: str, **values) -> None:
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config[section].update(values)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def read_sheet(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / "samples.tsv", sep="\t", comment="#", dtype=str, keep_default_na=False)


_FINISHED = re.compile(r"^Finished jobid: \d+ \(Rule: (\w+)\)", flags=re.M)


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def executed_jobs(text: str) -> Counter:
    """Jobs per rule a real run executed (from Snakemake's "Finished jobid" lines), without `all`."""
    counts = Counter(_FINISHED.findall(text))
    counts.pop("all", None)
    return counts


def planned_jobs(text: str) -> Counter:
    """Jobs per rule from the "Job stats" table Snakemake prints (dry runs too), without `all`."""
    counts: Counter = Counter()
    table = text.split("Job stats:", 1)[1] if "Job stats:" in text else ""
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "all", "job", "count"):
            counts[parts[0]] = int(parts[1])
        elif parts and parts[0] == "total":
            break
    return counts
