"""The OME-NGFF 0.5 metadata of the Zarr stores sedm writes: one definition for the tile stores
(:mod:`sedm.tiling.store`) and the predictions (:mod:`sedm.segmentation.predict`), so napari, QuPath
and every OME-Zarr reader see the same axes, µm/px and class colours in both.

Label images have as many levels as their image, each the level above picked every other pixel
(:func:`downsample_labels`): OME-Zarr 0.5 requires the levels to match, and a viewer showing the
slide zoomed out reads the labels at the same resolution instead of the full-resolution mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sedm.labels import class_rgb, class_values

VERSION = "0.5"
TISSUE_RGB = (0, 255, 0)
"""Colour of the tissue mask (its one label value, 1)."""


def axes(channel: bool) -> list[dict]:
    """(c,) y, x; spatial axes in micrometres."""
    out = [{"name": "c", "type": "channel"}] if channel else []
    return out + [{"name": n, "type": "space", "unit": "micrometer"} for n in ("y", "x")]


def level_scale(mpp: float, level: int, channel: bool) -> dict:
    """The scale transform of pyramid level ``level`` (each level halves the previous one)."""
    s = mpp * 2**level
    return {"type": "scale", "scale": ([1.0] if channel else []) + [s, s]}


def multiscales(name: str, mpp: float, levels: int, channel: bool) -> list[dict]:
    """One multiscale whose datasets are the arrays ``0`` .. ``levels - 1``."""
    return [{"name": name, "axes": axes(channel),
             "datasets": [{"path": str(k), "coordinateTransformations": [level_scale(mpp, k, channel)]}
                          for k in range(levels)]}]


def class_label_values(classes: Sequence[str]) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """Label value -> (class name, colour) of a class mask (sedm.labels; 0 has none: transparent)."""
    return {v: (name, class_rgb(v)) for name, v in class_values(list(classes)).items()}


def label_image(name: str, mpp: float, levels: int, values: Mapping[int, tuple[str, tuple[int, int, int]]],
                source: str) -> dict:
    """``attrs["ome"]`` of a label image: its pyramid, the name and colour of each label value, and
    ``source``, the path of its image group relative to the label image's group."""
    return {
        "version": VERSION,
        "multiscales": multiscales(name, mpp, levels, channel=False),
        "image-label": {"version": VERSION,
                        "colors": [{"label-value": v, "rgba": [*rgb, 255]} for v, (_, rgb) in values.items()],
                        "properties": [{"label-value": v, "class": c} for v, (c, _) in values.items()],
                        "source": {"image": source}},
    }


def downsample_labels(labels: np.ndarray) -> np.ndarray:
    """The next pyramid level of a (..., H, W) label mask: every other pixel, never a mean (a mean of
    two class values is a third class)."""
    return labels[..., ::2, ::2]
