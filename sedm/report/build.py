"""``sedm report``: one self-contained HTML page over a results folder.

The page embeds its images as data URIs and its CSS inline and loads nothing from the network, so
it can be mailed or archived as one file and opened on an air-gapped workstation. With
``--figures-dir`` the same figures are also written as PNGs (``<section>/<name>.png``), which the
workflow marks for ``snakemake --report``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from sedm import __version__
from sedm.atomic import atomic_path, write_text
from sedm.config import add_config_arguments, load_config, load_samples
from sedm.errors import InputError
from sedm.report import cost, evaluation, stages, styles
from sedm.report.layout import ResultsLayout
from sedm.report.tables import Figure, Table, fmt, read_json

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
VERSIONED = ("numpy", "pandas", "torch", "diffusers", "monai", "zarr", "snakemake")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "sedm config (YAML/JSON; the workflow passes the report snapshot)")
    parser.add_argument("--samples", required=True, help="sample sheet (TSV)")
    parser.add_argument("--results", required=True, help="results folder to report on (the workflow's `results`)")
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument("--figures-dir", help="also write every figure as <section>/<name>.png here")
    parser.add_argument("--cost-gain", help="also write each arm's compute and Dice gain here (JSON, sedm.report.cost)")
    parser.add_argument("--title", default="sedm report", help="page title")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.runtime)
    samples = load_samples(args.samples)
    if not Path(args.results).is_dir():
        raise InputError(args.results, "--results", "results folder does not exist",
                         "pass the folder the workflow writes to (config key `results`)")
    cost_gain = cost.cost_gain(config, samples, ResultsLayout(Path(args.results)))
    html, figures = build_report(config, samples, args.results, title=args.title,
                                 config_path=args.config, samples_path=args.samples, cost_gain=cost_gain)
    with atomic_path(args.out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    if args.figures_dir:
        write_figures(figures, args.figures_dir)
    if args.cost_gain:
        write_text(args.cost_gain, json.dumps(cost_gain, indent=2, allow_nan=False) + "\n")
    return 0


def environment() -> jinja2.Environment:
    """The template environment; autoescape is on for every template, whatever its extension,
    because class names, config strings and file contents end up in the page."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def build_report(config: dict, samples: pd.DataFrame, results: str | Path, *, title: str = "sedm report",
                 config_path: str | Path | None = None, samples_path: str | Path | None = None,
                 cost_gain: dict | None = None) -> tuple[str, list[Figure]]:
    """Render the report for ``results``; returns the HTML and the figures it embeds.

    ``cost_gain``: :func:`sedm.report.cost.cost_gain` of these results when the caller has it already.
    Absent stage outputs make their section say "not run"; nothing here raises for them.
    """
    layout = ResultsLayout(Path(results))
    figures: list[Figure] = []
    scores = evaluation.evaluation_section(layout, figures, config.get("classes"))
    cost_gain = cost.cost_gain(config, samples, layout) if cost_gain is None else cost_gain
    context: dict[str, Any] = {
        "title": title,
        "results": str(results),
        "cohort": stages.cohort_section(samples, layout, config),
        "tiling": stages.tiling_section(samples, layout, figures),
        "autoencoder": stages.autoencoder_section(layout, figures),
        "diffusion": stages.diffusion_section(layout, figures),
        "style_transfer": stages.style_transfer_section(layout, figures),
        "synthesis": stages.synthesis_section(samples, layout, figures),
        "segmentation": stages.segmentation_section(layout, figures),
        "evaluation": scores,
        "cost": cost.cost_section(cost_gain, layout, figures),
        "styles": styles.style_map_section(samples, layout, scores, figures),
        "predictions": evaluation.predictions_section(samples, layout, scores, figures),
        "compute": stages.compute_section(layout),
        "provenance": provenance(config, layout, config_path, samples_path),
    }
    html = environment().get_template("report.html.j2").render(**context)
    return html, figures


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance(config: dict, layout: ResultsLayout, config_path: str | Path | None,
               samples_path: str | Path | None) -> dict:
    """What produced these results: versions, the config and every stage's config snapshot."""
    versions = {"sedm": __version__, "python": platform.python_version()}
    versions.update({name: _version(name) for name in VERSIONED})
    rows = []
    for path in layout.stage_configs():
        snap = read_json(path)
        stage = path.relative_to(layout.stage_config_dir).with_suffix("").as_posix()  # segmentation/<arm>: a sweep's
        rows.append([stage, fmt(snap.get("sedm_version")) if isinstance(snap, dict) else "unreadable",
                     ", ".join(k for k in snap if k != "sedm_version") if isinstance(snap, dict) else ""])
    return {
        "versions": versions,
        "config": json.dumps(config, indent=2, sort_keys=True, default=str),
        "config_path": str(config_path) if config_path else "–",
        "samples": str(samples_path) if samples_path else str(config.get("samples", "–")),
        "snapshots": Table(["stage", "sedm version", "sections"], rows, [False] * 3) if rows else None,
    }


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "figure"


def write_figures(figures: list[Figure], folder: str | Path) -> list[Path]:
    """Write each figure as ``<folder>/<section>/<name>.png`` (atomically, as one folder)."""
    written = []
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        seen: set[Path] = set()
        for fig in figures:
            rel = Path(_safe(fig.section)) / f"{_safe(fig.name)}.png"
            i = 1
            while rel in seen:
                i += 1
                rel = Path(_safe(fig.section)) / f"{_safe(fig.name)}_{i}.png"
            seen.add(rel)
            (tmp / rel).parent.mkdir(exist_ok=True)
            (tmp / rel).write_bytes(fig.png)
            written.append(Path(folder) / rel)
    return written
