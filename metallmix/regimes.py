"""What the other compute regime would recommend: the meta-learner's shortlist, no LLM.

``metallmix demo`` answers for the user's regime with the full graph (LLM and judge) and
shows, beside it, the top of the shortlist for the other regime, so a user on a laptop sees
what a GPU would buy and vice versa. Only the scored shortlist is computed for that side
(seconds once the meta-learner is cached); an LLM answer there would double the demo's time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from metallmix.graphs.resources import KbSpec, resolve_kb
from metallmix.tools.kb.regime import REGIME_DESCRIPTION, REGIME_SPACE, check_regime
from metallmix.tools.meta import metric as m
from metallmix.tools.meta.contracts import Shortlist
from metallmix.tools.meta.shortlist import regime_shortlist as tools_regime_shortlist
from metallmix.tools.metafeatures import MetaFeatures, compute_meta_features


def regime_shortlist(
    data: str | os.PathLike[str] | MetaFeatures,
    compute: str,
    *,
    kb: KbSpec = None,
    n: int = 3,
    seed: int = 0,
) -> Shortlist:
    """The scored shortlist for ``data`` from the ``compute`` regime's runs and space,
    carrying that regime's metric (as the graph's shortlist node makes it)."""
    mf = data if isinstance(data, MetaFeatures) else compute_meta_features(Path(data))
    store = resolve_kb(kb, read_only=True)
    return tools_regime_shortlist(mf, store, check_regime(compute), n=n, seed=seed)


def preview(shortlist: Shortlist) -> dict[str, Any]:
    """A JSON-ready summary of a regime's shortlist, with the dataset's baselines."""
    mf = shortlist.meta_features
    chance, majority = m.chance_level(mf), m.majority_accuracy(mf)
    candidates = []
    for c in shortlist.candidates:
        candidates.append(
            {
                "candidate_id": c.candidate_id,
                "model": c.model,
                "pretrained": c.pretrained,
                "expected_score": c.predicted_accuracy,
                "score_low": c.accuracy_low,
                "score_high": c.accuracy_high,
                "expected_train_seconds": c.predicted_seconds,
                "hyperparameters": c.hyperparameters.model_dump(mode="json", exclude_none=True),
                "baseline_warning": m.baseline_warning(
                    shortlist.metric, c.predicted_accuracy, c.accuracy_low, chance, majority
                ),
            }
        )
    regime = shortlist.regime or "cpu"
    return {
        "compute": regime,
        "regime": REGIME_DESCRIPTION[regime],
        "space": REGIME_SPACE[regime],
        "metric": shortlist.metric,
        "metric_note": shortlist.metric_note,
        "chance_level": chance,
        "majority_accuracy": majority,
        "candidates": candidates,
    }
