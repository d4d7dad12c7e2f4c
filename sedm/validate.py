"""``sedm validate``: every mistake in a config, its sample sheet and the files they name, before compute.

The workflow runs the same checks when Snakemake parses it (``workflow/rules/common.smk``), so
``sedm validate`` and ``snakemake -n`` fail alike: the schemas, :func:`sedm.config.check_cohort`, then
what needs the files (:func:`check_inputs`): every file exists (absolute path in the message), every
slide opens with a µm/px and holds the tiling pyramid, every GeoJSON's classes are known (or mapped)
and its annotations lie on that slide's tissue, and no file is listed twice, by path or by content.

Opening slides and finding their tissue takes a moment per slide; the result of each slide's checks is
cached under the results folder, keyed by the files' size and modification time and by the config
sections the checks read, so the workflow's later starts check only new or changed slides. Slides the
demo generates (under ``demo.out`` while ``demo.enabled``) are not there yet and are skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sedm.atomic import write_text
from sedm.config import check_cohort, cohort_warnings, load_config, load_samples, require_samples
from sedm.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

CACHE_FILE = ".sedm/checked-inputs.json"
"""Per-slide check results, under the config's ``results`` folder."""
CHECKED_SECTIONS = ("classes", "class_map", "slides", "tissue", "tiling")
"""Config sections the per-slide checks read: a change in any of them checks every slide again."""
HEAD_TAIL_BYTES = 1 << 20
"""Bytes read from each end of a slide for its content fingerprint: whole-slide images are gigabytes,
and two different scans differ in their first megabyte already (headers, dates, tile data)."""


def demo_made(path: str, config: Mapping) -> bool:
    """Whether the demo generates ``path`` (it need not exist before the demo rule)."""
    demo = config["demo"]
    return demo["enabled"] and Path(demo["out"]).resolve() in Path(path).resolve().parents


def _signature(path: str) -> list | None:
    if not path:
        return None
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def _slide_fingerprint(path: str) -> str:
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(HEAD_TAIL_BYTES))
        if size > 2 * HEAD_TAIL_BYTES:
            fh.seek(size - HEAD_TAIL_BYTES)
        digest.update(fh.read())
    return digest.hexdigest()


def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _missing(sheet: str, samples: pd.DataFrame, slide_id: str, column: str) -> InputError:
    path = samples.loc[slide_id, column]
    given = samples.attrs.get("given", {}).get(column, {}).get(slide_id, path)
    fix = f"check {column} of {slide_id} in the sheet; relative paths are read from the sheet's folder " \
          f"({Path(sheet).resolve().parent})"
    if not Path(given).is_absolute() and Path(given).exists():
        fix = (f"relative paths are read from the sheet's folder, and {given!r} exists relative to the working "
               f"directory instead: write it as {os.path.abspath(given)} or relative to the sheet's folder")
    return InputError(sheet, f"{column} of {slide_id}", f"{path} does not exist", fix)


def _check_slide(config: Mapping, row: Mapping) -> dict[str, Any]:
    """Open the slide as tiling will and check its annotations against its tissue; what the cohort-wide
    warnings need comes back (scanner, µm/px, the classes its annotations hold)."""
    import numpy as np

    from sedm.tiling.annotations import check_fit, load_geojson
    from sedm.tiling.command import slide_grid
    from sedm.tiling.slides import open_slide
    from sedm.tiling.tissue import detect_tissue

    scfg, tcfg, tiling = config["slides"], config["tissue"], config["tiling"]
    path = Path(row["slide_path"])
    annotations = None
    if row["annotation_path"]:
        annotations = load_geojson(row["annotation_path"], list(config["classes"]), config.get("class_map") or {})
    slide = open_slide(path, backend=scfg["backend"], mpp_override=scfg["mpp_override"])
    try:
        slide_grid(slide, path, float(tiling["mpp"]), int(tiling["tile_size"]), int(tiling["pyramid_levels"]))
        out: dict[str, Any] = {"mpp": float(slide.mpp), "scanner": slide.vendor, "classes": []}
        if annotations is not None:
            thumb_mpp = float(tcfg["thumbnail_mpp"])
            thumb = np.asarray(slide.thumbnail(thumb_mpp))[..., :3]
            mask = np.asarray(detect_tissue(thumb, thumb_mpp, min_object_um2=float(tcfg["min_object_um2"]),
                                            min_hole_um2=float(tcfg["min_hole_um2"])), dtype=bool)
            check_fit(row["annotation_path"], annotations, list(config["classes"]), tuple(slide.dimensions), mask,
                      float(slide.mpp) / thumb_mpp, float(tiling["min_annotated_tissue"]),
                      float(tiling["min_annotation_on_tissue"]))
            out["classes"] = sorted({a.class_name for a in annotations if a.class_name in config["classes"]})
    finally:
        slide.close()
    return out


