"""`sedm stylize`: how far the stain moves and how much structure stays, over the SDEdit strength.

    python benchmarks/stylize_strength.py --results results [--strengths 0.2 0.3 0.4 0.6 0.8]

Partial noising trades structure for style: at a low strength the output is the input, at 1 it is a
new sample of the layout. Which default serves a user (tissue in the style's colours, the input's
structure kept) depends on how well the model has learned the style pathway, so it is measured, not
guessed. On a finished run (``--results``): the most tissue-rich tiles of its test slides as inputs
(with their annotation as ``--mask``, and without a mask), restyled to each of its first
unlabelled slides by its diffusion model, through the ``sedm stylize`` command; per strength the
median over tiles of ``colour_transfer`` (1 = the style's mean tissue optical density, 0 = the
input's), ``ssim_luminance`` (structure kept) and ``output_tissue_fraction`` (no glass, no noise),
averaged over the style sources. The last output
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sedm.cli import main as sedm_main  # noqa: E402
from sedm.config import load_config, load_samples  # noqa: E402
from sedm.layout import results_paths  # noqa: E402
from sedm.synthesis.stylize import PROVENANCE_NAME  # noqa: E402
from sedm.tiling.store import SlideStore  # noqa: E402

MEASURES = ("colour_transfer", "ssim_luminance", "output_tissue_fraction")


def write_inputs(stores: list[Path], per_slide: int, size: int, folder: Path) -> None:
    """The ``per_slide`` tiles of each store with the most annotated tissue (the smaller of their
    tissue and annotated fractions), centre-cropped to ``size``, as ``folder/in/*.png`` and their
    labels as ``folder/masks/*.png``."""
    (folder / "in").mkdir(parents=True)
    (folder / "masks").mkdir()
    for path in stores:
        store = SlideStore(path)
        tiles = store.tiles()
        annotated_tissue = np.minimum(tiles["tissue_fraction"], 1.0 - tiles["frac_unannotated"])
        tiles = tiles.assign(key=annotated_tissue).sort_values("key", ascending=False, kind="stable")
        off = (store.tile_size - size) // 2
        for i, t in enumerate(tiles.head(per_slide).itertuples()):
            y, x = int(t.y) + off, int(t.x) + off
            name = f"{store.slide_id}-{i}.png"
            Image.fromarray(store.read_image(y, x, size, size)).save(folder / "in" / name)
            Image.fromarray(store.read_labels(y, x, size, size)).save(folder / "masks" / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="config.yaml", help="the run's config (its sample sheet names the roles)")
    ap.add_argument("--results", required=True, help="a finished run's results directory")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.6, 0.8])
    ap.add_argument("--styles", type=int, default=2, help="how many unlabelled slides serve as style sources")
    ap.add_argument("--per-slide", type=int, default=4, help="input tiles per test slide")
    ap.add_argument("--size", type=int, default=128, help="input tile size in pixels (store µm/px)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    config = load_config(args.config)
    samples = load_samples(config["samples"])
    paths = results_paths(args.results)
    role = samples["role"].to_dict()
    test = [Path(paths.store.format(slide=s)) for s in samples.index if role[s] == "test"]
    styles = [Path(paths.store.format(slide=s)) for s in samples.index if role[s] == "unlabelled"][:args.styles]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_inputs(test, args.per_slide, args.size, tmp)
        for strength in args.strengths:
            for masked in (True, False):
                per_style = []
                for style in styles:
                    out = tmp / f"out-{strength}-{masked}-{style.stem}"
                    argv = ["stylize", "--model", paths.diffusion_model, "--style-slide", str(style),
                            "--input", str(tmp / "in"), "--out", str(out), "--strength", str(strength),
                            "--seed", str(args.seed)] + (["--mask", str(tmp / "masks")] if masked else [])
                    if sedm_main(argv) != 0:
                        raise SystemExit(f"sedm {' '.join(argv)} failed")
                    per_style.append(json.loads((out / PROVENANCE_NAME).read_text())["median"])
                row = {"strength": strength, "mask": masked,
                       **{m: float(np.mean([s[m] for s in per_style])) for m in MEASURES}}
                rows.append(row)
                print(f"strength={strength:.2f} mask={masked!s:5} "
                      + " ".join(f"{m}={row[m]:.3f}" for m in MEASURES), flush=True)
    print(json.dumps({"benchmark": "stylize_strength", "results": str(args.results), "seed": args.seed,
                      "styles": [s.stem for s in styles], "tiles": args.per_slide * len(test), "rows": rows}))


if __name__ == "__main__":
    sys.exit(main())
