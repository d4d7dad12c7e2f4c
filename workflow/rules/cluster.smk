# How jobs run, wherever they run: the shell prefix of every rule and checks of their resources.
#
# The shell prefix:
# - `trap : TERM`: on preemption SLURM sends SIGTERM to every process of a job. The training and
#   synthesis commands then checkpoint and exit 75 (retried, they resume); without the trap the rule's
#   bash would die at once and the job could end before the checkpoint is written. With it, bash
#   waits for the command and exits with its status. Commands still get the default SIGTERM action.
# - `sedm` without sedm on PATH: under `--sdm conda` a rule's env (envs/sedm.yaml) holds sedm's
#   dependencies but not sedm itself (Snakemake builds envs from a copy of the env file, so the env
#   cannot pip-install this checkout). `sedm` then runs this checkout's package with the env's
#   Python (PYTHONPATH is exported, so `torchrun -m sedm.cli` finds it too).
import shlex

shell.prefix(
    "set -euo pipefail; trap : TERM; if ! command -v sedm >/dev/null; then export PYTHONPATH="
    + shlex.quote(workflow.basedir).replace("{", "{{").replace("}", "}}")
    + '${{PYTHONPATH:+:$PYTHONPATH}}; sedm() {{ python -m sedm.cli "$@"; }}; fi; '
)


def one_gpu(wildcards, resources):
    """A param that checks: segmentation training and prediction run in one process (no DDP), so a
    second GPU would sit idle while billed, and a profile or config asking for it is an error, not a
    silent single-GPU run. Its value is always "", so a changed GPU count reruns nothing."""
    if resources.gpu > 1:
        raise WorkflowError(f"gpu={resources.gpu} for a segmentation job, but segmentation training and"
                            " prediction use one GPU (no multi-GPU support): set gpu: 1 for train_segmentation"
                            " and predict_slide in the profile's set-resources (or segmentation.gpus: 1)")
    return ""
