"""Benchmark the start-up of the ``sedm`` commands whose work uses no tensor (``sedm.cli.TENSOR_FREE``).

Run: ``python benchmarks/startup.py [--repeat 5] [--commands style-stats report ...]``

Start-up is ``sedm <command> --help`` in a fresh interpreter: Python itself, ``sedm.cli``, the
command's module with everything it imports, and its argument parser; what a per-slide job pays
before its first pixel. The baseline is ``python -c pass``, timed in the same run and interleaved
with the commands (round-robin), so both see the same load on a shared machine. Per command: the
median wall and CPU (user + system) seconds over ``--repeat`` runs, the ratio of the wall median to
the baseline's, and whether torch or diffusers got imported (they must not). The target is under one
second per command. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers")
TARGET_S = 1.0

_CHILD = """
import json, sys
from sedm.cli import main
try:
    main([sys.argv[1], "--help"])
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(%r))))
""" % (HEAVY,)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, CPU s, last stdout line) of one fresh interpreter."""
    cpu0, t0 = _cpu(), time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    lines = done.stdout.strip().splitlines()
    return wall, cpu, lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (median reported)")
    parser.add_argument("--commands", nargs="+", help="commands to time (default: sedm.cli.TENSOR_FREE)")
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    if args.commands:
        commands = list(args.commands)
    else:
        sys.path.insert(0, str(REPO))
        from sedm.cli import TENSOR_FREE

        commands = sorted(TENSOR_FREE)

    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in ["baseline", *commands]}
    heavy: dict[str, list[str]] = {}
    for _ in range(args.repeat):  # round-robin: every command sees the same load as the baseline
        wall, cpu, _ = _timed([sys.executable, "-c", "pass"], env)
        runs["baseline"].append((wall, cpu))
        for name in commands:
            wall, cpu, last = _timed([sys.executable, "-c", _CHILD, name], env)
            runs[name].append((wall, cpu))
            heavy[name] = json.loads(last)

    def median(name: str, i: int) -> float:
        return statistics.median(r[i] for r in runs[name])

    base_wall, base_cpu = median("baseline", 0), median("baseline", 1)
    print(f"start-up, median of {args.repeat} (python -c pass: {base_wall:.3f} s wall, {base_cpu:.3f} s CPU)")
    out = {}
    for name in commands:
        wall, cpu = median(name, 0), median(name, 1)
        out[name] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "ratio": round(wall / base_wall, 1),
                     "imports": heavy[name]}
        print(f"  sedm {name:15s} {wall:6.3f} s wall {cpu:6.3f} s CPU  {wall / base_wall:5.1f}x baseline  "
              f"{'imports ' + ', '.join(heavy[name]) if heavy[name] else 'no torch'}")
    slowest = max(commands, key=lambda n: out[n]["wall_s"])
    print(f"slowest: sedm {slowest} {out[slowest]['wall_s']:.3f} s (target < {TARGET_S:.0f} s)")
    print(json.dumps({"benchmark": "startup", "repeat": args.repeat, "baseline_wall_s": round(base_wall, 3),
                      "baseline_cpu_s": round(base_cpu, 3), "commands": out, "slowest": slowest,
                      "max_wall_s": out[slowest]["wall_s"], "target_s": TARGET_S,
                      "under_target": all(v["wall_s"] < TARGET_S for v in out.values()),
                      "torch_free": all(not v["imports"] for v in out.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
