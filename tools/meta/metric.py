"""Which metric a prediction is in, and the trivial baselines it must clear.

A predicted "85.9% accuracy" on a dataset whose majority class alone scores 73% tells the
user nothing good; said plainly next to the prediction, it tells them a lot. So every
recommendation names its metric (validation balanced accuracy where the KB recorded it,
else accuracy) and shows two baselines computed from the training class counts:

- chance level, ``1 / k``: the balanced accuracy of any constant prediction;
- majority-class accuracy, ``largest class / images``: the accuracy of always answering the
  most frequent class (the training share stands in for the test share).

For balanced accuracy the baseline to clear is chance; for accuracy it is the majority class.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from metallmix.tools.kb.records import RunRecord, ScoreMetric
from metallmix.tools.metafeatures import MetaFeatures

METRIC_LABEL = {"balanced_accuracy": "balanced accuracy", "accuracy": "accuracy"}
# A prediction less than this far above its baseline is "near chance" (the measure
# of runs that learned nothing: balanced accuracy at most 1/k + 0.05).
NEAR_BASELINE = 0.05
STAND_IN_NOTE = (
    "Quick-Tune records top-1 accuracy only; it stands in for balanced accuracy there "
    "(Meta-Album classes are balanced)"
)


def chance_level(mf: MetaFeatures) -> float:
    """``1 / k``: what a constant (or random) prediction scores in balanced accuracy."""
    return 1.0 / mf.n_classes


def majority_accuracy(mf: MetaFeatures) -> float | None:
    """Share of the largest training class (None when the class counts are unknown)."""
    if mf.class_size_max is not None and mf.n_images > 0:
        return mf.class_size_max / mf.n_images
    if mf.imbalance_ratio is not None and mf.imbalance_ratio <= 1.0:
        return 1.0 / mf.n_classes  # all classes the same size
    return None


def target_metric(metrics: Iterable[ScoreMetric]) -> tuple[str, str | None]:
    """The metric a meta-learner trained on runs with these score metrics predicts, and a
    note on what stands in for it. Balanced accuracy wins when most runs record it (or
    stand in for it); an empty KB predicts accuracy."""
    counts = Counter(metrics)
    total = sum(counts.values())
    balanced = counts["balanced_accuracy"] + counts["accuracy_for_balanced"]
    if total == 0 or balanced * 2 < total:
        note = None
        if balanced:
            note = f"{balanced} of {total} runs record balanced accuracy; accuracy is used"
        return "accuracy", note
    notes: list[str] = []
    if counts["accuracy_for_balanced"]:
        notes.append(STAND_IN_NOTE)
    if counts["accuracy"]:
        notes.append(
            f"{counts['accuracy']} of {total} runs record only accuracy, which stands in for "
            "balanced accuracy there"
        )
    return "balanced_accuracy", "; ".join(notes) or None


def baseline(metric: str, chance: float, majority: float | None) -> tuple[float, str]:
    """The trivial score to beat in ``metric`` and its name."""
    if metric == "accuracy" and majority is not None and majority >= chance:
        return majority, "the majority class"
    return chance, "chance"


def baseline_warning(
    metric: str,
    expected: float,
    low: float | None,
    chance: float,
    majority: float | None,
) -> str | None:
    """A warning when the prediction is not clearly above the trivial baseline, else None."""
    label = METRIC_LABEL.get(metric, metric)
    value, name = baseline(metric, chance, majority)
    if expected < value + NEAR_BASELINE:
        relation = "below" if expected < value else "within 5 points of"
        return (
            f"expected {label} {expected:.1%} is {relation} {name} ({value:.1%}): this "
            "configuration may learn little more than a constant answer"
        )
    if low is not None and low <= value:
        return (
            f"the interval's lower end ({low:.1%}) is at or below {name} ({value:.1%}): the "
            "run may learn nothing; validate before relying on it"
        )
    return None


def metric_of_runs(records: Iterable[RunRecord]) -> tuple[str, str | None]:
    """:func:`target_metric` of the runs a meta-learner learns from (ok, with a score)."""
    return target_metric(
        r.score_metric for r in records if r.status == "ok" and r.score is not None
    )
