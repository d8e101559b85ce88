"""The public result types, importable from one place.

What ``metallmix.recommend`` and ``metallmix.validate`` return, and what those results
contain, are defined where the layering needs them (a :class:`Recommendation` is what the
agents produce, a :class:`Shortlist` what the tools compute). Users should not have to know
that: annotate and ``isinstance`` with ``from metallmix.types import Recommendation``.

Loaded lazily, like the root package: importing this module is instant, and a name pulls in
its defining module only when it is first used (``VerifiedRecommendation`` brings in the
verification stack, seconds).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metallmix.agents.schemas import JudgeScores, JudgeVerdict, Recommendation
    from metallmix.tools.kb.records import Fidelity, RunRecord
    from metallmix.tools.meta.contracts import Candidate, ShapFact, Shortlist, SimilarRun
    from metallmix.tools.metafeatures import MetaFeatures
    from metallmix.tools.training.halving import CandidateResult, RunResult, VerifyResult
    from metallmix.verify import VerifiedRecommendation

_WHERE = {
    # recommend() returns these
    "Recommendation": "metallmix.agents.schemas",
    "VerifiedRecommendation": "metallmix.verify",
    "JudgeVerdict": "metallmix.agents.schemas",
    "JudgeScores": "metallmix.agents.schemas",
    # a recommendation's shortlist and its evidence
    "Shortlist": "metallmix.tools.meta.contracts",
    "Candidate": "metallmix.tools.meta.contracts",
    "ShapFact": "metallmix.tools.meta.contracts",
    "SimilarRun": "metallmix.tools.meta.contracts",
    # recommend(verify=K)'s verification
    "VerifyResult": "metallmix.tools.training.halving",
    "CandidateResult": "metallmix.tools.training.halving",
    "RunResult": "metallmix.tools.training.halving",
    # validate() returns a run record; the dataset description
    "RunRecord": "metallmix.tools.kb.records",
    "Fidelity": "metallmix.tools.kb.records",
    "MetaFeatures": "metallmix.tools.metafeatures",
}

__all__ = [
    "Candidate",
    "CandidateResult",
    "Fidelity",
    "JudgeScores",
    "JudgeVerdict",
    "MetaFeatures",
    "Recommendation",
    "RunRecord",
    "RunResult",
    "ShapFact",
    "Shortlist",
    "SimilarRun",
    "VerifiedRecommendation",
    "VerifyResult",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'metallmix.types' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
