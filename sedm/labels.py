"""Label values shared by every stage: the single place that defines them.

Stored label masks (tile stores, synthetic stores, predictions) use

* ``UNANNOTATED`` (0): pixels no annotation covers. Losses and metrics ignore them.
* ``1 .. K``: the classes of the config's ``classes`` list, in that order.

QuPath class names reach these values through the config's ``class_map`` (:func:`mapped_class`): a
name is a class of ``classes`` as it is, or mapped to one, or mapped to :data:`IGNORE`, whose regions
are stored as ``UNANNOTATED`` (left out of training and scoring, like unannotated glass).

Layout one-hot tensors for the diffusion model have ``K + 1`` channels: channel 0 is the
"unannotated" channel and channel k is class k, so label value == channel index.

Label colours are defined here too (:data:`CLASS_RGB`): the store's OME-NGFF label colours (what
napari and QuPath show), prediction overlays and GeoJSON, training previews and synthesis montages.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

from sedm.errors import InputError

UNANNOTATED = 0
"""Label value of pixels without annotation; ignored by segmentation losses and metrics."""
UNANNOTATED_RGB = (40, 40, 40)
"""Colour of unannotated pixels in label images (dark grey: apart from glass and every class)."""
CLASS_RGB = ((230, 60, 60), (60, 160, 230), (240, 200, 40), (120, 200, 90), (180, 90, 200),
             (255, 140, 0), (0, 200, 180), (150, 150, 150))
"""Colours of label values 1, 2, ...; repeated from the start for more classes."""


IGNORE = "ignore"
"""``class_map`` target of QuPath classes whose regions are left out: their pixels are stored as
:data:`UNANNOTATED`, also where they overlap a class region (an Ignore* region drawn inside a tumour
takes that part out of it). Reserved: no class of ``classes`` may have this name."""
QUPATH_IGNORE = "Ignore*"
"""QuPath's built-in class for regions to leave out (the asterisk is part of its name); as a
``class_map`` key it is also the pattern of every class whose name starts with "Ignore"."""
_PATTERN_CHARS = frozenset("*?[")


def is_pattern(key: str) -> bool:
    """Whether a ``class_map`` key is a shell-style pattern rather than one exact class name."""
    return not _PATTERN_CHARS.isdisjoint(key)


def close_class(name: str, classes: Sequence[str]) -> str | None:
    """The class ``name`` most likely misspells ("Tumor" for "tumour"), if any: case is ignored,
    since QuPath projects capitalise class names as their authors please."""
    lower = {c.lower(): c for c in classes}
    match = difflib.get_close_matches(name.lower(), list(lower), n=1)
    return lower[match[0]] if match else None


def check_class_map(class_map: Mapping[str, str], classes: Sequence[str], file: str | Path | None = None) -> None:
    """Raise :class:`InputError` unless every ``class_map`` target is a class or :data:`IGNORE`.

    Checked once for the config (and again by every loader that applies the map), because a bad
    target would otherwise surface as an unknown class in whichever annotation file first uses it.
    """
    if IGNORE in classes:
        raise InputError(file, "classes", f"{IGNORE!r} is reserved: class_map maps QuPath classes to it to leave "
                         "their regions out of training and scoring",
                         f"to leave that class's regions out, remove it from `classes` and set "
                         f"class_map: {class_map_yaml({IGNORE: IGNORE})}; to train on it, rename the class in QuPath")
    for key, target in class_map.items():
        if target == IGNORE or target in classes:
            continue
        guess = close_class(str(target), classes)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        raise InputError(file, f"class_map.{key}",
                         f"maps to {target!r}, which is neither one of the classes {list(classes)} nor "
                         f"{IGNORE!r}{hint}",
                         f"map it to one of the classes, or to {IGNORE} to leave its regions out of training "
                         "and scoring; to train on it as a class of its own, add it to `classes`")


def mapped_class(name: str, classes: Sequence[str], class_map: Mapping[str, str],
                 file: str | Path | None = None) -> str | None:
    """The class (or :data:`IGNORE`) a QuPath class name is labelled as; None when it is unknown.

    An exact ``class_map`` key wins, then a name that is a class itself, then the most specific
    pattern key that matches it (case-sensitive, like QuPath's names): ``"Ignore*": ignore`` beside a
    catch-all ``"*": stroma`` means what it says. Equally specific patterns that disagree are an
    error rather than first-match-wins: a config merged from several files has no reliable key order.
    """
    if name in class_map:
        return class_map[name]
    if name in classes:
        return name
    hits = [key for key in class_map if is_pattern(key) and fnmatchcase(name, key)]
    if not hits:
        return None
    best = max(map(_specificity, hits))
    hits = sorted(key for key in hits if _specificity(key) == best)
    targets = sorted({class_map[key] for key in hits})
    if len(targets) > 1:
        raise InputError(file, "class_map", f"class {name!r} matches the equally specific patterns {hits}, which map "
                         f"it to different targets {targets}",
                         f"add an exact class_map entry for {name!r} (exact names win over patterns) mapping it to "
                         f"one of {targets}, or make the patterns not overlap")
    return targets[0]


def _specificity(pattern: str) -> int:
    """Characters a pattern fixes: a ``[...]`` set fixes one, ``*`` and ``?`` none."""
    return len(re.sub(r"\[[^\]]*\]", "x", pattern).replace("*", "").replace("?", ""))


def class_map_yaml(entries: Mapping[str, str]) -> str:
    """``class_map`` entries as a YAML flow mapping a user pastes into a config (error messages
    suggest them)."""
    def quoted(text: str) -> str:  # a JSON string is a YAML double-quoted scalar
        return json.dumps(text, ensure_ascii=False)

    items = (f"{quoted(k)}: {v if v == IGNORE else quoted(v)}" for k, v in entries.items())
    return "{" + ", ".join(items) + "}"


def class_values(classes: list[str]) -> dict[str, int]:
    """Map each class name to its stored label value (1-based, config order)."""
    return {name: i + 1 for i, name in enumerate(classes)}


def n_layout_channels(classes: list[str], tissue_channel: bool = False) -> int:
    """Channels of a one-hot layout: every class plus the unannotated channel (plus, for models that
    know it, the "tissue, class unknown" channel of :func:`unknown_tissue_value`)."""
    return len(classes) + 1 + int(tissue_channel)


def unknown_tissue_value(classes: list[str]) -> int:
    """Layout value meaning "tissue of unknown class" (K + 1), never stored in a label mask.

    Models trained with layout dropout learn it, so an image without a label mask can still be
    conditioned on where its tissue is (``sedm stylize`` without ``--mask``) instead of on
    "unannotated", which in fully annotated cohorts means glass.
    """
    return len(classes) + 1


def one_hot(labels: np.ndarray, n_channels: int) -> np.ndarray:
    """(..., H, W) uint8 labels -> (..., C, H, W) float32 one-hot with C = ``n_channels``."""
    eye = np.eye(n_channels, dtype=np.float32)
    out = eye[labels.astype(np.int64)]
    return np.moveaxis(out, -1, -3)


def class_rgb(value: int) -> tuple[int, int, int]:
    """The colour of label value ``value`` (>= 1)."""
    return CLASS_RGB[(value - 1) % len(CLASS_RGB)]


def colorize(labels: np.ndarray) -> np.ndarray:
    """(..., H, W) uint8 label values -> (..., H, W, 3) uint8 RGB."""
    lut = np.array([UNANNOTATED_RGB] + [class_rgb(v) for v in range(1, 256)], dtype=np.uint8)
    return lut[labels]
