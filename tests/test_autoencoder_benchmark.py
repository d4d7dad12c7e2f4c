"""benchmarks/autoencoder_fidelity.py: one autoencoder per (width, steps) point, trained as the stage trains
it, and its colour error read against the slides' spread from the QA file the stage writes."""

from __future__ import annotations

import json

import pytest
import yaml
from builders.benchmarks import load_benchmark
from builders.diffusion import CLASSES, make_stores
from builders.segmentation import write_samples

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")

MICRO_AE = dict(block_out_channels=[8, 8, 8], latent_channels=4, layers_per_block=1, norm_num_groups=4,
                patch_size=32, batch_size=2, max_steps=300, lr=1e-3, warmup_steps=1, checkpoint_every=100,
                log_every=20, unlabelled_fraction=0.5, device="cpu")


def test_curve_points_train_as_configured_and_report_error_over_spread(tmp_path, capsys):
    bench = load_benchmark("autoencoder_fidelity")
    make_stores(tmp_path / "results" / "tiles", n=3, size=160)
    sheet = write_samples(tmp_path / "samples.tsv", [("slide0", "P0", "labelled"), ("slide1", "P1", "labelled"),
                                                     ("slide2", "P2", "unlabelled")])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"classes": CLASSES, "seed": 0, "samples": str(sheet), "autoencoder": MICRO_AE}))
    out = tmp_path / "kept"
    assert bench.main(["--config", str(config), "--results", str(tmp_path / "results"), "--steps", "2", "1",
                       "--widths", "1", "2", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = result["rows"]
    assert [(r["width"], r["steps"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [r["block_out_channels"] for r in rows] == [[8, 8, 8]] * 2 + [[16, 16, 16]] * 2
    assert rows[0]["sec_per_step_ratio"] == 1.0 and all(r["sec_per_step"] > 0 for r in rows)
    for r in rows:
        qa_file = json.loads((out / f"w{r['width']}-s{r['steps']}" / "qa.json").read_text())
        for decoder, prefix in (("layout_decoder", ""), ("autoencoder", "plain_")):
            qa = qa_file[decoder]
            assert qa["crops"] > 0 and r[f"{prefix}psnr"] == pytest.approx(qa["psnr"], abs=0.01)
            for stain in "HED":
                assert r[f"{prefix}od_error_{stain}"] == pytest.approx(qa["od_error_abs"][stain], abs=1e-5)
                assert r[f"{prefix}error_over_spread_{stain}"] == pytest.approx(
                    qa["od_error_abs"][stain] / qa["slide_od_spread"][stain], abs=0.01)
        provenance = json.loads((out / f"w{r['width']}-s{r['steps']}" / "model" / "config.json").read_text())
        assert list(provenance["block_out_channels"]) == r["block_out_channels"]


def test_lowpass_dimension_and_judge_add_rows_and_the_ceiling(tmp_path, capsys):
    """Each regional-colour weight is its own trained point; a judge adds the ceiling the layout-fidelity
    stage would report for that autoencoder, on the judge's own validation slide."""
    import torch
    from builders.segmentation import tiny_config

    from sedm.evaluation.layout_fidelity import load_segmenter, reconstruction_dice, validation_tiles
    from sedm.segmentation.model import architecture, build_model, save_model_dir

    bench = load_benchmark("autoencoder_fidelity")
    stores = make_stores(tmp_path / "results" / "tiles", n=3, size=160)
    sheet = write_samples(tmp_path / "samples.tsv", [("slide0", "P0", "labelled"), ("slide1", "P1", "labelled"),
                                                     ("slide2", "P2", "unlabelled")])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"classes": CLASSES, "seed": 0, "samples": str(sheet), "autoencoder": MICRO_AE}))
    arch = architecture(tiny_config(patch_size=32)["segmentation"], len(CLASSES))
    torch.manual_seed(0)
    state = build_model(arch).state_dict()
    judge = tmp_path / "judge"
    save_model_dir(judge, {"architecture": arch, "classes": CLASSES, "mpp": 1.0, "patch_size": 32, "arm": "real",
                           "split": {"val_slides": ["slide1"]}}, {"best": state, "last": state})
    out = tmp_path / "kept"
    assert bench.main(["--config", str(config), "--results", str(tmp_path / "results"), "--steps", "1",
                       "--lowpass-weights", "0", "8", "--judge", str(judge), "--threads", "1",
                       "--out", str(out)]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert [r["lowpass_weight"] for r in rows] == [0, 8]
    assert json.loads((out / "w1-s1-lp8" / "model" / "config.json").read_text())  # each point kept apart
    segment, _ = load_segmenter(judge, "cpu")
    tiles = validation_tiles([s for s in stores if "slide1" in str(s)], ["slide1"], CLASSES, 256)  # the schema default of segmentation.val_tiles
    for r, name in zip(rows, ("w1-s1-lp0", "w1-s1-lp8")):
        expected = reconstruction_dice(segment, out / name / "model", tiles, CLASSES)["macro_dice"]
        assert {k[len("ceiling_"):] for k in r if k.startswith("ceiling_")} == {k for k, v in expected.items()
                                                                                 if v is not None}
        for k, v in expected.items():
            if v is not None:
                assert r[f"ceiling_{k}"] == pytest.approx(v, abs=1e-3)
