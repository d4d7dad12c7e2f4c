"""The one place synthesis touches the diffusion model: a loaded model plus sampling settings.

``sedm synthesize`` and ``sedm stylize`` both call :class:`Generator`; it wraps
:class:`sedm.diffusion.pipeline.StedmPipeline` and pins the sampler, steps and guidance so every
batch of a job is drawn the same way. :func:`check_model` reads only ``config.json``, so a class
map or resolution mismatch is reported before the weights are loaded.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from sedm.errors import InputError

SETTINGS = ("sampler", "steps", "guidance_scale", "guidance_rescale")


def sampling_options(syn: dict[str, Any]) -> dict[str, Any]:
    """The config ``synthesis`` section's sampling options, as :class:`Generator` takes them."""
    return {k: syn[k] for k in (*SETTINGS, "stain_match")}


@cache
def _sha256(path: Path, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_sha256(model_dir: str | Path) -> str:
    """sha256 of the model's weights file (the checkpoint a synthetic sample was drawn from)."""
    from sedm.models.io import WEIGHTS_NAME

    path = Path(model_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise InputError(model_dir, WEIGHTS_NAME, "weights file missing", "re-run `sedm train-diffusion`")
    st = path.stat()
    return _sha256(path.resolve(), st.st_mtime_ns, st.st_size)


def check_model(model_dir: str | Path, classes: list[str]) -> dict[str, Any]:
    """The model's config (``config.json`` "model" section), after checking it was trained on ``classes``."""
    from sedm.models.io import read_model_config

    mcfg = read_model_config(model_dir)["model"]
    if list(mcfg["classes"]) != list(classes):
        raise InputError(model_dir, "classes", f"the model was trained with classes {mcfg['classes']}, the config "
                         f"names {list(classes)}",
                         "use the config the model was trained with, or retrain the diffusion model")
    return mcfg


def model_mpp(model_config: dict[str, Any], store: str | Path) -> float:
    """The model's µm/px; models without one are taken to match the stores they are used with."""
    if model_config.get("mpp"):
        return float(model_config["mpp"])
    from sedm.tiling.store import SlideStore

    return SlideStore(Path(store)).mpp


class Generator:
    """``generator(labels, styles, seed=...)`` -> images; see :meth:`__call__`."""

    def __init__(self, model_dir: str | Path, *, device: str = "cpu", sampler: str | None = None,
                 steps: int | None = None, guidance_scale: float | None = None,
                 guidance_rescale: float | None = None, stain_match: float = 0.0) -> None:
        from sedm.diffusion.pipeline import StedmPipeline
        from sedm.models.io import load_model

        self.model_dir = Path(model_dir)
        self.model = load_model(self.model_dir, device=device)
        self.config = self.model.config
        self.pipeline = StedmPipeline(self.model)
        self.settings = self.resolve_settings(self.config.to_dict(), sampler=sampler, steps=steps,
                                              guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                                              stain_match=stain_match)
        self.weights_sha256 = model_sha256(self.model_dir)

    @classmethod
    def for_synthesis(cls, model_dir: str | Path, syn: dict[str, Any], device: str) -> "Generator":
        """A generator drawing as the config's ``synthesis`` section says."""
        return cls(model_dir, device=device, **sampling_options(syn))

    @staticmethod
    def resolve_settings(model_config: dict[str, Any], *, stain_match: float = 0.0, **overrides: Any) -> dict[str, Any]:
        """Sampling settings: each override, or the model's default where it is None."""
        out = {k: model_config[k] if overrides.get(k) is None else overrides[k] for k in SETTINGS}
        out["steps"] = int(out["steps"])
        out["guidance_scale"] = float(out["guidance_scale"])
        out["guidance_rescale"] = float(out["guidance_rescale"])
        out["stain_match"] = float(stain_match)
        return out

    @property
    def size_multiple(self) -> int:
        return self.pipeline.size_multiple

    def __call__(self, labels: np.ndarray, styles: np.ndarray, *, seed: int,
                 init_images: np.ndarray | None = None, strength: float = 1.0) -> np.ndarray:
        """(B, H, W) uint8 layouts + (B, N, h, w, 3) uint8 style patches -> (B, H, W, 3) uint8.

        ``init_images`` (B, H, W, 3) uint8 with ``strength`` < 1: SDEdit, keep their structure.
        """
        return self.pipeline(labels, styles, seed=seed, init_images=init_images, strength=strength,
                             **self.settings)
