"""Diffusion benchmark: training and sampling throughput, and which sampler/step count to use.

    python benchmarks/diffusion.py [--model DIR] [--train-steps 150] [--threads 2]

1. Training img/s of the ``tiny`` preset on CPU (the real trainer: data loading included), on toy stores.
2. Sampling img/s (DPM-Solver++ 20 steps, guidance on: two UNet evaluations per step).
3. Sampler table: from the same initial noise, the deterministic DDIM with 128 steps (STEDM's setting)
   is the reference; DPM-Solver++ and DDIM at 10-25 steps are scored by their distance to it (RMSE
   in [0, 1] intensity, and PSNR) and by seconds per image. A sampler that lands close to DDIM-128 in
   a fraction of the steps gives the same images for a fraction of the cost.
4. Batch table: seconds per image of DPM-Solver++ (15 steps) at each ``--batches`` size, against the
   first size in the same run (``synthesis.batch_size``).
5. Style measures (``sedm.synthesis.style_check``): transfer ratio over the pairs of style sources and
   the separability of single-patch style vectors (next to a randomly initialised model's), on the toy
   stores plus one toy stain the model never trained on, or on ``--style-stores`` with ``--model``.
6. On CUDA only: the ``paper`` preset's training img/s with bf16 + channels_last, with and without
   ``torch.compile``, on inputs already on the GPU; then the real trainer (loading from Zarr stores with
   0, 4 and 8 loader workers) to see whether data loading keeps up; sampling img/s in bf16 and fp32.
   (Skipped with a note on machines without CUDA.)

The sampler comparison needs a model that has learned something: ``--model`` takes a trained model
directory (e.g. the demo's ``results/diffusion/model``); without it, the tiny model trained in step 1
is used. The last output line is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the toy stores are test builders

import numpy as np  # noqa: E402
import torch  # noqa: E402

from builders.toy_stores import make_toy_store  # noqa: E402

from sedm.config import validate_config  # noqa: E402
from sedm.diffusion.dataset import DiffusionPatchDataset  # noqa: E402
from sedm.diffusion.pipeline import StedmPipeline  # noqa: E402
from sedm.diffusion.schedulers import sampling_scheduler  # noqa: E402
from sedm.diffusion.train import train  # noqa: E402
from sedm.models.io import load_model  # noqa: E402

CLASSES = ["tumour", "stroma", "necrosis"]


def _train_tiny(tmp: Path, steps: int, batch: int, workers: int) -> tuple[Path, float, list[Path]]:
    stores = [make_toy_store(tmp / f"s{i}.zarr", slide_id=f"s{i}", size=384, classes=CLASSES, tile_size=128,
                             style=i, seed=i) for i in range(2)]
    config = validate_config({"classes": CLASSES, "seed": 0, "diffusion": {
        "preset": "tiny", "batch_size": batch, "max_steps": steps, "lr": 2e-3, "warmup_steps": 20,
        "ema_decay": 0.999, "checkpoint_every": steps, "sample_every": 0, "preview_samples": 0,
        "log_every": max(1, steps // 5), "num_workers": workers, "device": "cpu"}})
    rc = train(config, stores, out=tmp / "model", run_dir=tmp / "run")
    assert rc == 0
    import pandas as pd

    log = pd.read_csv(tmp / "run" / "train_log.csv")
    steady = log.iloc[1:] if len(log) > 1 else log  # the first interval includes worker start-up
    return tmp / "model", float(steady["img_per_s"].median()), stores


def _inputs(model, stores: list[Path] | None, n: int, seed: int = 1):
    """Layouts + style patches for sampling: from stores if given, else synthetic stripes."""
    cfg = model.config
    p = cfg.patch_size
    if stores:
        ds = DiffusionPatchDataset(stores, cfg.classes, patch_size=p, n_style=cfg.n_style, seed=seed)
        items = [ds[10**9 + i] for i in range(n)]
        layout = torch.stack([it["layout"] for it in items])
        style = torch.stack([it["style"] for it in items])
        return layout, style
    labels = np.zeros((n, p, p), np.uint8)
    for i in range(n):
        labels[i, :, : p // 2] = 1 + i % len(cfg.classes)
    rng = np.random.default_rng(seed)
    style = rng.integers(120, 230, (n, cfg.n_style, p, p, 3)).astype(np.uint8)
    return labels, style


def _sample(pipe: StedmPipeline, layout, style, sampler: str, steps: int, seed: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = pipe(layout, style, sampler=sampler, steps=steps, seed=seed)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def batch_table(model, layout, style, batches: tuple[int, ...], steps: int = 15, seed: int = 0) -> list[dict]:
    """Seconds per image of DPM-Solver++ at ``steps`` for each batch size (``synthesis.batch_size``), the
    first images of ``layout``/``style`` repeated to fill the largest batch; speed against batch 1 in the
    same run."""
    pipe = StedmPipeline(model)
    rows = []
    for b in batches:
        idx = np.arange(b) % len(layout)
        _, sec = _sample(pipe, layout[idx], style[idx], "dpmpp", steps, seed)
        rows.append({"batch": b, "steps": steps, "s_per_image": round(sec / b, 4)})
    base = rows[0]["s_per_image"]
    for r in rows:
        r["speed_vs_first"] = round(base / r["s_per_image"], 2)
    return rows


def sampler_table(model, layout, style, seed: int = 0, ref_steps: int = 128,
                  dpmpp_steps: tuple[int, ...] = (10, 15, 20, 25),
                  ddim_steps: tuple[int, ...] = (10, 15, 20, 25, 50)) -> tuple[list[dict], float]:
    """Rows (sampler, steps, distance to the DDIM-``ref_steps`` output, s/image); and DDIM-ref s/image."""
    pipe = StedmPipeline(model)
    n = len(layout)
    ref, ref_s = _sample(pipe, layout, style, "ddim", ref_steps, seed)
    rows = [{"sampler": "ddim", "steps": ref_steps, "rmse_to_ddim128": 0.0, "psnr_db": None,
             "s_per_image": ref_s / n}]
    for sampler, steps_list in (("dpmpp", dpmpp_steps), ("ddim", ddim_steps)):
        for steps in steps_list:
            out, sec = _sample(pipe, layout, style, sampler, steps, seed)
            rmse = float(np.sqrt(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2)) / 255)
            rows.append({"sampler": sampler, "steps": steps, "rmse_to_ddim128": round(rmse, 5),
                         "psnr_db": round(float(20 * np.log10(1 / max(rmse, 1e-8))), 2),
                         "s_per_image": round(sec / n, 4)})
    return rows, ref_s / n


def cuda_paper_bench(batch: int = 8, steps: int = 10) -> dict:
    """Training img/s of the paper preset on CUDA in bf16: eager in both memory formats (the trainer's
    default is contiguous: channels-last was slower with this UNet's GroupNorms), and torch.compile."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device: paper-preset GPU figures not measured"}
    from sedm.diffusion.schedulers import train_scheduler
    from sedm.models.presets import model_config
    from sedm.models.stedm import StedmModel, count_parameters

    dev = torch.device("cuda")
    cfg = model_config({"preset": "paper"}, CLASSES)
    out: dict = {"device_name": torch.cuda.get_device_name(0)}
    for key, compiled, channels_last in (("eager", False, False), ("eager_channels_last", False, True),
                                         ("compiled", True, False)):
        torch.manual_seed(0)
        model = StedmModel(cfg).to(dev)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=fmt)
        out["params_m"] = round(count_parameters(model) / 1e6, 2)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        sched = train_scheduler(cfg)
        fwd = torch.compile(model) if compiled else model
        p = cfg.patch_size
        x0 = torch.randn(batch, 3, p, p, device=dev)
        layout = torch.zeros(batch, cfg.n_layout, p, p, device=dev)
        layout[:, 1] = 1
        style = torch.randn(batch, cfg.n_style, 3, p, p, device=dev)
        drop = torch.zeros(batch, dtype=torch.bool, device=dev)

        def step():
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (batch,), device=dev)
            noisy = sched.add_noise(x0, noise, t).contiguous(memory_format=fmt)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                pred = fwd(noisy, t, layout, style, drop)
            loss = torch.nn.functional.mse_loss(pred.float(), sched.get_velocity(x0, noise, t))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_start = time.perf_counter()
        for _ in range(3):  # warm-up (and compilation)
            step()
        torch.cuda.synchronize()
        warm = time.perf_counter() - t_start
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        out[f"train_img_per_s_{key}"] = round(batch * steps / (time.perf_counter() - t0), 2)
        out[f"warmup_s_{key}"] = round(warm, 1)
        out[f"peak_mem_gib_{key}"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        # sampling throughput (eager, bf16 autocast), DPM-Solver++ 20 steps with guidance
        if not compiled:
            model.eval()
            key_s = "" if key == "eager" else "_channels_last"
            pipe = StedmPipeline(model)
            labels = np.ones((batch, p, p), np.uint8)
            st = np.full((batch, cfg.n_style, p, p, 3), 200, np.uint8)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                pipe(labels, st, steps=2, seed=0)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                pipe(labels, st, steps=20, seed=0)
                torch.cuda.synchronize()
            out[f"sample_img_per_s_dpmpp20{key_s}"] = round(batch / (time.perf_counter() - t0), 2)
            t0 = time.perf_counter()
            pipe(labels, st, steps=20, seed=0)  # fp32 (TF32 convolutions), as `sedm synthesize` runs
            torch.cuda.synchronize()
            out[f"sample_img_per_s_dpmpp20_fp32{key_s}"] = round(batch / (time.perf_counter() - t0), 2)
        del model, opt
        torch.cuda.empty_cache()
    out["compile_speedup"] = round(out["train_img_per_s_compiled"] / out["train_img_per_s_eager"], 3)
    out.update(cuda_trainer_bench(batch))
    return out


def cuda_trainer_bench(batch: int, steps: int = 60) -> dict:
    """The real trainer on CUDA (paper preset, bf16, data loading from Zarr stores included): does the
    loader keep the GPU fed? Compare ``trainer_img_per_s_w*`` with ``train_img_per_s_eager`` above."""
    import pandas as pd

    workers = sorted({0, 4, min(8, os.cpu_count() or 1)})
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        stores = [make_toy_store(Path(tmp) / f"s{i}.zarr", slide_id=f"s{i}", size=1024, classes=CLASSES,
                                 tile_size=256, style=i, seed=i) for i in range(2)]
        for w in workers:
            config = validate_config({"classes": CLASSES, "seed": 0, "diffusion": {
                "preset": "paper", "batch_size": batch, "max_steps": steps, "warmup_steps": 5,
                "checkpoint_every": steps, "sample_every": 0, "preview_samples": 0, "log_every": steps // 3,
                "num_workers": w, "device": "cuda"}})
            run = Path(tmp) / f"run_w{w}"
            assert train(config, stores, out=Path(tmp) / f"model_w{w}", run_dir=run) == 0
            log = pd.read_csv(run / "train_log.csv")
            out[f"trainer_img_per_s_w{w}"] = round(float(log["img_per_s"].iloc[1:].median()), 2)
    return out


def style_figures(model_dir: Path, layout_stores: list[Path], style_stores: list[Path], seed: int = 0) -> dict:
    """Transfer ratio and separability of ``model_dir`` (the figures ``sedm style-check`` reports)."""
    from sedm.synthesis.generate import Generator
    from sedm.synthesis.style_check import style_inputs, style_measures

    gen = Generator(model_dir, steps=20)
    labels, styles, patches = style_inputs(gen.config.to_dict(), layout_stores, style_stores, seed=seed, n_layouts=4,
                                           n_encoder_patches=16, min_tissue_fraction=0.5)
    measures, _ = style_measures(gen, labels, styles, patches, seed)
    t, s = measures["transfer"], measures["separability"]
    return {"transfer_ratio_median": t["median"], "transfer_ratio_min": t["min"], "transfer_pairs": t["n_pairs"],
            "transfer_ratio_median_random_init": measures["transfer_random_init"]["median"],
            "transfer_ratio_min_random_init": measures["transfer_random_init"]["min"],
            "separability_trained": s["trained"], "separability_random_init": s["random_init"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="trained model directory for the sampler comparison")
    parser.add_argument("--stores", nargs="*", default=None, help="stores for layouts/styles (with --model)")
    parser.add_argument("--style-stores", nargs="*", default=None,
                        help="style sources for the style measures (with --model; e.g. the unlabelled stores)")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--n-images", type=int, default=4, help="images per sampler run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32],
                        help="synthesis batch sizes to time (DPM-Solver++ 15 steps)")
    parser.add_argument("--skip-cuda", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tiny_dir, train_img_s, toy = _train_tiny(Path(tmp), args.train_steps, args.batch, args.workers)
        print(f"tiny training on CPU: {train_img_s:.2f} img/s (batch {args.batch}, {args.train_steps} steps, "
              f"{time.perf_counter() - t0:.0f} s incl. start-up)", file=sys.stderr)
        model = load_model(args.model) if args.model else load_model(tiny_dir)
        stores = [Path(s) for s in args.stores] if args.stores else (None if args.model else toy)
        layout, style = _inputs(model, stores, args.n_images)

        pipe = StedmPipeline(model, sampling_scheduler(model.config, "dpmpp"))
        _sample(pipe, layout, style, "dpmpp", 2, 0)  # warm-up
        _, sec = _sample(pipe, layout, style, "dpmpp", 20, 0)
        sample_img_s = len(layout) / sec
        rows, ddim128_s = sampler_table(model, layout, style)
        batches = batch_table(model, layout, style, tuple(args.batches))
        if args.model:
            style_result = style_figures(Path(args.model), stores or [],
                                         [Path(s) for s in args.style_stores or stores or []])
        else:  # the two training stains and one the model never saw
            unseen = make_toy_store(Path(tmp) / "unseen.zarr", slide_id="unseen", size=384, classes=CLASSES,
                                    tile_size=128, style=2, seed=2)
            style_result = style_figures(tiny_dir, toy, [*toy, unseen])

    print(f"\n{'sampler':8} {'steps':>5} {'RMSE->DDIM128':>14} {'PSNR dB':>8} {'s/img':>8} {'speed-up':>9}")
    for r in rows:
        print(f"{r['sampler']:8} {r['steps']:5d} {r['rmse_to_ddim128']:14.4f} {r['psnr_db'] or float('nan'):8.2f} "
              f"{r['s_per_image']:8.3f} {ddim128_s / max(r['s_per_image'], 1e-9):8.1f}x")
    print(f"\n{'batch':>5} {'s/img':>8} {'speed vs batch ' + str(batches[0]['batch']):>18}")
    for r in batches:
        print(f"{r['batch']:5d} {r['s_per_image']:8.3f} {r['speed_vs_first']:17.2f}x")
    cuda = {"skipped": "--skip-cuda"} if args.skip_cuda else cuda_paper_bench()
    result = {
        "device": "cuda" if torch.cuda.is_available() and not args.skip_cuda else "cpu",
        "cpu_threads": args.threads,
        "train_img_per_s": round(train_img_s, 3),
        "train_preset": "tiny",
        "sample_img_per_s": round(sample_img_s, 3),
        "sample_setting": "dpmpp 20 steps, guidance 1.5 (2 UNet calls/step)",
        "sampler_model": args.model or "tiny trained in this run",
        "sampler_table": rows,
        "batch_table": batches,
        "style": style_result,
        "cuda_paper": cuda,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
