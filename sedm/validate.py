"""``sedm validate``: check a config and its sample sheet before launching anything.

It checks what the workflow checks when Snakemake parses it (the schemas, then
:func:`sedm.config.check_cohort`), plus what needs the files: every slide opens, with a µm/px, and is
large enough for the tiling pyramid. Slides the demo generates (under ``demo.out`` while
``demo.enabled``) are not there yet and are skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sedm.config import check_cohort, load_config, load_samples


def _demo_made(path: str, config: dict) -> bool:
    demo = config["demo"]
    return demo["enabled"] and Path(demo["out"]).resolve() in Path(path).resolve().parents


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.yaml", help="workflow config (YAML)")
    parser.add_argument("--samples", help="sample sheet; defaults to the config's `samples`")


def run(args: argparse.Namespace) -> int:
    from sedm.tiling.command import check_slide

    config = load_config(args.config)
    sheet = args.samples or config["samples"]
    samples = load_samples(sheet)
    check_cohort(config, samples, args.config, sheet)
    slides = [p for p in samples["slide_path"] if not _demo_made(p, config)]
    for path in slides:
        check_slide(path, config)
    counts = samples["role"].value_counts().to_dict()
    print(f"ok: {len(samples)} slides ({len(slides)} opened), {samples['patient_id'].nunique()} patients, "
          f"roles {counts}")
    return 0
