"""How narrow a 10-90% interval can be with what the KB records (issue 26's width bar).

The LODO interval on a held-out dataset can never be narrower than the interval of a model
that has *seen* that dataset: this script fits one on random 5-fold splits of every run (the
dataset's identity one-hot encoded beside the learner's own features, so each test run's
dataset is in its training folds) and reports, per regime, the width a constant 80% band
needs around its predictions (the residuals' 10th to 90th percentile) and the coverage and
width of its 10%/90% quantile models as they come out (uncalibrated). If even this
in-distribution width is over a bar, no held-out method can meet the bar with these
features; only new information about the runs (their curves, the dataset's images) can.

    python bench/interval_floor.py --kb metallmix/data/kb.sqlite

A plain XGBoost per fold (300 trees, depth 4, one thread): no ensemble, no anchor; it is
a reference point, not the product's learner (that one is scored by bench/lodo_intervals.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.model_selection import KFold

from metallmix.tools.kb.frame import records_to_frame
from metallmix.tools.kb.regime import regime_of
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.encoding import FeatureEncoder
from metallmix.tools.meta.metalearner import training_rows
from metallmix.tools.meta.targets import target_column

LOW, HIGH = 0.1, 0.9
TREES = {"n_estimators": 300, "max_depth": 4, "learning_rate": 0.05, "subsample": 0.8}


def regime_floor(frame: pd.DataFrame, seed: int) -> dict[str, float | int]:
    """Random 5-fold figures for one regime's completed runs, the dataset known."""
    rows = training_rows(frame)
    y = rows[target_column(rows)].to_numpy(dtype=float)
    encoder = FeatureEncoder.fit(rows)
    known = pd.get_dummies(rows["dataset"].astype(str)).to_numpy(dtype=np.float32)
    x = np.hstack([encoder.transform(rows), known])
    residual = np.zeros(len(y))
    low, high = np.zeros(len(y)), np.zeros(len(y))
    for train, test in KFold(5, shuffle=True, random_state=seed).split(x):
        point = xgb.XGBRegressor(**TREES, n_jobs=1, random_state=seed)
        point.fit(x[train], y[train])
        residual[test] = y[test] - point.predict(x[test])
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
    lo, hi = np.quantile(residual, [LOW, HIGH])
    return {
        "runs": len(y),
        "datasets": int(rows["dataset"].nunique()),
        "constant_band_width": round(float(hi - lo), 3),
        "quantile_coverage": round(float(np.mean((y >= low) & (y <= high))), 3),
        "quantile_width": round(float(np.mean(high - low)), 3),
        "mean_abs_error": round(float(np.mean(np.abs(residual))), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", default="metallmix/data/kb.sqlite")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    records = SQLiteKnowledgeBase(args.kb, read_only=True).records()
    frame = records_to_frame(records)
    frame["regime"] = [regime_of(r) for r in records]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    out: dict[str, object] = {"kb": args.kb, "commit": commit, "seed": args.seed,
                              "load_average": os.getloadavg()[0]}  # fmt: skip
    for regime, part in frame.groupby("regime"):
        out[str(regime)] = regime_floor(part.reset_index(drop=True), args.seed)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
