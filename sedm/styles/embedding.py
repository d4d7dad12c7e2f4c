"""``sedm style-embedding``: what the diffusion model sees of a slide's style.

The model's style vector of single tissue patches (encoder, aggregation and, where the model has
it, the stain-statistics path: :func:`sedm.synthesis.style_check.encoder_fn`, the vectors the style
check measures separability on), over patches drawn from the slide's tissue tiles as synthesis draws
its style patches (:class:`sedm.synthesis.styles.StoreStyleSource`). Per slide the mean vector places
the slide in the model's style space; the spread (mean per-dimension standard deviation) says how
much the slide varies within itself, as the model sees it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sedm.atomic import write_text
from sedm.config import add_config_arguments, load_config
from sedm.seeds import rng_for

log = logging.getLogger(__name__)

BATCH = 32
"""Patches encoded per forward pass."""


def slide_embedding(model_dir: str | Path, store: str | Path, *, classes: list[str], n_patches: int, seed: int,
                    min_tissue_fraction: float, device: str = "cpu") -> dict[str, Any]:
    """Mean, per-dimension std and spread of the style vectors of ``n_patches`` patches of ``store``."""
    from sedm.models.io import load_model
    from sedm.synthesis.generate import check_model, model_mpp, model_sha256
    from sedm.synthesis.style_check import encoder_fn
    from sedm.synthesis.styles import StoreStyleSource

    mcfg = check_model(model_dir, classes)
    source = StoreStyleSource(store, size=int(mcfg["style_patch_size"]), mpp=model_mpp(mcfg, store),
                              min_tissue_fraction=min_tissue_fraction)
    patches, _ = source.draw(rng_for(seed, "styles", "embedding", source.slide_id), n_patches)
    encode = encoder_fn(load_model(model_dir, device=device))
    vectors = np.concatenate([encode(patches[i:i + BATCH]) for i in range(0, len(patches), BATCH)]).astype(np.float64)
    std = vectors.std(axis=0)
    return {"slide_id": source.slide_id, "n_patches": len(vectors), "dim": int(vectors.shape[1]),
            "mean": vectors.mean(axis=0).tolist(), "std": std.tolist(), "spread": float(std.mean()),
            "model": str(model_dir), "weights_sha256": model_sha256(model_dir)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "sedm config (classes, seed and the styles section)")
    parser.add_argument("--model", required=True, type=Path, help="diffusion model directory")
    parser.add_argument("--store", required=True, type=Path, help="slide store")
    parser.add_argument("--out", required=True, type=Path, help="JSON file of the slide's embedding")


def run(args: argparse.Namespace) -> int:
    from sedm.runtime.devices import resolve_device

    config = load_config(args.config, runtime=args.runtime)
    styles = config["styles"]
    result = slide_embedding(args.model, args.store, classes=list(config["classes"]),
                             n_patches=int(styles["embedding_patches"]), seed=int(config["seed"]),
                             min_tissue_fraction=float(styles["min_tissue_fraction"]),
                             device=str(resolve_device(styles["device"])))
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    log.info("%s: %d patches, style spread %.4f", result["slide_id"], result["n_patches"], result["spread"])
    return 0
