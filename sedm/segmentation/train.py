"""``sedm train-seg``: train one segmentation arm (real, stain-augmented, real + synthetic, ...).

The arms differ only in their data (``segmentation.arms``: synthetic samples mixed in or not, stain
augmentation and stain normalisation or not, :mod:`sedm.segmentation.transforms`); model, schedule,
seed and validation split are the same, so their per-patient results can be compared pairwise. The
validation split is by patient; the model directory keeps the weights with the best validation macro
Dice and the last ones.

Interrupted runs resume exactly (see :mod:`sedm.runtime`): SIGTERM / SIGUSR1 -> checkpoint in
``--run-dir`` and exit 75; the next call with ``--resume auto`` continues from that step.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from sedm import __version__
from sedm.atomic import atomic_path
from sedm.config import add_config_arguments, load_config, load_samples
from sedm.errors import InputError
from sedm.evaluation.metrics import confusion_matrix, dice_iou, macro
from sedm.runtime.checkpoints import CheckpointStore
from sedm.runtime.csvlog import CsvLog
from sedm.runtime.devices import autocast, resolve_device
from sedm.runtime.ema import EMA, swapped_weights
from sedm.runtime.fingerprint import fingerprint, without_runtime_keys
from sedm.runtime.rng import set_rng_state
from sedm.runtime.schedules import warmup_cosine
from sedm.runtime.signals import EXIT_REQUEUE, StopSignals, ignore_stop_signals
from sedm.seeds import seed_everything
from sedm.arms import arm_variants
from sedm.segmentation.data import (RealTiles, SyntheticSet, TrainBatches, annotated_tiles, split_by_patient,
                                    split_tiles)
from sedm.segmentation.loss import masked_ce_dice
from sedm.segmentation.model import (architecture, build_model, divisor, load_init_weights, save_model_dir,
                                     segment, to_input)
from sedm.segmentation.outputs import LOG_COLUMNS, TRAIN_LOG
from sedm.segmentation.transforms import augmentation, fit_stain_norm, norm_method, stain_meta
from sedm.stain.normalise import StainNormaliser
from sedm.tiling.slides import same_mpp
from sedm.tiling.store import SlideStore, open_checked
from sedm.tiling.table import tile_table_path

log = logging.getLogger(__name__)

PREDICTION_KEYS = ("inference",)
"""Keys of the segmentation section that only prediction reads: left out of the training fingerprint.
(They change the stage's results, so they are not runtime keys of the workflow.)"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "sedm config or the segmentation stage snapshot")
    parser.add_argument("--arm", required=True, help="arm name: a key of segmentation.arms, or in a share sweep "
                        "<arm>-s<percent> (sedm.arms)")
    parser.add_argument("--stores", nargs="+", required=True, type=Path, help="labelled slide stores (.zarr)")
    parser.add_argument("--samples", required=True, type=Path, help="sample sheet (patient of each slide)")
    parser.add_argument("--synthetic", nargs="*", default=[], type=Path,
                        help="synthesis stores (.zarr), used by arms with synthetic: true")
    parser.add_argument("--out", required=True, type=Path, help="model directory to write")
    parser.add_argument("--run-dir", required=True, type=Path, help="checkpoints and train_log.csv")
    parser.add_argument("--resume", choices=("auto", "never"), default="auto",
                        help="auto: continue from a checkpoint in --run-dir made for the same config and data")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.runtime)
    samples = load_samples(args.samples)
    return train(cfg, arm=args.arm, stores=args.stores, samples=samples, synthetic=args.synthetic,
                 out=args.out, run_dir=args.run_dir, resume=args.resume == "auto", threads=args.threads)


# ------------------------------------------------------------------------------------------- data
@dataclass
class TrainingData:
    train: RealTiles
    val: RealTiles | None
    synthetic: list[SyntheticSet]
    mpp: float
    split: dict[str, Any] = field(default_factory=dict)
    normaliser: StainNormaliser | None = None
    """The arm's stain normaliser, fitted on the training tiles and applied to every tile above."""


