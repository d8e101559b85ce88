"""What a person sees of a recommendation in MLflow carries the answer (issue 14).

Scripted LLM (the graph, tracking and report code are real; the real model's run is checked
in ``test_recommend_real.py``). The browser view of the same run is ``test_mlflow_browser.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_graph_unit import GOOD, SCORES, make_shortlist  # type: ignore[import-not-found]

import metallmix
from metallmix.agents.runtime.fake import ScriptedLLM
from metallmix.errors import DatasetError
from metallmix.graphs import recording
from metallmix.tools import tracking


def _recommend() -> metallmix.Recommendation:
    return metallmix.recommend(
        None,
        llm=ScriptedLLM([GOOD, SCORES]),
        shortlist=make_shortlist(),
        name="breast",
        progress=False,
    )


def test_run_is_named_after_its_answer_and_names_stay_unique() -> None:
    first, second = _recommend(), _recommend()
    client = tracking.client()
    names = [client.get_run(r.mlflow_run_id).info.run_name for r in (first, second)]
    base = f"breast -> {first.model} {first.expected_accuracy:.1%}"
    assert names == [base, f"{base} #2"]


def test_report_html_shows_answer_baselines_shortlist_and_cited_runs(tmp_path: Path) -> None:
    rec = _recommend()
    client = tracking.client()
    page = Path(client.download_artifacts(rec.mlflow_run_id, "report.html", str(tmp_path)))
    text = page.read_text()
    assert rec.summary() in text
    shortlist = make_shortlist()
    mf = shortlist.meta_features
    # chance 1/k and the majority class share of the training split, when the rec lacks them
    chance = getattr(rec, "chance_level", None) or 1 / mf.n_classes
    assert f"{chance:.1%}" in text
    if mf.class_size_max is not None:
        majority = getattr(rec, "majority_accuracy", None) or mf.class_size_max / mf.n_images
        assert f"{majority:.1%}" in text
    for c in shortlist.candidates:
        assert c.candidate_id in text and c.model in text
    for run_id in rec.cited_runs:
        assert run_id in text
    assert "<script" not in text  # the artifact viewer's sandbox runs none


def test_a_mistyped_path_fails_before_any_run_exists(tmp_path: Path) -> None:
    from metallmix.tools.kb.store import SQLiteKnowledgeBase

    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")  # exists: the dataset is what is wrong
    with pytest.raises(DatasetError):
        metallmix.recommend(
            tmp_path / "typo.npz",
            llm=ScriptedLLM([GOOD, SCORES]),
            kb=kb,
            progress=False,
        )
    client = tracking.client()
    exp = client.get_experiment_by_name(recording.EXPERIMENT)
    runs = client.search_runs([exp.experiment_id]) if exp is not None else []
    assert not runs, "a bad path left a run behind"


def test_progress_lines_go_to_stderr_and_can_be_turned_off(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[str] = []
    metallmix.recommend(
        None,
        llm=ScriptedLLM([GOOD, SCORES]),
        shortlist=make_shortlist(),
        track=False,
        on_node=seen.append,
    )
    out = capsys.readouterr()
    assert out.out == ""
    assert "[metallmix] recommender: LLM answered" in out.err
    assert {"recommender", "judge"} <= set(seen)  # the caller's hook still runs
    metallmix.recommend(
        None,
        llm=ScriptedLLM([GOOD, SCORES]),
        shortlist=make_shortlist(),
        track=False,
        progress=False,
    )
    assert "[metallmix]" not in capsys.readouterr().err


def test_ui_hint_names_the_resolved_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db")
    store, command, url = tracking.ui_hint("0123")
    assert store == f"sqlite:///{tmp_path.resolve() / 'mlruns' / 'mlflow.db'}"
    assert command.startswith(f"mlflow ui --backend-store-uri {store}")
    assert url.startswith("http://127.0.0.1:5000")
