"""Names of what ``sedm train-autoencoder`` writes, for the trainer and its readers (report, codec)."""

from __future__ import annotations

TRAIN_LOG = "train_log.csv"
LOG_COLUMNS = ["step", "loss", "reconstruction", "layout_decoder", "lr", "elapsed_s"]
"""Per logging interval: total loss, the autoencoder's reconstruction loss, the layout decoder's."""
PROVENANCE = "sedm.json"
"""Training provenance inside the autoencoder directory, beside the diffusers files."""
