"""KB build: plan, derived tasks, resumability by trial key, the CLI, and the shipped KB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train_trainer import write_npz

from metallmix.cli import main
from metallmix.errors import ConfigError, DatasetError
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.search_space import CPU_ZOO_SPACE, Choice, IntRange
from metallmix.tools.training.build import (
    BUILD_SPACE,
    DEFAULT_TASKS,
    TRIAL_KEY_TAG,
    TaskCache,
    TaskSpec,
    build,
    default_tasks_for,
    done_keys,
    plan,
    resolve_sources,
)

TINY = BUILD_SPACE.model_copy(
    update={
        "name": "tiny",
        "models": ["lcnet_050"],
        "params": {
            **BUILD_SPACE.params,
            "epochs": IntRange(low=1, high=1),
            "image_size": Choice(values=[16]),
            "batch_size": Choice(values=[32]),
        },
    }
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_npz(folder, "toy")
    write_npz(folder, "quad", classes=4, seed=2)
    return folder


def test_default_plan_is_large_diverse_and_inside_the_space() -> None:
    sources = {t.source for t in DEFAULT_TASKS}
    assert len(DEFAULT_TASKS) >= 18 and len(sources) == 6
    assert len({t.name for t in DEFAULT_TASKS}) == len(DEFAULT_TASKS)
    trials = plan(DEFAULT_TASKS, 16)
    assert len(trials) >= 300
    assert len({t.key for t in trials}) == len(trials)
    assert plan(DEFAULT_TASKS, 16) == trials  # seeded: same plan every time
    assert [t.key for t in plan(DEFAULT_TASKS, 16, seed=1)] != [t.key for t in trials]
    # Round-robin over tasks, so a partial build covers every task.
    assert {t.task.name for t in trials[: len(DEFAULT_TASKS)]} == {t.name for t in DEFAULT_TASKS}
    for trial in trials:
        assert CPU_ZOO_SPACE.contains(trial.model, trial.hp), trial
        if trial.model == "convnext_atto":
            assert trial.hp.image_size is not None and trial.hp.image_size >= 32
    with pytest.raises(ConfigError):
        plan(DEFAULT_TASKS, 0)


def test_task_names_and_derived_meta_features(data_dir: Path) -> None:
    spec = TaskSpec(source="quad", classes=[0, 2], train_limit=20, resolution=8)
    assert spec.name == "quad/c0+2/n20/r8"
    cache = TaskCache(resolve_sources([data_dir / "quad.npz"]))
    ds, mf = cache.task(spec)
    assert ds.name == spec.name and ds.n_classes == 2
    assert len(ds.split("train")) == 20 and mf.n_images == 20 and mf.n_classes == 2
    assert mf.resolution_h == 8 and mf.resolution_w == 8
    whole, mf_whole = cache.task(TaskSpec(source="quad"))
    assert whole.name == "quad" and mf_whole.n_images == 64
    with pytest.raises(DatasetError, match="no such dataset"):
        resolve_sources([data_dir / "missing.npz"])
    with pytest.raises(DatasetError, match="needs dataset"):
        cache.task(TaskSpec(source="other"))


def test_build_appends_and_resumes(data_dir: Path, tmp_path: Path) -> None:
    sources = resolve_sources([data_dir / "toy.npz", data_dir / "quad.npz"])
    tasks = [
        TaskSpec(source="toy"),
        TaskSpec(source="quad", classes=[1, 3], train_limit=24, resolution=12),
    ]
    trials = plan(tasks, 2, space=TINY)
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    first = list(build(kb, trials[:3], sources))
    assert [e.error for e in first] == [None, None, None]
    assert len(kb) == 3 and done_keys(kb) == {t.key for t in trials[:3]}
    # Resuming runs only what is missing.
    second = list(build(kb, trials, sources))
    assert [e.trial.key for e in second] == [trials[3].key]
    assert list(build(kb, trials, sources)) == []
    records = kb.records()
    assert {r.dataset for r in records} == {"toy", "quad/c1+3/n24/r12"}
    assert {r.dataset_group for r in records} == {"toy", "quad"}
    for record in records:
        assert record.source == "own" and record.provenance.mlflow_run_id
        assert record.provenance.dataset_source_commit == "0123456789abcdef"
        assert record.provenance.notes[TRIAL_KEY_TAG] in {t.key for t in trials}
    low = next(r for r in records if r.dataset_group == "quad")
    assert low.meta_features.resolution_h == 12 and low.meta_features.n_images == 24


def test_sharding_splits_the_plan(data_dir: Path, tmp_path: Path) -> None:
    sources = resolve_sources([data_dir / "toy.npz"])
    trials = plan([TaskSpec(source="toy")], 2, space=TINY)
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    ran = [e.trial.key for e in build(kb, trials, sources, shard=(1, 2))]
    assert ran == [trials[1].key]
    with pytest.raises(ConfigError, match="shard"):
        list(build(kb, trials, sources, shard=(2, 2)))


def test_learning_plan_mixes_probes_scratch_and_last_stages_inside_the_space() -> None:
    from metallmix.tools.training.build import LEARNING_TASKS, learning_plan

    assert len(LEARNING_TASKS) >= 30
    assert len({t.name for t in LEARNING_TASKS}) == len(LEARNING_TASKS)
    trials = learning_plan(LEARNING_TASKS)
    assert learning_plan(LEARNING_TASKS) == trials
    assert len(trials) >= 400 and len({t.key for t in trials}) == len(trials)
    pretrained = [t for t in trials if t.pretrained]
    assert 0.2 <= len(pretrained) / len(trials) <= 0.8
    finetunes = {t.hp.extra.get("finetune") for t in pretrained}
    assert finetunes == {"linear_probe", "last_stages", "full"}
    assert all(CPU_ZOO_SPACE.is_pretrained(t.model) == t.pretrained for t in trials)
    for trial in trials:
        assert CPU_ZOO_SPACE.contains(trial.model, trial.hp), trial
    # the first round covers every task, pretrained first
    first = trials[: len(LEARNING_TASKS)]
    assert {t.task.name for t in first} == {t.name for t in LEARNING_TASKS}
    # asking for more probes keeps the first ones (a larger plan resumes a smaller one)
    more = learning_plan(LEARNING_TASKS, probes_per_task=12)
    assert {t.key for t in trials} < {t.key for t in more}
    # full fine-tunes came later: adding them kept every earlier trial key
    before = learning_plan(LEARNING_TASKS, full_per_task=0)
    assert {t.key for t in before} < {t.key for t in trials}
    full = [t for t in trials if t.hp.extra.get("finetune") == "full"]
    assert full and all(t.task.train_limit or t.task.source == "breastmnist" for t in full)


def test_a_trial_recorded_meanwhile_by_another_process_is_skipped(
    data_dir: Path, tmp_path: Path
) -> None:
    sources = resolve_sources([data_dir / "toy.npz"])
    trials = plan([TaskSpec(source="toy")], 3, space=TINY)
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    other = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")

    def copy_as_last_trial(event: object) -> None:  # "another process" records trial 3
        if len(kb) == 1:
            record = kb.records()[0]
            notes = {**record.provenance.notes, TRIAL_KEY_TAG: trials[2].key}
            prov = record.provenance.model_copy(update={"notes": notes})
            other.add([record.model_copy(update={"run_id": "other-1", "provenance": prov})])

    ran = [e.trial.key for e in build(kb, trials, sources, on_trial=copy_as_last_trial)]
    assert ran == [trials[0].key, trials[1].key]
    assert done_keys(kb) == {t.key for t in trials}


def test_default_tasks_for_unknown_datasets(data_dir: Path) -> None:
    tasks = default_tasks_for(resolve_sources([data_dir / "toy.npz"]))
    assert [t.name for t in tasks] == ["toy/n1000"]


def test_cli_kb_build_json(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kb_path = tmp_path / "kb.sqlite"
    args = ["kb", "build", "--datasets", str(data_dir / "toy.npz"), "--configs-per-task", "1"]
    args += ["--limit", "1", "--kb", str(kb_path), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ran"] == 1 and result["kb"]["total"] == 1
    assert result["tasks"] == ["toy/n1000"]
    assert main([*args[:-1], "--shard", "3"]) == 2
    assert "--shard" in capsys.readouterr().err
    assert main([*args[:-1], "--kind", "some"]) == 2
    assert "--kind must be one of all, pretrained, scratch, full" in capsys.readouterr().err


SHIPPED = Path(__file__).resolve().parent.parent / "metallmix" / "data" / "kb.sqlite"
SHIPPED_MIN_OWN_RUNS = 400


@pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped KB not built yet")
def test_shipped_kb_has_the_promised_runs() -> None:
    """Issue 12: own runs that learn, pretrained and from scratch, with full provenance."""
    kb = SQLiteKnowledgeBase(SHIPPED, read_only=True)
    records = kb.records(source="own")
    finished = [r for r in records if r.status in {"ok", "diverged"}]
    assert len(finished) >= SHIPPED_MIN_OWN_RUNS
    assert len({r.dataset for r in finished}) >= 30
    assert len({r.dataset_group for r in finished}) == 6
    pretrained = [r for r in finished if r.pretrained]
    assert len(pretrained) >= 0.2 * len(finished)
    assert len(pretrained) < len(finished)  # from-scratch runs too

    def near_chance(r: RunRecord) -> bool:
        score = r.outcomes.test_balanced_accuracy
        return score is None or score <= 1 / r.meta_features.n_classes + 0.05

    assert sum(near_chance(r) for r in finished) <= 0.2 * len(finished)
    for record in finished:
        prov = record.provenance
        assert prov.mlflow_run_id and prov.code_version and prov.notes.get(TRIAL_KEY_TAG)
        assert prov.dataset_source_repo and prov.dataset_source_commit
        assert record.pretrained == CPU_ZOO_SPACE.is_pretrained(record.model)
        assert CPU_ZOO_SPACE.contains(record.model, record.hyperparameters), record.run_id
        if record.status == "ok":
            assert record.outcomes.val_balanced_accuracy is not None
        if record.pretrained:
            assert record.weights_tag and record.weights_tag.startswith("imagenet:")
