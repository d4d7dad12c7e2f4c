"""Small slide stores, synthesis stores and sample sheets for the segmentation / evaluation tests.

Written with sedm.tiling.store.create_store (the same layout ``sedm tile`` writes), so the tests do not
depend on the tiling stage. Images are coloured by class (plus noise), so a tiny network can learn
them in a few steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from scipy import ndimage

from sedm.tiling.store import create_store
from sedm.tiling.table import TILE_COLUMNS, fraction_columns, tile_table_path

CLASSES = ["tumour", "stroma", "necrosis"]
CLASS_RGB = np.array([[255, 255, 255], [170, 40, 110], [235, 160, 200], [110, 60, 170]], np.float32)


def random_layout(rng: np.random.Generator, size: int, n_classes: int, blur: float = 6.0) -> np.ndarray:
    """(size, size) labels 1..K from smoothed random fields (blobby regions)."""
    fields = [ndimage.gaussian_filter(rng.standard_normal((size, size)), blur) for _ in range(n_classes)]
    return (np.argmax(np.stack(fields), axis=0) + 1).astype(np.uint8)


def render(labels: np.ndarray, rng: np.random.Generator, noise: float = 12.0) -> np.ndarray:
    """RGB image whose colour follows the classes (label 0 -> glass white)."""
    rgb = CLASS_RGB[labels] + rng.normal(0, noise, labels.shape + (3,))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def make_store(path: Path, slide_id: str, *, size: int = 256, tile: int = 64, mpp: float = 1.0,
               classes: list[str] = CLASSES, seed: int = 0, levels: int = 2,
               unannotated_rows: int = 0, glass_cols: int = 0, source_mpp: float | None = None) -> Path:
    """A store of a ``size`` x ``size`` slide. The first ``unannotated_rows`` rows have tissue but no
    annotation (label 0); the last ``glass_cols`` columns are glass (no tissue, no tile listed)."""
    rng = np.random.default_rng(seed)
    truth = random_layout(rng, size, len(classes))
    tissue = np.ones((size, size), np.uint8)
    if glass_cols:
        tissue[:, size - glass_cols:] = 0
    image = render(truth * tissue, rng)
    labels = truth * tissue
    labels[:unannotated_rows] = 0
    prov = {} if source_mpp is None else {"source_mpp": source_mpp,
                                          "source_dimensions": [round(size * mpp / source_mpp)] * 2,
                                          "width": size, "height": size}
    root = create_store(path, slide_id=slide_id, height=size, width=size, mpp=mpp, tile_size=tile,
                        levels=levels, classes=classes, provenance=prov)
    rows = []
    for r in range(size // tile):
        for c in range(size // tile):
            y, x = r * tile, c * tile
            t = tissue[y:y + tile, x:x + tile]
            if not t.any():
                continue
            lab = labels[y:y + tile, x:x + tile]
            frac = np.bincount(lab.ravel(), minlength=len(classes) + 1) / lab.size
            rows.append({"slide_id": slide_id, "row": r, "col": c, "y": y, "x": x,
                         "tissue_fraction": float(t.mean()),
                         **dict(zip(fraction_columns(classes), frac.tolist()))})
            root["labels/annotation/0"][y:y + tile, x:x + tile] = lab
            root["labels/tissue/0"][y:y + tile, x:x + tile] = t
            for k in range(levels):
                d = 2**k
                root[str(k)][:, y // d:(y + tile) // d, x // d:(x + tile) // d] = \
                    np.moveaxis(image[y:y + tile:d, x:x + tile:d], -1, 0)
    pd.DataFrame(rows, columns=[*TILE_COLUMNS, *fraction_columns(classes)]).to_parquet(tile_table_path(path))
    return path


def make_synthetic(path: Path, slide_id: str, *, n: int = 8, size: int = 64, mpp: float = 1.0,
                   classes: list[str] = CLASSES, seed: int = 1) -> Path:
    """A synthesis store in the format the synthesis stage writes (images, labels, attrs sedm)."""
    rng = np.random.default_rng(seed)
    labels = np.stack([random_layout(rng, size, len(classes), blur=4.0) for _ in range(n)])
    images = np.stack([render(lab, rng) for lab in labels])
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("images", data=images, chunks=(1, size, size, 3))
    root.create_array("labels", data=labels, chunks=(1, size, size))
    root.attrs["sedm"] = {"classes": list(classes), "mpp": mpp, "slide_id": slide_id}
    return path


def make_model_dir(path, mpp=1.0, patch=32, seed=0):
    """A model directory with random weights (prediction mechanics do not need a trained model)."""
    import torch

    from sedm.segmentation.model import architecture, build_model, save_model_dir

    cfg = tiny_config(patch_size=patch)
    arch = architecture(cfg["segmentation"], len(CLASSES))
    torch.manual_seed(seed)
    state = build_model(arch).state_dict()
    meta = {"architecture": arch, "classes": CLASSES, "mpp": mpp, "patch_size": patch, "arm": "real"}
    save_model_dir(path, meta, {"best": state, "last": state})
    return path


def write_samples(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """Sample sheet from (slide_id, patient_id, role) rows (paths are placeholders)."""
    lines = ["slide_id\tpatient_id\tslide_path\tannotation_path\trole"]
    for slide, patient, role in rows:
        ann = "" if role == "unlabelled" else f"ann/{slide}.geojson"
        lines.append(f"{slide}\t{patient}\tslides/{slide}.tiff\t{ann}\t{role}")
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_config(**segmentation) -> dict:
    """A validated config with a U-Net small enough to train in seconds on one CPU thread."""
    from sedm.config import validate_config

    seg = {"patch_size": 32, "channels": [4, 8], "res_units": 0, "batch_size": 4, "max_steps": 12,
           "warmup_steps": 2, "lr": 0.01, "val_every": 4, "ckpt_every": 5, "log_every": 1, "num_workers": 0,
           "val_tiles": 4, "min_annotated_fraction": 0.05, "device": "cpu",
           "inference": {"block_size": 128, "batch_size": 8, "overlay_max_size": 100, "vector_mpp": 2.0}}
    seg.update(segmentation)
    return validate_config({"samples": "samples.tsv", "classes": CLASSES, "seed": 3, "segmentation": seg,
                            "evaluation": {"n_boot": 1000}})
