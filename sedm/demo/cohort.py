"""``sedm demo-cohort``: the synthetic demo cohort (pyramidal TIFF slides, QuPath GeoJSON, sample sheet).

The demo has to exercise everything the method is about on a laptop in minutes: labelled patients
in a moderate stain-style range, unlabelled and test patients in a wide one (unseen styles), three
classes that differ in morphology, and a test patient with two slides for per-patient evaluation.

Two ways to run it:

* ``--slide ID --samples SHEET``: one slide of the sheet (one Snakemake job each);
* without ``--slide``: the whole cohort plus ``OUT/samples.tsv``.

Every slide is a deterministic function of (demo seed, slide ID, patient ID, role, size, µm/px),
so both ways give identical files. The sheet itself is computed without rendering anything
(:func:`sample_sheet`), which is how ``resources/demo/samples.tsv`` is kept in sync.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from sedm.atomic import write_text
from sedm.config import SAMPLE_COLUMNS, load_config, load_samples, validate_config
from sedm.demo.layout import DEMO_CLASSES, Layout, make_layout
from sedm.demo.render import render_slide
from sedm.demo.styles import StainStyle, patient_style
from sedm.demo.tiff import write_pyramidal_tiff
from sedm.demo.vectorise import layout_geojson
from sedm.errors import InputError
from sedm.seeds import rng_for

log = logging.getLogger(__name__)

ROLE_PREFIX = {"labelled": "L", "unlabelled": "U", "test": "T"}
PYRAMID_MIN_SIZE = 128
"""Smallest side of the last pyramid level (a 768 px test slide still gets 3 levels)."""
SHEET_HEADER = ("# Demo cohort sample sheet, written by `sedm demo-cohort` (do not edit by hand: regenerate it).\n"
                "# Unlabelled slides have annotations too (the hidden truth), but the sheet does not list them.\n")


@dataclass(frozen=True)
class DemoSlide:
    slide_id: str
    patient_id: str
    role: str


@dataclass(frozen=True)
class RenderedSlide:
    rgb: np.ndarray
    """(size, size, 3) uint8 level-0 image."""
    layout: Layout
    style: StainStyle


def cohort_slides(labelled: int, unlabelled: int, test: int) -> list[DemoSlide]:
    """The cohort's slides: one per patient, except the last test patient, who has two (a, b)."""
    slides = []
    for role, count in (("labelled", labelled), ("unlabelled", unlabelled), ("test", test)):
        width = max(2, len(str(count)))
        for i in range(1, count + 1):
            pid = f"{ROLE_PREFIX[role]}{i:0{width}d}"
            if role == "test" and i == count:
                slides += [DemoSlide(pid + "a", pid, role), DemoSlide(pid + "b", pid, role)]
            else:
                slides.append(DemoSlide(pid, pid, role))
    return slides


def slide_paths(out: str | Path, slide_id: str) -> tuple[str, str]:
    """(TIFF, GeoJSON) paths of a demo slide under ``out``, spelled as the sheet and the workflow spell them."""
    root = str(out).rstrip("/") or "."
    return f"{root}/slides/{slide_id}.tiff", f"{root}/annotations/{slide_id}.geojson"


def sample_sheet(out: str | Path, slides: list[DemoSlide], sheet_dir: str | Path) -> pd.DataFrame:
    """The cohort's sample sheet (no rendering) to be saved in ``sheet_dir``: its paths are relative
    to that folder, as sheets read them; unlabelled slides get an empty annotation_path."""
    rows = []
    for s in slides:
        tiff, geojson = (os.path.relpath(p, sheet_dir) for p in slide_paths(out, s.slide_id))
        rows.append({"slide_id": s.slide_id, "patient_id": s.patient_id, "slide_path": tiff,
                     "annotation_path": "" if s.role == "unlabelled" else geojson, "role": s.role})
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))


def sample_sheet_text(sheet: pd.DataFrame) -> str:
    return SHEET_HEADER + sheet.to_csv(sep="\t", index=False, lineterminator="\n")


def demo_counts(demo: dict[str, Any]) -> tuple[int, int, int]:
    return demo["patients_labelled"], demo["patients_unlabelled"], demo["patients_test"]


def render_demo_slide(slide: DemoSlide, *, seed: int, size: int, mpp: float) -> RenderedSlide:
    """Render one slide in memory (level 0 at ``mpp`` µm/px); no files."""
    layout = make_layout(rng_for(seed, "layout", slide.slide_id), size, mpp)
    style = patient_style(seed, slide.patient_id, slide.role)
    rgb = render_slide(rng_for(seed, "render", slide.slide_id), layout, style, mpp)
    return RenderedSlide(rgb=rgb, layout=layout, style=style)


def write_demo_slide(slide: DemoSlide, out: str | Path, *, seed: int, size: int, mpp: float) -> tuple[Path, Path]:
    """Render one slide and write its pyramidal TIFF and GeoJSON under ``out``; returns both paths."""
    t0 = time.perf_counter()
    rendered = render_demo_slide(slide, seed=seed, size=size, mpp=mpp)
    tiff, geojson = (Path(p) for p in slide_paths(out, slide.slide_id))
    levels = write_pyramidal_tiff(tiff, rendered.rgb, mpp, quality=rendered.style.jpeg_quality,
                                  min_size=PYRAMID_MIN_SIZE)
    collection = layout_geojson(rendered.layout.coarse, rendered.layout.factor, DEMO_CLASSES)
    write_text(geojson, json.dumps(collection) + "\n")
    log.info("%s (%s, patient %s): %d x %d px at %g µm/px, %d levels, %d annotations, %.1f s", slide.slide_id,
             slide.role, slide.patient_id, size, size, mpp, levels, len(collection["features"]),
             time.perf_counter() - t0)
    return tiff, geojson


