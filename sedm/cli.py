"""The ``sedm`` command line: one subcommand per pipeline stage.

Stage modules are imported only when their command runs, so ``sedm --help`` and light commands do
not pay for importing torch. A stage module provides ``add_arguments(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from sedm import __version__
from sedm.errors import InputError
from sedm.runtime.joblog import log_to, succeeded

# command -> (module, one-line help). Keep in pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("sedm.validate", "check a config and sample sheet without computing anything"),
    "write-config": ("sedm.write_config", "write one stage's config snapshot (used by the workflow)"),
    "demo-cohort": ("sedm.demo.cohort", "generate the synthetic demo cohort (slides, GeoJSON, samples.tsv)"),
    "tile": ("sedm.tiling.command", "tile one slide into a Zarr v3 store plus a tile table"),
    "tiling-summary": ("sedm.tiling.summary", "aggregate the tile tables of all slides"),
    "train-autoencoder": ("sedm.autoencoder.train", "train the cohort's latent autoencoder (and its layout decoder)"),
    "train-diffusion": ("sedm.diffusion.train", "train the layout+style conditioned diffusion model (STEDM)"),
    "synthesize": ("sedm.synthesis.synthesize", "generate labelled synthetic data in the style of one unlabelled slide"),
    "near-copies": ("sedm.synthesis.memorisation", "memorisation check: synthetic tiles' nearest labelled windows vs real-to-real"),
    "style-check": ("sedm.synthesis.style_check", "measure how far the diffusion model follows its style patches"),
    "stylize": ("sedm.synthesis.stylize", "restyle image tiles zero-shot to the style of a slide or image folder"),
    "style-stats": ("sedm.styles.slide", "whole-slide stain statistics of one slide or synthetic store (dask)"),
    "style-embedding": ("sedm.styles.embedding", "mean and spread of the model's style vectors over a slide"),
    "style-table": ("sedm.styles.table", "the cohort table of styles (one row per slide and synthetic set)"),
    "train-seg": ("sedm.segmentation.train", "train one segmentation arm (real, stain-augmented, + synthetic)"),
    "predict": ("sedm.segmentation.predict", "segment one slide store with a trained arm (Zarr, overlay PNG, GeoJSON)"),
    "layout-fidelity": ("sedm.evaluation.layout_fidelity", "score synthetic tiles against their layouts"),
    "evaluate": ("sedm.evaluation.evaluate", "per-patient Dice/IoU of every arm on the test slides, paired comparisons"),
    "report": ("sedm.report.build", "write the self-contained HTML report over a results folder"),
    "profile": ("sedm.profile", "install the Snakemake profile for a SLURM cluster (or one machine) as a user profile"),
}

TENSOR_FREE: frozenset[str] = frozenset({
    "validate", "write-config", "demo-cohort", "tile", "tiling-summary", "style-stats", "style-table", "evaluate",
    "report", "profile"})
"""Commands whose work uses no tensor. Their modules must not import torch or diffusers, not even through
a shared helper: ``import torch`` alone costs seconds, and several of these run once per slide
(``tests/test_startup.py`` checks the imports, ``benchmarks/startup.py`` times the start-up)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sedm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sedm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _without_log(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--log="):
            skip = False
        elif arg == "--log":
            skip = True
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    top, rest = parser.parse_known_args(argv)
    if top.command is None:
        parser.print_help()
        return 2
    module_name, help_text = COMMANDS[top.command]
    logging.basicConfig(
        level=logging.DEBUG if top.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # sedm never downloads weights
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"sedm {top.command}", description=help_text)
    module.add_arguments(sub)
    sub.add_argument("--log", metavar="FILE", help="write messages to FILE (the workflow's rule log); an attempt "
                                                   "that fails keeps its log as FILE.attempt-N, N = 1, 2, ...")
    args = sub.parse_args(rest)
    attempt = log_to(args.log) if args.log else None
    # for commands that launch themselves again (train-diffusion under torchrun), whose processes
    # inherit the log as their standard error
    args.argv = _without_log(argv)
    try:
        rc = int(module.run(args) or 0)
    except InputError as exc:
        print(f"sedm {top.command}: error: {exc}", file=sys.stderr)
        return 2
    if rc == 0:
        succeeded(attempt)
    return rc


if __name__ == "__main__":
    sys.exit(main())
