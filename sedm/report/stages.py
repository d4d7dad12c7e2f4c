"""The report sections of the stages before evaluation: cohort, tiling, diffusion, synthesis,
segmentation training, and the compute cost of every rule.

Each ``*_section`` returns a plain dict for the template with ``ran`` (were its inputs there?) and
``missing`` (what was looked for). Stage outputs are read by the column names their writers publish
(``sedm.<stage>.outputs``); free-form outputs (tiling summary, synthesis statistics) are shown as
they are, so a new column there appears without a change here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from sedm.config import cohort_warnings
from sedm.diffusion import outputs as D
from sedm.flags import FLAGS
from sedm.report import plots
from sedm.report.layout import ResultsLayout
from sedm.report.tables import (Figure, Table, fmt, frame_table, not_run, png_bytes, read_benchmark, read_json,
                                read_table)
from sedm.segmentation import outputs as S
from sedm.synthesis.stats import fidelity_flags
from sedm.synthesis.style_check import transfer_flags

MAX_QC_THUMBNAILS = 200


def cohort_section(samples: pd.DataFrame, layout: ResultsLayout, config: dict | None = None) -> dict:
    """Slides, patients and roles from the sample sheet, joined with the tiling summary if present, and
    the warnings `sedm validate` printed before the run (demo settings in a cohort's config, ...): a
    reader of the report may never have seen the terminal."""
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
        "flags": cohort_warnings(config, samples) if config is not None else [],
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
        return not_run(missing[:3] + (["…"] if len(missing) > 3 else []))
    return {"ran": True, "thumbs": thumbs, "n_missing": len(missing), "capped": len(samples) > MAX_QC_THUMBNAILS}


def diffusion_section(layout: ResultsLayout, figures: list[Figure]) -> dict:
    """Training curves from the run's training log, the latest sample grid and the saved model's files."""
    logdf = read_table(layout.train_log)
    grids = layout.sample_grids()
    model_files = sorted(p for p in layout.diffusion_model.rglob("*") if p.is_file()) \
        if layout.diffusion_model.is_dir() else []
    if logdf is None and not grids and not model_files:
        return not_run([layout.train_log, layout.diffusion_model])
    out: dict[str, Any] = {"ran": True, "curve": None, "grid": None, "stats": None, "model_files": None}
    if logdf is not None and len(logdf) and {D.STEP, D.LOSS} <= set(logdf.columns):
        stats = {"optimizer steps logged": fmt(logdf[D.STEP].max()), "log rows": str(len(logdf))}
        tail = logdf.tail(max(1, len(logdf) // 20))
        stats[f"{D.LOSS}, mean of last {len(tail)} rows"] = fmt(pd.to_numeric(tail[D.LOSS], errors="coerce").mean(), 4)
        for col in (c for c in D.SPEED_COLUMNS if c in logdf.columns):
            stats[f"median {col}"] = fmt(pd.to_numeric(logdf[col], errors="coerce").median(), 2)
        out["stats"] = stats
        lr_col = D.LR if D.LR in logdf.columns else None
        fig = Figure("diffusion", "training_curves", plots.training_curves(logdf, D.STEP, [D.LOSS], lr_col),
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


def autoencoder_section(layout: ResultsLayout, figures: list[Figure]) -> dict:
    """The cohort autoencoder's reconstruction and colour fidelity (``qa.json``), its montage, and the
    segmenter's Dice on its reconstructions (``layout_fidelity.json``): the ceiling of latent synthesis."""
    qa = read_json(layout.autoencoder_qa)
    if qa is None:
        return not_run([layout.autoencoder_qa])
    rows = []
    for name in ("autoencoder", "layout_decoder"):
        block = qa.get(name)
        if block:
            err, spread = block["od_error_abs"], block["slide_od_spread"]
            rows.append([name.replace("_", " "), fmt(block["psnr"], 1), fmt(block["ssim"]),
                         *(f"{fmt(err[c], 3)} ({fmt(spread[c], 3)})" for c in ("H", "E", "D"))])
    table = Table(["decoder", "PSNR (dB)", "SSIM", "|OD error| H (slide spread)", "E", "D"], rows,
                  [False, True, True, True, True, True])
    out: dict[str, Any] = {"ran": True, "table": table, "crops": qa.get("crops"), "montage": None, "ceiling": None}
    png = png_bytes(layout.autoencoder_montage)
    if png is not None:
        out["montage"] = Figure("autoencoder", "montage", png, "Rows: original crops, autoencoder, layout decoder")
        figures.append(out["montage"])
    ceiling = (read_json(layout.layout_fidelity) or {}).get("autoencoder")
    if ceiling:
        out["ceiling"] = {f"{k.replace('_', ' ')}": fmt(v) for k, v in ceiling["macro_dice"].items()}
        out["ceiling_tiles"] = ceiling["tiles"]
        out["texture_sigma"] = ceiling.get("texture_sigma")
    return out


def segmentation_section(layout: ResultsLayout, figures: list[Figure]) -> dict:
    """Training curves of every segmentation arm, overlaid, to check that each arm converged."""
    logs = {}
    for arm, path in layout.seg_train_logs().items():
        df = read_table(path)
        if df is not None and len(df) and {S.STEP, S.LOSS} <= set(df.columns):
            logs[arm] = df
    if not logs:
        return not_run([layout.seg_train_log_pattern])
    has_val = any(S.VAL_DICE in df.columns and pd.to_numeric(df[S.VAL_DICE], errors="coerce").notna().any()
                  for df in logs.values())
    val_col = S.VAL_DICE if has_val else None
    fig = Figure("segmentation", "training_curves", plots.arm_training_curves(logs, S.LOSS, val_col),
                 "Segmentation training per arm")
    figures.append(fig)
    rows = []
    for arm, df in logs.items():
        tail = df.tail(max(1, len(df) // 20))
        last_val = pd.to_numeric(df[val_col], errors="coerce").dropna() if val_col in df.columns else pd.Series([])
        rows.append([arm, fmt(df[S.STEP].max()), fmt(pd.to_numeric(tail[S.LOSS], errors="coerce").mean(), 4),
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
               if k not in sides and k not in ("channels", "slide_id", FLAGS)}
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
        flags = fidelity_flags(stats) if isinstance(stats, Mapping) else []
        items.append({"slide": slide, "montage": fig, "stats": None if stats is None else _stats_view(stats),
                      "flags": flags})
    if not items:
        missing = [layout.synthesis_montage(s) for s in slides[:2]] or ["no unlabelled slides in the sample sheet"]
        return not_run(missing)
    # one overview row per slide with the headline numbers every slide has
    keys = [k for k in (items[0]["stats"] or {"numeric": []})["numeric"]
            if all(it["stats"] and k in it["stats"]["numeric"] for it in items)]
    overview = None
    if keys and len(items) > 1:
        overview = Table(["slide"] + keys + [""],
                         [[it["slide"]] + [it["stats"]["scalars"][k] for k in keys] + ["flagged" if it["flags"] else ""]
                          for it in items], [False] + [True] * len(keys) + [False])
    return {"ran": True, "items": items, "n_slides": len(slides), "overview": overview,
            "memorisation": memorisation_table(slides, layout)}


def memorisation_table(slides: list[str], layout: ResultsLayout) -> Table | None:
    """One row per synthetic set of ``sedm near-copies``: near-copies, and the nearest-neighbour
    distances of its tiles next to the real-to-real ones; None when no set has been checked."""
    rows = []
    for slide in slides:
        m = read_json(layout.memorisation(slide))
        if not isinstance(m, Mapping):
            continue
        syn, real, source = m.get("synthetic") or {}, m.get("real_to_real") or {}, m.get("source") or {}
        nc, threshold = m.get("near_copies") or {}, m.get("threshold") or {}
        share = nc.get("share")
        share = fmt(None if share is None else 100 * share, 1)
        rows.append([slide, fmt(m.get("n_checked")), f"{fmt(nc.get('count'))} ({share} %)",
                     fmt(syn.get("median")), fmt(syn.get("p5")), fmt(real.get("median")), fmt(real.get("p5")),
                     fmt(source.get("median")), fmt(threshold.get("distance"))])
    if not rows:
        return None
    return Table(["synthetic set", "tiles checked", "near-copies (share)", "NN distance: median", "5th pct",
                  "real-to-real: median", "5th pct", "to own layout source: median", "near-copy below"], rows,
                 [False] + [True] * 8)


def style_transfer_section(layout: ResultsLayout, figures: list[Figure]) -> dict:
    """Does the model take style from its style patches (``sedm style-check``), and do its tiles carry
    what makes a class recognisable (``sedm layout-fidelity``)? Headline numbers, pairs, style grid."""
    check, fidelity = read_json(layout.style_check), read_json(layout.layout_fidelity)
    if check is None and fidelity is None:
        return not_run([layout.style_check, layout.layout_fidelity])
    out: dict[str, Any] = {"ran": True, "headline": {}, "pairs": None, "grid": None, "flags": []}
    if check is not None:
        out["flags"] = transfer_flags(check)
        t, s, chance = check["transfer"], check["separability"], check.get("transfer_random_init", {})
        out["headline"].update({
            "transfer ratio (median over pairs)": fmt(t["median"]),
            "transfer ratio (worst pair)": fmt(t["min"]),
            "... of a randomly initialised model (chance): median, worst pair":
                f"{fmt(chance.get('median'))}, {fmt(chance.get('min'))}",
            "pairs of style sources": f"{t['n_pairs']} ({t['n_skipped']} skipped: styles too alike)",
            "style separability, trained model": fmt(s["trained"]),
            "style separability, random init": fmt(s["random_init"]),
        })
        matched = float(check.get("sampling", {}).get("stain_match") or 0)
        if matched > 0:
            out["headline"]["stain matching after decoding (synthesis.stain_match)"] = (
                f"{fmt(matched)}: outputs are restained toward their style patches, so the transfer ratio "
                "measures the matching as much as the model; the random-init model's, matched alike, is the "
                "baseline")
        learned, learned_chance = check.get("transfer_learned"), check.get("transfer_learned_random_init") or {}
        if learned:
            out["headline"]["the learned pathway alone (stain matching off): median, worst pair (random init)"] = (
                f"{fmt(learned['median'])}, {fmt(learned['min'])} ({fmt(learned_chance.get('median'))}, "
                f"{fmt(learned_chance.get('min'))})")
        out["pairs"] = Table(["style A", "style B", "style distance (OD)", "output distance (OD)", "transfer ratio",
                              "distance ratio"],
                             [[p["a"], p["b"], fmt(p["style_distance"]), fmt(p["output_distance"]), fmt(p["ratio"]),
                               fmt(p.get("distance_ratio"))] for p in t["pairs"]],
                             [False, False, True, True, True, True])
        png = png_bytes(layout.style_grid)
        if png is not None:
            out["grid"] = Figure("synthesis", "style_grid", png, "Style grid: rows = layouts, columns = the "
                                 "unlabelled slides' styles (top: one of their style patches)")
            figures.append(out["grid"])
    if fidelity is not None:
        out["headline"].update({
            f"layout fidelity: {fidelity.get('arm')} arm's macro Dice on synthetic tiles": fmt(fidelity["macro_dice"]),
            "... on real validation tiles": fmt(fidelity.get("real_val_macro_dice")),
        })
        if "restained_real_val_macro_dice" in fidelity:
            out["headline"]["... on the same validation tiles restained like the synthetic ones (stain matching: "
                            "the judge's own stain gap; what remains below it is the generator's)"] = fmt(
                fidelity["restained_real_val_macro_dice"])
        robust = fidelity.get("stain_robust")
        if robust:
            restained = (f", restained validation {fmt(robust['restained_real_val_macro_dice'])}"
                         if "restained_real_val_macro_dice" in robust else "")
            out["headline"].update({
                f"... by the stain-augmented {robust['arm']} arm (knows every stain): synthetic, real validation":
                    f"{fmt(robust['macro_dice'])}, {fmt(robust.get('real_val_macro_dice'))}{restained}"})
    return out


def _sum(values: pd.Series) -> float:
    return values.sum(min_count=1)  # all-missing stays missing instead of becoming 0


def compute_section(layout: ResultsLayout) -> dict:
    """Wall time and peak memory per rule and per job, from Snakemake ``benchmark:`` files."""
    root = layout.benchmarks
    # benchmarks/<rule>/<job>.tsv, where <job> may itself hold folders (e.g. <arm>/<slide>)
    files = sorted(p for p in root.rglob("*.tsv") if len(p.relative_to(root).parts) > 1) if root.is_dir() else []
    records = []
    for path in files:
        bench = read_benchmark(path)
        if bench is None:
            continue
        rule, *job = path.relative_to(root).with_suffix("").parts
        records.append({"rule": rule, "job": "/".join(job), **bench})
    if not records:
        return not_run([root / "<rule>" / "<job>.tsv"])
    jobs = pd.DataFrame.from_records(records)
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
