"""``sedm profile``: install the workflow's Snakemake profiles as user profiles.

Snakemake resolves ``--profile NAME`` to ``./NAME``, the user's config dir
(``~/.config/snakemake/NAME``) or the site config dir, never to a folder inside the workflow. The
shipped profiles live in ``workflow/profiles/<name>/config.yaml``; ``sedm profile install slurm
--account A --partition P`` writes the user profile from that template with the cluster's values
filled in, so ``snakemake --profile slurm`` works from the repository root as the README says.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sedm import __version__
from sedm.atomic import write_text
from sedm.errors import InputError

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
"""``workflow/profiles`` (the package holds a link to it, as for the config schemas)."""

GPU_RULES = ("train_autoencoder", "train_diffusion", "synthesize", "train_segmentation", "predict_slide")
"""Rules that the slurm profile sends to GPU nodes (its ``set-resources``)."""

_SLURM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def available() -> list[str]:
    return sorted(p.parent.name for p in PROFILES_DIR.glob("*/config.yaml"))


def user_profile_dir(name: str) -> Path:
    """Where Snakemake looks for ``--profile NAME`` after the working directory (same rule as Snakemake)."""
    try:
        from platformdirs import user_config_dir
    except ImportError:  # platformdirs comes with snakemake; without it, follow the XDG spec
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        return Path(base) / "snakemake" / name
    return Path(user_config_dir("snakemake", "snakemake")) / name


def _template(name: str) -> dict[str, Any]:
    path = PROFILES_DIR / name / "config.yaml"
    if not path.is_file():
        raise InputError(None, "profile", f"unknown profile {name!r}", f"use one of {available()}")
    return yaml.safe_load(path.read_text())


def _slurm_value(value: str, option: str) -> str:
    """``value`` as the Python string literal a Snakemake resource must be; only plain SLURM names pass,
    so nothing can break out of the quotes."""
    if not _SLURM_NAME.match(value):
        raise InputError(None, option, f"{value!r} is not a SLURM name",
                         "use letters, digits, '_', '.' and '-' (as `sinfo` / `sacctmgr` print it)")
    return f"'{value}'"


def render(name: str, *, account: str | None = None, partition: str | None = None,
           gpu_partition: str | None = None, gpu_model: str | None = None,
           cpus_per_gpu: int | None = None) -> str:
    """The user profile text: the shipped template with the cluster's values filled in."""
    profile = _template(name)
    cluster_options = {"--account": account, "--partition": partition, "--gpu-partition": gpu_partition,
                       "--gpu-model": gpu_model, "--cpus-per-gpu": cpus_per_gpu}
    if name != "slurm":
        given = [opt for opt, v in cluster_options.items() if v is not None]
        if given:
            raise InputError(None, given[0], f"only the slurm profile takes {', '.join(given)}",
                             "drop it, or install the slurm profile")
    else:
        for opt, value in (("--account", account), ("--partition", partition)):
            if not value:
                raise InputError(None, opt, "missing", f"pass {opt} (`sacctmgr show assoc user=$USER` and "
                                 "`sinfo -s` list yours)")
        if cpus_per_gpu is not None and cpus_per_gpu < 1:
            raise InputError(None, "--cpus-per-gpu", f"{cpus_per_gpu} is below 1", "pass a positive number")
        defaults = profile["default-resources"]
        defaults["slurm_account"] = _slurm_value(account, "--account")
        defaults["slurm_partition"] = _slurm_value(partition, "--partition")
        for rule in GPU_RULES:
            res = profile["set-resources"][rule]
            res["slurm_partition"] = _slurm_value(gpu_partition or partition, "--gpu-partition")
            if gpu_model:
                res["gpu_model"] = _slurm_value(gpu_model, "--gpu-model")
            if cpus_per_gpu is not None:
                res["cpus_per_gpu"] = cpus_per_gpu
    header = (f"# Written by `sedm profile install {name}` (sedm {__version__}) from the workflow's\n"
              f"# workflow/profiles/{name}/config.yaml, which documents every key. Edit freely.\n")
    return header + yaml.dump(profile, Dumper=_Dumper, sort_keys=False, width=120)


class _Dumper(yaml.SafeDumper):
    """Writes the doubly quoted resource strings as ``"'x'"`` (what the template uses), not ``'''x'''``."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = '"' if "'" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def install(name: str, dest: str | Path | None = None, *, force: bool = False, **options: Any) -> Path:
    """Write the profile ``name`` to ``dest`` (default: the user profile dir); returns the file written.

    Refuses to replace an existing profile unless ``force``; the file is written atomically.
    """
    text = render(name, **options)
    folder = Path(dest) if dest is not None else user_profile_dir(name)
    path = folder / "config.yaml"
    if path.exists() and not force:
        raise InputError(path, None, "a profile is already installed here",
                         "pass --force to replace it, or --dest DIR to write elsewhere")
    write_text(path, text)
    return path


# ------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("install", "show"),
                        help="install: write the user profile; show: print it without writing")
    parser.add_argument("name", help=f"profile to install ({', '.join(available())})")
    parser.add_argument("--account", help="SLURM account (slurm_account) jobs are charged to")
    parser.add_argument("--partition", help="SLURM partition of the CPU rules (slurm_partition)")
    parser.add_argument("--gpu-partition", help="partition of the GPU rules (default: --partition)")
    parser.add_argument("--gpu-model", help="GPU type the GPU rules ask for (gpu_model, e.g. a100); default: any")
    parser.add_argument("--cpus-per-gpu", type=int, help="CPUs per GPU of the GPU rules (default: the template's)")
    parser.add_argument("--dest", help="profile folder to write (default: Snakemake's user profile folder NAME)")
    parser.add_argument("--force", action="store_true", help="replace an installed profile")


def run(args: argparse.Namespace) -> int:
    options: Mapping[str, Any] = dict(account=args.account, partition=args.partition,
                                      gpu_partition=args.gpu_partition, gpu_model=args.gpu_model,
                                      cpus_per_gpu=args.cpus_per_gpu)
    if args.action == "show":
        sys.stdout.write(render(args.name, **options))
        return 0
    path = install(args.name, args.dest, force=args.force, **options)
    use = args.name if args.dest is None else str(path.parent)
    print(f"wrote {path}; run your cohort with: snakemake --profile {use} --configfile YOUR_CONFIG.yaml "
          "(without --configfile it runs the demo; `sedm write-config --cohort SHEET` writes a config)",
          file=sys.stderr)
    return 0
