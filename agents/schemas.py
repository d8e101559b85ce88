"""What the recommender and the judge produce.

The LLM writes only :class:`LLMChoice`: which shortlisted candidate, which SHAP facts and
past runs support it (by the request's short ids, enforced by a grammar built per request in
:func:`metallmix.agents.evidence.answer_schema`) and a short rationale in words. Every number
of a :class:`Recommendation` (hyperparameters, predicted accuracy and interval, expected time,
the cited facts' effects and runs' accuracies) and its confidence are written by code from the
chosen :class:`~metallmix.tools.meta.contracts.Candidate`, because a small model copies numbers
badly and attaches them to the wrong thing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from metallmix.tools.kb.records import Hyperparameters
from metallmix.tools.meta import metric as m
from metallmix.tools.metafeatures import MetaFeatures

Confidence = Literal["low", "medium", "high"]
Score = Literal[1, 2, 3, 4, 5]  # an enum, so the grammar allows only these (it ignores min/max)
MAX_CRITIQUE_CHARS = 100


class LLMChoice(BaseModel):
    """The LLM's answer in plain form (the per-request grammar has the same fields, with
    ``candidate_id``, ``facts`` and ``runs`` restricted to that request's ids)."""

    model_config = ConfigDict(extra="forbid")

    candidate_id: str = Field(description="id of the chosen shortlisted candidate, e.g. 'c1'")
    facts: list[str] = Field(default_factory=list, description="cited SHAP fact ids, e.g. 'f1'")
    runs: list[str] = Field(default_factory=list, description="cited past run ids, e.g. 'r1'")
    rationale: str = Field(default="", description="connecting words; numbers are added by code")


class JudgeScores(BaseModel):
    """The LLM judge's verdict on the paper's three criteria (1 = bad, 5 = excellent).

    Short on purpose: ~30 tokens of JSON plus a critique bounded in the grammar, so the
    grading can never be cut off at max_tokens (see ``judge.MAX_TOKENS``)."""

    model_config = ConfigDict(extra="forbid")

    format: Score
    accuracy: Score
    completeness: Score
    critique: str = Field(max_length=MAX_CRITIQUE_CHARS)


class JudgeVerdict(BaseModel):
    """Code checks decide ``passed``; the LLM scores explain and grade the answer."""

    model_config = ConfigDict(extra="forbid")

    attempt: int = Field(ge=1)
    passed: bool
    failures: list[str] = Field(default_factory=list, description="hard checks that failed")
    checks: dict[str, bool] = Field(default_factory=dict, description="check name -> passed")
    scores: JudgeScores | None = Field(default=None, description="None when the LLM failed")
    llm_error: str | None = None
    llm_graded: bool | None = Field(
        default=None, description="True: the LLM graded; False: its grading failed; None: not asked"
    )
    llm_attempts: int = Field(default=0, ge=0, description="grading calls made (retried once)")
    critique: str = Field(default="", description="what to fix, sent back to the recommender")


