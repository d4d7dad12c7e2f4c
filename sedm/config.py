"""Config and sample-sheet loading with schema validation.

Snakemake (``workflow/rules/common.smk``) and the CLI both go through here, so a bad config gets
the same message whether or not Snakemake is used: the file, the key path, the problem and the fix.

pandas is imported by the functions that read a sample sheet, not here: ``sedm write-config`` (one job
per stage) reads only the config, and ``import pandas`` costs more than the rest of its start-up.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import yaml

from sedm.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SAMPLE_COLUMNS = ("slide_id", "patient_id", "slide_path", "annotation_path", "role")


@cache
def load_schema(name: str) -> dict:
    """The JSON schema ``workflow/schemas/<name>.schema.yaml`` (shipped inside the package too)."""
    with open(SCHEMA_DIR / f"{name}.schema.yaml") as fh:
        # the C loader when PyYAML has it: the config schema is parsed at every workflow start
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _fill_defaults(schema: Mapping, value: Any) -> Any:
    """Return ``value`` with every missing key that has a schema default filled in (recursively)."""
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    out = dict(value)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = _fill_defaults(sub, out[key])
    return out


def _schema_at(schema: Mapping, path: list) -> Mapping:
    for part in path:
        if isinstance(part, str):
            schema = schema.get("properties", {}).get(part, {})
        else:
            schema = schema.get("items", {})
    return schema


def _raise_first(errors: list, schema: Mapping, file: str | Path | None, prefix: str = "") -> None:
    if not errors:
        return
    err = min(errors, key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    path = list(err.absolute_path)
    if err.validator == "additionalProperties":
        known = sorted(_schema_at(schema, path).get("properties", {}))
        field = ".".join(str(p) for p in path) or "<top level>"
        raise InputError(file, prefix + field, err.message,
                         f"remove or rename the key; known keys here: {', '.join(known)}")
    sub = _schema_at(schema, path)
    field = prefix + (".".join(str(p) for p in path) or "<top level>")
    fix = sub.get("description") or "see workflow/schemas for the expected value"
    if err.validator == "enum":
        fix = f"use one of {err.validator_value}"
    elif err.validator == "required":
        fix = "add the missing key"
    raise InputError(file, field, err.message, fix)


def validate_config(config: Mapping, file: str | Path | None = None) -> dict:
    """Validate a config mapping against the schema and return it with defaults filled in."""
    schema = load_schema("config")
    filled = _fill_defaults(schema, dict(config))
    validator = jsonschema.Draft202012Validator(schema)
    _raise_first(list(validator.iter_errors(filled)), schema, file)
    return filled


def load_config(path: str | Path, runtime: str | None = None) -> dict:
    """Read a YAML config file, validate it and fill defaults.

    ``runtime``: the JSON text of a ``--runtime`` option (see :data:`RUNTIME_KEYS`), merged over the
    file's sections before validation.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "config file does not exist", "pass the path of an existing YAML file")
    try:
        # a stage snapshot is JSON: YAML 1.1 would read a number such as 1e-06 (no dot) as a string
        data = (json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())) or {}
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InputError(path, None, f"not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({exc})",
                         "fix the syntax") from None
    if not isinstance(data, dict):
        raise InputError(path, None, "top level is not a mapping", "write key: value pairs")
    if runtime:
        data = _merge_runtime(data, runtime)
    return validate_config(data, path)


_RUNTIME_EXAMPLE = '{"diffusion": {"device": "cuda"}}'


def _merge_runtime(data: dict, runtime: str) -> dict:
    try:
        sections = json.loads(runtime)
    except json.JSONDecodeError as exc:
        raise InputError(None, "--runtime", f"not valid JSON ({exc})",
                         f"pass an object like {_RUNTIME_EXAMPLE}") from None
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise InputError(None, "--runtime", "not an object of sections", f"pass an object like {_RUNTIME_EXAMPLE}")
    out = dict(data)
    for section, values in sections.items():
        bad = sorted(set(values) - RUNTIME_KEYS)
        if bad:
            raise InputError(None, f"--runtime {section}", f"{bad} change what a stage computes",
                             f"put them in the config file; --runtime takes only {sorted(RUNTIME_KEYS)}")
        out[section] = {**out.get(section, {}), **values}
    return out


