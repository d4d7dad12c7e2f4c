"""sedm stylize: zero-shot restyling of image tiles, with or without a label mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sedm.cli import main
from sedm.demo.tiff import write_pyramidal_tiff
from sedm.synthesis.stylize import output_flags
from builders.synthesis import CLASSES, PATCH, make_model, make_store


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("m") / "model")


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    sizes = {"a": (40, 50), "b": (32, 32)}  # (h, w); 40x50 is no multiple of the UNet's size multiple
    masks = tmp_path / "masks"
    masks.mkdir()
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"{name}.png")
        mask = np.zeros((h, w), np.uint8)
        mask[: h // 2] = 1
        mask[h // 2:, : w // 2] = 2
        Image.fromarray(mask, mode="L").save(masks / f"{name}.png")
    return d, masks, sizes


def stylize(model, out, *extra):
    return main(["stylize", "--model", str(model), "--out", str(out), "--steps", "2", "--device", "cpu", *extra])


@pytest.mark.parametrize("with_mask", [False, True])
def test_outputs_have_input_size(model, inputs, tmp_path, with_mask):
    d, masks, sizes = inputs
    style = make_store(tmp_path / "S.zarr", "S", labelled=False, tissue_tiles={(1, 1)}, tint=(90, 60, 160))
    out = tmp_path / "out"
    extra = ["--mask", str(masks)] if with_mask else []
    assert stylize(model, out, "--style-slide", str(style), "--input", str(d), *extra) == 0
    for name, (h, w) in sizes.items():
        with Image.open(out / f"{name}.png") as im:
            assert (im.height, im.width) == (h, w) and im.mode == "RGB"
    meta = json.loads((out / "stylize.json").read_text())
    assert meta["style_source"] == "S" and len(meta["images"]) == 2
    # each output's flags follow from its measures; the file lists them all with the image's name
    assert meta["flags"] == [f"{Path(r['input']).name}: {f}" for r in meta["images"] for f in r["flags"]]
    for rec in meta["images"]:
        assert rec["flags"] == output_flags(rec)
        assert (rec["mask"] is not None) == with_mask
        for slide, y, x in rec["style"]:  # only the bottom-right tile (64..128) is tissue
            assert slide == "S" and 64 <= y <= 128 - PATCH and 64 <= x <= 128 - PATCH


def test_seeded_and_style_images_folder(model, inputs, tmp_path):
    d, _, _ = inputs
    styles = tmp_path / "styles"
    styles.mkdir()
    for i in range(3):
        Image.fromarray(np.full((48, 48, 3), 60 * i + 40, np.uint8)).save(styles / f"s{i}.png")
    runs = []
    for name, seed in (("r1", "1"), ("r2", "1"), ("r3", "2")):
        assert stylize(model, tmp_path / name, "--style-images", str(styles), "--input", str(d / "a.png"),
                       "--seed", seed, "--strength", "0.5") == 0
        runs.append(np.asarray(Image.open(tmp_path / name / "a.png")))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    meta = json.loads((tmp_path / "r1" / "stylize.json").read_text())
    assert {f for f, _, _ in meta["images"][0]["style"]} <= {"s0.png", "s1.png", "s2.png"}


def test_style_from_raw_slide_reads_tissue_only(model, inputs, tmp_path):
    d, _, _ = inputs
    rgb = np.full((512, 512, 3), 245, np.uint8)
    rgb[:, :256] = (170, 90, 160)  # tissue on the left half only
    slide = tmp_path / "raw.tiff"
    write_pyramidal_tiff(slide, rgb, 1.0, tile=128)
    out = tmp_path / "out"
    assert stylize(model, out, "--style-slide", str(slide), "--input", str(d / "b.png")) == 0
    meta = json.loads((out / "stylize.json").read_text())
    for _, y, x in meta["images"][0]["style"]:
        assert x + PATCH <= 256


def test_bad_masks_are_input_errors(model, inputs, tmp_path, capsys):
    d, masks, _ = inputs
    style = make_store(tmp_path / "S.zarr", "S", labelled=False)
    bad = tmp_path / "bad.png"
    Image.fromarray(np.full((32, 32), len(CLASSES) + 1, np.uint8), mode="L").save(bad)
    args = ["--style-slide", str(style), "--input", str(d / "b.png")]
    assert stylize(model, tmp_path / "o", *args, "--mask", str(bad)) == 2
    assert "label value" in capsys.readouterr().err
    assert stylize(model, tmp_path / "o", *args, "--mask", str(masks / "a.png")) == 2  # 40x50 mask, 32x32 image
    assert "size" in capsys.readouterr().err
    empty = make_store(tmp_path / "E.zarr", "E", labelled=False, tissue_tiles=set())
    assert stylize(model, tmp_path / "o", "--style-slide", str(empty), "--input", str(d / "b.png")) == 2
    assert "tissue" in capsys.readouterr().err


def test_inputs_at_another_resolution_are_resampled_and_back(model, tmp_path, capsys):
    """--mpp 0.5 with a 1 µm/px model: a 64 px input is generated at 32 px and returned at 64 px; the
    style images are resampled by the same factor (a 48 px style image gives 24 px, too small)."""
    rng = np.random.default_rng(1)
    (tmp_path / "in").mkdir()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.png")
    styles = tmp_path / "styles"
    styles.mkdir()
    Image.fromarray(np.full((96, 96, 3), 150, np.uint8)).save(styles / "s.png")
    out = tmp_path / "out"
    assert stylize(model, out, "--style-images", str(styles), "--input", str(tmp_path / "in"), "--mpp", "0.5") == 0
    with Image.open(out / "a.png") as im:
        assert (im.height, im.width) == (64, 64)
    meta = json.loads((out / "stylize.json").read_text())
    assert meta["input_mpp"] == 0.5 and meta["images"][0]["layout"] in ("tissue", "unannotated")
    Image.fromarray(np.full((48, 48, 3), 150, np.uint8)).save(styles / "s.png")
    assert stylize(model, tmp_path / "o2", "--style-images", str(styles), "--input", str(tmp_path / "in"),
                   "--mpp", "0.5") == 2
    assert "smaller than" in capsys.readouterr().err


def test_unreadable_style_image_is_an_input_error(model, tmp_path, capsys):
    styles = tmp_path / "styles"
    styles.mkdir()
    (styles / "notes.png").write_text("not an image")
    (tmp_path / "a.png").write_bytes(b"")
    Image.fromarray(np.full((32, 32, 3), 150, np.uint8)).save(tmp_path / "a.png")
    assert stylize(model, tmp_path / "o", "--style-images", str(styles), "--input", str(tmp_path / "a.png")) == 2
    err = capsys.readouterr().err
    assert "notes.png" in err and "not a readable image" in err


def test_stain_match_moves_colour_toward_the_style_and_is_range_checked(model, inputs, tmp_path, capsys):
    d, _, _ = inputs
    style = make_store(tmp_path / "S.zarr", "S", labelled=False, tissue_tiles={(1, 1)}, tint=(90, 60, 160))
    args = ["--style-slide", str(style), "--input", str(d / "b.png"), "--seed", "1"]
    assert stylize(model, tmp_path / "plain", *args) == 0
    assert stylize(model, tmp_path / "matched", *args, "--stain-match", "1") == 0
    plain, matched = (json.loads((tmp_path / n / "stylize.json").read_text()) for n in ("plain", "matched"))
    assert matched["stain_match"] == 1.0 and plain["stain_match"] == 0.0
    assert matched["images"][0]["colour_transfer"] > plain["images"][0]["colour_transfer"]
    assert stylize(model, tmp_path / "o", *args, "--stain-match", "1.5") == 2
    assert "--stain-match" in capsys.readouterr().err
