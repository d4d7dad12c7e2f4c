"""sedm synthesize: reproducible, resumable, traceable synthetic data in the style of an unseen slide."""

from __future__ import annotations

import hashlib
import json
import os
import signal

import numpy as np
import pytest
import yaml
import zarr
from PIL import Image

from sedm.cli import main
from sedm.config import validate_config
from sedm.errors import InputError
from sedm.tiling.store import SlideStore
from sedm.synthesis import synthesize as synth_mod
from sedm.synthesis.layouts import Augmentation, LayoutSampler, augmented_window, class_probabilities
from sedm.synthesis.counts import samples_for_slide
from sedm.synthesis.shards import partial_dir, read_provenance
from sedm.synthesis.stats import fidelity_flags
from sedm.synthesis.styles import StoreStyleSource
from sedm.runtime.signals import EXIT_REQUEUE
from builders.synthesis import CLASSES, MPP, PATCH, TILE, make_model, make_store

SYN = {"per_slide": 5, "shard_size": 2, "batch_size": 2, "steps": 2, "sampler": "dpmpp", "seed": 3,
       "montage_samples": 3, "style_min_tissue_fraction": 0.5}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    lab = [make_store(d / "L1.zarr", "L1", seed=1), make_store(d / "L2.zarr", "L2", seed=2)]
    # style slide: only two of its four tiles are tissue
    style = make_store(d / "U1.zarr", "U1", tint=(120, 90, 200), labelled=False, tissue_tiles={(0, 1), (1, 0)}, seed=3)
    return {"dir": d, "labelled": lab, "style": style, "model": make_model(d / "model")}


def config(**syn):
    return validate_config({"classes": CLASSES, "synthesis": {**SYN, **syn}})


def run_synth(world, out_dir, **syn):
    job = synth_mod.prepare(config(**syn), world["model"], world["style"], world["labelled"], out_dir / "U1.zarr")
    code = synth_mod.synthesize(job, out_dir / "U1.montage.png", out_dir / "U1.stats.json")
    return code, out_dir / "U1.zarr"


def arrays(store):
    root = zarr.open_group(str(store), mode="r")
    return root["images"][:], root["labels"][:], dict(root.attrs["sedm"])


