"""The segmentation network (a MONAI U-Net), its input convention, and the saved model directory.

Output channel ``c`` scores class ``c + 1`` of the config (label 0, unannotated, has no channel:
it is never a prediction target). A model directory holds ``config.json`` (architecture, classes,
µm/px, patch size, training summary) and ``best.safetensors`` / ``last.safetensors``; safetensors
cannot execute code on load, unlike pickles.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sedm.atomic import atomic_path
from sedm.errors import InputError

WEIGHTS = ("best", "last")


def architecture(seg_cfg: Mapping[str, Any], n_classes: int) -> dict[str, Any]:
    """The network description stored in ``config.json`` (enough to rebuild it)."""
    channels = [int(c) for c in seg_cfg["channels"]]
    return {"name": "monai.networks.nets.UNet", "in_channels": 3, "out_channels": n_classes,
            "channels": channels, "strides": [2] * (len(channels) - 1),
            "num_res_units": int(seg_cfg["res_units"]), "norm": seg_cfg["norm"]}


def divisor(arch: Mapping[str, Any]) -> int:
    """Input sizes must be multiples of this (the U-Net's total downsampling)."""
    return 2 ** len(arch["strides"])


def build_model(arch: Mapping[str, Any]) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=arch["in_channels"], out_channels=arch["out_channels"],
                channels=arch["channels"], strides=arch["strides"], num_res_units=arch["num_res_units"],
                norm=arch["norm"])


def to_input(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) float in [-1, 1]: the one input convention."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def segment(model: torch.nn.Module, images: np.ndarray, device: torch.device, div: int, amp: bool) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, H, W) uint8 predicted label values (1..K; the network never predicts
    unannotated). Inputs are padded with white to a multiple of ``div`` and the result cropped back."""
    from sedm.runtime.devices import autocast

    x = to_input(torch.from_numpy(np.ascontiguousarray(images)).to(device))
    h, w = x.shape[-2:]
    x = torch.nn.functional.pad(x, (0, -w % div, 0, -h % div), value=1.0)
    with autocast(device, amp):
        pred = model(x)[..., :h, :w].argmax(1) + 1
    return pred.to(torch.uint8).cpu().numpy()


def load_init_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Initialise from a local weights file (safetensors or a torch state dict); shapes must match."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "segmentation.init_weights", "file does not exist",
                         "give a local .safetensors / .pt state dict of the same architecture, or null")
    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                                     weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(path, "segmentation.init_weights", f"does not fit the configured U-Net ({exc})"[:500],
                         "use weights saved for the same channels / res_units / norm / classes") from None


def save_model_dir(out: str | Path, meta: Mapping[str, Any], weights: Mapping[str, Mapping[str, torch.Tensor]],
                   extra_files: Mapping[str, Path] = {}) -> None:
    """Atomically write ``out/`` with config.json, ``<name>.safetensors`` per weights and extra files."""
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for name, state in weights.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / f"{name}.safetensors"))
        for name, src in extra_files.items():
            (tmp / name).write_bytes(Path(src).read_bytes())


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise InputError(model_dir, "config.json", "not a segmentation model directory",
                         "pass the --out folder of `sedm train-seg`")
    return json.loads(path.read_text())


def load_model(model_dir: str | Path, which: str = "best",
               device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode on ``device``, meta) from a model directory."""
    meta = read_meta(model_dir)
    weights = Path(model_dir) / f"{which}.safetensors"
    if not weights.is_file():
        raise InputError(weights, None, "weights file missing", f"use one of {WEIGHTS} that exists")
    model = build_model(meta["architecture"])
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval(), meta
