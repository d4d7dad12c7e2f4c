"""Segmentation data, loss and training: patient split, mixing ratio, ignore label, exact resume."""

from __future__ import annotations

import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from builders.segmentation import CLASSES, make_store, make_synthetic, tiny_config, write_samples

from sedm.cli import main
from sedm.config import load_samples
from sedm.errors import InputError
from sedm.segmentation.data import (RealTiles, SyntheticSet, TrainBatches, annotated_tiles, split_by_patient,
                                    split_tiles)
from sedm.segmentation.loss import masked_ce_dice
from sedm.segmentation.train import train
from sedm.runtime.checkpoints import list_checkpoints
from sedm.runtime.signals import EXIT_REQUEUE
from sedm.tiling.store import SlideStore


# ---------------------------------------------------------------------------------------- splits
def test_split_by_patient_keeps_patients_whole():
    slides = [f"s{i}" for i in range(12)]
    patient_of = {s: f"p{i // 3}" for i, s in enumerate(slides)}  # 4 patients, 3 slides each
    train_s, val_s = split_by_patient(slides, patient_of, val_patients=1, seed=0)
    assert sorted(train_s + val_s) == sorted(slides)
    assert {patient_of[s] for s in train_s}.isdisjoint({patient_of[s] for s in val_s})
    assert len({patient_of[s] for s in val_s}) == 1 and len(val_s) == 3
    assert split_by_patient(slides, patient_of, 1, seed=0) == (train_s, val_s)  # deterministic
    picks = {tuple(split_by_patient(slides, patient_of, 1, seed=k)[1]) for k in range(20)}
    assert len(picks) > 1  # the seed chooses
    # never all patients in validation
    train_s, val_s = split_by_patient(slides, patient_of, val_patients=10, seed=0)
    assert len({patient_of[s] for s in train_s}) == 1


def test_single_patient_falls_back_to_held_out_tiles():
    slides = ["a", "b"]
    assert split_by_patient(slides, {"a": "p", "b": "p"}, 1, 0) == (["a", "b"], [])
    tr, va = split_tiles(10, 0.2, seed=1)
    assert len(va) == 2 and len(tr) == 8 and set(tr).isdisjoint(va)
    assert sorted([*tr, *va]) == list(range(10))


def test_validation_slides_are_never_trained_on(tmp_path):
    stores = [make_store(tmp_path / f"{s}.zarr", s, size=128, seed=i) for i, s in enumerate("abcd")]
    samples = load_samples(write_samples(tmp_path / "s.tsv", [("a", "p1", "labelled"), ("b", "p1", "labelled"),
                                                              ("c", "p2", "labelled"), ("d", "p3", "labelled")]))
    from sedm.segmentation.train import prepare_data

    cfg = tiny_config()
    data = prepare_data(cfg, {"synthetic": False, "stain_aug": False}, stores, samples, [])
    train_slides = set(data.train.tiles["slide"])
    val_slides = set(data.val.tiles["slide"])
    pat = samples["patient_id"].to_dict()
    assert {pat[s] for s in train_slides}.isdisjoint({pat[s] for s in val_slides})
    assert data.split["mode"] == "patient"


def test_training_refuses_test_slides(tmp_path):
    store = make_store(tmp_path / "t.zarr", "t", size=128)
    samples = load_samples(write_samples(tmp_path / "s.tsv", [("t", "p1", "test")]))
    with pytest.raises(InputError, match="role 'test'"):
        train(tiny_config(), arm="real", stores=[store], samples=samples, out=tmp_path / "m", run_dir=tmp_path / "r")


# ------------------------------------------------------------------------------------------ data
@pytest.fixture
def real_and_synthetic(tmp_path):
    store = SlideStore(make_store(tmp_path / "a.zarr", "a", size=128, unannotated_rows=64))
    tiles = annotated_tiles(store, 0.05).assign(store=0)
    synthetic = [SyntheticSet(make_synthetic(tmp_path / f"u{i}.zarr", f"u{i}", n=4, size=48, seed=i), CLASSES, 1.0)
                 for i in range(2)]
    return RealTiles([store], tiles), synthetic


def test_annotated_tiles_skip_unannotated_rows(real_and_synthetic):
    real, _ = real_and_synthetic
    # 128 px slide, 64 px tiles, the top 64 rows unannotated: only the bottom row of tiles is usable
    assert sorted(real.tiles["y"].unique()) == [64]
    image, labels = real.tile(0)
    assert image.shape == (64, 64, 3) and labels.shape == (64, 64) and labels.min() > 0


