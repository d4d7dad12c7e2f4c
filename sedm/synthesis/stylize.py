"""``sedm stylize``: restain any image tile in the style of a slide or of a folder of images, zero-shot.

The model extracts style from a few patches, so no retraining is needed for a new target. Two ways
to keep the content:

* with a mask (label PNG, values as sedm.labels) the layout conditions the generation, as in
  synthesis, and the input image seeds it (SDEdit at ``--strength``; 1 = from the mask alone);
* without a mask the layout is the input's tissue (:func:`sedm.stain.statistics.tissue_pixels`,
  closed) as "tissue, class unknown", which models trained with layout dropout know; SDEdit keeps
  the structure: the input is noised to ``--strength`` and denoised under the new style (lower =
  closer to the input). Models without that layout channel get an all-unannotated layout, which in
  fully annotated cohorts means glass: a warning says so.

Inputs and style images at another resolution (``--mpp``) are resampled to the model's µm/px and
the outputs back. Inputs of any size are padded (reflect) to the model's size multiple and cropped
back, so every output has its input's size. Outputs: ``<out>/<input stem>.png`` and
``<out>/stylize.json``: model hash, settings, which style patches each output was conditioned on,
and per image whether it worked: the distance of its mean tissue optical density to the style
patches' before and after (``colour_transfer`` = 1 - after / before: 1 = the style's stain, 0 =
unchanged) and the SSIM of luminance between input and output (structure kept). Outputs that lost
the input's structure or moved away from the style are flagged (:func:`output_flags`): ``flags`` in
their record and, with the image's name, in the file's top-level ``flags`` (:mod:`sedm.flags`), each
logged at WARNING.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from sedm.atomic import atomic_path, write_text
from sedm.config import load_config, validate_section
from sedm.errors import InputError
from sedm.flags import FLAGS, warn
from sedm.labels import UNANNOTATED, unknown_tissue_value
from sedm.seeds import rng_for
from sedm.stain.statistics import mean_tissue_od, tissue_pixels
from sedm.synthesis.generate import Generator, model_sha256
from sedm.synthesis.styles import IMAGE_SUFFIXES, ImageFolderStyleSource, SlideFileStyleSource, StoreStyleSource, StyleSource

log = logging.getLogger(__name__)

DEFAULT_STRENGTH = 0.4
PROVENANCE_NAME = "stylize.json"
MIN_SSIM_LUMINANCE = 0.5
"""Outputs whose SSIM of luminance with their input is below this are flagged as having lost its
structure. SSIM averages, over local windows, the product of a luminance, a contrast and a structure
(correlation) term, each at most 1. A change of stain keeps the structure term near 1: even doubling
(or halving) both the local brightness and the local contrast costs a factor 2 * 2 / (1 + 4) = 0.8 in
each of the other two terms, 0.64 in all. Noise, or tissue the model drew anew, has a structure
term near 0 and scores near 0. 0.5 lies between: an output below it differs from its input by more
than any plausible change of stain."""
MIN_COLOUR_TRANSFER = 0.0
"""Outputs whose colour transfer is below this are flagged: their mean tissue optical density ended
farther from the style patches' than the input's was, so they moved away from the style."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="diffusion model directory")
    style = parser.add_mutually_exclusive_group(required=True)
    style.add_argument("--style-slide", help="slide file (read with openslide/tiffslide) or sedm .zarr store")
    style.add_argument("--style-images", help="folder of style images at the model's µm/px")
    parser.add_argument("--input", required=True, help="image file or folder of images to restyle")
    parser.add_argument("--mask", help="label PNG (or folder of them, matched by file stem) giving the layout")
    parser.add_argument("--out", required=True, help="folder to write the restyled images to")
    parser.add_argument("--strength", type=float, default=DEFAULT_STRENGTH,
                        help=f"SDEdit noise level in (0, 1]: lower keeps more of the input (default {DEFAULT_STRENGTH})")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument("--sampler", choices=("ddim", "dpmpp"), help="sampler (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, help="style guidance scale (default: the model's)")
    parser.add_argument("--guidance-rescale", type=float, help="guidance std-rescale (default: the model's)")
    parser.add_argument("--stain-match", type=float, default=0.0,
                        help="0-1: scale the output's optical density toward the style patches' mean "
                             "(synthesis.stain_match; default 0, colour from the model alone)")
    parser.add_argument("--seed", type=int, default=0, help="seed of style draws and noise")
    parser.add_argument("--min-tissue-fraction", type=float, default=0.5,
                        help="style patches come from tiles (or crops of style images) with at least this "
                             "tissue fraction")
    parser.add_argument("--mpp", type=float,
                        help="µm/px of the input images (and of --style-images); default: the model's")
    parser.add_argument("--config", help="sedm config for the slide reader and tissue detection settings")
    parser.add_argument("--device", default="auto", help="torch device (auto = CUDA when available)")


def _images_in(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return files
        raise InputError(path, None, "no images in the folder", f"put images ({', '.join(IMAGE_SUFFIXES)}) there")
    raise InputError(path, None, "input not found", "pass an image file or a folder of images")


def pair_inputs(input_path: str | Path, mask_path: str | Path | None) -> list[tuple[Path, Path | None]]:
    """(image, mask) pairs; masks are matched to images by file stem when folders are given."""
    images = _images_in(Path(input_path))
    if mask_path is None:
        return [(p, None) for p in images]
    mask_path = Path(mask_path)
    if mask_path.is_file():
        if len(images) != 1:
            raise InputError(mask_path, None, "one mask file for a folder of images",
                             "pass a folder of masks named like the images")
        return [(images[0], mask_path)]
    masks = {p.stem: p for p in _images_in(mask_path)}
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise InputError(mask_path, None, f"no mask for {missing[:3]}", "name each mask like its image (same stem)")
    return [(p, masks[p.stem]) for p in images]


def read_rgb(path: Path) -> np.ndarray:
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except OSError as exc:
        raise InputError(path, None, f"not a readable image ({exc})", "pass PNG/JPEG/TIFF images") from None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file without decoding it."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError as exc:
        raise InputError(path, None, f"not a readable image ({exc})", "pass PNG/JPEG/TIFF images") from None


def read_mask(path: Path, shape: tuple[int, int], n_classes: int) -> np.ndarray:
    """(H, W) uint8 label values of a label PNG; must match the image size and the model's classes."""
    try:
        img = Image.open(path)
    except OSError as exc:
        raise InputError(path, None, f"not a readable image ({exc})", "pass label PNGs") from None
    if img.mode not in ("L", "P", "I", "I;16"):
        raise InputError(path, None, f"mask has mode {img.mode}, not a single-channel label image",
                         "save masks as 8-bit PNGs whose pixel values are the label values (0 = unannotated)")
    mask = np.asarray(img)
    if mask.shape != shape:
        raise InputError(path, None, f"mask is {mask.shape[1]}x{mask.shape[0]}, the image "
                         f"{shape[1]}x{shape[0]}", "give each mask the size of its image")
    if mask.max(initial=0) > n_classes:
        raise InputError(path, None, f"label value {int(mask.max())} but the model has {n_classes} classes",
                         "use the label values of the model's classes (sedm.labels)")
    return mask.astype(np.uint8)


def _pad_to(arr: np.ndarray, multiple: int) -> np.ndarray:
    h, w = arr.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return arr
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad, mode="symmetric")


def input_scale(mpp: float | None, mcfg: dict[str, Any]) -> float:
    """Factor that resamples images at ``mpp`` µm/px to the model's (1 without ``--mpp``)."""
    if mpp is None:
        return 1.0
    if mpp <= 0:
        raise InputError(None, "--mpp", f"{mpp} µm/px", "give the inputs' resolution in µm/px, e.g. 0.5")
    if not mcfg.get("mpp"):
        raise InputError(None, "--mpp", "the model records no µm/px to resample to",
                         "resample the inputs to the training resolution yourself and drop --mpp")
    return float(mpp) / float(mcfg["mpp"])


def resample(img: np.ndarray, size: tuple[int, int], labels: bool = False) -> np.ndarray:
    """``img`` resized to (height, width): nearest neighbour for label masks, bicubic for RGB."""
    if img.shape[:2] == tuple(size):
        return img
    method = Image.Resampling.NEAREST if labels else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), method))


