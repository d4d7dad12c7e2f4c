"""The CUDA paths: bf16 training, DDP on GPU, device-independent sampling, segmentation on a GPU.

Skipped where no CUDA device is visible (the CPU CI machine); on a GPU node run ``pytest -m cuda``.
Comparisons with the CPU switch TF32 off (``NVIDIA_TF32_OVERRIDE=0`` for subprocesses, the torch flags
in this process): with TF32 a GPU convolution is only ~1e-3 exact and the tolerances would say nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from builders.diffusion import CLASSES, diffusion_section, make_stores, micro_model
from safetensors.torch import load_file
from builders.segmentation import CLASSES as SEG_CLASSES
from builders.segmentation import make_store, make_synthetic, tiny_config, write_samples

from sedm.config import load_samples, validate_config
from sedm.diffusion.pipeline import StedmPipeline
from sedm.diffusion.train import train
from sedm.models.io import load_model
from sedm.segmentation.outputs import PREDICTED_LABELS
from sedm.segmentation.predict import predict
from sedm.segmentation.train import train as train_seg
from sedm.runtime.signals import EXIT_REQUEUE

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*"),
]


@contextlib.contextmanager
def no_tf32():
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("stores"), n=2, size=192)


def _config(**overrides):
    return validate_config({"classes": CLASSES, "seed": 0, "diffusion": diffusion_section(**overrides)})


def test_bf16_training_on_cuda_resumes_and_loads_on_cpu(stores, tmp_path):
    cfg = _config(device="cuda", bf16=True, channels_last=True, max_steps=30, checkpoint_every=10)
    assert train(cfg, stores, out=tmp_path / "m", run_dir=tmp_path / "run", stop_at=10) == EXIT_REQUEUE
    assert train(cfg, stores, out=tmp_path / "m", run_dir=tmp_path / "run") == 0
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert list(log["step"]) == list(range(1, 31))  # resumed at 10, no step logged twice
    assert np.isfinite(log["loss"]).all() and np.isfinite(log["grad_norm"]).all()

    # the same first batch on the CPU in fp32: bf16 autocast changes the loss by well under 5 %
    cpu = _config(device="cpu", max_steps=1)
    assert train(cpu, stores, out=tmp_path / "cpu", run_dir=tmp_path / "run_cpu") == 0
    first_cpu = pd.read_csv(tmp_path / "run_cpu" / "train_log.csv")["loss"].iloc[0]
    assert log["loss"].iloc[0] == pytest.approx(first_cpu, rel=0.05)

    model = load_model(tmp_path / "m", device="cpu")  # weights written from the GPU load on a CPU node
    assert next(model.parameters()).device.type == "cpu"
    out = StedmPipeline(model)(np.ones((2, 32, 32), np.uint8), np.full((2, 2, 32, 32, 3), 180, np.uint8),
                               steps=4, seed=0)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8


def test_same_seed_same_images_on_cpu_and_cuda():
    model = micro_model().eval()
    rng = np.random.default_rng(0)
    layouts = rng.integers(0, 3, (3, 32, 32)).astype(np.uint8)
    styles = rng.integers(100, 230, (3, 2, 32, 32, 3)).astype(np.uint8)
    on_cpu = StedmPipeline(model)(layouts, styles, steps=10, seed=7)
    with no_tf32():
        on_gpu = StedmPipeline(model.to("cuda"))(layouts, styles, steps=10, seed=7)
    diff = np.abs(on_cpu.astype(int) - on_gpu.astype(int))
    assert diff.mean() < 0.5 and np.quantile(diff, 0.99) <= 2, (diff.mean(), diff.max())
    with torch.autocast("cuda", dtype=torch.bfloat16):  # bf16 sampling: same images, coarser
        in_bf16 = StedmPipeline(model)(layouts, styles, steps=10, seed=7)
    assert np.abs(in_bf16.astype(int) - on_gpu.astype(int)).mean() < 8


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["gloo"])
def test_ddp_on_cuda_matches_one_process(stores, tmp_path, backend):
    """Two DDP ranks on the one GPU (gloo: NCCL refuses two ranks on one device) vs one process.

    Both runs are subprocesses, so TF32 is off in both (NVIDIA_TF32_OVERRIDE=0)."""
    cfg = _config(device="cuda:0", bf16=False, max_steps=3, batch_size=4, checkpoint_every=3, log_every=1)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NVIDIA_TF32_OVERRIDE": "0", "SEDM_DIST_BACKEND": backend}

    def run(name, gpus):
        cmd = [sys.executable, "-m", "sedm.cli", "train-diffusion", "--gpus", str(gpus), "--config", str(cfg_file),
               "--stores", *map(str, stores), "--out", str(tmp_path / name), "--run-dir", str(tmp_path / f"run_{name}")]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    assert "2 process(es)" in run("ddp", 2)
    run("single", 1)
    ddp_log = pd.read_csv(tmp_path / "run_ddp" / "train_log.csv")
    single_log = pd.read_csv(tmp_path / "run_single" / "train_log.csv")
    np.testing.assert_allclose(ddp_log["loss"].iloc[0], single_log["loss"].iloc[0], rtol=1e-4)
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("ddp", "single"))
    diffs = np.concatenate([(a[k] - b[k]).abs().flatten().numpy() for k in a])
    # Adam's first steps move every weight by ~lr (1e-3) whatever the gradient's size, so a gradient
    # that is ~0 in both runs may differ in sign; all but such stragglers must agree closely
    assert np.quantile(diffs, 0.999) < 1e-4 and diffs.max() < 1e-2, (np.quantile(diffs, 0.999), diffs.max())


@pytest.fixture
def seg_cohort(tmp_path):
    stores = [make_store(tmp_path / "a.zarr", "a", size=128, seed=1),
              make_store(tmp_path / "b.zarr", "b", size=128, seed=2)]
    synthetic = [make_synthetic(tmp_path / "u.zarr", "u", n=6, size=48)]
    samples = write_samples(tmp_path / "samples.tsv", [("a", "p1", "labelled"), ("b", "p2", "labelled"),
                                                       ("u", "p3", "unlabelled")])
    return tmp_path, stores, synthetic, load_samples(samples)


def test_segmentation_trains_with_amp_on_cuda_resumes_and_predicts_like_cpu(seg_cohort):
    tmp, stores, synthetic, samples = seg_cohort
    cfg = tiny_config(max_steps=40, val_every=10, ckpt_every=100, device="cuda", amp=True, ema=True, ema_decay=0.9)
    kw = dict(arm="stedm", stores=stores, samples=samples, synthetic=synthetic, out=tmp / "model", run_dir=tmp / "run")

    def interrupt(step):
        if step == 15:
            os.kill(os.getpid(), signal.SIGUSR1)

    assert train_seg(cfg, **kw, on_step=interrupt) == EXIT_REQUEUE
    assert train_seg(cfg, **kw) == 0  # optimizer and EMA state come back onto the GPU
    log = pd.read_csv(tmp / "run" / "train_log.csv")
    assert list(log["step"]) == list(range(1, 41))
    assert log["loss"].iloc[-5:].mean() < 0.8 * log["loss"].iloc[:3].mean()

    slide = make_store(tmp / "t.zarr", "t", size=192, seed=9)
    labels = {}
    for device in ("cuda", "cpu"):
        out = tmp / f"pred_{device}.zarr"
        with no_tf32():
            predict(tiny_config(device=device, amp=False), model_dir=tmp / "model", store_path=slide, out=out,
                    overlay=tmp / f"{device}.png", geojson=tmp / f"{device}.geojson")
        import zarr

        labels[device] = zarr.open_group(str(out), mode="r")[PREDICTED_LABELS][:]
    assert (labels["cuda"] == labels["cpu"]).mean() > 0.999
    assert set(np.unique(labels["cuda"])) <= set(range(1, len(SEG_CLASSES) + 1))
