"""One meta-learner for both compute regimes, or one per regime? Decided by LODO.

On a KB holding both regimes (our own CPU runs and the Quick-Tune GPU runs), each dataset
group is held out in turn; two meta-learners see only the other groups:

- ``per-regime``: fitted on the other groups of the held-out group's regime only (what
  ``recommend`` does: it learns from the runs of the user's regime);
- ``combined``: fitted on the other groups of both regimes.

Each held-out dataset's evaluated configurations are ranked by each learner and the pick is
scored by its true validation score (``RunRecord.score``: balanced accuracy where recorded,
else accuracy) as normalised regret, (best - picked) / (best - worst), for the top-1 pick
and for "validate the top 5, keep the best". Per regime, the learner with the lower mean
regret wins; the combined one is adopted only if neither regime gets worse.

    python bench/regime_lodo.py --kb metallmix/data/kb.sqlite [--seed 0] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import cast

import numpy as np

from metallmix.benchmarks.lodo import MIN_CONFIGS, TOP_K, regret_and_rank
from metallmix.tools.kb.frame import records_to_frame
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.regime import regime_of
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.metalearner import MetaLearner, MetaLearnerConfig


def usable(records: list[RunRecord]) -> list[RunRecord]:
    return [r for r in records if r.status == "ok" and r.score is not None]


def run(kb_path: Path, seed: int) -> dict[str, object]:
    records = usable(list(SQLiteKnowledgeBase(kb_path, read_only=True).iter_records()))
    groups = sorted({r.dataset_group for r in records})
    cfg = MetaLearnerConfig(seed=seed, with_uncertainty=False, with_cost=False)
    rows: list[dict[str, object]] = []
    fit_seconds: dict[str, float] = defaultdict(float)
    started = time.perf_counter()
    for group in groups:
        test_all = [r for r in records if r.dataset_group == group]
        regime = regime_of(test_all[0])
        train = [r for r in records if r.dataset_group != group]
        sets = {
            "per-regime": [r for r in train if regime_of(r) == regime],
            "combined": train,
        }
        learners: dict[str, MetaLearner] = {}
        for name, subset in sets.items():
            t0 = time.perf_counter()
            learners[name] = MetaLearner.fit(records_to_frame(subset), cfg)
            fit_seconds[name] += time.perf_counter() - t0
        for dataset in sorted({r.dataset for r in test_all}):
            test = sorted((r for r in test_all if r.dataset == dataset), key=lambda r: r.run_id)
            if len(test) < MIN_CONFIGS:
                continue
            true = np.array([r.score for r in test], dtype=float)
            frame = records_to_frame(test)
            for name, learner in learners.items():
                scores = learner.predict(frame).score
                regret, _ = regret_and_rank(true, int(np.argmax(scores)))
                top = np.argsort(-scores, kind="stable")[:TOP_K]
                regret5, _ = regret_and_rank(true, int(top[int(np.argmax(true[top]))]))
                rows.append(
                    {
                        "regime": regime,
                        "group": group,
                        "dataset": dataset,
                        "method": name,
                        "n_configs": len(test),
                        "regret": regret,
                        f"regret_top{TOP_K}": regret5,
                    }
                )
        print(f"held out {group} ({regime}): {len(test_all)} runs", flush=True)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for regime_name in sorted({str(r["regime"]) for r in rows}):
        summary[regime_name] = {}
        for method in ("per-regime", "combined"):
            mine = [r for r in rows if r["regime"] == regime_name and r["method"] == method]
            summary[regime_name][method] = {
                "datasets": len(mine),
                "mean_regret": float(np.mean([float(str(r["regret"])) for r in mine])),
                f"mean_regret_top{TOP_K}": float(
                    np.mean([float(str(r[f"regret_top{TOP_K}"])) for r in mine])
                ),
            }
    worse = [
        name
        for name, by in summary.items()
        if by["combined"]["mean_regret"] > by["per-regime"]["mean_regret"]
    ]
    return {
        "kb": str(kb_path),
        "seed": seed,
        "n_runs": len(records),
        "groups": groups,
        "summary": summary,
        "combined_worse_for": worse,
        "decision": "per-regime" if worse else "combined",
        "fit_seconds": dict(fit_seconds),
        "wall_seconds": time.perf_counter() - started,
        "rows": rows,
    }


def markdown(result: dict[str, object]) -> str:
    summary = result["summary"]
    assert isinstance(summary, dict)
    lines = [
        f"# One meta-learner or one per compute regime (LODO, seed {result['seed']})",
        "",
        f"KB `{result['kb']}`, {result['n_runs']} usable runs, "
        f"{len(result['groups'])} dataset groups held out in turn "  # type: ignore[arg-type]
        f"({result['wall_seconds']:.0f} s). Normalised regret, lower is better.",
        "",
        f"| regime | learner | datasets | mean regret top-1 | mean regret top-{TOP_K} |",
        "|---|---|---:|---:|---:|",
    ]
    for regime, by in summary.items():
        for method, s in by.items():
            lines.append(
                f"| {regime} | {method} | {s['datasets']} | {s['mean_regret']:.3f} | "
                f"{s[f'mean_regret_top{TOP_K}']:.3f} |"
            )
    lines += [
        "",
        f"Decision: **{result['decision']}** (combined worse for: "
        f"{', '.join(cast(list[str], result['combined_worse_for'])) or 'none'}).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kb", type=Path, default=Path("metallmix/data/kb.sqlite"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    result = run(args.kb, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"regime_lodo_seed{args.seed}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
