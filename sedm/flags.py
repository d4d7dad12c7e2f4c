"""Doubtful results, flagged where they are shown: the one representation every stage uses.

A number that should alarm its reader (a trained model no better than its randomly initialised
twin, synthetic tiles farther from their style than the labelled slides already were, a restyled
image that lost its structure) is not left for the reader to notice. The stage that computes it

* writes a ``"flags"`` list of short human-readable strings into the JSON record it writes (an empty
  list means "checked, nothing doubtful"; no key means "not checked", e.g. an older output),
* logs each string at WARNING, so it shows in the job log and on the terminal,

and the report shows the same strings beside the number, from the same function. Each condition and
its threshold are defined once, in the module that computes the number (``*_flags`` functions);
this module only fixes how a flag is carried. Tables (TSV/CSV) carry them as one text column,
:data:`FLAGS`, joined with :data:`SEPARATOR`.

Small-sample statistics are marked differently, as the style-map correlations always were:
``"descriptive": true`` plus a note (:data:`sedm.evaluation.stats.DESCRIPTIVE_BELOW`), because a
descriptive figure is not wrong, only not evidence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

FLAGS = "flags"
"""Key (JSON) or column (tables) of the flags of a record."""
SEPARATOR = "; "
"""Joins the flags of one record in a table cell."""


def warn(logger: logging.Logger, flags: Iterable[str], subject: str = "") -> list[str]:
    """Log every flag at WARNING (prefixed with ``subject``, e.g. a slide or image name) and return
    them as a list, ready for the record's :data:`FLAGS` entry."""
    flags = list(flags)
    for flag in flags:
        logger.warning("%s%s", f"{subject}: " if subject else "", flag)
    return flags


def cell(flags: Iterable[str]) -> str:
    """The flags of one record as a table cell ("" when there are none)."""
    return SEPARATOR.join(flags)
