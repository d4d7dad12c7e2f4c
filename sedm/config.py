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
import os
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


def fill_defaults(schema: Mapping, value: Any) -> Any:
    """Return ``value`` with every missing key that has a schema default filled in (recursively)."""
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    out = dict(value)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = fill_defaults(sub, out[key])
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
        missing = next(k for k in err.validator_value if k not in err.instance)
        field = prefix + ".".join([*(str(p) for p in path), missing])
        described = _schema_at(schema, [*path, missing]).get("description")
        fix = "add it" + (f": {' '.join(described.split())}" if described else "")
        if missing == "classes" and not path:
            fix += "; `sedm write-config --cohort SHEET` reads them from the sheet's GeoJSON exports"
    elif err.validator == "type" and isinstance(err.instance, str):
        fix += ("; a value set with `snakemake --config section={...}` arrives as text: set it in the config file "
                "instead")
    raise InputError(file, field, err.message, fix)


def validate_config(config: Mapping, file: str | Path | None = None) -> dict:
    """Validate a config mapping against the schema and return it with defaults filled in."""
    schema = load_schema("config")
    filled = fill_defaults(schema, dict(config))
    validator = jsonschema.Draft202012Validator(schema)
    _raise_first(list(validator.iter_errors(filled)), schema, file)
    return filled


def validate_section(section: str, values: Mapping | None = None) -> dict:
    """One config section, validated, with its defaults filled: for code that reads one section of
    settings without a whole config (a cohort's ``classes`` are not needed to know a default)."""
    schema = load_schema("config")["properties"][section]
    filled = fill_defaults(schema, dict(values or {}))
    _raise_first(list(jsonschema.Draft202012Validator(schema).iter_errors(filled)), schema, None, f"{section}.")
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


_SEPARATORS = {",": "commas", ";": "semicolons"}
_FIX_TSV = ("save the sheet as tab-separated text (Excel: 'Text (Tab delimited)'; LibreOffice: field "
            "delimiter {Tab})")
PATH_COLUMNS = ("slide_path", "annotation_path")
"""Sheet columns holding file paths; relative ones are read from the sheet's folder."""


def _sheet_text(path: Path) -> str:
    """The sheet's text without its comment lines.

    Only a line whose first character is ``#`` is a comment: a ``#`` inside a field (a folder named
    ``case#12``) is data, which pandas' ``comment=`` would cut off mid-row.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, None, f"not UTF-8 text (byte {exc.start})", _FIX_TSV + " in UTF-8") from None
    return "".join(line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("#"))


def _check_separator(path: Path, text: str) -> None:
    header = next((line for line in text.splitlines() if line.strip()), "")
    if "\t" in header:
        return
    for sep, name in _SEPARATORS.items():
        if sum(c in (p.strip() for p in header.split(sep)) for c in SAMPLE_COLUMNS) >= 2:
            raise InputError(path, "header", f"the columns are separated by {name}, not tabs", _FIX_TSV)


def sheet_path(sheet: str | Path, value: str) -> str:
    """``value`` of a path column as an absolute path: relative paths are read from the sheet's folder,
    so a sheet and its slides can move together and the workflow's working directory does not matter."""
    if not value:
        return ""
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() else Path(sheet).resolve().parent / path)


def load_samples(path: str | Path) -> pd.DataFrame:
    """Read and validate a sample sheet; one row per slide, indexed by ``slide_id``.

    Checks every row against ``samples.schema.yaml``, that slide IDs are unique and that no file is
    listed twice. Paths come back absolute (see :func:`sheet_path`). Whether the files exist and open
    is checked by ``sedm validate`` and the workflow's start (:mod:`sedm.validate`): demo slides do not
    exist before the demo rule.
    """
    import io

    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(path.absolute(), None, "sample sheet does not exist",
                         "set `samples` in the config to a TSV file with columns " + ", ".join(SAMPLE_COLUMNS))
    text = _sheet_text(path)
    if not text.strip():
        raise InputError(path, None, "the file is empty", "write a header line naming "
                         + ", ".join(SAMPLE_COLUMNS) + " and one tab-separated row per slide")
    _check_separator(path, text)
    try:
        df = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:
        raise InputError(path, None, f"not a readable TSV ({exc})", _FIX_TSV) from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(path, ", ".join(missing), "missing column(s)",
                         "the tab-separated header must name " + ", ".join(SAMPLE_COLUMNS))
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
    given = {column: dict(zip(df["slide_id"], df[column])) for column in PATH_COLUMNS}
    for column in PATH_COLUMNS:
        df[column] = [sheet_path(path, v) for v in df[column]]
        _check_listed_once(path, df, column)
    df = df.set_index("slide_id", drop=False)
    df.attrs["given"] = given  # the paths as written, for messages about relative ones
    return df


