"""A demo layout's class map as QuPath GeoJSON annotations (the slide's ground truth).

The annotations are traced from the coarse class map (marching squares), simplified by well under
one coarse pixel and scaled to level-0 pixels, so they follow region borders as closely as a
careful annotator would and import into QuPath like an export of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping
from skimage import measure

QUPATH_COLORS: dict[str, tuple[int, int, int]] = {
    "tumour": (200, 0, 0),  # QuPath's default "Tumor" colour
    "stroma": (150, 200, 150),  # QuPath's "Stroma"
    "necrosis": (50, 50, 50),  # QuPath's "Necrosis"
}
_FALLBACK_COLOR = (255, 200, 0)
SIMPLIFY_COARSE_PX = 0.4
"""Douglas-Peucker tolerance, in coarse-grid pixels."""


def mask_to_geometry(mask: np.ndarray, factor: int) -> Polygon | MultiPolygon:
    """The region ``mask`` (coarse grid) as polygons in level-0 pixels; holes are kept.

    Coarse pixel (i, j) covers level-0 [j*f, (j+1)*f) x [i*f, (i+1)*f); marching squares runs
    through pixel centres, so a contour point (r, c) maps to ((c + 0.5) f, (r + 0.5) f).
    """
    padded = np.pad(mask.astype(np.float32), 1)
    rings = [Polygon(np.column_stack(((c[:, 1] - 0.5) * factor, (c[:, 0] - 0.5) * factor)))
             for c in measure.find_contours(padded, 0.5) if len(c) >= 4]
    rings = [r for r in rings if r.area > 0]
    if not rings:
        return MultiPolygon()
    # Contours never cross, so even-odd filling (outer boundary, hole, island in hole, ...) is exact.
    geom = reduce(shapely.symmetric_difference, sorted(rings, key=lambda r: -r.area))
    geom = shapely.make_valid(geom.simplify(SIMPLIFY_COARSE_PX * factor, preserve_topology=True))
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and g.area > 0]
    return MultiPolygon(parts) if len(parts) != 1 else parts[0]


def _round(coords: object) -> object:
    if isinstance(coords, (list, tuple)) and coords and isinstance(coords[0], (int, float)):
        return [round(float(v), 2) for v in coords]
    return [_round(c) for c in coords]  # type: ignore[union-attr]


def layout_geojson(coarse: np.ndarray, factor: int, class_names: Sequence[str]) -> dict:
    """FeatureCollection with one annotation Feature per connected region of each class.

    ``coarse`` holds 0 for glass and ``k`` for ``class_names[k - 1]``.
    """
    features = []
    for value, name in enumerate(class_names, start=1):
        geom = mask_to_geometry(coarse == value, factor)
        for poly in getattr(geom, "geoms", [geom]):
            if poly.is_empty:
                continue
            geometry = mapping(shapely.geometry.polygon.orient(poly))
            features.append({
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": _round(geometry["coordinates"])},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": list(QUPATH_COLORS.get(name, _FALLBACK_COLOR))},
                },
            })
    return {"type": "FeatureCollection", "features": features}
