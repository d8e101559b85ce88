"""Leave-one-dataset-out coverage and width of the predicted score's 10-90% interval.

The interval does not depend on the ranking ensemble, so this runs LODO with the plain
accuracy model only (``--objectives raw``, no config-only baseline): a fraction of the full
benchmark's cost, the same interval figures (``metallmix bench lodo`` reports them too).

nice -n 10 python bench/lodo_intervals.py --kb metallmix/data/kb.sqlite --seeds 0 1 2 \
    --name lodo_intervals_shippedkb
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from metallmix.atomic import write_text
from metallmix.benchmarks.lodo import LodoSpec, load_kb_records, run_lodo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", default="metallmix/data/kb.sqlite")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--name", default="lodo_intervals")
    parser.add_argument("--jobs", type=int, default=1, help="folds fitted at once")
    parser.add_argument(
        "--no-level", action="store_true", help="without the landmarks' level line (meta.level)"
    )
    args = parser.parse_args(argv)
    records, label = load_kb_records(args.kb)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    per_seed = []
    for seed in args.seeds:
        spec = LodoSpec(
            objectives=("raw",),
            seed=seed,
            n_estimators=args.trees,
            config_only=False,
            landmark_level=not args.no_level,
        )
        result = run_lodo(records, spec, kb_label=label, n_jobs=args.jobs)
        row = {"seed": seed, "seconds": result.seconds, "load_average": result.load_average,
               **result.interval}  # fmt: skip
        per_seed.append(row)
        print(json.dumps(row), flush=True)
    payload = {
        "kb": label,
        "command": "python bench/lodo_intervals.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": commit,
        "cpu_count": os.cpu_count(),
        "per_seed": per_seed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / f"{args.name}.json", json.dumps(payload, indent=2))
    scopes = [
        s
        for s in ("all", "cpu", "gpu")
        if f"{'' if s == 'all' else s + '_'}coverage" in per_seed[0]
    ]
    lines = [
        "# LODO: 10-90% interval of the predicted score on held-out datasets",
        "",
        f"KB `{label}`, commit {commit}, `{payload['command']}`; target coverage 80%.",
        "cpu = our own runs (the shipped KB's CPU regime), gpu = the Quick-Tune runs.",
        "",
        "| seed | regime | runs | coverage | mean width | wall s (load) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in per_seed:
        for scope in scopes:
            p = "" if scope == "all" else f"{scope}_"
            lines.append(
                f"| {row['seed']} | {scope} | {row[p + 'n_runs']} | {row[p + 'coverage']:.1%} | "
                f"{row[p + 'mean_width']:.3f} | {row['seconds']:.0f} ({row['load_average']}) |"
            )
    write_text(args.out / f"{args.name}.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
