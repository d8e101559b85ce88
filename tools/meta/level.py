"""The dataset's level from its landmarks: a linear anchor the accuracy trees start from.

Most of the error of a predicted accuracy on an unseen dataset is the dataset's overall
level, not the configuration's effect (issue 26: knee_oa_kl scores 0.24-0.33 and was
predicted at about 0.8, so every 80% interval had to be about 0.5 wide). The landmarks
measure that level directly: across the shipped KB's 33 own tasks, the best backbone's
read-out score correlates 0.95 with the task's median validation score. Trees cannot carry
that relation to a level no training dataset had (they predict the nearest leaf, so a held-
out hard dataset is predicted at the easiest training level), and a straight line can.

So the accuracy regressor and the interval's quantile model get a per-row *base margin*:
a least-squares line over the training tasks, from the dataset-level landmarks (best
backbone, raw pixels) and chance (1 / classes) to the task's median score. The trees then
learn what the line misses, the configuration's effect above all. The line depends only on
the dataset, never on the candidate, so every candidate of one dataset gets the same
margin and the ranking of candidates does not change; only the level and the interval do.

Rows without landmarks (Quick-Tune, cards, imported histories) get a second, smaller line:
chance alone to the tasks' median score, so a 7-class card does not start at a binary
dataset's level; a row without a class count either gets one constant, the median score
of the landmark-less training rows.
A least-squares line on a dozen points is small enough to write here (``numpy.linalg``);
scikit-learn's ``LinearRegression`` would add nothing but an estimator to serialise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from metallmix.tools.meta.landmarks import BEST_BACKBONE_COLUMN, PIXEL_COLUMN

# Part of every fitted learner's cache key (metalearner._config_tag): a learner cached
# before the line changed is refitted, not read with the new line. 2: the chance line.
LEVEL_VERSION = 2
# The line's inputs, in coefficient order after the intercept (chance = 1 / n_classes).
LEVEL_FEATURES = (BEST_BACKBONE_COLUMN, PIXEL_COLUMN, "chance")
# Fewer training tasks with landmarks than this: no anchor (a line through 3 points of 4
# coefficients is no estimate). The shipped KB has 33.
MIN_LEVEL_TASKS = 8
# Ridge on the slopes (not the intercept), in units of the features' own variance: keeps
# the line sane when the tasks' landmarks hardly vary.
LEVEL_RIDGE = 1e-3
# The SHAP group the anchor is reported as: how far this dataset's level (from its
# landmarks) is from the KB tasks' average level, in the explanation's points.
LEVEL_GROUP = "lm_level"


def level_features(frame: pd.DataFrame) -> np.ndarray:
    """(rows x 3) best-backbone landmark, pixel landmark and chance; NaN where missing."""
    n = len(frame)
    nan = np.full(n, np.nan)
    best = pd.to_numeric(frame.get(BEST_BACKBONE_COLUMN, pd.Series(nan)), errors="coerce")
    pixels = pd.to_numeric(frame.get(PIXEL_COLUMN, pd.Series(nan)), errors="coerce")
    return np.column_stack(
        [best.to_numpy(dtype=float), pixels.to_numpy(dtype=float), chance_of(frame)]
    ).reshape(n, len(LEVEL_FEATURES))


def chance_of(frame: pd.DataFrame) -> np.ndarray:
    """1 / ``mf_n_classes`` per row (NaN where the class count is unknown)."""
    classes = pd.to_numeric(
        frame.get("mf_n_classes", pd.Series(np.nan, frame.index)), errors="coerce"
    ).to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(classes > 0, 1.0 / classes, np.nan)


class LandmarkLevel(BaseModel):
    """A fitted level line: ``margin(frame)`` is each row's anchor (a fraction)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    intercept: float
    slopes: list[float]  # one per LEVEL_FEATURES
    fallback: float  # margin of a row with neither landmarks nor a class count
    chance_line: list[float] | None = None  # [intercept, slope]: rows without landmarks
    centre: float  # the training tasks' mean median label: the KB's average level
    n_tasks: int  # training tasks the line was fitted on

    @classmethod
    def fit(cls, rows: pd.DataFrame, label: np.ndarray) -> LandmarkLevel | None:
        """The line through the training tasks' median labels, or None when fewer than
        :data:`MIN_LEVEL_TASKS` tasks have landmarks (the learner then has no anchor)."""
        label = np.asarray(label, dtype=float)
        feats = level_features(rows)
        has = np.isfinite(feats).all(axis=1) & np.isfinite(label)
        rest = label[~has & np.isfinite(label)]
        fallback = float(np.median(rest)) if rest.size else float(np.nanmedian(label))
        if not has.any():
            return None
        chance_line = _chance_line(rows, label, feats[:, LEVEL_FEATURES.index("chance")])
        tasks = pd.DataFrame(feats[has], columns=list(LEVEL_FEATURES))
        tasks["label"] = label[has]
        tasks["task"] = rows["dataset"].to_numpy()[has]
        per_task = tasks.groupby("task", sort=True).median()
        if len(per_task) < MIN_LEVEL_TASKS:
            return None
        x = per_task[list(LEVEL_FEATURES)].to_numpy(dtype=float)
        y = per_task["label"].to_numpy(dtype=float)
        mean_x, mean_y = x.mean(axis=0), y.mean()
        xc = x - mean_x
        scale = np.maximum(xc.var(axis=0), 1e-12)
        slopes = np.linalg.solve(
            xc.T @ xc + LEVEL_RIDGE * len(y) * np.diag(scale), xc.T @ (y - mean_y)
        )
        intercept = float(mean_y - mean_x @ slopes)
        return cls(
            intercept=round(intercept, 6),
            slopes=[round(float(s), 6) for s in slopes],
            fallback=round(fallback, 6),
            chance_line=chance_line,
            centre=round(float(mean_y), 6),
            n_tasks=len(per_task),
        )

    def margin(self, frame: pd.DataFrame) -> np.ndarray:
        """Each row's anchor, clipped to [0, 1]: the line where its dataset has landmarks,
        else the chance line where it has a class count, else :attr:`fallback`."""
        feats = level_features(frame)
        has = np.isfinite(feats).all(axis=1)
        line = self.intercept + np.nan_to_num(feats) @ np.asarray(self.slopes, dtype=float)
        chance = feats[:, LEVEL_FEATURES.index("chance")]
        other = np.full(len(frame), self.fallback)
        if self.chance_line is not None:
            by_chance = self.chance_line[0] + self.chance_line[1] * np.nan_to_num(chance)
            other = np.where(np.isfinite(chance), by_chance, self.fallback)
        return np.clip(np.where(has, line, other), 0.0, 1.0)


def _chance_line(rows: pd.DataFrame, label: np.ndarray, chance: np.ndarray) -> list[float] | None:
    """[intercept, slope] of the tasks' median label on chance (1 / classes), or None when
    fewer than :data:`MIN_LEVEL_TASKS` tasks or a single class count."""
    ok = np.isfinite(chance) & np.isfinite(label)
    tasks = pd.DataFrame({"chance": chance[ok], "label": label[ok]})
    tasks["task"] = rows["dataset"].to_numpy()[ok]
    per_task = tasks.groupby("task", sort=True).median()
    x, y = per_task["chance"].to_numpy(dtype=float), per_task["label"].to_numpy(dtype=float)
    if len(per_task) < MIN_LEVEL_TASKS or np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    return [round(float(intercept), 6), round(float(slope), 6)]