def tissue_layout(rgb: np.ndarray, classes: list[str]) -> np.ndarray:
    """(H, W) layout of an image without a mask: its tissue as "tissue, class unknown", glass as
    unannotated. Closing bridges pale pixels inside tissue (lumina, cytoplasm) below the threshold."""
    from scipy import ndimage

    tissue = ndimage.binary_closing(tissue_pixels(rgb), iterations=2, border_value=1)
    tissue = ndimage.binary_opening(tissue, iterations=1)
    return np.where(tissue, unknown_tissue_value(classes), UNANNOTATED).astype(np.uint8)


def transfer_measures(rgb: np.ndarray, result: np.ndarray, patches: np.ndarray) -> dict[str, float | None]:
    """Did the stain move towards the style (colour_transfer) and the structure stay (ssim_luminance)?"""
    from skimage.metrics import structural_similarity

    style, before, after = mean_tissue_od(patches), mean_tissue_od(rgb), mean_tissue_od(result)
    d_before = None if style is None or before is None else float(np.linalg.norm(before - style))
    d_after = None if style is None or after is None else float(np.linalg.norm(after - style))
    grey = [np.asarray(Image.fromarray(a).convert("L"), np.float64) for a in (rgb, result)]
    win = min(7, *grey[0].shape)
    win -= 1 - win % 2  # odd, as SSIM's window must be
    ssim = float(structural_similarity(grey[0], grey[1], data_range=255.0, win_size=win)) if win >= 3 else None
    transfer = None if d_before is None or d_after is None or d_before <= 0 else 1.0 - d_after / d_before
    return {"od_distance_input": d_before, "od_distance_output": d_after, "colour_transfer": transfer,
            "ssim_luminance": ssim, "output_tissue_fraction": float(tissue_pixels(result).mean())}


