"""Benchmark: scoring 10,000 candidate configurations with the meta-learner.

Prints the time to sample, encode and predict (accuracy, band, cost, ranking score) for
N candidates, and the TreeSHAP time for the top 5, as median of --repeat runs. Not a test.

    python bench/score_candidates.py [--kb KB.sqlite|QUICKTUNE_DIR] [--n 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from metallmix.benchmarks.lodo import load_kb_records
from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.tools.kb.frame import records_to_frame
from metallmix.tools.meta.encoding import candidates_frame
from metallmix.tools.meta.explain import facts_for_rows
from metallmix.tools.meta.metalearner import MetaLearner, MetaLearnerConfig
from metallmix.tools.meta.search_space import CPU_ZOO_SPACE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kb", default=None, help="KB .sqlite or Quick-Tune folder")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench/results/score_candidates.json")
    args = parser.parse_args()

    records = load_kb_records(args.kb)[0] if args.kb else synthetic_records(10, 60, seed=0)
    frame = records_to_frame(records)
    t0 = time.perf_counter()
    learner = MetaLearner.fit(frame, MetaLearnerConfig())
    fit_s = time.perf_counter() - t0
    mf = records[0].meta_features
    timings: dict[str, list[float]] = {"sample": [], "encode": [], "predict": [], "shap_top5": []}
    for rep in range(args.repeat):
        t = time.perf_counter()
        configs = CPU_ZOO_SPACE.sample(args.n, seed=rep)
        timings["sample"].append(time.perf_counter() - t)
        t = time.perf_counter()
        cands = candidates_frame(mf, configs)
        learner.matrix(cands)
        timings["encode"].append(time.perf_counter() - t)
        t = time.perf_counter()
        pred = learner.predict(cands)
        timings["predict"].append(time.perf_counter() - t)
        top = np.argsort(-pred.score)[:5]
        t = time.perf_counter()
        facts_for_rows(learner, cands.iloc[top].reset_index(drop=True), [f"c{i}" for i in range(5)])
        timings["shap_top5"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in timings.items()}
    total = med["sample"] + med["encode"] + med["predict"]
    result = {
        "kb": args.kb or "synthetic 10x60",
        "kb_rows": len(frame),
        "n_candidates": args.n,
        "features": len(learner.encoder.columns),
        "fit_seconds": round(fit_s, 2),
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "candidates_per_second_end_to_end": round(args.n / total),
        "predict_rows_per_second": round(args.n / med["predict"]),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    print(
        f"{args.n} candidates on a {len(frame)}-row KB ({result['features']} features): "
        f"sample {med['sample']:.3f} s, encode {med['encode']:.3f} s, "
        f"predict {med['predict']:.3f} s (accuracy, 10-90% band, cost), "
        f"SHAP top-5 {med['shap_top5']:.3f} s; "
        f"{result['candidates_per_second_end_to_end']:,} candidates/s end to end "
        f"(fit {fit_s:.1f} s; load average {result['load_average_1min']} "
        f"on {result['cpu_count']} CPUs)"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
