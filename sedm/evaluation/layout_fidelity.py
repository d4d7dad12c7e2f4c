"""``sedm layout-fidelity``: do synthetic tiles carry what makes their classes recognisable?

A diffusion model can paint each layout region in its class's average colour and still look
plausible in a montage; segmentation then learns colour, not tissue. The check: the segmentation
model trained on real tiles alone (the baseline arm) segments the synthetic images, scored against
the layouts they were drawn from, next to its Dice on the real validation tiles. Close to the real
figure: synthetic tiles look like real tissue to a model that knows real tissue. Far below: they
do not (flat colour fields score low, since real tissue is textured). When synthesis restains its
tiles to the unlabelled slides' stains (``synthesis.stain_match``), the same validation tiles restained
the same way are the second reference: the gap to it is the generator's, the rest is the judge's
unfamiliarity with those stains.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sedm.atomic import write_text
from sedm.config import add_config_arguments, load_config
from sedm.errors import InputError
from sedm.evaluation.metrics import confusion_matrix, dice_iou, macro

log = logging.getLogger(__name__)

SegmentFn = Callable[[np.ndarray], np.ndarray]
"""``segment(images (B, H, W, 3) uint8) -> (B, H, W) uint8`` predicted label values."""


def synthetic_dice(segment: SegmentFn, sets: Mapping[str, Any], n_classes: int, batch_size: int = 16) -> dict:
    """Pooled macro Dice (and per class, per set) of ``segment`` on synthetic (image, layout) sets.

    ``sets`` maps a name (the style slide) to a sequence of (image, labels) pairs.
    """
    total = np.zeros((n_classes + 1, n_classes + 1), np.int64)
    per_set = {}
    for name, data in sets.items():
        cm = np.zeros_like(total)
        for start in range(0, len(data), batch_size):
            images, labels = zip(*(data[i] for i in range(start, min(start + batch_size, len(data)))))
            cm += confusion_matrix(np.stack(labels), segment(np.stack(images)), n_classes)
        per_set[name] = _finite(macro(dice_iou(cm)[0]))
        total += cm
    dice = dice_iou(total)[0]
    return {"macro_dice": _finite(macro(dice)), "dice_per_class": [_finite(d) for d in dice], "per_slide": per_set}


def validation_tiles(stores: list[str | Path], slides: list[str], classes: list[str],
                     max_tiles: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``max_tiles`` most annotated whole tiles of ``slides`` (the segmenter's validation slides) as
    (image, labels) pairs: the real tiles every reference figure of this module is measured on."""
    from sedm.tiling.store import SlideStore
    from sedm.tiling.table import fraction_columns

    tiles = []
    for path in stores:
        store = SlideStore(path)
        if store.slide_id not in slides:
            continue
        table = store.tiles()
        table = table.assign(_annotated=table[fraction_columns(classes)[1:]].sum(axis=1))
        annotated = table[table["_annotated"] > 0].sort_values("_annotated", ascending=False, kind="stable")
        t = store.tile_size
        for _, row in annotated.head(max_tiles - len(tiles)).iterrows():
            y, x = int(row["y"]), int(row["x"])
            image, labels = store.read_image(y, x, t, t), store.read_labels(y, x, t, t)
            if image.shape[:2] == (t, t):
                tiles.append((image, labels))
    if not tiles:
        raise InputError(None, "--stores", f"no whole annotated tile of the validation slides {slides}",
                         "pass the labelled stores, which hold the segmenter's validation slides")
    return tiles


TEXTURE_SIGMA = 2.0
"""Gaussian σ in px that splits a tile into regional colour (the blurred tile) and texture (the rest)."""


def with_texture_of(original: np.ndarray, reconstruction: np.ndarray, sigma: float = TEXTURE_SIGMA) -> np.ndarray:
    """(B, H, W, 3) uint8: the original's regional colour plus the reconstruction's texture. The
    segmenter's Dice on these, beside its Dice on the reconstructions, splits what a decoder loses into
    texture and regional colour: segmenters trained on few stains tell classes apart by colour
    differences of a few grey levels, which a decoder with a legible texture can still miss."""
    from scipy.ndimage import gaussian_filter

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="reflect")

    mixed = blur(original) + reconstruction.astype(np.float32) - blur(reconstruction)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def reconstruction_dice(segment: SegmentFn, autoencoder: str | Path, tiles: list[tuple[np.ndarray, np.ndarray]],
                        classes: list[str], batch_size: int = 16) -> dict:
    """The segmenter's macro Dice on its validation ``tiles`` as they are and as the latent autoencoder
    reconstructs them (plain decoder; the layout decoder given the tile's own labels): the ceiling a
    latent diffusion model can reach with that autoencoder; ``<decoder>_texture``: the same on
    :func:`with_texture_of` the reconstructions (what the texture alone costs)."""
    import torch

    from sedm.labels import n_layout_channels, one_hot
    from sedm.models.codec import load_latent_codec
    from sedm.models.stedm import stain_condition

    codec = load_latent_codec(autoencoder)
    n_layout = n_layout_channels(classes, tissue_channel=True)
    variants: dict[str, list] = {"original": [], "autoencoder": [], "layout_decoder": []}
    with torch.no_grad():
        for start in range(0, len(tiles), batch_size):
            images, labels = (np.stack(v) for v in zip(*tiles[start:start + batch_size]))
            x = torch.from_numpy(images).movedim(-1, 1).float() / 127.5 - 1
            latents = codec.encode(x)
            layout = torch.from_numpy(np.stack([one_hot(lab, n_layout) for lab in labels]))
            decoded = {"autoencoder": codec.decode(latents)}
            if codec.layout_decoder is not None:  # painting with each tile's own stain statistics
                decoded["layout_decoder"] = codec.decode(latents, layout, stain_condition(x[:, None]))
            variants["original"] += list(zip(images, labels))
            for name, out in decoded.items():
                u8 = ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).movedim(1, -1).numpy()
                variants[name] += list(zip(u8, labels))
                variants.setdefault(f"{name}_texture", []).extend(zip(with_texture_of(images, u8), labels))
    scores = {name: synthetic_dice(segment, {"all": data}, len(classes), batch_size)["macro_dice"]
              for name, data in variants.items() if data}
    return {"tiles": len(tiles), "macro_dice": scores, "texture_sigma": TEXTURE_SIGMA}


