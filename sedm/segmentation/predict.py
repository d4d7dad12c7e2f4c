"""``sedm predict``: whole-slide segmentation of one store with one trained arm.

The slide is processed in square blocks of whole tiles, each read with a context margin of half a
window, predicted with overlapping windows blended by gaussian weights (MONAI
``sliding_window_inference``), cropped back and written into the prediction Zarr. Memory is
bounded by the block size, not the slide size, and only blocks containing listed tissue tiles are
computed. Labels outside the store's tissue mask are 0. A model of a ``stain_norm`` arm sees every
tile normalised to the target stored in its directory (:mod:`sedm.segmentation.transforms`).

Outputs (each written atomically):

* ``PRED.zarr``: an OME-NGFF 0.5 label image (napari and QuPath open it; :mod:`sedm.ome`): arrays
  ``0``, ``1``, ... (H, W) uint8, level 0 at the store's µm/px (values as in sedm.labels, 0 outside
  tissue), as many levels as the slide's store, class names and colours in ``image-label``, whose
  ``source`` is the slide's store (a path relative to the prediction, so a results folder moves
  whole). Optionally ``probabilities`` (K, H, W) float16 at level 0. ``attrs["sedm"]`` names slide,
  arm, classes, µm/px and model.
* an overlay PNG (slide thumbnail with class colours, and a legend of them below it),
* a GeoJSON FeatureCollection of the predicted regions (QuPath annotations with classification
  name and colour) in level-0 pixel coordinates of the original slide.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import torch
import zarr
from PIL import Image, ImageDraw
from shapely.geometry import LineString, mapping
from skimage.measure import find_contours
from tqdm import tqdm

from sedm import __version__, ome
from sedm.atomic import atomic_path, write_text
from sedm.config import add_config_arguments, load_config
from sedm.errors import InputError
from sedm.labels import UNANNOTATED, class_rgb, class_values
from sedm.segmentation.model import load_model, read_meta, to_input
from sedm.segmentation.outputs import PREDICTED_LABELS, PROBABILITIES
from sedm.segmentation.transforms import read_window, stored_normaliser
from sedm.runtime.devices import autocast, resolve_device
from sedm.tiling.slides import same_mpp
from sedm.tiling.store import SlideStore, compressor

log = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.45
LEGEND_SWATCH, LEGEND_PAD = 10, 4
"""Side of a class colour square in the overlay legend, and the spacing around its entries (px)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "sedm config or the segmentation stage snapshot")
    parser.add_argument("--model", required=True, type=Path, help="model directory of `sedm train-seg`")
    parser.add_argument("--store", required=True, type=Path, help="slide store (.zarr) to segment")
    parser.add_argument("--out", required=True, type=Path, help="prediction Zarr to write")
    parser.add_argument("--overlay", required=True, type=Path, help="overlay PNG to write")
    parser.add_argument("--geojson", required=True, type=Path, help="QuPath GeoJSON to write")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.runtime)
    if args.threads:
        torch.set_num_threads(args.threads)
    predict(cfg, model_dir=args.model, store_path=args.store, out=args.out, overlay=args.overlay,
            geojson=args.geojson)
    return 0


# ----------------------------------------------------------------------------------------- checks
def check_compatible(meta: Mapping[str, Any], store: SlideStore, model_dir: Path) -> None:
    """The model must see the slide at its training µm/px and know the store's classes."""
    if not same_mpp(float(meta["mpp"]), store.mpp):
        raise InputError(store.path, "mpp", f"store is at {store.mpp} µm/px but model {model_dir} was trained at "
                         f"{meta['mpp']} µm/px", "tile the test slides at the training tiling.mpp")
    if list(meta["classes"]) != store.classes:
        raise InputError(store.path, "attrs.sedm.classes", f"store classes {store.classes} differ from the model's "
                         f"{meta['classes']}", "tile and train with the same classes list")


def class_colors(store: SlideStore) -> dict[int, tuple[int, int, int]]:
    """Label value -> RGB, from the store's OME-NGFF label colours (so QuPath, napari and PNG agree)."""
    colors = {v: class_rgb(v) for v in class_values(store.classes).values()}
    try:
        attrs = zarr.open_group(str(store.path / "labels" / "annotation"), mode="r").attrs["ome"]
        for entry in attrs["image-label"]["colors"]:
            colors[int(entry["label-value"])] = tuple(int(c) for c in entry["rgba"][:3])
    except (KeyError, TypeError, FileNotFoundError, ValueError):
        pass
    return colors


