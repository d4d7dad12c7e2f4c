"""Where the report finds each stage's outputs under the results folder.

This mirrors ``paths`` in ``workflow/rules/common.smk`` (tests/test_report.py checks that the two
agree), so ``sedm report`` works on a results folder without Snakemake: this module is the only
place in the report that knows the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Relative to the results folder; names match the attributes of `paths` in common.smk.
TEMPLATES: dict[str, str] = {
    "stage_config": "config/{stage}.json",
    "tissue_qc": "tiles/{slide}.qc.png",
    "tiling_summary": "tiles/summary.tsv",
    "diffusion_model": "diffusion/model",
    "diffusion_run": "diffusion/run",
    "synthesis_montage": "synthesis/{slide}.montage.png",
    "synthesis_stats": "synthesis/{slide}.stats.json",
    "seg_model": "segmentation/{arm}/model",
    "seg_run": "segmentation/{arm}/run",
    "prediction_overlay": "predictions/{arm}/{slide}.overlay.png",
    "eval_dir": "eval",
    "report_html": "report/report.html",
    "report_figures": "report/figures",
    "benchmarks": "benchmarks",
}


@dataclass(frozen=True)
class ResultsLayout:
    """The fixed output layout of one results folder."""

    root: Path

    def _p(self, name: str, **fields: str) -> Path:
        return self.root / TEMPLATES[name].format(**fields)

    def tissue_qc(self, slide: str) -> Path:
        return self._p("tissue_qc", slide=slide)

    @property
    def tiling_summary(self) -> Path:
        return self._p("tiling_summary")

    @property
    def diffusion_model(self) -> Path:
        return self._p("diffusion_model")

    @property
    def diffusion_run(self) -> Path:
        return self._p("diffusion_run")

    @property
    def train_log(self) -> Path:
        return self.diffusion_run / "train_log.csv"

    def sample_grids(self) -> list[Path]:
        """Sample-grid PNGs written during diffusion training, oldest step first."""
        run = self.diffusion_run
        pngs = sorted(run.rglob("*.png"), key=_step_key) if run.is_dir() else []
        samples = [p for p in pngs if "sample" in p.relative_to(run).as_posix().lower()]
        return samples or pngs  # other PNGs (plots) only when nothing is named as samples

    def synthesis_montage(self, slide: str) -> Path:
        return self._p("synthesis_montage", slide=slide)

    def synthesis_stats(self, slide: str) -> Path:
        return self._p("synthesis_stats", slide=slide)

    def seg_train_logs(self) -> dict[str, Path]:
        """Segmentation training log per arm (the run folder's, else the copy in the model folder)."""
        base = self.root / Path(TEMPLATES["seg_run"]).parent.parent
        out = {}
        for arm_dir in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
            for name in ("seg_run", "seg_model"):
                path = self._p(name, arm=arm_dir.name) / "train_log.csv"
                if path.is_file():
                    out[arm_dir.name] = path
                    break
        return out

    def prediction_overlay(self, arm: str, slide: str) -> Path:
        return self._p("prediction_overlay", arm=arm, slide=slide)

    @property
    def eval_dir(self) -> Path:
        return self._p("eval_dir")

    @property
    def eval_summary(self) -> Path:
        return self.eval_dir / "summary.json"

    @property
    def per_patient(self) -> list[Path]:
        """Candidate per-patient tables, preferred first."""
        return [self.eval_dir / "per_patient.parquet", self.eval_dir / "per_patient.csv"]

    @property
    def per_slide(self) -> list[Path]:
        return [self.eval_dir / "per_slide.parquet", self.eval_dir / "per_slide.csv"]

    @property
    def benchmarks(self) -> Path:
        return self._p("benchmarks")

    def stage_configs(self) -> list[Path]:
        folder = self.root / Path(TEMPLATES["stage_config"]).parent
        return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _step_key(path: Path) -> tuple:
    """Sort key: the last integer in the file name (the training step), then the path."""
    digits = [int(tok) for tok in "".join(c if c.isdigit() else " " for c in path.stem).split()]
    return (digits[-1] if digits else -1, str(path))
