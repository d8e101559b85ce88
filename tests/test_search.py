"""Optuna RS/TPE baselines over the search space: trials, MLflow nesting, resuming."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train_trainer import write_npz

from metallmix.errors import ConfigError
from metallmix.tools.datasets import load_dataset
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.search_space import (
    CPU_ZOO_SPACE,
    Choice,
    FloatRange,
    IntRange,
    SearchSpace,
)
from metallmix.tools.training.search import SearchSpec, distributions, run_search
from metallmix.tools.training.settings import TrialSettings
from metallmix.tools.training.trainer import EpochStats

# A space of cheap configurations so a trial takes about a second.
TINY = SearchSpace(
    name="tiny",
    models=["lcnet_050"],
    pretrained=False,
    params={
        "lr": FloatRange(low=1e-3, high=1e-2, log=True),
        "epochs": IntRange(low=1, high=1),
        "image_size": Choice(values=[16]),
        "batch_size": Choice(values=[32]),
        "augmentation": Choice(values=["none", "light"]),
    },
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npz(tmp_path_factory.mktemp("data"))


def test_distributions_cover_the_space() -> None:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    dists = distributions(CPU_ZOO_SPACE)
    assert set(dists) == {"model", *CPU_ZOO_SPACE.union_params()}
    assert "finetune" in dists and 128 in dists["image_size"].choices
    assert list(dists["model"].choices) == CPU_ZOO_SPACE.models
    assert isinstance(dists["lr"], FloatDistribution) and dists["lr"].log
    assert isinstance(dists["epochs"], IntDistribution)
    assert isinstance(dists["optimizer"], CategoricalDistribution)


def test_random_search_runs_trials_in_mlflow_and_kb(toy: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from metallmix import config

    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    result = run_search(
        load_dataset(toy),
        SearchSpec(sampler="random", trials=2, space=TINY, storage=tmp_path / "studies.sqlite"),
        kb=kb,
        settings=TrialSettings(threads=1),
    )
    assert result.trials_done == 2 and len(result.trials) == 2
    assert all(t.state == "COMPLETE" and t.model == "lcnet_050" for t in result.trials)
    assert result.best_value == max(t.value or 0 for t in result.trials)
    assert len(kb) == 2
    for record in kb.iter_records():
        assert TINY.contains(record.model, record.hyperparameters)
    client = MlflowClient(tracking_uri=config.tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("metallmix-search").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(children) == 2
    assert {r.info.run_id for r in children} == {t.mlflow_run_id for t in result.trials}
    # Asking again for the same budget runs nothing new.
    again = run_search(
        load_dataset(toy),
        SearchSpec(sampler="random", trials=2, space=TINY, storage=tmp_path / "studies.sqlite"),
        kb=kb,
        settings=TrialSettings(threads=1),
    )
    assert again.trials_done == 2 and len(kb) == 2
    assert again.parent_run_id == result.parent_run_id


def test_interrupted_search_resumes(toy: Path, tmp_path: Path) -> None:
    """Killed during trial 1: the resumed study re-runs that configuration, then goes on."""
    storage = tmp_path / "studies.sqlite"
    calls = {"n": 0}

    def interrupt(stats: EpochStats) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # second trial, first epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(
            load_dataset(toy),
            SearchSpec(sampler="tpe", trials=3, space=TINY, storage=storage),
            settings=TrialSettings(threads=1, progress=interrupt),
        )
    import optuna

    study = optuna.load_study(study_name="toy-tpe-s0", storage=f"sqlite:///{storage}")
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "RUNNING"]
    interrupted = study.get_trials()[1].params

    result = run_search(
        load_dataset(toy),
        SearchSpec(sampler="tpe", trials=3, space=TINY, storage=storage),
        settings=TrialSettings(threads=1),
    )
    assert result.resumed == 1
    assert result.trials_done == 3
    states = [t.state for t in result.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    rerun = result.trials[2]
    assert {"model": rerun.model, **rerun.params} == interrupted


def test_bad_sampler_and_budget(toy: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sampler"):
        run_search(
            load_dataset(toy),
            SearchSpec(sampler="grid", trials=1, space=TINY, storage=tmp_path / "s"),
        )
    with pytest.raises(ConfigError, match="trials"):
        run_search(
            load_dataset(toy),
            SearchSpec(sampler="tpe", trials=0, space=TINY, storage=tmp_path / "s"),
        )


def test_rejected_configuration_is_a_failed_trial(toy: Path, tmp_path: Path) -> None:
    """convnext_atto cannot run at 16 px: the trial fails with the reason and still counts."""
    space = TINY.model_copy(update={"name": "tiny-bad", "models": ["convnext_atto"]})
    result = run_search(
        load_dataset(toy),
        SearchSpec(sampler="random", trials=1, space=space, storage=tmp_path / "studies.sqlite"),
        settings=TrialSettings(threads=1),
    )
    assert result.trials_done == 1
    assert result.trials[0].state == "FAIL"
    assert result.trials[0].error is not None and "image_size" in result.trials[0].error
    assert result.best_value is None


def test_tpe_and_gp_model_within_the_budget() -> None:
    """Issue 28: Optuna's default ``n_startup_trials`` (10) made TPE@10 a random search. Now
    TPE and GP draw max(3, budget // 4) at random (the same draws as RS with that seed)
    and their model picks the rest, so at budget 10 they part from RS after trial 3."""
    import optuna

    from metallmix.tools.training.search import _sampler, model_based, startup_trials

    assert [startup_trials(b) for b in (1, 10, 12, 40)] == [3, 3, 3, 10]
    assert startup_trials(None) == 10  # unknown budget: Optuna's default
    assert isinstance(_sampler("random", 0, 10), optuna.samplers.RandomSampler)
    tpe, gp = _sampler("tpe", 0, 10), _sampler("gp", 0, 10)
    assert isinstance(tpe, optuna.samplers.TPESampler) and tpe._n_startup_trials == 3
    assert isinstance(gp, optuna.samplers.GPSampler) and gp._n_startup_trials == 3
    assert model_based("tpe") and model_based("gp") and not model_based("random")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions(CPU_ZOO_SPACE)

    def drawn(sampler: str) -> list[tuple[str, float]]:
        """Ten trials on a deterministic objective that rewards small learning rates."""
        study = optuna.create_study(direction="maximize", sampler=_sampler(sampler, 0, 10))
        out = []
        for _ in range(10):
            trial = study.ask(dists)
            study.tell(trial, -abs(trial.params["lr"] - 1e-4))
            out.append((str(trial.params["model"]), float(trial.params["lr"])))
        return out

    rs, tpe_draws = drawn("random"), drawn("tpe")
    assert tpe_draws[:3] == rs[:3]  # the random start-up: RS's own draws
    assert tpe_draws[3:] != rs[3:]  # then the model acts (at Optuna's default it never did)


def test_random_configs_are_valid_seeded_draws() -> None:
    """RS+SH@K's candidates: the first K valid draws of the RS sampler, in the space."""
    from metallmix.tools.training.search import random_configs

    first = random_configs(CPU_ZOO_SPACE, 4, seed=3)
    assert [n for n, _, _ in first] == sorted(n for n, _, _ in first)
    assert first == random_configs(CPU_ZOO_SPACE, 4, seed=3)  # same seed, same draws
    assert first != random_configs(CPU_ZOO_SPACE, 4, seed=4)
    assert first[:2] == random_configs(CPU_ZOO_SPACE, 2, seed=3)  # a prefix, as trials are
    for _, model, hp in first:
        assert CPU_ZOO_SPACE.contains(model, hp)
    with pytest.raises(ConfigError, match="at least 1"):
        random_configs(CPU_ZOO_SPACE, 0, seed=0)
