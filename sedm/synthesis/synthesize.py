"""``sedm synthesize``: labelled synthetic data in the style of one unlabelled slide.

One job per unlabelled slide. Every input is checked (class maps, µm/px, tissue tiles, sample
count) before the model is loaded; samples are then generated shard by shard into a work folder
(:mod:`sedm.synthesis.shards`), so a killed job resumes and ends with exactly the bytes an
uninterrupted one writes. On SIGTERM/SIGUSR1 the job keeps the finished shards and exits with
75 (:data:`sedm.runtime.signals.EXIT_REQUEUE`), as the training stages do.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sedm import __version__
from sedm.atomic import write_text
from sedm.config import add_config_arguments, load_config
from sedm.errors import InputError
from sedm.flags import FLAGS, warn
from sedm.labels import class_values
from sedm.seeds import rng_for
from sedm.stain.statistics import HedAccumulator
from sedm.synthesis.counts import samples_for_slide
from sedm.synthesis.generate import Generator, check_model, model_mpp, model_sha256, sampling_options
from sedm.synthesis.layouts import LayoutSampler
from sedm.synthesis.montage import write_montage
from sedm.synthesis.shards import Shard, ShardDir, assemble_store, partial_dir, plan_shards
from sedm.synthesis.stats import synthesis_stats
from sedm.synthesis.styles import StoreStyleSource, StyleSource
from sedm.tiling.table import tile_table_path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "sedm config (full, or the synthesis stage snapshot)")
    parser.add_argument("--model", required=True, help="diffusion model directory (sedm train-diffusion --out)")
    parser.add_argument("--style-store", required=True, help="Zarr store of the unlabelled slide (style source)")
    parser.add_argument("--labelled", nargs="+", required=True, help="Zarr stores of the labelled slides (layouts)")
    parser.add_argument("--out", required=True, help="synthetic Zarr store to write")
    parser.add_argument("--montage", required=True, help="QA montage PNG to write")
    parser.add_argument("--stats", required=True, help="per-slide statistics JSON to write")
    parser.add_argument("--n-samples", type=int, help="samples for this slide (the workflow passes its share of "
                        "synthesis.total); default synthesis.per_slide, or all of synthesis.total")
    parser.add_argument("--device", help="torch device; default synthesis.device")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


@dataclass
class Job:
    """Everything one synthesis job needs, validated."""

    config: dict[str, Any]
    model_dir: Path
    model_config: dict[str, Any]
    layouts: LayoutSampler
    styles: StyleSource
    n_samples: int
    out: Path

    @property
    def syn(self) -> dict[str, Any]:
        return self.config["synthesis"]

    @property
    def seed(self) -> int:
        """synthesis.seed, or the global seed when that is null."""
        seed = self.syn.get("seed")
        return int(self.config["seed"] if seed is None else seed)


def prepare(config: dict[str, Any], model_dir: str | Path, style_store: str | Path, labelled: list[str | Path],
            out: str | Path, n_samples: int | None = None) -> Job:
    """Validate every input and build the samplers (no model weights loaded yet)."""
    syn = config["synthesis"]
    mcfg = check_model(model_dir, config["classes"])
    style = StoreStyleSource(style_store, size=mcfg["style_patch_size"], mpp=model_mpp(mcfg, style_store),
                             min_tissue_fraction=syn["style_min_tissue_fraction"])
    if style.slide_id in {Path(p).name.removesuffix(".zarr") for p in labelled}:
        log.warning("style slide %s is also a layout source", style.slide_id)
    layouts = LayoutSampler(labelled, classes=config["classes"], patch_size=synthesis_size(syn, mcfg),
                            mpp=model_mpp(mcfg, style_store), class_weights=syn["class_weights"],
                            rare_class_boost=syn["rare_class_boost"], augment=syn["augment"])
    n = samples_for_slide(syn, style.slide_id, [style.slide_id]) if n_samples is None else int(n_samples)
    if n < 1:
        raise InputError(None, "--n-samples", f"{n} samples requested", "ask for at least one sample")
    return Job(config, Path(model_dir), mcfg, layouts, style, n, Path(out))


def synthesis_size(syn: dict[str, Any], mcfg: dict[str, Any]) -> int:
    """Tile size of the synthetic images: synthesis.patch_size, or the model's training patch size."""
    size = int(syn.get("patch_size") or mcfg["patch_size"])
    multiple = 2 ** (len(mcfg["block_out_channels"]) - 1) * int(mcfg.get("latent_factor", 1))
    if size % multiple:
        raise InputError(None, "synthesis.patch_size", f"{size} px is not a multiple of {multiple} (the model's "
                         "UNet levels x latent factor)", f"use a multiple of {multiple}, e.g. {size - size % multiple}")
    return size


