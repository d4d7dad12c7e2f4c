"""How many synthetic samples each unlabelled slide gets.

Its own import-light module: the workflow calls it at parse time (rule synthesize's params), where
importing the shard writer would cost Zarr's import at every Snakemake start.
"""

from __future__ import annotations

from typing import Any

from sedm.errors import InputError


def samples_for_slide(synthesis: dict[str, Any], slide_id: str, slides: list[str]) -> int:
    """Number of samples for ``slide_id``: ``per_slide``, or ``total`` spread evenly over ``slides``
    (the first ``total % len(slides)`` slides in the given order get one more)."""
    per, total = synthesis.get("per_slide"), synthesis.get("total")
    if (per is None) == (total is None):
        raise InputError(None, "synthesis.per_slide / synthesis.total", "exactly one must be set",
                         "set per_slide (samples per unlabelled slide) or total (spread over them), the other null")
    if per is not None:
        return int(per)
    if slide_id not in slides:
        raise InputError(None, "slide", f"{slide_id!r} is not among the style slides {slides}",
                         "pass the slide's ID as it is in the sample sheet")
    i = slides.index(slide_id)
    return int(total) // len(slides) + (1 if i < int(total) % len(slides) else 0)