def _check_listed_once(sheet: Path, df: pd.DataFrame, column: str) -> None:
    """The same file under two slide IDs: a slide in training and test at once, or one slide's
    annotations on another (found here by path; ``sedm validate`` also compares contents)."""
    listed = df.loc[df[column] != "", ["slide_id", column]]
    twice = listed[listed[column].duplicated(keep=False)]
    if len(twice):
        first = twice[column].iloc[0]
        ids = twice.loc[twice[column] == first, "slide_id"].tolist()
        raise InputError(sheet, column, f"{first} is listed for slides {', '.join(ids)}",
                         "give each slide its own file; a slide scanned twice is one slide: keep one row")


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

    The evaluation baseline is an arm that is trained (a sweep's synthetic arms carry their share in
    their names, :mod:`sedm.arms`, and its shares must name distinct arms); there is a
    labelled slide to train on; and no test patient leaks into training: its labels never (a labelled
    slide of a test patient), its stain only on purpose (an unlabelled slide of a test patient is a
    style source of the synthetic arms, allowed by ``evaluation.allow_test_patient_styles``).
    """
    from sedm.labels import check_class_map
    from sedm.arms import arm_variants

    sheet = samples_file or config["samples"]
    check_pyramid(config, config_file)
    check_class_map(config["class_map"], config["classes"], config_file)
    arms = config["segmentation"]["arms"]
    names = arm_variants(config["segmentation"], config_file)  # a sweep's arms are named by their share
    if config["evaluation"]["baseline"] not in names:
        raise InputError(config_file, "evaluation.baseline", f"{config['evaluation']['baseline']!r} is not an arm",
                         f"set it to one of the arms trained: {', '.join(names)}")
    if not (samples["role"] == "labelled").any():
        raise InputError(sheet, "role", "no slide has role 'labelled'; diffusion and segmentation train on them",
                         "mark at least one annotated slide labelled")
    synthetic = [name for name, arm in arms.items() if arm["synthetic"]]
    if synthetic and not (samples["role"] == "unlabelled").any():
        raise InputError(sheet, "role", f"arm(s) {', '.join(synthetic)} train on synthetic data, but no slide is "
                         "unlabelled: synthesis draws its styles from the unlabelled slides",
                         "add unlabelled slides (other patients, labs, scanners) or remove those arms from "
                         "segmentation.arms")
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


def require_samples(config: Mapping, config_file: str | Path | None = None) -> str:
    """The sample sheet a workflow run reads: the schema gives ``samples`` no default (a real cohort
    must never fall back on the demo's sheet)."""
    if not config.get("samples"):
        raise InputError(config_file, "samples", "no sample sheet given",
                         "add `samples: path/to/samples.tsv` (columns " + ", ".join(SAMPLE_COLUMNS) + ")")
    return config["samples"]


def cohort_warnings(config: Mapping, samples: pd.DataFrame) -> list[str]:
    """What runs but is probably not what the user wants: printed by `sedm validate` and at the
    workflow's start, never silent."""
    out = []
    synthetic = [name for name, arm in config["segmentation"]["arms"].items() if arm["synthetic"]]
    n_unlabelled = int((samples["role"] == "unlabelled").sum())
    if synthetic and n_unlabelled == 1:
        out.append("one unlabelled slide: the style check (does the model follow its style patches, "
                   "compared across slides) needs two and is left out of the run and the report")
    if not (samples["role"] == "test").any():
        out.append("no slide has role 'test': the arms are trained but not evaluated (no per-patient results)")
    if not config["demo"]["enabled"] and (demo := demo_settings(config)):
        shown = ", ".join(f"{k}: {v!r} (default {d!r})" for k, v, d in demo[:6])
        more = f" and {len(demo) - 6} more" if len(demo) > 6 else ""
        out.append(f"{len(demo)} settings are the demo's small CPU values, not the defaults for a real cohort: "
                   f"{shown}{more}. Remove them to get the defaults (or start from `sedm write-config --cohort "
                   "SHEET`); keep them only on purpose")
    return out


DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
"""The demo's config (the repository's top-level config.yaml): its values are what a config copied from
it carries over. Absent in an installed wheel, where nothing is compared."""

_NOT_DEMO_SIZED = ("samples", "results", "seed", "classes", "class_map", "demo", "sedm_version")


def demo_settings(config: Mapping, demo_file: Path = DEMO_CONFIG) -> list[tuple[str, Any, Any]]:
    """(key, value, schema default) of every setting that equals the demo config's value where that
    differs from the schema default: the small CPU sizes a config copied from config.yaml still has."""
    if not demo_file.is_file():
        return []
    demo = yaml.safe_load(demo_file.read_text()) or {}
    defaults = fill_defaults(load_schema("config"), {})
    found: list[tuple[str, Any, Any]] = []

    def walk(mine: Any, theirs: Any, default: Any, key: str) -> None:
        if isinstance(theirs, Mapping) and isinstance(mine, Mapping) and isinstance(default, Mapping):
            for k, v in theirs.items():
                if k in mine and k in default and k not in RUNTIME_KEYS:
                    walk(mine[k], v, default[k], f"{key}.{k}" if key else k)
        elif mine == theirs and theirs != default:
            found.append((key, mine, default))

    walk({k: v for k, v in config.items() if k not in _NOT_DEMO_SIZED}, demo, defaults, "")
    return sorted(found, key=lambda f: f[0].rsplit(".", 1)[-1] not in _TELLING)  # stable: schema order next


_TELLING = ("preset", "max_steps")
"""Demo settings named first: the ones that make a model a toy."""


STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "demo": ("classes", "demo"),
    "tiling": ("classes", "class_map", "slides", "tissue", "tiling"),
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