def job_key(job: Job) -> str:
    """Hash of everything that determines the output bytes: config, model weights, inputs."""
    from sedm.runtime.fingerprint import fingerprint, without_runtime_keys

    inputs = [job.styles.store.path, tile_table_path(job.styles.store.path)]
    for s in job.layouts.stores:
        inputs += [s.path, tile_table_path(s.path)]
    what = {"synthesis": without_runtime_keys(job.syn),
            "classes": job.config["classes"], "seed": job.seed, "n_samples": job.n_samples,
            "model_sha256": model_sha256(job.model_dir), "slide": job.styles.slide_id, "sedm": __version__}
    return fingerprint(what, inputs)


def make_shard(job: Job, generator: Generator, shard: Shard,
               stop: Callable[[], bool] | None = None) -> dict[str, Any] | None:
    """Generate one shard: {"arrays": ..., "provenance": [row per sample]}; None when ``stop()``
    became true between batches (nothing saved).

    All randomness comes from generators keyed by (seed, slide, shard index) and drawn in a fixed
    order (layouts, style patches, noise seeds), so a shard is the same whenever it is made.
    """
    syn, mcfg = job.syn, job.model_config
    rng = rng_for(job.seed, "synthesis", job.styles.slide_id, f"shard-{shard.index}")
    layouts = [job.layouts.sample(rng) for _ in range(shard.size)]
    bs = int(syn["batch_size"])
    batches = [range(i, min(i + bs, shard.size)) for i in range(0, shard.size, bs)]
    n_style = int(mcfg["n_style"])
    styles, where = [], []
    gen_acc, style_acc, source_acc = HedAccumulator(), HedAccumulator(), HedAccumulator()
    per_batch = syn["style_draw"] == "batch"
    for batch in batches:
        for j, _ in enumerate(batch):
            if j == 0 or not per_batch:
                patches, loc = job.styles.draw(rng, n_style)
                style_acc.add(patches)
            styles.append(patches)
            where.append(loc)
    noise_seeds = rng.integers(0, 2**63 - 1, size=len(batches))
    images = []
    for batch, nseed in zip(batches, noise_seeds):
        if stop is not None and stop():
            return None
        labels = np.stack([layouts[i].labels for i in batch])
        images.append(generator(labels, np.stack([styles[i] for i in batch]), seed=int(nseed)))
    images = np.concatenate(images)
    gen_acc.add(images)
    source_acc.add(np.stack([lay.image for lay in layouts]))
    n_montage = max(0, min(shard.stop, int(syn["montage_samples"])) - shard.start)
    provenance = []
    for i, (lay, loc) in enumerate(zip(layouts, where)):
        provenance.append({"sample": shard.start + i, **lay.provenance(), "style_slide": loc[0][0],
                           "style_y": [int(y) for _, y, _ in loc], "style_x": [int(x) for _, _, x in loc]})
    arrays = {"images": images, "labels": np.stack([lay.labels for lay in layouts]),
              "montage_styles": np.stack(styles[:n_montage]) if n_montage else np.zeros((0,), np.uint8),
              "hed_generated": gen_acc.to_array(), "hed_style": style_acc.to_array(),
              "hed_source": source_acc.to_array()}
    return {"arrays": arrays, "provenance": provenance}


