"""Combine ``bench lodo`` result files of several seeds into one table (mean and worst case).

python bench/lodo_seeds.py bench/results/lodo_quicktune_seed{0,1,2}.json
Prints markdown: per method the mean normalised regret per seed, its mean over seeds, the
worst held-out dataset over all seeds and how many (dataset, seed) picks exceeded 0.5; then
the interval coverage per seed. Reads only the JSON that `metallmix bench lodo` wrote.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(paths: list[str]) -> str:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    per: dict[str, list[float]] = defaultdict(list)
    worst: dict[str, tuple[float, str]] = {}
    bad: dict[str, int] = defaultdict(int)
    for run in runs:
        sums: dict[str, list[float]] = defaultdict(list)
        for row in run["rows"]:
            m, r = row["method"], float(row["regret"])
            sums[m].append(r)
            if r > worst.get(m, (-1.0, ""))[0]:
                worst[m] = (r, f"{row['dataset']}, seed {run['seed']}")
            bad[m] += r > 0.5
        for m, values in sums.items():
            per[m].append(sum(values) / len(values))
    default = runs[0].get("default_method", "")
    seeds = " / ".join(str(r["seed"]) for r in runs)
    lines = [
        f"{runs[0]['kb']}: {runs[0]['n_runs']} completed runs, {runs[0]['n_datasets']} datasets "
        f"({runs[0].get('n_partial_runs', 0)} partial runs ignored); default pick rule "
        f"`{default}`.",
        "",
        f"| method | mean regret, seeds {seeds} | mean | worst dataset | picks > 0.5 |",
        "|---|---:|---:|---:|---:|",
    ]
    for m, values in per.items():
        name = f"**{m}** (default)" if m == default else m
        w, where = worst[m]
        lines.append(
            f"| {name} | {' / '.join(f'{v:.3f}' for v in values)} | "
            f"{sum(values) / len(values):.3f} | {w:.3f} ({where}) | {bad[m]} |"
        )
    cov = [r.get("interval") or {} for r in runs]
    if all(cov):
        lines += [
            "",
            "10-90% interval on held-out runs (target 80%): coverage as fitted "
            + " / ".join(f"{c['coverage']:.1%}" for c in cov)
            + "; after conformal widening from the other folds "
            + " / ".join(f"{c['coverage_conformal']:.1%}" for c in cov)
            + " (mean width "
            + " / ".join(f"{c['mean_width_conformal']:.2f}" for c in cov)
            + ").",
        ]
    wall = " / ".join(f"{r['seconds']:.0f} s (load {r.get('load_average')})" for r in runs)
    lines += ["", f"Wall time per seed: {wall} on {runs[0].get('cpu_count')} CPUs."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv[1:]))
