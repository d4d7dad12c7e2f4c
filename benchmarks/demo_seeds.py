"""The demo's figures over training seeds: what README's demo table reports, reproducibly.

    python benchmarks/demo_seeds.py --seeds 0 1 2            # runs `snakemake --cores all --config seed=N`
    python benchmarks/demo_seeds.py --results r0 r1 r2       # only summarises finished results folders
    python benchmarks/demo_seeds.py --seeds 0 1 2 --configfile resources/study/config.yaml --prefix results-study

Each seed runs the whole demo (cohort fixed by ``demo.seed``; the global ``seed`` drives every
training, sampling and split) into ``results-seed<N>/`` and is timed. The summary gives, per arm,
the mean over seeds of the per-patient mean Dice and of the worst patient's Dice, with their
standard deviation over seeds and the range, and the style measures (transfer ratio, separability,
layout fidelity) per seed. A single seed cannot rank arms whose difference is smaller than the
seed-to-seed spread; the table says so by showing it. The last line is one JSON object.

For a study (a config whose arms include baselines and synthetic arms; the report's cost_gain.json says
which is which) it also says, per seed, which arm wins on the mean, on the worst patient and on the spread
across patients, and compares every synthetic arm with the best baseline, chosen by a rule fixed before
any result (highest mean Dice averaged over the seeds, among the arms without synthetic data), seed by
seed (paired: the same seed's cohort split and test patients).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run_seed(seed: int, cores: str, configfile: str | None = None, prefix: str = "results") -> tuple[Path, float]:
    results = REPO / f"{prefix}-seed{seed}"
    cmd = ["snakemake", "--cores", cores, *(["--configfile", configfile] if configfile else []),
           "--config", f"seed={seed}", f"results={results.name}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return results, time.perf_counter() - t0


def seed_figures(results: Path) -> dict:
    """The per-arm and style figures of one finished results folder."""
    summary = json.loads((results / "eval" / "summary.json").read_text())
    out = {"arms": {arm: {"mean_dice": a["mean_dice"], "worst_dice": a["worst_dice"], "std_dice": a["std_dice"]}
                    for arm, a in summary["arms"].items()}}
    cost = results / "report" / "cost_gain.json"
    if cost.is_file():
        for arm, c in json.loads(cost.read_text())["arms"].items():
            if arm in out["arms"]:
                out["arms"][arm].update(synthetic=bool(c["synthetic"]), wall_s=c.get("wall_s"))
    check = results / "synthesis" / "style_check.json"
    if check.is_file():
        c = json.loads(check.read_text())
        out["transfer_median"], out["transfer_min"] = c["transfer"]["median"], c["transfer"]["min"]
        if "transfer_random_init" in c:
            chance = c["transfer_random_init"]
            out["transfer_median_random"], out["transfer_min_random"] = chance["median"], chance["min"]
        if "transfer_learned" in c:  # stain matching on: the learned pathway alone
            out["transfer_learned_median"] = c["transfer_learned"]["median"]
            out["transfer_learned_median_random"] = c["transfer_learned_random_init"]["median"]
        out["separability"], out["separability_random"] = (c["separability"]["trained"],
                                                           c["separability"]["random_init"])
    fidelity = results / "eval" / "layout_fidelity.json"
    if fidelity.is_file():
        f = json.loads(fidelity.read_text())
        out["fidelity_synthetic"], out["fidelity_real"] = f["macro_dice"], f["real_val_macro_dice"]
        out["fidelity_real_restained"] = f.get("restained_real_val_macro_dice")
    return out


def spread(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()), "max": float(v.max()), "values": [float(x) for x in v]}


def winners(per_seed: dict[str, dict]) -> dict:
    """Per seed, the arm with the highest mean Dice, the highest worst-patient Dice and the lowest standard
    deviation across patients (ties: every tied arm)."""
    out = {}
    for key, best in (("mean_dice", max), ("worst_dice", max), ("std_dice", min)):
        out[key] = {}
        for seed, s in per_seed.items():
            top = best(a[key] for a in s["arms"].values())
            out[key][seed] = [arm for arm, a in s["arms"].items() if a[key] == top]
    return out


def versus_best_baseline(per_seed: dict[str, dict], table: dict) -> dict | None:
    """Every synthetic arm against the best baseline (rule fixed in advance: highest mean Dice averaged over
    seeds among arms without synthetic data), paired by seed, on the mean and the worst patient."""
    first = next(iter(per_seed.values()))["arms"]
    if not all("synthetic" in a for a in first.values()):
        return None
    baselines = [arm for arm, a in first.items() if not a["synthetic"]]
    synthetic = [arm for arm, a in first.items() if a["synthetic"]]
    if not baselines or not synthetic:
        return None
    best = max(baselines, key=lambda arm: table[arm]["mean_dice"]["mean"])
    out = {"baseline": best, "arms": {}}
    for arm in synthetic:
        row = {}
        for key in ("mean_dice", "worst_dice"):
            diffs = [s["arms"][arm][key] - s["arms"][best][key] for s in per_seed.values()]
            row[key] = {**spread(diffs), "seeds_ahead": sum(d > 0 for d in diffs), "seeds": len(diffs)}
        out["arms"][arm] = row
    return out


def summarise(per_seed: dict[str, dict]) -> dict:
    arms = list(next(iter(per_seed.values()))["arms"])
    table = {arm: {k: spread([s["arms"][arm][k] for s in per_seed.values()])
                   for k in ("mean_dice", "worst_dice", "std_dice")} for arm in arms}
    style = {k: spread([s[k] for s in per_seed.values() if s.get(k) is not None])
             for k in ("transfer_median", "transfer_min", "transfer_learned_median", "transfer_learned_median_random",
                       "separability", "separability_random",
                       "fidelity_synthetic", "fidelity_real", "fidelity_real_restained") if any(s.get(k) is not None for s in per_seed.values())}
    return {"arms": table, "style": style, "winners": winners(per_seed),
            "versus_best_baseline": versus_best_baseline(per_seed, table)}


def markdown(result: dict) -> list[str]:
    """The README's table: mean ± sd over seeds [lowest-highest seed] per arm."""
    def cell(x):
        return f"{x['mean']:.3f} ± {x['sd'] or 0:.3f} [{x['min']:.3f}–{x['max']:.3f}]"
    lines = ["| arm | mean Dice | worst patient | sd across patients |", "|---|---|---|---|"]
    lines += [f"| {arm} | {cell(r['mean_dice'])} | {cell(r['worst_dice'])} | {cell(r['std_dice'])} |"
              for arm, r in result["arms"].items()]
    vs = result["versus_best_baseline"]
    if vs:
        lines += ["", f"| synthetic arm − {vs['baseline']} (paired by seed) | mean Dice | worst patient |",
                  "|---|---|---|"]
        for arm, r in vs["arms"].items():
            lines.append(f"| {arm} | " + " | ".join(
                f"{r[k]['mean']:+.3f} ± {r[k]['sd'] or 0:.3f} (ahead in {r[k]['seeds_ahead']}/{r[k]['seeds']})"
                for k in ("mean_dice", "worst_dice")) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--seeds", type=int, nargs="+", help="run the demo once per seed")
    group.add_argument("--results", nargs="+", help="summarise these finished results folders")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--configfile", help="run this config instead of the demo's (e.g. resources/study/config.yaml)")
    parser.add_argument("--prefix", default="results", help="results folders are <prefix>-seed<N>")
    args = parser.parse_args(argv)

    folders, seconds = {}, {}
    if args.seeds:
        for seed in args.seeds:
            folders[str(seed)], seconds[str(seed)] = run_seed(seed, args.cores, args.configfile, args.prefix)
    else:
        folders = {Path(r).name: Path(r) for r in args.results}
    per_seed = {name: seed_figures(path) for name, path in folders.items()}
    result = summarise(per_seed)
    print(f"{'arm':18} {'mean Dice (mean ± sd over seeds)':>34} {'worst patient':>24}", file=sys.stderr)
    for arm, row in result["arms"].items():
        m, w = row["mean_dice"], row["worst_dice"]
        print(f"{arm:18} {m['mean']:>20.3f} ± {m['sd'] or 0:.3f} [{m['min']:.3f}-{m['max']:.3f}]"
              f" {w['mean']:>10.3f} ± {w['sd'] or 0:.3f}", file=sys.stderr)
    for line in markdown(result):
        print(line, file=sys.stderr)
    for key, row in result["winners"].items():
        print(f"best {key} per seed: " + "; ".join(f"{seed}: {', '.join(arms)}" for seed, arms in row.items()),
              file=sys.stderr)
    for key, row in result["style"].items():
        print(f"{key:22} {row['mean']:.3f} (seeds: {', '.join(f'{v:.3f}' for v in row['values'])})", file=sys.stderr)
    print(json.dumps({"seeds": list(per_seed), "wall_s": seconds, **result, "per_seed": per_seed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