def output_flags(measures: dict[str, Any]) -> list[str]:
    """Flags of one output's :func:`transfer_measures`: lost structure (:data:`MIN_SSIM_LUMINANCE`),
    moved away from the style (:data:`MIN_COLOUR_TRANSFER`). Undefined measures flag nothing."""
    flags = []
    ssim, transfer = measures.get("ssim_luminance"), measures.get("colour_transfer")
    if ssim is not None and ssim < MIN_SSIM_LUMINANCE:
        flags.append(f"lost the input's structure: SSIM of luminance {ssim:.2f} < {MIN_SSIM_LUMINANCE}")
    if transfer is not None and transfer < MIN_COLOUR_TRANSFER:
        flags.append(f"moved away from the style: colour transfer {transfer:.2f} < {MIN_COLOUR_TRANSFER:g} (the "
                     "output's stain is farther from the style patches' than the input's)")
    return flags


def style_source(args: argparse.Namespace, mcfg: dict[str, Any]) -> StyleSource:
    size = int(mcfg["style_patch_size"])
    if args.style_images:
        return ImageFolderStyleSource(args.style_images, size=size, scale=input_scale(args.mpp, mcfg),
                                      min_tissue_fraction=args.min_tissue_fraction)
    path = Path(args.style_slide)
    if path.suffix == ".zarr" or (path / "zarr.json").is_file():
        from sedm.tiling.store import SlideStore

        mpp = float(mcfg.get("mpp") or SlideStore(path).mpp)
        return StoreStyleSource(path, size=size, mpp=mpp, min_tissue_fraction=args.min_tissue_fraction)
    if not mcfg.get("mpp"):
        raise InputError(args.model, "mpp", "the model records no µm/px, so slide patches cannot be read at it",
                         "pass --style-images at the model's resolution, or a sedm .zarr store of the slide")
    cfg = (load_config(args.config) if args.config else
           {section: validate_section(section) for section in ("slides", "tissue")})
    return SlideFileStyleSource(path, size=size, mpp=float(mcfg["mpp"]), min_tissue_fraction=args.min_tissue_fraction,
                                slides_cfg=cfg["slides"], tissue_cfg=cfg["tissue"])


