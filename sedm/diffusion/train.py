"""``sedm train-diffusion``: train the layout+style conditioned diffusion model on labelled slide stores.

Outputs: ``--out`` (model directory: config.json + EMA weights, see :mod:`sedm.models.io`) and
``--run-dir`` (checkpoints, ``train_log.csv``, preview grids in ``samples/``). The run directory is not
a Snakemake output on purpose: it must outlive a failed or preempted job so the next one resumes.

Exit status: 0 done; 2 bad input (one InputError line); **75** (EX_TEMPFAIL) after SIGTERM or SIGUSR1
(what SLURM sends at preemption / before the time limit) or ``--stop-at``: a checkpoint was written
and rerunning the same command with ``--resume auto`` continues exactly where it stopped (on CPU the
weights are bit-identical to an uninterrupted run). With SLURM use ``--signal=B:USR1@120`` and requeue
on 75; with Snakemake, ``--retries`` reruns the job, which resumes.

Determinism: all randomness of a training sample (patch positions, augmentation, noise, timestep,
style drop) is derived from (seed, sample index), and step ``s`` uses sample indices
``s*B .. s*B+B-1``. The batches therefore do not depend on DataLoader workers, on how the global batch
B is split over DDP ranks, or on interruptions; a resumed run with the same settings ends bit-identical
to an uninterrupted one. (Batches that arrive from worker processes sit in other memory, and CPU
kernels may then round differently: weights trained with ``num_workers`` 0 and 4 differ by ~1e-5.)

Multi-GPU: ``--gpus N`` (the workflow passes the job's ``gpu`` resource) with N > 1 replaces the process
by ``torchrun --standalone --nproc_per_node N -m sedm.cli train-diffusion ...`` (one DDP process per
GPU); ``batch_size`` is the global batch. The launch is decided here rather than in the rule, so a
changed GPU count is a resource change that reruns nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from sedm import __version__
from sedm.config import add_config_arguments, load_config
from sedm.diffusion import distributed as D
from sedm.diffusion.dataset import DiffusionPatchDataset, StepSampler
from sedm.diffusion.grid import preview_grid, save_png
from sedm.diffusion.outputs import LOG_COLUMNS, SAMPLES_DIR, TRAIN_LOG
from sedm.diffusion.pipeline import StedmPipeline
from sedm.diffusion.schedulers import train_scheduler
from sedm.errors import InputError
from sedm.models.codec import LatentCodec, PixelCodec, load_latent_codec
from sedm.models.io import save_model
from sedm.models.presets import model_config
from sedm.models.stedm import StedmConfig, StedmModel, count_parameters
from sedm.models.style_encoder import load_encoder_weights
from sedm.runtime.checkpoints import CheckpointStore
from sedm.runtime.csvlog import CsvLog
from sedm.runtime.devices import autocast
from sedm.runtime.ema import EMA, swapped_weights
from sedm.runtime.fingerprint import fingerprint, without_runtime_keys
from sedm.runtime.rng import set_rng_state
from sedm.runtime.schedules import warmup_constant, warmup_cosine
from sedm.runtime.signals import EXIT_REQUEUE, StopSignals, ignore_stop_signals
from sedm.seeds import sample_seed
from sedm.stain.jitter import StainJitter
from sedm.tiling.store import SlideStore
from sedm.tiling.table import tile_table_path

log = logging.getLogger(__name__)

COHORT = "cohort"
"""``diffusion.latent`` value: the latent space of the autoencoder trained on this cohort (sedm.autoencoder)."""

PREVIEW_INDEX = 2**61
"""Sample indices of the fixed preview batch (far from any training step's indices)."""
EMA_WARMUP_POWER = 0.75
"""Warm-up of the weight average (:class:`sedm.runtime.ema.EMA`): short runs average over a fitting horizon."""


# ------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "sedm config (YAML) or the workflow's stage snapshot")
    parser.add_argument("--stores", nargs="+", required=True, help="Zarr stores of the labelled slides")
    parser.add_argument("--unlabelled-stores", nargs="*", default=[],
                        help="stores of unlabelled slides, used when diffusion.use_unlabelled is true")
    parser.add_argument("--autoencoder", default=None,
                        help="the cohort autoencoder's directory (sedm train-autoencoder), when diffusion.latent is cohort")
    parser.add_argument("--out", required=True, help="model directory to write (config.json + weights)")
    parser.add_argument("--run-dir", required=True, help="checkpoints, train_log.csv and preview grids")
    parser.add_argument("--resume", choices=("auto", "never"), default="auto",
                        help="auto: newest checkpoint of the same config and stores, if any; never: start over")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--gpus", type=int, default=1,
                        help="GPUs of this job; more than 1 relaunches the command under torchrun, one process each")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="checkpoint and exit with 75 once this step is reached (preemption drill)")