@pytest.fixture(scope="module")
def baseline(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    code, store = run_synth(world, out)
    assert code == 0
    return out, store


# ----------------------------------------------------------------------------------------- layouts
def test_class_probabilities_rare_boost_hand_computed(world):
    t = LayoutSampler(world["labelled"], classes=CLASSES, patch_size=PATCH, mpp=MPP).tiles
    # per slide: 2 all-tumour tiles, 1 all-stroma tile (the all-unannotated tile is no layout source)
    p = class_probabilities(t, CLASSES, None, 0.0)
    assert p == pytest.approx({"unannotated": 0.0, "tumour": 0.5, "stroma": 0.5})
    p = class_probabilities(t, CLASSES, None, 1.0)  # weights / share: 1/(2/3) : 1/(1/3) = 1 : 2
    assert p == pytest.approx({"unannotated": 0.0, "tumour": 1 / 3, "stroma": 2 / 3})
    with pytest.raises(InputError, match="class_weights"):
        class_probabilities(t, CLASSES, {"necrosis": 1.0}, 0.0)
    with pytest.raises(InputError, match="positive weight"):
        class_probabilities(t, CLASSES, {"unannotated": 1.0}, 0.0)


def test_layouts_follow_class_weights(world):
    s = LayoutSampler(world["labelled"], classes=CLASSES, patch_size=PATCH, mpp=MPP,
                      class_weights={"stroma": 1.0}, augment={"flips": False, "rot90": False, "affine": False})
    rng = np.random.default_rng(0)
    for _ in range(20):
        lay = s.sample(rng)
        assert lay.target_class == "stroma"
        # the only stroma tile is the bottom-left one; the window lies inside it
        assert TILE <= lay.y <= 2 * TILE - PATCH and 0 <= lay.x <= TILE - PATCH
        assert (lay.labels == 2).all()
        np.testing.assert_array_equal(lay.image, SlideStore(world["dir"] / f"{lay.slide_id}.zarr")
                                      .read_image(lay.y, lay.x, PATCH, PATCH))


def test_augmentation_geometry(world):
    store = SlideStore(world["labelled"][0])
    plain_lab, plain_img = augmented_window(store, 48, 16, PATCH, Augmentation())
    np.testing.assert_array_equal(plain_lab, store.read_labels(48, 16, PATCH, PATCH))
    # an affine warp that is the identity reproduces the window exactly
    ident, _ = augmented_window(store, 48, 16, PATCH, Augmentation(affine=True))
    np.testing.assert_array_equal(ident, plain_lab)
    # a 90° affine rotation about the centre is a quarter turn (nearest neighbour keeps values exact)
    rot, _ = augmented_window(store, 48, 16, PATCH, Augmentation(affine=True, rotation_deg=90.0))
    np.testing.assert_array_equal(rot, np.rot90(plain_lab, 1))
    flipped, fimg = augmented_window(store, 48, 16, PATCH, Augmentation(rot90=1, flip_x=True))
    np.testing.assert_array_equal(flipped, np.rot90(plain_lab, 1)[:, ::-1])
    np.testing.assert_array_equal(fimg, np.rot90(plain_img, 1)[:, ::-1])
    # zoomed in 1.2x: the class boundary (y = 64, 8.5 px below the centre of the window at y = 40)
    # moves to ~10 px below the centre, so class 1 (above it) covers more rows
    plain40, _ = augmented_window(store, 40, 16, PATCH, Augmentation())
    big, _ = augmented_window(store, 40, 16, PATCH, Augmentation(affine=True, scale=1.2))
    assert (plain40 == 1).all(axis=1).sum() == 24
    assert set(np.unique(big)) == {1, 2} and (big == 1).all(axis=1).sum() == 26


# ------------------------------------------------------------------------------------------ styles
def test_style_patches_come_from_tissue_tiles(world):
    src = StoreStyleSource(world["style"], size=PATCH, mpp=MPP, min_tissue_fraction=0.5)
    store = SlideStore(world["style"])
    patches, where = src.draw(np.random.default_rng(1), 16)
    assert patches.shape == (16, PATCH, PATCH, 3)
    for p, (slide, y, x) in zip(patches, where):
        assert slide == "U1"
        assert store.read_tissue(y, x, PATCH, PATCH).all()  # inside a tissue tile
        np.testing.assert_array_equal(p, store.read_image(y, x, PATCH, PATCH))


def test_style_crops_prefer_tissue_within_a_tile(tmp_path):
    path = make_store(tmp_path / "P.zarr", "P", labelled=False, tissue_tiles={(0, 0)})
    root = zarr.open_group(str(path), mode="r+")
    tissue = np.zeros((TILE, TILE), np.uint8)
    tissue[:, :40] = 1  # the tile is listed as tissue, but its right third is glass
    root["labels/tissue/0"][:TILE, :TILE] = tissue
    src = StoreStyleSource(path, size=PATCH, mpp=MPP, min_tissue_fraction=0.5)
    _, where = src.draw(np.random.default_rng(0), 16)
    # a uniform crop has >= 50 % tissue only when x <= 24 (p = 25/33); all 16 are
    assert all(SlideStore(path).read_tissue(y, x, PATCH, PATCH).mean() >= 0.5 for _, y, x in where)


def test_style_slide_without_tissue_tiles_is_input_error(world, tmp_path):
    empty = make_store(tmp_path / "E.zarr", "E", labelled=False, tissue_tiles=set())
    with pytest.raises(InputError, match="tissue fraction") as exc:
        synth_mod.prepare(config(), world["model"], empty, world["labelled"], tmp_path / "E_out.zarr")
    assert exc.value.file == str(empty)


def test_model_class_mismatch_is_input_error(world, tmp_path):
    other = make_model(tmp_path / "other", classes=["tumour", "necrosis"])
    with pytest.raises(InputError, match="trained with classes"):
        synth_mod.prepare(config(), other, world["style"], world["labelled"], tmp_path / "x.zarr")


def test_store_at_other_mpp_is_input_error(world, tmp_path):
    coarse = make_store(tmp_path / "C.zarr", "C", mpp=2.0, labelled=False)
    with pytest.raises(InputError, match="µm/px"):
        synth_mod.prepare(config(), world["model"], coarse, world["labelled"], tmp_path / "c.zarr")


def test_samples_for_slide():
    slides = ["a", "b", "c", "d"]
    counts = [samples_for_slide({"per_slide": None, "total": 10}, s, slides) for s in slides]
    assert counts == [3, 3, 2, 2]
    assert samples_for_slide({"per_slide": 7, "total": None}, "b", slides) == 7
    with pytest.raises(InputError, match="exactly one"):
        samples_for_slide({"per_slide": 7, "total": 10}, "b", slides)


# -------------------------------------------------------------------------------------- end to end
def test_store_contents_and_provenance(world, baseline):
    out, store = baseline
    images, labels, attrs = arrays(store)
    assert images.shape == (5, PATCH, PATCH, 3) and images.dtype == np.uint8
    assert labels.shape == (5, PATCH, PATCH) and labels.dtype == np.uint8
    assert labels.max() <= len(CLASSES)
    sha = hashlib.sha256((world["model"] / "model.safetensors").read_bytes()).hexdigest()
    assert attrs["model_sha256"] == sha
    assert (attrs["slide_id"], attrs["mpp"], attrs["classes"]) == ("U1", MPP, CLASSES)
    assert (attrs["sampler"], attrs["steps"], attrs["seed"]) == ("dpmpp", 2, 3)
    assert attrs["guidance_scale"] == 1.5 and attrs["guidance_rescale"] == 0.7
    prov = read_provenance(store)
    assert prov["sample"].tolist() == list(range(5))
    style = SlideStore(world["style"])
    for i, row in prov.iterrows():
        assert row["style_slide"] == "U1" and len(row["style_y"]) == 2  # n_style of the model
        for y, x in zip(row["style_y"], row["style_x"]):
            assert style.read_tissue(int(y), int(x), PATCH, PATCH).all()
        # the layout is reproducible from its provenance: labelled slide + window + augmentation
        assert row["layout_slide"] in ("L1", "L2")
        aug = Augmentation(**{k.removeprefix("aug_"): row[k] for k in prov.columns if k.startswith("aug_")})
        src = SlideStore(world["dir"] / f"{row['layout_slide']}.zarr")
        lab, _ = augmented_window(src, int(row["layout_y"]), int(row["layout_x"]), PATCH, aug)
        np.testing.assert_array_equal(lab, labels[i])
    assert not partial_dir(store).exists()


def test_montage_and_stats_written(baseline):
    out, store = baseline
    with Image.open(out / "U1.montage.png") as im:
        assert im.width >= 3 * 128 and im.height >= 3 * 128  # 3 samples x 3 rows of >= 128 px cells
    stats = json.loads((out / "U1.stats.json").read_text())
    _, _, attrs = arrays(store)
    assert stats["slide_id"] == "U1" and stats["n_samples"] == 5
    for k in ("generated", "style", "source"):
        assert len(stats[k]["mean"]) == 3 and stats[k]["pixels"] > 0
    g, s = np.array(stats["generated"]["mean"] + stats["generated"]["std"]), np.array(stats["style"]["mean"] + stats["style"]["std"])
    assert stats["hed_distance"] == pytest.approx(np.linalg.norm(g - s))
    assert stats["style_fidelity"] == pytest.approx(1 - stats["hed_distance"] / stats["hed_distance_source"])
    assert attrs["stats"]["hed_distance"] == pytest.approx(stats["hed_distance"])
    assert stats["flags"] == fidelity_flags(stats) and attrs["stats"]["flags"] == stats["flags"]


def test_same_seed_same_bytes_other_seed_differs(world, baseline, tmp_path):
    _, store = baseline
    images, labels, _ = arrays(store)
    _, again = run_synth(world, tmp_path / "again")
    a_images, a_labels, _ = arrays(again)
    np.testing.assert_array_equal(images, a_images)
    np.testing.assert_array_equal(labels, a_labels)
    _, other = run_synth(world, tmp_path / "other", seed=4)
    o_images, _, _ = arrays(other)
    assert not np.array_equal(images, o_images)


def test_resume_after_crash_gives_identical_store(world, baseline, tmp_path, monkeypatch):
    _, store = baseline
    real = synth_mod.make_shard
    calls = {"n": 0}

    def crash_after_two(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args, **kw)

    monkeypatch.setattr(synth_mod, "make_shard", crash_after_two)
    with pytest.raises(RuntimeError, match="killed"):
        run_synth(world, tmp_path)
    work = partial_dir(tmp_path / "U1.zarr")
    assert sorted(p.name for p in work.glob("shard-*.npz")) == ["shard-00000.npz", "shard-00001.npz"]
    assert not (tmp_path / "U1.zarr").exists()
    monkeypatch.setattr(synth_mod, "make_shard", real)
    calls["n"] = 0
    code, resumed = run_synth(world, tmp_path)
    assert code == 0
    for a, b in zip(arrays(store)[:2], arrays(resumed)[:2]):
        np.testing.assert_array_equal(a, b)
    assert read_provenance(store).equals(read_provenance(resumed))


def test_sigterm_keeps_shards_and_exits_75(world, baseline, tmp_path, monkeypatch):
    _, store = baseline
    real_call = synth_mod.Generator.__call__
    calls = {"n": 0}

    def term_on_second_batch(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # during shard 1 (one batch per shard)
        return real_call(self, *args, **kw)

    monkeypatch.setattr(synth_mod.Generator, "__call__", term_on_second_batch)
    code, out = run_synth(world, tmp_path)
    assert code == EXIT_REQUEUE and not out.exists()
    # the shard being generated is finished and kept, then the job stops before shard 2
    assert sorted(p.name for p in partial_dir(out).glob("shard-*.npz")) == ["shard-00000.npz", "shard-00001.npz"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    monkeypatch.setattr(synth_mod.Generator, "__call__", real_call)
    assert run_synth(world, tmp_path)[0] == 0
    np.testing.assert_array_equal(arrays(store)[0], arrays(out)[0])


def test_changed_config_discards_partial_work(world, tmp_path, monkeypatch):
    real = synth_mod.make_shard
    monkeypatch.setattr(synth_mod, "make_shard", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x"))
                        if a[2].index == 1 else real(*a, **k))
    with pytest.raises(RuntimeError):
        run_synth(world, tmp_path, seed=9)
    monkeypatch.setattr(synth_mod, "make_shard", real)
    seen = []
    monkeypatch.setattr(synth_mod, "make_shard", lambda *a, **k: seen.append(a[2].index) or real(*a, **k))
    run_synth(world, tmp_path, seed=10)  # another seed: the shard made with seed 9 must not be reused
    assert seen == [0, 1, 2]


def test_style_draw_batch_shares_patches(world, tmp_path):
    _, store = run_synth(world, tmp_path, style_draw="batch", per_slide=4)
    prov = read_provenance(store)
    assert list(prov["style_y"][0]) == list(prov["style_y"][1]) and list(prov["style_x"][0]) == list(prov["style_x"][1])


def test_cli_end_to_end_and_bad_input(world, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"classes": CLASSES, "synthesis": {**SYN, "per_slide": 2}}))
    out = tmp_path / "s"
    argv = ["synthesize", "--config", str(cfg), "--model", str(world["model"]), "--style-store", str(world["style"]),
            "--labelled", *map(str, world["labelled"]), "--out", str(out / "U1.zarr"),
            "--montage", str(out / "U1.montage.png"), "--stats", str(out / "U1.stats.json"), "--device", "cpu"]
    assert main(argv) == 0
    assert arrays(out / "U1.zarr")[0].shape[0] == 2
    cfg.write_text(yaml.safe_dump({"classes": ["a", "b"], "synthesis": SYN}))
    assert main(argv) == 2
    assert "trained with classes" in capsys.readouterr().err


# the builders themselves
def test_make_store_is_readable(tmp_path):
    from sedm.tiling.table import fraction_columns

    s = SlideStore(make_store(tmp_path / "a.zarr", "a", tissue_tiles={(0, 0)}))
    t = s.tiles()
    assert len(t) == 4 and t["tissue_fraction"].max() == 1.0
    assert s.read_labels(0, 0, 2, 2).max() == 1
    assert s.read_tissue(70, 70, 1, 1)[0, 0] == 0
    np.testing.assert_allclose(t[fraction_columns(CLASSES)].sum(axis=1), 1.0)


def test_make_model_loads(tmp_path):
    from sedm.models.io import load_model

    m = load_model(make_model(tmp_path / "m"))
    assert m.config.classes == CLASSES and m.config.patch_size == PATCH


def test_stain_match_restains_the_set_toward_its_style_slide(world, baseline, tmp_path):
    code, store = run_synth(world, tmp_path, stain_match=1.0)
    assert code == 0
    images, labels, attrs = arrays(store)
    base_images, base_labels, base_attrs = arrays(baseline[1])
    assert (attrs["stain_match"], base_attrs["stain_match"]) == (1.0, 0.0)
    np.testing.assert_array_equal(labels, base_labels)  # same layouts, same noise: only colour differs
    matched = json.loads((tmp_path / "U1.stats.json").read_text())
    plain = json.loads((baseline[0] / "U1.stats.json").read_text())
    assert matched["hed_distance"] < 0.9 * plain["hed_distance"]  # an untrained model's tiles: clamped factors
