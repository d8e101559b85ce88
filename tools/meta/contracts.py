"""The evidence the deterministic tools hand to the recommender agent and the judge.

These types are the contract between ``metallmix.tools.meta`` (which produces them) and
``metallmix.agents`` / ``metallmix.graphs`` (which consume them). The LLM may only pick a
shortlisted candidate and cite these facts; the judge checks its numbers against them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from metallmix.tools.kb.records import Hyperparameters
from metallmix.tools.metafeatures import MetaFeatures


class Candidate(BaseModel):
    """One scored configuration (model + hyperparameters) for the user's dataset."""

    model_config = ConfigDict(extra="forbid")

    candidate_id: str = Field(description="stable id, e.g. 'c1'")
    model: str
    pretrained: bool = False
    hyperparameters: Hyperparameters
    predicted_accuracy: float = Field(description="expected validation accuracy, fraction")
    accuracy_low: float = Field(description="lower end of the predicted interval, fraction")
    accuracy_high: float = Field(description="upper end of the predicted interval, fraction")
    predicted_seconds: float | None = Field(default=None, description="expected train time")
    score: float = Field(description="the meta-learner's ranking score (higher is better)")
    origin: str = Field(description="'similar-run:<run_id>' or 'sampled' or 'default'")


class ShapFact(BaseModel):
    """One SHAP contribution turned into a sentence a practitioner can check."""

    model_config = ConfigDict(extra="forbid")

    candidate_id: str
    feature: str = Field(description="hyperparameter or meta-feature, one-hots grouped back")
    value: str = Field(description="the candidate's value, as text")
    reference: str | None = Field(default=None, description="KB median / mode, as text")
    effect_points: float = Field(description="contribution in accuracy points (pp)")
    sentence: str


class SimilarRun(BaseModel):
    """A past experiment retrieved as similar to the user's dataset."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    dataset: str
    similarity: float
    model: str
    hyperparameters: Hyperparameters
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    train_seconds: float | None = None
    val_balanced_accuracy: float | None = Field(
        default=None, description="validation balanced accuracy, where the run recorded it"
    )


class Shortlist(BaseModel):
    """Everything the recommender is allowed to choose from and to cite."""

    model_config = ConfigDict(extra="forbid")

    meta_features: MetaFeatures
    candidates: list[Candidate]
    facts: list[ShapFact] = Field(default_factory=list)
    similar_runs: list[SimilarRun] = Field(default_factory=list)
    kb_hash: str = ""
    metalearner_version: str = ""
    ood: bool = Field(default=False, description="the dataset lies outside what the KB covers")
    ood_reasons: list[str] = Field(
        default_factory=list, description="why it is out of range (feature ranges, distance)"
    )
    learner_fit: str = Field(
        default="",
        description="which meta-learner answered: 'full' fit, or a warm start grown from the "
        "last fit after a small KB change",
    )
    interval_note: str = Field(
        default="",
        description="how the intervals were bounded by the KB's evidence ('' when they were not)",
    )
    metric: str = Field(
        default="accuracy", description="what predicted_accuracy is in: the KB runs' metric"
    )
    metric_note: str | None = Field(default=None, description="what stands in for the metric")
    regime: Literal["cpu", "gpu"] | None = Field(
        default=None, description="compute regime whose runs and search space were used"
    )
    rank_basis: str = Field(
        default="",
        description="what orders the candidates (c1 first); the predicted score may differ",
    )

    def candidate(self, candidate_id: str) -> Candidate | None:
        return next((c for c in self.candidates if c.candidate_id == candidate_id), None)

    def facts_for(self, candidate_id: str) -> list[ShapFact]:
        return [f for f in self.facts if f.candidate_id == candidate_id]


def ood_note(reasons: list[str]) -> str:
    """The reasons without numbers, for prose the judge checks number by number: 'outside
    the KB's range of n_classes, images_per_class; far from every KB dataset'."""
    names = [r.split(" ", 1)[0] for r in reasons if " is outside the KB's range " in r]
    parts = [f"outside the KB's range of {', '.join(names)}"] if names else []
    if any(r.startswith("its nearest KB dataset") for r in reasons):
        parts.append("farther from every KB dataset than the KB's datasets are from each other")
    if any(r.startswith("the knowledge base holds no dataset") for r in reasons):
        parts.append("the knowledge base holds no dataset")
    return "; ".join(parts)
