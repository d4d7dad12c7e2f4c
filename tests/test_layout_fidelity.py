"""Layout fidelity: synthetic tiles that follow their layouts with class-typical appearance score
high; flat colour fields (what a colour-only generator paints) score low."""

from __future__ import annotations

import numpy as np
import pytest

from sedm.errors import InputError
from sedm.evaluation.layout_fidelity import baseline_arm, synthetic_dice, with_texture_of

TEXTURE = {1: (200, 150, 215), 2: (230, 160, 190), 3: (215, 175, 160)}
"""Flat class colours of a colour-only generator: distinct hues, no texture."""


def _layout(rng, size=32):
    labels = np.ones((size, size), np.uint8)
    labels[:, size // 3:] = 2
    labels[size // 2:, 2 * size // 3:] = 3
    return np.rot90(labels, int(rng.integers(4))).copy()


def _textured(labels, rng):
    """Real-looking: each class has its own texture (dot density), colours alike."""
    img = np.full((*labels.shape, 3), 210, np.float64)
    density = {1: 0.5, 2: 0.05, 3: 0.25}
    for v, d in density.items():
        dots = (rng.random(labels.shape) < d) & (labels == v)
        img[dots] = (90, 40, 120)
    return img.astype(np.uint8)


def _texture_reader(images):
    """A segmenter that knows real tissue: class from local dot density (like a trained model)."""
    from scipy import ndimage

    dark = (images.mean(-1) < 150).astype(float)
    local = ndimage.uniform_filter(dark, size=(1, 7, 7))
    return np.where(local > 0.37, 1, np.where(local > 0.14, 3, 2)).astype(np.uint8)


def test_textured_synthetic_tiles_score_high_flat_colour_tiles_low():
    rng = np.random.default_rng(0)
    layouts = [_layout(rng) for _ in range(8)]
    textured = [(_textured(lab, rng), lab) for lab in layouts]
    flat = [(np.asarray([TEXTURE[v] for v in lab.ravel()], np.uint8).reshape(*lab.shape, 3), lab) for lab in layouts]
    good = synthetic_dice(_texture_reader, {"U1": textured}, n_classes=3)
    bad = synthetic_dice(_texture_reader, {"U1": flat}, n_classes=3)
    assert good["macro_dice"] > 0.7, good
    assert bad["macro_dice"] < 0.4, bad
    both = synthetic_dice(_texture_reader, {"A": textured, "B": flat}, n_classes=3, batch_size=3)
    assert both["per_slide"]["A"] == pytest.approx(good["macro_dice"])
    assert bad["macro_dice"] < both["macro_dice"] < good["macro_dice"]


def _colour_reader(images):
    """A segmenter that tells classes apart by regional colour (what one trained on few stains learns)."""
    from scipy import ndimage

    red = ndimage.uniform_filter(images[..., 0].astype(float), size=(1, 7, 7))
    return np.where(red > 200, 2, 1).astype(np.uint8)


def test_texture_entry_splits_a_decoders_colour_loss_from_its_texture_loss():
    rng = np.random.default_rng(1)
    layouts = [_layout(rng) for _ in range(8)]
    originals = np.stack([_textured(lab, rng) for lab in layouts])
    for images, lab in zip(originals, layouts):  # two classes by colour: class 2 redder
        images[lab == 2] = np.clip(images[lab == 2].astype(int) + (30, 0, 0), 0, 255)
    labels = [np.where(lab == 3, 1, lab).astype(np.uint8) for lab in layouts]
    # a decoder with the texture right and the regional colour shifted
    shifted = np.clip(originals.astype(int) + (-40, 10, 0), 0, 255).astype(np.uint8)
    restored = with_texture_of(originals, shifted)
    assert np.abs(restored.astype(int) - originals).max() <= 1
    # a decoder with the colour right and the texture blurred away
    from scipy.ndimage import uniform_filter
    blurred = uniform_filter(originals, size=(1, 5, 5, 1))
    assert np.abs(with_texture_of(originals, blurred).astype(int) - originals).mean() > 10

    def dice(reader, images):
        return synthetic_dice(reader, {"a": list(zip(images, labels))}, n_classes=2)["macro_dice"]

    assert dice(_colour_reader, shifted) < dice(_colour_reader, originals) - 0.3
    assert dice(_colour_reader, restored) == pytest.approx(dice(_colour_reader, originals), abs=0.01)
    texture = [(_textured(lab, rng), lab) for lab in layouts]
    t_orig = np.stack([t[0] for t in texture])
    t_blur = uniform_filter(t_orig, size=(1, 7, 7, 1))

    def tdice(images):
        return synthetic_dice(_texture_reader, {"a": list(zip(images, layouts))}, n_classes=3)["macro_dice"]

    assert tdice(with_texture_of(t_orig, t_blur)) < tdice(t_orig) - 0.2  # lost texture stays lost


def test_baseline_arm_is_a_real_data_arm():
    arms = {"real": {"synthetic": False}, "stedm": {"synthetic": True}, "aug": {"synthetic": False}}
    cfg = {"segmentation": {"arms": arms}, "evaluation": {"baseline": "real"}}
    assert baseline_arm(cfg) == "real"
    cfg["evaluation"]["baseline"] = "stedm"
    assert baseline_arm(cfg) == "real"
    with pytest.raises(InputError):
        baseline_arm({"segmentation": {"arms": {"s": {"synthetic": True}}}, "evaluation": {"baseline": "s"}})


def test_stain_robust_judge_is_a_stain_augmented_real_data_arm():
    from sedm.evaluation.layout_fidelity import stain_robust_arm

    arms = {"real": {"synthetic": False, "stain_aug": False}, "both": {"synthetic": True, "stain_aug": True},
            "aug": {"synthetic": False, "stain_aug": True}}
    assert stain_robust_arm({"segmentation": {"arms": arms}}) == "aug"
    del arms["aug"]
    assert stain_robust_arm({"segmentation": {"arms": arms}}) is None  # no such arm: no second judge


def _stain_matched_set(tmp_path, images, style_tint, strength=1.0):
    """A synthetic store drawn in the style of slide U (a store of ``style_tint``) with synthesis.stain_match
    ``strength``; every sample's one style patch is U's top-left corner."""
    import zarr

    from builders.synthesis import make_store, make_synthetic_set

    style = make_store(tmp_path / "U.zarr", "U", tint=style_tint, labelled=False)
    syn = make_synthetic_set(tmp_path / "syn.zarr", images, "U", provenance=[{} for _ in images])
    root = zarr.open_group(str(syn), mode="r+", zarr_format=3)
    root.attrs["sedm"] = {**root.attrs["sedm"], "stain_match": strength, "style_patch_size": 32}
    return syn, style


def test_restained_reference_takes_the_style_slides_stain_and_keeps_the_layout(tmp_path):
    from sedm.evaluation.layout_fidelity import restained_tiles
    from sedm.stain.statistics import od_moments_torch
    import torch

    rng = np.random.default_rng(0)
    tiles = [(_textured(lab, rng), lab) for lab in (_layout(rng) for _ in range(3))]
    syn, style = _stain_matched_set(tmp_path, np.stack([t for t, _ in tiles]), style_tint=(110, 60, 140))
    out, strength = restained_tiles(tiles, syn, {"U": style})
    assert strength == 1.0 and len(out) == len(tiles)

    def od(images):
        return od_moments_torch(torch.from_numpy(np.stack(images)).movedim(-1, 1).float() / 127.5 - 1)[:, :3]

    target = od([_read_corner(style)])[0]
    before, after = od([t for t, _ in tiles]), od([t for t, _ in out])
    assert torch.all((after - target).abs() < 0.25 * (before - target).abs()), (before, after, target)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(tiles, out))  # labels untouched
    # the structure stays: dots stay darker than the background around them
    assert all((o[..., 0][t.mean(-1) < 150].mean() < o[..., 0][t.mean(-1) >= 150].mean()) for (t, _), (o, _) in zip(tiles, out))

    unmatched, _ = _stain_matched_set(tmp_path / "off", np.stack([t for t, _ in tiles]), (110, 60, 140), strength=0.0)
    same, zero = restained_tiles(tiles, unmatched, {"U": style})
    assert zero == 0.0 and same is tiles


def _read_corner(style_store):
    from sedm.tiling.store import SlideStore

    return SlideStore(style_store).read_image(0, 0, 32, 32)


def _stain_bound_reader(images):
    """A segmenter that knows tissue in one stain only: class from the local mean grey level, with
    thresholds that fit the labelled stain's dot density (a darker stain reads as denser tissue)."""
    from scipy import ndimage

    local = ndimage.uniform_filter(images.mean(-1), size=(1, 7, 7))
    return np.where(local < 162, 1, np.where(local < 191, 3, 2)).astype(np.uint8)


def test_restained_reference_separates_the_judges_stain_gap_from_the_generators(tmp_path):
    """A judge that knows only the labelled stain reads real tissue in a darker stain badly: against the
    unrestained validation tiles every stain-matched set looks unfaithful, and the restained reference
    shows that drop on real tissue. A judge that reads any stain has no such drop, and against its
    restained reference real tissue in that stain has no gap while colour fields keep a large one."""
    from sedm.evaluation.layout_fidelity import restained_tiles

    rng = np.random.default_rng(1)
    layouts = [_layout(rng) for _ in range(8)]
    val = [(_textured(lab, rng), lab) for lab in layouts]
    syn, style = _stain_matched_set(tmp_path, np.stack([t for t, _ in val]), style_tint=(110, 60, 140))
    restained, _ = restained_tiles(val, syn, {"U": style})
    flat = [(np.asarray([TEXTURE[v] for v in lab.ravel()], np.uint8).reshape(*lab.shape, 3), lab) for lab in layouts]
    colour_fields, _ = restained_tiles(flat, syn, {"U": style})

    def dice(judge, pairs):
        return synthetic_dice(judge, {"U": pairs}, 3)["macro_dice"]

    assert dice(_stain_bound_reader, val) - dice(_stain_bound_reader, restained) > 0.3  # the stain gap
    reference = dice(_texture_reader, restained)
    assert reference == pytest.approx(dice(_texture_reader, val))  # no stain gap for this judge
    assert reference - dice(_texture_reader, colour_fields) > 0.3  # the generator's own gap survives
