"""Gather what each report section shows from the results folder, tolerating absent inputs.

Each ``*_section`` function returns a plain dict for the template with ``ran`` (were its inputs
there?) and ``missing`` (what was looked for), so a partial pipeline gives a partial report instead
of an error. Stage outputs are read by column name where the name is fixed, and otherwise shown as
they are (every column / every key), so a new column in a stage output appears without a change here.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from sedm.report import plots
from sedm.report.layout import TEMPLATES, ResultsLayout

TEMPLATES_SEG_RUN = TEMPLATES["seg_run"].replace("{arm}", "<arm>")

log = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 1400
"""Longest side (px) of an embedded image; larger ones are downscaled to bound the HTML size."""

MAX_QC_THUMBNAILS = 200
MAX_OVERLAY_SLIDES = 3


@dataclass
class Figure:
    """One image of the report: embedded as a data URI and also written to the figures folder."""

    section: str
    name: str
    png: bytes
    caption: str = ""

    @property
    def uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    numeric: list[bool] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# small readers and formatters


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: integers as integers, floats with ``digits`` decimals, NaN/None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "–"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def fmt_p(value: Any) -> str:
    """A p-value: three significant digits, scientific below 0.001."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        return fmt(value)
    if math.isnan(p):
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3g}"


def frame_table(df: pd.DataFrame, digits: int = 3) -> Table:
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    rows = [[fmt(v, digits) for v in row] for row in df.itertuples(index=False, name=None)]
    return Table([str(c) for c in df.columns], rows, numeric)


def read_table(path: Path) -> pd.DataFrame | None:
    """A TSV/CSV/Parquet table, or None when absent or unreadable (logged, never raised)."""
    if not path.is_file():
        return None
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        sep = "\t" if path.suffix in (".tsv", ".txt") else ","
        return pd.read_csv(path, sep=sep)
    except Exception as exc:  # a broken stage output must not take the whole report down
        log.warning("could not read %s: %s", path, exc)
        return None


def first_table(paths: Iterable[Path]) -> tuple[pd.DataFrame | None, Path | None]:
    for path in paths:
        df = read_table(path)
        if df is not None:
            return df, path
    return None, None


def read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("could not read %s: %s", path, exc)
        return None