def run(args: argparse.Namespace) -> int:
    if args.gpus > 1 and "LOCAL_RANK" not in os.environ:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.gpus}"]
        os.execv(sys.executable, [*torchrun, "-m", "sedm.cli", *args.argv])
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, args.runtime)
    unlabelled = args.unlabelled_stores
    if config["diffusion"]["use_unlabelled"] and not unlabelled:
        raise InputError(args.config, "diffusion.use_unlabelled", "true, but no --unlabelled-stores given",
                         "pass the unlabelled slides' stores or set use_unlabelled: false")
    if unlabelled and not config["diffusion"]["use_unlabelled"]:
        log.warning("ignoring %d --unlabelled-stores: diffusion.use_unlabelled is false", len(unlabelled))
        unlabelled = []
    config["diffusion"]["latent"] = latent_path(config["diffusion"]["latent"], args.autoencoder, args.config)
    return train(config, args.stores, unlabelled, out=args.out, run_dir=args.run_dir,
                 resume=args.resume == "auto", stop_at=args.stop_at)


def latent_path(latent: str | None, autoencoder: str | None, config_file: str | None) -> str | None:
    """The autoencoder directory ``diffusion.latent`` names: ``cohort`` = the one ``--autoencoder`` gives."""
    if latent != COHORT:
        if autoencoder:
            log.warning("ignoring --autoencoder %s: diffusion.latent is %r", autoencoder, latent)
        return latent
    if not autoencoder:
        raise InputError(config_file, "diffusion.latent", "is cohort, but no --autoencoder directory was given",
                         "run `sedm train-autoencoder` first and pass its --out as --autoencoder (the workflow "
                         "does), or set diffusion.latent to an autoencoder directory or null")
    return autoencoder


