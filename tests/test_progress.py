"""Every wait over 2 s says what it is doing (issue 25): the reporters, on a small threshold,
and the real steps that use them (meta-features, KB and index, the LLM load) on the API path.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from metallmix import progress


@pytest.fixture
def fast_threshold(monkeypatch: pytest.MonkeyPatch) -> float:
    """A 0.05 s threshold instead of 2 s, so a wait of 0.3 s counts as long."""
    monkeypatch.setattr(progress, "WAIT_EVERY_S", 0.05)
    return 0.05


def _lines(err: str, needle: str) -> list[str]:
    return [line for line in err.splitlines() if needle in line]


@pytest.mark.usefixtures("fast_threshold")
def test_waiting_reports_a_slow_step_and_stays_silent_for_a_quick_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with progress.waiting("slow step", estimate_s=10):
        time.sleep(0.3)
    lines = _lines(capsys.readouterr().err, "slow step")
    assert any("s so far, about" in line and "s left" in line for line in lines), lines
    assert lines[-1].startswith("[metallmix] slow step: done (")
    with progress.waiting("overdue step", estimate_s=0.01):
        time.sleep(0.2)
    assert any("longer than the usual" in ln for ln in _lines(capsys.readouterr().err, "overdue"))
    with progress.waiting("quick step"):
        pass
    assert "quick step" not in capsys.readouterr().err
    with progress.wait_lines(False), progress.waiting("silenced step"):
        time.sleep(0.2)
    assert "silenced step" not in capsys.readouterr().err


@pytest.mark.usefixtures("fast_threshold")
def test_reporter_without_announcement_speaks_only_when_slow(
    capsys: pytest.CaptureFixture[str],
) -> None:
    quick = progress.WaitReporter("quick count", 10, unit="images", announce=False)
    for _ in range(10):
        quick.advance()
    quick.finish()
    assert "quick count" not in capsys.readouterr().err
    slow = progress.WaitReporter("slow count", 10, unit="images", announce=False)
    for _ in range(10):
        time.sleep(0.03)
        slow.advance()
    slow.finish()
    lines = _lines(capsys.readouterr().err, "slow count")
    assert any("/10 images, about" in line for line in lines), lines
    assert lines[-1].startswith("[metallmix] slow count: done")


@pytest.mark.usefixtures("fast_threshold")
def test_meta_features_of_a_slow_dataset_report_images_and_time_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real meta-features code on a real dataset, each image read made slow (what a
    large dataset on a busy disk is), called as the API and the graph call it."""
    from test_train_trainer import write_npz

    from metallmix.tools import metafeatures
    from metallmix.tools.datasets import load_dataset

    real = metafeatures.convert_channels

    def slow_convert(image: object, channels: int) -> object:
        time.sleep(0.005)
        return real(image, channels)  # type: ignore[arg-type]

    monkeypatch.setattr(metafeatures, "convert_channels", slow_convert)
    dataset = load_dataset(write_npz(tmp_path))
    metafeatures.compute_meta_features(dataset)
    lines = _lines(capsys.readouterr().err, "computing meta-features of toy")
    assert any("images, about" in line and "s left" in line for line in lines), lines
    assert lines[-1].startswith("[metallmix] computing meta-features of toy: done")


@pytest.mark.slow  # a cold meta-learner fit on the synthetic KB
@pytest.mark.usefixtures("fast_threshold")
def test_api_recommend_reports_a_slow_llm_load_and_kb_read(
    kb: Path,
    scripted: object,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``metallmix.recommend`` (no CLI): a slow LLM load and a slow KB read each print
    lines while they block (``progress=False`` silences them: see the first test)."""
    import threading

    import metallmix
    from metallmix.cli.recommend import example_card
    from metallmix.graphs import resources as graph_resources
    from metallmix.graphs.resources import RunResources

    real_load = graph_resources.runtime_llm.load_llm
    real_run_kb = RunResources.run_kb
    shortlisted = threading.Event()

    def slow_load(*args: object, **kwargs: object) -> object:
        # still loading when the recommender node needs it, whatever the machine's speed
        shortlisted.wait(timeout=600)
        time.sleep(0.4)
        return real_load(*args, **kwargs)

    def on_node(node: str) -> None:
        if node == "evidence":  # the recommender node, next, needs the LLM at once
            shortlisted.set()

    def slow_run_kb(*args: object, **kwargs: object) -> object:
        time.sleep(0.3)
        return real_run_kb(*args, **kwargs)

    monkeypatch.setattr(graph_resources.runtime_llm, "load_llm", slow_load)
    monkeypatch.setattr(RunResources, "run_kb", slow_run_kb)
    card = example_card("chest-xray")
    metallmix.recommend(card, kb=kb, track=False, compute="cpu", on_node=on_node)
    err = capsys.readouterr().err
    assert _lines(err, "reading the knowledge base and its retrieval index: done")
    assert _lines(err, "waiting for the LLM to finish loading: done"), err