def _open_stores(paths: Sequence[Path], classes: list[str], samples: pd.DataFrame) -> list[SlideStore]:
    stores = [open_checked(p, classes, samples.index) for p in paths]
    for store in stores:
        role = samples.at[store.slide_id, "role"]
        if role != "labelled":
            raise InputError(store.path, "role", f"slide {store.slide_id!r} has role {role!r}",
                             "train only on labelled slides; test slides must stay unseen")
    if not all(same_mpp(s.mpp, stores[0].mpp) for s in stores):
        raise InputError(stores[-1].path, "mpp", f"stores differ in µm/px ({[s.mpp for s in stores]})",
                         "tile every slide at the same tiling.mpp")
    return stores


def prepare_data(cfg: Mapping[str, Any], arm_cfg: Mapping[str, Any], store_paths: Sequence[Path],
                 samples: pd.DataFrame, synthetic_paths: Sequence[Path]) -> TrainingData:
    """Open and check every input, split by patient, pick training and validation tiles."""
    seg, classes, seed = cfg["segmentation"], list(cfg["classes"]), int(cfg["seed"])
    if not store_paths:
        raise InputError(None, "--stores", "no labelled stores", "pass the stores of the labelled slides")
    stores = _open_stores(store_paths, classes, samples)
    patient_of = samples["patient_id"].to_dict()
    slides = [s.slide_id for s in stores]
    train_slides, val_slides = split_by_patient(slides, patient_of, int(seg["val_patients"]), seed)
    tables = []
    for k, store in enumerate(stores):
        t = annotated_tiles(store, float(seg["min_annotated_fraction"]))
        tables.append(t.assign(store=k, slide=store.slide_id)[["store", "slide", "y", "x"]])
    tiles = pd.concat(tables, ignore_index=True)
    if tiles.empty:
        raise InputError(store_paths[0], "tiles", "no tile has enough annotated pixels",
                         "lower segmentation.min_annotated_fraction or annotate the labelled slides")
    split: dict[str, Any] = {"mode": "patient", "train_slides": train_slides, "val_slides": val_slides,
                             "val_patients": sorted({patient_of[s] for s in val_slides})}
    if val_slides:
        train_tiles, val_tiles = tiles[tiles.slide.isin(train_slides)], tiles[tiles.slide.isin(val_slides)]
    elif int(seg["val_patients"]) > 0:
        log.warning("a single labelled patient: validating on %.0f%% of its tiles (optimistic: tiles of one "
                    "patient are correlated)", 100 * seg["val_fraction"])
        tr, va = split_tiles(len(tiles), float(seg["val_fraction"]), seed)
        train_tiles, val_tiles = tiles.iloc[tr], tiles.iloc[va]
        split["mode"] = "tiles"
    else:
        train_tiles, val_tiles = tiles, tiles.iloc[:0]
        split["mode"] = "none"
    if train_tiles.empty:
        raise InputError(store_paths[0], "tiles", "no annotated training tiles left after the validation split",
                         "label more slides or set segmentation.val_patients: 0")
    if len(val_tiles) > int(seg["val_tiles"]):
        pick = np.sort(np.random.default_rng(seed).choice(len(val_tiles), int(seg["val_tiles"]), replace=False))
        val_tiles = val_tiles.iloc[pick]
    split["n_train_tiles"], split["n_val_tiles"] = len(train_tiles), len(val_tiles)

    mpp = stores[0].mpp
    method = norm_method(arm_cfg)  # the target stain: the training patients', never the validation ones'
    normaliser = fit_stain_norm(method, RealTiles(stores, train_tiles, 0), seed) if method else None
    synthetic: list[SyntheticSet] = []
    if arm_cfg["synthetic"]:
        if not synthetic_paths:
            raise InputError(None, "--synthetic", "this arm mixes in synthetic data but none was given",
                             "pass the synthesis stores of the unlabelled slides")
        synthetic = [SyntheticSet(p, classes, mpp, transform=normaliser) for p in synthetic_paths]
        for s in synthetic:
            if s.slide_id in samples.index and samples.at[s.slide_id, "role"] == "test":
                raise InputError(s.path, "attrs.sedm.slide_id", f"styled after test slide {s.slide_id!r}",
                                 "synthesize only in the style of unlabelled slides")
        split["synthetic_slides"] = [s.slide_id for s in synthetic]
    elif synthetic_paths:
        log.warning("arm has synthetic: false; ignoring %d synthesis stores", len(synthetic_paths))
    return TrainingData(RealTiles(stores, train_tiles, int(seg["cache_tiles"]), transform=normaliser),
                        RealTiles(stores, val_tiles, int(seg["val_tiles"]), transform=normaliser)
                        if len(val_tiles) else None, synthetic, mpp, split, normaliser)


