"""``sedm write-config``: one stage's config snapshot (JSON) for the workflow, or a cohort's first config.

Stage commands read their settings from such a snapshot (``--config``); because the snapshot is a
rule output whose params are the stage's sections, Snakemake reruns exactly the affected stages.
``--cohort SHEET`` writes a real cohort's config instead (:mod:`sedm.config_template`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sedm.atomic import write_text
from sedm.config import load_config, stage_config, validate_config
from sedm.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="full sedm config (YAML); with --stage")
    src.add_argument("--json", help="the stage's sections as a JSON string (as the workflow passes them); with --stage")
    src.add_argument("--cohort", metavar="SHEET", help="write a commented config for the cohort of this sample "
                     "sheet, every key at the schema's default (for a GPU and a real cohort)")
    parser.add_argument("--stage", help="stage whose sections to write (with --config or --json)")
    parser.add_argument("--out", help="file to write (required with --stage; --cohort prints to stdout without it)")
    parser.add_argument("--force", action="store_true", help="with --cohort: replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    if args.cohort:
        return _cohort(args)
    for option in ("stage", "out"):
        if not getattr(args, option):
            raise InputError(None, f"--{option}", "missing", f"pass --{option} with --config or --json")
    if args.config:
        config = load_config(args.config)
    else:
        config = validate_config(json.loads(args.json))
    write_text(args.out, json.dumps(stage_config(config, args.stage), indent=2, sort_keys=True) + "\n")
    return 0


def _cohort(args: argparse.Namespace) -> int:
    from sedm.config_template import cohort_config_text

    if args.stage:
        raise InputError(None, "--stage", "a stage snapshot is written from --config or --json, not --cohort",
                         "drop --stage to write the cohort's config")
    if args.out and Path(args.out).exists() and not args.force:
        raise InputError(args.out, None, "exists", "pass --force to replace it, or another --out")
    text = cohort_config_text(args.cohort)
    if args.out:
        write_text(args.out, text)
        print(f"wrote {args.out}; check it, then: sedm validate --config {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
