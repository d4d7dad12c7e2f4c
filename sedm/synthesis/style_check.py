"""``sedm style-check``: does the trained model take its style from the style patches?

A model can draw layout-faithful tissue in the colours of its training slides while ignoring the
style input altogether; its samples then look plausible and the synthetic arms add colour-blind
data. Three measures over the unlabelled slides (styles the diffusion model never trained on):

* **Transfer ratio**: the same layouts and the same noise, sampled once with the style patches of
  slide A and once with those of slide B. With ``d_style`` the difference of the style patches' mean
  tissue optical density (B - A) and ``d_out`` that of the outputs, the ratio is the part of
  ``d_out`` along ``d_style`` over ``|d_style|`` (``d_out . d_style / |d_style|^2``): ~0 when the style
  is ignored, 1 when the outputs move exactly as far as their style sources and in their direction,
  negative when they move the other way. The plain distance ratio ``|d_out| / |d_style|`` is reported
  beside it but is not the measure: a model whose colour reacts to style arbitrarily (a randomly
  initialised one, say) moves its outputs far, in no particular direction. Reported per pair and as
  the median; pairs whose style patches are closer than :data:`MIN_STYLE_DISTANCE` say nothing and
  are skipped. The same figures of a randomly initialised model of the same architecture are the
  chance level: with few pairs its arbitrary, large colour moves can give a fair median, but not a
  worst pair that stays positive, so the worst pair is the half of the target that chance fails.
  A trained model whose median is at or below its randomly initialised twin's is flagged
  (:func:`transfer_flags`): however high it reads, training is not shown to add any style transfer.
  With ``synthesis.stain_match`` on, every output is restained toward its style patches, so the ratio
  measures the matching; both models are then also measured with matching off
  (``transfer_learned``): the style the learned pathway alone transfers, flagged the same way.
* **Encoder separability**: between-slide over within-slide variance of the style vectors the model
  makes of single patches (encoder, aggregation and, where the model has it, the stain-statistics
  path). Reported next to the same figure for a randomly initialised model of the same
  architecture, so "learned something about stain" is read against chance.
* **Style grid**: rows = layouts, columns = style sources, each cell generated from that layout in
  that source's style (the paper's central qualitative figure), written as a PNG for the report.

Optical density and tissue pixels are those of :mod:`sedm.stain.statistics`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sedm.atomic import atomic_path, write_text
from sedm.config import add_config_arguments, load_config
from sedm.seeds import rng_for
from sedm.errors import InputError
from sedm.flags import FLAGS, warn
from sedm.stain.statistics import mean_tissue_od
from sedm.labels import colorize

log = logging.getLogger(__name__)

MIN_STYLE_DISTANCE = 0.02
"""Pairs of style sources closer than this (mean tissue OD, Euclidean) are not informative."""
GenerateFn = Callable[..., np.ndarray]
"""``generate(labels (L, H, W) uint8, styles (L, N, h, w, 3) uint8, seed=int) -> (L, H, W, 3) uint8``."""
EncodeFn = Callable[[np.ndarray], np.ndarray]
"""``encode(patches (M, h, w, 3) uint8) -> (M, D)`` style vectors, one per single patch."""


@dataclass(frozen=True)
class StyleSet:
    """The style patches of one source slide, as the model is conditioned on them."""

    slide_id: str
    patches: np.ndarray
    """(N, h, w, 3) uint8."""


def transfer_ratio(generate: GenerateFn, labels: np.ndarray, styles: Sequence[StyleSet],
                   seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Transfer ratios of every pair of style sources (module docstring) and the generated images.

    Every source is sampled with the same ``labels`` and the same ``seed``, so outputs differ only
    through the style input. An output set without tissue pixels (glass) counts as ratio 0 for its
    pairs: it took no stain at all.
    """
    outputs, out_od, style_od = {}, {}, {}
    for st in styles:
        batch = np.broadcast_to(st.patches[None], (len(labels), *st.patches.shape))
        outputs[st.slide_id] = generate(labels, np.ascontiguousarray(batch), seed=seed)
        out_od[st.slide_id] = mean_tissue_od(outputs[st.slide_id])
        style_od[st.slide_id] = mean_tissue_od(st.patches)
    pairs, skipped = [], 0
    for a, b in itertools.combinations([st.slide_id for st in styles], 2):
        if style_od[a] is None or style_od[b] is None:
            skipped += 1
            continue
        v_style = style_od[b] - style_od[a]
        d_style = float(np.linalg.norm(v_style))
        if d_style < MIN_STYLE_DISTANCE:
            skipped += 1
            continue
        glass = out_od[a] is None or out_od[b] is None
        v_out = np.zeros(3) if glass else out_od[b] - out_od[a]
        pairs.append({"a": a, "b": b, "style_distance": d_style, "output_distance": float(np.linalg.norm(v_out)),
                      "ratio": float(v_out @ v_style) / d_style**2,
                      "distance_ratio": float(np.linalg.norm(v_out)) / d_style, "output_glass": glass})
    ratios = [p["ratio"] for p in pairs]
    summary = {
        "median": float(np.median(ratios)) if ratios else None,
        "min": float(np.min(ratios)) if ratios else None,
        "median_distance_ratio": float(np.median([p["distance_ratio"] for p in pairs])) if pairs else None,
        "n_pairs": len(pairs), "n_skipped": skipped, "pairs": pairs,
        "style_od": {k: None if v is None else [float(x) for x in v] for k, v in style_od.items()},
        "output_od": {k: None if v is None else [float(x) for x in v] for k, v in out_od.items()},
    }
    return summary, outputs


