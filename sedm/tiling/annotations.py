"""QuPath GeoJSON annotations: loading with clear errors, and rasterising windows into label masks.

What :func:`load_geojson` accepts (QuPath 0.2 - 0.5 "Export objects as GeoJSON"):

* a FeatureCollection, a JSON list of Features, or a single Feature;
* geometries Polygon, MultiPolygon (holes kept) and GeometryCollection (its polygonal parts);
  lines and points carry no area and are skipped with a warning;
* the class from ``properties.classification.name`` (or ``properties.classification`` given as a
  string). The free-text ``properties.name`` is *not* a class: it is what a user typed ("Tumor 1");
* only objects whose ``properties.objectType`` is ``"annotation"`` (or absent): detections, cells,
  tiles and TMA cores are per-cell outputs of QuPath's own analyses, not region labels, and are
  skipped (counted in a log line);
* unclassified annotations are skipped with a warning; every remaining class must be in the
  config's ``classes`` or mapped by its ``class_map`` (:func:`sedm.labels.mapped_class`) to a class
  or to ``ignore``; one InputError lists all unknown names, with the ``class_map`` entries that
  would fix the likely ones (QuPath's ``Ignore*``, misspelt or differently capitalised classes);
* regions mapped to ``ignore`` are label 0 (unannotated), drawn over every class region they
  overlap, whatever their size: an Ignore* region inside a tumour takes that part out of it;
* invalid geometries (self-crossing outlines) are repaired with ``shapely.make_valid``, which keeps
  both lobes of a figure-eight where ``buffer(0)`` would drop one; a geometry that has no area
  left after repair is an InputError, and so is a coordinate that is not a finite number (NaN,
  inf): repairing around it silently drops part of the region.

Whether the annotations belong to the slide is checked by :func:`check_fit` once the slide's size
and tissue are known: a file that lies mostly outside the slide, or covers almost none of its tissue,
is another slide's export or one at another scale.

Coordinates are level-0 pixels, as QuPath exports them.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, shape
from shapely.geometry.base import BaseGeometry

from sedm.errors import InputError
from sedm.labels import (IGNORE, QUPATH_IGNORE, UNANNOTATED, check_class_map, class_map_yaml, class_values,
                         close_class, mapped_class)

log = logging.getLogger(__name__)

_REGION_TYPES = {None, "annotation"}
_FIX_JSON = "export the annotations again from QuPath (File > Export objects as GeoJSON)"


@dataclass(frozen=True)
class Annotation:
    class_name: str  # a class of the config's ``classes``, or IGNORE (after the class_map)
    geometry: BaseGeometry  # Polygon or MultiPolygon, level-0 pixel coordinates


def load_geojson(path: str | Path, classes: list[str],
                 class_map: Mapping[str, str] | None = None) -> list[Annotation]:
    """Classified polygon annotations of a QuPath GeoJSON export, their QuPath class names mapped by
    the config's ``class_map`` (None or empty: every name must be one of ``classes``)."""
    path = Path(path)
    class_map = dict(class_map or {})
    check_class_map(class_map, classes)
    regions = _regions(path)
    out: list[Annotation] = []
    unknown: set[str] = set()
    for name, geom in regions:
        target = mapped_class(name, classes, class_map, path)
        if target is None:
            unknown.add(name)
        else:
            out.append(Annotation(target, geom))
    if unknown:
        raise _unknown_classes(path, unknown, classes, class_map)
    if out and all(a.class_name == IGNORE for a in out):
        names = sorted({name for name, _ in regions})
        raise InputError(path, "features", f"every region's class ({', '.join(names)}) is mapped to {IGNORE}: "
                         "the file labels nothing to train or score on",
                         "check class_map, and that the export holds the classified regions")
    return out


def class_areas(path: str | Path) -> Counter[str]:
    """Annotated area (level-0 px²) per QuPath class name, as exported: before any ``class_map``, so
    a new cohort's config can be written from what its files hold."""
    area: Counter[str] = Counter()
    for name, geom in _regions(Path(path)):
        area[name] += geom.area
    return area


