"""Issue 29: shipped-KB LODO, CPU regime, with and without landmarks, 3 seeds.

Two KBs hold the same CPU-regime runs of ``--kb`` (LODO fits one learner per regime, so the
CPU folds are those of the whole KB): one with the landmarks the KB stores, one with them
removed (the learner then encodes exactly as before landmarks existed: no ``lm_`` column).
Every (variant, seed) is one ``metallmix bench lodo`` run; the table puts the product's
single pick beside config-only, random best-of-5/10 and the top-5 shortlist rules, with
the intervals' coverage and width.

    nice -n 10 .venv/bin/python bench/landmarks_lodo.py --seeds 0 1 2 --jobs 2
    .venv/bin/python bench/landmarks_lodo.py --report-only   # the table from the JSON files

Result files: ``bench/results/issue29_lodo_{with,without}_seed{s}.{json,md,png,log}`` and
``bench/results/issue29_landmarks_table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]  # the repository (metallmix/benchmarks/scripts/..)
RESULTS = ROOT / "bench" / "results"
VARIANTS = ("with", "without")
METHODS = {
    "metalearner-ensemble": "single pick (default)",
    "config-only": "config-only",
    "random-best-of-5": "random best-of-5",
    "random-best-of-10": "random best-of-10",
    "metalearner-ensemble-top5": "plain top-5",
    "metalearner-ensemble-family5": "family top-5 (--verify default)",
    "metalearner-ensemble-portfolio5": "portfolio top-5 (greedy, 15 best)",
    "best-default": "best-default",
}


def cpu_kbs(source: Path, folder: Path) -> dict[str, Path]:
    """The CPU-regime runs of ``source`` with their landmarks and without them."""
    from metallmix.tools.kb.regime import regime_of
    from metallmix.tools.kb.store import SQLiteKnowledgeBase

    records = [r for r in SQLiteKnowledgeBase(source, read_only=True).iter_records()]
    cpu = [r for r in records if regime_of(r) == "cpu"]
    measured = sum(r.meta_features.landmarks is not None for r in cpu)
    print(f"{len(cpu)} CPU-regime runs, {measured} with landmarks", file=sys.stderr)
    stripped = [
        r.model_copy(
            update={"meta_features": r.meta_features.model_copy(update={"landmarks": None})}
        )
        for r in cpu
    ]
    out = {"with": folder / "kb_cpu_with.sqlite", "without": folder / "kb_cpu_without.sqlite"}
    SQLiteKnowledgeBase(out["with"]).add(cpu)
    SQLiteKnowledgeBase(out["without"]).add(stripped)
    return out


def run(kbs: dict[str, Path], seeds: list[int], jobs: int) -> None:
    exe = Path(sys.executable).parent / "metallmix"
    for seed in seeds:
        for variant in VARIANTS:
            name = f"issue29_lodo_{variant}_seed{seed}"
            command = [
                str(exe), "bench", "lodo", "--kb", str(kbs[variant]), "--seed", str(seed),
                "--jobs", str(jobs), "--name", name, "--out", str(RESULTS), "--json",
            ]  # fmt: skip
            print(f"$ {' '.join(command)}  (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def table(seeds: list[int]) -> str:
    """Mean normalised regret per method, variant and seed, plus interval rows."""
    cells: dict[tuple[str, str, int], float] = {}
    meta: list[str] = []
    intervals: dict[tuple[str, int], dict[str, float]] = {}
    for variant in VARIANTS:
        for seed in seeds:
            path = RESULTS / f"issue29_lodo_{variant}_seed{seed}.json"
            if not path.is_file():
                continue
            data = json.loads(path.read_text())
            rows = pd.DataFrame(data["rows"])
            for method, regret in rows.groupby("method")["regret"].mean().items():
                cells[(str(method), variant, seed)] = float(regret)
            intervals[(variant, seed)] = data.get("interval") or {}
            meta.append(
                f"- `{path.name}`: {data['n_runs']} runs, {data['n_datasets']} held-out "
                f"datasets, {data['seconds']:.0f} s wall, {data['n_jobs']} folds at once, "
                f"load average {data['load_average']:.2f} at the end on {data['cpu_count']} CPUs"
            )
    cols = [(v, s) for v in VARIANTS for s in seeds]
    head = (
        "| method | "
        + " | ".join(f"{v} lm, seed {s}" for v, s in cols)
        + " | mean with | mean without |"
    )
    lines = [head, "|---|" + "---:|" * (len(cols) + 2)]
    for method, label in METHODS.items():
        values = [cells.get((method, v, s)) for v, s in cols]
        means = []
        for variant in VARIANTS:
            got = [cells[(method, variant, s)] for s in seeds if (method, variant, s) in cells]
            means.append(f"{sum(got) / len(got):.3f}" if got else "-")
        shown = [f"{x:.3f}" if x is not None else "-" for x in values]
        lines.append(f"| {label} | " + " | ".join(shown) + " | " + " | ".join(means) + " |")
    for key, label in (
        ("cpu_coverage", "10-90% interval coverage, cpu (target 0.80)"),
        ("cpu_mean_width", "10-90% interval mean width, cpu"),
    ):
        values = [intervals.get((v, s), {}).get(key) for v, s in cols]
        shown = [f"{x:.3f}" if isinstance(x, float) else "-" for x in values]
        lines.append(f"| {label} | " + " | ".join(shown) + " | | |")
    lines.append("")
    for seed in seeds:
        paths = [RESULTS / f"issue29_lodo_{v}_seed{seed}.json" for v in VARIANTS]
        if not all(p.is_file() for p in paths):
            continue
        frames = [pd.DataFrame(json.loads(p.read_text())["rows"]) for p in paths]
        for method in ("metalearner-ensemble", "metalearner-ensemble-family5"):
            a, b = (f[f["method"] == method].set_index("dataset")["regret"] for f in frames)
            diff = (a - b).dropna()
            lines.append(
                f"- seed {seed}, {METHODS[method]}: with landmarks better on "
                f"{int((diff < -1e-9).sum())}, worse on {int((diff > 1e-9).sum())}, tied on "
                f"{int((diff.abs() <= 1e-9).sum())} held-out datasets"
            )
    return "\n".join([*meta, "", *lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, default=ROOT / "metallmix" / "data" / "kb.sqlite")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        with tempfile.TemporaryDirectory(prefix="issue29_") as tmp:
            run(cpu_kbs(args.kb, Path(tmp)), args.seeds, args.jobs)
    text = table(args.seeds)
    (RESULTS / "issue29_landmarks_table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