def restained_tiles(tiles: list[tuple[np.ndarray, np.ndarray]], synthetic: str | Path,
                    style_stores: Mapping[str, str | Path]) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """The validation ``tiles`` restained as the synthetic store's tiles were: tile ``i`` takes the style
    patches of synthetic sample ``i`` (cycled; read back from the store's provenance) and the store's
    ``stain_match`` strength. Returns the pairs and the strength (0: nothing was restained).

    Stain matching moves every synthetic tile to an unlabelled slide's stain, which a segmenter trained
    on the labelled slides' stains reads worse on *any* tissue. Real tissue restained the same way is the
    reference that separates that stain gap from what the generator itself gets wrong."""
    import torch
    import zarr

    from sedm.stain.statistics import match_od_means
    from sedm.synthesis.shards import read_provenance
    from sedm.tiling.store import SlideStore

    attrs = dict(zarr.open_group(str(synthetic), mode="r", zarr_format=3).attrs.get("sedm", {}))
    strength = float(attrs.get("stain_match", 0.0))
    if strength <= 0:
        return tiles, 0.0
    slide = str(attrs["slide_id"])
    if slide not in style_stores:
        raise InputError(synthetic, "attrs.sedm.slide_id", f"its style slide {slide!r} is not among --style-stores",
                         "pass the store of every unlabelled slide the synthetic stores were drawn in")
    store, size = SlideStore(style_stores[slide]), int(attrs["style_patch_size"])
    rows = read_provenance(synthetic)
    out = []
    for i, (image, labels) in enumerate(tiles):
        row = rows.iloc[i % len(rows)]
        styles = np.stack([store.read_image(int(y), int(x), size, size) for y, x in zip(row["style_y"], row["style_x"])])
        x = torch.from_numpy(image[None]).movedim(-1, 1).float() / 127.5 - 1
        st = torch.from_numpy(styles[None]).movedim(-1, 2).float() / 127.5 - 1
        matched = match_od_means(x, st, strength)
        out.append((((matched[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).movedim(0, -1).numpy(), labels))
    return out, strength


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def stain_robust_arm(config: Mapping[str, Any]) -> str | None:
    """The first arm trained on real tiles with stain augmentation, if any: a second judge of synthetic
    tiles whose verdict does not hinge on their stain being one the labelled slides have."""
    arms = config["segmentation"]["arms"]
    return next((a for a, spec in arms.items() if spec["stain_aug"] and not spec["synthetic"]), None)


def baseline_arm(config: Mapping[str, Any]) -> str:
    """The arm whose segmenter judges the synthetic tiles: evaluation.baseline when it trains on real
    tiles only, else the first such arm."""
    arms = config["segmentation"]["arms"]
    base = config["evaluation"]["baseline"]
    if base in arms and not arms[base]["synthetic"]:
        return base
    real = [a for a, spec in arms.items() if not spec["synthetic"]]
    if not real:
        raise InputError(None, "segmentation.arms", "no arm trains on real tiles only",
                         "add an arm with synthetic: false (e.g. real) to judge synthetic tiles against")
    return real[0]


def load_segmenter(model_dir: str | Path, device: Any, amp: bool = False) -> tuple[SegmentFn, dict]:
    """The best checkpoint of a segmentation model directory as a :data:`SegmentFn`, and its metadata.
    A model of a ``stain_norm`` arm sees each tile normalised to its stored target, as in training."""
    from sedm.segmentation.model import divisor, load_model, segment
    from sedm.segmentation.transforms import stored_normaliser

    model, meta = load_model(model_dir, "best", device=device)
    div = divisor(meta["architecture"])
    normalise = stored_normaliser(meta, model_dir)
    if normalise is None:
        return (lambda images: segment(model, images, device, div, amp)), meta
    return (lambda images: segment(model, np.stack([normalise(im) for im in images]), device, div, amp)), meta


def run(args: argparse.Namespace) -> int:
    import torch

    from sedm.segmentation.data import SyntheticSet
    from sedm.runtime.devices import resolve_device

    config = load_config(args.config, runtime=args.runtime)
    seg = config["segmentation"]
    torch.set_num_threads(max(1, int(seg["threads"])))
    segment_fn, meta = load_segmenter(args.model, resolve_device(seg["device"]), bool(seg["amp"]))
    classes = list(meta["classes"])
    sets = {}
    for path in args.synthetic:
        s = SyntheticSet(path, classes=classes, mpp=float(meta["mpp"]))
        sets[s.slide_id] = s
    if not sets:
        raise InputError(None, "--synthetic", "no synthetic store given", "pass the synthesis stores")
    result = synthetic_dice(segment_fn, sets, len(classes), int(seg["inference"]["batch_size"]))
    real = meta.get("best_val_macro_dice")
    result.update({"arm": meta.get("arm"), "model": str(args.model), "classes": classes,
                   "real_val_macro_dice": real,
                   "gap": None if real is None or result["macro_dice"] is None else real - result["macro_dice"],
                   "n_synthetic": {k: len(v) for k, v in sets.items()}})
    batch = int(seg["inference"]["batch_size"])
    tiles, restained = [], {}
    if args.stores:
        val_slides = list(meta.get("split", {}).get("val_slides") or [])
        tiles = validation_tiles(args.stores, val_slides, classes, int(seg["val_tiles"]))
        restained = _restained_sets(tiles, {s.slide_id: s.path for s in sets.values()}, args.style_stores)
    judges = [(result, segment_fn)]
    if args.stain_robust_model:
        # a judge that knows every stain: low fidelity here means "not tissue", not "an unfamiliar stain"
        robust_fn, robust_meta = load_segmenter(args.stain_robust_model, resolve_device(seg["device"]), bool(seg["amp"]))
        robust = synthetic_dice(robust_fn, sets, len(classes), batch)
        result["stain_robust"] = {"arm": robust_meta.get("arm"), "macro_dice": robust["macro_dice"],
                                  "per_slide": robust["per_slide"],
                                  "real_val_macro_dice": robust_meta.get("best_val_macro_dice")}
        judges.append((result["stain_robust"], robust_fn))
    if restained:
        for out, judge in judges:
            real_restained = synthetic_dice(judge, restained, len(classes), batch)
            out["restained_real_val_macro_dice"] = real_restained["macro_dice"]
            out["restained_real_per_slide"] = real_restained["per_slide"]
            out["restained_gap"] = (None if real_restained["macro_dice"] is None or out["macro_dice"] is None
                                    else real_restained["macro_dice"] - out["macro_dice"])
        log.info("%s's macro Dice on its validation tiles restained like the synthetic ones: %s", result["arm"],
                 result["restained_real_val_macro_dice"])
    if args.autoencoder:
        if not tiles:
            raise InputError(None, "--stores", "the autoencoder ceiling needs the validation slides' tiles",
                             "pass the labelled stores with --stores")
        result["autoencoder"] = reconstruction_dice(segment_fn, args.autoencoder, tiles, classes, batch)
        result["autoencoder"]["slides"] = sorted(meta.get("split", {}).get("val_slides") or [])
        log.info("autoencoder ceiling: %s", result["autoencoder"]["macro_dice"])
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    log.info("layout fidelity: %s's macro Dice %s on synthetic tiles vs %s on real validation tiles",
             result["arm"], result["macro_dice"], real)
    return 0


def _restained_sets(tiles: list, synthetic: Mapping[str, Path], style_stores: list[str]) -> dict[str, list]:
    """Per synthetic set, the validation tiles restained as its tiles were; empty when no set was
    stain-matched (then the real validation Dice already is the reference)."""
    from sedm.tiling.store import SlideStore

    by_slide = {SlideStore(p).slide_id: p for p in style_stores}
    sets = {}
    for slide, path in synthetic.items():
        pairs, strength = restained_tiles(tiles, path, by_slide)
        if strength > 0:
            sets[slide] = pairs
    return sets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "sedm config (segmentation: device, threads, inference batch size)")
    parser.add_argument("--model", required=True, help="segmentation model directory of an arm trained on real tiles")
    parser.add_argument("--synthetic", nargs="+", required=True, help="synthesis stores to score")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--stain-robust-model", default=None,
                        help="an arm trained on real tiles with stain augmentation: also score the synthetic tiles "
                             "with it (tiles in a stain the baseline never saw can look wrong to the baseline alone)")
    parser.add_argument("--autoencoder", default=None, help="latent autoencoder directory: also score its "
                        "reconstructions of the segmenter's validation tiles (the ceiling of latent synthesis)")
    parser.add_argument("--stores", nargs="*", default=[], help="labelled stores (the validation slides' tiles): "
                        "the real tiles of the references (restained like the synthetic tiles; reconstructed)")
    parser.add_argument("--style-stores", nargs="*", default=[], help="stores of the unlabelled slides the synthetic "
                        "tiles were drawn in: their style patches restain the validation tiles as the synthetic "
                        "tiles were (synthesis.stain_match)")