def _unknown_classes(path: Path, unknown: set[str], classes: list[str], class_map: Mapping[str, str]) -> InputError:
    """The error for class names neither in ``classes`` nor mapped, with the likely ``class_map``
    entries first: QuPath's ignore class and misspellings are the usual causes, and adding them to
    ``classes`` (the old advice) would train a segmentation class on regions meant to be left out."""
    names = sorted(unknown)
    ignored: dict[str, str] = {}
    renamed: dict[str, str] = {}
    guesses: list[str] = []
    for name in names:
        if fnmatchcase(name, QUPATH_IGNORE):
            ignored[QUPATH_IGNORE] = IGNORE
        elif name.lower().startswith("ignore"):
            ignored[name] = IGNORE
        elif guess := close_class(name, classes):
            renamed[name] = guess
            guesses.append(f"{name!r}: did you mean {guess!r}?")
    suggested = {**ignored, **renamed}
    problem = (f"unknown classes {names}: neither in the config's classes {list(classes)} nor mapped by its "
               "class_map" + (f" ({'; '.join(guesses)})" if guesses else ""))
    general = (f"add them to the config's `classes` to train on them, or map each in its class_map to one of "
               f"the classes or to {IGNORE} (regions left out of training and scoring), or rename them in QuPath")
    fix = general
    if suggested:
        entries = class_map_yaml(suggested)
        first = (f"add these entries to the config's class_map: {entries}" if class_map else
                 f"in the config, set class_map: {entries}")
        fix = f"{first}; otherwise {general}"
    return InputError(path, "properties.classification.name", problem, fix)


def _regions(path: Path) -> list[tuple[str, BaseGeometry]]:
    """(QuPath class name, polygonal geometry) of every classified region annotation of the file."""
    if not path.is_file():
        raise InputError(path, None, "annotation file not found", "check annotation_path in the sample sheet")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(path, None, f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}", _FIX_JSON) from e
    except UnicodeDecodeError as e:
        raise InputError(path, None, f"not a UTF-8 text file (byte {e.start})", _FIX_JSON) from e
    features = _features(path, data)
    out: list[tuple[str, BaseGeometry]] = []
    skipped: Counter[str] = Counter()
    for i, feat in enumerate(features):
        props = feat.get("properties")
        props = props if isinstance(props, dict) else {}
        kind = props.get("objectType")
        if kind not in _REGION_TYPES:
            skipped[f"objectType {kind}"] += 1
            continue
        name = _class_name(props)
        if name is None:
            skipped["unclassified"] += 1
            continue
        geom = _polygonal(path, i, feat.get("geometry"), _described(name, props))
        if geom is None:
            skipped["without polygon (point/line/empty)"] += 1
            continue
        out.append((name, geom))
    if skipped:
        log.warning("%s: skipped %s", path, ", ".join(f"{n} x {why}" for why, n in sorted(skipped.items())))
    if not out:
        why = f" (skipped: {dict(skipped)})" if skipped else ""
        raise InputError(path, "features", f"no classified polygon annotations{why}",
                         "annotate regions with polygons/brushes and assign a class in QuPath before exporting")
    return out


def _features(path: Path, data: Any) -> list[dict]:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        data = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        data = [data]
    if not isinstance(data, list) or not all(isinstance(f, dict) for f in data):
        raise InputError(path, "type", "expected a GeoJSON FeatureCollection, a list of Features or a Feature",
                         _FIX_JSON)
    return data


def _class_name(props: dict) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, dict):
        cls = cls.get("name")
    return cls if isinstance(cls, str) and cls else None


def _described(class_name: str, props: dict) -> str:
    """How a user finds a feature in QuPath: its class and, when it has one, its name."""
    name = props.get("name")
    return f"the {class_name} annotation" + (f" {name!r}" if isinstance(name, str) and name else "")


def _polygonal(path: Path, index: int, geometry: Any, what: str = "this annotation") -> BaseGeometry | None:
    """The polygonal part of a GeoJSON geometry (repaired), or None when it has no polygon at all."""
    if not geometry:
        return None
    try:
        with np.errstate(invalid="ignore"):  # a NaN coordinate: reported below as an InputError
            geom = shape(geometry)
    except Exception as e:  # shapely raises several types for malformed coordinate lists
        raise InputError(path, f"features[{index}].geometry", f"malformed geometry ({e})", _FIX_JSON) from e
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, (Polygon, MultiPolygon))]
    if not parts:
        return None  # points, lines
    bad = ~np.isfinite(shapely.get_coordinates(parts)).all(axis=1)
    if bad.any():
        raise InputError(path, f"features[{index}].geometry",
                         f"{what}: {int(bad.sum())} of its coordinates are not finite numbers (NaN or inf)",
                         "redraw or fix this annotation in QuPath and export again")
    repaired = [q for p in parts for q in shapely.get_parts(p if p.is_valid else shapely.make_valid(p))
                if isinstance(q, (Polygon, MultiPolygon))]
    merged = shapely.union_all(repaired) if repaired else None
    if merged is None or merged.area <= 0:
        raise InputError(path, f"features[{index}].geometry",
                         f"polygon without area even after repair ({shapely.is_valid_reason(geom)})",
                         "redraw this annotation in QuPath")
    return merged


