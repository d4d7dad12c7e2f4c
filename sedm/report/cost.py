"""Cost beside gain: per arm, the compute its model took next to what it gained over the baseline arm.

**Seconds per Dice point**: an arm's compute in wall-clock seconds over its gain in points (0.01) of
per-patient macro Dice over ``evaluation.baseline``, on the mean over the test patients and on the
worst patient. An arm without a gain (zero or below) has none.

**Compute** comes from Snakemake's benchmark files (``benchmarks/<rule>/<job>.tsv``, column ``s``: wall
seconds; ``cpu_time`` is reported beside it): the arm's own ``train_segmentation`` job and, for an arm
with synthetic data, the jobs that made that data, :data:`SHARED_RULES` (the cohort autoencoder when
``diffusion.latent: cohort``, the diffusion model, the synthesis of every unlabelled slide). Those are
shared by every synthetic arm and **charged in full to each**: what one synthetic arm costs on its own,
not a share of one bill, which would make an arm cheaper the more arms there are. Tiling, prediction and
evaluation take the same time for every arm and are left out. Each job's ``gpus`` setting is listed
beside it: its seconds are GPU-job seconds where it is above 0.

**Gains and their CIs** are the evaluation's (``summary.json`` comparisons: paired per patient, bootstrap
CIs, ``descriptive`` below :data:`sedm.evaluation.stats.DESCRIPTIVE_BELOW` patients); nothing is
recomputed here.

Computed by the report stage and written beside the report (``report/cost_gain.json``), not into the
evaluation's ``summary.json``: the summary is a function of predictions and labels, and timings are not
(two runs of the same jobs take different times, a resumed job's benchmark covers only its last part).
``sedm evaluate`` would need every training job's benchmark file as input for numbers that are not
evaluation; the report already reads them (its compute section) and is rebuilt whenever any job reruns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sedm.evaluation.stats import descriptive_note, is_descriptive
from sedm.report import plots
from sedm.report.layout import ResultsLayout
from sedm.report.tables import Figure, Table, fmt, not_run, read_benchmark, read_json
from sedm.arms import arm_variants

DICE_POINT = 0.01
"""One point of Dice."""
ARM_RULE = "train_segmentation"
SHARED_RULES = ("train_autoencoder", "train_diffusion", "synthesize")
"""The rules whose jobs make the synthetic data every synthetic arm trains on."""
RULE_SECTIONS = {"train_autoencoder": "autoencoder", "train_diffusion": "diffusion", "synthesize": "synthesis",
                 ARM_RULE: "segmentation"}
"""The config section of each rule's resources (its ``gpus``)."""
SHARED_NOTE = ("the autoencoder, diffusion and synthesis jobs make the synthetic data of every synthetic arm and "
               "are charged in full to each of them")
GAINS = {"mean": ("mean_diff", "ci95"), "worst": ("worst_diff", "worst_ci95")}
"""Gain on the mean over patients and on the worst patient: their keys in a summary.json comparison."""


def seconds_per_point(seconds: float | None, gain: float | None) -> float | None:
    """Wall seconds per point (:data:`DICE_POINT`) of Dice gained; None without both or without a gain."""
    if seconds is None or gain is None or not np.isfinite(seconds) or not np.isfinite(gain) or gain <= 0:
        return None
    return float(seconds / (gain / DICE_POINT))


def _jobs(layout: ResultsLayout, paths: Sequence[Path], gpus: Any) -> dict[str, Any]:
    """Wall and CPU seconds summed over the benchmark files ``paths``; the ones not found (or without a
    wall time) in ``missing``; paths relative to the results folder."""
    found = {p: b for p in paths if (b := read_benchmark(p)) is not None and np.isfinite(b["s"])}
    cpu = [b["cpu_time"] for b in found.values()]
    return {"wall_s": float(sum(b["s"] for b in found.values())) if found else None,
            "cpu_s": float(sum(cpu)) if found and all(np.isfinite(cpu)) else None,
            "jobs": len(found), "gpus": gpus, "files": [_relative(layout, p) for p in found],
            "missing": [_relative(layout, p) for p in paths if p not in found]}


