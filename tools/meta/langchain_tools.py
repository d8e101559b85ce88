"""The meta tools as LangChain ``StructuredTool`` objects for the recommender agent.

The tools are bound to one KB and one query dataset when they are made, so the LLM only
supplies what it chooses (a model, hyperparameters, how many results) and can never point a
tool at another dataset or KB. Every tool returns plain JSON-able data.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

from metallmix.tools.kb.records import Scalar
from metallmix.tools.kb.store import KnowledgeBase
from metallmix.tools.meta.encoding import candidates_frame
from metallmix.tools.meta.explain import facts_for_rows
from metallmix.tools.meta.metalearner import MetaLearner, MetaLearnerConfig, fit_or_load
from metallmix.tools.meta.retrieval import RetrievalIndex, load_or_build
from metallmix.tools.meta.search_space import CPU_ZOO_SPACE, SearchSpace, make_hyperparameters
from metallmix.tools.meta.shortlist import (
    FACTS_PER_CANDIDATE,
    ShortlistOptions,
    regime_shortlist,
)
from metallmix.tools.metafeatures import MetaFeatures


class ConfigArgs(BaseModel):
    model: str = Field(description="timm model name, e.g. 'resnet18'")
    hyperparameters: dict[str, Scalar] = Field(
        default_factory=dict,
        description="e.g. {'lr': 0.001, 'batch_size': 64, 'optimizer': 'adamw', 'epochs': 8}",
    )


class ExplainArgs(ConfigArgs):
    top_k: int = Field(default=5, ge=1, le=20, description="number of facts")


class SimilarArgs(BaseModel):
    k: int = Field(default=5, ge=1, le=50, description="number of similar datasets")


class ShortlistArgs(BaseModel):
    n: int = Field(default=5, ge=1, le=20, description="number of candidates")


class MetaToolbox:
    """Lazily fitted meta-learner and index for one (KB, dataset) pair."""

    def __init__(
        self,
        kb: KnowledgeBase,
        meta_features: MetaFeatures,
        *,
        seed: int = 0,
        space: SearchSpace | None = None,
        exclude_datasets: set[str] | None = None,
        learner_config: MetaLearnerConfig | None = None,
    ) -> None:
        self.kb = kb
        self.learner_config = learner_config or MetaLearnerConfig(seed=seed)
        self.meta_features = meta_features
        self.seed = seed
        self.space = space or CPU_ZOO_SPACE
        self.exclude = set(exclude_datasets or ())

    @cached_property
    def learner(self) -> MetaLearner:
        return fit_or_load(self.kb, self.learner_config, exclude_datasets=self.exclude)

    @cached_property
    def index(self) -> RetrievalIndex:
        if not self.exclude:
            return load_or_build(self.kb)
        visible = [
            r
            for r in self.kb.iter_records()
            if r.dataset not in self.exclude and r.dataset_group not in self.exclude
        ]
        return RetrievalIndex.build(visible)

    def predict_accuracy(self, model: str, hyperparameters: dict[str, Scalar]) -> dict[str, Any]:
        hp = make_hyperparameters(hyperparameters)
        frame = candidates_frame(
            self.meta_features, [(model, hp)], pretrained=self.space.is_pretrained(model)
        )
        pred = self.learner.predict(frame)
        seconds = float(pred.seconds[0])
        inside = self.space.violations(model, hp)
        return {
            "model": model,
            "predicted_accuracy": round(float(pred.accuracy[0]), 4),
            "accuracy_low": round(float(pred.low[0]), 4),
            "accuracy_high": round(float(pred.high[0]), 4),
            "predicted_seconds": round(seconds, 1) if seconds == seconds else None,
            "in_search_space": not inside,
            "outside_reasons": inside,
        }

    def explain_candidate(
        self, model: str, hyperparameters: dict[str, Scalar], top_k: int = 5
    ) -> list[dict[str, Any]]:
        hp = make_hyperparameters(hyperparameters)
        frame = candidates_frame(
            self.meta_features, [(model, hp)], pretrained=self.space.is_pretrained(model)
        )
        facts = facts_for_rows(self.learner, frame, ["query"], top_k=top_k)
        return [f.model_dump(mode="json") for f in facts]

    def find_similar_runs(self, k: int = 5) -> list[dict[str, Any]]:
        runs = self.index.similar_runs(
            self.meta_features, k=3 * k, n_datasets=k, exclude=self.exclude
        )
        return [r.model_dump(mode="json") for r in runs]

    def build_shortlist(self, n: int = 5) -> dict[str, Any]:
        options = ShortlistOptions(
            exclude_datasets=frozenset(self.exclude),
            facts_per_candidate=FACTS_PER_CANDIDATE,
            learner_config=self.learner_config,
        )
        result = regime_shortlist(
            self.meta_features,
            self.kb,
            None,
            n=n,
            space=self.space,
            seed=self.seed,
            options=options,
        )
        return result.model_dump(mode="json")


def make_tools(
    kb: KnowledgeBase,
    meta_features: MetaFeatures,
    *,
    seed: int = 0,
    space: SearchSpace | None = None,
    exclude_datasets: set[str] | None = None,
    learner_config: MetaLearnerConfig | None = None,
) -> list[StructuredTool]:
    """predict_accuracy, explain_candidate, find_similar_runs, build_shortlist."""
    box = MetaToolbox(
        kb,
        meta_features,
        seed=seed,
        space=space,
        exclude_datasets=exclude_datasets,
        learner_config=learner_config,
    )
    return [
        StructuredTool.from_function(
            func=box.predict_accuracy,
            name="predict_accuracy",
            description="Predicted validation accuracy (fraction, with a 10-90% band) and "
            "training seconds of one model + hyperparameters on the user's dataset.",
            args_schema=ConfigArgs,
        ),
        StructuredTool.from_function(
            func=box.explain_candidate,
            name="explain_candidate",
            description="SHAP facts: which choices of this configuration raise or lower its "
            "predicted accuracy, in accuracy points, compared with the KB's typical values.",
            args_schema=ExplainArgs,
        ),
        StructuredTool.from_function(
            func=box.find_similar_runs,
            name="find_similar_runs",
            description="Best past runs on the KB datasets most similar to the user's dataset, "
            "with their accuracy and cost.",
            args_schema=SimilarArgs,
        ),
        StructuredTool.from_function(
            func=box.build_shortlist,
            name="build_shortlist",
            description="A scored, diverse shortlist of configurations with predicted "
            "accuracy, uncertainty, cost and SHAP facts: the only configurations to recommend.",
            args_schema=ShortlistArgs,
        ),
    ]
