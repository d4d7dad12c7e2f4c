"""Doubtful results are flagged where they are shown (JSON, WARNING log, report), and only then.

Every condition is tested twice: with numbers that must raise the flag and with numbers on the
other side of its threshold that must not, because a flag that always fires is as useless as one
that never does. Where a stage can run on a toy input (style table, evaluation, stylize) the test
goes through the stage and reads its file and log; the report tests change one stage output of the
report fixture at a time.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from builders import evaluation as eval_builders
from builders.report import report_cohort
from builders.segmentation import make_store as make_seg_store, write_samples as write_sheet
from sedm.cli import main
from sedm.config import load_samples, validate_config
from sedm.evaluation.evaluate import evaluate, parse_predictions
from sedm.evaluation.metrics import confusion_record, read_confusion
from sedm.evaluation.stats import DESCRIPTIVE_BELOW, paired_comparison
from sedm.flags import FLAGS, cell, warn
from sedm.labels import class_rgb
from sedm.report.build import build_report
from sedm.stain.statistics import HedAccumulator
from sedm.styles.features import FEATURES
from sedm.styles.space import fit_space, synthetic_offsets
from sedm.synthesis.stats import MIN_STYLE_FIDELITY, fidelity_flags, synthesis_stats
from sedm.synthesis.style_check import transfer_flags
from sedm.synthesis.stylize import MIN_COLOUR_TRANSFER, MIN_SSIM_LUMINANCE, output_flags, stylize
from sedm.synthesis.styles import ImageFolderStyleSource


# --------------------------------------------------------------------------------- representation
def test_warn_logs_each_flag_and_returns_them(caplog):
    log = logging.getLogger("sedm.test")
    with caplog.at_level(logging.INFO):
        assert warn(log, iter(["one", "two"]), "U1") == ["one", "two"]
        assert warn(log, []) == []
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.WARNING, "U1: one"),
                                                                    (logging.WARNING, "U1: two")]
    assert cell(["one", "two"]) == "one; two" and cell([]) == ""


# ------------------------------------------------------------------------------------ report fixture
@pytest.fixture
def report(tmp_path):
    """A results tree with nothing doubtful but its 3-patient comparison, and a function rendering it."""
    config, samples, results = report_cohort(tmp_path)

    def render() -> dict[str, str]:
        html, _ = build_report(config, load_samples(samples), results)
        return {m.group(1): m.group(2) for m in re.finditer(r'<section id="([^"]+)">(.*?)</section>', html, re.S)}

    return results, render


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_report_fixture_flags_nothing(report):
    """The control for every report test below: flags appear only where a number crosses its line."""
    _, render = report
    sections = render()
    del sections["cohort"]  # the fixture's one unlabelled slide is flagged there (tests/test_report.py)
    assert not any("Flagged:" in body or "<td>flagged</td>" in body for body in sections.values())


# ------------------------------------------------------------------- 1. transfer ratio at chance level
@pytest.mark.parametrize("median, chance, flagged", [(0.40, 0.41, True), (0.41, 0.41, True), (0.42, 0.41, False),
                                                     (None, 0.41, False), (0.40, None, False)])
def test_transfer_median_at_or_below_chance_is_flagged(median, chance, flagged):
    flags = transfer_flags({"transfer": {"median": median}, "transfer_random_init": {"median": chance}})
    assert bool(flags) == flagged
    if flagged:
        assert "at or below chance" in flags[0] and f"{median:.3f}" in flags[0]


def test_learned_transfer_at_chance_is_flagged_though_stain_matching_lifts_the_ratio():
    """With stain matching, trained and random models both read ~1; the learned pathway alone decides."""
    matched = {"transfer": {"median": 0.99}, "transfer_random_init": {"median": 0.98}}
    assert transfer_flags(matched) == []
    at_chance = transfer_flags({**matched, "transfer_learned": {"median": 0.01},
                                "transfer_learned_random_init": {"median": 0.02}})
    assert len(at_chance) == 1 and "stain matching off" in at_chance[0] and "0.010" in at_chance[0]
    assert transfer_flags({**matched, "transfer_learned": {"median": 0.30},
                           "transfer_learned_random_init": {"median": 0.02}}) == []


def test_report_flags_transfer_at_chance(report):
    results, render = report

    def at_chance(check):
        check["transfer"]["median"], check["transfer_random_init"]["median"] = 0.40, 0.45

    _edit_json(results / "synthesis/style_check.json", at_chance)
    transfer = render()["style-transfer"]
    assert re.search(r"Flagged:</strong> transfer ratio median 0\.400 is at or below chance \(randomly "
                     r"initialised model: 0\.450\)", transfer)


# ----------------------------------------------------------------------- 2. negative style fidelity
def _accumulator(rgb: tuple[int, int, int]) -> HedAccumulator:
    acc = HedAccumulator()
    rng = np.random.default_rng(sum(rgb))
    acc.add(np.clip(np.asarray(rgb) + rng.normal(0, 4, (16, 16, 3)), 0, 255).astype(np.uint8))
    return acc


@pytest.mark.parametrize("generated, flagged", [((120, 110, 200), False), ((200, 120, 60), True)])
def test_negative_style_fidelity_is_flagged(generated, flagged):
    """Target stain blue-purple, labelled slides pink: tiles near the target close the gap (fidelity > 0),
    brown tiles widen it (fidelity < 0) and are flagged in the record the stage writes."""
    stats = synthesis_stats(_accumulator(generated), _accumulator((110, 100, 210)), _accumulator((220, 130, 190)))
    assert (stats["style_fidelity"] < MIN_STYLE_FIDELITY) == flagged
    assert stats[FLAGS] == fidelity_flags(stats) and bool(stats[FLAGS]) == flagged
    if flagged:
        assert stats[FLAGS][0].startswith(f"negative style fidelity {stats['style_fidelity']:.3f}")
    assert fidelity_flags({"style_fidelity": 0.0}) == [] and fidelity_flags({"style_fidelity": None}) == []


def test_report_flags_negative_style_fidelity(report):
    results, render = report
    _edit_json(results / "synthesis/U1.stats.json", lambda s: s.update(style_fidelity=-0.25, hed_distance=0.1773))
    synthesis = render()["synthesis"]
    assert "Flagged:</strong> negative style fidelity -0.250" in synthesis
    assert "<dt>flags</dt>" not in synthesis  # shown as a flag, not as one more number


# ------------------------------------------------------- 3. synthetic set farther from its source slide
def _stats_json(path: Path, slide: str, kind: str, values: list[float]) -> Path:
    """A `sedm style-stats` record: the first features as given, the others equal on every slide."""
    features = dict.fromkeys(FEATURES, 0.5)
    features.update(zip(FEATURES, values))
    path.write_text(json.dumps({"slide_id": slide, "kind": kind, "tissue_pixels": 100, "features": features}))
    return path


@pytest.mark.parametrize("synthetic, flagged", [([1.9, 1.8], False), ([0.2, -0.1], True)])
def test_style_table_flags_synthetic_set_far_from_its_source(tmp_path, caplog, synthetic, flagged):
    """U1 lies at (2, 2), its nearest labelled slide L2 at (1, 0): a set beside U1 carries its style, one
    back at the labelled slides (farther from U1 than L2 is) does not."""
    sheet = write_sheet(tmp_path / "s.tsv", [("L1", "P1", "labelled"), ("L2", "P2", "labelled"),
                                             ("U1", "P3", "unlabelled"), ("T1", "P4", "test")])
    stats = [_stats_json(tmp_path / f"{s}.json", s, "slide", v)
             for s, v in {"L1": [0, 0], "L2": [1, 0], "U1": [2, 2], "T1": [3, 1]}.items()]
    syn = _stats_json(tmp_path / "U1.syn.json", "U1", "synthetic", synthetic)
    out = tmp_path / "cohort.tsv"
    with caplog.at_level(logging.INFO):
        assert main(["style-table", "--samples", str(sheet), "--stats", *map(str, stats), "--synthetic", str(syn),
                     "--out", str(out)]) == 0
    table = pd.read_csv(out, sep="\t", keep_default_na=False).set_index(["slide_id", "kind"])
    row = table.loc[("U1", "synthetic")]
    assert (float(row["stain_to_source"]) > float(row["stain_source_to_labelled"])) == flagged
    assert ("does not carry its source's style" in row[FLAGS]) == flagged
    assert (table.drop(index=("U1", "synthetic"))[FLAGS] == "").all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ([row[FLAGS]] if flagged else [])
    offsets = synthetic_offsets(pd.read_csv(out, sep="\t"), fit_space(pd.read_csv(out, sep="\t"), "stain"))
    assert bool(offsets.loc["U1", FLAGS]) == flagged


def test_report_flags_synthetic_set_far_from_its_source(report):
    results, render = report
    table = pd.read_csv(results / "styles/cohort.tsv", sep="\t")
    table.loc[table["kind"] == "synthetic", list(FEATURES[:2])] = [0.1, 0.0]  # beside L1, far from U1
    table.to_csv(results / "styles/cohort.tsv", sep="\t", index=False)
    styles = render()["styles"]
    assert "Flagged:</strong> synthetic set of U1 is farther from its source slide in the stain space" in styles
    assert re.search(r"<tr><td>U1</td>(<td class=\"num\">[0-9.]+</td>){2}<td>flagged</td></tr>", styles)


# ---------------------------------------------------------- 4. small-n paired comparisons: descriptive
def test_paired_comparison_is_descriptive_below_the_shared_threshold():
    """Five patients all better: the bootstrap CI excludes 0 beside the smallest p five patients allow."""
    d5 = np.array([0.1, 0.2, 0.05, 0.3, 0.15])
    small = paired_comparison(0.5 + d5, np.full(5, 0.5), 2000, 0)
    assert small["ci95"][0] > 0 and small["wilcoxon_p"] == pytest.approx(0.0625)
    assert small["descriptive"] and small["note"] == f"descriptive: 5 patients (< {DESCRIPTIVE_BELOW}); CI and p " \
                                                     "are not evidence"
    enough = paired_comparison(np.linspace(0.6, 0.9, DESCRIPTIVE_BELOW), np.full(DESCRIPTIVE_BELOW, 0.5), 200, 0)
    assert not enough["descriptive"] and enough["note"] is None


@pytest.mark.parametrize("n_patients", [5, DESCRIPTIVE_BELOW])
def test_evaluate_marks_and_warns_small_n_comparisons(tmp_path, caplog, n_patients):
    """Arm B is right everywhere, arm A one pixel wrong per patient: the same clear difference is
    descriptive over 5 patients and not over DESCRIPTIVE_BELOW, in summary.json and in the log."""
    classes = ["a", "b"]
    truth = np.array([[1, 1, 2, 2], [1, 2, 2, 0]], np.uint8)
    rows, stores = [], []
    for i in range(n_patients):
        slide = f"s{i}"
        rows.append((slide, f"P{i}", "test"))
        stores.append(eval_builders.write_truth(tmp_path / "tiles" / f"{slide}.zarr", slide, truth, classes))
        worse = truth.copy()
        worse.flat[i % 7] = 3 - worse.flat[i % 7]  # one annotated pixel called the other class
        eval_builders.write_prediction(tmp_path / "pred/A" / f"{slide}.zarr", slide, worse, classes)
        eval_builders.write_prediction(tmp_path / "pred/B" / f"{slide}.zarr", slide, truth, classes)
    sheet = write_sheet(tmp_path / "s.tsv", rows)
    cfg = validate_config({"classes": classes, "evaluation": {"baseline": "A", "n_boot": 200}})
    with caplog.at_level(logging.INFO):
        summary = evaluate(cfg, samples=load_samples(sheet), stores=stores, out=tmp_path / "eval",
                           predictions=parse_predictions([f"A={tmp_path / 'pred/A'}", f"B={tmp_path / 'pred/B'}"]))
    (comp,) = summary["comparisons"]
    small = n_patients < DESCRIPTIVE_BELOW
    assert comp["descriptive"] == small and comp["n_patients"] == n_patients
    assert json.loads((tmp_path / "eval/summary.json").read_text())["comparisons"][0]["descriptive"] == small
    (record,) = [r for r in caplog.records if r.getMessage().startswith("B - A:")]
    assert record.levelno == (logging.WARNING if small else logging.INFO)
    assert ("descriptive" in record.getMessage()) == small


def test_report_marks_small_n_comparisons_descriptive(report):
    results, render = report

    def comparison_row(**entry) -> str:
        def edit(summary):
            summary["comparisons"] = [{"arm": "stedm", "baseline": "real", "mean_diff": 0.1, "ci95": [0.05, 0.15],
                                       "wilcoxon_p": 0.125, **entry}]
        _edit_json(results / "eval/summary.json", edit)
        evaluation = render()["evaluation"]
        return re.search(r"<tr><td>stedm</td><td>real</td>(.*?)</tr>", evaluation).group(1)

    # as `sedm evaluate` writes it now, and a summary written before comparisons said so (from its n)
    assert "<td>descriptive</td>" in comparison_row(n_patients=5, descriptive=True, note="descriptive: 5 patients")
    legacy = comparison_row(n_patients=5, note=None)
    assert "<td>descriptive</td>" in legacy and f"(&lt; {DESCRIPTIVE_BELOW})" in legacy
    assert "descriptive" not in comparison_row(n_patients=12, descriptive=False, note=None)
    assert "descriptive" not in comparison_row(n_patients=12, note=None)


# ---------------------------------------------------------------- 5. stylize outputs that went wrong
@pytest.mark.parametrize("ssim, transfer, expected", [
    (MIN_SSIM_LUMINANCE, MIN_COLOUR_TRANSFER, []),
    (None, None, []),
    (0.2, 0.7, ["lost the input's structure"]),
    (0.9, -28.76, ["moved away from the style"]),
    (0.2, -28.76, ["lost the input's structure", "moved away from the style"]),
])
def test_stylize_output_flags(ssim, transfer, expected):
    flags = output_flags({"ssim_luminance": ssim, "colour_transfer": transfer})
    assert [f.split(":")[0] for f in flags] == expected


PINK, BLUE = np.array([205, 120, 175]), np.array([110, 105, 205])


class Drawer:
    """Stands in for the diffusion model so the test knows what each output does to its input's
    structure and stain: ``restain`` keeps the structure and moves toward the style patches' colour,
    ``away`` keeps it and moves away from that colour, ``noise`` is noise in the style's colour."""

    size_multiple = 8
    config = SimpleNamespace(classes=["tumour", "stroma"], n_style=2, tissue_channel=True)

    def __init__(self, how: str) -> None:
        self.how = how

    def __call__(self, labels, styles, *, seed, init_images=None, strength=1.0):
        x = init_images.astype(np.float64)
        target = styles.reshape(len(styles), -1, 3).mean(axis=1)[:, None, None, :]
        if self.how == "noise":
            out = target + np.random.default_rng(seed).normal(0, 30, x.shape)
        else:
            out = x + (0.6 if self.how == "restain" else -0.6) * (target - x.mean(axis=(1, 2), keepdims=True))
        return np.clip(out, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("how, flagged", [("restain", []), ("away", ["moved away from the style"]),
                                          ("noise", ["lost the input's structure"])])
def test_stylize_flags_outputs_in_record_and_log(tmp_path, caplog, how, flagged):
    rng = np.random.default_rng(0)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (40, 40)), 2)
    tissue = np.clip(PINK + 35 * (texture / texture.std())[..., None], 0, 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(tissue).save(tmp_path / "in/crop.png")
    (tmp_path / "style").mkdir()
    style_image = np.clip(BLUE + rng.normal(0, 5, (48, 48, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(style_image).save(tmp_path / "style/s.png")
    style = ImageFolderStyleSource(tmp_path / "style", size=16, min_tissue_fraction=0.5)
    with caplog.at_level(logging.INFO):
        (record,) = stylize([(tmp_path / "in/crop.png", None)], style, Drawer(how), tmp_path / "out",
                            strength=0.4, seed=0)
    assert [f.split(":")[0] for f in record[FLAGS]] == flagged, record
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"crop.png: {f}" for f in record[FLAGS]]


# ------------------------------------------------ 6. confusion matrices that say how they read; legend
def test_confusion_record_names_rows_truth_and_columns_prediction():
    cm = np.array([[0, 0, 0], [1, 5, 2], [0, 3, 7]])  # truth a: 1 left unlabelled, 5 right, 2 called b
    record = confusion_record(cm, ["a", "b"])
    assert record == {"true_a": {"pred_unannotated": 1, "pred_a": 5, "pred_b": 2},
                      "true_b": {"pred_unannotated": 0, "pred_a": 3, "pred_b": 7}}
    names, back = read_confusion(json.dumps(record))
    assert names == ["unannotated", "a", "b"] and (back == cm).all()
    names, legacy = read_confusion("[[0, 0, 0], [1, 5, 2], [0, 3, 7]]", ["a", "b"])  # before it said so
    assert names == ["unannotated", "a", "b"] and (legacy == cm).all()
    assert read_confusion("not json") is None and read_confusion(float("nan")) is None


def test_overlay_has_a_legend_of_the_class_colours(tmp_path):
    from sedm.segmentation.predict import class_colors, write_overlay
    from sedm.tiling.store import SlideStore

    store = SlideStore(make_seg_store(tmp_path / "t.zarr", "t", size=64, tile=32))
    pred = np.zeros((64, 64), np.uint8)
    pred[:, :20], pred[:, 20:40], pred[:, 40:] = 1, 2, 3
    write_overlay(tmp_path / "o.png", store, pred, class_colors(store), max_size=64, band=32)
    img = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    assert img.shape[0] > 64 and img.shape[1] >= 64
    key = img[64:].reshape(-1, 3)
    colours = {tuple(int(c) for c in px) for px in key}
    for value, name in enumerate(store.classes, start=1):
        assert class_rgb(value) in colours, name  # a swatch in the class's own colour, not blended
        assert class_rgb(value) not in {tuple(int(c) for c in px) for px in img[:64].reshape(-1, 3)}
    assert (key.sum(axis=1) < 200).any()  # the names, in dark text
