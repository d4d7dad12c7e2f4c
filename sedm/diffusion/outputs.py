"""Names of what ``sedm train-diffusion`` writes into its run directory, for the trainer and its readers."""

from __future__ import annotations

TRAIN_LOG = "train_log.csv"
SAMPLES_DIR = "samples"
"""Preview grids: ``step-<step:08d>.png`` during training, ``final.png`` at the end."""

STEP, LOSS, LR = "step", "loss", "lr"
SPEED_COLUMNS = ("it_per_s", "img_per_s")
"""Throughput: optimizer steps and training images per second over each logging interval."""
LOG_COLUMNS = [STEP, LOSS, LR, "grad_norm", *SPEED_COLUMNS, "elapsed_s"]
