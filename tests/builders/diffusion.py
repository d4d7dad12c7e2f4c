"""Tiny models, configs and stores for the diffusion tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sedm.models.presets import model_config
from sedm.models.stedm import StedmConfig, StedmModel

CLASSES = ["tumour", "stroma"]

MICRO: dict[str, Any] = dict(
    preset="tiny", patch_size=32, block_out_channels=[16, 32], layers_per_block=1,
    attention_levels=[False, True], attention_head_dim=16, norm_num_groups=8, style_dim=32,
    style_encoder_channels=[8, 16], n_style=2,
)


def micro_config(classes: list[str] = CLASSES, **overrides: Any) -> StedmConfig:
    return model_config({**MICRO, **overrides}, classes)


def micro_model(classes: list[str] = CLASSES, seed: int = 0, **overrides: Any) -> StedmModel:
    import torch

    torch.manual_seed(seed)
    return StedmModel(micro_config(classes, **overrides))


def diffusion_section(**overrides: Any) -> dict[str, Any]:
    """A ``diffusion`` config section for very short CPU training runs."""
    section = {**MICRO, "batch_size": 4, "max_steps": 4, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 2,
               "sample_every": 0, "log_every": 1, "num_workers": 0, "ema_decay": 0.99}
    section.update(overrides)
    return section


def make_stores(tmp: Path, n: int = 2, size: int = 256, classes: list[str] = CLASSES, tile: int = 64) -> list[Path]:
    """``n`` toy stores with distinct stain colours (see builders.toy_stores)."""
    from builders.toy_stores import make_toy_store

    return [make_toy_store(tmp / f"slide{i}.zarr", slide_id=f"slide{i}", size=size, classes=classes,
                           tile_size=tile, style=i, seed=i) for i in range(n)]
