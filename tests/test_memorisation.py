"""Memorisation check (``sedm near-copies``): restained, flipped copies of labelled tissue must be
flagged, independently drawn tissue must not, and the feature must not see a stain change."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

from builders.synthesis import make_synthetic_set
from builders.toy_stores import make_toy_store
from sedm.cli import main
from sedm.synthesis.layouts import Augmentation, augmented_window
from sedm.synthesis.memorisation import correlation, near_copies
from sedm.tiling.store import SlideStore

CLASSES = ["tumour", "stroma"]
SIZE, TILE = 256, 64  # toy slides of 256 px at 1 µm/px; synthetic tiles of 64 px
MIX = np.array([[0.55, 0.35, 0.10], [0.25, 1.30, 0.20], [0.10, 0.45, 0.85]])
"""Another stain: optical density mixed across the channels and rescaled."""


def restain(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same tissue in another stain (Beer-Lambert: OD mixed by :data:`MIX`), with fresh sensor noise."""
    od = -np.log((images.astype(np.float64) + 1.0) / 256.0)
    rgb = 256.0 * np.exp(-(od @ MIX)) - 1.0 + rng.normal(0, 3, images.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    return np.rot90(image[:, ::-1] if k & 4 else image, k & 3).copy()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("memo")
    return [make_toy_store(root / f"L{i}.zarr", slide_id=f"L{i}", size=SIZE, classes=CLASSES, style=i, seed=10 + i)
            for i in (1, 2)]


def windows(store_path, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``n`` tissue windows of ``TILE`` px at random (not grid-aligned) positions, left of the glass band."""
    store = SlideStore(store_path)
    pos = [(int(rng.integers(0, SIZE - TILE)), int(rng.integers(0, SIZE * 7 // 8 - TILE))) for _ in range(n)]
    return np.stack([store.read_image(y, x, TILE, TILE) for y, x in pos]), pos


def test_restained_flipped_copies_are_flagged(labelled, tmp_path):
    rng = np.random.default_rng(0)
    originals, sources = [], []
    for path in labelled:
        images, pos = windows(path, 4, rng)
        originals.append(images)
        sources += [(SlideStore(path).slide_id, y, x) for y, x in pos]
    originals = np.concatenate(originals)
    copies = np.stack([dihedral(im, k) for k, im in enumerate(restain(originals, rng))])
    assert np.abs(copies.astype(float).mean((0, 1, 2)) - originals.astype(float).mean((0, 1, 2))).max() > 20
    result = near_copies(make_synthetic_set(tmp_path / "U.zarr", copies), labelled, seed=0)

    nc = result["near_copies"]
    assert nc["count"] == len(copies) and nc["share"] == 1.0 and nc["indices"] == list(range(len(copies)))
    # each copy found where it was cut from, to the pixel
    for match, (slide, y, x) in zip(nc["matches"], sources):
        assert match["slide_id"] == slide and abs(match["y"] - y) <= 1 and abs(match["x"] - x) <= 1, (match, y, x)
    assert result["synthetic"]["median"] < 0.1 < result["real_to_real"]["p5"]
    assert result["threshold"]["distance"] <= 0.15 and result["n_checked"] == result["n_tiles"] == len(copies)


def warped_sources(labelled, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """``n`` labelled windows under synthesis-style augmentations (rotation by any angle, scale,
    shear, shift, then quarter turns and flips) and their provenance rows."""
    images, rows = [], []
    for i in range(n):
        path = labelled[i % len(labelled)]
        store = SlideStore(path)
        y, x = int(rng.integers(16, SIZE - TILE - 16)), int(rng.integers(16, SIZE * 7 // 8 - TILE - 16))
        aug = Augmentation(True, float(rng.uniform(0.85, 1.15)), float(rng.uniform(20, 160)),
                           float(rng.uniform(-8, 8)), 3.0, -2.0, i % 4, bool(i % 2), bool(i % 3 == 0))
        images.append(augmented_window(store, y, x, TILE, aug)[1])
        rows.append({"layout_slide": store.slide_id, "layout_y": y, "layout_x": x,
                     **{f"aug_{k}": v for k, v in asdict(aug).items()}})
    return np.stack(images), rows


def test_warped_copies_of_the_layout_source_are_flagged(labelled, tmp_path):
    """A model that draws its layout's training tissue, warped as the layout was: no flip or quarter
    turn of a stored window matches it, its own source (from the provenance) does."""
    rng = np.random.default_rng(4)
    images, rows = warped_sources(labelled, 6, rng)
    result = near_copies(make_synthetic_set(tmp_path / "U.zarr", restain(images, rng), provenance=rows),
                         labelled, seed=0)
    assert result["near_copies"]["count"] == 6
    assert all(m["source_distance"] < 0.1 for m in result["near_copies"]["matches"])
    assert result["synthetic"]["median"] > result["threshold"]["distance"]  # the search alone misses them
    assert result["source"]["n"] == 6 and len(result["source_distances"]) == 6


def test_independent_tissue_is_not_flagged(labelled, tmp_path):
    rng = np.random.default_rng(1)
    other = make_toy_store(tmp_path / "X.zarr", slide_id="X", size=SIZE, classes=CLASSES, style=2, seed=99)
    images, _ = windows(other, 8, rng)
    _, rows = warped_sources(labelled, 8, rng)  # layouts from the labelled slides, new tissue drawn
    result = near_copies(make_synthetic_set(tmp_path / "U.zarr", images, provenance=rows), labelled, seed=0)
    assert result["near_copies"]["count"] == 0 and result["near_copies"]["share"] == 0.0
    assert result["source"]["min"] > 2 * result["threshold"]["distance"]
    syn, real = result["synthetic"], result["real_to_real"]
    # new tissue is as far from the labelled slides as they are from each other
    assert syn["min"] > 2 * result["threshold"]["distance"]
    assert abs(syn["median"] - real["median"]) < 0.25, (syn, real)
    assert real["n"] > 16 and set(result["reference"]["slides"]) == {"L1", "L2"}


def test_feature_ignores_a_stain_change_but_not_structure(labelled):
    rng = np.random.default_rng(2)
    images, _ = windows(labelled[0], 4, rng)
    others, _ = windows(labelled[1], 4, rng)
    for image, restained, other in zip(images, restain(images, rng), others):
        assert correlation(image, restained) > 0.95
        assert correlation(image, other) < 0.5
        assert correlation(image, dihedral(image, 5)) < 0.5  # structure, so orientation counts


def test_cli_writes_json_and_caps_tiles(labelled, tmp_path):
    rng = np.random.default_rng(3)
    images, _ = windows(labelled[0], 6, rng)
    synthetic = make_synthetic_set(tmp_path / "U.zarr", restain(images, rng))
    config = tmp_path / "config.yaml"
    config.write_text("seed: 4\nclasses: [tumour, stroma, necrosis]\n")
    out = tmp_path / "U.memorisation.json"
    args = ["near-copies", "--config", str(config), "--synthetic", str(synthetic), "--labelled",
            *map(str, labelled), "--out", str(out), "--max-tiles", "4"]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["n_tiles"] == 6 and result["n_checked"] == 4 and len(result["tiles"]) == 4
    assert result["near_copies"]["count"] == 4 and set(result["near_copies"]["indices"]) == set(result["tiles"])
    assert "optical-density" in result["feature_space"] and result["seed"] == 4
    assert main(args) == 0 and json.loads(out.read_text()) == result  # seeded: the same again
    assert not list(tmp_path.glob(".*tmp-*"))


def test_bad_input_is_an_input_error(labelled, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("seed: 0\nclasses: [tumour, stroma, necrosis]\n")
    rc = main(["near-copies", "--config", str(config), "--synthetic", str(tmp_path / "missing.zarr"),
               "--labelled", str(labelled[0]), "--out", str(tmp_path / "o.json")])
    assert rc == 2 and "not a Zarr store" in capsys.readouterr().err
    other_mpp = make_synthetic_set(tmp_path / "U.zarr", np.zeros((2, TILE, TILE, 3), np.uint8), mpp=0.5)
    rc = main(["near-copies", "--config", str(config), "--synthetic", str(other_mpp),
               "--labelled", str(labelled[0]), "--out", str(tmp_path / "o.json")])
    assert rc == 2 and "µm/px" in capsys.readouterr().err and not (tmp_path / "o.json").exists()


def test_module_does_not_import_torch():
    code = "import sys, sedm.synthesis.memorisation; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
