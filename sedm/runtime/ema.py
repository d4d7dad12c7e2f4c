"""Exponential moving averages of model weights, used for validation, previews and the saved models.

Two kinds, kept apart because they give different numbers: :class:`EMA` (segmentation: constant
decay over parameters and buffers) and :func:`warmup_ema` (diffusion: diffusers' ``EMAModel`` over
parameters, with a decay that grows from 0 towards ``decay``). Replacing either with the other
would change trained weights and the checkpoint format.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy a (CPU-loaded) checkpoint into the shadow, which stays on the model's device."""
        for k, v in state.items():
            self.shadow[k].copy_(v)


def warmup_ema(model: torch.nn.Module, decay: float) -> Any:
    """diffusers' ``EMAModel`` with warm-up: decay ``min(decay, 1 - (1 + step)^-0.75)``, so short runs
    are averaged over a fitting horizon."""
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=decay, min_decay=0.0, use_ema_warmup=True, power=0.75)


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
