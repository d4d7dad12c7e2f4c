"""Where the report finds each stage's outputs under the results folder.

The paths come from :data:`sedm.layout.RESULTS`, the layout the workflow writes, and the file names
inside run and output folders from the stages' ``outputs`` modules, so ``sedm report`` works on a
results folder without Snakemake: this module is the only place in the report that knows the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sedm.diffusion import outputs as diffusion_out
from sedm.evaluation import outputs as eval_out
from sedm.layout import RESULTS
from sedm.segmentation import outputs as seg_out


@dataclass(frozen=True)
class ResultsLayout:
    """The fixed output layout of one results folder."""

    root: Path

    def _p(self, name: str, **fields: str) -> Path:
        return self.root / RESULTS[name].format(**fields)

    def tissue_qc(self, slide: str) -> Path:
        return self._p("tissue_qc", slide=slide)

    @property
    def tiling_summary(self) -> Path:
        return self._p("tiling_summary")

    @property
    def autoencoder_qa(self) -> Path:
        return self._p("autoencoder_qa")

    @property
    def autoencoder_montage(self) -> Path:
        return self._p("autoencoder_montage")

    @property
    def diffusion_model(self) -> Path:
        return self._p("diffusion_model")

    @property
    def diffusion_run(self) -> Path:
        return self._p("diffusion_run")

    @property
    def train_log(self) -> Path:
        return self.diffusion_run / diffusion_out.TRAIN_LOG

    def sample_grids(self) -> list[Path]:
        """Sample-grid PNGs written during diffusion training, oldest step first."""
        run = self.diffusion_run
        pngs = sorted(run.rglob("*.png"), key=_step_key) if run.is_dir() else []
        samples = [p for p in pngs if "sample" in p.relative_to(run).as_posix().lower()]
        return samples or pngs  # other PNGs (plots) only when nothing is named as samples

    @property
    def style_check(self) -> Path:
        return self._p("style_check")

    @property
    def style_grid(self) -> Path:
        return self._p("style_grid")

    @property
    def layout_fidelity(self) -> Path:
        return self._p("layout_fidelity")

    def synthesis_montage(self, slide: str) -> Path:
        return self._p("synthesis_montage", slide=slide)

    def synthesis_stats(self, slide: str) -> Path:
        return self._p("synthesis_stats", slide=slide)

    def memorisation(self, slide: str) -> Path:
        return self._p("memorisation", slide=slide)

    @property
    def style_table(self) -> Path:
        return self._p("style_table")

    @property
    def seg_train_log_pattern(self) -> Path:
        """What :meth:`seg_train_logs` looks for, for a "not run" note."""
        return self._p("seg_run", arm="<arm>") / seg_out.TRAIN_LOG

    def seg_train_logs(self) -> dict[str, Path]:
        """Segmentation training log per arm (the run folder's, else the copy in the model folder)."""
        base = self.root / Path(RESULTS["seg_run"]).parent.parent
        out = {}
        for arm_dir in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
            for name in ("seg_run", "seg_model"):
                path = self._p(name, arm=arm_dir.name) / seg_out.TRAIN_LOG
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
        return self.eval_dir / eval_out.SUMMARY_JSON

    @property
    def per_patient(self) -> list[Path]:
        """The per-patient table in each format it is written in, preferred first."""
        return [self.eval_dir / (eval_out.PER_PATIENT + s) for s in eval_out.TABLE_SUFFIXES]

    @property
    def per_slide(self) -> list[Path]:
        return [self.eval_dir / (eval_out.PER_SLIDE + s) for s in eval_out.TABLE_SUFFIXES]

    @property
    def benchmarks(self) -> Path:
        """Snakemake's benchmark files: ``<rule>/<job>.tsv`` below this folder."""
        return self.root / Path(RESULTS["bench"]).parent.parent

    def benchmark(self, rule: str, job: str) -> Path:
        """The benchmark file of one job (``job``: the name its rule gives it, e.g. the arm or slide)."""
        return self.root / RESULTS["bench"].format(rule=rule, name=job)

    @property
    def stage_config_dir(self) -> Path:
        return self.root / Path(RESULTS["stage_config"]).parent

    def stage_configs(self) -> list[Path]:
        """Every stage's config snapshot, then a share sweep's per-arm ones (``segmentation/<arm>.json``)."""
        folder = self.stage_config_dir
        arms = self.root / Path(RESULTS["arm_config"]).parent
        return (sorted(folder.glob("*.json")) if folder.is_dir() else []) + \
            (sorted(arms.glob("*.json")) if arms.is_dir() else [])


def _step_key(path: Path) -> tuple:
    """Sort key: the last integer in the file name (the training step), then the path."""
    digits = [int(tok) for tok in "".join(c if c.isdigit() else " " for c in path.stem).split()]
    return (digits[-1] if digits else -1, str(path))