def _load_cache(path: Path, key: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("slides", {}) if data.get("config") == key else {}


def check_inputs(config: Mapping, samples: pd.DataFrame, sheet: str, *, cache: bool = True,
                 progress: bool = True, on_slide: Callable[[str], None] | None = None) -> tuple[list[str], str]:
    """Check every file the sheet names; raise :class:`InputError` for the first bad one, return the
    warnings and a line saying which scanners and resolutions the slides come from.

    ``on_slide`` is called with each slide ID actually checked (not answered from the cache).
    """
    from tqdm import tqdm

    present = {s: row for s, row in samples.to_dict("index").items() if not demo_made(row["slide_path"], config)}
    for slide_id, row in present.items():
        for column in ("slide_path", "annotation_path"):
            if row[column] and not Path(row[column]).is_file():
                raise _missing(sheet, samples, slide_id, column)
    key = json.dumps({k: config.get(k) for k in CHECKED_SECTIONS}, sort_keys=True)
    cache_path = Path(config["results"]) / CACHE_FILE
    known = _load_cache(cache_path, key) if cache else {}
    results: dict[str, dict] = {}
    pending = []
    for slide_id, row in present.items():  # contents first: a copied file is named as such
        sig = [_signature(row["slide_path"]), _signature(row["annotation_path"])]
        hit = known.get(slide_id)
        if hit is not None and hit.get("signature") == sig:
            results[slide_id] = hit
            continue
        results[slide_id] = {"signature": sig, "fingerprint": _slide_fingerprint(row["slide_path"])}
        if row["annotation_path"]:
            results[slide_id]["annotation_digest"] = _file_digest(row["annotation_path"])
        pending.append(slide_id)
    _check_same_content(sheet, results, "fingerprint", "slide_path",
                        "the same slide under two IDs: one scan would be in two roles (a test slide in training)")
    _check_same_content(sheet, results, "annotation_digest", "annotation_path",
                        "one annotation file's content under two slides: at most one of them is its slide")
    for slide_id in tqdm(pending, desc="checking slides", unit="slide", disable=not progress or len(pending) < 5,
                         file=sys.stderr):
        if on_slide is not None:
            on_slide(slide_id)
        results[slide_id].update(_check_slide(config, present[slide_id]))
    if cache and results != known:
        write_text(cache_path, json.dumps({"config": key, "slides": results}, sort_keys=True) + "\n")
    return _file_warnings(config, samples, results), _scanners(results)


def _check_same_content(sheet: str, results: Mapping[str, dict], key: str, column: str, why: str) -> None:
    seen: dict[str, str] = {}
    for slide_id, res in results.items():
        value = res.get(key)
        if value is None:
            continue
        if value in seen:
            raise InputError(sheet, column, f"slides {seen[value]} and {slide_id} name files with the same content "
                             f"({why})", "give each slide its own file; keep one row per scanned slide")
        seen[value] = slide_id


def _file_warnings(config: Mapping, samples: pd.DataFrame, results: Mapping[str, dict]) -> list[str]:
    out = []
    role = samples["role"].to_dict()
    labelled = [s for s in results if role[s] == "labelled"]
    if labelled:
        seen = set().union(*(results[s]["classes"] for s in labelled))
        if absent := [c for c in config["classes"] if c not in seen]:
            out.append(f"class(es) {', '.join(absent)} of the config occur in no labelled slide's annotations: "
                       "the models never see them (a typo in `classes`, or a class to map in class_map?)")
    target = float(config["tiling"]["mpp"])
    if coarse := sorted(s for s, r in results.items() if r["mpp"] > target * 1.01):
        out.append(f"{len(coarse)} slide(s) ({', '.join(coarse[:5])}) are scanned coarser than tiling.mpp {target:g} "
                   "µm/px and are upsampled: set tiling.mpp to the coarsest slide's µm/px or leave them out")
    return out


def _scanners(results: Mapping[str, dict]) -> str:
    counts: dict[str, int] = {}
    for res in results.values():
        name = f"{res['scanner']} {res['mpp']:.3g} µm/px"
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} x {name}" for name, n in sorted(counts.items()))


def validate(config_file: str, sheet: str | None = None, *, cache: bool = True,
             progress: bool = True) -> tuple[dict, pd.DataFrame, list[str], str]:
    """Everything the workflow checks before its first job: (config, sheet, warnings, scanners)."""
    config = load_config(config_file)
    sheet = sheet or require_samples(config, config_file)
    samples = load_samples(sheet)
    check_cohort(config, samples, config_file, sheet)
    file_warnings, scanned = check_inputs(config, samples, sheet, cache=cache, progress=progress)
    return config, samples, cohort_warnings(config, samples) + file_warnings, scanned


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.yaml", help="workflow config (YAML)")
    parser.add_argument("--samples", help="sample sheet; defaults to the config's `samples`")
    parser.add_argument("--no-cache", action="store_true", help="check every slide again, even unchanged ones")


def run(args: argparse.Namespace) -> int:
    config, samples, warnings, scanned = validate(args.config, args.samples, cache=not args.no_cache)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    opened = sum(not demo_made(p, config) for p in samples["slide_path"])
    counts = samples["role"].value_counts().to_dict()
    print(f"ok: {len(samples)} slides ({opened} opened), {samples['patient_id'].nunique()} patients, "
          f"roles {counts}" + (f"; scanned: {scanned}" if scanned else "")
          + (f"; {len(warnings)} warning(s) above" if warnings else ""))
    return 0
