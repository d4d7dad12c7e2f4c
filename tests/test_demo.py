"""The synthetic demo cohort: determinism, file formats, annotations vs layout, styles, morphology."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage import color, measure

from sedm.tiling.annotations import load_geojson, rasterize
from sedm.cli import main
from sedm.config import load_config, load_samples
from sedm.demo import cohort
from sedm.demo.layout import DEMO_CLASSES, GLASS, make_layout
from sedm.demo.styles import patient_style
from sedm.errors import InputError
from sedm.seeds import rng_for

SIZE = 768
MPP = 0.5
SEED = 7
CLASSES = list(DEMO_CLASSES)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A small cohort written by the CLI: 1 labelled, 1 unlabelled, 2 test patients (T02 with 2 slides)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    rc = main(["demo-cohort", "--out", str(out), "--size", str(SIZE), "--seed", str(SEED), "--patients-labelled", "1",
               "--patients-unlabelled", "1", "--patients-test", "2"])
    assert rc == 0
    return out


def _level0(path: Path) -> np.ndarray:
    return tifffile.imread(path, key=0)


def test_cohort_files_and_sheet(demo_dir: Path) -> None:
    sheet = load_samples(demo_dir / "samples.tsv")
    assert sheet.index.tolist() == ["L01", "U01", "T01", "T02a", "T02b"]
    assert sheet.loc["T02a", "patient_id"] == sheet.loc["T02b", "patient_id"] == "T02"
    assert sheet.loc["U01", "annotation_path"] == ""
    for sid, row in sheet.iterrows():
        assert row["slide_path"] == f"{demo_dir}/slides/{sid}.tiff" and Path(row["slide_path"]).is_file()
        assert (demo_dir / "annotations" / f"{sid}.geojson").is_file()  # unlabelled slides too (hidden truth)


def test_render_is_deterministic_and_seeded() -> None:
    slide = cohort.DemoSlide("T01", "T01", "test")
    a = cohort.render_demo_slide(slide, seed=SEED, size=SIZE, mpp=MPP)
    b = cohort.render_demo_slide(slide, seed=SEED, size=SIZE, mpp=MPP)
    c = cohort.render_demo_slide(slide, seed=SEED + 1, size=SIZE, mpp=MPP)
    assert a.rgb.shape == (SIZE, SIZE, 3) and a.rgb.dtype == np.uint8
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.layout.labels, b.layout.labels)
    assert not np.array_equal(a.rgb, c.rgb)


def test_single_slide_job_reproduces_cohort_slide(demo_dir: Path) -> None:
    """The workflow's per-slide call writes the same pixels and annotations as whole-cohort mode."""
    tiff, geojson = demo_dir / "slides" / "T02b.tiff", demo_dir / "annotations" / "T02b.geojson"
    before, before_json = _level0(tiff), geojson.read_text()
    tiff.unlink()
    geojson.unlink()
    rc = main(["demo-cohort", "--samples", str(demo_dir / "samples.tsv"), "--slide", "T02b", "--out", str(demo_dir),
               "--size", str(SIZE), "--seed", str(SEED)])
    assert rc == 0
    assert np.array_equal(_level0(tiff), before)
    assert geojson.read_text() == before_json