# ---------------------------------------------------------------------------------------- pieces
def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ALL trainable parameters: UNet, style encoder, aggregation, style projection and the
    null style. (The published STEDM code left the encoder out of its optimizer.) No weight decay on
    biases, norm scales and the null vectors."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def sample_randomness(indices: torch.Tensor, seed: int, shape: Sequence[int], num_timesteps: int,
                      style_drop: float, noise_offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise (B, *shape), timesteps (B,) and style-drop flags (B,), each a function of (seed, index).

    ``noise_offset``: plus one constant per channel ("offset noise"): independent noise per pixel
    averages out over a patch, so a patch's overall colour survives to the noisiest steps and the model
    never has to take it from the style; noise constant over the patch destroys it there too."""
    noise, steps, drops = [], [], []
    for index in indices.tolist():
        g = torch.Generator().manual_seed(sample_seed(seed, index))
        eps = torch.randn(tuple(shape), generator=g)
        steps.append(torch.randint(0, num_timesteps, (1,), generator=g))
        drops.append(torch.rand(1, generator=g) < style_drop)
        if noise_offset:
            eps = eps + noise_offset * torch.randn((shape[0], *[1] * (len(shape) - 1)), generator=g)
        noise.append(eps)
    return torch.stack(noise), torch.cat(steps), torch.cat(drops)


def snr_weights(timesteps: torch.Tensor, scheduler: Any, prediction_type: str, gamma: float) -> torch.Tensor:
    """Min-SNR-style loss weights (Hang et al., ICCV 2023): cap the weight of the nearly noise-free,
    easy timesteps, which otherwise dominate the gradient, for faster convergence.

    In terms of the implied clean-image error, an epsilon loss weights step t by SNR and a v loss by
    SNR + 1; the cap is applied to that weight: ``min(SNR, gamma) / SNR`` resp.
    ``min(SNR + 1, gamma) / (SNR + 1)``. For v this keeps the noisiest steps at full weight, where only
    the style vector can tell the stain colour (the common ``min(SNR, gamma) / (SNR + 1)`` would weight
    them ~SNR ~ 0, and on toy slides of two stains it transferred less colour).
    """
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    if prediction_type == "v_prediction":
        return (snr + 1).clamp(max=gamma) / (snr + 1)
    return snr.clamp(max=gamma) / snr


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, scheduler: Any,
                   prediction_type: str, kind: str = "mse", snr_gamma: float | None = None) -> torch.Tensor:
    """Per-sample mean MSE or L1, optionally min-SNR weighted, averaged over the batch."""
    diff = (pred.float() - target.float())
    per_sample = (diff.abs() if kind == "l1" else diff.pow(2)).flatten(1).mean(1)
    if snr_gamma:
        per_sample = per_sample * snr_weights(timesteps, scheduler, prediction_type, snr_gamma)
    return per_sample.mean()


def check_finite(loss_sum: torch.Tensor, since: int, step: int, section: Mapping[str, Any], info: D.DistInfo) -> None:
    """Stop with one clear error when the loss after step ``since`` up to ``step`` is not finite: the weights
    are lost from there on, and training on would only write NaN checkpoints and a NaN model."""
    if D.any_rank(not bool(torch.isfinite(loss_sum)), info):
        raise InputError(None, "diffusion.lr", f"the training loss became NaN or infinite between steps {since} and "
                         f"{step} at learning rate {section['lr']:g}",
                         "lower diffusion.lr (e.g. halve it) or raise diffusion.warmup_steps and train again; the "
                         "checkpoints written before it are intact")


def _lr_schedule(opt: torch.optim.Optimizer, section: Mapping[str, Any]) -> torch.optim.lr_scheduler.LambdaLR:
    if section["lr_schedule"] == "cosine":
        return warmup_cosine(opt, section["warmup_steps"], section["max_steps"])
    return warmup_constant(opt, section["warmup_steps"])


def run_fingerprint(config: Mapping[str, Any], stores: Sequence[str | Path],
                    unlabelled: Sequence[str | Path] = ()) -> str:
    """Hash of everything that determines the trained weights: the diffusion section without its
    runtime keys, classes, seed and the input stores (names, metadata, tile tables)."""
    semantic = {"diffusion": without_runtime_keys(config["diffusion"]), "classes": config["classes"],
                "seed": config["seed"], "labelled": [Path(s).name for s in stores],
                "unlabelled": [Path(s).name for s in unlabelled]}
    files = []
    for store in [*stores, *unlabelled]:
        files += [Path(store) / "zarr.json", tile_table_path(store)]
    if config["diffusion"]["latent"]:  # another autoencoder is another latent space: never resume across it
        files += sorted(p for p in Path(config["diffusion"]["latent"]).rglob("*") if p.is_file())
    return fingerprint(semantic, files)


def build_dataset(config: Mapping[str, Any], stores: Sequence[str | Path], unlabelled: Sequence[str | Path],
                  patch_size: int, style_patch_size: int, n_style: int) -> DiffusionPatchDataset:
    s = config["diffusion"]
    if not stores:
        raise InputError(None, "--stores", "no labelled stores given", "pass at least one labelled slide store")
    mpp = SlideStore(Path(stores[0])).mpp  # the nearby radius is configured in µm
    return DiffusionPatchDataset(
        stores, config["classes"], patch_size=patch_size, style_patch_size=style_patch_size, n_style=n_style,
        style_sampling=s["style_sampling"], nearby_radius=max(1, int(round(s["nearby_radius_um"] / mpp))),
        class_weights=s["class_weights"], unlabelled_stores=unlabelled,
        unlabelled_fraction=s["unlabelled_fraction"], augment=s["augment"],
        style_jitter=StainJitter.from_config(s["style_jitter"]) if s["style_jitter"]["enabled"] else None,
        layout_drop=s["layout_drop"], seed=config["seed"])


def build_codec(config: Mapping[str, Any]) -> PixelCodec | LatentCodec:
    latent = config["diffusion"]["latent"]
    return load_latent_codec(latent) if latent else PixelCodec()


def codec_config(config: Mapping[str, Any], codec: PixelCodec | LatentCodec, mpp: float | None = None) -> StedmConfig:
    """The model config of the diffusion section in the codec's space (pixel or latent)."""
    return model_config(config["diffusion"], config["classes"], latent_factor=codec.factor,
                        latent_channels=codec.channels, latent_scaling_factor=codec.scaling_factor,
                        latent_shift_factor=codec.shift_factor, mpp=mpp)


def build_model(config: Mapping[str, Any], mpp: float | None,
                codec: PixelCodec | LatentCodec | None = None) -> StedmModel:
    """Model (random init, or the encoder from ``style_encoder_weights``) with its codec attached."""
    s = config["diffusion"]
    codec = codec or build_codec(config)
    mcfg = codec_config(config, codec, mpp)
    torch.manual_seed(config["seed"])
    model = StedmModel(mcfg)
    if s["style_encoder_weights"]:
        load_encoder_weights(model.style_encoder, s["style_encoder_weights"])
    model.codec = codec
    return model


