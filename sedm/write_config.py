"""``sedm write-config``: write one stage's config snapshot (JSON) for the workflow.

Stage commands read their settings from such a snapshot (``--config``); because the snapshot is a
rule output whose params are the stage's sections, Snakemake reruns exactly the affected stages.
"""

from __future__ import annotations

import argparse
import json

from sedm.atomic import write_text
from sedm.config import load_config, stage_config, validate_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", required=True, help="stage whose sections to write")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="full sedm config (YAML)")
    src.add_argument("--json", help="the stage's sections as a JSON string (as the workflow passes them)")
    parser.add_argument("--out", required=True, help="JSON file to write")


def run(args: argparse.Namespace) -> int:
    if args.config:
        config = load_config(args.config)
    else:
        config = validate_config(json.loads(args.json))
    write_text(args.out, json.dumps(stage_config(config, args.stage), indent=2, sort_keys=True) + "\n")
    return 0
