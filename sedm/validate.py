"""``sedm validate``: check a config and its sample sheet before launching anything."""

from __future__ import annotations

import argparse

from sedm.config import load_config, load_samples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.yaml", help="workflow config (YAML)")
    parser.add_argument("--samples", help="sample sheet; defaults to the config's `samples`")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    samples = load_samples(args.samples or config["samples"])
    counts = samples["role"].value_counts().to_dict()
    print(f"ok: {len(samples)} slides, {samples['patient_id'].nunique()} patients, roles {counts}")
    return 0
