"""Flat tabular view of the knowledge base, the input of the meta-learner and the exports.

Column prefixes keep the origin of each column obvious: ``mf_`` meta-features,
``hp_`` hyperparameters (``hp_x_`` for the open remainder), ``out_`` outcomes.

``out_score`` is the meta-learner's target and ``score_metric`` says which metric it is
(validation balanced accuracy where the run recorded it, else validation accuracy; see
:attr:`RunRecord.score`); ``regime`` is the compute regime (``cpu`` / ``gpu``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.regime import regime_of
from metallmix.tools.meta.landmarks import landmark_columns

ID_COLUMNS = ["run_id", "source", "dataset", "dataset_group", "model", "pretrained", "status"]


def record_to_row(record: RunRecord) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": record.run_id,
        "source": record.source,
        "dataset": record.dataset,
        "dataset_group": record.dataset_group,
        "model": record.model,
        "pretrained": record.pretrained,
        "status": record.status,
        "seed": record.seed,
        "regime": regime_of(record),
        "score_metric": record.score_metric,
        "fidelity_full": record.fidelity.full,
        "mf_modality": record.meta_features.modality,
    }
    row.update({f"mf_{k}": v for k, v in record.meta_features.numeric().items()})
    row["landmarks"] = record.meta_features.landmarks  # raw, for rows moved to other datasets
    row.update(landmark_columns(record.meta_features.landmarks, record.model, record.pretrained))
    row.update({f"hp_{k}": v for k, v in record.hyperparameters.flat().items()})
    outcomes = record.outcomes.model_dump(exclude={"learning_curve", "balanced_learning_curve"})
    row.update({f"out_{k}": v for k, v in outcomes.items()})
    row["out_score"] = record.score
    return row


def records_to_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per run; an empty frame still has the identifying columns."""
    rows = [record_to_row(r) for r in records]
    if not rows:
        return pd.DataFrame(columns=ID_COLUMNS)
    return pd.DataFrame(rows)