def generate_cohort(out: str | Path, *, seed: int, size: int, mpp: float, labelled: int, unlabelled: int,
                    test: int) -> Path:
    """Write every slide, annotation and ``out/samples.tsv``; returns the sheet's path."""
    slides = cohort_slides(labelled, unlabelled, test)
    for slide in tqdm(slides, desc="demo slides", unit="slide"):
        write_demo_slide(slide, out, seed=seed, size=size, mpp=mpp)
    sheet_path = Path(out) / "samples.tsv"
    write_text(sheet_path, sample_sheet_text(sample_sheet(out, slides, sheet_path.parent)))
    return sheet_path


# ----------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="sedm config (YAML/JSON) whose `classes` and `demo` sections to use; "
                        "schema defaults if omitted")
    parser.add_argument("--out", required=True, help="folder for slides/, annotations/ (and samples.tsv)")
    parser.add_argument("--slide", help="generate only this slide of --samples (one workflow job)")
    parser.add_argument("--samples", help="sample sheet that lists --slide (its patient and role)")
    parser.add_argument("--patients-labelled", type=int, help="override demo.patients_labelled (whole cohort only)")
    parser.add_argument("--patients-unlabelled", type=int, help="override demo.patients_unlabelled (whole cohort only)")
    parser.add_argument("--patients-test", type=int, help="override demo.patients_test (whole cohort only)")
    parser.add_argument("--size", type=int, help="override demo.size: slide side at level 0, pixels")
    parser.add_argument("--seed", type=int, help="override demo.seed")


def _config(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config) if args.config else validate_config({"classes": list(DEMO_CLASSES)})
    overrides = {"patients_labelled": args.patients_labelled, "patients_unlabelled": args.patients_unlabelled,
                 "patients_test": args.patients_test, "size": args.size, "seed": args.seed}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        config = dict(config, demo={**config["demo"], **overrides})
        config = validate_config(config, "command line")
    missing = [c for c in DEMO_CLASSES if c not in config["classes"]]
    if missing:
        raise InputError(args.config, "classes", f"the demo renders {list(DEMO_CLASSES)} but {missing} "
                         f"are not among the configured classes {config['classes']}",
                         f"set classes: [{', '.join(DEMO_CLASSES)}], or set demo.enabled: false and use your own "
                         "slides")
    return config


def _sheet_slide(samples: str, slide_id: str, out: str) -> DemoSlide:
    sheet = load_samples(samples)
    if slide_id not in sheet.index:
        listed = ", ".join(sheet.index[:12]) + (", ..." if len(sheet) > 12 else "")
        raise InputError(samples, "slide_id", f"slide {slide_id!r} is not in the sample sheet",
                         f"pass one of its slide_ids ({listed}) to --slide, or add a row for {slide_id!r}")
    row = sheet.loc[slide_id]
    tiff, geojson = (os.path.abspath(p) for p in slide_paths(out, slide_id))
    if row["slide_path"] != tiff:
        raise InputError(samples, f"slide_path of {slide_id}",
                         f"is {row['slide_path']} but demo-cohort writes {tiff}",
                         f"set slide_path to {tiff}, or pass the folder the sheet points at as --out (demo.out)")
    if row["annotation_path"] and row["annotation_path"] != geojson:
        raise InputError(samples, f"annotation_path of {slide_id}",
                         f"is {row['annotation_path']} but demo-cohort writes {geojson}",
                         f"set annotation_path to {geojson} (or leave it empty for an unlabelled slide)")
    return DemoSlide(slide_id=slide_id, patient_id=row["patient_id"], role=row["role"])


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    demo = config["demo"]
    if args.slide is None:
        if args.samples:
            raise InputError(args.samples, "--samples", "a sample sheet only selects the slide given with --slide",
                             "add --slide ID, or drop --samples to generate the whole cohort and its samples.tsv")
        path = generate_cohort(args.out, seed=demo["seed"], size=demo["size"], mpp=demo["mpp"],
                               labelled=demo["patients_labelled"], unlabelled=demo["patients_unlabelled"],
                               test=demo["patients_test"])
        print(f"wrote {path}")
        return 0
    if not args.samples:
        raise InputError(None, "--samples", "--slide needs the sample sheet that lists it",
                         "add --samples SHEET (the workflow passes resources/demo/samples.tsv)")
    given = [f for f in ("patients_labelled", "patients_unlabelled", "patients_test") if getattr(args, f) is not None]
    if given:
        raise InputError(None, "--" + given[0].replace("_", "-"), "patient counts only apply to the whole cohort",
                         "drop it: with --slide the sample sheet defines the cohort")
    slide = _sheet_slide(args.samples, args.slide, args.out)
    write_demo_slide(slide, args.out, seed=demo["seed"], size=demo["size"], mpp=demo["mpp"])
    return 0