# -------------------------------------------------------------------------------------- training
def train(config: Mapping[str, Any], stores: Sequence[str | Path], unlabelled: Sequence[str | Path] = (), *,
          out: str | Path, run_dir: str | Path, resume: bool = True, stop_at: int | None = None) -> int:
    """Train and write the model directory; returns the exit status (0, or 75 when stopped early)."""
    s = config["diffusion"]
    info = D.init_distributed(s["device"])
    try:
        return _train(config, stores, unlabelled, out=Path(out), run_dir=Path(run_dir), resume=resume,
                      stop_at=stop_at, info=info)
    finally:
        D.shutdown(info)


def _train(config: Mapping[str, Any], stores: Sequence[str | Path], unlabelled: Sequence[str | Path], *,
           out: Path, run_dir: Path, resume: bool, stop_at: int | None, info: D.DistInfo) -> int:
    s = config["diffusion"]
    seed, device, max_steps, batch = config["seed"], info.device, s["max_steps"], s["batch_size"]
    sampler0 = StepSampler(0, 0, batch, info.rank, info.world)  # validates batch vs world size early

    # -- build everything (all input checks happen here, before any compute) --------------------------
    codec = build_codec(config)
    probe_cfg = codec_config(config, codec)
    dataset = build_dataset(config, stores, unlabelled, probe_cfg.patch_size, probe_cfg.style_patch_size,
                            probe_cfg.n_style)
    model = build_model(config, dataset.mpp, codec)
    cfg = model.config
    # on the device before the optimizer exists: a resumed optimizer state follows its parameters' device
    model.to(device)
    if device.type == "cuda" and s["channels_last"]:
        model.to(memory_format=torch.channels_last)
    model.codec.to(device)
    noise_sched = train_scheduler(cfg)
    opt = build_optimizer(model, s["lr"], s["weight_decay"])
    lr_sched = _lr_schedule(opt, s)
    checkpoints = CheckpointStore(run_dir, run_fingerprint(config, stores, unlabelled), keep=s["keep_checkpoints"])
    start = 0
    state = checkpoints.latest() if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        start = int(state["step"])
    ema = EMA(model, s["ema_decay"], warmup_power=EMA_WARMUP_POWER)
    if state is not None:
        ema.load_state_dict(state["ema"], updates=state["ema_updates"])
        set_rng_state(state["rng"])
        del state
    if info.is_main:
        log.info("STEDM %s: %.2f M parameters (UNet %.2f M, style encoder %.2f M), %s, %d process(es), "
                 "patches %d px at %.3g µm/px, steps %d -> %d", cfg.prediction_type, count_parameters(model) / 1e6,
                 count_parameters(model.unet) / 1e6, count_parameters(model.style_encoder) / 1e6, device,
                 info.world, cfg.patch_size, dataset.mpp, start, max_steps)

    net: torch.nn.Module = model
    if info.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(net) if s["compile"] else net

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=sampler0.per_rank, sampler=StepSampler(start, max_steps, batch, info.rank, info.world),
        num_workers=s["num_workers"], pin_memory=device.type == "cuda", drop_last=False,
        persistent_workers=False, worker_init_fn=ignore_stop_signals)
    csv = CsvLog(run_dir / TRAIN_LOG, LOG_COLUMNS, resume_step=start) if info.is_main else None
    preview = _preview_batch(dataset, s["preview_samples"]) if info.is_main else None
    latent_shape = (cfg.image_channels, cfg.sample_size, cfg.sample_size)
    bar = tqdm(total=max_steps, initial=start, disable=not info.is_main, desc="train-diffusion", file=sys.stderr,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)

    def save_state(step: int) -> None:
        if info.is_main:
            checkpoints.save(step, {"model": model.state_dict(), "ema": ema.state_dict(), "ema_updates": ema.updates,
                                    "optimizer": opt.state_dict(), "lr_scheduler": lr_sched.state_dict()})
        D.barrier(info)

    model.train()
    step, stopped, checked = start, False, start  # checked: the last step whose loss was seen finite
    t_log, steps_since, loss_sum = time.perf_counter(), 0, torch.zeros((), device=device)
    t0 = time.perf_counter()
    with StopSignals() as signals:
        for batch_data in loader:
            noise, t, drop = sample_randomness(batch_data["index"], seed, latent_shape, cfg.num_train_timesteps,
                                               s["style_drop"], s["noise_offset"])
            image = batch_data["image"].to(device, non_blocking=True)
            layout = batch_data["layout"].to(device, non_blocking=True)
            styles = batch_data["style"].to(device, non_blocking=True)
            noise, t, drop = noise.to(device), t.to(device), drop.to(device)
            with torch.no_grad():
                x0 = model.codec.encode(image)
            noisy = noise_sched.add_noise(x0, noise, t)
            target = noise if cfg.prediction_type == "epsilon" else noise_sched.get_velocity(x0, noise, t)
            if device.type == "cuda" and s["channels_last"]:
                noisy = noisy.contiguous(memory_format=torch.channels_last)
            with autocast(device, s["bf16"]):
                pred = forward(noisy, t, layout, styles, drop)
            loss = diffusion_loss(pred, target, t, noise_sched, cfg.prediction_type, s["loss"], s["snr_gamma"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
            opt.step()
            lr_sched.step()
            ema.update(model)
            step += 1
            steps_since += 1
            loss_sum += loss.detach()
            bar.update(1)

            if step % s["log_every"] == 0 or step == max_steps:
                check_finite(loss_sum, checked, step, s, info)
                checked = step
                mean_loss = D.all_reduce_mean(loss_sum / steps_since, info).item()
                now = time.perf_counter()
                if csv is not None:
                    rate = steps_since / max(now - t_log, 1e-9)
                    csv.append({"step": step, "loss": f"{mean_loss:.6f}", "lr": f"{lr_sched.get_last_lr()[0]:.3e}",
                                "grad_norm": f"{float(grad_norm):.4f}", "it_per_s": f"{rate:.3f}",
                                "img_per_s": f"{rate * batch:.2f}", "elapsed_s": f"{now - t0:.1f}"})
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                t_log, steps_since, loss_sum = now, 0, torch.zeros((), device=device)
            if s["sample_every"] and step % s["sample_every"] == 0 and step < max_steps and info.is_main:
                _write_preview(model, ema, preview, run_dir / SAMPLES_DIR / f"step-{step:08d}.png", seed)
            stop = D.any_rank(signals.requested is not None or (stop_at is not None and step >= stop_at), info)
            if stop or step % s["checkpoint_every"] == 0 or step == max_steps:
                check_finite(loss_sum, checked, step, s, info)  # never checkpoint diverged weights
                checked = step
                save_state(step)
            if stop and step < max_steps:
                stopped = True
                break
    bar.close()
    if stopped:
        if info.is_main:
            log.warning("stopped at step %d of %d; checkpoint written, exit %d", step, max_steps, EXIT_REQUEUE)
        return EXIT_REQUEUE
    if start == max_steps:
        log.info("checkpoint is already at max_steps=%d; writing the model", max_steps)
    _check_ranks_in_sync(model, info)
    if info.is_main:
        _write_preview(model, ema, preview, run_dir / SAMPLES_DIR / "final.png", seed)
        save_model(model, out, state_dict=ema.state_dict(), metadata={
            "steps": max_steps, "batch_size": batch, "world_size": info.world, "seed": seed,
            "fingerprint": checkpoints.fp,
            "mpp": dataset.mpp, "stores": [Path(p).name for p in stores],
            "unlabelled_stores": [Path(p).name for p in unlabelled], "sedm_version": __version__,
            "weights": "ema", "train_seconds_this_run": round(time.perf_counter() - t0, 1)})
        log.info("wrote %s", out)
    D.barrier(info)
    return 0


def _preview_batch(dataset: DiffusionPatchDataset, n: int) -> dict[str, torch.Tensor] | None:
    if n <= 0:
        return None
    items = [dataset[PREVIEW_INDEX + i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in ("image", "layout", "style")}


@torch.no_grad()
def _write_preview(model: StedmModel, ema: EMA, preview: dict[str, torch.Tensor] | None, path: Path,
                   seed: int) -> None:
    """Sample the preview batch with the EMA weights and save layout | styles | generated | real."""
    if preview is None:
        return
    device = next(model.parameters()).device
    model.eval()
    try:
        with swapped_weights(model, ema.state_dict()):
            generated = StedmPipeline(model)(preview["layout"].to(device), preview["style"].to(device), seed=seed)
    finally:
        model.train()

    def to_u8(x: torch.Tensor) -> np.ndarray:
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()

    labels = preview["layout"].argmax(1).numpy().astype(np.uint8)
    save_png(preview_grid(labels, to_u8(preview["style"]), generated, to_u8(preview["image"])), path)


def _check_ranks_in_sync(model: torch.nn.Module, info: D.DistInfo) -> None:
    """DDP keeps replicas identical; verify it (a silent divergence would save rank 0's half-model)."""
    if not info.enabled:
        return
    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    lo, hi = total.clone(), total.clone()
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError(f"DDP replicas diverged (parameter sums {lo.item()} vs {hi.item()})")
