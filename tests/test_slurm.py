"""The tiny pipeline on a real SLURM (single node, started by tests/slurm/start.sh) with the shipped
profile, installed as the README says; its diffusion training is preempted (SIGTERM) and resumes.

Skipped, with the reason, where SLURM cannot start here (not root, slurm-wlm/munge or the executor
plugin missing, a foreign SLURM config); under CI (CI=true) that is a failure instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from builders.workflow import REPO, executed_jobs, make_workdir, read_sheet, snakemake_cmd
from sedm.config import load_config, runtime_config
from sedm.profile import GPU_RULES

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SCRIPTS = REPO / "tests/slurm"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the SLURM test, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm():
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        _unavailable("snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    proc = subprocess.run(["bash", str(SCRIPTS / "start.sh")], capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        _unavailable(f"local SLURM did not start (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    try:
        yield
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop.sh")], capture_output=True, timeout=60)


def slurm_jobs() -> pd.DataFrame:
    """Every job slurmctld still knows (MinJobAge keeps finished ones), in submission order: id, comment
    (the Snakemake plugin writes rule_<rule>[_wildcards_<values>]), state and GPUs asked for."""
    out = subprocess.run(["squeue", "--states=all", "--noheader", "-O", "JobID:|,Comment:|,State:|,tres-per-job:|"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("|")[:4] for line in out.splitlines() if line.strip()]
    jobs = pd.DataFrame(rows, columns=["id", "comment", "state", "gres"])
    return jobs.assign(id=jobs["id"].astype(int)).sort_values("id", ignore_index=True)


def wait_for(predicate, timeout: float, proc: subprocess.Popen, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended ({proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def logged_steps(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / "train_log.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def running_training_job() -> str | None:
    jobs = slurm_jobs()
    hit = jobs[jobs["comment"].str.startswith("rule_train_diffusion") & (jobs["state"] == "RUNNING")]
    return str(hit["id"].iloc[0]) if len(hit) else None


def test_tiny_pipeline_on_slurm_survives_preemption(slurm, tmp_path):
    work = make_workdir(tmp_path / "work")
    # `sedm profile install` into a private config dir, then `snakemake --profile slurm` as the README says
    xdg = tmp_path / "xdg"
    env = {**os.environ, "XDG_CONFIG_HOME": str(xdg)}
    subprocess.run([sys.executable, "-m", "sedm.cli", "profile", "install", "slurm", "--account", "sedmtest",
                    "--partition", "debug", "--cpus-per-gpu", "1"], env=env, check=True, capture_output=True)
    assert (xdg / "snakemake/slurm/config.yaml").is_file()
    # only for this accounting-free test cluster: poll squeue (sacct would fail) and poll early; 2 cores
    cmd = snakemake_cmd(work, "--profile", "slurm", "--slurm-status-command", "squeue",
                        "--slurm-init-seconds-before-status-checks", "2", "--jobs", "2")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_dir = work / "results/diffusion/run"
        wait_for(lambda: logged_steps(run_dir) >= 1, 900, proc, "the diffusion training's first step")
        job = wait_for(running_training_job, 60, proc, "the training job in squeue")
        stopped_after = logged_steps(run_dir)
        # what SLURM sends at preemption; the trainer checkpoints and exits 75, Snakemake retries it
        subprocess.run(["scancel", "--signal=TERM", job], check=True)
        text, _ = proc.communicate(timeout=1500)
    finally:
        if proc.poll() is None:
            proc.kill()
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, text[-6000:]

    # the whole pipeline ran through SLURM
    n = read_sheet(work)
    assert (work / "results/report/report.html").is_file() and (work / "results/eval/summary.json").is_file()
    jobs = slurm_jobs()
    rules = jobs["comment"].str.extract(r"^rule_([a-z_]+?)(?:_wildcards_.*)?$")[0]
    assert (rules == "tile_slide").sum() == len(n)
    # GPU rules were scheduled on the (fake) GPU, the others not
    for rule, gres in zip(rules, jobs["gres"]):
        assert ("gpu" in gres) == (rule in GPU_RULES), (rule, gres)

    # the preempted training: failed once, resubmitted once, resumed from its checkpoint, not from 0
    training = jobs[rules == "train_diffusion"]
    assert training["state"].tolist() == ["FAILED", "COMPLETED"]
    assert executed_jobs(text)["train_diffusion"] == 1
    started = [int(s) for s in re.findall(r"steps (\d+) -> \d+", (work / "results/logs/train_diffusion/model.log").read_text())]
    assert started and started[-1] >= stopped_after > 0
    # the preempted attempt's log is kept beside the log of the attempt that finished
    assert "checkpoint written, exit 75" in (work / "results/logs/train_diffusion/model.log.attempt-1").read_text()
    steps = pd.read_csv(run_dir / "train_log.csv")["step"].tolist()
    assert steps == list(range(1, len(steps) + 1))  # every step once: the resumed run continued the log

    # ... and ends with the weights of an uninterrupted run (CPU training is deterministic)
    labelled = n.loc[n["role"] == "labelled", "slide_id"]
    ref = tmp_path / "uninterrupted"
    config = load_config(work / "config.yaml")
    runtime = json.dumps(runtime_config(config, "diffusion"))  # as the rule passes it
    autoencoder = ["--autoencoder", str(work / "results/autoencoder/model")] if config["diffusion"]["latent"] == "cohort" else []
    subprocess.run([sys.executable, "-m", "sedm.cli", "train-diffusion", "--config",
                    str(work / "results/config/diffusion.json"), "--runtime", runtime, "--stores",
                    *[str(work / f"results/tiles/{s}.zarr") for s in labelled], *autoencoder, "--out", str(ref / "model"),
                    "--run-dir", str(ref / "run"), "--resume", "never", "--threads", "1"],
                   check=True, capture_output=True, timeout=600)
    resumed = load_file(work / "results/diffusion/model/model.safetensors")
    fresh = load_file(ref / "model/model.safetensors")
    assert resumed.keys() == fresh.keys()
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)
    print(f"tiny pipeline on SLURM with one preemption: {seconds:.0f} s")