def synthesize(job: Job, montage: str | Path, stats_path: str | Path, device: str = "cpu") -> int:
    """Generate (resuming), assemble the store, write montage and statistics. Returns the exit code."""
    from sedm.runtime.signals import EXIT_REQUEUE, StopSignals

    syn = job.syn
    plan = plan_shards(job.n_samples, int(syn["shard_size"]))
    work = ShardDir(partial_dir(job.out), job_key(job))
    todo = [s for s in plan if not work.done(s.index)]
    if len(todo) < len(plan):
        log.info("resuming %s: %d of %d shards already done", job.out, len(plan) - len(todo), len(plan))
    if todo:
        generator = Generator.for_synthesis(job.model_dir, syn, device)
        with StopSignals() as signals:
            for shard in tqdm(todo, desc=f"synthesis {job.styles.slide_id}", unit="shard"):
                made = make_shard(job, generator, shard, stop=lambda: signals.requested is not None)
                if made is None:
                    log.warning("stopped by signal; %d of %d shards kept in %s", len(plan) - len(todo)
                                + todo.index(shard), len(plan), work.path)
                    return EXIT_REQUEUE
                work.save(shard.index, made["arrays"], made["provenance"])
                if signals.requested is not None and shard is not todo[-1]:
                    log.warning("stopped by signal after shard %d; finished shards kept in %s", shard.index, work.path)
                    return EXIT_REQUEUE
        settings = generator.settings
    else:
        settings = Generator.resolve_settings(job.model_config, **sampling_options(syn))
    _assemble(job, work, plan, settings, montage, stats_path)
    work.remove()
    return 0


def _assemble(job: Job, work: ShardDir, plan: list[Shard], settings: dict, montage: str | Path,
              stats_path: str | Path) -> None:
    acc = {k: HedAccumulator() for k in ("generated", "style", "source")}
    shown: dict[str, list] = {"labels": [], "styles": [], "images": []}

    def on_shard(shard: Shard, arrays: dict[str, np.ndarray]) -> None:
        for k in acc:
            acc[k].merge(HedAccumulator.from_array(arrays[f"hed_{k}"]))
        m = len(arrays["montage_styles"]) if arrays["montage_styles"].ndim > 1 else 0
        shown["labels"] += list(arrays["labels"][:m])
        shown["styles"] += list(arrays["montage_styles"][:m])
        shown["images"] += list(arrays["images"][:m])

    stats: dict[str, Any] = {}
    mcfg, syn = job.model_config, job.syn

    def attrs() -> dict[str, Any]:
        stats.update(synthesis_stats(acc["generated"], acc["style"], acc["source"]))
        return {
            "slide_id": job.styles.slide_id, "mpp": job.styles.store.mpp, "classes": list(job.config["classes"]),
            "class_values": class_values(job.config["classes"]), "unannotated_value": 0,
            "model_sha256": model_sha256(job.model_dir), "model": {"path": str(job.model_dir), "config": mcfg},
            **settings, "seed": job.seed, "n_style": int(mcfg["n_style"]), "patch_size": job.layouts.patch_size,
            "style_patch_size": int(mcfg["style_patch_size"]), "style_draw": syn["style_draw"],
            "style_store": str(job.styles.store.path),
            "layout_slides": [s.slide_id for s in job.layouts.stores],
            "class_probabilities": job.layouts.probs, "synthesis": syn, "stats": stats, "sedm_version": __version__,
        }

    assemble_store(job.out, work, plan, patch_size=job.layouts.patch_size, on_shard=on_shard, attrs=attrs)
    title = f"{job.styles.slide_id} ({job.n_samples} samples, {settings['sampler']} {settings['steps']} steps)"
    write_montage(montage, np.array(shown["labels"]), shown["styles"], np.array(shown["images"]), title=title)
    write_text(stats_path, json.dumps({"slide_id": job.styles.slide_id, "n_samples": job.n_samples, **stats},
                                      indent=2) + "\n")
    log.info("%s: %d samples, HED distance %s (labelled slides: %s), style fidelity %s", job.styles.slide_id,
             job.n_samples, _fmt(stats["hed_distance"]), _fmt(stats["hed_distance_source"]),
             _fmt(stats["style_fidelity"]))
    warn(log, stats[FLAGS], job.styles.slide_id)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.runtime)
    job = prepare(config, args.model, args.style_store, args.labelled, args.out, args.n_samples)
    from sedm.runtime.devices import resolve_device

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    device = resolve_device(args.device or config["synthesis"]["device"])
    return synthesize(job, args.montage, args.stats, device=str(device))