# -- fit to the slide -----------------------------------------------------------------------------
MOSTLY_OUTSIDE = 0.5
"""Share of the annotated area outside the slide from which a file is taken for another slide's."""

_WRONG_FILE = ("likely the export of another slide, or of this slide at another scale (QuPath exports level-0 "
               "pixels of the image it was opened on)")


def check_fit(path: str | Path, annotations: list[Annotation], classes: list[str], dimensions: tuple[int, int],
              tissue: np.ndarray, tissue_scale: float, min_tissue_share: float, min_on_tissue: float = 0.0) -> float:
    """Raise :class:`InputError` when ``annotations`` do not belong to a slide of level-0 ``dimensions``
    (w, h); return the share of its tissue they cover.

    ``tissue`` is the slide's tissue mask, ``tissue_scale`` its pixels per level-0 pixel. The file is
    rejected when more than :data:`MOSTLY_OUTSIDE` of its annotated area lies outside the slide, or
    when it covers less than ``min_tissue_share`` of the tissue (the config's
    ``tiling.min_annotated_tissue``: sparse annotation is normal, so the default is small), or when less
    than ``min_on_tissue`` of its labelled area lies on the tissue (``tiling.min_annotation_on_tissue``):
    another slide's export can cover most of this one's tissue, but then part of it lies on glass. Regions
    mapped to ``ignore`` say where the file lies but label nothing: they count for the first test,
    not as covered tissue.
    """
    union = shapely.union_all([a.geometry for a in annotations])
    outside = 1.0 - union.intersection(box(0, 0, *dimensions)).area / union.area
    if outside > MOSTLY_OUTSIDE:
        x0, y0, x1, y1 = union.bounds
        raise InputError(path, "features", f"{outside:.0%} of the annotated area lies outside the "
                         f"{dimensions[0]} x {dimensions[1]} px slide (annotations span x {x0:.0f}-{x1:.0f}, "
                         f"y {y0:.0f}-{y1:.0f}): {_WRONG_FILE}",
                         "check annotation_path in the sample sheet, and export from this slide at full resolution")
    n_tissue = int(np.count_nonzero(tissue))
    if not n_tissue:
        return 0.0
    labels = rasterize(annotations, classes, tissue.shape, scale=tissue_scale)
    share = np.count_nonzero(tissue & (labels != UNANNOTATED)) / n_tissue
    if share < min_tissue_share:
        raise InputError(path, "features", f"the annotations cover {share:.2%} of the slide's tissue, less than "
                         f"tiling.min_annotated_tissue ({min_tissue_share:.2%}): {_WRONG_FILE}",
                         "check annotation_path in the sample sheet; if the annotation really is this sparse, "
                         "lower tiling.min_annotated_tissue")
    labelled = labels != UNANNOTATED
    on_tissue = np.count_nonzero(tissue & labelled) / max(1, np.count_nonzero(labelled))
    if on_tissue < min_on_tissue:
        raise InputError(path, "features", f"only {on_tissue:.0%} of the annotated area lies on the slide's tissue, "
                         f"the rest lies on the slide's glass (tiling.min_annotation_on_tissue {min_on_tissue:.0%}): "
                         f"{_WRONG_FILE}", "check annotation_path in the sample sheet; if the annotations are right "
                         "(regions the tissue detector leaves out: fat, pale necrosis), lower "
                         "tiling.min_annotation_on_tissue")
    return share