def stylize(pairs: list[tuple[Path, Path | None]], style: StyleSource, generator: Generator, out: str | Path, *,
            strength: float, seed: int, scale: float = 1.0) -> list[dict[str, Any]]:
    """Restyle every (image, mask) pair into ``out``; returns one provenance record per image.

    ``scale`` resamples inputs (and masks) to the model's µm/px, and outputs back to the input size.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = generator.config
    n_classes, n_style = len(cfg.classes), int(cfg.n_style)
    if any(m is None for _, m in pairs) and not cfg.tissue_channel:
        log.warning("the model was trained without layout dropout (no 'tissue, class unknown' layout): images "
                    "without --mask are conditioned on 'unannotated', which a fully annotated cohort teaches "
                    "as glass; pass masks or retrain with diffusion.layout_drop > 0")
    records = []
    for image_path, mask_path in tqdm(pairs, desc="stylize", unit="image"):
        rgb = read_rgb(image_path)
        h, w = rgb.shape[:2]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        model_rgb = resample(rgb, size)
        if mask_path:
            layout = resample(read_mask(mask_path, (h, w), n_classes), size, labels=True)
        elif cfg.tissue_channel:
            layout = tissue_layout(model_rgb, cfg.classes)
        else:
            layout = np.zeros(size, np.uint8)
        rng = rng_for(seed, "stylize", image_path.name)
        patches, where = style.draw(rng, n_style)
        init = _pad_to(model_rgb, generator.size_multiple)
        result = generator(_pad_to(layout, generator.size_multiple)[None], patches[None],
                           seed=int(rng.integers(0, 2**63 - 1)), init_images=init[None] if strength < 1 else None,
                           strength=strength)[0, :size[0], :size[1]]
        result = resample(result, (h, w))
        target = out / f"{image_path.stem}.png"
        with atomic_path(target) as tmp:
            Image.fromarray(result).save(tmp, format="PNG")
        measures = transfer_measures(rgb, result, patches)
        records.append({"input": str(image_path), "mask": None if mask_path is None else str(mask_path),
                        "layout": "mask" if mask_path else ("tissue" if cfg.tissue_channel else "unannotated"),
                        "output": str(target), "style": [list(loc) for loc in where], **measures,
                        FLAGS: warn(log, output_flags(measures), image_path.name)})
    return records


def run(args: argparse.Namespace) -> int:
    from sedm.models.io import read_model_config
    from sedm.runtime.devices import resolve_device

    if not 0.0 <= args.stain_match <= 1.0:
        raise InputError(None, "--stain-match", f"{args.stain_match} is outside [0, 1]", "use e.g. 1 or 0")
    if not 0.0 < args.strength <= 1.0:
        raise InputError(None, "--strength", f"{args.strength} is outside (0, 1]", f"use e.g. {DEFAULT_STRENGTH}")
    mcfg = read_model_config(args.model)["model"]
    pairs = pair_inputs(args.input, args.mask)
    for image_path, mask_path in pairs:  # every input checked before the model is loaded
        if mask_path is not None:
            read_mask(mask_path, image_size(image_path), len(mcfg["classes"]))
    style = style_source(args, mcfg)
    generator = Generator(args.model, device=str(resolve_device(args.device)), sampler=args.sampler,
                          steps=args.steps, guidance_scale=args.guidance_scale,
                          guidance_rescale=args.guidance_rescale, stain_match=args.stain_match)
    scale = input_scale(args.mpp, mcfg)
    records = stylize(pairs, style, generator, args.out, strength=args.strength, seed=args.seed, scale=scale)
    summary = {k: _median([r[k] for r in records]) for k in ("colour_transfer", "ssim_luminance",
                                                             "output_tissue_fraction")}
    meta = {"model": str(args.model), "model_sha256": model_sha256(args.model), **generator.settings,
            "strength": args.strength, "seed": args.seed, "style_source": style.slide_id,
            "mpp": mcfg.get("mpp"), "input_mpp": args.mpp, "median": summary,
            FLAGS: [f"{Path(r['input']).name}: {f}" for r in records for f in r[FLAGS]], "images": records}
    write_text(Path(args.out) / PROVENANCE_NAME, json.dumps(meta, indent=2) + "\n")
    log.info("restyled %d image(s) into %s (median colour transfer %s, SSIM of luminance %s)", len(records),
             args.out, summary["colour_transfer"], summary["ssim_luminance"])
    return 0


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.median(known)) if known else None
