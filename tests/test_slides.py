"""Slide reading: both backends give the same slide, reads honour the requested µm/px, bad files fail early."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile

from sedm.demo.tiff import write_pyramidal_tiff
from sedm.errors import InputError
from sedm.tiling.slides import MPP_RTOL, _rgb_on_white, open_slide, same_mpp, tiff_resolution_mpp

MPP = 0.5
# Backends decode the same JPEG tiles; openslide interpolates sub-pixel origins when downsamples are
# not integers. Allowed difference between backends (0-255 scale):
PARITY_MEAN, PARITY_P99 = 2.0, 10.0


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus noise: every offset error or blur shows up in the pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([150 + 70 * np.sin(xx / 97 + yy / 131), 120 + 80 * np.cos(yy / 73),
                    170 + 50 * np.sin((xx - yy) / 59)], axis=-1)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("slides") / "demo.tiff"
    assert write_pyramidal_tiff(path, _texture(2048, 2048), MPP) == 4  # 0.5, 1, 2, 4 µm/px
    return path


@pytest.fixture(scope="module")
def odd_slide_path(tmp_path_factory):
    """Odd sizes give non-integer level downsamples (2.001, ...), where openslide interpolates."""
    path = tmp_path_factory.mktemp("slides") / "odd.tiff"
    write_pyramidal_tiff(path, _texture(1999, 2001, seed=1), MPP)
    return path


WINDOWS = [  # (x, y, w, h, µm/px): level-aligned, between levels, finer than level 0, crossing the edge
    (100, 200, 256, 256, 0.5), (37, 91, 256, 128, 1.0), (300, 100, 256, 256, 2.0),
    (33, 17, 300, 200, 0.75), (11, 13, 256, 256, 1.3), (10, 10, 256, 256, 3.0),
    (401, 333, 128, 128, 0.3), (-50, 900, 256, 256, 1.0), (200, 200, 256, 256, 4.0),
]


@pytest.mark.parametrize("which", ["slide_path", "odd_slide_path"])
def test_backends_agree(which, request):
    path = request.getfixturevalue(which)
    with open_slide(path, "openslide") as a, open_slide(path, "tiffslide") as b:
        assert (a.backend, b.backend) == ("openslide", "tiffslide")
        assert a.mpp == pytest.approx(MPP) and b.mpp == pytest.approx(MPP)
        assert a.dimensions == b.dimensions
        assert a.level_dimensions == b.level_dimensions
        assert a.level_downsamples == pytest.approx(b.level_downsamples)
        for x, y, w, h, mpp in WINDOWS:
            ra, rb = a.read(x, y, w, h, mpp), b.read(x, y, w, h, mpp)
            assert ra.shape == rb.shape == (h, w, 3) and ra.dtype == rb.dtype == np.uint8
            diff = np.abs(ra.astype(np.int16) - rb)
            assert diff.mean() < PARITY_MEAN and np.percentile(diff, 99) < PARITY_P99, (x, y, w, h, mpp)


def test_auto_prefers_openslide(slide_path):
    with open_slide(slide_path) as s:
        assert s.backend == "openslide" and s.mpp_source == "openslide.mpp-x"


def test_level_choice(slide_path):
    with open_slide(slide_path, "tiffslide") as s:
        assert [s.level_mpp(k) for k in range(s.level_count)] == pytest.approx([0.5, 1.0, 2.0, 4.0])
        assert s.best_level(0.5) == 0
        assert s.best_level(2.0) == 2  # exact level
        assert s.best_level(1.995) == 2  # within 1 % counts as the level
        assert s.best_level(1.97) == 1  # coarser than 1 % below: read finer and shrink
        assert s.best_level(1.5) == 1  # between levels: the finer neighbour
        assert s.best_level(100.0) == 3  # coarser than the pyramid
        assert s.best_level(0.1) == 0  # finer than level 0


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_level_aligned_read_is_the_level(slide_path, backend):
    """The fast path returns level 0 at the right place: the written image matches best unshifted."""
    with open_slide(slide_path, backend) as s:
        got = s.read(100, 50, 64, 32, MPP).astype(np.int16)
    truth = _texture(2048, 2048)
    err = {(dy, dx): np.abs(got - truth[50 + dy:82 + dy, 100 + dx:164 + dx]).mean()
           for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert min(err, key=err.get) == (0, 0) and err[0, 0] < 8  # JPEG q90 with chroma subsampling on noise


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
@pytest.mark.parametrize("mpp,k", [(1.5, 3), (3.0, 6)])
def test_non_native_read_matches_resized_level0(slide_path, backend, mpp, k):
    """Reading at 1.5 µm/px (level 1, shrunk 1.5x) ~ the k x k block mean of the level-0 read."""
    x, y, w, h = 40, 60, 200, 150
    with open_slide(slide_path, backend) as s:
        got = s.read(x, y, w, h, mpp).astype(np.float64)
        ref = s.read(x * k, y * k, w * k, h * k, MPP).astype(np.float64)
    expected = ref.reshape(h, k, w, k, 3).mean(axis=(1, 3))
    diff = np.abs(got - expected)
    assert diff.mean() < 3 and np.percentile(diff, 99) < 12


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_outside_is_white(slide_path, backend):
    with open_slide(slide_path, backend) as s:
        win = s.read(-20, 2040, 64, 32, MPP)
        far = s.read(5000, 5000, 16, 16, 1.0)
    assert (win[:, :20] == 255).all() and (win[8:, :] == 255).all()  # left of x=0, below y=2048
    assert (win[:8, 20:] != 255).any(axis=-1).mean() > 0.9
    assert (far == 255).all()


def test_thumbnail_is_the_whole_slide(slide_path):
    with open_slide(slide_path, "tiffslide") as s:
        thumb = s.thumbnail(8.0, max_pixels=5000)  # forces many bands
        assert thumb.shape == (128, 128, 3)
        assert np.array_equal(thumb, s.read(0, 0, 128, 128, 8.0))
        assert s.thumbnail(3.0).shape == (341, 341, 3) == s.dimensions_at(3.0)[::-1] + (3,)


def test_rgba_composited_on_white():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [100, 0, 200, 128]]], dtype=np.uint8)
    out = _rgb_on_white(rgba)
    assert out.tolist() == [[[10, 20, 30], [255, 255, 255], [177, 127, 227]]]


# -- µm/px ----------------------------------------------------------------------------------------
def _flat_tiff(path, **resolution) -> None:
    tifffile.imwrite(path, _texture(256, 256), tile=(128, 128), photometric="rgb", compression="jpeg", **resolution)


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_mpp_from_inch_resolution_tags(tmp_path, backend):
    path = tmp_path / "inch.tiff"
    _flat_tiff(path, resolution=(25400 / 0.25, 25400 / 0.25), resolutionunit="INCH")  # 0.25 µm/px
    assert tiff_resolution_mpp(path) == pytest.approx(0.25)
    with open_slide(path, backend) as s:
        assert s.mpp == pytest.approx(0.25)


def test_resolution_tags_units(tmp_path):
    _flat_tiff(tmp_path / "cm.tiff", resolution=(1e4 / 0.8, 1e4 / 0.8), resolutionunit="CENTIMETER")
    _flat_tiff(tmp_path / "none.tiff")
    assert tiff_resolution_mpp(tmp_path / "cm.tiff") == pytest.approx(0.8)
    assert tiff_resolution_mpp(tmp_path / "none.tiff") is None


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
def test_missing_mpp_needs_override(tmp_path, backend):
    path = tmp_path / "none.tiff"
    _flat_tiff(path)
    with pytest.raises(InputError) as e:
        open_slide(path, backend)
    assert e.value.field == "mpp" and "none.tiff" in str(e.value) and "slides.mpp_override" in e.value.fix
    with open_slide(path, backend, mpp_override=0.3) as s:
        assert s.mpp == 0.3 and s.mpp_source == "override"


def test_file_mpp_beats_override(slide_path, caplog):
    with caplog.at_level(logging.WARNING, logger="sedm.tiling.slides"), open_slide(slide_path, mpp_override=0.25) as s:
        assert s.mpp == pytest.approx(MPP)
    assert "mpp_override" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sedm.tiling.slides"), open_slide(slide_path, mpp_override=0.501):
        pass
    assert caplog.text == ""  # within 1 %: no warning


def test_print_resolution_is_not_an_mpp(tmp_path):
    path = tmp_path / "dpi72.tiff"
    _flat_tiff(path, resolution=(72, 72), resolutionunit="INCH")  # 352.8 µm/px: an image-editor default
    with pytest.raises(InputError, match="no µm/px"):
        open_slide(path)
    with open_slide(path, mpp_override=0.5) as s:
        assert s.mpp == 0.5


# -- bad files ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
def test_bad_files_raise_input_error(tmp_path, slide_path, backend):
    text = tmp_path / "notes.tiff"
    text.write_text("not a slide\n")
    truncated = tmp_path / "half.tiff"
    data = slide_path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for path, message in [(tmp_path / "missing.tiff", "not found"), (text, "not a slide"),
                          (truncated, "truncated")]:
        with pytest.raises(InputError, match=message) as e:
            open_slide(path, backend)
        assert str(path) in str(e.value)


def test_truncated_ifd_chain(tmp_path, slide_path):
    with tifffile.TiffFile(slide_path) as tif:  # cut just inside the second level's directory
        cut = tif.pages[1].offset + 20
    path = tmp_path / "cut.tiff"
    path.write_bytes(slide_path.read_bytes()[:cut])
    with pytest.raises(InputError, match="cut.tiff"):
        open_slide(path)


def test_unknown_backend(slide_path):
    with pytest.raises(InputError) as e:
        open_slide(slide_path, "bioformats")
    assert e.value.field == "slides.backend"


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_corrupt_tile_raises_input_error_on_read(tmp_path, slide_path, backend):
    with tifffile.TiffFile(slide_path) as tif:  # tile 9 of level 0 = tile row 1, column 1 (8 per row)
        offset, count = tif.pages[0].dataoffsets[9], tif.pages[0].databytecounts[9]
    data = bytearray(slide_path.read_bytes())
    data[offset:offset + count] = bytes(count)
    path = tmp_path / "zeroed.tiff"
    path.write_bytes(bytes(data))
    with open_slide(path, backend) as s:
        assert s.read(0, 0, 64, 64, MPP).shape == (64, 64, 3)  # intact tiles still read
        with pytest.raises(InputError, match="zeroed.tiff.*cannot read level 0"):
            s.read(300, 300, 64, 64, MPP)


def test_same_mpp_is_one_symmetric_tolerance():
    assert same_mpp(0.5, 0.5) and same_mpp(0.5, 0.5 * (1 + MPP_RTOL / 2)) and same_mpp(0.5 * (1 + MPP_RTOL / 2), 0.5)
    assert not same_mpp(0.5, 0.5 * (1 + 2 * MPP_RTOL)) and not same_mpp(0.5 * (1 + 2 * MPP_RTOL), 0.5)
    assert not same_mpp(0.5, 1.0)
