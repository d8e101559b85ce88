"""What the recommender and the judge produce.

The LLM writes only :class:`LLMChoice` (which shortlisted candidate, how sure, why). Every
hard number of a :class:`Recommendation` (hyperparameters, predicted accuracy and interval,
expected time) is copied by code from the chosen :class:`~metallmix.tools.meta.contracts.
Candidate`, because a small model copies numbers badly and invents them readily.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from metallmix.tools.kb.records import Hyperparameters
from metallmix.tools.metafeatures import MetaFeatures

Confidence = Literal["low", "medium", "high"]
MAX_EXPLANATION_CHARS = 600


class LLMChoice(BaseModel):
    """The part of a recommendation the LLM writes (its JSON schema is the grammar)."""

    model_config = ConfigDict(extra="forbid")

    candidate_id: str = Field(description="id of the chosen shortlisted candidate, e.g. 'c1'")
    confidence: Confidence
    # maxLength becomes part of the grammar: a small model that starts repeating itself is
    # made to close the string instead of running into max_tokens.
    explanation: str = Field(
        max_length=MAX_EXPLANATION_CHARS,
        description="why this candidate, citing the evidence numbers and runs as [run ID]",
    )


class JudgeScores(BaseModel):
    """The LLM judge's verdict on the paper's three criteria (1 = bad, 5 = excellent)."""

    model_config = ConfigDict(extra="forbid")

    format: int = Field(ge=1, le=5)
    accuracy: int = Field(ge=1, le=5)
    completeness: int = Field(ge=1, le=5)
    critique: str


class JudgeVerdict(BaseModel):
    """Code checks decide ``passed``; the LLM scores explain and grade the answer."""

    model_config = ConfigDict(extra="forbid")

    attempt: int = Field(ge=1)
    passed: bool
    failures: list[str] = Field(default_factory=list, description="hard checks that failed")
    checks: dict[str, bool] = Field(default_factory=dict, description="check name -> passed")
    scores: JudgeScores | None = Field(default=None, description="None when the LLM failed")
    llm_error: str | None = None
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
    fallback: bool = Field(default=False, description="True: templated, the LLM failed twice")
    attempts: int = Field(default=1, ge=0, description="recommender attempts made")
    judge: JudgeVerdict | None = None
    meta_features: MetaFeatures | None = None
    llm: str = ""
    seed: int = 0
    mlflow_run_id: str | None = None

    def summary(self) -> str:
        """One line for logs and the CLI."""
        interval = f"[{self.accuracy_low:.1%}, {self.accuracy_high:.1%}]"
        return (
            f"{self.model} ({'pretrained' if self.pretrained else 'from scratch'}) "
            f"expected accuracy {self.expected_accuracy:.1%} {interval}, "
            f"confidence {self.confidence}{' (fallback)' if self.fallback else ''}"
        )
