"""Label values shared by every stage: the single place that defines them.

Stored label masks (tile stores, synthetic stores, predictions) use

* ``UNANNOTATED`` (0): pixels no annotation covers. Losses and metrics ignore them.
* ``1 .. K``: the classes of the config's ``classes`` list, in that order.

Layout one-hot tensors for the diffusion model have ``K + 1`` channels: channel 0 is the
"unannotated" channel and channel k is class k, so label value == channel index.

Label colours are defined here too (:data:`CLASS_RGB`): the store's OME-NGFF label colours (what
napari and QuPath show), prediction overlays and GeoJSON, training previews and synthesis montages.
"""

from __future__ import annotations

import numpy as np

UNANNOTATED = 0
"""Label value of pixels without annotation; ignored by segmentation losses and metrics."""
UNANNOTATED_RGB = (40, 40, 40)
"""Colour of unannotated pixels in label images (dark grey: apart from glass and every class)."""
CLASS_RGB = ((230, 60, 60), (60, 160, 230), (240, 200, 40), (120, 200, 90), (180, 90, 200),
             (255, 140, 0), (0, 200, 180), (150, 150, 150))
"""Colours of label values 1, 2, ...; repeated from the start for more classes."""


def class_values(classes: list[str]) -> dict[str, int]:
    """Map each class name to its stored label value (1-based, config order)."""
    return {name: i + 1 for i, name in enumerate(classes)}


def n_layout_channels(classes: list[str], tissue_channel: bool = False) -> int:
    """Channels of a one-hot layout: every class plus the unannotated channel (plus, for models that
    know it, the "tissue, class unknown" channel of :func:`unknown_tissue_value`)."""
    return len(classes) + 1 + int(tissue_channel)


def unknown_tissue_value(classes: list[str]) -> int:
    """Layout value meaning "tissue of unknown class" (K + 1), never stored in a label mask.

    Models trained with layout dropout learn it, so an image without a label mask can still be
    conditioned on where its tissue is (``sedm stylize`` without ``--mask``) instead of on
    "unannotated", which in fully annotated cohorts means glass.
    """
    return len(classes) + 1


def one_hot(labels: np.ndarray, n_channels: int) -> np.ndarray:
    """(..., H, W) uint8 labels -> (..., C, H, W) float32 one-hot with C = ``n_channels``."""
    eye = np.eye(n_channels, dtype=np.float32)
    out = eye[labels.astype(np.int64)]
    return np.moveaxis(out, -1, -3)


def class_rgb(value: int) -> tuple[int, int, int]:
    """The colour of label value ``value`` (>= 1)."""
    return CLASS_RGB[(value - 1) % len(CLASS_RGB)]


def colorize(labels: np.ndarray) -> np.ndarray:
    """(..., H, W) uint8 label values -> (..., H, W, 3) uint8 RGB."""
    lut = np.array([UNANNOTATED_RGB] + [class_rgb(v) for v in range(1, 256)], dtype=np.uint8)
    return lut[labels]
