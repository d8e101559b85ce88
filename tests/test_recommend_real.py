"""Real twins of ``test_graph_unit.py``: the whole pipeline with the real local LLMs.

Real XGBoost, SHAP, FAISS, MLflow and llama.cpp (Qwen2.5-Coder 0.5B, and 1.5B once). The
KB is C's synthetic one (known effects, no shared data needed). To exercise regeneration
and fallback deterministically, :class:`Override` answers chosen recommender calls with a
bad answer and passes every other call (the judge, the retry) to the real model.
Slow on a shared 2-core box: minutes per test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metallmix import config
from metallmix.agents.schemas import JudgeScores, LLMChoice

pytestmark = [pytest.mark.real, pytest.mark.slow]

ISIC = "isic2018_ham10000.json"


@pytest.fixture(scope="module")
def weights_cache() -> Path:
    """The user's LLM cache when it holds the weights (re-assembly costs minutes)."""
    user = Path(os.environ.get("METALLMIX_CACHE") or Path.home() / ".metallmix" / "cache")
    return user if (user / "llm").is_dir() else config.cache_dir()


@pytest.fixture
def real(weights_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Real-model settings and a synthetic KB file; yields the KB path."""
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install metallmix[llm])")
    from metallmix.benchmarks.synthetic import synthetic_records
    from metallmix.tools.kb.store import SQLiteKnowledgeBase

    monkeypatch.setenv("METALLMIX_CACHE", str(weights_cache))
    for var in ("METALLMIX_LLM", "METALLMIX_LLM_PATH"):
        monkeypatch.delenv(var, raising=False)
    kb = tmp_path / "kb.sqlite"
    SQLiteKnowledgeBase(kb).add(synthetic_records(6, 25, seed=0))
    yield kb


def card() -> Path:
    from metallmix.cli.recommend import example_card

    return example_card("isic2018")


class Override:
    """The real model, except that the recommender calls numbered in ``bad`` (1-based)
    get ``answer`` instead: a way to force a rejected attempt without scripting the rest."""

    def __init__(self, llm: Any, bad: set[int], answer: LLMChoice) -> None:
        self.llm, self.bad, self.answer = llm, bad, answer
        self.name, self.sha256 = llm.name, llm.sha256
        self.recommender_calls = 0
        self.real_calls: list[str] = []
        self.last_raw, self.last_usage = "", {}

    def chat(self, messages: list[dict[str, str]], **kw: Any) -> str:
        return str(self.llm.chat(messages, **kw))

    def chat_json(self, messages: list[dict[str, str]], schema: Any, **kw: Any) -> Any:
        if schema is not JudgeScores:  # the recommender: its grammar is built per request
            self.recommender_calls += 1
            if self.recommender_calls in self.bad:
                self.last_raw, self.last_usage = self.answer.model_dump_json(), {}
                return self.answer
        self.real_calls.append("JudgeScores" if schema is JudgeScores else "answer")
        out = self.llm.chat_json(messages, schema, **kw)
        self.last_raw, self.last_usage = self.llm.last_raw, dict(self.llm.last_usage)
        return out


# What the grammar now prevents (no fact or run cited) plus invented numbers in the words.
INVENTED = LLMChoice(
    candidate_id="c1",
    rationale="This model reaches 99.7% accuracy in 3 s, as run [run made-up-1] proves.",
)


def _check_recommendation(rec: Any, kb: Path) -> None:
    from metallmix.tools.kb.store import open_kb
    from metallmix.tools.meta.search_space import CPU_ZOO_SPACE

    assert rec.model in CPU_ZOO_SPACE.models
    assert CPU_ZOO_SPACE.contains(rec.model, rec.hyperparameters)
    assert rec.accuracy_low <= rec.expected_accuracy <= rec.accuracy_high
    assert rec.judge is not None and rec.judge.passed
    assert 1 <= rec.attempts <= 2
    ids = open_kb(kb).run_ids()
    assert set(rec.cited_runs) <= ids and rec.cited_runs


def _artifacts(run_id: str) -> set[str]:
    from metallmix.tools import tracking

    client = tracking.client()
    top = {a.path for a in client.list_artifacts(run_id)}
    return top | {a.path for a in client.list_artifacts(run_id, "llm")}


def test_real_fast_end_to_end(real: Path) -> None:
    import metallmix
    from metallmix.tools import tracking

    rec = metallmix.recommend(card(), llm="fast", kb=real, seed=0)
    _check_recommendation(rec, real)
    assert rec.llm == "qwen2.5-coder-0.5b"
    assert rec.meta_features is not None and rec.meta_features.n_images == 10015
    run = tracking.client().get_run(rec.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["llm_sha256"] and run.data.params["kb"] == str(real)
    assert run.data.metrics["latency_shortlist_s"] > 0
    names = _artifacts(rec.mlflow_run_id)
    assert {"recommendation.json", "explanation.md", "shortlist.md", "retrieved_runs.json"} <= names
    assert "llm/attempt1_recommender_raw.txt" in names
    if not rec.fallback:  # the LLM's own answer: graded by the real judge
        assert rec.judge.scores is not None or rec.judge.llm_error


def test_real_regeneration_after_forced_rejection(real: Path) -> None:
    import metallmix
    from metallmix.agents.runtime.llm import load_llm

    llm = Override(load_llm("fast"), bad={1}, answer=INVENTED)
    rec = metallmix.recommend(card(), llm=llm, kb=real, seed=0)
    assert rec.attempts == 2, "a rejected first answer must be regenerated once"
    assert llm.recommender_calls == 2
    _check_recommendation(rec, real)
    # The second attempt and the judges ran on the real model.
    assert llm.real_calls.count("answer") == 1
    # the regenerated answer was graded by the real judge, unless the code rejected it too
    assert "JudgeScores" in llm.real_calls or rec.fallback


def test_real_fallback_after_two_rejections(real: Path) -> None:
    import metallmix
    from metallmix.agents.runtime.llm import load_llm

    llm = Override(load_llm("fast"), bad={1, 2}, answer=INVENTED)
    rec = metallmix.recommend(card(), llm=llm, kb=real, seed=0)
    assert rec.fallback and rec.attempts == 2
    _check_recommendation(rec, real)
    # answers failing the code checks are not sent to the LLM judge
    assert llm.real_calls == []


def test_real_default_1_5b_end_to_end(real: Path) -> None:
    import metallmix

    rec = metallmix.recommend(card(), llm="default", kb=real, seed=0)
    _check_recommendation(rec, real)
    assert rec.llm == "qwen2.5-coder-1.5b"


# --- bad input, each a clear error before any work is wasted ---------------------------------


def test_missing_gguf_is_a_clear_error(real: Path, tmp_path: Path) -> None:
    import metallmix
    from metallmix.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="not found"):
        metallmix.recommend(card(), llm=str(tmp_path / "absent.gguf"), kb=real)


def test_sha_mismatch_is_a_clear_error(real: Path, tmp_path: Path) -> None:
    import metallmix
    from metallmix.agents.runtime.gguf import inspect_gguf
    from metallmix.agents.runtime.registry import get_spec
    from metallmix.agents.runtime.weights import resolve_weights
    from metallmix.errors import ModelUnavailableError

    spec = get_spec("fast")
    real_file = resolve_weights("fast").path
    header = real_file.read_bytes()[: inspect_gguf(real_file).data_offset]
    fake = tmp_path / spec.filename
    with fake.open("wb") as fh:  # right name, size and header; wrong weights (sparse zeros)
        fh.write(header)
        fh.truncate(spec.size)
    with pytest.raises(ModelUnavailableError, match="sha256"):
        metallmix.recommend(card(), llm=str(fake), kb=real)


def test_corrupt_dataset_is_a_clear_error(real: Path, tmp_path: Path) -> None:
    import metallmix
    from metallmix.agents.runtime.fake import ScriptedLLM
    from metallmix.errors import DatasetError

    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(DatasetError):
        metallmix.recommend(bad, llm=ScriptedLLM([]), kb=real, track=False)


def test_real_saved_system_prompt_state_gives_the_same_answer(
    real: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The fixed system prompt's KV state, computed and saved by one process and loaded by
    the next, must not change the answer (issue 13: state saved once, loaded per request)."""
    from metallmix.agents.runtime.llm import load_llm, unload_all
    from metallmix.agents.schemas import JudgeScores
    from metallmix.prompts import load_prompt

    state_dir = tmp_path / "state-cache"
    (state_dir / "llm").mkdir(parents=True)
    weights = Path(os.environ["METALLMIX_CACHE"]) / "llm"
    for f in weights.glob("*.gguf"):
        (state_dir / "llm" / f.name).symlink_to(f.resolve())
    monkeypatch.setenv("METALLMIX_CACHE", str(state_dir))
    messages = [
        {"role": "system", "content": load_prompt("judge").strip()},
        {"role": "user", "content": "Explanation: resnet18 is predicted 84.1%. Grade it."},
    ]
    answers, sources = [], []
    for _ in range(2):
        unload_all()  # a new process: nothing in RAM
        llm = load_llm("fast")
        llm.chat_json(messages, JudgeScores, max_tokens=120)
        answers.append(llm.last_raw)
        sources.append(llm.last_usage["fixed_prefix_loaded"])
    assert list((state_dir / "llm" / "state").glob("*.bin")), "no state was saved"
    assert sources == [0.0, 1.0]  # computed the first time, loaded from disk the second
    assert answers[0] == answers[1]
