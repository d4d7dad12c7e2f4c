"""How the cohort autoencoder's colour fidelity grows with training steps and width.

    python benchmarks/autoencoder_fidelity.py --results results [--steps 300 600 1200] [--widths 1 2]
        [--lowpass-weights 0 8] [--judge results/segmentation/real/model]

Issue 19's target: the layout decoder's mean optical-density error per stain small against the spread of
the slides' own mean OD. The demo trains 300 CPU steps and lands at 50-100 % of that spread; this shows
the curve that says what would reach it. On a finished run's tile stores (``--results``: labelled and
unlabelled slides, as the ``train_autoencoder`` rule gives them), for each width (channel multiplier of
the config's ``autoencoder.block_out_channels``) and each step count it trains the autoencoder exactly as
``sedm train-autoencoder`` does (same dataset, seed and QA crops; the learning rate is constant after
warm-up, so the run to 300 steps is the first 300 steps of the run to 1200) and reads its ``qa.json``.
Per row: seconds per training step (from the run's own log, without data set-up and QA; as a ratio to
the first row's, measured in the same run), PSNR and SSIM of the
layout decoder's reconstructions, its mean absolute OD error per stain and that error over the slides'
OD spread (the target is well below 1); with a layout decoder the same for the plain decoder beside it
(``plain_``). ``--lowpass-weights`` adds the weight of the regional-colour loss (``autoencoder.lowpass_weight``)
as a third dimension. ``--judge`` (a segmentation model of the run, e.g. its ``real`` arm) adds the
autoencoder ceiling per row, as ``sedm layout-fidelity`` measures it on the judge's validation tiles
(``ceiling_<variant>``: originals, both decoders' reconstructions and their texture on the originals'
regional colour). The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sedm.autoencoder.outputs import TRAIN_LOG  # noqa: E402
from sedm.autoencoder.train import train  # noqa: E402
from sedm.config import load_config, load_samples  # noqa: E402
from sedm.layout import results_paths  # noqa: E402

STAINS = ("H", "E", "D")


def autoencoder_config(config: dict, width: int, steps: int, lowpass_weight: float | None = None) -> dict:
    """The config with the autoencoder ``width`` x as wide, trained ``steps`` steps, checkpointing only at
    the end (the benchmark never resumes)."""
    cfg = copy.deepcopy(config)
    a = cfg["autoencoder"]
    a["block_out_channels"] = [c * width for c in a["block_out_channels"]]
    if lowpass_weight is not None:
        a["lowpass_weight"] = lowpass_weight
    a["max_steps"] = a["checkpoint_every"] = steps
    a["log_every"] = min(a["log_every"], steps)
    return cfg


def fidelity_row(qa: dict, decoder: str, prefix: str = "") -> dict:
    """PSNR, SSIM, mean absolute OD error per stain and its ratio to the slides' OD spread."""
    block = qa[decoder]
    err, spread = block["od_error_abs"], block["slide_od_spread"]
    return {f"{prefix}psnr": round(block["psnr"], 2), f"{prefix}ssim": round(block["ssim"], 3),
            **{f"{prefix}od_error_{s}": round(err[s], 5) for s in STAINS},
            **({} if prefix else {f"od_spread_{s}": round(spread[s], 5) for s in STAINS if spread[s] is not None}),
            **{f"{prefix}error_over_spread_{s}": round(err[s] / spread[s], 2) for s in STAINS if spread[s]}}


def ceiling_judge(model_dir: str | Path, labelled: list[Path], config: dict) -> tuple:
    """The judge and its validation tiles (as ``sedm layout-fidelity`` chooses them), loaded once."""
    from sedm.evaluation.layout_fidelity import load_segmenter, validation_tiles

    segment, meta = load_segmenter(model_dir, "cpu")
    val_slides = list(meta.get("split", {}).get("val_slides") or [])
    tiles = validation_tiles(labelled, val_slides, list(meta["classes"]), int(config["segmentation"]["val_tiles"]))
    return segment, tiles, list(meta["classes"])


def ceiling_row(judge: tuple, autoencoder: Path, config: dict) -> dict:
    """The judge's macro Dice on originals, reconstructions and their texture (``ceiling_<variant>``)."""
    from sedm.evaluation.layout_fidelity import reconstruction_dice

    segment, tiles, classes = judge
    scores = reconstruction_dice(segment, autoencoder, tiles, classes,
                                 int(config["segmentation"]["inference"]["batch_size"]))["macro_dice"]
    return {f"ceiling_{k}": round(v, 3) for k, v in scores.items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="config.yaml", help="the run's config (its sample sheet names the roles)")
    ap.add_argument("--results", required=True, help="a finished run's results directory (its tile stores)")
    ap.add_argument("--steps", type=int, nargs="+", default=[300, 600, 1200])
    ap.add_argument("--widths", type=int, nargs="+", default=[1], help="channel multipliers of the config's autoencoder")
    ap.add_argument("--lowpass-weights", type=float, nargs="+", default=None,
                    help="weights of the regional-colour loss to compare (default: the config's)")
    ap.add_argument("--judge", default=None, help="a segmentation model directory of the run: add the ceiling")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="directory to keep the models and QA files (default: temporary)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = load_config(args.config)
    samples = load_samples(config["samples"])
    paths, role = results_paths(args.results), samples["role"].to_dict()
    labelled = [Path(paths.store.format(slide=s)) for s in samples.index if role[s] == "labelled"]
    unlabelled = [Path(paths.store.format(slide=s)) for s in samples.index if role[s] == "unlabelled"]
    decoder = "layout_decoder" if config["autoencoder"]["layout_decoder"] else "autoencoder"

    judge = ceiling_judge(args.judge, labelled, config) if args.judge else None
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        root = Path(args.out) if args.out else Path(tmp_name)
        for width, lowpass, steps in itertools.product(args.widths, args.lowpass_weights or [None],
                                                       sorted(set(args.steps))):
            cfg = autoencoder_config(config, width, steps, lowpass)
            work = root / (f"w{width}-s{steps}" + ("" if lowpass is None else f"-lp{lowpass:g}"))
            rc = train(cfg, labelled, unlabelled, out=work / "model", qa=work / "qa.json",
                       montage=work / "montage.png", run_dir=work / "run", resume=False)
            if rc != 0:
                raise SystemExit(f"autoencoder training (width {width}, {steps} steps) exited {rc}")
            with open(work / "run" / TRAIN_LOG, newline="") as fh:
                sec_per_step = float(list(csv.DictReader(fh))[-1]["elapsed_s"]) / steps
            row = {"width": width, "block_out_channels": cfg["autoencoder"]["block_out_channels"],
                   "lowpass_weight": cfg["autoencoder"]["lowpass_weight"],
                   "steps": steps, "sec_per_step": round(sec_per_step, 3),
                   "sec_per_step_ratio": round(sec_per_step / rows[0]["sec_per_step"], 2) if rows else 1.0,
                   **fidelity_row(qa := json.loads((work / "qa.json").read_text()), decoder),
                   **(fidelity_row(qa, "autoencoder", "plain_") if decoder != "autoencoder" else {}),
                   **(ceiling_row(judge, work / "model", config) if judge else {})}
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "autoencoder_fidelity", "results": str(args.results), "seed": int(config["seed"]),
                      "decoder": decoder, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