# ------------------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model: torch.nn.Module, val: RealTiles, n_classes: int, device: torch.device, batch_size: int,
             div: int, amp: bool) -> tuple[float, list[float]]:
    """Macro Dice (and per-class Dice) of the model on whole validation tiles, pooled over tiles."""
    was_training = model.training
    model.eval()
    cm = np.zeros((n_classes + 1, n_classes + 1), np.int64)
    for start in range(0, len(val), batch_size):
        images, labels = zip(*(val.tile(i) for i in range(start, min(start + batch_size, len(val)))))
        cm += confusion_matrix(np.stack(labels), segment(model, np.stack(images), device, div, amp), n_classes)
    model.train(was_training)
    dice, _ = dice_iou(cm)
    return macro(dice), [float(d) for d in dice]


# --------------------------------------------------------------------------------------- training
def _fingerprint(cfg: Mapping[str, Any], arm: str, data: TrainingData, store_paths: Sequence[Path],
                 synthetic_paths: Sequence[Path], init: str | None) -> str:
    seg = without_runtime_keys(cfg["segmentation"], also=PREDICTION_KEYS)
    inputs = [*store_paths, *(tile_table_path(p) for p in store_paths)]
    if data.synthetic:
        inputs += list(synthetic_paths)
    if init:
        inputs.append(Path(init))
    return fingerprint({"segmentation": seg, "classes": cfg["classes"], "seed": cfg["seed"], "arm": arm,
                        "split": data.split}, inputs)


def _save_weights(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))


