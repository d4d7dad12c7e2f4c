"""How the style measures grow with diffusion training steps, model width and design (pixel or latent).

    python benchmarks/style_scaling.py --results results [--steps 150 300 600 1200] [--widths 1 2] [--lr 0.001]
        [--latent pixel results/autoencoder/model] [--cross-attention]

The demo trains the ``tiny`` preset for a few hundred CPU steps; the style targets (median transfer
ratio >= 0.6, no pair below 0.3, layout fidelity within 0.1 of real tiles) are not all reached there.
This benchmark shows the trend that says what would reach them. On a finished run's tile stores
(``--results``: the labelled slides train, the unlabelled ones are the unseen styles) and its
baseline segmenter, for each width (channel multiplier of the ``tiny`` UNet and style encoder) it
trains one run with a constant learning rate after warm-up, snapshots the EMA weights at each of
``--steps``, and measures every snapshot exactly as the pipeline does; ``--latent`` lists the designs
compared in the same run (pixel space, or the latent space of an autoencoder directory, whose layout
decoder, if it has one, is measured beside its plain decoder):

* ``sedm.synthesis.style_check.measure``: transfer ratio (median, worst pair) and separability;
* layout fidelity: the baseline segmenter's macro Dice on tiles generated at the synthesis patch
  size from annotated layouts in each unlabelled slide's style, next to its Dice on real validation
  tiles (``sedm.evaluation.layout_fidelity.synthetic_dice``).

One constant-rate run per width (instead of one cosine run per step count) makes the snapshots
points of a single training trajectory: the demo's own cosine-annealed 300-step model is not one of
them. Seconds per training step are measured on the run itself. The last output line is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sedm.config import load_config, load_samples  # noqa: E402
from sedm.diffusion.train import build_model, train  # noqa: E402
from sedm.evaluation.layout_fidelity import baseline_arm, load_segmenter, stain_robust_arm, synthetic_dice  # noqa: E402
from sedm.layout import results_paths  # noqa: E402
from sedm.models.io import save_model  # noqa: E402
from sedm.models.presets import PRESETS  # noqa: E402
from sedm.runtime.checkpoints import list_checkpoints  # noqa: E402
from sedm.synthesis.generate import Generator, check_model  # noqa: E402
from sedm.synthesis.style_check import measure, style_inputs  # noqa: E402
from sedm.tiling.store import SlideStore  # noqa: E402

WIDENED = ("block_out_channels", "style_encoder_channels")


def widened(diffusion: dict, width: int, steps: list[int], lr: float | None = None) -> dict:
    """The demo's diffusion section, ``width`` x the tiny preset's channels, one constant-rate run
    (at ``lr`` if given: a wider model may need a lower rate than the demo's)."""
    base = PRESETS[diffusion["preset"]]
    every = math.gcd(*steps)
    section = copy.deepcopy(diffusion)
    section.update({key: [c * width for c in base[key]] for key in WIDENED})
    section.update(style_dim=base["style_dim"] * width, max_steps=max(steps), lr_schedule="constant",
                   checkpoint_every=every, keep_checkpoints=max(steps) // every + 1, sample_every=0,
                   preview_samples=0, device="cpu")
    if lr is not None:
        section["lr"] = lr
    return section


def snapshot(config: dict, run_dir: Path, step: int, mpp: float, out: Path) -> Path:
    """The EMA weights of ``step``'s checkpoint as a model directory."""
    path = dict(list_checkpoints(run_dir))[step]
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(config, mpp)
    save_model(model, out, state_dict=state["ema"], metadata={"steps": step, "mpp": mpp, "weights": "ema"})
    return out


def layout_fidelity(config: dict, model_dir: Path, labelled: list[Path], unlabelled: list[Path],
                    segmenter: Path, n_layouts: int, robust_segmenter: Path | None = None) -> dict:
    """The baseline segmenter's Dice on generated tiles at the synthesis patch size (their layouts as
    truth), and the synthetic tiles per second. A latent model with a layout decoder is measured twice:
    decoded by it (``synthetic``, what synthesis does) and by the plain decoder (``synthetic_plain``)."""
    syn, seed = config["synthesis"], int(config["seed"])
    mcfg = dict(check_model(model_dir, config["classes"]), patch_size=int(syn["patch_size"]))
    labels, styles, _ = style_inputs(mcfg, labelled, unlabelled, seed=seed, n_layouts=n_layouts,
                                     n_encoder_patches=1, min_tissue_fraction=syn["style_min_tissue_fraction"])
    generate = Generator.for_synthesis(model_dir, syn, "cpu")
    segment, meta = load_segmenter(segmenter, torch.device("cpu"))
    robust = load_segmenter(robust_segmenter, torch.device("cpu"))[0] if robust_segmenter else None
    codec = generate.model.codec
    decoders = {"synthetic": getattr(codec, "layout_decoder", None)}
    if decoders["synthetic"] is not None:
        decoders["synthetic_plain"] = None
    out = {"real_val": meta.get("best_val_macro_dice"), "patch_size": int(syn["patch_size"])}
    for name, decoder in decoders.items():
        if hasattr(codec, "layout_decoder"):
            codec.layout_decoder = decoder
        sets, t0 = {}, time.perf_counter()
        for st in styles:
            batch = np.ascontiguousarray(np.broadcast_to(st.patches[None], (len(labels), *st.patches.shape)))
            sets[st.slide_id] = list(zip(generate(labels, batch, seed=seed), labels))
        n = sum(len(v) for v in sets.values())
        out.update({name: synthetic_dice(segment, sets, len(config["classes"]))["macro_dice"], "n_tiles": n,
                    f"{name}_tiles_per_s": round(n / (time.perf_counter() - t0), 3)})
        if robust is not None:
            out[f"{name}_stain_robust"] = synthetic_dice(robust, sets, len(config["classes"]))["macro_dice"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="config.yaml", help="the run's config (its sample sheet names the roles)")
    ap.add_argument("--results", required=True, help="a finished run's results directory (stores, segmenter)")
    ap.add_argument("--steps", type=int, nargs="+", default=[150, 300, 600, 1200])
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 2], help="channel multipliers of the tiny preset")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: the config's)")
    ap.add_argument("--latent", nargs="+", default=["pixel"], metavar="DESIGN",
                    help="one run per design: pixel (pixel space) or an autoencoder directory (sedm train-autoencoder "
                         "--out) to train in its latent space; several compare the designs in one run")
    ap.add_argument("--cross-attention", action="store_true",
                    help="also offer the style patches' vectors as cross-attention tokens (diffusion.cross_attention): "
                         "texture borrowed from the style patches")
    ap.add_argument("--stain-match", type=float, default=None,
                    help="synthesis.stain_match for the measures (default: the config's); 0 measures the learned "
                         "style pathway alone, since stain matching makes the transfer ratio trivially high")
    ap.add_argument("--fidelity-layouts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="directory to keep the snapshots and measures (default: temporary)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = sorted(set(args.steps))

    config = load_config(args.config)
    if args.stain_match is not None:
        config["synthesis"] = dict(config["synthesis"], stain_match=args.stain_match)
    samples = load_samples(config["samples"])
    paths = results_paths(args.results)
    role = samples["role"].to_dict()
    labelled = [Path(paths.store.format(slide=s)) for s in samples.index if role[s] == "labelled"]
    unlabelled = [Path(paths.store.format(slide=s)) for s in samples.index if role[s] == "unlabelled"]
    segmenter = Path(paths.seg_model.format(arm=baseline_arm(config)))
    robust_arm = stain_robust_arm(config)
    robust = Path(paths.seg_model.format(arm=robust_arm)) if robust_arm else None
    mpp = SlideStore(labelled[0]).mpp

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        root = Path(args.out) if args.out else Path(tmp_name)
        for design, width in [(d, w) for d in args.latent for w in args.widths]:
            cfg = dict(config, diffusion=widened(config["diffusion"], width, steps, args.lr))
            cfg["diffusion"]["latent"] = None if design == "pixel" else design
            cfg["diffusion"]["cross_attention"] = args.cross_attention or cfg["diffusion"]["cross_attention"]
            name = f"w{width}" if design == "pixel" else f"{Path(design).name}-w{width}"
            run_dir, work = root / name / "run", root / name
            t0 = time.perf_counter()
            rc = train(cfg, labelled, out=work / "model", run_dir=run_dir)
            if rc != 0:
                raise SystemExit(f"training width {width} exited {rc}")
            sec_per_step = (time.perf_counter() - t0) / max(steps)
            params = sum(p.numel() for p in build_model(cfg, mpp).parameters())
            for step in steps:
                model_dir = snapshot(cfg, run_dir, step, mpp, work / f"step-{step}")
                style = measure(cfg, model_dir, labelled, unlabelled, work / f"step-{step}.style.json",
                                work / f"step-{step}.grid.png")
                fid = layout_fidelity(cfg, model_dir, labelled, unlabelled, segmenter, args.fidelity_layouts, robust)
                row = {"design": "pixel" if design == "pixel" else "latent", "width": width,
                       "cross_attention": cfg["diffusion"]["cross_attention"],
                       "stain_match": cfg["synthesis"]["stain_match"],
                       "params_m": round(params / 1e6, 2), "step": step, "lr": cfg["diffusion"]["lr"],
                       "sec_per_step": round(sec_per_step, 3),
                       "transfer_median": style["transfer"]["median"], "transfer_min": style["transfer"]["min"],
                       "transfer_median_random": style["transfer_random_init"]["median"],
                       "transfer_min_random": style["transfer_random_init"]["min"],
                       "separability": style["separability"]["trained"],
                       "separability_random": style["separability"]["random_init"],
                       "train_cpu_s": round(sec_per_step * step, 1),
                       "fidelity_synthetic": fid["synthetic"], "fidelity_real_val": fid["real_val"],
                       "fidelity_plain_decoder": fid.get("synthetic_plain"),
                       "fidelity_stain_robust": fid.get("synthetic_stain_robust"),
                       "tiles_per_s": fid["synthetic_tiles_per_s"]}
                rows.append(row)
                print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
    print(json.dumps({"benchmark": "style_scaling", "results": str(args.results), "seed": int(config["seed"]),
                      "lr_schedule": "constant", "rows": rows}))


if __name__ == "__main__":
    sys.exit(main())
