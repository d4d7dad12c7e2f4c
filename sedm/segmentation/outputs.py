"""Names of what ``sedm train-seg`` writes into its run and model directories and ``sedm predict`` into a
prediction store, for the writers and their readers."""

from __future__ import annotations

TRAIN_LOG = "train_log.csv"
"""Written into ``--run-dir`` and copied into the model directory."""

STEP, LOSS, VAL_DICE = "step", "loss", "val_macro_dice"
LOG_COLUMNS = [STEP, LOSS, "lr", "synthetic_fraction", VAL_DICE, "seconds"]

PREDICTED_LABELS = "0"
"""Array of a prediction store holding the labels at the store's µm/px (level 0 of its label pyramid)."""
PROBABILITIES = "probabilities"
"""Array of a prediction store holding the class probabilities (optional, level 0 only)."""
