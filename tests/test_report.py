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

from builders.report import (ARMS, CLASSES, DICE, SCRIPT, SLIDES, report_cohort, visible_text, write_results,
                             write_samples)
from sedm.cli import main
from sedm.config import load_samples, validate_config
from sedm.report.build import build_report, write_figures
from sedm.layout import RESULTS, results_paths
from sedm.report.layout import ResultsLayout


@pytest.fixture
def cohort(tmp_path):
    config, samples_path, results = report_cohort(tmp_path)
    return config, load_samples(samples_path), results, samples_path


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
    text = visible_text(html)
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
    assert "near-copies should be 0" in visible_text(synthesis)
    # autoencoder: reconstruction and colour fidelity beside the slides' spread, and the Dice ceiling
    autoencoder = re.search(r'<section id="autoencoder">(.*?)</section>', html, flags=re.S).group(1)
    for number in ("24.5", "0.701", "0.006 (0.006)", "20.0", "0.457", "0.931", "0.522", "0.889", "0.918", "0.924"):
        assert number in autoencoder, number
    assert "σ = 2.0 px" in visible_text(autoencoder)  # the texture entries say how they split colour from texture
    assert "montage" in {f.name for f in figures if f.section == "autoencoder"}
    # style transfer: the measures' headline numbers, the pair table and the style grid
    transfer = re.search(r'<section id="style-transfer">(.*?)</section>', html, flags=re.S).group(1)
    for number in ("0.654", "0.312", "0.412, -0.506", "7.250", "0.081", "0.457", "0.789", "0.601, 0.812",
                   "0.535", "restained validation 0.723", "0.061, -0.022 (0.021, -0.191)"):
        assert number in transfer, number
    assert "<td>U1</td><td>U2</td>" in transfer and "style_grid" in {f.name for f in figures}
    assert "synthesis.stain_match" in transfer and "measures the matching" in visible_text(transfer)
    # per-class numbers as the summary holds them; confusion matrices pooled over patients as tables that
    # say how they read (each patient: 1 tumour pixel left unlabelled, 3 right), never as JSON text
    assert "pooled_dice" in text and "true_tumour" not in text
    assert "Rows = annotation (reference), columns = prediction" in text
    assert re.search(r"<th>truth \\ prediction</th><th>pred: unannotated</th><th>pred: tumour</th>", html)
    assert '<td>true: tumour</td><td class="num">3</td><td class="num">9</td>' in evaluation
    # best and worst patient of the stedm arm, with their slides, for every arm
    assert re.search(r"best patient: P4 \(macro_dice 0\.900\)", text)
    assert re.search(r"worst patient: P5 \(macro_dice 0\.500\)", text)
    sections = {f.section for f in figures}
    assert sections == {"tiling", "autoencoder", "diffusion", "synthesis", "segmentation", "evaluation", "cost",
                        "styles", "predictions"}
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
    cfg.write_text(json.dumps({"classes": CLASSES, "samples": str(samples_path), "results": str(results)}))
    out = tmp_path / "out/report.html"
    rc = main(["report", "--config", str(cfg), "--samples", str(samples_path), "--results", str(results),
               "--out", str(out), "--figures-dir", str(tmp_path / "out/figures")])
    assert rc == 0
    html = out.read_text()
    text = visible_text(html)
    for section in ("tiling", "diffusion", "style-transfer", "synthesis", "segmentation", "evaluation", "cost",
                    "styles", "predictions", "compute"):
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
    html, figures = build_report(validate_config({"classes": CLASSES}), load_samples(samples_path), results)
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
    cfg.write_text(json.dumps({"classes": CLASSES}))
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


def test_cohort_section_shows_the_checks_before_the_run(repo, cohort):
    """What `sedm validate` warned about is in the report too: a reader may never have seen the terminal."""
    import yaml

    from sedm.report.stages import cohort_section

    config, samples, results, _ = cohort
    flags = cohort_section(samples, ResultsLayout(results), config)["flags"]
    assert flags and not any("demo" in f for f in flags)  # the fixture's one unlabelled slide, no demo values
    copied = validate_config({**yaml.safe_load((repo / "config.yaml").read_text()), "samples": config["samples"],
                              "demo": {"enabled": False}})
    html, _ = build_report(copied, samples, results)
    assert "demo&#39;s small CPU values" in html and "diffusion.max_steps: 300" in html
