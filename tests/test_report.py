"""The HTML report: contents from a fake results tree, graceful degradation, escaping, determinism,
and a real headless-browser render."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sedm.cli import main
from sedm.config import load_samples, validate_config
from sedm.report.build import build_report, write_figures
from sedm.layout import RESULTS, results_paths
from sedm.report.layout import ResultsLayout

ARMS = ["real", "stain_aug", "stedm"]
# per-patient macro Dice per arm; stedm: best patient P4, worst P5
DICE = {
    "real": {"P4": 0.80, "P5": 0.40, "P6": 0.60},
    "stain_aug": {"P4": 0.82, "P5": 0.45, "P6": 0.66},
    "stedm": {"P4": 0.90, "P5": 0.50, "P6": 0.70},
}
SLIDES = [  # slide_id, patient_id, role
    ("L1", "P1", "labelled"),
    ("L2", "P2", "labelled"),
    ("U1", "P3", "unlabelled"),
    ("T1", "P4", "test"),
    ("T2", "P5", "test"),
    ("T3", "P5", "test"),
    ("T4", "P6", "test"),
]
SCRIPT = "<script>alert(1)</script>"


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:] = np.asarray(colour) % 256
    arr[::8] = 255  # stripes, so a screenshot of the image is not flat
    Image.fromarray(arr).save(path)


def write_samples(tmp_path: Path) -> Path:
    lines = ["slide_id\tpatient_id\tslide_path\tannotation_path\trole"]
    for slide, patient, role in SLIDES:
        ann = "" if role == "unlabelled" else f"{slide}.geojson"
        lines.append(f"{slide}\t{patient}\t{slide}.tif\t{ann}\t{role}")
    path = tmp_path / "samples.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_results(root: Path, class_name: str = "tumour") -> None:
    """A results tree in the layout of every stage, with small known numbers."""
    rows = []
    for i, (slide, patient, role) in enumerate(SLIDES):
        rows.append({"slide_id": slide, "patient_id": patient, "role": role, "source_mpp": 0.25,
                     "target_mpp": 1.0, "width": 3072, "height": 2048, "n_tiles": 40 + i,
                     "tissue_area_mm2": 3.5 + i, "mean_frac_unannotated": 0.7, f"mean_frac_{class_name}": 0.3})
        _png(root / f"tiles/{slide}.qc.png", (200, 120 + 10 * i, 180))
    pd.DataFrame(rows).to_csv(root / "tiles/summary.tsv", sep="\t", index=False)

    run = root / "diffusion/run"
    run.mkdir(parents=True)
    steps = np.arange(0, 1000, 10)
    pd.DataFrame({"step": steps, "loss": 1.0 / (1 + steps / 100), "lr": 1e-4, "it_per_s": 5.0}).to_csv(
        run / "train_log.csv", index=False)
    _png(run / "samples/step_900.png", (0, 0, 255), (128, 128))
    _png(run / "samples/step_1000.png", (0, 255, 0), (128, 128))  # latest: numeric, not lexical order
    (root / "diffusion/model").mkdir(parents=True)
    (root / "diffusion/model/config.json").write_text("{}")

    _png(root / "synthesis/U1.montage.png", (150, 60, 160), (256, 128))
    (root / "synthesis/U1.stats.json").write_text(json.dumps({  # as sedm.synthesis.stats writes it
        "slide_id": "U1", "n_samples": 64, "channels": ["H", "E", "D"], "space": "HED optical density",
        "generated": {"mean": [0.1, 0.2, 0.3], "std": [0.01, 0.02, 0.03], "pixels": 1000},
        "style": {"mean": [0.11, 0.19, 0.31], "std": [0.011, 0.021, 0.029], "pixels": 2000},
        "source": {"mean": [0.2, 0.1, 0.3], "std": [0.02, 0.01, 0.03], "pixels": 3000},
        "hed_distance": 0.0179, "hed_distance_source": 0.1418, "style_fidelity": 0.8738,
    }))
    (root / "synthesis/U1.memorisation.json").write_text(json.dumps({  # as sedm near-copies writes it
        "slide_id": "U1", "n_tiles": 64, "n_checked": 64,
        "synthetic": {"n": 64, "median": 0.6123, "p5": 0.4567, "p1": 0.09, "min": 0.08, "max": 0.8},
        "real_to_real": {"n": 32, "median": 0.6789, "p5": 0.5432, "p1": 0.51, "min": 0.5, "max": 0.8},
        "source": {"n": 64, "median": 0.9012, "p5": 0.7, "p1": 0.6, "min": 0.05, "max": 1.1},
        "threshold": {"distance": 0.15}, "near_copies": {"count": 1, "share": 1 / 64, "indices": [7]}}))
    (root / "synthesis/style_check.json").write_text(json.dumps({  # as sedm style-check writes it
        "transfer": {"median": 0.6543, "min": 0.3121, "n_pairs": 1, "n_skipped": 0,
                     "pairs": [{"a": "U1", "b": "U2", "style_distance": 0.2, "output_distance": 0.13086,
                                "ratio": 0.6543, "output_glass": False}]},
        "transfer_random_init": {"median": 0.4124, "min": -0.5057, "n_pairs": 1},
        "sampling": {"sampler": "dpmpp", "steps": 15, "stain_match": 0.5},
        "separability": {"trained": 7.25, "random_init": 0.0812, "patches_per_slide": 16}}))
    _png(root / "synthesis/style_grid.png", (120, 60, 160), (200, 150))
    (root / "eval").mkdir()
    (root / "eval/layout_fidelity.json").write_text(json.dumps({  # as sedm layout-fidelity writes it
        "arm": "real", "macro_dice": 0.4567, "real_val_macro_dice": 0.789, "per_slide": {"U1": 0.4567},
        "stain_robust": {"arm": "stain_aug", "macro_dice": 0.6012, "real_val_macro_dice": 0.8123},
        "autoencoder": {"tiles": 24, "slides": ["T1"],
                        "macro_dice": {"original": 0.9311, "autoencoder": 0.5222, "layout_decoder": 0.8894}}}))
    (root / "autoencoder").mkdir()
    block = {"crops": 64, "psnr": 24.51, "ssim": 0.7012, "od_error_abs": {"H": 0.0056, "E": 0.005, "D": 0.0035},
             "od_error_mean": {"H": -0.001, "E": 0.002, "D": 0.0}, "slide_od_spread": {"H": 0.006, "E": 0.0052, "D": 0.0035}}
    (root / "autoencoder/qa.json").write_text(json.dumps({  # as sedm.autoencoder.qa writes it
        "crops": 64, "crop_size": 48, "slides": ["L1"], "autoencoder": block,
        "layout_decoder": {**block, "psnr": 20.02, "ssim": 0.4567}}))
    _png(root / "autoencoder/montage.png", (180, 90, 170), (96, 48))
    for arm_i, arm in enumerate(ARMS):
        run_dir = root / f"segmentation/{arm}/run"
        run_dir.mkdir(parents=True)
        pd.DataFrame({"step": steps, "loss": 0.5 / (1 + steps / (100 + 50 * arm_i)), "lr": 1e-3,
                      "val_macro_dice": np.where(steps % 250 == 0, 0.5 + steps / 4000, np.nan)}).to_csv(
            run_dir / "train_log.csv", index=False)

    pp = []
    for arm in ARMS:
        for patient, dice in DICE[arm].items():
            pp.append({"arm": arm, "patient_id": patient, "n_slides": 1 + (patient == "P5"), "n_pixels": 1000,
                       f"dice_{class_name}": dice, f"iou_{class_name}": dice / (2 - dice),
                       "macro_dice": dice, "macro_iou": dice / (2 - dice), "confusion": "[[0, 1], [2, 3]]"})
    pd.DataFrame(pp).to_csv(root / "eval/per_patient.csv", index=False)
    pd.DataFrame([{"arm": a, "slide_id": s, "patient_id": p} for a in ARMS for s, p, r in SLIDES if r == "test"]
                 ).to_csv(root / "eval/per_slide.csv", index=False)
    summary = {"unit": "patient", "arms": {}, "comparisons": []}
    for arm in ARMS:
        v = np.array(list(DICE[arm].values()))
        summary["arms"][arm] = {"mean_dice": v.mean(), "std_dice": v.std(ddof=1), "median_dice": float(np.median(v)),
                                "worst_dice": v.min(), "mean_iou": 0.5, "n_patients": 3,
                                "per_class": {class_name: {"mean_dice": v.mean(), "iqr_dice": None,
                                                           "pooled_dice": 0.7}}}
    summary["comparisons"].append({"arm": "stedm", "baseline": "real", "mean_diff": 0.1, "ci95": [0.05, 0.15],
                                   "wilcoxon_p": 0.000123, "n_patients": 3, "note": ""})
    summary["style_distance"] = write_styles(root, pd.DataFrame(pp))
    (root / "eval/summary.json").write_text(json.dumps(summary))

    for arm_i, arm in enumerate(ARMS):
        for j, (slide, _, role) in enumerate(SLIDES):
            if role == "test":
                _png(root / f"predictions/{arm}/{slide}.overlay.png", (60 * arm_i, 100, 40 * j))

    for rule, jobs in {"tile_slide": [s for s, _, _ in SLIDES], "train_diffusion": ["all"],
                       "predict_slide": [f"{a}/{s}" for a in ARMS for s, _, r in SLIDES if r == "test"]}.items():
        for k, job in enumerate(jobs):
            path = root / f"benchmarks/{rule}/{job}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                            f"{10.0 + k}\t0:00:10\t{500 + k}\t900\t400\t450\t1\t2\t50\t{8.0 + k}\n")


# stain features per slide (first two features; the rest constant): T2 and T3 (patient P5) far from L1/L2
STYLE_FEATURES = {"L1": [0.0, 0.0], "L2": [1.0, 0.0], "U1": [2.0, 2.0], "T1": [0.2, 0.1], "T2": [4.0, 3.0],
                  "T3": [3.0, 3.0], "T4": [1.5, 1.0]}


def write_styles(root: Path, per_patient: pd.DataFrame) -> dict:
    """styles/cohort.tsv as `sedm style-table` writes it (a synthetic set near U1), and the summary's
    style_distance entry as `sedm evaluate` computes it from that table."""
    from sedm.evaluation.style_gain import style_gain
    from sedm.styles.features import FEATURES

    rows = []
    for (slide, patient, role), kind in [(r, "slide") for r in SLIDES] + [(("U1", "P3", "unlabelled"), "synthetic")]:
        values = STYLE_FEATURES[slide] if kind == "slide" else [1.8, 1.9]
        rows.append({"slide_id": slide, "patient_id": patient, "role": role, "kind": kind, "tissue_pixels": 100,
                     **dict.fromkeys(FEATURES, 0.5), **dict(zip(FEATURES, values))})
    table = pd.DataFrame(rows)
    (root / "styles").mkdir()
    table.to_csv(root / "styles/cohort.tsv", sep="\t", index=False)
    entry, _ = style_gain(per_patient, table, ["T1", "T2", "T3", "T4"], "real", 200, 0)
    return entry


@pytest.fixture
def cohort(tmp_path):
    samples_path = write_samples(tmp_path)
    results = tmp_path / "results"
    write_results(results)
    config = validate_config({"samples": str(samples_path), "results": str(results)})
    return config, load_samples(samples_path), results, samples_path


def _text(html: str) -> str:
    """Visible text with tags removed (data URIs dropped), whitespace collapsed."""
    html = re.sub(r'src="data:[^"]*"', "", html)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_workflow_and_report_share_one_layout(repo, tmp_path):
    """The workflow's `paths` and the report's ResultsLayout are both built from sedm.layout.RESULTS;
    every `paths.NAME` a rule file uses exists there (or is one of common.smk's non-results paths)."""
    text = "\n".join(p.read_text() for p in sorted((repo / "workflow/rules").glob("*.smk")))
    used = set(re.findall(r"\bpaths\.(\w+)", text))
    assert used and used <= set(RESULTS) | {"demo_slide", "demo_annotation", "log"}, used - set(RESULTS)
    paths = results_paths(str(tmp_path))
    layout = ResultsLayout(tmp_path)
    assert Path(paths.tissue_qc.format(slide="S1")) == layout.tissue_qc("S1")
    assert Path(paths.prediction_overlay.format(arm="real", slide="S1")) == layout.prediction_overlay("real", "S1")
    assert Path(paths.synthesis_stats.format(slide="U1")) == layout.synthesis_stats("U1")
    assert Path(paths.memorisation.format(slide="U1")) == layout.memorisation("U1")
    assert Path(paths.eval_dir) == layout.eval_dir and Path(paths.diffusion_run) == layout.diffusion_run
    assert Path(paths.bench.format(rule="r", name="j")).parent.parent == layout.benchmarks


def test_full_report_shows_every_section_deterministically(cohort, tmp_path):
    config, samples, results, samples_path = cohort
    html, figures = build_report(config, samples, results, samples_path=samples_path)
    text = _text(html)
    assert "Not run" not in text
    # cohort table joined with the tiling summary
    assert "tissue_area_mm2" in text and "9.5" in text  # T4: 3.5 + 6
    # diffusion: the latest grid by step number, not by name
    assert "step_1000.png" in text
    # variability: IQR of stedm computed from the per-patient table
    stedm = np.array(list(DICE["stedm"].values()))
    q1, q3 = np.percentile(stedm, [25, 75])
    evaluation = re.search(r'<section id="evaluation">(.*?)</section>', html, flags=re.S).group(1)
    row = re.search(r"<tr><td>stedm</td>(.*?)</tr>", evaluation).group(1)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    assert cells[:6] == ["3", f"{stedm.mean():.3f}", f"{stedm.std(ddof=1):.3f}", f"{q3 - q1:.3f}",
                         f"{np.median(stedm):.3f}", f"{stedm.min():.3f}"]
    # paired comparison with CI and a small p in scientific notation
    assert "[0.050, 0.150]" in text and "1.23e-04" in text
    # synthesis: generated vs real stain statistics side by side, per HED channel
    assert re.search(r"<td>mean H</td><td class=\"num\">0\.100</td><td class=\"num\">0\.110</td>"
                     r"<td class=\"num\">0\.200</td>", html)
    assert "style_fidelity" in text and "0.874" in text
    # memorisation: near-copies and nearest-neighbour distances vs real-to-real, with how to read them
    synthesis = re.search(r'<section id="synthesis">(.*?)</section>', html, flags=re.S).group(1)
    row = re.search(r"<tr><td>U1</td>(.*?)</tr>", synthesis.split("Memorisation check")[1]).group(1)
    assert re.findall(r"<td[^>]*>([^<]*)</td>", row) == ["64", "1 (1.6 %)", "0.612", "0.457", "0.679", "0.543",
                                                          "0.901", "0.150"]
    assert "near-copies should be 0" in _text(synthesis)
    # autoencoder: reconstruction and colour fidelity beside the slides' spread, and the Dice ceiling
    autoencoder = re.search(r'<section id="autoencoder">(.*?)</section>', html, flags=re.S).group(1)
    for number in ("24.5", "0.701", "0.006 (0.006)", "20.0", "0.457", "0.931", "0.522", "0.889"):
        assert number in autoencoder, number
    assert "montage" in {f.name for f in figures if f.section == "autoencoder"}
    # style transfer: the measures' headline numbers, the pair table and the style grid
    transfer = re.search(r'<section id="style-transfer">(.*?)</section>', html, flags=re.S).group(1)
    for number in ("0.654", "0.312", "0.412, -0.506", "7.250", "0.081", "0.457", "0.789", "0.601, 0.812"):
        assert number in transfer, number
    assert "<td>U1</td><td>U2</td>" in transfer and "style_grid" in {f.name for f in figures}
    assert "synthesis.stain_match" in transfer and "measures the matching" in _text(transfer)
    # per-class numbers as the summary holds them; confusion matrices are not shown
    assert "pooled_dice" in text and "[[0, 1]" not in text
    # best and worst patient of the stedm arm, with their slides, for every arm
    assert re.search(r"best patient: P4 \(macro_dice 0\.900\)", text)
    assert re.search(r"worst patient: P5 \(macro_dice 0\.500\)", text)
    sections = {f.section for f in figures}
    assert sections == {"tiling", "autoencoder", "diffusion", "synthesis", "segmentation", "evaluation", "styles",
                        "predictions"}
    # style map: the far patient P5 has the largest distance; correlations from summary.json, descriptive
    styles = re.search(r'<section id="styles">(.*?)</section>', html, flags=re.S).group(1)
    dist = {p: float(d) for p, d in re.findall(r"<tr><td>(P\d)</td><td class=\"num\">([0-9.]+)</td>", styles)}
    assert set(dist) == {"P4", "P5", "P6"} and max(dist, key=dist.get) == "P5"
    assert "descriptive" in styles and "gain over baseline" in styles and "<td>U1</td>" in styles
    assert {"style_map_stain", "gain_vs_distance_stain"} <= {f.name for f in figures if f.section == "styles"}
    overlays = sorted(f.name for f in figures if f.section == "predictions")
    assert overlays == sorted(f"overlay_{a}_{s}" for a in ARMS for s in ("T1", "T2", "T3"))
    # compute cost: tile_slide has 7 jobs, 10+11+...+16 s
    assert re.search(r"<td>tile_slide</td><td class=\"num\">7</td><td class=\"num\">91</td>", html)
    assert re.search(r"<td>predict_slide</td><td class=\"num\">12</td>", html)  # benchmarks/<rule>/<arm>/<slide>
    assert "<td>predict_slide</td><td>stedm/T4</td>" in html
    # self-contained: every image is a data URI, nothing is fetched
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == len(figures) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<link" not in html and "<script" not in html

    # deterministic: same inputs, byte-identical page and figures (no timestamps, seeded jitter)
    html2, figures2 = build_report(config, samples, results, samples_path=samples_path)
    assert html2 == html and [f.png for f in figures2] == [f.png for f in figures]

    written = write_figures(figures, tmp_path / "figs")
    assert len(written) == len(figures)
    assert (tmp_path / "figs/evaluation/per_patient_box.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_partial_pipeline_sections_say_not_run(tmp_path, capsys):
    """Only the sample sheet and a tiling summary: the report still renders, stages say not run."""
    samples_path = write_samples(tmp_path)
    results = tmp_path / "results"
    (results / "tiles").mkdir(parents=True)
    pd.DataFrame([{"slide_id": s, "n_tiles": 5} for s, _, _ in SLIDES]).to_csv(
        results / "tiles/summary.tsv", sep="\t", index=False)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"samples": str(samples_path), "results": str(results)}))
    out = tmp_path / "out/report.html"
    rc = main(["report", "--config", str(cfg), "--samples", str(samples_path), "--results", str(results),
               "--out", str(out), "--figures-dir", str(tmp_path / "out/figures")])
    assert rc == 0
    html = out.read_text()
    text = _text(html)
    for section in ("tiling", "diffusion", "style-transfer", "synthesis", "segmentation", "evaluation", "styles",
                    "predictions", "compute"):
        body = re.search(rf'<section id="{section}">(.*?)</section>', html, flags=re.S).group(1)
        assert "Not run." in body, section
    assert "n_tiles" in text  # the cohort table still shows what the tiling summary has
    assert (tmp_path / "out/figures").is_dir() and not list((tmp_path / "out/figures").rglob("*.png"))
    assert not list(out.parent.glob(".*tmp-*"))  # written atomically, no temporaries left


