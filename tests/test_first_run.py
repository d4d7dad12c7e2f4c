"""A pathology engineer's first run on their own cohort, as the README's "Your own cohort" tells it.

Four labelled slides and two test slides (pyramidal TIFFs with QuPath GeoJSON exports), one
unlabelled Aperio SVS from another scanner, in a folder whose name holds a ``#``; the sheet lists
them relative to its own folder; the config comes from ``sedm write-config --cohort``. Then one test
per mistake a real cohort makes: each must stop ``sedm validate`` and ``snakemake -n`` before the first
job, naming the file, the field and the fix, or (for what runs but is doubtful) print a warning.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from sedm.cli import main
from sedm.config import load_config, stage_config
from sedm.demo.cohort import DemoSlide, render_demo_slide, write_demo_slide
from sedm.layout import results_paths

REPO = Path(__file__).resolve().parents[1]
SIZE, MPP, SEED = 1024, 0.5, 3
CLASSES = ["tumour", "stroma", "necrosis"]
SLIDES = [("L01", "labelled"), ("L02", "labelled"), ("L03", "labelled"), ("L04", "labelled"),
          ("T01", "test"), ("T02", "test")]
HEADER = "slide_id\tpatient_id\tslide_path\tannotation_path\trole\n"
SMALL = {"tiling": {"tile_size": 128}}
"""The one edit the small test slides need (1024 px at 0.5 µm/px hold 3 pyramid levels of 128 px tiles)."""


def _aperio_svs(path: Path, rgb: np.ndarray, mpp: float) -> None:
    """A single-level Aperio SVS, as another lab's scanner writes it (vendor and µm/px in the description)."""
    h, w = rgb.shape[:2]
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", compression="jpeg",
                     compressionargs={"level": 85}, metadata=None,
                     description=f"Aperio Image Library v12.0.15 \n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=85"
                                 f"|AppMag = 40|MPP = {mpp}")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The cohort's folder: slides/, annotations/ and the unlabelled SVS under ``case#1/``."""
    root = tmp_path_factory.mktemp("cohort") / "case#1"
    for slide_id, role in SLIDES:
        write_demo_slide(DemoSlide(slide_id, slide_id, role), root, seed=SEED, size=SIZE, mpp=MPP)
    other = render_demo_slide(DemoSlide("U01", "U01", "unlabelled"), seed=SEED, size=SIZE, mpp=MPP)
    _aperio_svs(root / "slides" / "U01.svs", other.rgb, MPP)
    extra = render_demo_slide(DemoSlide("U02", "U02", "unlabelled"), seed=SEED, size=SIZE, mpp=MPP)
    _aperio_svs(root / "slides" / "U02.svs", extra.rgb, MPP)
    return root


def rows(unlabelled: tuple[str, ...] = ("U01", "U02")) -> list[list[str]]:
    out = [[s, s, f"slides/{s}.tiff", f"annotations/{s}.geojson", role] for s, role in SLIDES]
    return out + [[u, u, f"slides/{u}.svs", "", "unlabelled"] for u in unlabelled]


def write_sheet(folder: Path, table: list[list[str]], sep: str = "\t", name: str = "samples.tsv") -> Path:
    path = folder / name
    path.write_text(sep.join(HEADER.strip().split("\t")) + "\n" + "".join(sep.join(r) + "\n" for r in table))
    return path