def test_mixing_ratio_follows_synthetic_fraction(real_and_synthetic):
    real, synthetic = real_and_synthetic
    batches = TrainBatches(real, synthetic, synthetic_fraction=0.8, batch_size=16, patch_size=32, seed=0)
    flags = torch.cat([batches[step]["synthetic"] for step in range(60)]).float()
    assert abs(flags.mean().item() - 0.8) < 0.05  # 960 draws: 5 % is > 4 standard errors
    b = batches[3]
    assert b["image"].shape == (16, 32, 32, 3) and b["image"].dtype == torch.uint8
    assert b["labels"].shape == (16, 32, 32) and int(b["labels"].max()) <= len(CLASSES)
    assert torch.equal(batches[3]["image"], b["image"])  # a batch is a function of (seed, step)
    none = TrainBatches(real, [], synthetic_fraction=0.8, batch_size=16, patch_size=32, seed=0)
    assert not torch.cat([none[s]["synthetic"] for s in range(5)]).any()


def test_synthetic_set_checks_classes_and_mpp(tmp_path):
    path = make_synthetic(tmp_path / "u.zarr", "u", n=2, size=32, mpp=1.0)
    s = SyntheticSet(path, CLASSES, 1.0)
    image, labels = s[1]
    assert len(s) == 2 and image.shape == (32, 32, 3) and labels.shape == (32, 32)
    patch, lab = s.patch(0, 48, np.random.default_rng(0))  # larger than the sample: padded, label 0
    assert patch.shape == (48, 48, 3) and (lab[32:] == 0).all()
    with pytest.raises(InputError, match="classes"):
        SyntheticSet(path, ["tumour", "other"], 1.0)
    with pytest.raises(InputError, match="µm/px"):
        SyntheticSet(path, CLASSES, 0.5)


# ------------------------------------------------------------------------------------------ loss
def test_loss_ignores_unannotated_pixels():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (2, 16, 16))
    labels[0, :8] = 0
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    loss = masked_ce_dice(logits, labels)
    loss.backward()
    ignored = (labels == 0).unsqueeze(1).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)  # no gradient from unannotated pixels
    assert torch.any(logits.grad[~ignored] != 0)
    # whatever the network says on unannotated pixels, the loss is the same
    other = logits.detach().clone()
    other[ignored] = torch.randn(int(ignored.sum())) * 50
    assert torch.allclose(masked_ce_dice(other, labels), loss.detach(), atol=1e-6)
    # CE term alone == cross-entropy over the annotated pixels only
    valid = labels > 0
    ce = torch.nn.functional.cross_entropy(logits.detach().permute(0, 2, 3, 1)[valid], labels[valid] - 1)
    assert torch.allclose(masked_ce_dice(logits.detach(), labels, ce_weight=1, dice_weight=0), ce, atol=1e-6)