def separability(encode: EncodeFn, patches: Mapping[str, np.ndarray]) -> float | None:
    """Between-slide over mean within-slide variance (traces) of per-patch style vectors.

    ``patches`` maps slide IDs to (M, h, w, 3) uint8 patches, M >= 2 and at least two slides.
    """
    if len(patches) < 2:
        return None
    vectors = [np.asarray(encode(p), dtype=np.float64) for p in patches.values()]
    within = float(np.mean([v.var(axis=0).sum() for v in vectors]))
    between = float(np.stack([v.mean(axis=0) for v in vectors]).var(axis=0).sum())
    return between / within if within > 0 else None


def write_style_grid(path: str | Path, labels: np.ndarray, styles: Sequence[StyleSet],
                     outputs: Mapping[str, np.ndarray], cell: int = 96, gap: int = 4) -> None:
    """PNG: first row one style patch per source, first column the layouts, cells the samples."""
    rows, cols = len(labels) + 1, len(styles) + 1
    header = 14
    canvas = Image.new("RGB", (cols * (cell + gap) + gap, header + rows * (cell + gap) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def put(img: np.ndarray, r: int, c: int) -> None:
        pil = Image.fromarray(img).resize((cell, cell), Image.Resampling.NEAREST)
        canvas.paste(pil, (gap + c * (cell + gap), header + gap + r * (cell + gap)))

    draw.text((gap, 1), "rows: layouts | columns: style sources (top: one of their style patches)", fill=(0, 0, 0))
    for c, st in enumerate(styles, start=1):
        put(st.patches[0], 0, c)
        draw.text((gap + c * (cell + gap) + 2, header + gap + 2), st.slide_id, fill=(255, 255, 255))
        for r in range(len(labels)):
            put(outputs[st.slide_id][r], r + 1, c)
    for r in range(len(labels)):
        put(colorize(labels[r]), r + 1, 0)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def annotated_layouts(sampler: Any, n: int, rng: np.random.Generator, tries: int = 16,
                      enough: float = 0.9) -> np.ndarray:
    """``n`` layouts of the labelled slides, each the most annotated of up to ``tries`` draws: a
    layout that is mostly unannotated glass shows little stain to compare."""
    out = []
    for _ in range(n):
        best, best_share = None, -1.0
        for _ in range(tries):
            labels = sampler.sample(rng).labels
            share = float((labels != 0).mean())
            if share > best_share:
                best, best_share = labels, share
            if share >= enough:
                break
        out.append(best)
    return np.stack(out)


# --------------------------------------------------------------------------------- the command
def transfer_flags(measures: Mapping[str, Any]) -> list[str]:
    """Flags (:mod:`sedm.flags`) of a style-check record: the trained model's median transfer ratio at
    or below the randomly initialised model's, i.e. at chance level for this measure. Nothing is
    flagged where either median is undefined (no informative pair)."""
    flags = []
    for key, what in (("transfer", "transfer ratio median"),
                      ("transfer_learned", "with stain matching off, the transfer ratio median")):
        median = (measures.get(key) or {}).get("median")
        chance = (measures.get(f"{key}_random_init") or {}).get("median")
        if isinstance(median, (int, float)) and isinstance(chance, (int, float)) and median <= chance:
            flags.append(f"{what} {median:.3f} is at or below chance (randomly initialised model: {chance:.3f}): "
                         "the trained model is not shown to take its style from the style patches")
    return flags


def encoder_fn(model: Any) -> EncodeFn:
    """Style vectors of single patches (N = 1) as ``model`` makes them."""
    import torch

    from sedm.diffusion.pipeline import images_to_tensor

    def encode(patches: np.ndarray) -> np.ndarray:
        param = next(model.parameters())
        with torch.no_grad():
            x = images_to_tensor(patches).to(param.device, param.dtype)[:, None]
            return model.encode_style(x).vector.float().cpu().numpy()

    return encode


def style_measures(generator: Any, labels: np.ndarray, styles: Sequence[StyleSet],
                   encoder_patches: Mapping[str, np.ndarray], seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Transfer ratio and separability (trained and randomly initialised) of a
    :class:`sedm.synthesis.generate.Generator`'s model, and the generated images per style."""
    import torch

    from sedm.models.stedm import StedmModel

    from sedm.diffusion.pipeline import StedmPipeline

    transfer, outputs = transfer_ratio(generator, labels, styles, seed=seed)
    torch.manual_seed(seed)
    random_model = StedmModel(generator.config).eval()
    random_model.codec = generator.model.codec
    random_pipeline = StedmPipeline(random_model.to(next(generator.model.parameters()).device))
    chance, _ = transfer_ratio(lambda lab, sty, seed: random_pipeline(lab, sty, seed=seed, **generator.settings),
                               labels, styles, seed=seed)
    summary = ("median", "min", "median_distance_ratio", "n_pairs")
    measures = {
        "transfer": transfer,
        "transfer_random_init": {k: chance[k] for k in summary},
        "separability": {
            "trained": separability(encoder_fn(generator.model), encoder_patches),
            "random_init": separability(encoder_fn(random_model), encoder_patches),
            "patches_per_slide": len(next(iter(encoder_patches.values()))),
        },
    }
    if generator.settings["stain_match"] > 0:
        # stain matching restains every output toward its style patches, so trained and random models
        # score alike above; the same measure with matching off is what the learned pathway transfers
        plain = {**generator.settings, "stain_match": 0.0}
        for key, pipeline in (("transfer_learned", generator.pipeline), ("transfer_learned_random_init", random_pipeline)):
            learned, _ = transfer_ratio(lambda lab, sty, seed: pipeline(lab, sty, seed=seed, **plain),  # noqa: B023
                                        labels, styles, seed=seed)
            measures[key] = {k: learned[k] for k in summary}
    return measures, outputs


def style_inputs(model_config: Mapping[str, Any], labelled: Sequence[str | Path], style_stores: Sequence[str | Path],
                 *, seed: int, n_layouts: int, n_encoder_patches: int, min_tissue_fraction: float,
                 class_weights: Mapping[str, float] | None = None
                 ) -> tuple[np.ndarray, list[StyleSet], dict[str, np.ndarray]]:
    """Fixed layouts of the labelled stores, one set of style patches per style store, and single
    patches per style store for separability: everything the measures read, drawn from ``seed``."""
    from sedm.synthesis.generate import model_mpp
    from sedm.synthesis.layouts import LayoutSampler
    from sedm.synthesis.styles import StoreStyleSource

    mpp = model_mpp(model_config, style_stores[0])
    sources = [StoreStyleSource(path, size=model_config["style_patch_size"], mpp=mpp,
                                min_tissue_fraction=min_tissue_fraction) for path in style_stores]
    sampler = LayoutSampler(list(labelled), classes=model_config["classes"], patch_size=int(model_config["patch_size"]),
                            mpp=mpp, class_weights=class_weights,
                            augment={"flips": False, "rot90": False, "affine": False})
    labels = annotated_layouts(sampler, n_layouts, rng_for(seed, "style-check", "layouts"))
    styles = [StyleSet(src.slide_id, src.draw(rng_for(seed, "style-check", "style", src.slide_id),
                                              int(model_config["n_style"]))[0]) for src in sources]
    patches = {src.slide_id: src.draw(rng_for(seed, "style-check", "encoder", src.slide_id), n_encoder_patches)[0]
               for src in sources}
    return labels, styles, patches


def measure(config: dict[str, Any], model_dir: str | Path, labelled: Sequence[str | Path],
            style_stores: Sequence[str | Path], out: str | Path, grid: str | Path, device: str = "cpu") -> dict:
    """Compute the measures for ``model_dir`` and write ``out`` (JSON) and ``grid`` (PNG)."""
    from sedm.synthesis.generate import Generator, check_model

    syn, check = config["synthesis"], config["synthesis"]["style_check"]
    if len(style_stores) < 2:
        raise InputError(None, "--style-stores", f"{len(style_stores)} style source(s) given",
                         "pass the stores of at least two unlabelled slides")
    mcfg = check_model(model_dir, config["classes"])
    seed = int(config["seed"])
    labels, styles, enc_patches = style_inputs(
        mcfg, labelled, style_stores, seed=seed, n_layouts=int(check["layouts"]),
        n_encoder_patches=int(check["encoder_patches"]), min_tissue_fraction=syn["style_min_tissue_fraction"],
        class_weights=syn["class_weights"])
    generator = Generator.for_synthesis(model_dir, syn, device)
    measures, outputs = style_measures(generator, labels, styles, enc_patches, seed)
    result = {
        "model": str(model_dir),
        "weights_sha256": generator.weights_sha256,
        "style_sources": [st.slide_id for st in styles],
        "n_layouts": len(labels), "n_style": int(mcfg["n_style"]), "seed": seed,
        "sampling": generator.settings,
        **measures,
    }
    result[FLAGS] = warn(log, transfer_flags(result), "style check")
    write_style_grid(grid, labels, styles, outputs)
    write_text(out, json.dumps(result, indent=2) + "\n")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "sedm config (the synthesis section's sampling and style_check settings)")
    parser.add_argument("--model", required=True, help="diffusion model directory")
    parser.add_argument("--labelled", nargs="+", required=True, help="labelled stores (layout sources)")
    parser.add_argument("--style-stores", nargs="+", required=True,
                        help="stores of the unlabelled slides (style sources the model never trained on)")
    parser.add_argument("--out", required=True, help="JSON file of the measures")
    parser.add_argument("--grid", required=True, help="PNG of the style grid")


def run(args: argparse.Namespace) -> int:
    from sedm.runtime.devices import resolve_device

    config = load_config(args.config, runtime=args.runtime)
    device = resolve_device(config["synthesis"]["device"])
    result = measure(config, args.model, args.labelled, args.style_stores, args.out, args.grid, device=str(device))
    t, s = result["transfer"], result["separability"]
    log.info("transfer ratio median %s (min %s, %d pairs); encoder separability %s (random init %s)",
             t["median"], t["min"], t["n_pairs"], s["trained"], s["random_init"])
    return 0
