"""Training: it learns, resumes exactly, stops cleanly on signals, and DDP matches one process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from builders.diffusion import CLASSES, diffusion_section, make_stores, micro_model
from safetensors.torch import load_file

from sedm.config import validate_config
from sedm.diffusion.schedulers import train_scheduler
from sedm.diffusion.train import build_optimizer, run_fingerprint, sample_randomness, train
from sedm.runtime.checkpoints import find_resumable, list_checkpoints
from sedm.runtime.signals import EXIT_REQUEUE

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("stores"), n=2, size=192)


def _config(**overrides):
    return validate_config({"classes": CLASSES, "seed": 0, "diffusion": diffusion_section(**overrides)})


def _weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


def test_randomness_depends_only_on_sample_index():
    a = sample_randomness(torch.tensor([5, 6, 7]), 0, (3, 4, 4), 1000, 0.5)
    b = sample_randomness(torch.tensor([6]), 0, (3, 4, 4), 1000, 0.5)
    assert torch.equal(a[0][1], b[0][0]) and a[1][1] == b[1][0] and a[2][1] == b[2][0]
    c = sample_randomness(torch.tensor([6]), 1, (3, 4, 4), 1000, 0.5)
    assert not torch.equal(b[0], c[0])


@pytest.mark.parametrize("style_jitter", [False, True])
def test_resume_is_exact(stores, tmp_path, style_jitter):
    cfg = _config(max_steps=4, checkpoint_every=2, sample_every=0, style_jitter={"enabled": style_jitter})
    assert train(cfg, stores, out=tmp_path / "straight", run_dir=tmp_path / "run_a") == 0
    assert train(cfg, stores, out=tmp_path / "resumed", run_dir=tmp_path / "run_b", stop_at=2) == EXIT_REQUEUE
    assert not (tmp_path / "resumed").exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "run_b")] == [2]
    assert train(cfg, stores, out=tmp_path / "resumed", run_dir=tmp_path / "run_b") == 0
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if style_jitter:  # restained samples are other training data: other weights
        plain = _config(max_steps=4, checkpoint_every=2, sample_every=0, style_jitter={"enabled": False})
        assert train(plain, stores, out=tmp_path / "plain", run_dir=tmp_path / "run_c") == 0
        c = _weights(tmp_path / "plain")
        assert any(not torch.equal(a[k], c[k]) for k in a)
    # raw weights and optimizer state of the final checkpoints too
    ca = torch.load(list_checkpoints(tmp_path / "run_a")[-1][1], weights_only=True)
    cb = torch.load(list_checkpoints(tmp_path / "run_b")[-1][1], weights_only=True)
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    assert ca["optimizer"]["state"][0]["step"] == cb["optimizer"]["state"][0]["step"]
    log_b = pd.read_csv(tmp_path / "run_b" / "train_log.csv")
    assert log_b["step"].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(log_b["loss"], pd.read_csv(tmp_path / "run_a" / "train_log.csv")["loss"])
    # a finished run with its model deleted (as Snakemake does on failure) just rewrites the model
    shutil.rmtree(tmp_path / "resumed")
    assert train(cfg, stores, out=tmp_path / "resumed", run_dir=tmp_path / "run_b") == 0
    assert all(torch.equal(a[k], v) for k, v in _weights(tmp_path / "resumed").items())


def test_truncated_newest_checkpoint_resumes_the_one_before(stores, tmp_path, caplog):
    """A node died mid-write: the newest checkpoint is cut short. Resume takes the older one, exactly."""
    cfg = _config(max_steps=4, checkpoint_every=1, sample_every=0)
    assert train(cfg, stores, out=tmp_path / "straight", run_dir=tmp_path / "run_a") == 0
    assert train(cfg, stores, out=tmp_path / "resumed", run_dir=tmp_path / "run_b", stop_at=3) == EXIT_REQUEUE
    (step_2, _), (step_3, newest) = list_checkpoints(tmp_path / "run_b")
    assert (step_2, step_3) == (2, 3)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    assert train(cfg, stores, out=tmp_path / "resumed", run_dir=tmp_path / "run_b") == 0
    assert f"checkpoint {newest} does not load" in caplog.text
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert pd.read_csv(tmp_path / "run_b" / "train_log.csv")["step"].tolist() == [1, 2, 3, 4]


def test_non_finite_loss_stops_with_an_error_and_no_diverged_checkpoint(stores, tmp_path, monkeypatch):
    """A loss that turns NaN (a learning rate too high for the model): one error naming the setting,
    and the last checkpoint is the one before it, never NaN weights."""
    import sedm.diffusion.train as trainer
    from sedm.errors import InputError

    loss, calls = trainer.diffusion_loss, []

    def nan_from_step_3(*args, **kwargs):
        calls.append(1)
        value = loss(*args, **kwargs)
        return value * float("nan") if len(calls) >= 3 else value

    monkeypatch.setattr(trainer, "diffusion_loss", nan_from_step_3)
    cfg = _config(max_steps=6, checkpoint_every=2, log_every=5, sample_every=0, keep_checkpoints=5)
    with pytest.raises(InputError, match="diffusion.lr.*NaN or infinite between steps 2 and 4"):
        train(cfg, stores, out=tmp_path / "model", run_dir=tmp_path / "run")
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [2]
    assert not (tmp_path / "model").exists()
    monkeypatch.setattr(trainer, "diffusion_loss", loss)  # the same run with finite losses passes the check
    assert train(cfg, stores, out=tmp_path / "model", run_dir=tmp_path / "run") == 0


def test_checkpoint_of_other_config_is_not_resumed(stores, tmp_path):
    cfg = _config(max_steps=2, checkpoint_every=2)
    assert train(cfg, stores, out=tmp_path / "m", run_dir=tmp_path / "run") == 0
    fp = run_fingerprint(cfg, stores)
    assert find_resumable(tmp_path / "run", fp) is not None
    assert run_fingerprint(_config(max_steps=2, checkpoint_every=2, num_workers=2), stores) == fp  # not semantic
    other = run_fingerprint(_config(max_steps=2, checkpoint_every=2, lr=5e-4), stores)
    assert other != fp and find_resumable(tmp_path / "run", other) is None
    assert run_fingerprint(cfg, stores[:1]) != fp


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            out += [int(c) for c in fh.read().split()]
    return out


@pytest.mark.parametrize("workers,sig", [(0, signal.SIGUSR1), (1, signal.SIGTERM)])
def test_signal_checkpoints_and_exits_75(stores, tmp_path, workers, sig):
    """SIGUSR1 to the trainer, or SIGTERM to it and its DataLoader worker (as SLURM does)."""
    cfg = _config(max_steps=10_000, checkpoint_every=10_000, log_every=1, num_workers=workers)
    log = tmp_path / "run" / "train_log.csv"

    def send_when_training():
        for _ in range(1200):
            if log.is_file() and len(log.read_text().splitlines()) >= 2:
                for child in _children(os.getpid()):
                    os.kill(child, sig)
                os.kill(os.getpid(), sig)
                return
            time.sleep(0.05)

    threading.Thread(target=send_when_training, daemon=True).start()
    assert train(cfg, stores, out=tmp_path / "m", run_dir=tmp_path / "run") == EXIT_REQUEUE
    steps = [s for s, _ in list_checkpoints(tmp_path / "run")]
    assert len(steps) == 1 and 1 <= steps[0] < 10_000
    assert not (tmp_path / "m").exists()


def test_writes_log_previews_and_model(stores, tmp_path):
    from sedm.models.io import load_model

    cfg = _config(max_steps=2, sample_every=1, preview_samples=2, checkpoint_every=1, keep_checkpoints=1)
    assert train(cfg, stores, out=tmp_path / "m", run_dir=tmp_path / "run") == 0
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert list(log.columns) == ["step", "loss", "lr", "grad_norm", "it_per_s", "img_per_s", "elapsed_s"]
    assert (tmp_path / "run" / "samples" / "step-00000001.png").is_file()
    assert (tmp_path / "run" / "samples" / "final.png").is_file()
    assert len(list_checkpoints(tmp_path / "run")) == 1
    model = load_model(tmp_path / "m")
    assert model.config.mpp == 1.0 and model.config.classes == CLASSES


@pytest.mark.slow
def test_tiny_overfit_loss_halves(stores):
    """On 4 fixed patches, 100 steps cut the loss on a fixed (noise, t) set well below half (~0.25x)."""
    from sedm.diffusion.dataset import DiffusionPatchDataset

    ds = DiffusionPatchDataset(stores, CLASSES, patch_size=32, n_style=2, augment=False, seed=0)
    items = [ds[i] for i in range(4)]
    x0 = torch.stack([it["image"] for it in items])
    layout = torch.stack([it["layout"] for it in items])
    style = torch.stack([it["style"] for it in items])
    model = micro_model(layout_drop=0.0)  # layouts of the classes only (the dataset has no dropout here)
    sched = train_scheduler(model.config)
    opt = build_optimizer(model, lr=2e-3, weight_decay=0.0)

    def loss_at(indices, drop_p=0.0):
        noise, t, drop = sample_randomness(indices, 123, (3, 32, 32), 1000, drop_p)
        reps = len(indices) // 4
        x, lay, sty = x0.repeat(reps, 1, 1, 1), layout.repeat(reps, 1, 1, 1), style.repeat(reps, 1, 1, 1, 1)
        target = sched.get_velocity(x, noise, t)
        return torch.nn.functional.mse_loss(model(sched.add_noise(x, noise, t), t, lay, sty, drop), target)

    eval_idx = torch.arange(10**6, 10**6 + 32)
    with torch.no_grad():
        before = loss_at(eval_idx).item()
    for step in range(100):
        loss = loss_at(torch.arange(step * 4, step * 4 + 4), drop_p=0.25)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_at(eval_idx).item()
    assert after <= 0.4 * before, (before, after)


@pytest.mark.slow
def test_ddp_two_processes_match_one(stores, tmp_path):
    import yaml

    cfg = _config(max_steps=3, batch_size=4, checkpoint_every=3, log_every=1)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # --gpus 2 relaunches the command under torchrun, one process per "GPU" (gloo on this CPU machine)
    cmd = [sys.executable, "-m", "sedm.cli", "train-diffusion", "--gpus", "2", "--config", str(cfg_file),
           "--stores", *map(str, stores), "--out", str(tmp_path / "ddp"), "--run-dir", str(tmp_path / "run_ddp"),
           "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr, proc.stderr[-3000:]
    assert train(cfg, stores, out=tmp_path / "single", run_dir=tmp_path / "run_single") == 0

    ddp_log = pd.read_csv(tmp_path / "run_ddp" / "train_log.csv")
    single_log = pd.read_csv(tmp_path / "run_single" / "train_log.csv")
    # step 1's loss is computed before any update: the mean over 2 ranks x 2 samples == over 4 samples
    np.testing.assert_allclose(ddp_log["loss"].iloc[0], single_log["loss"].iloc[0], rtol=1e-5)
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "single")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-3, worst


def test_cli_bad_inputs_exit_2(stores, tmp_path, capsys):
    import yaml

    from sedm.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"classes": CLASSES, "diffusion": diffusion_section(use_unlabelled=True)}))
    base = ["train-diffusion", "--config", str(cfg), "--out", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r")]
    assert main(base + ["--stores", *map(str, stores)]) == 2
    assert "no --unlabelled-stores" in capsys.readouterr().err
    assert main(base + ["--stores", str(tmp_path / "missing.zarr"), "--unlabelled-stores", str(stores[0])]) == 2
    assert "not a sedm Zarr store" in capsys.readouterr().err
    cfg.write_text(yaml.safe_dump({"classes": CLASSES, "diffusion": diffusion_section(patch_size=31)}))
    assert main(base + ["--stores", *map(str, stores)]) == 2
    assert "not divisible" in capsys.readouterr().err


def test_snr_weights_cap_easy_steps():
    from sedm.diffusion.train import snr_weights

    cfg = micro_model().config
    sched = train_scheduler(cfg)
    t = torch.tensor([0, 500, 999])
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    v = snr_weights(t, sched, "v_prediction", 5.0)
    torch.testing.assert_close(v, torch.minimum(snr + 1, torch.tensor(5.0)) / (snr + 1))
    assert v[0] < 0.01 and v[2] == 1.0  # easy step capped, noisiest step keeps the full v weight
    eps = snr_weights(t, sched, "epsilon", 5.0)
    torch.testing.assert_close(eps, torch.minimum(snr, torch.tensor(5.0)) / snr)


@pytest.mark.slow
def test_generated_colour_follows_style_source(tmp_path):
    """Two toy slides with different stains: after a short training, the same layouts sampled with
    style patches of slide 0 vs slide 1 differ in colour like the slides do."""
    from sedm.diffusion.dataset import DiffusionPatchDataset
    from sedm.diffusion.pipeline import StedmPipeline
    from sedm.models.io import load_model

    stores = make_stores(tmp_path, n=2, size=256)
    cfg = _config(patch_size=32, block_out_channels=[16, 32, 64], attention_levels=[False, False, True],
                  max_steps=150, batch_size=8, lr=2e-3, warmup_steps=10, checkpoint_every=1000, log_every=50)
    assert train(cfg, stores, out=tmp_path / "m", run_dir=tmp_path / "run") == 0
    model = load_model(tmp_path / "m")
    layouts = torch.stack([DiffusionPatchDataset(stores, CLASSES, patch_size=32, seed=9)[i]["layout"]
                           for i in range(6)])
    generated, real = [], []
    for store in stores:
        one = DiffusionPatchDataset([store], CLASSES, patch_size=32, n_style=2, seed=5)
        styles = torch.stack([one[i]["style"] for i in range(6)])
        generated.append(StedmPipeline(model)(layouts, styles, seed=0, steps=15).reshape(-1, 3).mean(0))
        real.append(np.mean([(one[i]["image"].flatten(1).mean(1).numpy() + 1) * 127.5 for i in range(30)], 0))
    ratio = np.linalg.norm(generated[0] - generated[1]) / np.linalg.norm(real[0] - real[1])
    assert ratio > 0.5, ratio


def test_ema_warmup_follows_diffusers_schedule():
    """The one EMA: with warm-up it averages like diffusers' EMAModel (the schedule the diffusion
    trainer used before), up to float rounding; without, a constant decay."""
    from diffusers.training_utils import EMAModel

    from sedm.runtime.ema import EMA

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    ours = EMA(net, 0.99, warmup_power=0.75)
    ref = EMAModel(net.parameters(), decay=0.99, min_decay=0.0, use_ema_warmup=True, power=0.75)
    for _ in range(60):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ours.update(net)
        ref.step(net.parameters())
    for mine, theirs in zip((ours.shadow["weight"], ours.shadow["bias"]), ref.shadow_params):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    assert ours.current_decay() == pytest.approx(min(0.99, 1 - 60 ** -0.75))
    flat = EMA(net, 0.9)
    before = flat.shadow["bias"].clone()
    flat.update(net)
    torch.testing.assert_close(flat.shadow["bias"], before)  # weights unchanged since the copy: same average
    assert flat.current_decay() == 0.9
