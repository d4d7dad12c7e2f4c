"""Rule logs: a retried job keeps the log of every attempt (`sedm ... --log FILE`)."""

from __future__ import annotations

import os
import subprocess
import sys

from builders.workflow import REPO

# A sedm command that is preempted on its first attempt (checkpoint, exit 75) and finishes on the next,
# run through sedm's CLI as the rules run every command.
PREEMPTED = '''
import logging
from pathlib import Path

def add_arguments(parser):
    parser.add_argument("--out", required=True)
    parser.add_argument("--attempt", type=int, required=True)

def run(args):
    if args.attempt == 1:
        logging.getLogger("train").warning("stopped at step 4 of 10; checkpoint written, exit 75")
        return 75
    logging.getLogger("train").info("resumed at step 4")
    Path(args.out).write_text("done\\n")
    return 0
'''

SNAKEFILE = '''
rule train:
    output: "model.txt"
    log: "logs/train.log"
    resources: attempt=lambda wildcards, attempt: attempt
    shell: "{python} -c 'import sys, sedm.cli as c; c.COMMANDS[\\"train\\"] = (\\"preempted\\", \\"\\");"
           " sys.exit(c.main())' train --out {{output}} --attempt {{resources.attempt}} --log {{log}}"
'''


def test_failed_attempts_keep_their_logs_and_a_success_leaves_one(tmp_path):
    log = tmp_path / "logs" / "x.log"
    for n in (1, 2):
        attempt = log_to_in_child(log, f"attempt {n} stopped")
        assert attempt == f"{log}.attempt-{n}"
        log.unlink()  # what Snakemake does before the next attempt
    assert log_to_in_child(log, "attempt 3 done", succeed=True) == f"{log}.attempt-3"
    assert log.read_text() == "attempt 3 done\n"
    assert sorted(p.name for p in log.parent.iterdir()) == ["x.log", "x.log.attempt-1", "x.log.attempt-2"]
    assert (log.parent / "x.log.attempt-2").read_text() == "attempt 2 stopped\n"


def log_to_in_child(log, message: str, succeed: bool = False) -> str:
    """``log_to`` redirects file descriptor 2: try it in a child, not under pytest's capture."""
    code = (f"import sys; from sedm.runtime.joblog import log_to, succeeded; a = log_to({str(log)!r}); "
            f"print({message!r}, file=sys.stderr); print(a); {'succeeded(a)' if succeed else ''}")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return proc.stdout.strip()


def test_retried_job_keeps_the_preempted_attempts_log(tmp_path):
    (tmp_path / "preempted.py").write_text(PREEMPTED)
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(python=sys.executable))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--retries", "1"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = (tmp_path / "logs/train.log.attempt-1").read_text()
    assert "checkpoint written, exit 75" in first and "resumed" not in first
    last = (tmp_path / "logs/train.log").read_text()
    assert "resumed at step 4" in last and "exit 75" not in last
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["train.log", "train.log.attempt-1"]


def test_relaunched_commands_do_not_take_the_log_again():
    """train-diffusion relaunches itself under torchrun with args.argv: its processes inherit the log."""
    from sedm.cli import _without_log

    argv = ["-v", "train-diffusion", "--log", "a.log", "--gpus", "2", "--log=b.log", "--out", "m"]
    assert _without_log(argv) == ["-v", "train-diffusion", "--gpus", "2", "--out", "m"]


def test_messages_reach_the_log_file(tmp_path):
    log = tmp_path / "logs" / "v.log"
    cmd = [sys.executable, "-m", "sedm.cli", "validate", "--config", str(tmp_path / "missing.yaml"), "--log", str(log)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(2):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr == ""
    assert "config file does not exist" in log.read_text()
    assert "config file does not exist" in (tmp_path / "logs" / "v.log.attempt-1").read_text()