def train(cfg: Mapping[str, Any], *, arm: str, stores: Sequence[Path], samples: pd.DataFrame,
          synthetic: Sequence[Path] = (), out: Path, run_dir: Path, resume: bool = True,
          threads: int | None = None, on_step: Callable[[int], None] | None = None) -> int:
    """Train arm ``arm`` and write the model directory ``out``; 0 when done, 75 when interrupted.

    ``on_step(step)`` is called after each optimizer step (tests use it to send a signal).
    """
    seg, classes, seed = cfg["segmentation"], list(cfg["classes"]), int(cfg["seed"])
    variants = arm_variants(seg)
    if arm not in variants:
        raise InputError(None, "--arm", f"unknown arm {arm!r}", f"use one of {sorted(variants)}")
    variant = variants[arm]
    arm_cfg = variant.config
    if threads:
        torch.set_num_threads(threads)
    arch = architecture(seg, len(classes))
    div, patch = divisor(arch), int(seg["patch_size"])
    if patch % div:
        raise InputError(None, "segmentation.patch_size", f"{patch} is not a multiple of {div}",
                         f"use a multiple of 2^(len(channels) - 1) = {div}")
    data = prepare_data(cfg, arm_cfg, [Path(p) for p in stores], samples, [Path(p) for p in synthetic])
    fp = _fingerprint(cfg, arm, data, stores, synthetic, seg["init_weights"])
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(seg["device"])
    max_steps, amp = int(seg["max_steps"]), bool(seg["amp"])

    seed_everything(seed)
    model = build_model(arch)
    if seg["init_weights"]:
        load_init_weights(model, seg["init_weights"])
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(seg["lr"]), weight_decay=float(seg["weight_decay"]))
    scheduler = warmup_cosine(optimizer, int(seg["warmup_steps"]), max_steps, float(seg["min_lr_ratio"]))
    ema = EMA(model, float(seg["ema_decay"])) if seg["ema"] else None
    start, best = 0, {"score": float("-inf"), "step": -1, "per_class": []}
    checkpoints = CheckpointStore(run_dir, fp, keep=int(seg["keep_checkpoints"]))
    best_path = run_dir / "best.safetensors"
    state = checkpoints.latest() if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, best = int(state["step"]), dict(state["best"])
        set_rng_state(state["rng"])
        log.info("resuming arm %s at step %d of %d", arm, start, max_steps)
    train_log = CsvLog(run_dir / TRAIN_LOG, LOG_COLUMNS, resume_step=start)

    stain = augmentation(arm_cfg, seg, data.train, seed, arm)
    batches = TrainBatches(data.train, data.synthetic, synthetic_fraction=variant.share,
                           batch_size=int(seg["batch_size"]), patch_size=patch, seed=seed,
                           flips=bool(seg["flips"]), stain=stain)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, max_steps),
                                         num_workers=int(seg["num_workers"]), pin_memory=device.type == "cuda",
                                         worker_init_fn=ignore_stop_signals if int(seg["num_workers"]) else None)

    def checkpoint(step: int) -> None:
        checkpoints.save(step, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema else {},
                                "best": best})

    def inference_weights() -> dict[str, torch.Tensor] | None:
        return ema.state_dict() if ema is not None else None

    t0, n_syn, n_seen = time.perf_counter(), 0, 0
    with StopSignals() as stop, tqdm(total=max_steps, initial=start, desc=f"train-seg {arm}", file=sys.stderr,
                                     mininterval=2.0, dynamic_ncols=True) as bar:
        for step, batch in enumerate(loader, start):
            x = to_input(batch["image"].to(device, non_blocking=True))
            y = batch["labels"].to(device, non_blocking=True)
            with autocast(device, amp):
                logits = model(x)
            loss = masked_ce_dice(logits, y, float(seg["ce_weight"]), float(seg["dice_weight"]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if seg["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(seg["grad_clip"]))
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            done = step + 1
            n_syn, n_seen = n_syn + int(batch["synthetic"].sum()), n_seen + len(batch["synthetic"])
            bar.update(1)
            val_score = None
            if data.val is not None and (done % int(seg["val_every"]) == 0 or done == max_steps):
                with swapped_weights(model, inference_weights()):
                    val_score, per_class = validate(model, data.val, len(classes), device, int(seg["batch_size"]),
                                                    div, amp)
                if np.isfinite(val_score) and val_score > best["score"]:
                    best = {"score": val_score, "step": done, "per_class": per_class}
                    _save_weights(best_path, inference_weights() or model.state_dict())
                bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{val_score:.3f}")
            if done % int(seg["log_every"]) == 0 or done == max_steps or val_score is not None:
                train_log.append({"step": done, "loss": f"{loss.item():.6f}", "lr": f"{scheduler.get_last_lr()[0]:.3e}",
                                  "synthetic_fraction": f"{n_syn / max(n_seen, 1):.3f}",
                                  "val_macro_dice": None if val_score is None else f"{val_score:.6f}",
                                  "seconds": f"{time.perf_counter() - t0:.1f}"})
                n_syn = n_seen = 0
            if on_step is not None:
                on_step(done)
            if done % int(seg["ckpt_every"]) == 0 or done == max_steps or stop.requested:
                checkpoint(done)
            if stop.requested:
                return EXIT_REQUEUE

    last = {k: v.detach().clone() for k, v in (inference_weights() or model.state_dict()).items()}
    if best["step"] < 0 or not best_path.is_file():
        log.warning("no validation score: the 'best' weights are the last ones")
        best_weights = last
    else:
        best_weights = load_file(str(best_path))
    meta = {"architecture": arch, "classes": classes, "mpp": data.mpp, "patch_size": patch, "arm": arm,
            "arm_config": dict(arm_cfg), "arm_family": variant.family, "synthetic_share": variant.share,
            "steps": max_steps, "best_step": best["step"],
            "best_val_macro_dice": best["score"] if np.isfinite(best["score"]) else None,
            "best_val_dice_per_class": {c: (d if np.isfinite(d) else None) for c, d in zip(classes, best["per_class"])},
            "split": data.split, "ema": bool(seg["ema"]), "seed": seed, "fingerprint": fp,
            "sedm_version": __version__, "train_seconds": round(time.perf_counter() - t0, 1)}
    meta.update(stain_meta(data.normaliser, stain))  # prediction normalises with the stored target
    save_model_dir(out, meta, {"best": best_weights, "last": last}, {TRAIN_LOG: run_dir / TRAIN_LOG})
    log.info("arm %s: best validation macro Dice %s at step %s -> %s", arm, meta["best_val_macro_dice"],
             best["step"], out)
    return 0