def test_loss_of_all_unannotated_batch_is_zero():
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    loss = masked_ce_dice(logits, torch.zeros(1, 8, 8, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and torch.all(logits.grad == 0)


def test_dice_term_is_zero_for_perfect_prediction():
    labels = torch.randint(1, 4, (2, 8, 8))
    logits = torch.nn.functional.one_hot(labels - 1, 3).permute(0, 3, 1, 2).float() * 100
    assert masked_ce_dice(logits, labels, ce_weight=0, dice_weight=1).item() < 1e-4


# -------------------------------------------------------------------------------------- training
@pytest.fixture
def cohort(tmp_path):
    stores = [make_store(tmp_path / "a.zarr", "a", size=128, seed=1, unannotated_rows=16, glass_cols=32),
              make_store(tmp_path / "b.zarr", "b", size=128, seed=2)]
    synthetic = [make_synthetic(tmp_path / "u.zarr", "u", n=6, size=48)]
    samples = write_samples(tmp_path / "samples.tsv", [("a", "p1", "labelled"), ("b", "p2", "labelled"),
                                                       ("u", "p3", "unlabelled")])
    return tmp_path, stores, synthetic, samples


def _weights(path):
    return load_file(str(path))


def test_training_reduces_loss_and_writes_model_dir(cohort):
    tmp, stores, synthetic, samples = cohort
    cfg = tiny_config(max_steps=20, val_every=5)
    rc = train(cfg, arm="stedm_stain_aug", stores=stores, samples=load_samples(samples), synthetic=synthetic,
               out=tmp / "model", run_dir=tmp / "run")
    assert rc == 0
    log = pd.read_csv(tmp / "run" / "train_log.csv")
    assert list(log["step"]) == list(range(1, 21))
    assert log["loss"].iloc[-5:].mean() < 0.8 * log["loss"].iloc[:3].mean()
    names = {p.name for p in (tmp / "model").iterdir()}
    assert {"config.json", "best.safetensors", "last.safetensors", "train_log.csv"} <= names
    import json

    meta = json.loads((tmp / "model" / "config.json").read_text())
    assert meta["classes"] == CLASSES and meta["mpp"] == 1.0 and meta["patch_size"] == 32
    assert meta["split"]["val_slides"] and not set(meta["split"]["val_slides"]) & set(meta["split"]["train_slides"])
    assert meta["split"]["synthetic_slides"] == ["u"]
    best_step = meta["best_step"]
    assert best_step in (5, 10, 15, 20)
    assert log.loc[log.step == best_step, "val_macro_dice"].item() == pytest.approx(log["val_macro_dice"].max())


def test_interrupted_training_resumes_to_identical_weights(cohort):
    tmp, stores, synthetic, samples = cohort
    cfg = tiny_config(max_steps=10, ckpt_every=100, val_every=3, ema=True, ema_decay=0.9)
    samples = load_samples(samples)
    kw = dict(arm="stedm", stores=stores, samples=samples, synthetic=synthetic)
    assert train(cfg, **kw, out=tmp / "full", run_dir=tmp / "run_full") == 0

    def interrupt(step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGUSR1)

    assert train(cfg, **kw, out=tmp / "part", run_dir=tmp / "run_part", on_step=interrupt) == EXIT_REQUEUE
    assert not (tmp / "part").exists() and list_checkpoints(tmp / "run_part")
    assert train(cfg, **kw, out=tmp / "part", run_dir=tmp / "run_part") == 0
    for name in ("last", "best"):
        full, part = _weights(tmp / "full" / f"{name}.safetensors"), _weights(tmp / "part" / f"{name}.safetensors")
        assert full.keys() == part.keys()
        assert all(torch.equal(full[k], part[k]) for k in full)
    log_full = pd.read_csv(tmp / "run_full" / "train_log.csv")
    log_part = pd.read_csv(tmp / "run_part" / "train_log.csv")
    pd.testing.assert_frame_equal(log_full.drop(columns="seconds"), log_part.drop(columns="seconds"))


def test_unreadable_newest_checkpoint_resumes_the_one_before(cohort, caplog):
    tmp, stores, synthetic, samples = cohort
    cfg = tiny_config(max_steps=6, ckpt_every=2, val_every=3)
    kw = dict(arm="real", stores=stores, samples=load_samples(samples))
    assert train(cfg, **kw, out=tmp / "full", run_dir=tmp / "run_full") == 0

    def interrupt(step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGUSR1)

    assert train(cfg, **kw, out=tmp / "part", run_dir=tmp / "run_part", on_step=interrupt) == EXIT_REQUEUE
    assert [s for s, _ in list_checkpoints(tmp / "run_part")] == [2, 4]
    newest = list_checkpoints(tmp / "run_part")[-1][1]
    newest.write_bytes(b"")  # a full disk: renamed, never filled
    assert train(cfg, **kw, out=tmp / "part", run_dir=tmp / "run_part") == 0
    assert f"checkpoint {newest} does not load" in caplog.text
    assert newest.with_name(newest.name + ".unreadable").is_file()
    for name in ("last", "best"):
        full, part = _weights(tmp / "full" / f"{name}.safetensors"), _weights(tmp / "part" / f"{name}.safetensors")
        assert all(torch.equal(full[k], part[k]) for k in full)


def test_checkpoint_of_other_config_is_not_resumed(cohort):
    tmp, stores, synthetic, samples = cohort
    samples = load_samples(samples)
    kw = dict(arm="real", stores=stores, samples=samples, out=tmp / "m", run_dir=tmp / "run")

    def interrupt(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    assert train(tiny_config(max_steps=6), **kw, on_step=interrupt) == EXIT_REQUEUE
    # a different learning rate: the step-3 checkpoint must be ignored, training restarts at step 1
    assert train(tiny_config(max_steps=6, lr=0.02), **kw) == 0
    log = pd.read_csv(tmp / "run" / "train_log.csv")
    assert list(log["step"]) == list(range(1, 7))


def test_cli_train_seg_and_bad_arm(cohort, tmp_path, capsys):
    tmp, stores, synthetic, samples = cohort
    import yaml

    cfg = tiny_config(max_steps=3)
    cfg_path = tmp / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    args = ["train-seg", "--config", str(cfg_path), "--stores", *map(str, stores), "--samples", str(samples),
            "--out", str(tmp / "m"), "--run-dir", str(tmp / "r"), "--threads", "1"]
    assert main([*args, "--arm", "nonsense"]) == 2
    assert "unknown arm" in capsys.readouterr().err
    assert main([*args, "--arm", "stedm"]) == 2  # synthetic arm without --synthetic
    assert "--synthetic" in capsys.readouterr().err
    assert main([*args, "--arm", "stain_aug"]) == 0
    assert (tmp / "m" / "best.safetensors").is_file()


def test_ema_state_loads_onto_the_models_device():
    """A checkpoint is read on the CPU; the EMA shadow must stay where the model is (a GPU)."""
    from sedm.runtime.ema import EMA

    model = torch.nn.Linear(3, 2).to("meta")
    ema = EMA(model, 0.9)
    ema.load_state_dict({k: torch.ones_like(v, device="cpu") for k, v in model.state_dict().items()})
    assert {v.device.type for v in ema.state_dict().values()} == {"meta"}
