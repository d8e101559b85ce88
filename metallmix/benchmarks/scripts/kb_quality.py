"""Per-dataset quality of a KB's own runs: how many learned, how well (issue 12).

A run is *near chance* when its test balanced accuracy is at most 1/k + 0.05 (k classes of
its task). Prints a Markdown table (the README quotes it) and a JSON summary with --json.

    python bench/kb_quality.py --kb metallmix/data/kb.sqlite
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.store import open_kb

NEAR_CHANCE_MARGIN = 0.05


def test_balanced(record: RunRecord) -> float | None:
    out = record.outcomes
    return (
        out.test_balanced_accuracy
        if out.test_balanced_accuracy is not None
        else (out.balanced_accuracy)
    )


def near_chance(record: RunRecord) -> bool:
    """Test balanced accuracy <= 1/k + 0.05; a run without a test score counts as near chance."""
    k = record.meta_features.n_classes
    score = test_balanced(record)
    return score is None or not k or score <= 1.0 / k + NEAR_CHANCE_MARGIN


def summarise(records: list[RunRecord]) -> dict[str, Any]:
    """Counts per dataset group and overall: runs, tasks, near chance, pretrained, best scores."""
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        groups[r.dataset_group].append(r)

    def row(rs: list[RunRecord]) -> dict[str, Any]:
        scores = [s for s in (test_balanced(r) for r in rs) if s is not None]
        vals = [r.outcomes.val_balanced_accuracy for r in rs]
        return {
            "runs": len(rs),
            "tasks": len({r.dataset for r in rs}),
            "near_chance": sum(near_chance(r) for r in rs),
            "near_chance_share": round(sum(near_chance(r) for r in rs) / max(1, len(rs)), 3),
            "pretrained": sum(r.pretrained for r in rs),
            "pretrained_share": round(sum(r.pretrained for r in rs) / max(1, len(rs)), 3),
            "best_test_balanced_accuracy": round(max(scores), 3) if scores else None,
            "best_val_balanced_accuracy": round(max(v for v in vals if v is not None), 3)
            if any(v is not None for v in vals)
            else None,
        }

    return {
        "by_dataset": {g: row(rs) for g, rs in sorted(groups.items())},
        "total": row(records),
    }


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| dataset | runs | tasks | near chance | pretrained | best test bal. acc | "
        "best val bal. acc |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [*summary["by_dataset"].items(), ("**all**", summary["total"])]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['runs']} | {r['tasks']} | {r['near_chance']} "
            f"({100 * r['near_chance_share']:.0f}%) | {r['pretrained']} "
            f"({100 * r['pretrained_share']:.0f}%) | {r['best_test_balanced_accuracy']} | "
            f"{r['best_val_balanced_accuracy']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, default=Path("metallmix/data/kb.sqlite"))
    parser.add_argument("--source", default="own", help="record source to summarise")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kb = open_kb(str(args.kb), read_only=True)
    records = [r for r in kb.iter_records() if r.source == args.source]
    summary = summarise(records)
    print(json.dumps(summary, indent=2) if args.json else markdown(summary))


if __name__ == "__main__":
    main()