def _relative(layout: ResultsLayout, path: Path) -> str:
    return path.relative_to(layout.root).as_posix() if path.is_relative_to(layout.root) else str(path)


def shared_jobs(layout: ResultsLayout, config: Mapping[str, Any], unlabelled: Sequence[str]) -> dict[str, Any]:
    """Per :data:`SHARED_RULES` rule, its jobs' seconds: the one-job rules' files whatever their job name,
    synthesis per unlabelled slide of the sheet (a slide since removed is not charged)."""
    out = {}
    for rule in SHARED_RULES:
        if rule == "train_autoencoder" and config["diffusion"]["latent"] != "cohort":
            continue
        folder = layout.benchmarks / rule
        if rule == "synthesize":
            paths = [layout.benchmark(rule, slide) for slide in unlabelled]
        else:
            paths = sorted(folder.glob("*.tsv")) if folder.is_dir() else []
            paths = paths or [layout.benchmark(rule, "<job>")]
        out[rule] = _jobs(layout, paths, config[RULE_SECTIONS[rule]]["gpus"])
    return out


def _gain(comparison: Mapping[str, Any] | None, kind: str, seconds: float | None) -> dict[str, Any]:
    diff_key, ci_key = GAINS[kind]
    gain = comparison.get(diff_key) if comparison else None
    ci = comparison.get(ci_key) if comparison else None
    return {"gain": gain, "ci95": ci, "seconds_per_point": seconds_per_point(seconds, gain)}


def cost_gain(config: Mapping[str, Any], samples: pd.DataFrame, layout: ResultsLayout) -> dict[str, Any]:
    """Every trained arm's compute and gain (the JSON the report writes): see the module docstring."""
    variants = arm_variants(config["segmentation"])
    unlabelled = samples.loc[samples["role"] == "unlabelled", "slide_id"].tolist()
    shared = shared_jobs(layout, config, unlabelled) if any(v.synthetic for v in variants.values()) else {}
    shared_missing = [m for part in shared.values() for m in part["missing"]]
    shared_s = None if shared_missing or not shared else float(sum(p["wall_s"] for p in shared.values()))
    summary = read_json(layout.eval_summary)
    summary = summary if isinstance(summary, Mapping) else {}
    comparisons = {c["arm"]: c for c in summary.get("comparisons") or [] if isinstance(c, Mapping) and "arm" in c}
    evaluated = summary.get("arms") if isinstance(summary.get("arms"), Mapping) else {}
    baseline = config["evaluation"]["baseline"]
    arms = {}
    for name, v in variants.items():
        own = _jobs(layout, [layout.benchmark(ARM_RULE, name)], config[RULE_SECTIONS[ARM_RULE]]["gpus"])
        parts = {ARM_RULE: own, **(shared if v.synthetic else {})}
        missing = [m for part in parts.values() for m in part["missing"]]
        wall = None if missing else float(sum(p["wall_s"] for p in parts.values()))
        cpus = [p["cpu_s"] for p in parts.values()]
        cpu = None if missing or None in cpus else float(sum(cpus))
        comp = comparisons.get(name)
        n = comp.get("n_patients") if comp else (evaluated.get(name) or {}).get("n_patients")
        descriptive = comp.get("descriptive") if comp and comp.get("descriptive") is not None else \
            (is_descriptive(n) if isinstance(n, int) else None)
        entry = {"family": v.family, "share": v.share, "synthetic": v.synthetic, "baseline": name == baseline,
                 "segmentation_s": own["wall_s"],
                 "shared_s": shared_s if v.synthetic else 0.0,
                 "wall_s": wall, "cpu_s": cpu, "missing": missing, "evaluated": name in evaluated,
                 "n_patients": n, "descriptive": descriptive,
                 "note": descriptive_note(n) if descriptive and isinstance(n, int) else None}
        for kind in GAINS:
            entry[kind] = ({"gain": 0.0, "ci95": None, "seconds_per_point": None} if name == baseline
                           else _gain(comp, kind, wall))
        arms[name] = entry
    return {"baseline": baseline, "dice_point": DICE_POINT,
            "seconds": "wall-clock seconds of the jobs (Snakemake benchmark column s); cpu_s: their CPU seconds",
            "gains": "per-patient macro Dice minus the baseline's, from eval/summary.json: on the mean over "
                     "patients and on the worst patient, with patient-bootstrap 95% CIs",
            "shared": {"rules": shared, "wall_s": shared_s, "note": SHARED_NOTE},
            "arms": arms}


