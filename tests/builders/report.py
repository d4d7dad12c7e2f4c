"""A results tree in the layout of every stage, with small known numbers, for the report tests.

Each stage output is written as its stage writes it (``as sedm ... writes it`` beside each), so the
report is tested against the real formats; tests change single files to make a condition appear.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from sedm.evaluation.metrics import confusion_record

CLASSES = ["tumour"]
"""The config's classes; :func:`write_results` names its one class ``tumour`` unless told otherwise."""
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
BENCHMARK_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
"""The columns of a Snakemake benchmark file."""


def png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> None:
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


def report_cohort(tmp_path: Path) -> tuple[dict, Path, Path]:
    """(config, sample sheet, results folder) of the fixture cohort with every stage's outputs written."""
    from sedm.config import validate_config

    samples = write_samples(tmp_path)
    results = tmp_path / "results"
    write_results(results)
    return validate_config({"classes": CLASSES, "samples": str(samples), "results": str(results)}), samples, results


def write_results(root: Path, class_name: str = "tumour") -> None:
    """A results tree in the layout of every stage, with small known numbers."""
    rows = []
    for i, (slide, patient, role) in enumerate(SLIDES):
        rows.append({"slide_id": slide, "patient_id": patient, "role": role, "source_mpp": 0.25,
                     "target_mpp": 1.0, "width": 3072, "height": 2048, "n_tiles": 40 + i,
                     "tissue_area_mm2": 3.5 + i, "mean_frac_unannotated": 0.7, f"mean_frac_{class_name}": 0.3})
        png(root / f"tiles/{slide}.qc.png", (200, 120 + 10 * i, 180))
    pd.DataFrame(rows).to_csv(root / "tiles/summary.tsv", sep="\t", index=False)

    run = root / "diffusion/run"
    run.mkdir(parents=True)
    steps = np.arange(0, 1000, 10)
    pd.DataFrame({"step": steps, "loss": 1.0 / (1 + steps / 100), "lr": 1e-4, "it_per_s": 5.0}).to_csv(
        run / "train_log.csv", index=False)
    png(run / "samples/step_900.png", (0, 0, 255), (128, 128))
    png(run / "samples/step_1000.png", (0, 255, 0), (128, 128))  # latest: numeric, not lexical order
    (root / "diffusion/model").mkdir(parents=True)
    (root / "diffusion/model/config.json").write_text("{}")

    png(root / "synthesis/U1.montage.png", (150, 60, 160), (256, 128))
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
        "transfer_learned": {"median": 0.0613, "min": -0.0222, "n_pairs": 1},
        "transfer_learned_random_init": {"median": 0.0207, "min": -0.1911, "n_pairs": 1},
        "sampling": {"sampler": "dpmpp", "steps": 15, "stain_match": 0.5},
        "separability": {"trained": 7.25, "random_init": 0.0812, "patches_per_slide": 16}}))
    png(root / "synthesis/style_grid.png", (120, 60, 160), (200, 150))
    (root / "eval").mkdir()
    (root / "eval/layout_fidelity.json").write_text(json.dumps({  # as sedm layout-fidelity writes it
        "arm": "real", "macro_dice": 0.4567, "real_val_macro_dice": 0.789, "per_slide": {"U1": 0.4567},
        "restained_real_val_macro_dice": 0.5351, "restained_real_per_slide": {"U1": 0.5351}, "restained_gap": 0.0778,
        "stain_robust": {"arm": "stain_aug", "macro_dice": 0.6012, "real_val_macro_dice": 0.8123,
                         "restained_real_val_macro_dice": 0.7234},
        "autoencoder": {"tiles": 24, "slides": ["T1"],
                        "macro_dice": {"original": 0.9311, "autoencoder": 0.5222, "layout_decoder": 0.8894,
                                       "autoencoder_texture": 0.9177, "layout_decoder_texture": 0.9244},
                        "texture_sigma": 2.0}}))
    (root / "autoencoder").mkdir()
    block = {"crops": 64, "psnr": 24.51, "ssim": 0.7012, "od_error_abs": {"H": 0.0056, "E": 0.005, "D": 0.0035},
             "od_error_mean": {"H": -0.001, "E": 0.002, "D": 0.0}, "slide_od_spread": {"H": 0.006, "E": 0.0052, "D": 0.0035}}
    (root / "autoencoder/qa.json").write_text(json.dumps({  # as sedm.autoencoder.qa writes it
        "crops": 64, "crop_size": 48, "slides": ["L1"], "autoencoder": block,
        "layout_decoder": {**block, "psnr": 20.02, "ssim": 0.4567}}))
    png(root / "autoencoder/montage.png", (180, 90, 170), (96, 48))
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
                       "macro_dice": dice, "macro_iou": dice / (2 - dice),
                       "confusion": json.dumps(confusion_record(np.array([[0, 0], [1, 3]]), [class_name]))})
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
                png(root / f"predictions/{arm}/{slide}.overlay.png", (60 * arm_i, 100, 40 * j))

    for rule, jobs in {"tile_slide": [s for s, _, _ in SLIDES], "train_diffusion": ["all"],
                       "predict_slide": [f"{a}/{s}" for a in ARMS for s, _, r in SLIDES if r == "test"]}.items():
        for k, job in enumerate(jobs):
            path = root / f"benchmarks/{rule}/{job}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(BENCHMARK_HEADER + f"{10.0 + k}\t0:00:10\t{500 + k}\t900\t400\t450\t1\t2\t50\t{8.0 + k}\n")


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


def visible_text(html: str) -> str:
    """Visible text with tags removed (data URIs dropped), whitespace collapsed."""
    html = re.sub(r'src="data:[^"]*"', "", html)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def write_benchmark(root: Path, rule: str, job: str, seconds: float, cpu_seconds: float) -> None:
    """``benchmarks/<rule>/<job>.tsv`` as Snakemake's ``benchmark:`` writes it (one repeat)."""
    path = root / f"benchmarks/{rule}/{job}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BENCHMARK_HEADER + f"{seconds}\t0:00:{int(seconds) % 60:02d}\t500\t900\t400\t450\t1\t2\t90\t"
                    f"{cpu_seconds}\n")


def write_summary(root: Path, arms: dict[str, dict], comparisons: list[dict]) -> None:
    """``eval/summary.json`` as `sedm evaluate` writes it, with only the entries the caller gives."""
    (root / "eval").mkdir(parents=True, exist_ok=True)
    (root / "eval/summary.json").write_text(json.dumps({"unit": "patient", "arms": arms, "comparisons": comparisons}))