def png_bytes(path: Path, max_side: int = MAX_IMAGE_SIDE) -> bytes | None:
    """The image at ``path`` as PNG bytes, downscaled to ``max_side``; None if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with Image.open(path) as img:
            img.load()
            if img.format == "PNG" and max(img.size) <= max_side:
                return path.read_bytes()
            img = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB")
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return buf.getvalue()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        log.warning("could not read image %s: %s", path, exc)
        return None


def _find_col(df: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    lower = {str(c).lower(): c for c in df.columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    return None


def _not_run(missing: Sequence[Path | str], **extra: Any) -> dict:
    return {"ran": False, "missing": [str(m) for m in missing], **extra}


# ---------------------------------------------------------------------------------------------
# sections


def cohort_section(samples: pd.DataFrame, layout: ResultsLayout) -> dict:
    """Slides, patients and roles from the sample sheet, joined with the tiling summary if present."""
    base = samples[["slide_id", "patient_id", "role"]].reset_index(drop=True)
    counts = []
    for role in ("labelled", "unlabelled", "test"):
        sub = base[base["role"] == role]
        counts.append([role, str(len(sub)), str(sub["patient_id"].nunique())])
    counts.append(["all", str(len(base)), str(base["patient_id"].nunique())])
    summary = read_table(layout.tiling_summary)
    tiled = summary is not None and "slide_id" in summary.columns
    if tiled:
        summary = summary.copy()
        summary["slide_id"] = summary["slide_id"].astype(str)
        extra = [c for c in summary.columns if c not in ("patient_id", "role")]
        table = base.merge(summary[extra], on="slide_id", how="left")
    else:
        table = base
    return {
        "ran": True,
        "tiled": tiled,
        "summary_path": str(layout.tiling_summary),
        "counts": Table(["role", "slides", "patients"], counts, [False, True, True]),
        "n_slides": len(base),
        "n_patients": base["patient_id"].nunique(),
        "table": frame_table(table),
    }


def tiling_section(samples: pd.DataFrame, layout: ResultsLayout, figures: list[Figure]) -> dict:
    """Tissue-detection QC thumbnails, one per slide."""
    thumbs, missing = [], []
    for slide, role in zip(samples["slide_id"], samples["role"]):
        png = png_bytes(layout.tissue_qc(slide), max_side=600)
        if png is None:
            missing.append(str(layout.tissue_qc(slide)))
            continue
        if len(thumbs) < MAX_QC_THUMBNAILS:
            fig = Figure("tiling", f"qc_{slide}", png, f"{slide} ({role})")
            figures.append(fig)
            thumbs.append(fig)
    if not thumbs:
        return _not_run(missing[:3] + (["…"] if len(missing) > 3 else []))
    return {"ran": True, "thumbs": thumbs, "n_missing": len(missing), "capped": len(samples) > MAX_QC_THUMBNAILS}


def diffusion_section(layout: ResultsLayout, figures: list[Figure]) -> dict:
    """Training curves from ``train_log.csv``, the latest sample grid and the saved model's files."""
    logdf = read_table(layout.train_log)
    grids = layout.sample_grids()
    model_files = sorted(p for p in layout.diffusion_model.rglob("*") if p.is_file()) \
        if layout.diffusion_model.is_dir() else []
    if logdf is None and not grids and not model_files:
        return _not_run([layout.train_log, layout.diffusion_model])
    out: dict[str, Any] = {"ran": True, "curve": None, "grid": None, "stats": None, "model_files": None}
    if logdf is not None and len(logdf):
        step_col = _find_col(logdf, ["step", "global_step", "iteration", "iter"])
        if step_col is None:
            logdf = logdf.reset_index(names="row")
            step_col = "row"
        loss_cols = [c for c in logdf.columns if "loss" in str(c).lower()
                     and pd.api.types.is_numeric_dtype(logdf[c])]
        lr_col = _find_col(logdf, ["lr", "learning_rate"])
        stats = {"optimizer steps logged": fmt(logdf[step_col].max()), "log rows": str(len(logdf))}
        tail = logdf.tail(max(1, len(logdf) // 20))
        for col in loss_cols:
            stats[f"{col}, mean of last {len(tail)} rows"] = fmt(pd.to_numeric(tail[col], errors="coerce").mean(), 4)
        speed = [c for c in logdf.columns if "/s" in str(c) or "per_s" in str(c).lower()]
        for col in speed:
            stats[f"median {col}"] = fmt(pd.to_numeric(logdf[col], errors="coerce").median(), 2)
        out["stats"] = stats
        if loss_cols:
            fig = Figure("diffusion", "training_curves", plots.training_curves(logdf, step_col, loss_cols, lr_col),
                         "Diffusion training loss vs optimizer step")
            figures.append(fig)
            out["curve"] = fig
    for grid in reversed(grids):
        png = png_bytes(grid)
        if png is not None:
            fig = Figure("diffusion", "latest_samples", png, f"Latest sample grid: {grid.name}")
            figures.append(fig)
            out["grid"] = fig
            out["grid_name"] = str(grid.relative_to(layout.root)) if grid.is_relative_to(layout.root) else grid.name
            break
    if model_files:
        out["model_files"] = Table(
            ["file", "MiB"],
            [[str(p.relative_to(layout.diffusion_model)), f"{p.stat().st_size / 2**20:.2f}"] for p in model_files],
            [False, True],
        )
    return out


def segmentation_section(layout: ResultsLayout, figures: list[Figure]) -> dict:
    """Training curves of every segmentation arm, overlaid, to check that each arm converged."""
    paths = layout.seg_train_logs()
    logs = {}
    for arm, path in paths.items():
        df = read_table(path)
        if df is not None and len(df) and "step" in df.columns and "loss" in df.columns:
            logs[arm] = df
    if not logs:
        return _not_run([layout.root / TEMPLATES_SEG_RUN / "train_log.csv"])
    val_col = next((c for c in ("val_macro_dice", "val_dice", "val_loss")
                    if any(c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any()
                           for df in logs.values())), None)
    fig = Figure("segmentation", "training_curves", plots.arm_training_curves(logs, "loss", val_col),
                 "Segmentation training per arm")
    figures.append(fig)
    rows = []
    for arm, df in logs.items():
        tail = df.tail(max(1, len(df) // 20))
        last_val = pd.to_numeric(df[val_col], errors="coerce").dropna() if val_col in df.columns else pd.Series([])
        rows.append([arm, fmt(df["step"].max()), fmt(pd.to_numeric(tail["loss"], errors="coerce").mean(), 4),
                     fmt(last_val.iloc[-1] if len(last_val) else None)])
    table = Table(["arm", "steps", "loss, mean of last 5%", f"last {val_col or 'validation'}"], rows,
                  [False, True, True, True])
    return {"ran": True, "curve": fig, "table": table}


SIDE_LABELS = {"generated": "generated", "style": "real: this slide", "source": "real: labelled slides"}


def _stats_view(stats: Any) -> dict:
    """Style-fidelity numbers of one slide: headline scalars, and a side-by-side table.

    Entries that are mappings with shared keys (``generated``/``style``/``source`` with
    ``mean``/``std``/``pixels``) become columns, one row per statistic and channel, so generated
    and real stain statistics sit next to each other. Anything else is listed as key: value.
    """
    if not isinstance(stats, Mapping):
        return {"scalars": {"value": fmt(stats)}, "numeric": [], "table": None}
    channels = stats.get("channels") if isinstance(stats.get("channels"), list) else None
    sides = [k for k, v in stats.items() if isinstance(v, Mapping)]
    scalars = {str(k): fmt(v) for k, v in stats.items()
               if k not in sides and k not in ("channels", "slide_id")}
    numeric = [str(k) for k, v in stats.items() if k in scalars and (v is None or isinstance(v, (int, float)))]
    if not sides:
        return {"scalars": scalars, "numeric": numeric, "table": None}
    keys: list[str] = []
    for side in sides:
        keys += [k for k in stats[side] if k not in keys]
    rows = []
    for key in keys:
        values = [stats[side].get(key) for side in sides]
        n = max((len(v) for v in values if isinstance(v, list)), default=0)
        if n and channels and len(channels) == n:  # one row per channel
            for i, ch in enumerate(channels):
                rows.append([f"{key} {ch}"] + [fmt(v[i]) if isinstance(v, list) and len(v) == n else fmt(v)
                                              for v in values])
        else:
            rows.append([str(key)] + [fmt(v) for v in values])
    header = ["statistic"] + [SIDE_LABELS.get(side, str(side)) for side in sides]
    return {"scalars": scalars, "numeric": numeric, "table": Table(header, rows, [False] + [True] * len(sides))}


def synthesis_section(samples: pd.DataFrame, layout: ResultsLayout, figures: list[Figure]) -> dict:
    """Per unlabelled (unseen) slide: the synthesis montage and its style-fidelity numbers."""
    slides = samples.loc[samples["role"] == "unlabelled", "slide_id"].tolist()
    items = []
    for slide in slides:
        png = png_bytes(layout.synthesis_montage(slide))
        stats = read_json(layout.synthesis_stats(slide))
        if png is None and stats is None:
            continue
        fig = None
        if png is not None:
            fig = Figure("synthesis", f"montage_{slide}", png, f"Synthetic tiles in the style of {slide}")
            figures.append(fig)
        items.append({"slide": slide, "montage": fig, "stats": None if stats is None else _stats_view(stats)})
    if not items:
        missing = [layout.synthesis_montage(s) for s in slides[:2]] or ["no unlabelled slides in the sample sheet"]
        return _not_run(missing)
    # one overview row per slide with the headline numbers every slide has
    keys = [k for k in (items[0]["stats"] or {"numeric": []})["numeric"]
            if all(it["stats"] and k in it["stats"]["numeric"] for it in items)]
    overview = None
    if keys and len(items) > 1:
        overview = Table(["slide"] + keys, [[it["slide"]] + [it["stats"]["scalars"][k] for k in keys] for it in items],
                         [False] + [True] * len(keys))
    return {"ran": True, "items": items, "n_slides": len(slides), "overview": overview}


@dataclass
class PatientScores:
    """The per-patient table with its arm, patient and headline-metric columns identified."""

    df: pd.DataFrame
    arm: str
    patient: str
    metric: str
    arms: list[str]
    patients: list[str]

    def values(self) -> pd.DataFrame:
        return pd.DataFrame({"arm": self.df[self.arm].astype(str), "patient": self.df[self.patient].astype(str),
                             "value": pd.to_numeric(self.df[self.metric], errors="coerce")})


def patient_scores(df: pd.DataFrame | None, arm_order: Sequence[str]) -> PatientScores | None:
    """Identify the columns of the per-patient table; None if it lacks an arm, patient or Dice column."""
    if df is None or not len(df):
        return None
    arm = _find_col(df, ["arm"])
    patient = _find_col(df, ["patient_id", "patient"])
    metric = _find_col(df, ["dice_macro", "macro_dice", "dice_mean", "mean_dice", "dice"])
    if metric is None:
        metric = next((c for c in df.columns if "dice" in str(c).lower() and "macro" in str(c).lower()), None)
    if metric is None:
        metric = next((c for c in df.columns if "dice" in str(c).lower()
                       and pd.api.types.is_numeric_dtype(df[c])), None)
    if arm is None or patient is None or metric is None:
        return None
    df = df.copy()
    df[arm] = df[arm].astype(str)
    df[patient] = df[patient].astype(str)
    present = list(dict.fromkeys(df[arm]))
    arms = [a for a in arm_order if a in present] + [a for a in present if a not in arm_order]
    patients = sorted(df[patient].unique(), key=_natural_key)
    return PatientScores(df, arm, patient, metric, arms, patients)


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def _variability(summary_arms: Mapping, scores: PatientScores | None) -> Table:
    """Per arm: spread of per-patient Dice (std, IQR, worst), from the summary and the table."""
    arms = list(summary_arms) or (scores.arms if scores else [])
    if scores:
        arms += [a for a in scores.arms if a not in arms]
    cols = ["arm", "n patients", "mean Dice", "std", "IQR", "median", "worst", "mean IoU"]
    rows = []
    vals = scores.values() if scores else None
    iou_col = _find_col(scores.df, ["macro_iou", "iou_macro", "mean_iou", "iou"]) if scores else None
    iou_means = {} if iou_col is None else \
        pd.to_numeric(scores.df[iou_col], errors="coerce").groupby(scores.df[scores.arm]).mean().to_dict()
    for arm in arms:
        s = summary_arms.get(arm, {}) if isinstance(summary_arms.get(arm, {}), Mapping) else {}
        v = vals.loc[vals["arm"] == arm, "value"].dropna().to_numpy() if vals is not None else np.array([])
        iqr = s.get("iqr_dice")
        if iqr is None and len(v):
            q1, q3 = np.percentile(v, [25, 75])
            iqr = float(q3 - q1)
        rows.append([
            arm,
            fmt(s.get("n_patients", len(v) if len(v) else None)),
            fmt(s.get("mean_dice", float(v.mean()) if len(v) else None)),
            fmt(s.get("std_dice", float(v.std(ddof=1)) if len(v) > 1 else None)),
            fmt(iqr),
            fmt(s.get("median_dice", float(np.median(v)) if len(v) else None)),
            fmt(s.get("worst_dice", float(v.min()) if len(v) else None)),
            fmt(s.get("mean_iou", iou_means.get(arm))),
        ])
    return Table(cols, rows, [False] + [True] * (len(cols) - 1))


def _per_class(summary_arms: Mapping) -> Table | None:
    """One row per arm x class with whatever per-class numbers the summary holds."""
    rows, metrics = [], []
    for arm, s in summary_arms.items():
        per_class = s.get("per_class") if isinstance(s, Mapping) else None
        if not isinstance(per_class, Mapping):
            continue
        for cls, v in per_class.items():
            v = v if isinstance(v, Mapping) else {"value": v}
            metrics += [m for m in v if m not in metrics]
            rows.append((str(arm), str(cls), v))
    if not rows:
        return None
    table = [[arm, cls] + [fmt(v.get(m)) for m in metrics] for arm, cls, v in rows]
    return Table(["arm", "class"] + [str(m) for m in metrics], table, [False, False] + [True] * len(metrics))


def _comparisons(comparisons: Any) -> Table | None:
    if not isinstance(comparisons, list) or not comparisons:
        return None
    keys = ["arm", "baseline", "mean_diff", "ci95", "wilcoxon_p"]
    extra = []
    for comp in comparisons:
        if isinstance(comp, Mapping):
            extra += [k for k in comp if k not in keys and k not in extra]
    header = ["arm", "baseline", "mean difference", "95% CI", "Wilcoxon p"] + [str(k) for k in extra]
    rows = []
    for comp in comparisons:
        if not isinstance(comp, Mapping):
            continue
        rows.append([fmt(comp.get("arm")), fmt(comp.get("baseline")), fmt(comp.get("mean_diff")),
                     fmt(comp.get("ci95")), fmt_p(comp.get("wilcoxon_p"))] + [fmt(comp.get(k)) for k in extra])
    return Table(header, rows, [False, False] + [True] * (len(header) - 2))


def evaluation_section(layout: ResultsLayout, figures: list[Figure]) -> dict:
    """Per-patient metrics per arm, their spread, and the paired comparisons between arms."""
    summary = read_json(layout.eval_summary)
    per_patient, pp_path = first_table(layout.per_patient)
    if summary is None and per_patient is None:
        return _not_run([layout.eval_summary, *layout.per_patient])
    summary = summary if isinstance(summary, Mapping) else {}
    summary_arms = summary.get("arms") if isinstance(summary.get("arms"), Mapping) else {}
    scores = patient_scores(per_patient, list(summary_arms))
    out: dict[str, Any] = {
        "ran": True,
        "unit": summary.get("unit", "patient"),
        "variability": _variability(summary_arms, scores),
        "per_class": _per_class(summary_arms),
        "comparisons": _comparisons(summary.get("comparisons")),
        "metric": scores.metric if scores else None,
        "per_arm": [],
        "box": None,
        "bars": None,
        "per_patient_note": None,
    }
    if scores is None:
        out["per_patient_note"] = (f"{pp_path} has no arm / patient / Dice columns" if per_patient is not None
                                   else "per-patient table not found: " + ", ".join(map(str, layout.per_patient)))
        return out
    values = scores.values()
    box = Figure("evaluation", "per_patient_box", plots.per_patient_box(values, scores.arms, scores.metric),
                 f"Per-patient {scores.metric} per arm (one point per patient)")
    bars = Figure("evaluation", "per_patient_bars",
                  plots.per_patient_bars(values, scores.arms, scores.patients, scores.metric),
                  f"Per-patient {scores.metric}, grouped by patient")
    figures += [box, bars]
    out["box"], out["bars"] = box, bars
    metric_cols = [c for c in scores.df.columns if c not in (scores.arm, scores.patient)
                   and not str(c).lower().startswith("confusion")]  # matrices are for machines
    for arm in scores.arms:
        sub = scores.df.loc[scores.df[scores.arm] == arm, [scores.patient] + metric_cols]
        sub = sub.sort_values(scores.patient, key=lambda s: s.map(_natural_key))
        out["per_arm"].append({"arm": arm, "table": frame_table(sub)})
    out["scores"] = scores
    return out


def focus_arm(scores: PatientScores, preferred: Sequence[str] = ("stedm",)) -> str:
    """The arm whose best and worst patients are shown: the STEDM arm if there is one, else the
    arm with the highest mean per-patient score."""
    for name in preferred:
        if name in scores.arms:
            return name
    means = scores.values().groupby("arm")["value"].mean()
    return str(means.reindex(scores.arms).idxmax())


def predictions_section(samples: pd.DataFrame, layout: ResultsLayout, evaluation: dict,
                        figures: list[Figure]) -> dict:
    """Overlays of the focus arm's best and worst patient, for every arm side by side."""
    scores: PatientScores | None = evaluation.get("scores")
    pred_root = layout.prediction_overlay("ARM", "SLIDE").parent.parent
    if scores is None:
        arms = sorted(p.name for p in pred_root.iterdir() if p.is_dir()) if pred_root.is_dir() else []
        if not arms:
            return _not_run([pred_root])
        test = samples.loc[samples["role"] == "test", ["slide_id", "patient_id"]]
        cases = [{"label": f"patient {pid}", "patient": pid, "score": None,
                  "slides": test.loc[test["patient_id"] == pid, "slide_id"].tolist()[:MAX_OVERLAY_SLIDES]}
                 for pid in list(dict.fromkeys(test["patient_id"]))[:2]]
        focus = None
    else:
        arms = scores.arms
        focus = focus_arm(scores)
        vals = scores.values()
        vals = vals[(vals["arm"] == focus) & vals["value"].notna()].sort_values(
            ["value", "patient"], ascending=[False, True])
        if vals.empty:
            return _not_run([f"no per-patient scores for arm {focus}"])
        picks = [("best", vals.iloc[0])]
        if len(vals) > 1:
            picks.append(("worst", vals.iloc[-1]))
        per_slide, _ = first_table(layout.per_slide)
        cases = []
        for label, row in picks:
            slides = _patient_slides(str(row["patient"]), samples, per_slide)
            cases.append({"label": f"{label} patient", "patient": row["patient"], "score": fmt(row["value"]),
                          "slides": slides[:MAX_OVERLAY_SLIDES]})
    n_found = 0
    for case in cases:
        grid = []
        for slide in case["slides"]:
            row = []
            for arm in arms:
                png = png_bytes(layout.prediction_overlay(arm, slide), max_side=700)
                fig = None
                if png is not None:
                    fig = Figure("predictions", f"overlay_{arm}_{slide}", png, f"{arm}: {slide}")
                    figures.append(fig)
                    n_found += 1
                row.append(fig)
            grid.append({"slide": slide, "cells": row})
        case["grid"] = grid
    if n_found == 0:
        return _not_run([layout.prediction_overlay(a, c["slides"][0] if c["slides"] else "SLIDE")
                         for a in arms[:1] for c in cases[:1]] or [pred_root])
    return {"ran": True, "arms": arms, "focus": focus, "metric": scores.metric if scores else None,
            "cases": cases}


def _patient_slides(patient: str, samples: pd.DataFrame, per_slide: pd.DataFrame | None) -> list[str]:
    """The evaluated slides of a patient: from the per-slide table, else the sample sheet's test slides."""
    if per_slide is not None:
        p = _find_col(per_slide, ["patient_id", "patient"])
        s = _find_col(per_slide, ["slide_id", "slide"])
        if p and s:
            slides = per_slide.loc[per_slide[p].astype(str) == patient, s].astype(str)
            if len(slides):
                return sorted(dict.fromkeys(slides), key=_natural_key)
    test = samples[(samples["role"] == "test") & (samples["patient_id"] == patient)]
    return test["slide_id"].tolist()


def _sum(values: pd.Series) -> float:
    return values.sum(min_count=1)  # all-missing stays missing instead of becoming 0


def compute_section(layout: ResultsLayout) -> dict:
    """Wall time and peak memory per rule and per job, from Snakemake ``benchmark:`` files."""
    root = layout.benchmarks
    # benchmarks/<rule>/<job>.tsv, where <job> may itself hold folders (e.g. <arm>/<slide>)
    files = sorted(p for p in root.rglob("*.tsv") if len(p.relative_to(root).parts) > 1) if root.is_dir() else []
    records = []
    for path in files:
        df = read_table(path)
        if df is None or not len(df):
            continue
        rule, *job = path.relative_to(root).with_suffix("").parts
        rec = {"rule": rule, "job": "/".join(job)}
        for col, how in (("s", "mean"), ("max_rss", "max"), ("cpu_time", "mean"), ("mean_load", "mean")):
            if col in df.columns:
                vals = pd.to_numeric(df[col], errors="coerce")  # "NA"/"-" for jobs too short to measure
                rec[col] = getattr(vals, how)()
        records.append(rec)
    if not records:
        return _not_run([root / "<rule>" / "<job>.tsv"])
    jobs = pd.DataFrame.from_records(records)
    for col in ("s", "max_rss", "cpu_time", "mean_load"):
        if col not in jobs.columns:
            jobs[col] = np.nan
    per_rule = jobs.groupby("rule", sort=True).agg(
        jobs=("job", "count"), total_s=("s", _sum), max_s=("s", "max"), max_rss=("max_rss", "max"),
        cpu_s=("cpu_time", _sum))
    per_rule = per_rule.reset_index().rename(columns={
        "total_s": "wall s (sum)", "max_s": "wall s (slowest job)", "max_rss": "max RSS MB",
        "cpu_s": "CPU s (sum)"})
    job_table = jobs[["rule", "job", "s", "max_rss", "cpu_time"]].rename(
        columns={"s": "wall s", "max_rss": "max RSS MB", "cpu_time": "CPU s"})
    return {"ran": True, "per_rule": frame_table(per_rule, 1), "per_job": frame_table(job_table, 1),
            "total_s": fmt(jobs["s"].sum(), 1), "n_jobs": len(jobs)}
