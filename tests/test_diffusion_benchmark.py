"""The diffusion benchmark's pieces: the sampler table and the CUDA section's skip note."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders.benchmarks import load_benchmark
from builders.diffusion import micro_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("diffusion")


def test_cuda_section_is_skipped_with_a_note(bench, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = bench.cuda_paper_bench()
    assert set(out) == {"skipped"} and "CUDA" in out["skipped"]


def test_sampler_table_reference_and_rows(bench):
    model = micro_model().eval()
    labels = np.zeros((1, 32, 32), np.uint8)
    labels[:, :, 16:] = 1
    style = np.full((1, 2, 32, 32, 3), 180, np.uint8)
    rows, ref_s = bench.sampler_table(model, labels, style, ref_steps=40, dpmpp_steps=(4, 8),
                                      ddim_steps=(4, 20))
    assert rows[0] == {"sampler": "ddim", "steps": 40, "rmse_to_ddim128": 0.0, "psnr_db": None,
                       "s_per_image": ref_s}
    assert [(r["sampler"], r["steps"]) for r in rows[1:]] == [("dpmpp", 4), ("dpmpp", 8), ("ddim", 4), ("ddim", 20)]
    assert all(r["rmse_to_ddim128"] >= 0 and r["s_per_image"] > 0 for r in rows)
    # DDIM converges to its own many-step result as steps grow
    ddim = {r["steps"]: r["rmse_to_ddim128"] for r in rows if r["sampler"] == "ddim"}
    assert ddim[20] < ddim[4]


def test_style_figures_of_a_model_on_toy_stores(bench, tmp_path):
    """The JSON line's style figures are there and finite for a (random) model on toy stores."""
    from builders.diffusion import make_stores
    from builders.synthesis import make_model

    stores = make_stores(tmp_path, n=3, size=192)
    out = bench.style_figures(make_model(tmp_path / "m"), stores[:2], stores)
    assert out["transfer_pairs"] == 3
    assert np.isfinite(out["transfer_ratio_min"]) and out["transfer_ratio_min"] <= out["transfer_ratio_median"]
    assert out["separability_trained"] > 0 and out["separability_random_init"] > 0


def test_batch_table_times_every_batch_against_the_first(bench):
    model = micro_model().eval()
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[1, :, 16:] = 1
    style = np.full((2, 2, 32, 32, 3), 180, np.uint8)
    rows = bench.batch_table(model, labels, style, (1, 3), steps=2)
    assert [r["batch"] for r in rows] == [1, 3] and rows[0]["speed_vs_first"] == 1.0
    assert all(r["s_per_image"] > 0 and r["steps"] == 2 for r in rows)
    assert rows[1]["speed_vs_first"] == round(rows[0]["s_per_image"] / rows[1]["s_per_image"], 2)