def test_tiff_pyramid_and_mpp_in_both_readers(demo_dir: Path) -> None:
    import openslide
    import tiffslide

    path = str(demo_dir / "slides" / "L01.tiff")
    with openslide.OpenSlide(path) as osl:
        assert osl.level_count >= 3
        assert osl.level_dimensions[0] == (SIZE, SIZE)
        assert float(osl.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MPP)
        assert float(osl.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(MPP)
        via_openslide = np.asarray(osl.read_region((0, 0), 0, (SIZE, SIZE)))[..., :3]
    with tiffslide.TiffSlide(path) as tsl:
        assert tsl.level_count >= 3
        assert float(tsl.properties[tiffslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MPP)
        assert tsl.level_downsamples[2] == pytest.approx(4.0)
        via_tiffslide = np.asarray(tsl.read_region((0, 0), 0, (SIZE, SIZE)))[..., :3]
    assert np.array_equal(via_openslide, via_tiffslide)
    # what was stored is the rendering, up to JPEG loss
    rendered = cohort.render_demo_slide(cohort.DemoSlide("L01", "L01", "labelled"), seed=SEED, size=SIZE, mpp=MPP)
    assert np.abs(via_tiffslide.astype(int) - rendered.rgb).mean() < 6


def test_geojson_is_qupath_feature_collection(demo_dir: Path) -> None:
    seen = set()
    for path in sorted((demo_dir / "annotations").glob("*.geojson")):
        data = json.loads(path.read_text())
        assert data["type"] == "FeatureCollection" and data["features"]
        for feature in data["features"]:
            assert feature["type"] == "Feature"
            assert feature["geometry"]["type"] in {"Polygon", "MultiPolygon"}
            props = feature["properties"]
            assert props["objectType"] == "annotation"
            assert props["classification"]["name"] in CLASSES
            assert len(props["classification"]["color"]) == 3
            seen.add(props["classification"]["name"])
            xy = np.concatenate([np.asarray(ring) for ring in feature["geometry"]["coordinates"]])
            assert xy.min() >= 0 and xy.max() <= SIZE  # level-0 pixels
        assert load_geojson(path, CLASSES)  # the project's own QuPath reader accepts it
    assert seen == set(CLASSES)


@pytest.mark.parametrize("slide_id, role", [("L01", "labelled"), ("T02a", "test")])
def test_geojson_rasterised_matches_layout(demo_dir: Path, slide_id: str, role: str) -> None:
    rendered = cohort.render_demo_slide(cohort.DemoSlide(slide_id, slide_id[:3], role), seed=SEED, size=SIZE, mpp=MPP)
    labels = rendered.layout.labels  # values 1..3 follow DEMO_CLASSES == config order
    annotations = load_geojson(demo_dir / "annotations" / f"{slide_id}.geojson", CLASSES)
    raster = rasterize(annotations, CLASSES, (SIZE, SIZE), scale=1.0)
    annotated = raster > 0
    tissue = labels != GLASS
    assert (raster[annotated] == labels[annotated]).mean() >= 0.9
    assert (annotated & tissue).sum() >= 0.9 * tissue.sum()
    assert (annotated & ~tissue).sum() <= 0.05 * tissue.sum()


def test_layout_has_balanced_blob_classes_and_glass() -> None:
    for i in range(4):
        layout = make_layout(rng_for(SEED, "layout", f"S{i}"), 1024, MPP)
        counts = np.bincount(layout.labels.ravel(), minlength=4)
        tissue = counts[1:].sum()
        assert 0.3 < tissue / layout.labels.size < 0.7
        assert np.all(counts[1:] / tissue > 0.2), counts  # reasonably balanced classes
        border = np.concatenate([layout.labels[0], layout.labels[-1], layout.labels[:, 0], layout.labels[:, -1]])
        assert np.all(border == GLASS)  # tissue blobs lie inside the slide
        _, n_holes = ndimage.label(ndimage.binary_fill_holes(layout.labels > 0) & (layout.labels == 0))
        assert n_holes >= 1


def test_style_per_patient() -> None:
    a1 = patient_style(SEED, "T05", "test")
    assert patient_style(SEED, "T05", "test") == a1  # deterministic
    styles = [patient_style(SEED, f"T{i:02d}", "test") for i in range(1, 6)]
    assert len({s.h_vector for s in styles}) == 5 and len({s.background for s in styles}) == 5
    assert patient_style(SEED + 1, "T05", "test") != a1
    # all slides of a patient share it
    sa = cohort.render_demo_slide(cohort.DemoSlide("T05a", "T05", "test"), seed=SEED, size=512, mpp=MPP)
    sb = cohort.render_demo_slide(cohort.DemoSlide("T05b", "T05", "test"), seed=SEED, size=512, mpp=MPP)
    assert sa.style == sb.style == a1
    assert not np.array_equal(sa.layout.labels, sb.layout.labels)


def _glass_colour(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    far = ndimage.binary_erosion(labels == GLASS, iterations=8)
    return rgb[far].mean(axis=0)


def test_patient_style_is_visible_in_pixels(demo_dir: Path) -> None:
    """Same patient: same glass colour; the glass colour is what the style says it is (the glass's
    transmitted light through the scanner's saturation and tone curve)."""
    from sedm.demo.render import scanner

    colours = {}
    for sid, pid in [("T02a", "T02"), ("T02b", "T02"), ("T01", "T01")]:
        r = cohort.render_demo_slide(cohort.DemoSlide(sid, pid, "test"), seed=SEED, size=SIZE, mpp=MPP)
        colours[sid] = _glass_colour(r.rgb, r.layout.labels)
        expected = scanner(np.asarray(r.style.background, np.float32)[None], r.style)[0]
        assert colours[sid] == pytest.approx(expected, abs=1.0)
    assert np.abs(colours["T02a"] - colours["T02b"]).max() < 0.5


def test_labelled_styles_vary_moderately_and_unlabelled_and_test_widely() -> None:
    def spread(role: str) -> np.ndarray:
        styles = [patient_style(SEED, f"P{i:03d}", role) for i in range(60)]
        return np.array([np.std([getattr(s, f)() if f in ("h_angle_deg", "mean_od") else getattr(s, f)
                                 for s in styles]) for f in ("h_angle_deg", "mean_od", "gamma", "saturation")])

    moderate = spread("labelled")
    assert (moderate > 0).all()  # labelled patients differ in every respect: style is learnable from them
    for role in ("unlabelled", "test"):
        assert (spread(role) > 1.5 * moderate).all()


def test_scanner_and_within_slide_drift() -> None:
    """Saturation < 1 pulls channels together, gamma > 1 darkens; the drift is a ramp of the given size."""
    from dataclasses import replace

    from sedm.demo.render import _drift, scanner

    base = patient_style(SEED, "P000", "test")
    pink = np.array([[200.0, 120.0, 180.0]], np.float32)
    flat = scanner(pink, replace(base, saturation=0.5, gamma=1.0))
    assert np.ptp(flat) < np.ptp(pink) and flat.mean() == pytest.approx(pink.mean(), abs=8)
    assert (scanner(pink, replace(base, saturation=1.0, gamma=1.2)) < pink).all()
    np.testing.assert_allclose(scanner(pink, replace(base, saturation=1.0, gamma=1.0)), pink, rtol=1e-6)
    ramp = _drift(64, 0, 64, angle=0.0, amplitude=0.2)  # along rows
    assert ramp[0, 0] == pytest.approx(0.8, abs=0.01) and ramp[-1, 0] == pytest.approx(1.2, abs=0.01)
    assert np.ptp(ramp[10]) == pytest.approx(0.0, abs=1e-6)


def _structure_coherence(grey: np.ndarray, sigma: float) -> np.ndarray:
    gy, gx = np.gradient(ndimage.gaussian_filter(grey, 1.0))
    jxx, jyy, jxy = (ndimage.gaussian_filter(a, sigma) for a in (gx * gx, gy * gy, gx * gy))
    return np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-9)


def test_classes_differ_in_morphology_not_only_colour() -> None:
    """Tumour: crowded large nuclei; stroma: oriented fibres, sparse nuclei; necrosis: small nuclear dust."""
    r = cohort.render_demo_slide(cohort.DemoSlide("L01", "L01", "labelled"), seed=SEED, size=1024, mpp=MPP)
    haem = color.rgb2hed(r.rgb)[..., 0]
    grey = color.rgb2gray(r.rgb)
    nuclear = haem > np.quantile(haem[r.layout.labels > 0], 0.85)
    coherence = _structure_coherence(grey, sigma=6.0)
    stats = {}
    for value, name in enumerate(DEMO_CLASSES, start=1):
        inner = ndimage.binary_erosion(r.layout.labels == value, iterations=12)
        assert inner.sum() > 5000, name
        blobs = measure.label(nuclear & inner)
        areas_um2 = np.bincount(blobs.ravel())[1:] * MPP**2
        stats[name] = {"density": nuclear[inner].mean(), "area": np.median(areas_um2[areas_um2 > 0.5]),
                       "coherence": np.median(coherence[inner])}
    t, s, n = stats["tumour"], stats["stroma"], stats["necrosis"]
    assert t["density"] > 2 * s["density"]  # crowded vs sparse nuclei
    assert t["area"] > 3 * n["area"]  # whole nuclei (~80 µm²) vs dust (a few µm²)
    assert s["coherence"] > 1.5 * max(t["coherence"], n["coherence"])  # oriented fibres


def test_shipped_sample_sheet_matches_generator(repo: Path) -> None:
    config = load_config(repo / "config.yaml")
    demo = config["demo"]
    slides = cohort.cohort_slides(*cohort.demo_counts(demo))
    shipped = repo / config["samples"]
    expected = cohort.sample_sheet_text(cohort.sample_sheet(repo / demo["out"], slides, shipped.parent))
    assert shipped.read_text() == expected, "regenerate resources/demo/samples.tsv (see tests/test_demo.py)"
    sheet = load_samples(shipped)
    assert sheet["role"].value_counts().to_dict() == {"labelled": 4, "unlabelled": 4, "test": 6}
    assert (sheet["patient_id"].value_counts() == 2).sum() == 1  # one test patient with two slides


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cohort.add_arguments(parser)
    argv = []
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return parser.parse_args(argv)


def test_unknown_slide_is_an_input_error(repo: Path, tmp_path: Path) -> None:
    sheet = repo / "resources" / "demo" / "samples.tsv"
    with pytest.raises(InputError) as err:
        cohort.run(_args(samples=sheet, slide="X99", out="results/demo", size=512))
    assert str(sheet) in str(err.value) and "X99" in str(err.value) and "--slide" in err.value.fix
    assert not (tmp_path / "slides").exists()


def test_slide_outside_out_dir_is_an_input_error(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="slide_path"):
        cohort.run(_args(samples=repo / "resources" / "demo" / "samples.tsv", slide="L01", out=tmp_path, size=512))


def test_config_without_demo_classes_is_an_input_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("samples: s.tsv\nclasses: [tumour, other]\n")
    with pytest.raises(InputError, match="stroma"):
        cohort.run(_args(config=cfg, out=tmp_path, size=512))
