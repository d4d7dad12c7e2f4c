"""What the cohort autoencoder keeps: reconstruction quality and colour fidelity, per slide.

Colour fidelity is the number to watch: every synthetic tile is decoded by this autoencoder, so one
that shifts a stain shifts every synthetic style with it. It is the mean HED optical density of each
crop's tissue pixels (the original's :func:`sedm.stain.statistics.tissue_pixels`, the definition the
style measures use) in the reconstruction minus the original's, per stain channel, stated beside the spread of the
slides' own mean optical densities (what "small" is measured against).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.color import rgb2hed
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sedm.atomic import write_text
from sedm.diffusion.grid import save_png
from sedm.models.stedm import stain_condition
from sedm.stain.statistics import HED_CHANNELS, tissue_pixels

QA_INDEX = 2**60
"""Sample indices of the fixed QA crops (far from any training step's indices)."""
QA_SAMPLES = 64
MONTAGE_SAMPLES = 8
PSNR_IDENTICAL = 100.0
"""dB reported for a reconstruction identical to its original."""


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(1, -1).cpu().numpy()


def crop_metrics(original: np.ndarray, reconstruction: np.ndarray) -> dict[str, Any]:
    """PSNR, SSIM and the per-stain mean-OD error of one (H, W, 3) uint8 crop."""
    keep = tissue_pixels(original)
    od = od_error = None
    if keep.any():
        hed_o = rgb2hed(original)[keep].mean(0)
        od, od_error = hed_o.tolist(), (rgb2hed(reconstruction)[keep].mean(0) - hed_o).tolist()
    identical = np.array_equal(original, reconstruction)  # PSNR would be infinite, which JSON cannot hold
    return {"psnr": PSNR_IDENTICAL if identical else float(peak_signal_noise_ratio(original, reconstruction,
                                                                                   data_range=255)),
            "ssim": float(structural_similarity(original, reconstruction, channel_axis=-1, data_range=255)),
            "od_error": od_error, "od": od}


def summarise(metrics: list[dict[str, Any]], slides: list[str]) -> dict[str, Any]:
    """Means over crops, the OD error per stain (mean signed and mean absolute), per slide and overall,
    and the spread (standard deviation) of the slides' mean OD for scale."""
    def block(rows: list[dict[str, Any]]) -> dict[str, Any]:
        errs = np.array([r["od_error"] for r in rows if r["od_error"] is not None]).reshape(-1, 3)
        return {"crops": len(rows), "psnr": float(np.mean([r["psnr"] for r in rows])),
                "ssim": float(np.mean([r["ssim"] for r in rows])),
                "od_error_mean": dict(zip(HED_CHANNELS, errs.mean(0).tolist() if len(errs) else [None] * 3)),
                "od_error_abs": dict(zip(HED_CHANNELS, np.abs(errs).mean(0).tolist() if len(errs) else [None] * 3))}

    per_slide = {s: block([m for m, sl in zip(metrics, slides) if sl == s]) for s in sorted(set(slides))}
    slide_od = np.array([np.mean([m["od"] for m, sl in zip(metrics, slides) if sl == s and m["od"] is not None], 0)
                         for s in sorted(set(slides))])
    spread = slide_od.std(0).tolist() if len(slide_od) > 1 else [None] * 3
    return {**block(metrics), "per_slide": per_slide, "slide_od_spread": dict(zip(HED_CHANNELS, spread))}


@torch.no_grad()
def reconstruct(vae: Any, decoder: Any, images: torch.Tensor, layouts: torch.Tensor,
                stain: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """uint8 reconstructions by the autoencoder's decoder and, if there is one, the layout decoder
    (painting with ``stain``, the style statistics of each crop's slide, when it reads them)."""
    z = vae.encode(images).latent_dist.mode()
    out = {"autoencoder": to_uint8(vae.decode(z).sample)}
    if decoder is not None:
        out["layout_decoder"] = to_uint8(decoder(z, layouts, stain))
    return out


def write_qa(vae: Any, decoder: Any, dataset: Any, *, qa: str | Path, montage: str | Path,
             device: torch.device) -> dict[str, Any]:
    """Reconstruct :data:`QA_SAMPLES` fixed crops; write the JSON and a montage (rows: original,
    autoencoder, layout decoder)."""
    items = [dataset[QA_INDEX + i] for i in range(QA_SAMPLES)]
    images = torch.stack([it["image"] for it in items]).to(device)
    layouts = torch.stack([it["layout"] for it in items]).to(device)
    stain = stain_condition(torch.stack([it["style"] for it in items]).to(device)) \
        if decoder is not None and decoder.config.stain_channels else None
    names = [dataset.store_paths[it["slide"]].name.removesuffix(".zarr") for it in items]
    originals = to_uint8(images)
    recs = {}
    for start in range(0, QA_SAMPLES, 16):
        part = reconstruct(vae, decoder, images[start:start + 16], layouts[start:start + 16],
                           None if stain is None else stain[start:start + 16])
        for k, v in part.items():
            recs.setdefault(k, []).append(v)
    recs = {k: np.concatenate(v) for k, v in recs.items()}
    result: dict[str, Any] = {"crops": QA_SAMPLES, "crop_size": int(images.shape[-1]), "slides": sorted(set(names)),
                              "od": "mean HED optical density (skimage rgb2hed) over the original's tissue pixels; "
                                    "od_error = reconstruction - original, per crop"}
    for k, rec in recs.items():
        result[k] = summarise([crop_metrics(o, r) for o, r in zip(originals, rec)], names)
    write_text(qa, json.dumps(result, indent=2, sort_keys=True) + "\n")
    save_png(montage_image([originals, *recs.values()]), montage)
    return result


def montage_image(rows: list[np.ndarray], n: int = MONTAGE_SAMPLES, pad: int = 2) -> np.ndarray:
    """Rows of (B, H, W, 3) uint8 images, the first ``n`` of each, on a white grid."""
    size = rows[0].shape[1]
    lines = []
    for row in rows:
        cells = []
        for img in row[:n]:
            cells += [img, np.full((size, pad, 3), 255, np.uint8)]
        lines += [np.concatenate(cells, 1), np.full((pad, (size + pad) * min(n, len(row)), 3), 255, np.uint8)]
    return np.concatenate(lines, 0)


def read_qa(path: str | Path) -> Mapping[str, Any]:
    return json.loads(Path(path).read_text())
