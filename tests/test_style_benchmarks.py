"""The pieces of benchmarks/style_scaling.py and benchmarks/stylize_strength.py that decide what they
measure: the model sizes and snapshots of the scaling run, and the inputs of the strength sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders.benchmarks import load_benchmark
from builders.diffusion import CLASSES, diffusion_section, make_stores
from PIL import Image
from safetensors.torch import load_file

from sedm.config import validate_config, validate_section
from sedm.models.presets import PRESETS, model_config


@pytest.fixture(scope="module")
def scaling():
    return load_benchmark("style_scaling")


def test_widened_scales_the_preset_and_keeps_every_snapshot(scaling):
    base = validate_section("diffusion", {"preset": "tiny", "lr_schedule": "cosine"})
    section = scaling.widened(base, 2, [150, 300, 600])
    tiny = PRESETS["tiny"]
    assert section["block_out_channels"] == [2 * c for c in tiny["block_out_channels"]]
    assert section["style_encoder_channels"] == [2 * c for c in tiny["style_encoder_channels"]]
    assert section["style_dim"] == 2 * tiny["style_dim"]
    # one trajectory: no cosine decay tied to the longest run; a checkpoint at every snapshot, none rotated away
    assert section["lr_schedule"] == "constant" and section["max_steps"] == 600
    assert section["checkpoint_every"] == 150 and section["keep_checkpoints"] >= 600 // 150
    assert base["lr_schedule"] == "cosine"  # the run's own section is left as it was
    cfg = model_config(section, CLASSES)
    assert list(cfg.block_out_channels) == [64, 128, 128] and cfg.patch_size == tiny["patch_size"]


@pytest.mark.slow
def test_snapshot_holds_the_checkpoints_ema_weights(scaling, tmp_path):
    from sedm.diffusion.train import train
    from sedm.runtime.checkpoints import list_checkpoints

    stores = make_stores(tmp_path, n=1, size=128)
    cfg = validate_config({"classes": CLASSES, "seed": 0, "diffusion": diffusion_section(
        max_steps=4, checkpoint_every=2, keep_checkpoints=3)})
    assert train(cfg, stores, out=tmp_path / "model", run_dir=tmp_path / "run") == 0
    state = torch.load(dict(list_checkpoints(tmp_path / "run"))[2], map_location="cpu", weights_only=True)
    out = scaling.snapshot(cfg, tmp_path / "run", 2, 1.0, tmp_path / "step-2")
    weights = load_file(str(out / "model.safetensors"))
    assert weights.keys() == state["ema"].keys()
    assert all(torch.equal(weights[k], state["ema"][k]) for k in weights)
    assert not all(torch.equal(weights[k], state["model"][k]) for k in weights)  # EMA, not the raw weights


def test_strength_sweep_inputs_are_the_tiles_with_most_annotated_tissue(tmp_path):
    from builders.synthesis import make_store

    from sedm.tiling.store import SlideStore

    bench = load_benchmark("stylize_strength")
    # tissue in the two left tiles (classes 1 and 2); top-right is annotated glass, bottom-right tissue-free
    path = make_store(tmp_path / "T1.zarr", "T1", size=128, tissue_tiles={(0, 0), (1, 0)})
    bench.write_inputs([path], per_slide=2, size=32, folder=tmp_path / "sweep")
    store = SlideStore(path)
    tiles = store.tiles().set_index(["row", "col"])
    off = (store.tile_size - 32) // 2
    for i, (row, col) in enumerate([(0, 0), (1, 0)]):
        y, x = int(tiles.loc[(row, col), "y"]) + off, int(tiles.loc[(row, col), "x"]) + off
        image = np.asarray(Image.open(tmp_path / "sweep" / "in" / f"T1-{i}.png"))
        mask = np.asarray(Image.open(tmp_path / "sweep" / "masks" / f"T1-{i}.png"))
        assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
        np.testing.assert_array_equal(image, store.read_image(y, x, 32, 32))
        np.testing.assert_array_equal(mask, store.read_labels(y, x, 32, 32))
        assert mask.min() >= 1  # annotated: the mask is a layout, not "unannotated"
    assert sorted(p.name for p in (tmp_path / "sweep" / "in").iterdir()) == ["T1-0.png", "T1-1.png"]