# ------------------------------------------------------------------------------------ prediction
def block_tiles(store: SlideStore, block_size: int) -> int:
    """Tiles per block side."""
    return max(1, block_size // store.tile_size)


def blocks(store: SlideStore, block_size: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) of the blocks of whole tiles that contain at least one listed tissue tile."""
    t = store.tile_size
    bt = block_tiles(store, block_size)
    h, w = store.shape
    tiles = store.tiles()
    keys = sorted({(int(y) // t // bt, int(x) // t // bt) for y, x in zip(tiles["y"], tiles["x"])})
    return [(by * bt * t, bx * bt * t, min(h, (by + 1) * bt * t), min(w, (bx + 1) * bt * t)) for by, bx in keys]


def predict_window(model: torch.nn.Module, image: np.ndarray, *, patch: int, overlap: float, batch: int,
                   device: torch.device, amp: bool = True) -> torch.Tensor:
    """(K, h, w) float32 class probabilities of an (h, w, 3) uint8 window, gaussian-blended."""
    from monai.inferers import sliding_window_inference

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            return torch.softmax(model(x).float(), dim=1)

    x = to_input(torch.from_numpy(np.ascontiguousarray(image))[None].to(device))
    with torch.inference_mode():
        probs = sliding_window_inference(x, roi_size=(patch, patch), sw_batch_size=batch, predictor=predictor,
                                         overlap=overlap, mode="gaussian", padding_mode="constant", cval=1.0)
    return probs[0].float().cpu()


def _create_prediction(path: Path, out: Path, store: SlideStore, meta: Mapping[str, Any], model_dir: Path,
                       probabilities: bool, block_size: int) -> zarr.Group:
    """The empty prediction store at ``path`` (a temporary name of ``out``, whose location the link to
    the slide's store is relative to). Label chunks are tiles, as in the slide's store; a shard is a
    block (:func:`blocks`), which is written whole, so the levels cost one file per block, not per tile."""
    h, w = store.shape
    t = store.tile_size
    side = block_tiles(store, block_size) * t
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    for k in range(store.levels):
        d = 2**k
        root.create_array(str(k), shape=(-(-h // d), -(-w // d)), chunks=(t // d, t // d),
                          shards=(side // d, side // d), dtype="uint8", fill_value=0, compressors=compressor(),
                          dimension_names=("y", "x"))
    if probabilities:
        k = len(store.classes)
        root.create_array(PROBABILITIES, shape=(k, h, w), chunks=(k, t, t), dtype="float16", fill_value=0.0,
                          compressors=compressor(), dimension_names=("c", "y", "x"))
    source = os.path.relpath(store.path.resolve(), Path(out).resolve())
    colors = class_colors(store)  # those of the overlay and the GeoJSON too
    values = {v: (name, colors[v]) for name, v in class_values(store.classes).items()}
    root.attrs["ome"] = ome.label_image(str(meta.get("arm") or "prediction"), store.mpp, store.levels, values,
                                        source=source)
    root.attrs["sedm"] = {"slide_id": store.slide_id, "arm": meta.get("arm"), "classes": store.classes,
                          "class_values": class_values(store.classes), "unannotated_value": UNANNOTATED,
                          "mpp": store.mpp, "store": str(store.path), "model": str(model_dir),
                          "model_fingerprint": meta.get("fingerprint"), "sedm_version": __version__}
    return root


def _write_labels(root: zarr.Group, levels: int, labels: np.ndarray, y0: int, x0: int) -> None:
    """A block of level-0 labels at (y0, x0) into every level of the pyramid; blocks are whole tiles,
    so (y0, x0) falls on a pixel of every level."""
    for k in range(levels):
        if k:
            labels = ome.downsample_labels(labels)
        d = 2**k
        root[str(k)][y0 // d:y0 // d + labels.shape[0], x0 // d:x0 // d + labels.shape[1]] = labels


def sample_grid(read_rows: Callable[[int, int], np.ndarray], n_rows: int, row_idx: np.ndarray,
                col_idx: np.ndarray, band: int) -> np.ndarray:
    """Pick rows ``row_idx`` and columns ``col_idx`` of a large array read in bands of ``band`` rows."""
    parts = []
    for b0 in range(0, n_rows, band):
        sel = row_idx[(row_idx >= b0) & (row_idx < b0 + band)]
        if len(sel):
            rows = read_rows(b0, min(n_rows, b0 + band))
            parts.append(rows[sel - b0][:, col_idx])
    return np.concatenate(parts)


def predict(cfg: Mapping[str, Any], *, model_dir: Path, store_path: Path, out: Path, overlay: Path,
            geojson: Path, device: str | None = None) -> dict[str, Any]:
    """Segment one store; returns a few figures (blocks, seconds, pixels per class)."""
    inf = cfg["segmentation"]["inference"]
    model_dir, store = Path(model_dir), SlideStore(store_path)
    meta = read_meta(model_dir)
    check_compatible(meta, store, model_dir)
    dev = resolve_device(device or cfg["segmentation"]["device"])
    model, meta = load_model(model_dir, inf["weights"], dev)
    normalise = stored_normaliser(meta, model_dir)  # the training target, applied per tile as in training
    patch, margin = int(meta["patch_size"]), int(meta["patch_size"]) // 2
    h, w = store.shape
    todo = blocks(store, int(inf["block_size"]))
    t0 = time.perf_counter()
    with atomic_path(out) as tmp:
        root = _create_prediction(tmp, out, store, meta, model_dir, bool(inf["save_probabilities"]),
                                  int(inf["block_size"]))
        for y0, x0, y1, x1 in tqdm(todo, desc=f"predict {store.slide_id}", file=sys.stderr, mininterval=2.0):
            wy0, wx0 = max(0, y0 - margin), max(0, x0 - margin)
            wy1, wx1 = min(h, y1 + margin), min(w, x1 + margin)
            image = read_window(store, wy0, wx0, wy1 - wy0, wx1 - wx0, normalise)
            probs = predict_window(model, image, patch=patch,
                                   overlap=float(inf["overlap"]), batch=int(inf["batch_size"]), device=dev,
                                   amp=bool(cfg["segmentation"]["amp"]))
            probs = probs[:, y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
            labels = (probs.argmax(0) + 1).to(torch.uint8).numpy()
            tissue = store.read_tissue(y0, x0, y1 - y0, x1 - x0).astype(bool)
            labels[~tissue] = UNANNOTATED
            _write_labels(root, store.levels, labels, y0, x0)
            if PROBABILITIES in root:
                root[PROBABILITIES][:, y0:y1, x0:x1] = (probs * torch.from_numpy(tissue)).to(torch.float16).numpy()
        seconds = time.perf_counter() - t0
        root.attrs["sedm"] = {**root.attrs["sedm"], "blocks": len(todo), "seconds": round(seconds, 2),
                              "stain_norm": normalise.method if normalise is not None else None}
        pred = root[PREDICTED_LABELS]
        band = store.tile_size * 4

        colors = class_colors(store)
        write_overlay(overlay, store, pred, colors, int(inf["overlay_max_size"]), band)
        f = max(1, int(round(float(inf["vector_mpp"]) / store.mpp)))
        small = sample_grid(lambda a, b: pred[a:b], h, np.arange(0, h, f), np.arange(0, w, f), band)
        write_geojson(geojson, small, f, store, colors, simplify=float(inf["simplify_px"]),
                      min_area_px=float(inf["min_area_um2"]) / (store.mpp * f) ** 2)
        counts = np.bincount(small.ravel(), minlength=len(store.classes) + 1)
    log.info("%s: %d blocks in %.1f s -> %s", store.slide_id, len(todo), seconds, out)
    return {"blocks": len(todo), "seconds": seconds, "counts": counts.tolist()}


# ----------------------------------------------------------------------------------------- overlay
def legend(entries: Sequence[tuple[str, tuple[int, int, int]]], width: int) -> Image.Image:
    """A white band of colour squares with their class names, wrapped into rows of ``width`` px (wider
    when a single entry needs it)."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sizes = [draw.textbbox((0, 0), name) for name, _ in entries]
    line = max([LEGEND_SWATCH] + [b[3] - b[1] for b in sizes])
    items = [LEGEND_SWATCH + LEGEND_PAD + (b[2] - b[0]) for b in sizes]
    width = max([width] + [w + 2 * LEGEND_PAD for w in items])
    places, x, y = [], LEGEND_PAD, LEGEND_PAD
    for w in items:
        if x > LEGEND_PAD and x + w + LEGEND_PAD > width:
            x, y = LEGEND_PAD, y + line + LEGEND_PAD
        places.append((x, y))
        x += w + 2 * LEGEND_PAD
    band = Image.new("RGB", (width, y + line + LEGEND_PAD), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for (name, rgb), (x, y), box in zip(entries, places, sizes):
        top = y + (line - LEGEND_SWATCH) // 2
        draw.rectangle((x, top, x + LEGEND_SWATCH - 1, top + LEGEND_SWATCH - 1), fill=tuple(rgb), outline=(0, 0, 0))
        draw.text((x + LEGEND_SWATCH + LEGEND_PAD - box[0], y + (line - (box[3] - box[1])) // 2 - box[1]), name,
                  fill=(0, 0, 0))
    return band


def write_overlay(path: Path, store: SlideStore, pred: zarr.Array, colors: Mapping[int, tuple[int, int, int]],
                  max_size: int, band: int) -> None:
    """Thumbnail of the slide with predicted classes blended in, longest side <= ``max_size``, above a
    legend of the class colours (named as the store's classes, i.e. the config's)."""
    h, w = store.shape
    f = max(1, -(-max(h, w) // max_size))  # store pixels per overlay pixel
    rows, cols = np.arange(0, h, f), np.arange(0, w, f)
    level = max(k for k in range(store.levels) if 2**k <= f)  # coarsest pyramid level not coarser than f
    d = 2**level
    lh = -(-h // d)
    image = sample_grid(lambda a, b: store.read_image(a, 0, b - a, -(-w // d), level=level), lh,
                        np.minimum(rows // d, lh - 1), np.minimum(cols // d, -(-w // d) - 1), band)
    labels = sample_grid(lambda a, b: pred[a:b], h, rows, cols, band)
    out = image.astype(np.float32)
    for value, rgb in colors.items():
        sel = labels == value
        out[sel] = (1 - OVERLAY_ALPHA) * out[sel] + OVERLAY_ALPHA * np.asarray(rgb, np.float32)
    thumb = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    key = legend([(name, colors[value]) for name, value in class_values(store.classes).items()], thumb.width)
    canvas = Image.new("RGB", (key.width, thumb.height + key.height), (255, 255, 255))
    canvas.paste(thumb, (0, 0))
    canvas.paste(key, (0, thumb.height))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


# ----------------------------------------------------------------------------------------- GeoJSON
def mask_polygons(mask: np.ndarray) -> list[shapely.Polygon]:
    """Polygons (with holes) covering the True pixels of ``mask``, in pixel-edge coordinates (x, y).

    Contours at 0.5 of the zero-padded mask are closed; polygonising them gives non-overlapping faces
    (an outline with its holes, islands inside holes, ...), of which the faces lying on True
    pixels are kept.
    """
    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float32), 1)
    lines = [LineString(c[:, ::-1] - 0.5) for c in find_contours(padded, 0.5) if len(c) >= 4]
    faces = shapely.get_parts(shapely.polygonize(lines))
    keep = []
    for face in faces:
        p = face.representative_point()
        iy, ix = int(np.floor(p.y)), int(np.floor(p.x))
        if 0 <= iy < mask.shape[0] and 0 <= ix < mask.shape[1] and mask[iy, ix]:
            keep.append(face)
    return keep


def _to_slide(store: SlideStore) -> tuple[float, float]:
    """(sx, sy): store pixels -> level-0 pixels of the original slide (for QuPath)."""
    attrs = store.attrs
    dims, width, height = attrs.get("source_dimensions"), attrs.get("width"), attrs.get("height")
    if dims and width and height:
        return float(dims[0]) / float(width), float(dims[1]) / float(height)
    if attrs.get("source_mpp"):
        s = store.mpp / float(attrs["source_mpp"])
        return s, s
    log.warning("%s records no source µm/px: GeoJSON coordinates are store pixels", store.path)
    return 1.0, 1.0


def write_geojson(path: Path, labels: np.ndarray, factor: int, store: SlideStore,
                  colors: Mapping[int, tuple[int, int, int]], simplify: float, min_area_px: float) -> int:
    """QuPath-importable FeatureCollection of the regions of each class; returns the feature count.

    ``labels`` is the prediction sampled every ``factor`` store pixels.
    """
    sx, sy = _to_slide(store)
    features = []
    for name, value in class_values(store.classes).items():
        for poly in mask_polygons(labels == value):
            if simplify > 0:
                poly = poly.simplify(simplify, preserve_topology=True)
            if poly.is_empty or poly.area < min_area_px:
                continue
            poly = shapely.transform(poly, lambda xy: xy * np.array([factor * sx, factor * sy]))
            features.append({"type": "Feature", "geometry": mapping(poly),
                             "properties": {"objectType": "annotation", "isLocked": False,
                                            "classification": {"name": name, "color": list(colors[value])}}})
    doc = {"type": "FeatureCollection", "features": features}
    write_text(path, json.dumps(doc, separators=(",", ":")) + "\n")
    return len(features)
