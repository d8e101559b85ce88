"""The typed state that flows through the recommendation graph.

A pydantic model rather than a TypedDict so that input arriving as JSON (LangGraph Studio,
the SDK) is validated and turned into the same typed objects the nodes use in-process.
List and dict fields that several nodes (or attempts) add to carry merge reducers.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any

from pydantic import BaseModel, Field

from metallmix.agents.evidence import Evidence
from metallmix.agents.schemas import JudgeVerdict, Recommendation
from metallmix.tools.meta.contracts import Shortlist, SimilarRun
from metallmix.tools.meta.explain import Waterfall
from metallmix.tools.metafeatures import MetaFeatures


def merge_dicts(left: dict[str, float], right: dict[str, float]) -> dict[str, float]:
    return {**left, **right}


class RecommendationState(BaseModel):
    """Input: ``data`` (a dataset path or dataset card) or ``meta_features``; optionally a
    precomputed ``shortlist``. Output: ``recommendation`` and the trail that led to it."""

    data: str | None = Field(default=None, description="dataset path or dataset-card JSON")
    modality: str | None = None
    dataset_name: str = ""
    meta_features: MetaFeatures | None = None
    kb_hash: str | None = Field(
        default=None, description="content hash of the KB snapshot this run reads (retrieve)"
    )
    similar_runs: list[SimilarRun] = Field(default_factory=list)
    candidate_runs: list[SimilarRun] = Field(
        default_factory=list, description="retrieved runs whose configurations join the pool"
    )
    shortlist: Shortlist | None = None
    evidence: Evidence | None = None
    waterfalls: dict[str, Waterfall] = Field(
        default_factory=dict, description="SHAP waterfall numbers per candidate (evidence node)"
    )
    global_importance: dict[str, float] = Field(
        default_factory=dict,
        description="mean |SHAP| per feature group over the KB (evidence node)",
    )
    llm: str = ""
    llm_sha256: str = ""
    attempts: int = 0
    max_attempts: int = Field(default=2, ge=1, description="recommender attempts before fallback")
    critique: str | None = None
    draft: Recommendation | None = None
    draft_error: str | None = None
    recommendation: Recommendation | None = None
    verdicts: Annotated[list[JudgeVerdict], operator.add] = Field(default_factory=list)
    exchanges: Annotated[list[dict[str, Any]], operator.add] = Field(default_factory=list)
    timings: Annotated[dict[str, float], merge_dicts] = Field(default_factory=dict)
    landmarks_note: str = Field(default="", description="what the landmarks step measured")
    landmarks_seconds: float | None = Field(default=None, description="what it cost")
    fallback: bool = False
    llm_error: str | None = Field(
        default=None, description="the LLM died, timed out or failed to load: go to fallback"
    )
    mlflow_run_id: str | None = None
    trace_id: str | None = Field(
        default=None, description="MLflow trace of a run not started by the API (graphs/tracing)"
    )


class RecommendationInput(BaseModel):
    """What a user supplies (Studio's input form): a dataset or its meta-features."""

    data: str | None = Field(
        default=None, description="dataset path (.npz, image folder, CSV manifest) or card JSON"
    )
    meta_features: MetaFeatures | None = Field(
        default=None, description="precomputed meta-features, instead of data"
    )
    modality: str | None = Field(default=None, description="imaging modality, e.g. 'chest X-ray'")
    dataset_name: str = Field(default="", description="name shown in MLflow (default: from data)")


class RecommendationOutput(BaseModel):
    """What a run returns: the recommendation and where it is recorded."""

    recommendation: Recommendation | None = None
    mlflow_run_id: str | None = None