_PER_COLUMN_KEYS = {"$schema", "description", "type", "properties", "required", "additionalProperties"}


def _rows_to_check(df: pd.DataFrame, schema: Mapping) -> list[int]:
    """Positions of the rows that may fail ``schema``, in order.

    The workflow parses the sheet at every start, and one jsonschema pass per row adds up to seconds
    for a cohort of thousands of slides. While the schema constrains each column on its own, every
    distinct value of a column is checked once instead and only rows holding a bad value are returned.
    """
    if set(schema) - _PER_COLUMN_KEYS:  # cross-column rules: check every row
        return list(range(len(df)))
    import pandas as pd

    bad = pd.Series(False, index=df.index)
    for column, sub in schema.get("properties", {}).items():
        if column in df.columns:
            is_valid = jsonschema.Draft202012Validator(sub).is_valid
            bad |= df[column].isin([v for v in df[column].unique() if not is_valid(v)])
    return [i for i, b in enumerate(bad.tolist()) if b]


def load_samples(path: str | Path) -> pd.DataFrame:
    """Read and validate a sample sheet; one row per slide, indexed by ``slide_id``.

    Checks every row against ``samples.schema.yaml`` and that slide IDs are unique. File existence
    is checked by the stage that opens the file (demo slides do not exist before the demo rule).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "sample sheet does not exist",
                         "set `samples` in the config to a TSV file with columns " + ", ".join(SAMPLE_COLUMNS))
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    except pd.errors.EmptyDataError:
        raise InputError(path, None, "the file is empty", "write a header line naming "
                         + ", ".join(SAMPLE_COLUMNS) + " and one tab-separated row per slide") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(path, None, f"not a readable TSV ({exc})", "save the sheet as tab-separated text") from None
    missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(path, ", ".join(missing), "missing column(s)",
                         "the header must name " + ", ".join(SAMPLE_COLUMNS))
    if df.empty:
        raise InputError(path, None, "the sheet has a header but no slides", "add one row per slide")
    df = df.apply(lambda col: col.str.strip())
    schema = load_schema("samples")
    validator = jsonschema.Draft202012Validator(schema)
    for i in _rows_to_check(df, schema):
        _raise_first(list(validator.iter_errors(df.iloc[i].to_dict())), schema, path, prefix=f"row {i + 2} ")
    dup = df["slide_id"][df["slide_id"].duplicated()].unique().tolist()
    if dup:
        raise InputError(path, "slide_id", f"duplicate slide_id {dup}", "give every slide a unique slide_id")
    needs_ann = df[(df["role"] != "unlabelled") & (df["annotation_path"] == "")]
    if len(needs_ann):
        raise InputError(path, f"row {needs_ann.index[0] + 2} annotation_path",
                         f"slide {needs_ann['slide_id'].iloc[0]!r} has role {needs_ann['role'].iloc[0]!r} "
                         "but no annotation", "give labelled and test slides a GeoJSON, or mark the slide unlabelled")
    return df.set_index("slide_id", drop=False)


def check_pyramid(config: Mapping, file: str | Path | None = None) -> None:
    """Every tile must halve into whole tiles down to the coarsest pyramid level."""
    tile_size, levels = int(config["tiling"]["tile_size"]), int(config["tiling"]["pyramid_levels"])
    if tile_size % 2 ** (levels - 1):
        raise InputError(file, "tiling.pyramid_levels", f"{levels} levels halve the {tile_size} px tiles "
                         f"{levels - 1} times, and {tile_size} is not divisible by 2^{levels - 1}",
                         "use a power-of-two tiling.tile_size or fewer tiling.pyramid_levels")


def _patients(samples: pd.DataFrame, role: str) -> set[str]:
    return set(samples.loc[samples["role"] == role, "patient_id"])


def _listed(items: set[str], most: int = 5) -> str:
    names = sorted(items)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def check_cohort(config: Mapping, samples: pd.DataFrame, config_file: str | Path | None = None,
                 samples_file: str | Path | None = None) -> None:
    """What neither file's schema can say alone, checked before any job (Snakemake's parse, `sedm validate`).

    The evaluation baseline is an arm; there is a labelled slide to train on; and no test patient
    leaks into training: its labels never (a labelled slide of a test patient), its stain only on
    purpose (an unlabelled slide of a test patient is a style source of the synthetic arms, allowed
    by ``evaluation.allow_test_patient_styles``).
    """
    sheet = samples_file or config["samples"]
    check_pyramid(config, config_file)
    arms = config["segmentation"]["arms"]
    if config["evaluation"]["baseline"] not in arms:
        raise InputError(config_file, "evaluation.baseline", f"{config['evaluation']['baseline']!r} is not an arm",
                         f"set it to one of segmentation.arms: {', '.join(arms)}")
    if not (samples["role"] == "labelled").any():
        raise InputError(sheet, "role", "no slide has role 'labelled'; diffusion and segmentation train on them",
                         "mark at least one annotated slide labelled")
    test = _patients(samples, "test")
    if both := test & _patients(samples, "labelled"):
        raise InputError(sheet, "patient_id", f"patient(s) {_listed(both)} have labelled and test slides: the "
                         "segmenters would be evaluated on patients they were trained on",
                         "give each patient's slides one side: all test, or labelled/unlabelled")
    if (both := test & _patients(samples, "unlabelled")) and not config["evaluation"]["allow_test_patient_styles"]:
        raise InputError(sheet, "patient_id", f"patient(s) {_listed(both)} have unlabelled and test slides: the "
                         "synthetic arms would train in the stain of test patients",
                         "drop those unlabelled slides or mark them test; or, to adapt to the test patients' "
                         "stain on purpose, set evaluation.allow_test_patient_styles: true in the config")


STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "demo": ("classes", "demo"),
    "tiling": ("classes", "slides", "tissue", "tiling"),
    "autoencoder": ("seed", "classes", "autoencoder"),
    "diffusion": ("seed", "classes", "diffusion"),
    "synthesis": ("seed", "classes", "synthesis"),
    "segmentation": ("seed", "classes", "segmentation"),
    "styles": ("seed", "classes", "styles"),
    "evaluation": ("seed", "classes", "evaluation"),
}
"""Config sections each stage reads. The workflow snapshots them per stage (``sedm write-config``),
so changing a section reruns exactly the stages that read it and everything downstream."""

STAGE_SECTIONS["report"] = tuple(k for k in load_schema("config")["properties"] if k != "sedm_version")
"""The report prints the whole config in its provenance footer, so its snapshot holds every section."""


RUNTIME_KEYS = frozenset({"threads", "gpus", "mem_mb", "runtime_min", "device", "num_workers", "compile",
                          "checkpoint_every", "ckpt_every", "keep_checkpoints", "sample_every", "log_every"})
"""Keys (in any section) that change how fast, where or how observably a stage runs, not what it
computes. They are left out of the stage snapshots, so changing them (say, more memory after an
out-of-memory kill on the cluster) reruns nothing; the workflow hands their current values to each
command as ``--runtime`` JSON instead. Resume fingerprints ignore them too, so a run may continue
on another device or with other checkpoint settings."""


def _check_stage(stage: str) -> None:
    if stage not in STAGE_SECTIONS:
        raise InputError(None, "stage", f"unknown stage {stage!r}", f"use one of {sorted(STAGE_SECTIONS)}")


def stage_config(config: Mapping, stage: str) -> dict:
    """The part of a validated config that ``stage``'s results depend on, plus the sedm version."""
    from sedm import __version__

    _check_stage(stage)
    snap = {}
    for key in STAGE_SECTIONS[stage]:
        value = config[key]
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in RUNTIME_KEYS}
        snap[key] = copy.deepcopy(value)
    snap["sedm_version"] = __version__
    return snap


def runtime_config(config: Mapping, stage: str) -> dict:
    """The :data:`RUNTIME_KEYS` of ``stage``'s sections: what ``stage_config`` leaves out."""
    _check_stage(stage)
    return {key: runtime for key in STAGE_SECTIONS[stage] if isinstance(config[key], Mapping)
            and (runtime := {k: v for k, v in config[key].items() if k in RUNTIME_KEYS})}


def add_config_arguments(parser: argparse.ArgumentParser, help: str) -> None:
    """``--config`` and ``--runtime``: the options every stage command reads its settings from."""
    parser.add_argument("--config", required=True, help=help)
    parser.add_argument("--runtime", default=None, metavar="JSON",
                        help=f"runtime-only settings over --config, e.g. '{_RUNTIME_EXAMPLE}'; the workflow passes "
                             "them here so that changing them reruns nothing")
