"""Shortlist rules in LODO (issue 29): plain top-5 against the hedging rules, per regime.

Reads ``bench lodo`` result files (one per seed) and writes a table of the mean top-5
regret of each rule, per compute regime and overall:

metallmix bench lodo --kb metallmix/data/kb.sqlite --seed 0 --name portfolio_lodo_kb_seed0
python bench/portfolio_lodo.py bench/results/portfolio_lodo_kb_seed0.json \
    --out bench/results/portfolio_lodo_kb.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pandas as pd

from metallmix.atomic import write_text
from metallmix.benchmarks.lodo import LodoResult, load_kb_records
from metallmix.tools.kb.regime import regime_of

RULES = {
    "metalearner-ensemble-top5": "plain top-5",
    "metalearner-ensemble-portfolio5": "portfolio (greedy among the 15 best-predicted)",
    "metalearner-ensemble-portfolio5-all": "portfolio (greedy among all)",
    "metalearner-ensemble-family5": "family diversity",
    "metalearner-ensemble": "single pick",
    "random-best-of-5": "random best-of-5",
    "random-best-of-10": "random best-of-10",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--kb", default="metallmix/data/kb.sqlite")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    records, _ = load_kb_records(args.kb)
    regime = {r.dataset: regime_of(r) for r in records}
    frames, heads = [], []
    for path in args.results:
        result = LodoResult.model_validate_json(path.read_text())
        frame = pd.DataFrame([r.model_dump() for r in result.rows])
        frame["seed"] = result.seed
        frames.append(frame)
        heads.append(
            f"- `{path}`: seed {result.seed}, {result.seconds:.0f} s wall, "
            f"{result.n_jobs} folds at once, load average {result.load_average} at the end "
            f"on {result.cpu_count} CPUs"
        )
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[rows["method"].isin(RULES)]
    rows["regime"] = rows["dataset"].map(regime)
    table = rows.pivot_table(index="method", columns=["regime", "seed"], values="regret")
    overall = rows.pivot_table(index="method", columns="seed", values="regret")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    seeds = sorted(rows["seed"].unique())
    regimes = sorted(rows["regime"].unique())
    lines = [
        "# Shortlist rules in LODO: plain top-5 against a portfolio",
        "",
        f"Written by `python bench/portfolio_lodo.py {' '.join(map(str, args.results))} "
        f"--out {args.out}` at commit `{commit}`.",
        "",
        *heads,
        "",
        "Mean normalised regret of the best of the 5 trained (0 = the held-out dataset's "
        "best run), per compute regime and seed; lower is better.",
        "",
        "| rule | "
        + " | ".join(f"{g} seed {s}" for g in regimes for s in seeds)
        + " | "
        + " | ".join(f"all seed {s}" for s in seeds)
        + " |",
        "|---|" + "---:|" * (len(regimes) * len(seeds) + len(seeds)),
    ]
    for method, label in RULES.items():
        if method not in table.index:
            continue
        cells = [
            f"{table.loc[method, (g, s)]:.3f}" if (g, s) in table.columns else "(not run)"
            for g in regimes
            for s in seeds
        ]
        # "all" only where the seed's run held out every regime's datasets
        cells += [
            f"{overall.loc[method, s]:.3f}"
            if all((g, s) in table.columns for g in regimes)
            else "(not run)"
            for s in seeds
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    counts = rows.drop_duplicates(["dataset", "regime"]).groupby("regime")["dataset"].count()
    lines += ["", "Held-out datasets: " + ", ".join(f"{g} {n}" for g, n in counts.items()) + "."]
    write_text(args.out, "\n".join(lines) + "\n")
    summary = {
        "commit": commit,
        "results": [str(p) for p in args.results],
        "regret": {
            m: {
                **{
                    f"{g}/seed{s}": table.loc[m, (g, s)]
                    for g in regimes
                    for s in seeds
                    if (g, s) in table.columns
                },
                **{
                    f"all/seed{s}": overall.loc[m, s]
                    for s in seeds
                    if all((g, s) in table.columns for g in regimes)
                },
            }
            for m in RULES
            if m in table.index
        },
    }
    write_text(args.out.with_suffix(".json"), json.dumps(summary, indent=2, default=float))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