def _points(data: Mapping[str, Any]) -> pd.DataFrame:
    """One row per arm with a gain (the baseline's is 0, without a CI): its family, share, seconds, and
    gains with their CI bounds."""
    rows = []
    for name, a in data["arms"].items():
        if a["mean"]["gain"] is None or not a["evaluated"]:
            continue
        row = {"arm": name, "family": a["family"], "share": a["share"], "synthetic": a["synthetic"],
               "seconds": a["wall_s"], "descriptive": bool(a["descriptive"])}
        for kind in GAINS:
            ci = a[kind]["ci95"] or [None, None]
            row.update({kind: a[kind]["gain"], f"{kind}_lo": ci[0], f"{kind}_hi": ci[1]})
        rows.append(row)
    return pd.DataFrame(rows, columns=["arm", "family", "share", "synthetic", "seconds", "descriptive",
                                       *(f"{k}{s}" for k in GAINS for s in ("", "_lo", "_hi"))]).astype(
        {f"{k}{s}": float for k in GAINS for s in ("", "_lo", "_hi")} | {"seconds": float})


def _gain_cell(g: Mapping[str, Any]) -> str:
    return f"{fmt(g['gain'])} {fmt(g['ci95'])}" if g["ci95"] else fmt(g["gain"])


def cost_section(data: Mapping[str, Any] | None, layout: ResultsLayout, figures: list[Figure]) -> dict:
    """The table of :func:`cost_gain` and its figures: gain vs synthetic share (one line per synthetic
    arm family) and gain vs cost (one point per arm)."""
    if not data or not any(a["evaluated"] for a in data["arms"].values()):
        return not_run([layout.eval_summary])
    rows = []
    for name, a in data["arms"].items():
        if not a["evaluated"] and a["wall_s"] is None:
            continue  # an arm of the config with neither a result nor a cost yet
        rows.append([name, a["family"], fmt(a["share"], 2) if a["synthetic"] else "–", fmt(a["segmentation_s"], 1),
                     fmt(a["shared_s"], 1), fmt(a["wall_s"], 1), "baseline" if a["baseline"] else _gain_cell(a["mean"]),
                     fmt(a["mean"]["seconds_per_point"], 1), "" if a["baseline"] else _gain_cell(a["worst"]),
                     fmt(a["worst"]["seconds_per_point"], 1), fmt(a["n_patients"]),
                     "descriptive" if a["descriptive"] else ""])
    table = Table(["arm", "family", "synthetic share", "segmentation s", "shared s (synthetic data)", "total s",
                   "mean gain [95% CI]", "s per Dice point", "worst-patient gain [95% CI]", "s per worst-patient point",
                   "patients", ""], rows, [False, False, True, True, True, True, True, True, True, True, True, False])
    out: dict[str, Any] = {"ran": True, "table": table, "baseline": data["baseline"], "share_figure": None,
                           "cost_figure": None, "note": SHARED_NOTE}
    points = _points(data)
    families = points[points["synthetic"]]
    costed = points[points["seconds"].notna()]
    for key, name, chosen, plot, caption in (
            ("share_figure", "gain_vs_share", families, plots.gain_vs_share,
             "the share of synthetic samples per batch, one line per synthetic arm family, with patient-bootstrap "
             "95% CIs; open markers: descriptive (too few patients)"),
            ("cost_figure", "gain_vs_cost", costed, plots.gain_vs_cost,
             "the arm's compute (wall seconds; synthetic arms carry the full autoencoder, diffusion and synthesis "
             "time), one point per arm, with 95% CIs; open markers: descriptive")):
        if len(chosen):
            out[key] = Figure("cost", name, plot(chosen, data["baseline"]),
                              f"Gain over {data['baseline']} against {caption}")
            figures.append(out[key])
    return out