# -- rasterisation --------------------------------------------------------------------------------
@dataclass
class AnnotationIndex:
    """Annotations with their label values, sorted largest first (ignored regions after every class
    region, so they take out what they overlap), plus a bounding-box tree.

    Build it once per slide and pass it to :func:`rasterize` for every window; passing the plain list
    works too but rebuilds this each call.
    """

    annotations: list[Annotation]
    classes: list[str]
    values: np.ndarray = field(init=False)
    tree: shapely.STRtree = field(init=False)

    def __post_init__(self) -> None:
        lut = {**class_values(self.classes), IGNORE: UNANNOTATED}
        missing = {a.class_name for a in self.annotations} - lut.keys()
        if missing:
            raise ValueError(f"annotations of classes {sorted(missing)} not in {self.classes}")
        # Larger first so that smaller, nested annotations (a tumour island in stroma) are drawn on top;
        # ignored regions last whatever their size: an Ignore* region larger than the tumour it lies
        # over must still take it out.
        self.annotations = sorted(self.annotations, key=lambda a: (a.class_name == IGNORE, -a.geometry.area))
        self.values = np.array([lut[a.class_name] for a in self.annotations], dtype=np.uint8)
        self.tree = shapely.STRtree([a.geometry for a in self.annotations])


def rasterize(annotations: list[Annotation] | AnnotationIndex, classes: list[str], shape: tuple[int, int],
              scale: float, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(H, W) uint8 label mask of a window in *target* pixels (target = level-0 px * ``scale``).

    ``offset`` = (y0, x0) is the window's top-left in target pixels. Pixel (i, j) covers
    [x0 + j, x0 + j + 1) x [y0 + i, y0 + i + 1) and takes the value of the last-drawn annotation
    containing its centre (largest drawn first, so nested smaller ones win, and ignored regions last,
    as UNANNOTATED; holes show what lies beneath, UNANNOTATED if nothing). A centre exactly on an
    edge counts as inside on the left/top edge and outside on the right/bottom one, so abutting
    annotations never both claim a pixel.
    """
    index = annotations if isinstance(annotations, AnnotationIndex) else AnnotationIndex(list(annotations), classes)
    if list(index.classes) != list(classes):
        raise ValueError(f"index built for classes {index.classes}, asked for {classes}")
    h, w = shape
    y0, x0 = offset
    out = np.full((h, w), UNANNOTATED, dtype=np.uint8)
    window = box(x0 / scale, y0 / scale, (x0 + w) / scale, (y0 + h) / scale)
    for k in np.sort(index.tree.query(window)):  # tree order == largest-first order
        rings = shapely.get_rings(shapely.get_parts(index.annotations[k].geometry))
        xy, ring = shapely.get_coordinates(rings, return_index=True)
        xy = xy * scale - (x0, y0)
        same = ring[1:] == ring[:-1]
        out[_even_odd_fill(xy[:-1][same], xy[1:][same], h, w)] = index.values[k]
    return out


def _even_odd_fill(p0: np.ndarray, p1: np.ndarray, h: int, w: int) -> np.ndarray:
    """Scanline fill of the pixel centres inside the closed edges p0 -> p1 (all rings, holes included).

    Each edge crosses the centre rows y = i + 0.5 with lo <= y < hi (half-open, so a vertex on a row
    counts once); crossings are sorted per row and paired, and the centres x = j + 0.5 with
    xa <= x < xb between each pair are set.
    """
    ya, yb = p0[:, 1], p1[:, 1]
    r0 = np.clip(np.ceil(np.minimum(ya, yb) - 0.5), 0, h).astype(np.int64)
    r1 = np.clip(np.ceil(np.maximum(ya, yb) - 0.5), 0, h).astype(np.int64)
    n = r1 - r0
    edge = np.repeat(np.arange(len(n)), n)
    row = r0[edge] + np.arange(len(edge)) - np.repeat(np.cumsum(n) - n, n)
    t = (row + 0.5 - ya[edge]) / (yb - ya)[edge]
    x = p0[edge, 0] + t * (p1[edge, 0] - p0[edge, 0])
    order = np.lexsort((x, row))
    row, col = row[order], np.clip(np.ceil(x[order] - 0.5), 0, w).astype(np.int64)
    diff = np.zeros((h, w + 1), dtype=np.int32)
    np.add.at(diff, (row[0::2], col[0::2]), 1)
    np.add.at(diff, (row[1::2], col[1::2]), -1)
    return np.cumsum(diff[:, :w], axis=1) > 0
