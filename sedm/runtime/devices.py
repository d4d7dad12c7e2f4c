"""Which torch device a job runs on, and mixed precision where it pays."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch.

    A bare ``cuda`` becomes ``cuda:<local_rank>``, the GPU of this DDP rank (0 outside torchrun).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); a no-op on CPU, where bf16 is slow."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
