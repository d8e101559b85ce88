"""What a zero-shot learner could reach at best with what the KB records: the figures of a
model that has *seen* the held-out dataset (issues 26 and 29).

A held-out (LODO) prediction can never be better than one from a model trained on most of
that dataset's own runs. This script fits such a model on random 5-fold splits of every run
of a regime (the dataset's identity one-hot encoded beside the learner's own features, so
each test run's dataset is in its training folds) and reports, per regime:

- the width a constant 80% band needs around its predictions (the residuals' 10th to 90th
  percentile), and the coverage and width of its 10%/90% quantile models as they come out
  (uncalibrated): issue 26's width bars;
- the mean normalised regret of its single pick per dataset (argmax of the out-of-fold
  predictions among the dataset's evaluated configurations, as ``bench lodo`` scores a pick),
  beside random best-of-1 and best-of-5: issue 29's "single pick beats random best-of-5".

If even this seen-dataset figure misses a bar, no held-out method meets it with these
features; only new information about the runs (early learning-curve points, repeated seeds,
the dataset's images) can.

    python bench/seen_dataset_floor.py --kb metallmix/data/kb.sqlite --seeds 0 1 2

A plain XGBoost per fold (300 trees, depth 4, one thread), no ensemble and no level line: a
reference point, not the product's learner (``bench/lodo_intervals.py`` and ``bench lodo``
score that one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.model_selection import KFold

from metallmix.benchmarks.lodo import expected_best_of, regret_and_rank
from metallmix.tools.kb.frame import records_to_frame
from metallmix.tools.kb.regime import regime_of
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.encoding import FeatureEncoder
from metallmix.tools.meta.metalearner import training_rows
from metallmix.tools.meta.targets import target_column

LOW, HIGH = 0.1, 0.9
TREES = {"n_estimators": 300, "max_depth": 4, "learning_rate": 0.05, "subsample": 0.8}


def _out_of_fold(
    x: np.ndarray, y: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold point predictions and 10%/90% quantiles (random 5-fold)."""
    point, low, high = np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y))
    for train, test in KFold(5, shuffle=True, random_state=seed).split(x):
        model = xgb.XGBRegressor(**TREES, n_jobs=1, random_state=seed)
        model.fit(x[train], y[train])
        point[test] = model.predict(x[test])
        band = xgb.XGBRegressor(
            **TREES,
            n_jobs=1,
            random_state=seed,
            objective="reg:quantileerror",
            quantile_alpha=np.array([LOW, HIGH]),
        )
        band.fit(x[train], y[train])
        q = np.clip(band.predict(x[test]), 0.0, 1.0)
        low[test], high[test] = q[:, 0], q[:, 1]
    return point, low, high


def regime_floor(frame: pd.DataFrame, seed: int) -> dict[str, Any]:
    """Seen-dataset figures for one regime's completed runs (see the module docstring)."""
    rows = training_rows(frame)
    y = rows[target_column(rows)].to_numpy(dtype=float)
    known = pd.get_dummies(rows["dataset"].astype(str)).to_numpy(dtype=np.float32)
    x = np.hstack([FeatureEncoder.fit(rows).transform(rows), known])
    point, low, high = _out_of_fold(x, y, seed)
    residual = y - point
    lo, hi = np.quantile(residual, [LOW, HIGH])
    tasks = list(rows.groupby("dataset").indices.values())
    return {
        "runs": len(y),
        "datasets": len(tasks),
        "constant_band_width": round(float(hi - lo), 3),
        "quantile_coverage": round(float(np.mean((y >= low) & (y <= high))), 3),
        "quantile_width": round(float(np.mean(high - low)), 3),
        "mean_abs_error": round(float(np.mean(np.abs(residual))), 3),
        "pick_regret": round(
            float(np.mean([regret_and_rank(y[i], int(np.argmax(point[i])))[0] for i in tasks])),
            3,
        ),
        "random_best_of_1": round(float(np.mean([expected_best_of(y[i], 1)[0] for i in tasks])), 3),
        "random_best_of_5": round(float(np.mean([expected_best_of(y[i], 5)[0] for i in tasks])), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", default="metallmix/data/kb.sqlite")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    records = SQLiteKnowledgeBase(args.kb, read_only=True).records()
    frame = records_to_frame(records)
    frame["regime"] = [regime_of(r) for r in records]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    out: dict[str, Any] = {
        "kb": args.kb,
        "command": "python bench/seen_dataset_floor.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": commit,
        "seeds": args.seeds,
        "load_average": round(os.getloadavg()[0], 2),
        "per_seed": {},
    }
    for seed in args.seeds:
        out["per_seed"][str(seed)] = {
            str(regime): regime_floor(part.reset_index(drop=True), seed)
            for regime, part in frame.groupby("regime")
        }
        print(json.dumps({"seed": seed, **out["per_seed"][str(seed)]}), file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