class Recommendation(BaseModel):
    """A model + hyperparameters for a dataset, with its expected outcome and the reasons."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="what was analysed: path, card name or 'meta-features'")
    candidate_id: str
    model: str = Field(description="timm model name")
    pretrained: bool
    hyperparameters: Hyperparameters
    expected_accuracy: float = Field(ge=0, le=1, description="predicted validation accuracy")
    accuracy_low: float = Field(ge=0, le=1)
    accuracy_high: float = Field(ge=0, le=1)
    expected_train_seconds: float | None = Field(default=None, ge=0)
    confidence: Confidence
    explanation: str
    cited_runs: list[str] = Field(default_factory=list, description="KB run ids cited")
    cited_facts: list[str] = Field(default_factory=list, description="SHAP fact sentences cited")
    rationale: str = Field(default="", description="the LLM's own words (no numbers by design)")
    fallback: bool = Field(
        default=False,
        description="True: templated; the LLM's answers were rejected twice, or it failed",
    )
    llm_error: str | None = Field(
        default=None,
        description="why the LLM gave no answer (its process died, timed out or could not "
        "load); set only on a fallback",
    )
    attempts: int = Field(default=1, ge=0, description="recommender attempts made")
    judge: JudgeVerdict | None = None
    meta_features: MetaFeatures | None = None
    llm: str = ""
    seed: int = 0
    mlflow_run_id: str | None = None
    tracking_error: str | None = Field(
        default=None,
        description="why recording this answer in MLflow failed (the answer itself stands); "
        "the CLI exits 3",
    )
    ood: bool = Field(
        default=False,
        description="the dataset is outside what the KB covers: interval widened, confidence low",
    )
    ood_reasons: list[str] = Field(default_factory=list)
    # What the prediction is in and what it must beat (filled from the fields above when
    # not given; ``expected_accuracy``/``accuracy_low``/``accuracy_high`` are kept as the
    # same numbers for compatibility, whatever the metric).
    metric: str = Field(
        default="accuracy", description="'balanced_accuracy' or 'accuracy' (validation)"
    )
    metric_note: str | None = Field(default=None, description="what stands in for the metric")
    compute: Literal["cpu", "gpu"] | None = Field(
        default=None, description="compute regime whose runs and search space were used"
    )
    expected_score: float | None = Field(default=None, ge=0, le=1, description="in `metric`")
    score_low: float | None = Field(default=None, ge=0, le=1)
    score_high: float | None = Field(default=None, ge=0, le=1)
    chance_level: float | None = Field(default=None, ge=0, le=1, description="1 / classes")
    majority_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="accuracy of always answering the largest class"
    )
    baseline_warning: str | None = Field(
        default=None, description="set when the prediction is not clearly above the baseline"
    )
    rank_basis: str = Field(
        default="", description="what ranked the shortlist (c1 first); the prediction may differ"
    )
    kb_change: str = Field(
        default="",
        description="what changed in the KB since the last answer (new runs, e.g. a "
        "validation, and how the answer moved); '' when nothing did",
    )

    @model_validator(mode="after")
    def _fill_metric_fields(self) -> Recommendation:
        if self.expected_score is None:
            self.expected_score = self.expected_accuracy
        if self.score_low is None:
            self.score_low = self.accuracy_low
        if self.score_high is None:
            self.score_high = self.accuracy_high
        if self.meta_features is not None:
            if self.chance_level is None:
                self.chance_level = m.chance_level(self.meta_features)
            if self.majority_accuracy is None:
                self.majority_accuracy = m.majority_accuracy(self.meta_features)
        if self.baseline_warning is None and self.chance_level is not None:
            self.baseline_warning = m.baseline_warning(
                self.metric,
                self.expected_score,
                self.score_low,
                self.chance_level,
                self.majority_accuracy,
            )
        return self

    def summary(self) -> str:
        """One line for logs and the CLI: the prediction in its metric, beside the baselines."""
        score = self.expected_score if self.expected_score is not None else self.expected_accuracy
        low = self.score_low if self.score_low is not None else self.accuracy_low
        high = self.score_high if self.score_high is not None else self.accuracy_high
        baselines = []
        if self.chance_level is not None:
            baselines.append(f"chance {self.chance_level:.1%}")
        if self.majority_accuracy is not None:
            baselines.append(f"majority class {self.majority_accuracy:.1%}")
        where = f", {self.compute.upper()}" if self.compute else ""
        return (
            f"{self.model} ({'pretrained' if self.pretrained else 'from scratch'}{where}) "
            f"expected {m.METRIC_LABEL.get(self.metric, self.metric)} {score:.1%} "
            f"[{low:.1%}, {high:.1%}]"
            + (f" - {', '.join(baselines)}" if baselines else "")
            + f", confidence {self.confidence}{' (fallback)' if self.fallback else ''}"
            + (f"; OUT OF THE KB's RANGE: {'; '.join(self.ood_reasons)}" if self.ood else "")
        )
