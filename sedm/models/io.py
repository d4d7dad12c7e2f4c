"""A trained model as a directory: ``config.json`` + ``model.safetensors`` (+ ``vae/`` in latent mode).

The directory holds only what sampling needs (the EMA weights, no optimizer or training state), loads
without pickle, and is self-contained: the latent autoencoder is written into it, so the model can be
moved or archived without the path it was trained with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sedm.atomic import atomic_path
from sedm.errors import InputError
from sedm.models.codec import LatentCodec, PixelCodec, load_latent_codec, save_vae
from sedm.models.stedm import StedmConfig, StedmModel

FORMAT = "sedm-stedm"
FORMAT_VERSION = 2
"""2: optional stain-statistics style input and "unknown tissue" layout channel (version-1 models load
with both off)."""
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
VAE_DIR = "vae"


def save_model(model: StedmModel, path: str | Path, *, state_dict: dict[str, torch.Tensor] | None = None,
               metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` (or ``state_dict``, e.g. its EMA weights) atomically as a model directory.

    ``metadata`` (training provenance: steps, stores, µm/px, ...) goes into config.json under ``training``.
    """
    state = model.state_dict() if state_dict is None else state_dict
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.config.to_dict(),
                  "training": metadata or {}}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        if isinstance(model.codec, LatentCodec):
            save_vae(model.codec, tmp / VAE_DIR)


def read_model_config(path: str | Path) -> dict[str, Any]:
    """The parsed config.json of a model directory (model config + training metadata)."""
    path = Path(path)
    file = path / CONFIG_NAME
    if not file.is_file():
        raise InputError(path, None, "not a sedm diffusion model directory (no config.json)",
                         "pass the directory written by `sedm train-diffusion --out`")
    data = json.loads(file.read_text())
    if data.get("format") != FORMAT:
        raise InputError(file, "format", f"unexpected format {data.get('format')!r}",
                         "pass the directory written by `sedm train-diffusion --out`")
    version = data.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(file, "format_version", f"model format {version!r}; this sedm reads up to {FORMAT_VERSION}",
                         "upgrade sedm to the version that trained the model, or retrain it")
    if version == 1:  # before the stain-statistics input and the "unknown tissue" layout channel
        data["model"] = {"stain_statistics": False, "tissue_channel": False, **data["model"]}
    return data


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> StedmModel:
    """Rebuild the model of a model directory, ready for :class:`sedm.diffusion.pipeline.StedmPipeline`.

    Returned in eval mode on ``device``, with its codec (pixel or the bundled autoencoder) attached.
    """
    path = Path(path)
    data = read_model_config(path)
    config = StedmConfig.from_dict(data["model"])
    model = StedmModel(config)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise InputError(path, WEIGHTS_NAME, "weights file missing", "re-run `sedm train-diffusion`")
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise InputError(weights, None, f"weights do not match the config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})", "re-run `sedm train-diffusion`")
    model.codec = load_latent_codec(path / VAE_DIR) if config.latent else PixelCodec()
    model.codec.to(device)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
