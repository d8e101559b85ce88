"""The LangChain tools: names, pydantic args, JSON-able outputs consistent with the tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.tools import StructuredTool

from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.langchain_tools import ConfigArgs, make_tools
from metallmix.tools.meta.metalearner import MetaLearnerConfig


@pytest.fixture
def tools(tmp_path: Path) -> dict[str, StructuredTool]:
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    records = synthetic_records(4, 15, seed=9)
    kb.add(records)
    made = make_tools(
        kb,
        records[0].meta_features,
        exclude_datasets={"synth00"},
        learner_config=MetaLearnerConfig(n_estimators=50, max_depth=4),
    )
    return {t.name: t for t in made}


def test_tool_names_and_schemas(tools: dict[str, StructuredTool]) -> None:
    assert set(tools) == {
        "predict_accuracy",
        "explain_candidate",
        "find_similar_runs",
        "build_shortlist",
    }
    assert tools["predict_accuracy"].args_schema is ConfigArgs
    for tool in tools.values():
        assert tool.description and len(tool.description) > 30


def test_tools_run_and_agree(tools: dict[str, StructuredTool]) -> None:
    config = {"model": "resnet18", "hyperparameters": {"lr": 0.001, "optimizer": "adamw"}}
    pred = tools["predict_accuracy"].invoke(config)
    assert pred["in_search_space"] is True
    assert 0 <= pred["accuracy_low"] <= pred["predicted_accuracy"] <= pred["accuracy_high"] <= 1
    outside = tools["predict_accuracy"].invoke({"model": "vit_huge", "hyperparameters": {}})
    assert outside["in_search_space"] is False and "vit_huge" in outside["outside_reasons"][0]
    facts = tools["explain_candidate"].invoke({**config, "top_k": 3})
    assert 1 <= len(facts) <= 3 and all("pts predicted" in f["sentence"] for f in facts)
    similar = tools["find_similar_runs"].invoke({"k": 2})
    assert similar and all(r["dataset"] != "synth00" for r in similar)
    shortlist = tools["build_shortlist"].invoke({"n": 2})
    assert len(shortlist["candidates"]) == 2
    json.dumps([pred, facts, similar, shortlist])


def test_bad_arguments_are_rejected(tools: dict[str, StructuredTool]) -> None:
    with pytest.raises(ValueError):
        tools["find_similar_runs"].invoke({"k": 0})
