"""Per-slide confusion matrices, per-patient Dice/IoU, and paired comparisons of arms."""
