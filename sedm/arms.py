"""The segmentation arms that are trained, by name: ``segmentation.arms`` times the synthetic shares.

``segmentation.synthetic_fraction`` is one number or a list of numbers. One number: every arm keeps
its name and the synthetic arms train with that share per batch (as before shares could be swept).
A list: every arm with synthetic data becomes one *variant* per share, named by :func:`variant_name`
(``stedm-s040`` for 0.40), each with its own training job, model, predictions and evaluation row;
arms without synthetic data keep their name. The workflow (wildcard ``arm``), ``sedm train-seg``,
the evaluation and the report all name arms through :func:`arm_variants`, so a name means the same
everywhere.

Reruns stay exact under a sweep: each arm then reads its own config snapshot
(:func:`arm_snapshot`: its entry of ``segmentation.arms`` and its one share), so adding a share adds
one snapshot and trains one model; the others' snapshots do not change. With one number the
workflow keeps the stage's shared snapshot, so results made before sweeps existed stay up to date.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sedm.errors import InputError

SHARE_FIELD = "segmentation.synthetic_fraction"
PERCENT = 100
"""Shares are named in whole percent; three digits keep names of one sweep the same length and sorted."""


@dataclass(frozen=True)
class ArmVariant:
    """One trained arm: its name, the ``segmentation.arms`` entry it comes from and its share."""

    name: str
    family: str
    """The key of ``segmentation.arms`` (``stedm`` for ``stedm-s040``)."""
    share: float
    """Share of synthetic samples per training batch: 0 for an arm without synthetic data."""
    swept: bool
    """One of several shares of its family (named with the share)."""
    config: dict[str, Any] = field(compare=False)
    """The family's arm entry (``synthetic``, ``stain_aug``, ...)."""

    @property
    def synthetic(self) -> bool:
        return bool(self.config["synthetic"])


def variant_name(arm: str, share: float) -> str:
    """The name of arm ``arm`` trained with synthetic share ``share`` in a sweep: ``<arm>-s<percent>``,
    three digits (0.4 -> ``stedm-s040``). Letters, digits, ``_`` and ``-`` only: a folder name on every
    system, a Snakemake wildcard and a shell word that needs no quoting; arm names have no ``-`` (schema),
    so a variant never takes an arm's name."""
    return f"{arm}-s{round(share * PERCENT):03d}"


def swept_shares(seg: Mapping[str, Any], file: str | Path | None = None) -> list[float] | None:
    """The shares of a sweep in ascending order, or None when ``synthetic_fraction`` is one number.

    Each must be a whole percent: names carry the share in percent, and two shares with one name
    would be one model.
    """
    value = seg["synthetic_fraction"]
    if not isinstance(value, list):
        return None
    shares = sorted(float(v) for v in value)
    for share in shares:
        if abs(share * PERCENT - round(share * PERCENT)) > 1e-9:
            raise InputError(file, SHARE_FIELD, f"share {share!r} is not a whole percent",
                             f"round it to {round(share * PERCENT) / PERCENT:g}: arm variants are named in percent")
    return shares


def arm_variants(seg: Mapping[str, Any], file: str | Path | None = None) -> dict[str, ArmVariant]:
    """Every arm that is trained, by name, in ``segmentation.arms`` order (a family's shares ascending)."""
    shares = swept_shares(seg, file)
    out: dict[str, ArmVariant] = {}
    for arm, spec in seg["arms"].items():
        spec = dict(spec)
        if not spec["synthetic"]:
            out[arm] = ArmVariant(arm, arm, 0.0, False, spec)
        elif shares is None:
            out[arm] = ArmVariant(arm, arm, float(seg["synthetic_fraction"]), False, spec)
        else:
            for share in shares:
                name = variant_name(arm, share)
                out[name] = ArmVariant(name, arm, share, True, spec)
    return out


def arm_names(seg: Mapping[str, Any]) -> list[str]:
    """The names of :func:`arm_variants`, in order."""
    return list(arm_variants(seg))


def arm_snapshot(snapshot: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The segmentation stage's config snapshot (``stage_config(config, "segmentation")``) for arm
    ``name`` of a sweep: ``segmentation.arms`` holds only its family and ``synthetic_fraction`` only its
    share (a one-share list, so the name is unchanged), or 0 for an arm without synthetic data. Adding
    or removing a share or an arm leaves it as it is; a change to any other segmentation setting
    changes every arm's."""
    variant = arm_variants(snapshot["segmentation"])[name]
    snap = copy.deepcopy(dict(snapshot))
    seg = snap["segmentation"]
    seg["arms"] = {variant.family: variant.config}
    seg["synthetic_fraction"] = [variant.share] if variant.swept else variant.share
    return snap
