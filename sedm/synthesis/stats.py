"""Stain statistics in HED optical-density space, and how closely synthetic images match a style.

"Does the synthetic data look like slide S?" is asked about stain, so the numbers are taken in
the haematoxylin-eosin-DAB space of Ruifrok & Johnston (``skimage.color.rgb2hed``): per channel
mean and standard deviation over tissue pixels (:mod:`sedm.stain.statistics` defines both).

Style fidelity (documented in README, shown in the report):

* ``hed_distance`` = Euclidean distance between the 6-vectors (mean H, E, D, std H, E, D) of the
  generated images and of the real style patches of the slide; 0 = identical stain statistics.
* ``hed_distance_source`` = the same distance for the real *labelled* images under the layouts,
  i.e. the stain gap synthesis is meant to close.
* ``style_fidelity`` = 1 - hed_distance / hed_distance_source: 1 = the generated stain matches the
  target slide, 0 = no closer than the labelled slides already were, negative = further away.
  Undefined (null) when the labelled slides already match the target (source distance ~ 0).
  Negative fidelity is flagged (:func:`fidelity_flags`, ``flags`` of :mod:`sedm.flags`): the
  synthetic set moved the stain away from its target, so training on it teaches the wrong style.
"""

from __future__ import annotations

import numpy as np

from sedm.flags import FLAGS
from sedm.stain.statistics import HED_CHANNELS, HedAccumulator

MIN_SOURCE_DISTANCE = 1e-6
MIN_STYLE_FIDELITY = 0.0
"""Style fidelity below this is flagged: 0 is "no closer to the target than the labelled slides", the
point past which synthesis made the stain gap wider instead of closing it."""


def _vector(summary: dict) -> np.ndarray | None:
    if summary["mean"] is None:
        return None
    return np.array(summary["mean"] + summary["std"], dtype=np.float64)


def style_fidelity(generated: dict, style: dict, source: dict) -> dict:
    """The fidelity numbers of the module docstring from three :meth:`HedAccumulator.summary` dicts."""
    g, s, r = _vector(generated), _vector(style), _vector(source)
    dist = None if g is None or s is None else float(np.linalg.norm(g - s))
    dist_src = None if r is None or s is None else float(np.linalg.norm(r - s))
    fid = None
    if dist is not None and dist_src is not None and dist_src > MIN_SOURCE_DISTANCE:
        fid = 1.0 - dist / dist_src
    return {"hed_distance": dist, "hed_distance_source": dist_src, "style_fidelity": fid}


def fidelity_flags(stats: dict) -> list[str]:
    """Flags of a synthetic set's statistics (:func:`style_fidelity` numbers): negative fidelity."""
    fid, dist, src = stats.get("style_fidelity"), stats.get("hed_distance"), stats.get("hed_distance_source")
    if not isinstance(fid, (int, float)) or fid >= MIN_STYLE_FIDELITY:
        return []
    detail = f" (HED distance {dist:.4f}, labelled slides {src:.4f})" if isinstance(dist, (int, float)) and \
        isinstance(src, (int, float)) else ""
    return [f"negative style fidelity {fid:.3f}: the synthetic stain is farther from the slide's than the labelled "
            f"slides' own stain was{detail}"]


def synthesis_stats(generated: HedAccumulator, style: HedAccumulator, source: HedAccumulator) -> dict:
    """Everything written to ``attrs["sedm"]["stats"]`` and ``<slide>.stats.json``, flags included."""
    g, s, r = generated.summary(), style.summary(), source.summary()
    fidelity = style_fidelity(g, s, r)
    return {"channels": list(HED_CHANNELS), "space": "HED optical density (skimage.color.rgb2hed), tissue pixels",
            "generated": g, "style": s, "source": r, **fidelity, FLAGS: fidelity_flags(fidelity)}
