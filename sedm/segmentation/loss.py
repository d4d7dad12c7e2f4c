"""Cross-entropy + soft Dice over all classes, with unannotated pixels (label 0) masked out.

MONAI's DiceCELoss has no ignore label, and replacing the ignored pixels by some class would teach
the network that class; here they are removed from both terms, so they contribute nothing to the
loss nor to its gradient. Dice is computed over the whole batch (not per image), so a class absent
from one patch does not produce a meaningless 0/0 term; ``smooth`` (in pixels) keeps absent classes
finite and is negligible against the pixel counts of present ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sedm.labels import UNANNOTATED


def masked_ce_dice(logits: torch.Tensor, labels: torch.Tensor, ce_weight: float = 1.0,
                   dice_weight: float = 1.0, smooth: float = 1.0) -> torch.Tensor:
    """Loss of (B, K, H, W) logits against (B, H, W) labels in 0..K (0 ignored)."""
    logits = logits.float()
    valid = labels != UNANNOTATED
    if not bool(valid.any()):
        return logits.sum() * 0.0  # keeps the graph; no annotated pixel, no signal
    target = labels.long() - 1  # class k -> channel k - 1; unannotated -> -1
    ce = F.cross_entropy(logits, target, ignore_index=-1)
    probs = torch.softmax(logits, dim=1)
    mask = valid.unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(target.clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype) * mask
    probs = probs * mask
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    dice = (2 * inter + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)
    return ce_weight * ce + dice_weight * (1 - dice.mean())