def test_broken_and_odd_inputs_degrade(tmp_path):
    """Unreadable files and unknown columns give a section note, not a crash."""
    samples_path = write_samples(tmp_path)
    results = tmp_path / "results"
    (results / "eval").mkdir(parents=True)
    (results / "eval/summary.json").write_text("{not json")
    pd.DataFrame({"who": ["P4"], "score": [0.5]}).to_csv(results / "eval/per_patient.csv", index=False)
    (results / "tiles").mkdir()
    (results / "tiles/T1.qc.png").write_bytes(b"not a png")
    html, figures = build_report(validate_config({}), load_samples(samples_path), results)
    assert "has no arm / patient / Dice columns" in html
    assert "Tiling not run" in html  # no summary: the cohort table still lists the sample sheet
    assert figures == []


def test_untrusted_strings_are_escaped(tmp_path):
    """Class names (config, GeoJSON), stats keys and arm names come from files: they must be escaped."""
    samples_path = write_samples(tmp_path)
    results = tmp_path / "results"
    write_results(results, class_name=SCRIPT)
    stats = json.loads((results / "synthesis/U1.stats.json").read_text())
    stats["generated"][SCRIPT] = 1.0
    (results / "synthesis/U1.stats.json").write_text(json.dumps(stats))
    config = validate_config({"classes": [SCRIPT, "stroma"]})
    html, _ = build_report(config, load_samples(samples_path), results)
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # in the cohort table header, the per-class table, the per-patient table and the stats table
    assert html.count("&lt;script&gt;") >= 4


