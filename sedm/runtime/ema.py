"""Exponential moving average of model weights, used for validation, previews and the saved models.

One implementation for both trainers. Diffusion averages with a warm-up (``warmup_power``): the
decay grows as ``1 - (1 + step)^-power`` towards ``decay`` (diffusers' ``EMAModel`` schedule, so a
short CPU run is averaged over a horizon that fits its length instead of being dominated by the
random initialisation); segmentation uses the constant ``decay``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    ``warmup_power`` None: constant ``decay``. Otherwise update ``n`` (1-based) uses
    ``min(decay, 1 - n^-warmup_power)``, which is 0 for the first update (the average starts at the
    weights after one step).
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup_power: float | None = None) -> None:
        self.decay = decay
        self.warmup_power = warmup_power
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        if self.warmup_power is None:
            return self.decay
        return min(self.decay, 1.0 - self.updates ** -self.warmup_power)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - self.current_decay()
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), weight)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (a model state dict); the update count travels in checkpoints apart."""
        return self.shadow

    def load_state_dict(self, state: Mapping[str, torch.Tensor], updates: int | None = None) -> None:
        """Copy a (CPU-loaded) checkpoint into the shadow, which stays on the model's device."""
        for k, v in state.items():
            self.shadow[k].copy_(v)
        if updates is not None:
            self.updates = int(updates)


@contextlib.contextmanager
def swapped_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor] | None) -> Iterator[None]:
    """Temporarily load ``weights`` (e.g. EMA) into ``model``; None leaves the model as is."""
    if weights is None:
        yield
        return
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    try:
        yield
    finally:
        model.load_state_dict(saved)