def cohort_config(data: Path, tmp_path: Path, sheet: Path | None = None, **sections) -> Path:
    """``sedm write-config --cohort`` (the README's step), plus the test's edits, in ``tmp_path``."""
    sheet = sheet or write_sheet(data, rows())
    out = tmp_path / "my.yaml"
    out.unlink(missing_ok=True)
    assert main(["write-config", "--cohort", str(sheet), "--out", str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    config["results"] = str(tmp_path / "results")
    for key, value in {**SMALL, **sections}.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def validate(config: Path, capsys) -> tuple[int, str, str]:
    rc = main(["validate", "--config", str(config)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def snakemake(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(config.parent), "--cores", "1", *args, "--configfile", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=config.parent)
    proc.stderr = proc.stdout + proc.stderr  # Snakemake logs errors to either: read them together
    return proc


def one_error(text: str) -> str:
    """The sedm message in a failed output: exactly one, and no traceback."""
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if "Fix:" in line]
    assert len(lines) == 1, text
    return lines[0].split(": error: ", 1)[-1]  # without the `sedm validate: error:` prefix


# ------------------------------------------------------------------------------------ the first run
def test_first_run_validates_plans_and_is_what_the_user_configured(data, tmp_path, capsys):
    config = cohort_config(data, tmp_path)
    written = yaml.safe_load(config.read_text())
    assert sorted(written["classes"]) == sorted(CLASSES)
    assert written["diffusion"]["max_steps"] == 20000 and written["diffusion"]["preset"] == "paper"
    assert "demo" not in written
    rc, out, err = validate(config, capsys)
    assert rc == 0, err
    assert "ok: 8 slides (8 opened)" in out and "aperio" in out
    assert "warning" not in err  # a config written for the cohort carries no demo values
    proc = snakemake(config, "-n")
    assert proc.returncode == 0, proc.stderr
    assert "sedm: warning" not in proc.stderr
    arms = written["segmentation"]["arms"]
    assert _planned(proc.stdout, "train_segmentation") == len(arms)


def _planned(text: str, rule: str) -> int:
    table = text.split("Job stats:", 1)[1]
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == rule:
            return int(parts[1])
    return 0


def test_snakemake_runs_exactly_the_given_config_with_schema_defaults(data, tmp_path):
    """A config naming only samples and classes: Snakemake's snapshot of a stage is the schema's defaults
    (not the demo's config.yaml values) and equals what `sedm validate` checks. The venv's bin is off
    PATH: the rule runs the sedm of the Python running Snakemake."""
    sheet = write_sheet(data, rows())
    config = tmp_path / "min.yaml"
    config.write_text(yaml.safe_dump({"samples": str(sheet), "classes": CLASSES, "results": str(tmp_path / "r"),
                                      **SMALL}))
    target = results_paths(str(tmp_path / "r")).stage_config.format(stage="diffusion")
    proc = snakemake(config, target, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = json.loads(Path(target).read_text())
    expected = stage_config(load_config(config), "diffusion")
    assert made == json.loads(json.dumps(expected))
    assert made["diffusion"]["max_steps"] == 20000 and made["diffusion"]["preset"] == "paper"


def test_arm_maps_replace_the_demo_arms(data, tmp_path):
    config = cohort_config(data, tmp_path, segmentation={"arms": {"real": {"synthetic": False, "stain_aug": False},
                                                                   "stedm": {"synthetic": True, "stain_aug": False}}})
    proc = snakemake(config, "-n")
    assert proc.returncode == 0, proc.stderr
    assert _planned(proc.stdout, "train_segmentation") == 2
    # the cluster's time limit is the cohort config's (schema default), not the demo's 60 minutes
    train = proc.stdout.split("rule train_diffusion:", 1)[1].split("\n\n", 1)[0]
    assert "runtime=1440," in train


# ---------------------------------------------------------------------- mistakes: errors before compute
def _fails_alike(config: Path, capsys) -> str:
    """`sedm validate` and `snakemake -n` stop with the same one-line message; returns it."""
    rc, _, err = validate(config, capsys)
    assert rc == 2
    message = one_error(err)
    proc = snakemake(config, "-n")
    assert proc.returncode != 0
    assert message.strip() in proc.stderr, proc.stderr[-2000:]
    return message


def _with_annotation(data: Path, tmp_path: Path, slide: str, text: str) -> Path:
    """A sheet (absolute paths) in ``tmp_path`` whose ``slide`` has the annotation file ``text``."""
    path = tmp_path / f"{slide}.geojson"
    path.write_text(text)
    table = [[r[0], r[1], str(data / r[2]), str(path) if r[0] == slide else str(data / r[3]) if r[3] else "", r[4]]
             for r in rows()]
    return write_sheet(tmp_path, table)


def test_class_name_typo_is_caught_with_a_suggestion(data, tmp_path, capsys):
    text = (data / "annotations" / "L02.geojson").read_text().replace('"tumour"', '"tumor"')
    config = cohort_config(data, tmp_path, sheet=_with_annotation(data, tmp_path, "L02", text))
    config_data = yaml.safe_load(config.read_text())
    config_data["classes"] = CLASSES  # the user's classes, not the ones read from the (typo'd) exports
    config.write_text(yaml.safe_dump(config_data))
    message = _fails_alike(config, capsys)
    assert "L02.geojson [properties.classification.name]" in message and "'tumor'" in message
    assert "tumour" in message and "class_map" in message


def test_qupath_ignore_class_maps_to_ignored(data, tmp_path, capsys):
    collection = json.loads((data / "annotations" / "L03.geojson").read_text())
    feature = collection["features"][0]
    collection["features"].append({**feature, "properties": {**feature["properties"],
                                                             "classification": {"name": "Ignore*"}}})
    sheet = _with_annotation(data, tmp_path, "L03", json.dumps(collection))
    config = cohort_config(data, tmp_path, sheet=sheet)
    assert yaml.safe_load(config.read_text())["class_map"] == {"Ignore*": "ignore"}
    rc, _, err = validate(config, capsys)
    assert rc == 0, err
    config_data = yaml.safe_load(config.read_text())
    config_data["class_map"] = {}
    config.write_text(yaml.safe_dump(config_data))
    message = _fails_alike(config, capsys)
    assert "Ignore*" in message and "ignore" in message.split("Fix:")[1]


def test_missing_annotation_names_the_absolute_path(data, tmp_path, capsys):
    table = rows()
    table[1][3] = "annotations/L02-missing.geojson"
    config = cohort_config(data, tmp_path, sheet=write_sheet(data, rows()))
    config_data = yaml.safe_load(config.read_text())
    config_data["samples"] = str(write_sheet(data, table, name="missing.tsv"))
    config.write_text(yaml.safe_dump(config_data))
    message = _fails_alike(config, capsys)
    assert f"[annotation_path of L02]: {data / 'annotations' / 'L02-missing.geojson'} does not exist" in message


def test_relative_path_from_the_working_directory_gets_a_hint(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(data.parent)
    table = rows()
    table[0][2] = "case#1/slides/L01.tiff"  # relative to the working directory, not to the sheet
    config = cohort_config(data, tmp_path)
    config_data = yaml.safe_load(config.read_text())
    config_data["samples"] = str(write_sheet(data, table, name="cwd.tsv"))
    config.write_text(yaml.safe_dump(config_data))
    rc, _, err = validate(config, capsys)
    message = one_error(err)
    assert rc == 2 and str(data / "case#1" / "slides" / "L01.tiff") in message
    assert "exists relative to the working directory" in message and str(data / "slides" / "L01.tiff") in message


def test_one_slide_under_two_ids_is_a_leak(data, tmp_path, capsys):
    table = rows()
    shutil.copy(data / "annotations" / "L04.geojson", tmp_path / "T03.geojson")
    table.append(["T03", "T03", "slides/L04.tiff", str(tmp_path / "T03.geojson"), "test"])  # L04's scan as a test slide
    config = cohort_config(data, tmp_path, sheet=write_sheet(data, rows()))
    config_data = yaml.safe_load(config.read_text())
    config_data["samples"] = str(write_sheet(data, table, name="twice.tsv"))
    config.write_text(yaml.safe_dump(config_data))
    message = _fails_alike(config, capsys)
    assert "[slide_path]" in message and "L04, T03" in message
    # the same scan copied under another name: found by content
    shutil.copy(data / "slides" / "L04.tiff", tmp_path / "T03.tiff")
    table[-1][2] = str(tmp_path / "T03.tiff")
    config_data["samples"] = str(write_sheet(data, table, name="copied.tsv"))
    config.write_text(yaml.safe_dump(config_data))
    message = _fails_alike(config, capsys)
    assert "L04 and T03 name files with the same content" in message


def test_another_slides_annotation_is_caught(data, tmp_path, capsys):
    # L02's export listed for L01 too (by path), then a copy of it (by content), then a file from a slide
    # outside the sheet (by where it lies: much of it on L01's glass)
    table = rows()
    table[0][3] = "annotations/L02.geojson"
    config = cohort_config(data, tmp_path)
    config_data = yaml.safe_load(config.read_text())
    config_data["samples"] = str(write_sheet(data, table, name="same-ann.tsv"))
    config.write_text(yaml.safe_dump(config_data))
    assert "[annotation_path]" in _fails_alike(config, capsys)
    shutil.copy(data / "annotations" / "L02.geojson", tmp_path / "L01.geojson")
    table[0][3] = str(tmp_path / "L01.geojson")
    config_data["samples"] = str(write_sheet(data, table, name="copied-ann.tsv"))
    config.write_text(yaml.safe_dump(config_data))
    assert "L01 and L02 name files with the same content" in _fails_alike(config, capsys)
    stranger = tmp_path / "stranger"
    write_demo_slide(DemoSlide("X09", "X09", "labelled"), stranger, seed=SEED + 1, size=SIZE, mpp=MPP)
    table[0][3] = str(stranger / "annotations" / "X09.geojson")
    config_data["samples"] = str(write_sheet(data, table, name="stranger.tsv"))
    config.write_text(yaml.safe_dump(config_data))
    message = _fails_alike(config, capsys)
    assert "X09.geojson [features]" in message and "lies on the slide's glass" in message


@pytest.mark.parametrize(("sep", "name"), [(",", "commas"), (";", "semicolons")])
def test_sheet_saved_with_another_separator(data, tmp_path, capsys, sep, name):
    config = cohort_config(data, tmp_path)
    config_data = yaml.safe_load(config.read_text())
    config_data["samples"] = str(write_sheet(data, rows(), sep=sep, name=f"excel-{name}.csv"))
    config.write_text(yaml.safe_dump(config_data))
    message = _fails_alike(config, capsys)
    assert f"[header]: the columns are separated by {name}, not tabs" in message and "Tab" in message


def test_config_without_classes_or_sheet(data, tmp_path, capsys):
    config = tmp_path / "bare.yaml"
    config.write_text(yaml.safe_dump({"samples": str(write_sheet(data, rows()))}))
    message = _fails_alike(config, capsys)
    assert "[classes]" in message and "write-config --cohort" in message
    config.write_text(yaml.safe_dump({"classes": CLASSES}))
    message = _fails_alike(config, capsys)
    assert "[samples]: no sample sheet given" in message


def test_synthetic_arms_without_unlabelled_slides(data, tmp_path, capsys):
    config = cohort_config(data, tmp_path, sheet=write_sheet(data, rows(unlabelled=()), name="none.tsv"))
    message = _fails_alike(config, capsys)
    assert "no slide is unlabelled" in message and "segmentation.arms" in message


# -------------------------------------------------------------------- doubtful but runnable: warnings
def test_one_unlabelled_slide_is_said_not_silently_dropped(data, tmp_path, capsys):
    config = cohort_config(data, tmp_path, sheet=write_sheet(data, rows(unlabelled=("U01",)), name="one.tsv"))
    rc, _, err = validate(config, capsys)
    assert rc == 0 and "one unlabelled slide: the style check" in err
    proc = snakemake(config, "-n")
    assert proc.returncode == 0 and "sedm: warning: one unlabelled slide" in proc.stderr


def test_config_copied_from_the_demo_says_so(data, tmp_path, capsys):
    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    demo.update(samples=str(write_sheet(data, rows())), results=str(tmp_path / "results"), demo={"enabled": False},
                **{"tiling": {**demo["tiling"], **SMALL["tiling"]}})
    config = tmp_path / "copied.yaml"
    config.write_text(yaml.safe_dump(demo))
    rc, _, err = validate(config, capsys)
    assert rc == 0
    assert "the demo's small CPU values" in err and "diffusion.max_steps: 300 (default 20000)" in err
