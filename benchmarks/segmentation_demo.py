"""Demo budget of the segmentation stage: train every arm of config.yaml and predict one test slide.

Stores shaped like the demo cohort's (1536 x 1536 px at 1 µm/px, 256 px tiles; 3 labelled
patients, 4 synthesis stores) are generated in a temporary folder with the test fixtures, then each
arm trains with the shipped config (one torch thread, as the demo runs it) and the ``real`` model
predicts one slide. CPU seconds (process time) are reported besides wall time, since the machine may be shared;
ratios are against the ``real`` arm, measured in the same process.

    python benchmarks/segmentation_demo.py [--steps N] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from builders.segmentation import make_store, make_synthetic, write_samples  # noqa: E402

from sedm.config import load_config, load_samples  # noqa: E402
from sedm.segmentation.predict import predict  # noqa: E402
from sedm.segmentation.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="override segmentation.max_steps")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(REPO / "config.yaml")
    if args.steps:
        cfg["segmentation"]["max_steps"] = args.steps
    cfg["segmentation"]["device"] = "cpu"
    size, tile = 1536, int(cfg["tiling"]["tile_size"])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows = [(f"L{i}", f"L{i}", "labelled") for i in range(3)] + [(f"U{i}", f"U{i}", "unlabelled")
                                                                   for i in range(4)] + [("T0", "T0", "test")]
        samples = load_samples(write_samples(tmp / "samples.tsv", rows))
        stores = [make_store(tmp / f"L{i}.zarr", f"L{i}", size=size, tile=tile, seed=i, levels=3,
                             glass_cols=256, unannotated_rows=128) for i in range(3)]
        synthetic = [make_synthetic(tmp / f"U{i}.zarr", f"U{i}", n=64, size=256, seed=10 + i) for i in range(4)]
        test = make_store(tmp / "T0.zarr", "T0", size=size, tile=tile, seed=20, levels=3, glass_cols=256)
        seconds, cpu = {}, {}
        for arm in cfg["segmentation"]["arms"]:
            t0, c0 = time.perf_counter(), time.process_time()
            rc = train(cfg, arm=arm, stores=stores, samples=samples, synthetic=synthetic, out=tmp / arm / "model",
                       run_dir=tmp / arm / "run")
            seconds[arm], cpu[arm] = time.perf_counter() - t0, time.process_time() - c0
            assert rc == 0
            steps = cfg["segmentation"]["max_steps"]
            print(f"{arm}: {seconds[arm]:.1f} s wall, {cpu[arm]:.1f} s CPU for {steps} steps", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        predict(cfg, model_dir=tmp / "real" / "model", store_path=test, out=tmp / "pred.zarr",
                overlay=tmp / "pred.png", geojson=tmp / "pred.geojson", device="cpu")
        predict_s, predict_cpu = time.perf_counter() - t0, time.process_time() - c0
    base = cpu.get("real") or next(iter(cpu.values()))
    for arm, s in cpu.items():
        print(f"{arm:>16}: {s:6.1f} s CPU  ratio vs real {s / base:.2f}")
    print(f"predict 1536x1536 px: {predict_s:.1f} s wall, {predict_cpu:.1f} s CPU")
    print(json.dumps({"steps": cfg["segmentation"]["max_steps"], "threads": args.threads,
                      "train_wall_seconds": {a: round(s, 1) for a, s in seconds.items()},
                      "train_cpu_seconds": {a: round(s, 1) for a, s in cpu.items()},
                      "train_cpu_ratio_vs_real": {a: round(s / base, 2) for a, s in cpu.items()},
                      "train_total_cpu_seconds": round(sum(cpu.values()), 1),
                      "predict_wall_seconds_1536px": round(predict_s, 1),
                      "predict_cpu_seconds_1536px": round(predict_cpu, 1)}))


if __name__ == "__main__":
    main()
