"""Builders shared by the synthesis and stylize tests: tiny stores and a tiny random STEDM model.

The model is randomly initialised (never trained): provenance, resume and reproducibility do not
depend on image quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sedm.tiling.store import create_store
from sedm.tiling.table import TILE_COLUMNS, fraction_columns, tile_table_path

CLASSES = ["tumour", "stroma"]
MPP = 1.0
TILE = 64
PATCH = 32


def make_store(path: Path, slide_id: str, *, classes: list[str] = CLASSES, size: int = 128, tile: int = TILE,
               mpp: float = MPP, tint: tuple[int, int, int] = (200, 120, 180), labelled: bool = True,
               tissue_tiles: set[tuple[int, int]] | None = None, seed: int = 0) -> Path:
    """A store of ``size`` px at ``mpp`` with a tile table; ``tissue_tiles`` (row, col) have tissue
    (default: all), the others are listed with tissue_fraction 0.01. Labelled stores get class 1 in
    the top half, class 2 bottom-left, unannotated bottom-right."""
    rng = np.random.default_rng(seed)
    root = create_store(path, slide_id=slide_id, height=size, width=size, mpp=mpp, tile_size=tile, levels=1,
                        classes=classes, provenance={"source": "test"})
    img = np.clip(np.array(tint)[None, None] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    labels = np.zeros((size, size), np.uint8)
    if labelled:
        labels[: size // 2] = 1
        labels[size // 2:, : size // 2] = 2
    n = size // tile
    tissue_tiles = {(r, c) for r in range(n) for c in range(n)} if tissue_tiles is None else tissue_tiles
    tissue = np.zeros((size, size), np.uint8)
    rows = []
    for r in range(n):
        for c in range(n):
            y, x = r * tile, c * tile
            has = (r, c) in tissue_tiles
            if has:
                tissue[y:y + tile, x:x + tile] = 1
            else:
                img[y:y + tile, x:x + tile] = 245
            lab = labels[y:y + tile, x:x + tile]
            fr = [float((lab == v).mean()) for v in range(len(classes) + 1)]
            rows.append([slide_id, r, c, y, x, 1.0 if has else 0.01, *fr])
    root["0"][:] = np.moveaxis(img, -1, 0)
    root["labels/annotation/0"][:] = labels
    root["labels/tissue/0"][:] = tissue
    pd.DataFrame(rows, columns=[*TILE_COLUMNS, *fraction_columns(classes)]).to_parquet(tile_table_path(path))
    return path


def make_model(path: Path, *, classes: list[str] = CLASSES, mpp: float | None = MPP, seed: int = 0) -> Path:
    """A ~60k-parameter random STEDM model directory (32 px patches, 2 style patches, 2 steps)."""
    import torch

    from sedm.models.codec import PixelCodec
    from sedm.models.io import save_model
    from sedm.models.presets import model_config
    from sedm.models.stedm import StedmModel

    cfg = model_config(dict(preset="tiny", patch_size=PATCH, style_patch_size=PATCH, block_out_channels=[8, 16],
                            attention_levels=[False, False], attention_head_dim=8, norm_num_groups=4, style_dim=16,
                            style_encoder_channels=[8, 16], n_style=2, steps=2), list(classes), mpp=mpp)
    torch.manual_seed(seed)
    model = StedmModel(cfg)
    model.codec = PixelCodec()
    save_model(model, path)
    return path



def make_synthetic_set(path: Path, images: np.ndarray, slide_id: str = "U", *, mpp: float = MPP,
                       classes: list[str] = CLASSES, provenance: list[dict] | None = None) -> Path:
    """A synthetic store as ``sedm synthesize`` writes it (images, labels, attrs) holding ``images``;
    ``provenance``: one dict per image with the layout_* and aug_* columns (the rest is filled)."""
    import zarr

    from sedm.synthesis.shards import PROVENANCE_COLUMNS, PROVENANCE_FILE

    images = np.ascontiguousarray(images, dtype=np.uint8)
    n, size = images.shape[:2]
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("images", data=images, chunks=(1, size, size, 3))
    root.create_array("labels", data=np.zeros(images.shape[:3], np.uint8), chunks=(1, size, size))
    root.attrs["sedm"] = {"slide_id": slide_id, "mpp": mpp, "classes": list(classes), "n_samples": int(n),
                          "patch_size": int(size)}
    if provenance is not None:
        rows = [{"sample": i, "layout_target_class": classes[0], "style_slide": slide_id, "style_y": [0],
                 "style_x": [0], **row} for i, row in enumerate(provenance)]
        pd.DataFrame(rows, columns=list(PROVENANCE_COLUMNS)).to_parquet(Path(path) / PROVENANCE_FILE, index=False)
    return path
