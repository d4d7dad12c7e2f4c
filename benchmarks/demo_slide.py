"""Benchmark generating one demo slide (``sedm demo-cohort --slide``) against writing its TIFF alone.

Run: ``python benchmarks/demo_slide.py [--size 3072] [--repeats 3] [--workdir DIR]``

Per phase (median of the repeats, wall clock and CPU seconds of this process):

* layout: coarse fields, level-0 class map, fibre flow;
* stain: per-pixel haematoxylin/eosin concentrations, nuclei stamping;
* beer_lambert: blur, optical density to RGB, noise;
* tiff: pyramid + JPEG tiles (``write_pyramidal_tiff``), the baseline: any slide generator pays it;
* geojson: tracing the class map into QuPath annotations.

The ratio ``total / tiff`` says how much the synthetic rendering costs on top of merely writing the
slide. Peak RSS is printed too (the rule runs one slide per job). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sedm.demo.cohort import DemoSlide, PYRAMID_MIN_SIZE  # noqa: E402
from sedm.demo.layout import DEMO_CLASSES, make_layout  # noqa: E402
from sedm.demo.render import beer_lambert, stain_concentrations  # noqa: E402
from sedm.demo.styles import patient_style  # noqa: E402
from sedm.demo.tiff import write_pyramidal_tiff  # noqa: E402
from sedm.demo.vectorise import layout_geojson  # noqa: E402
from sedm.seeds import rng_for  # noqa: E402


def _timed(fn, *args, **kw):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, time.perf_counter() - w, time.process_time() - c


def one_slide(size: int, mpp: float, seed: int, workdir: Path) -> dict[str, tuple[float, float]]:
    slide = DemoSlide("L01", "L01", "labelled")
    times = {}
    layout, *times["layout"] = _timed(make_layout, rng_for(seed, "layout", slide.slide_id), size, mpp)
    style = patient_style(seed, slide.patient_id, slide.role)
    rng = rng_for(seed, "render", slide.slide_id)
    (conc_h, conc_e), *times["stain"] = _timed(stain_concentrations, rng, layout, mpp)
    rgb, *times["beer_lambert"] = _timed(beer_lambert, conc_h, conc_e, style, mpp, rng)
    del conc_h, conc_e
    _, *times["tiff"] = _timed(write_pyramidal_tiff, workdir / "slide.tiff", rgb, mpp, quality=style.jpeg_quality,
                               min_size=PYRAMID_MIN_SIZE)
    _, *times["geojson"] = _timed(lambda: json.dumps(layout_geojson(layout.coarse, layout.factor, DEMO_CLASSES)))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=3072)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        runs = [one_slide(args.size, args.mpp, 7 + r, Path(tmp)) for r in range(args.repeats)]
    phases = list(runs[0])
    wall = {p: float(np.median([r[p][0] for r in runs])) for p in phases}
    cpu = {p: float(np.median([r[p][1] for r in runs])) for p in phases}
    total_wall, total_cpu = sum(wall.values()), sum(cpu.values())
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"demo slide {args.size} x {args.size} px at {args.mpp} µm/px, median of {args.repeats}:")
    for p in phases:
        print(f"  {p:13s} wall {wall[p]:6.2f} s   cpu {cpu[p]:6.2f} s")
    print(f"  {'total':13s} wall {total_wall:6.2f} s   cpu {total_cpu:6.2f} s")
    print(f"ratio total / tiff-only baseline: wall {total_wall / wall['tiff']:.1f}x, "
          f"cpu {total_cpu / cpu['tiff']:.1f}x")
    print(f"peak RSS {rss_mb:.0f} MB")
    print(json.dumps({"size": args.size, "mpp": args.mpp, "repeats": args.repeats, "wall_s": wall, "cpu_s": cpu,
                      "total_wall_s": total_wall, "total_cpu_s": total_cpu,
                      "ratio_total_vs_tiff_wall": total_wall / wall["tiff"], "peak_rss_mb": rss_mb}))


if __name__ == "__main__":
    main()