def test_cli_rejects_bad_sample_sheet(tmp_path, capsys):
    bad = tmp_path / "samples.tsv"
    bad.write_text("slide_id\tpatient_id\n")
    cfg = tmp_path / "cfg.json"
    cfg.write_text("{}")
    rc = main(["report", "--config", str(cfg), "--samples", str(bad), "--results", str(tmp_path),
               "--out", str(tmp_path / "r.html")])
    assert rc == 2
    assert "missing column" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
    rc = main(["report", "--config", str(cfg), "--samples", str(write_samples(tmp_path)),
               "--results", str(tmp_path / "typo"), "--out", str(tmp_path / "r.html")])
    assert rc == 2
    assert "results folder does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", *extra, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(profile)})


def _console_messages(stderr: str) -> list[str]:
    """Lines chromium logs for console messages (JS errors, CSP refusals, failed loads)."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium; .ci/run does)")
def test_report_renders_in_headless_chromium(cohort, tmp_path):
    config, samples, results, samples_path = cohort
    html, figures = build_report(config, samples, results, samples_path=samples_path)
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")

    # the console check can fail: a page loading a remote image is refused by the report's CSP
    control = tmp_path / "control.html"
    control.write_text(html.replace("</main>", '<img src="http://example.invalid/x.png"></main>'))
    proc = _chromium(control, tmp_path / "profile0", "--dump-dom")
    assert any("Refused" in m or "Content Security Policy" in m for m in _console_messages(proc.stderr)), \
        proc.stderr[-2000:]

    proc = _chromium(page, tmp_path / "profile1", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_messages(proc.stderr) == []
    dom = proc.stdout
    assert dom.count("<table") >= 8
    assert dom.count("<img") == len(figures)
    assert 'id="provenance"' in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    proc = _chromium(page, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,4000")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    print(f"report screenshot: {shot}")
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (4000, 1280)
    assert img.std() > 10  # not blank
    # the header bar (accent colour) rendered at the top: dark pixels there, white page below
    assert img[:40].mean() < 150 < img[200:].mean()
