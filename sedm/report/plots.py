"""The report's figures, as PNG bytes.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot global state, no
display needed) and saved without a timestamp or version stamp, so the same inputs give
byte-identical PNGs and the report is reproducible. matplotlib is imported on the first figure, not with
the module: `sedm report --help` and a report's start-up do not pay for it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
_STYLE = {
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")  # headless on clusters; must precede any pyplot import elsewhere
    return matplotlib


def _style():
    return _matplotlib().rc_context(_STYLE)


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    with _style():
        return Figure(figsize=(width, height), layout="constrained")


def _colours(n: int) -> list:
    cmap = _matplotlib().colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def training_curves(log: pd.DataFrame, step_col: str, loss_cols: Sequence[str], lr_col: str | None) -> bytes:
    """Loss vs optimizer step (raw, faint, plus a rolling mean) and, when logged, the learning rate.

    Diffusion losses are noisy per step; the rolling mean over ~2% of the run shows the trend.
    """
    with _style():
        fig = _figure(6.4, 4.4 if lr_col else 3.4)
        if lr_col:
            ax, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        else:
            ax, ax_lr = fig.subplots(1, 1), None
        steps = log[step_col].to_numpy()
        window = max(1, len(log) // 50)
        for colour, col in zip(_colours(len(loss_cols)), loss_cols):
            values = pd.to_numeric(log[col], errors="coerce")
            ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
            smooth = values.rolling(window, min_periods=1).mean()
            ax.plot(steps, smooth, color=colour, linewidth=1.6, label=f"{col} (rolling mean over {window} log rows)")
        positive = np.concatenate([pd.to_numeric(log[c], errors="coerce").to_numpy() for c in loss_cols])
        positive = positive[np.isfinite(positive)]
        if len(positive) and (positive > 0).all() and positive.max() / positive.min() > 20:
            ax.set_yscale("log")
        ax.set_ylabel("loss")
        ax.legend(loc="upper right", frameon=False)
        if ax_lr is not None:
            ax_lr.plot(steps, pd.to_numeric(log[lr_col], errors="coerce"), color="0.3", linewidth=1.2)
            ax_lr.set_ylabel(lr_col)
            ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0), useOffset=False)
            ax_lr.set_xlabel(step_col)
        else:
            ax.set_xlabel(step_col)
        return _png(fig)


def per_patient_box(values: pd.DataFrame, arms: Sequence[str], metric: str) -> bytes:
    """Box plot per arm with every patient drawn as a point (``values``: columns arm, patient, value).

    Each point is one patient, so the spread between patients (the quantity the evaluation is
    about) is visible rather than summarised away. Jitter is seeded: the figure is deterministic.
    """
    rng = np.random.default_rng(0)
    with _style():
        fig = _figure(max(4.0, 1.2 * len(arms) + 1.5), 3.6)
        ax = fig.subplots()
        data = [values.loc[values["arm"] == arm, "value"].dropna().to_numpy() for arm in arms]
        ax.boxplot(data, positions=range(len(arms)), widths=0.5, showfliers=False,
                   medianprops={"color": "black"})
        for i, (colour, points) in enumerate(zip(_colours(len(arms)), data)):
            jitter = rng.uniform(-0.15, 0.15, size=len(points))
            ax.scatter(i + jitter, points, s=22, color=colour, edgecolor="black", linewidth=0.4, zorder=3)
        ax.set_xticks(range(len(arms)), labels=list(arms))
        ax.set_ylabel(f"per-patient {metric}")
        ax.set_xlabel("arm")
        return _png(fig)


def per_patient_bars(values: pd.DataFrame, arms: Sequence[str], patients: Sequence[str], metric: str) -> bytes:
    """Grouped bars: one group per patient, one bar per arm, to see which patients an arm helps."""
    table = values.pivot_table(index="patient", columns="arm", values="value", aggfunc="mean")
    table = table.reindex(index=list(patients), columns=list(arms))
    with _style():
        fig = _figure(min(13.0, max(5.0, 0.3 * len(patients) * max(1, len(arms)) + 2)), 3.6)
        ax = fig.subplots()
        width = 0.8 / max(1, len(arms))
        x = np.arange(len(patients))
        for j, (colour, arm) in enumerate(zip(_colours(len(arms)), arms)):
            ax.bar(x + (j - (len(arms) - 1) / 2) * width, table[arm].to_numpy(), width, color=colour, label=arm)
        ax.set_xticks(x, labels=list(patients), rotation=45 if len(patients) > 8 else 0, ha="right"
                      if len(patients) > 8 else "center")
        ax.set_ylabel(metric)
        ax.set_xlabel("patient")
        ax.legend(frameon=False, ncols=min(len(arms), 4), loc="lower left", bbox_to_anchor=(0, 1))
        return _png(fig)


def arm_training_curves(logs: dict[str, pd.DataFrame], loss_col: str, val_col: str | None) -> bytes:
    """Segmentation training per arm: loss (rolling mean) and, when logged, validation score."""
    with _style():
        fig = _figure(6.4, 3.4)
        axes = fig.subplots(1, 2 if val_col else 1)
        ax, ax_val = (axes[0], axes[1]) if val_col else (axes, None)
        for colour, (arm, log) in zip(_colours(len(logs)), logs.items()):
            loss = pd.to_numeric(log[loss_col], errors="coerce")
            window = max(1, len(log) // 50)
            ax.plot(log["step"], loss.rolling(window, min_periods=1).mean(), color=colour, linewidth=1.4, label=arm)
            if ax_val is not None and val_col in log.columns:
                val = pd.to_numeric(log[val_col], errors="coerce")
                keep = val.notna()
                ax_val.plot(log["step"][keep], val[keep], color=colour, linewidth=1.4, marker="o", markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{loss_col} (rolling mean)")
        ax.legend(frameon=False)
        if ax_val is not None:
            ax_val.set_xlabel("step")
            ax_val.set_ylabel(val_col)
        return _png(fig)


ROLE_MARKERS = {"labelled": ("o", "tab:blue"), "unlabelled": ("^", "tab:orange"), "test": ("s", "tab:red")}
"""Marker and colour of each slide role in the style map."""


def style_map(points: pd.DataFrame, synthetic: pd.DataFrame, axis_labels: Sequence[str]) -> bytes:
    """Every slide as a point of the 2-D style map, marked by role and named; each synthetic set (grey
    cross) joined to its source slide by a dotted line. ``points``: slide_id, role, x, y;
    ``synthetic``: slide_id (its source), x, y."""
    with _style():
        fig = _figure(6.4, 5.0)
        ax = fig.subplots()
        where = points.set_index("slide_id")
        for _, row in synthetic.iterrows():
            if row["slide_id"] in where.index:
                src = where.loc[row["slide_id"]]
                ax.plot([src["x"], row["x"]], [src["y"], row["y"]], ":", color="0.5", linewidth=1)
        if len(synthetic):
            ax.scatter(synthetic["x"], synthetic["y"], marker="x", s=40, color="0.35", label="synthetic set", zorder=3)
        for role, (marker, colour) in ROLE_MARKERS.items():
            sub = points[points["role"] == role]
            if len(sub):
                ax.scatter(sub["x"], sub["y"], marker=marker, s=46, color=colour, edgecolor="black", linewidth=0.4,
                           label=role, zorder=4)
        for _, row in points.iterrows():
            ax.annotate(str(row["slide_id"]), (row["x"], row["y"]), xytext=(4, 3), textcoords="offset points",
                        fontsize=8)
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1] if len(axis_labels) > 1 else "")
        ax.legend(frameon=False, fontsize=8, loc="best")
        return _png(fig)


def gain_vs_distance(values: pd.DataFrame, arms: Sequence[str], baseline: str | None, distance_label: str) -> bytes:
    """Per arm, per-patient Dice (left) and gain over the baseline (right) against the patient's
    style distance; ``values``: patient, arm, distance, dice, gain (NaN for the baseline)."""
    with _style():
        gain_arms = [a for a in arms if a != baseline] if baseline else []
        fig = _figure(9.6 if gain_arms else 5.0, 3.6)
        axes = fig.subplots(1, 2 if gain_arms else 1)
        ax_d, ax_g = (axes[0], axes[1]) if gain_arms else (axes, None)
        for colour, arm in zip(_colours(len(arms)), arms):
            sub = values[values["arm"] == arm].sort_values("distance")
            ax_d.plot(sub["distance"], sub["dice"], "o", color=colour, label=arm, markersize=5)
            if ax_g is not None and arm in gain_arms:
                ax_g.plot(sub["distance"], sub["gain"], "o", color=colour, label=arm, markersize=5)
        ax_d.set_xlabel(distance_label)
        ax_d.set_ylabel("per-patient macro Dice")
        ax_d.legend(frameon=False, fontsize=8)
        if ax_g is not None:
            ax_g.axhline(0, color="0.4", linewidth=0.8)
            ax_g.set_xlabel(distance_label)
            ax_g.set_ylabel(f"gain over {baseline}")
        return _png(fig)


GAIN_PANELS = (("mean", "mean over patients"), ("worst", "worst patient"))
"""The two gains of an arm over the baseline (columns of the points given) and their panel titles."""


def _gain_points(ax, x: pd.Series, sub: pd.DataFrame, kind: str, colour) -> None:
    """Points with their CI as a vertical line (a CI need not contain its estimate, e.g. of the worst
    patient, so it is drawn as bounds, not as error bars); open markers for descriptive comparisons."""
    lo, hi = sub[f"{kind}_lo"].to_numpy(float), sub[f"{kind}_hi"].to_numpy(float)
    ci = np.isfinite(lo) & np.isfinite(hi)
    ax.vlines(x.to_numpy()[ci], lo[ci], hi[ci], color=colour, linewidth=1.2, alpha=0.7)
    descriptive = sub["descriptive"].to_numpy(bool)
    for mask, face in ((~descriptive, colour), (descriptive, "white")):
        ax.scatter(x.to_numpy()[mask], sub[kind].to_numpy(float)[mask], s=34, facecolor=face, edgecolor=colour,
                   linewidth=1.4, zorder=3)


def _gain_axes(fig: Figure, baseline: str, xlabel: str) -> list:
    axes = list(fig.subplots(1, len(GAIN_PANELS), sharex=True))
    for ax, (_, title) in zip(axes, GAIN_PANELS):
        ax.axhline(0, color="0.4", linewidth=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"Dice gain over {baseline}: {title}")
    return axes


def _descriptive_handle(axes: list, points: pd.DataFrame) -> None:
    """A legend entry for the open markers when any point is descriptive."""
    if points["descriptive"].any():
        axes[-1].scatter([], [], s=34, facecolor="white", edgecolor="0.3", linewidth=1.4,
                         label="descriptive (too few patients)")
        axes[-1].legend(frameon=False, fontsize=8)


def gain_vs_share(points: pd.DataFrame, baseline: str) -> bytes:
    """Per synthetic arm family (a line), its gain over the baseline against the share of synthetic
    samples per batch, on the mean over patients (left) and the worst patient (right), with CIs.
    ``points``: family, share, mean, mean_lo, mean_hi, worst, worst_lo, worst_hi, descriptive."""
    with _style():
        fig = _figure(9.6, 3.8)
        axes = _gain_axes(fig, baseline, "share of synthetic samples per batch")
        families = list(dict.fromkeys(points["family"]))
        for colour, family in zip(_colours(len(families)), families):
            sub = points[points["family"] == family].sort_values("share")
            for ax, (kind, _) in zip(axes, GAIN_PANELS):
                ax.plot(sub["share"], sub[kind], "-", color=colour, linewidth=1.4,
                        label=family if ax is axes[0] else None)
                _gain_points(ax, sub["share"], sub, kind, colour)
        axes[0].legend(frameon=False, fontsize=8)
        _descriptive_handle(axes, points)
        return _png(fig)


def gain_vs_cost(points: pd.DataFrame, baseline: str) -> bytes:
    """One point per arm (coloured by family, named): its gain over the baseline against the compute it
    took, on the mean over patients (left) and the worst patient (right), with CIs.
    ``points``: arm, family, seconds, mean, mean_lo, mean_hi, worst, worst_lo, worst_hi, descriptive."""
    with _style():
        fig = _figure(9.6, 3.8)
        axes = _gain_axes(fig, baseline, "compute (wall seconds)")
        families = list(dict.fromkeys(points["family"]))
        for colour, family in zip(_colours(len(families)), families):
            sub = points[points["family"] == family]
            for ax, (kind, _) in zip(axes, GAIN_PANELS):
                _gain_points(ax, sub["seconds"], sub, kind, colour)
                for _, row in sub.iterrows():
                    ax.annotate(str(row["arm"]), (row["seconds"], row[kind]), xytext=(4, 3),
                                textcoords="offset points", fontsize=7)
        _descriptive_handle(axes, points)
        return _png(fig)
