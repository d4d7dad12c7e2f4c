"""Truth stores and prediction Zarrs as ``sedm evaluate`` reads them, from small label arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from sedm.segmentation.outputs import PREDICTED_LABELS
from sedm.tiling.store import create_store


def write_truth(path: Path, slide_id: str, labels: np.ndarray, classes: list[str]) -> Path:
    """A one-tile, one-level store whose annotation is ``labels`` (H, W) and whose tissue is everywhere."""
    h, w = labels.shape
    root = create_store(path, slide_id=slide_id, height=h, width=w, mpp=1.0, tile_size=max(h, w), levels=1,
                        classes=classes, provenance={})
    root["labels/annotation/0"][:] = np.asarray(labels, np.uint8)
    root["labels/tissue/0"][:] = 1
    return path


def write_prediction(path: Path, slide_id: str, labels: np.ndarray, classes: list[str]) -> Path:
    """A prediction Zarr of ``labels`` (H, W) for ``slide_id``, as ``sedm predict`` names it."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    labels = np.asarray(labels, np.uint8)
    root.create_array(PREDICTED_LABELS, data=labels, chunks=labels.shape)
    root.attrs["sedm"] = {"slide_id": slide_id, "classes": classes}
    return path
