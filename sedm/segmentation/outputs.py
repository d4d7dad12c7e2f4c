"""Names of what ``sedm train-seg`` writes into its run and model directories, for the trainer and its readers."""

from __future__ import annotations

TRAIN_LOG = "train_log.csv"
"""Written into ``--run-dir`` and copied into the model directory."""

STEP, LOSS, VAL_DICE = "step", "loss", "val_macro_dice"
LOG_COLUMNS = [STEP, LOSS, "lr", "synthetic_fraction", VAL_DICE, "seconds"]
