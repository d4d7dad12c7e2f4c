"""A real cohort's starting config, written from the schema (``sedm write-config --cohort SHEET``).

Copying the demo's config.yaml hands a cohort the demo's 300-step CPU models; this writes every key
with the schema's default instead (sized for a GPU and a real cohort) and its description as a
comment, so the file documents itself. The classes come from the sheet's GeoJSON exports, in order of
annotated area, and QuPath's ``Ignore*`` classes are mapped to ``ignore``.
"""

from __future__ import annotations

import fnmatch
import textwrap
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sedm import __version__
from sedm.config import fill_defaults, load_samples, load_schema
from sedm.labels import IGNORE, QUPATH_IGNORE

LEFT_OUT = ("demo", "sedm_version")
"""Schema keys a cohort's config does not carry: the demo's generator, and what stage snapshots record."""


def sheet_classes(samples) -> tuple[list[str], dict[str, str]]:
    """(classes by annotated area, class_map) of the annotation files the sheet lists."""
    from sedm.tiling.annotations import class_areas

    area: Counter[str] = Counter()
    for path in sorted({p for p in samples["annotation_path"] if p}):
        area.update(class_areas(path))
    ignored = sorted(n for n in area if fnmatch.fnmatchcase(n, QUPATH_IGNORE))
    classes = [n for n, _ in area.most_common() if n not in ignored]
    return classes, ({QUPATH_IGNORE: IGNORE} if ignored else {})


def _value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip().removesuffix(
        "\n...").strip()


def _comment(text: str | None, indent: str) -> list[str]:
    if not text:
        return []
    return [f"{indent}# {line}" for line in textwrap.wrap(" ".join(text.split()), 100 - len(indent))]


def _lines(schema: Mapping, values: Mapping, indent: str = "") -> list[str]:
    out: list[str] = []
    for key, sub in schema.get("properties", {}).items():
        if key not in values:
            continue
        value = values[key]
        out += _comment(sub.get("description"), indent)
        if isinstance(value, Mapping) and value and "properties" in sub:
            out += [f"{indent}{key}:", *_lines(sub, value, indent + "  ")]
        elif isinstance(value, Mapping) and value:
            out += [f"{indent}{key}:", *(f"{indent}  {k}: {_value(v)}" for k, v in value.items())]
        else:
            out.append(f"{indent}{key}: {_value(value)}")
    return out


def cohort_config_text(sheet: str | Path) -> str:
    """The commented config for the cohort of ``sheet`` (validated: slides, roles, annotations readable)."""
    samples = load_samples(sheet)
    classes, class_map = sheet_classes(samples)
    schema = load_schema("config")
    values = {"samples": str(Path(sheet).resolve()), "classes": classes, "class_map": class_map}
    values = fill_defaults(schema, values)
    values = {k: v for k, v in values.items() if k not in LEFT_OUT}
    header = [f"# sedm config for the cohort of {sheet}, written by `sedm write-config --cohort` (sedm {__version__}).",
              "# Every key has the schema's default (workflow/schemas/config.schema.yaml), sized for a GPU and a",
              "# real cohort; a key you delete takes that default again. Check `classes` (from the sheet's",
              "# GeoJSON exports, by annotated area) and segmentation.arms, then: sedm validate --config THIS_FILE",
              ""]
    return "\n".join(header + _lines(schema, values)) + "\n"
