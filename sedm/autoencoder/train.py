"""``sedm train-autoencoder``: the cohort's own latent autoencoder, before diffusion training.

Trained on tissue crops of the labelled and unlabelled slides (never the test slides: their styles
must stay unseen), so it reconstructs every stain the synthesis will ask for. Losses: L1 of the
image, L1 of its finite differences (sharp nuclei and fibre borders), a small KL term (a smooth
latent space the diffusion model can sample), and, with ``layout_decoder``, the same losses of the
layout decoder on noise-augmented, gradient-stopped latents (:mod:`sedm.models.autoencoder`).

Outputs: ``--out``, a self-contained directory (the diffusers ``AutoencoderKL`` files, its
``scaling_factor`` set to 1 / the latents' measured standard deviation, plus ``layout_decoder/``);
``--qa`` (JSON) and ``--montage`` (PNG) of :mod:`sedm.autoencoder.qa`. The run directory holds the
checkpoints and ``train_log.csv``; as for the other trainers it is not a Snakemake output, SIGTERM or
SIGUSR1 checkpoint and exit 75, and ``--resume auto`` continues a run of the same config and stores.
Every random choice of step ``s`` is a function of (seed, sample index), so a resumed run ends with
the weights of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sedm import __version__
from sedm.atomic import atomic_path
from sedm.models.autoencoder import (LayoutDecoder, PatchDiscriminator, build_autoencoder, count, reconstruction_loss,
                                    kl_divergence, layout_decoder_config)
from sedm.autoencoder.outputs import LOG_COLUMNS, PROVENANCE, TRAIN_LOG
from sedm.autoencoder.qa import QA_INDEX, write_qa
from sedm.config import add_config_arguments, load_config, validate_section
from sedm.diffusion.dataset import DiffusionPatchDataset, StepSampler
from sedm.errors import InputError
from sedm.models.codec import LAYOUT_DECODER_DIR
from sedm.models.stedm import stain_condition
from sedm.labels import n_layout_channels
from sedm.runtime.checkpoints import CheckpointStore
from sedm.runtime.csvlog import CsvLog
from sedm.runtime.devices import resolve_device
from sedm.runtime.fingerprint import fingerprint, without_runtime_keys
from sedm.runtime.rng import set_rng_state
from sedm.runtime.schedules import warmup_constant
from sedm.runtime.signals import EXIT_REQUEUE, StopSignals
from sedm.seeds import index_rng, sample_seed
from sedm.stain.jitter import StainJitter
from sedm.tiling.table import tile_table_path

log = logging.getLogger(__name__)

SCALE_BATCHES = 8
"""Batches of fixed samples whose latents set ``scaling_factor`` (1 / their standard deviation)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "sedm config (YAML) or the workflow's stage snapshot")
    parser.add_argument("--stores", nargs="+", required=True, help="Zarr stores of the labelled slides")
    parser.add_argument("--unlabelled-stores", nargs="*", default=[], help="Zarr stores of the unlabelled slides")
    parser.add_argument("--out", required=True, help="autoencoder directory to write")
    parser.add_argument("--qa", required=True, help="quality JSON to write (reconstruction, colour fidelity)")
    parser.add_argument("--montage", required=True, help="reconstruction montage PNG to write")
    parser.add_argument("--run-dir", required=True, help="checkpoints and train_log.csv")
    parser.add_argument("--resume", choices=("auto", "never"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="checkpoint and exit with 75 once this step is reached (preemption drill)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, args.runtime)
    return train(config, args.stores, args.unlabelled_stores, out=args.out, qa=args.qa, montage=args.montage,
                 run_dir=args.run_dir, resume=args.resume == "auto", stop_at=args.stop_at)


def build_dataset(config: Mapping[str, Any], stores: Sequence[str | Path],
                  unlabelled: Sequence[str | Path]) -> DiffusionPatchDataset:
    """Tissue crops with their layouts (unlabelled crops: "tissue, class unknown"), restained with
    ``stain_jitter``, and, for a layout decoder that paints with stain statistics, style patches of the
    same slide restained alike."""
    a = config["autoencoder"]
    if a["unlabelled_fraction"] > 0 and not unlabelled:
        log.warning("autoencoder.unlabelled_fraction is %g but no unlabelled stores were given: training on the "
                    "labelled slides only", a["unlabelled_fraction"])
    stain = a["layout_decoder"] and a["layout_decoder_stain"]
    return DiffusionPatchDataset(stores, config["classes"], patch_size=a["patch_size"],
                                 n_style=a["style_patches"] if stain else 0, style_patch_size=a["style_patch_size"],
                                 unlabelled_stores=unlabelled, unlabelled_fraction=a["unlabelled_fraction"],
                                 class_weights=None, augment=True, layout_drop=a["layout_drop"],
                                 style_jitter=stain_jitter() if a["stain_jitter"] else None, unlabelled_tissue=True,
                                 seed=config["seed"])


def stain_jitter() -> StainJitter:
    """The restaining of the diffusion model's training samples (the schema's ``diffusion.style_jitter``
    defaults), applied alike to a crop and its style patches. The diffusion model trains on restained
    patches, so the autoencoder must encode and decode those stains faithfully too (trained on the
    cohort's stains alone, it followed about half of a restaining's colour change); and a layout decoder
    that paints with stain statistics can only take the stain from them."""
    return StainJitter.from_config(validate_section("diffusion")["style_jitter"])


def run_fingerprint(config: Mapping[str, Any], stores: Sequence[str | Path], unlabelled: Sequence[str | Path]) -> str:
    semantic = {"autoencoder": without_runtime_keys(config["autoencoder"]), "classes": config["classes"],
                "seed": config["seed"], "labelled": [Path(s).name for s in stores],
                "unlabelled": [Path(s).name for s in unlabelled]}
    files = []
    for store in [*stores, *unlabelled]:
        files += [Path(store) / "zarr.json", tile_table_path(store)]
    return fingerprint(semantic, files)


def _batch(dataset: DiffusionPatchDataset, indices: range) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in indices]
    return {k: torch.stack([it[k] for it in items]) for k in ("image", "layout")}


def latent_noise(latents: torch.Tensor, indices: Sequence[int], seed: int, strength: float) -> torch.Tensor:
    """Per sample, Gaussian noise of a standard deviation drawn uniformly from [0, strength] x the batch's
    latent std: the layout decoder learns to render from latents as imperfect as a sampler's."""
    out = []
    for i, index in enumerate(indices):
        g = torch.Generator().manual_seed(sample_seed(seed, index) ^ 0x5EED)
        level = torch.rand((), generator=g) * strength
        out.append(torch.randn(latents.shape[1:], generator=g) * level)
    return torch.stack(out).to(latents) * latents.detach().std()


def restained(images: torch.Tensor, indices: Sequence[int], seed: int) -> torch.Tensor:
    """Each (3, H, W) crop in [-1, 1] under an independent random restaining (:func:`stain_jitter`,
    drawn from (seed, sample index)): the latents a stain-painting layout decoder reads then say nothing
    about the target's stain, so it must take the stain from the style statistics."""
    jitter, out = stain_jitter(), []
    for image, index in zip(images, indices):
        rgb = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        rgb = jitter(rgb, index_rng(seed ^ 0x57A1, index))
        out.append(torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1.0)
    return torch.stack(out).to(images)


def train(config: Mapping[str, Any], stores: Sequence[str | Path], unlabelled: Sequence[str | Path] = (), *,
          out: str | Path, qa: str | Path, montage: str | Path, run_dir: str | Path, resume: bool = True,
          stop_at: int | None = None) -> int:
    """Train, then write the autoencoder directory, the QA JSON and the montage; returns the exit status."""
    a, seed = config["autoencoder"], int(config["seed"])
    dataset = build_dataset(config, stores, unlabelled)
    device = resolve_device(a["device"])
    torch.manual_seed(seed)
    vae = build_autoencoder(a["block_out_channels"], a["latent_channels"], a["layers_per_block"],
                            a["norm_num_groups"], a["patch_size"]).to(device)
    n_layout = n_layout_channels(config["classes"], tissue_channel=True)
    decoder = LayoutDecoder(layout_decoder_config(a, n_layout)).to(device) if a["layout_decoder"] else None
    modules = {"vae": vae, **({"layout_decoder": decoder} if decoder is not None else {})}
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=a["lr"], weight_decay=0.0)
    lr_sched = warmup_constant(opt, a["warmup_steps"])
    adversarial = decoder is not None and a["adversarial_weight"] > 0
    critic = PatchDiscriminator(n_layout).to(device) if adversarial else None
    opt_critic = torch.optim.AdamW(critic.parameters(), lr=a["lr"], betas=(0.5, 0.9)) if critic else None
    checkpoints = CheckpointStore(run_dir, run_fingerprint(config, stores, unlabelled), keep=a["keep_checkpoints"])
    state = checkpoints.latest() if resume else None
    start = 0
    if state is not None:
        for name, module in modules.items():
            module.load_state_dict(state[name])
        opt.load_state_dict(state["optimizer"])
        if critic is not None:
            critic.load_state_dict(state["critic"])
            opt_critic.load_state_dict(state["critic_optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        set_rng_state(state["rng"])
        start = int(state["step"])
        del state
    max_steps, batch = int(a["max_steps"]), int(a["batch_size"])
    log.info("autoencoder: %.2f M parameters (layout decoder %.2f M), f%d, %d latent channels, %d px crops at "
             "%.3g µm/px, %s, steps %d -> %d", count(vae) / 1e6, count(decoder) / 1e6 if decoder else 0.0,
             2 ** (len(a["block_out_channels"]) - 1), a["latent_channels"], a["patch_size"], dataset.mpp, device,
             start, max_steps)

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=StepSampler(start, max_steps, batch),
                                         num_workers=0)
    csv = CsvLog(Path(run_dir) / TRAIN_LOG, LOG_COLUMNS, resume_step=start)
    bar = tqdm(total=max_steps, initial=start, desc="train-autoencoder", file=sys.stderr,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    step, stopped, sums, n_since, t0 = start, False, torch.zeros(3), 0, time.perf_counter()
    for m in modules.values():
        m.train()
    with StopSignals() as signals:
        for data in loader:
            image, layout = data["image"].to(device), data["layout"].to(device)
            posterior = vae.encode(image).latent_dist
            z = posterior.sample(generator=torch.Generator(device).manual_seed(sample_seed(seed, int(data["index"][0]))))
            rec = vae.decode(z).sample
            loss_rec = reconstruction_loss(rec, image, a)
            loss = loss_rec + a["kl_weight"] * kl_divergence(posterior)
            loss_layout = torch.zeros(())
            if decoder is not None:
                stain, z_l = None, z.detach()
                if decoder.config.stain_channels:
                    stain = stain_condition(data["style"].to(device))
                    with torch.no_grad():  # latents of the same crop in another stain: colour only from `stain`
                        z_l = vae.encode(restained(image, data["index"].tolist(), seed)).latent_dist.mode()
                z_in = z_l + latent_noise(z_l, data["index"].tolist(), seed, a["latent_noise"])
                out_l = decoder(z_in, layout, stain)
                loss_layout = reconstruction_loss(out_l, image, a)
                loss = loss + loss_layout
                if critic is not None and step >= a["adversarial_start"]:
                    loss = loss - a["adversarial_weight"] * critic(out_l, layout).mean()
            if not torch.isfinite(loss):
                raise InputError(None, "autoencoder.lr", f"the training loss became NaN or infinite at step {step + 1}",
                                 "lower autoencoder.lr and train again; earlier checkpoints are intact")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            lr_sched.step()
            if critic is not None:  # hinge loss: real crops above +1, the layout decoder's below -1
                critic_loss = (torch.relu(1 - critic(image, layout)).mean()
                               + torch.relu(1 + critic(out_l.detach(), layout)).mean())
                opt_critic.zero_grad(set_to_none=True)
                critic_loss.backward()
                opt_critic.step()
            step += 1
            n_since += 1
            sums += torch.stack([loss.detach().cpu(), loss_rec.detach().cpu(), loss_layout.detach().cpu()])
            bar.update(1)
            if step % a["log_every"] == 0 or step == max_steps:
                mean = (sums / n_since).tolist()
                csv.append({"step": step, "loss": f"{mean[0]:.5f}", "reconstruction": f"{mean[1]:.5f}",
                            "layout_decoder": f"{mean[2]:.5f}", "lr": f"{lr_sched.get_last_lr()[0]:.3e}",
                            "elapsed_s": f"{time.perf_counter() - t0:.1f}"})
                bar.set_postfix(loss=f"{mean[0]:.4f}")
                sums, n_since = torch.zeros(3), 0
            stop = signals.requested is not None or (stop_at is not None and step >= stop_at)
            if stop or step % a["checkpoint_every"] == 0 or step == max_steps:
                critic_state = {"critic": critic.state_dict(), "critic_optimizer": opt_critic.state_dict()} if critic else {}
                checkpoints.save(step, {**{k: m.state_dict() for k, m in modules.items()}, **critic_state,
                                        "optimizer": opt.state_dict(), "lr_scheduler": lr_sched.state_dict()})
            if stop and step < max_steps:
                stopped = True
                break
    bar.close()
    if stopped:
        log.warning("stopped at step %d of %d; checkpoint written, exit %d", step, max_steps, EXIT_REQUEUE)
        return EXIT_REQUEUE
    for m in modules.values():
        m.eval().requires_grad_(False)
    scale = latent_scale(vae, dataset, device)
    vae.register_to_config(scaling_factor=scale)
    save_autoencoder(vae, decoder, out, metadata={
        "steps": max_steps, "batch_size": batch, "seed": seed, "mpp": dataset.mpp, "fingerprint": checkpoints.fp,
        "stores": [Path(p).name for p in stores], "unlabelled_stores": [Path(p).name for p in unlabelled],
        "sedm_version": __version__, "train_seconds_this_run": round(time.perf_counter() - t0, 1)})
    write_qa(vae, decoder, dataset, qa=qa, montage=montage, device=device)
    log.info("wrote %s (scaling_factor %.4f)", out, scale)
    return 0


@torch.no_grad()
def latent_scale(vae: Any, dataset: DiffusionPatchDataset, device: torch.device) -> float:
    """1 / the standard deviation of the posterior means over fixed tissue crops (the diffusion schedule
    assumes unit-variance data; a fixed 0.18215, as in Stable Diffusion, suits only that autoencoder)."""
    b = 8
    z = torch.cat([vae.encode(_batch(dataset, range(QA_INDEX + i * b, QA_INDEX + (i + 1) * b))["image"].to(device))
                   .latent_dist.mode() for i in range(SCALE_BATCHES)])
    return float(1.0 / z.std().clamp_min(1e-6))


def save_autoencoder(vae: Any, decoder: LayoutDecoder | None, out: str | Path, metadata: dict[str, Any]) -> None:
    """The diffusers directory (+ ``layout_decoder/``, + the training provenance), atomically."""
    with atomic_path(out) as tmp:
        vae.save_pretrained(str(tmp), safe_serialization=True)
        if decoder is not None:
            decoder.save(tmp / LAYOUT_DECODER_DIR)
        (tmp / PROVENANCE).write_text(json.dumps({"training": metadata}, indent=2, sort_keys=True) + "\n")
