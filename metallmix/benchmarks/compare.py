"""Head-to-head: a zero-shot recommendation against random search, TPE and best-default.

Every method gets the same trainer (:func:`~metallmix.tools.training.runner.run_trial`), the
same search space (the CPU zoo with an epoch cap and optional model / image-size subsets),
the same data caps and the same seeds, and is scored on the same test split:

- ``metallmix``: one recommendation from a KB holding no run of the dataset (checked, and
  the check is part of the report), then one training run of it per seed;
- ``random`` / ``tpe``: an Optuna study of ``budget`` trials per seed, the trial with the
  best validation accuracy selected, its test accuracy reported;
- ``best-default``: the KB configuration with the best mean normalised score (the LODO
  baseline), trained once per seed;
- ``metallmix+verify``: the same recommendation's shortlist, its top ``verify`` candidates
  trained with successive halving (:mod:`metallmix.tools.training.verify`) per seed, the
  winner's test accuracy reported. Its time to a configuration is the meta-features +
  shortlist time plus the summed training time of every verification run; the LLM's time
  is not added because with ``verify`` = the shortlist's size the LLM's pick cannot change
  which configurations are trained (it is reported beside it).

A comparison is a list of pieces (one recommendation, one training, one search...). Each
finished piece is written to a JSON state file at once (temp file + ``os.replace``) and the
searches keep their trials in an Optuna SQLite store, so an interrupted comparison resumes
without retraining anything it finished. MLflow gets one parent run with every method's runs
nested under it (experiment ``metallmix-compare``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.entities import Metric, Param
from pydantic import BaseModel, ConfigDict, Field

from metallmix import config
from metallmix.api import recommend
from metallmix.atomic import atomic_path, write_text
from metallmix.benchmarks.compare_report import METHODS, build_report
from metallmix.benchmarks.lodo import LeakError, best_default
from metallmix.errors import ConfigError, KnowledgeBaseError
from metallmix.graphs.resources import LlmSpec, resolve_llm
from metallmix.tools import tracking
from metallmix.tools.datasets import Dataset, load_dataset
from metallmix.tools.kb.records import Hyperparameters, RunRecord
from metallmix.tools.kb.regime_view import regime_kb
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.contracts import Candidate
from metallmix.tools.meta.metric import metric_of_runs
from metallmix.tools.meta.search_space import (
    CPU_ZOO_SPACE,
    Choice,
    IntRange,
    SearchSpace,
)
from metallmix.tools.meta.shortlist import build_shortlist
from metallmix.tools.metafeatures import compute_meta_features
from metallmix.tools.training.runner import run_trial
from metallmix.tools.training.search import run_search
from metallmix.tools.training.verify import run_verify

if TYPE_CHECKING:
    from metallmix.agents.runtime.llm import ChatLLM

EXPERIMENT = "metallmix-compare"
COMPARE_KIND = "compare"
STATE_VERSION = 1

PieceFn = Callable[[str, dict[str, Any]], None]


class CompareSettings(BaseModel):
    """What every method shares; a resumed comparison must use the same settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget: int = Field(default=10, ge=1, description="trials per search (RS and TPE)")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    epoch_cap: int = Field(default=5, ge=1, description="largest number of epochs any run gets")
    models: list[str] | None = Field(default=None, description="subset of the CPU zoo")
    image_sizes: list[int] | None = Field(default=None, description="subset of the zoo's sizes")
    max_train_images: int | None = Field(default=None, ge=10)
    max_val_images: int | None = Field(default=200, ge=10)
    threads: int | None = Field(default=None, ge=1)
    n_candidates: int = Field(default=5, ge=1)
    verify: int = Field(default=5, ge=1, description="candidates MetaLLMiX+verify trains")

    def space(self) -> SearchSpace:
        """The CPU zoo narrowed by the caps: the one space every method draws from."""
        base = CPU_ZOO_SPACE
        models = list(base.models)
        if self.models is not None:
            unknown = [m for m in self.models if m not in base.models]
            if unknown or not self.models:
                raise ConfigError(
                    f"--models {','.join(self.models)}: {', '.join(unknown) or 'empty list'} "
                    f"not in the {base.name} zoo ({', '.join(base.models)})"
                )
            models = list(self.models)
        params = dict(base.params)
        epochs = base.params["epochs"]
        assert isinstance(epochs, IntRange)
        params["epochs"] = IntRange(low=min(epochs.low, self.epoch_cap), high=self.epoch_cap)
        if self.image_sizes is not None:
            sizes = base.params["image_size"]
            assert isinstance(sizes, Choice)
            bad = [s for s in self.image_sizes if s not in sizes.values]
            if bad or not self.image_sizes:
                raise ConfigError(
                    f"--image-sizes: {bad or 'empty list'} not among the zoo's sizes {sizes.values}"
                )
            params["image_size"] = Choice(values=list(self.image_sizes))
        # Per-model ranges only for the compared models, with the same epoch cap: otherwise
        # their (wider) ranges leak into the samplers' union distributions.
        model_params = {}
        for model, own in base.model_params.items():
            if model not in models:
                continue
            own = dict(own)
            if isinstance(own.get("epochs"), IntRange):
                low = min(own["epochs"].low, self.epoch_cap)  # type: ignore[union-attr]
                own["epochs"] = IntRange(low=low, high=self.epoch_cap)
            model_params[model] = own
        return base.model_copy(
            update={
                "name": "cpu-zoo-compare",
                "models": models,
                "params": params,
                "model_params": model_params,
            }
        )


class LeakCheck(BaseModel):
    """The proof that the recommendation's KB never saw the compared dataset."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    hidden_names: list[str]
    kb_runs: int
    removed_runs: int
    kept_runs: int
    removed_datasets: list[str]
    violations: int
    passed: bool


# ----------------------------------------------------------------------------- the KB


def snapshot_kb(source: Path, dest: Path) -> Path:
    """A consistent copy of a (possibly being written) SQLite KB, via SQLite's backup API."""
    if not source.is_file():
        raise KnowledgeBaseError(
            f"--kb {source}: no such file; give a KB .sqlite file (default: the shipped KB)"
        )
    with atomic_path(dest, suffix=".sqlite") as tmp:
        src = sqlite3.connect(f"file:{source.resolve()}?mode=ro", uri=True)
        try:
            out = sqlite3.connect(tmp)
            try:
                src.backup(out)
            finally:
                out.close()
        finally:
            src.close()
    return dest


def _touches(record: RunRecord, names: set[str]) -> bool:
    """Whether ``record`` is a run of one of ``names`` or of a task derived from it."""
    if record.dataset in names or record.dataset_group in names:
        return True
    return any(record.dataset.startswith((f"{n}/", f"{n}-")) for n in names)


def hidden_names(dataset: Dataset) -> set[str]:
    """The dataset's name and its source's: neither may appear in the held-out KB."""
    return {dataset.name, str(dataset.source_info.get("derived_from") or dataset.name)}


def holdout_kb(records: Sequence[RunRecord], names: set[str], dest: Path) -> LeakCheck:
    """Write every record not touching ``names`` to a fresh SQLite KB at ``dest``, re-read
    it and assert that none touches them (raises :class:`LeakError` otherwise)."""
    kept = [r for r in records if not _touches(r, names)]
    removed = sorted({r.dataset for r in records if _touches(r, names)})
    dest.unlink(missing_ok=True)
    store = SQLiteKnowledgeBase(dest)
    store.add(kept)
    check = check_no_leak(SQLiteKnowledgeBase(dest, read_only=True), names)
    return LeakCheck(
        dataset=sorted(names)[0],
        hidden_names=sorted(names),
        kb_runs=len(records),
        removed_runs=len(records) - len(kept),
        kept_runs=check,
        removed_datasets=removed,
        violations=0,
        passed=True,
    )


def check_no_leak(kb: SQLiteKnowledgeBase, names: set[str]) -> int:
    """The number of runs in ``kb``; raises :class:`LeakError` when one touches ``names``."""
    n = 0
    for record in kb.iter_records():
        n += 1
        if _touches(record, names):
            raise LeakError(
                f"the held-out KB {kb.location} contains run {record.run_id} of dataset "
                f"{record.dataset!r} (group {record.dataset_group!r}), which is being compared"
            )
    if n == 0:
        raise KnowledgeBaseError(
            f"after hiding {sorted(names)} the KB has no runs left to recommend from; "
            "use a KB with runs of other datasets"
        )
    return n


# ----------------------------------------------------------------------------- state


class CompareState:
    """The JSON state file: settings, the MLflow parent run, and every finished piece."""

    def __init__(self, path: Path, settings: CompareSettings, datasets: list[str]) -> None:
        self.path = path
        self.settings = settings
        fingerprint = settings.model_dump(mode="json")
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"comparison state {path} is not valid JSON ({exc}); delete it to start over"
                ) from exc
            stored = data.get("settings") or {}
            added = {k: v for k, v in fingerprint.items() if k not in stored}
            defaults = CompareSettings().model_dump(mode="json")
            if stored and all(defaults.get(k) == v for k, v in added.items()):
                data["settings"] = stored = {**stored, **added}  # a state from before a field
            if stored != fingerprint:
                raise ConfigError(
                    f"comparison state {path} was written with other settings "
                    f"({data.get('settings')}); re-run with those, pick another --name, or "
                    "delete the state folder to start over"
                )
            self.data: dict[str, Any] = data
        else:
            self.data = {
                "version": STATE_VERSION,
                "settings": fingerprint,
                "datasets": [],
                "parent_run_id": None,
                "runs": {},
                "pieces": {},
            }
        for name in datasets:
            if name not in self.data["datasets"]:
                self.data["datasets"].append(name)

    def get(self, key: str) -> dict[str, Any] | None:
        value = self.data["pieces"].get(key)
        return dict(value) if value is not None else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.data["pieces"][key] = value
        self.save()

    def save(self) -> None:
        write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True, default=str))


# ----------------------------------------------------------------------------- running


class _Run:
    """One comparison in progress: the shared objects every piece needs."""

    def __init__(
        self,
        state: CompareState,
        state_dir: Path,
        llm: LlmSpec,
        on_piece: PieceFn | None,
        backend: Any | None = None,
    ) -> None:
        self.backend = backend  # an ExecutionBackend for search trials; None = in-process
        self.state = state
        self.settings = state.settings
        self.space = state.settings.space()
        self.state_dir = state_dir
        self.llm_spec = llm
        self.llm_obj: ChatLLM | None = None
        self.on_piece = on_piece
        self.client = tracking.client()
        self.exp_id = tracking.experiment_id(self.client, EXPERIMENT)

    # -- MLflow
    def parent(self, label: str) -> str:
        run_id = self.state.data.get("parent_run_id")
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            return str(run_id)
        run = self.client.create_run(
            self.exp_id,
            run_name=f"compare:{label}",
            tags={tracking.KIND_TAG: COMPARE_KIND, "metallmix.state": str(self.state.path)},
        )
        run_id = run.info.run_id
        params = {**self.state.data["settings"], "space": self.space.describe()}
        self.client.log_batch(
            run_id, params=[Param(k, json.dumps(v, default=str)[:6000]) for k, v in params.items()]
        )
        self.state.data["parent_run_id"] = run_id
        self.state.save()
        return str(run_id)

    def child(self, key: str, parent: str, run_name: str) -> str:
        """A method's run under the parent (created once; its id survives in the state)."""
        existing = self.state.data["runs"].get(key)
        if existing:
            return str(existing)
        run = self.client.create_run(
            self.exp_id,
            run_name=run_name,
            tags={tracking.KIND_TAG: COMPARE_KIND, "mlflow.parentRunId": parent},
        )
        self.state.data["runs"][key] = run.info.run_id
        self.state.save()
        return str(run.info.run_id)

    def done(self, key: str, value: dict[str, Any]) -> dict[str, Any]:
        # Every time in the report is wall time on a shared machine: keep the load it ran under.
        value = {**value, "load_average": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
        self.state.put(key, value)
        if self.on_piece is not None:
            self.on_piece(key, value)
        return value

    def cached(self, key: str) -> dict[str, Any] | None:
        """A piece finished by an earlier run (reported to ``on_piece`` as resumed)."""
        found = self.state.get(key)
        if found is not None and self.on_piece is not None:
            self.on_piece(key, {**found, "resumed": True})
        return found

    def llm(self) -> ChatLLM:
        """The LLM, loaded once and only when a recommendation is still to be made."""
        if self.llm_obj is None:
            self.llm_obj = resolve_llm(self.llm_spec)
        return self.llm_obj

    # -- pieces
    def train(
        self, dataset: Dataset, model: str, hp: Hyperparameters, seed: int, parent: str, tag: str
    ) -> dict[str, Any]:
        self.space.check(model, hp)
        record = run_trial(
            dataset,
            model,
            hp,
            seed=seed,
            kb=None,
            experiment=EXPERIMENT,
            parent_run_id=parent,
            pretrained=self.space.is_pretrained(model),
            max_train_images=self.settings.max_train_images,
            max_val_images=self.settings.max_val_images,
            threads=self.settings.threads,
            tags={"metallmix.compare": tag},
            run_name=f"{tag}:s{seed}",
        )
        out = record.outcomes
        return {
            "seed": seed,
            "model": model,
            "hyperparameters": hp.model_dump(mode="json"),
            "status": record.status,
            "val_accuracy": out.val_accuracy,
            "test_accuracy": out.test_accuracy,
            "test_balanced_accuracy": _test_balanced(out),
            "train_seconds": out.train_seconds,
            "epochs_run": out.epochs_run,
            "mlflow_run_id": record.provenance.mlflow_run_id,
        }

    def holdout(self, dataset: Dataset, records: list[RunRecord], tmp: Path) -> Path:
        key = f"{dataset.name}/leak-check"
        dest = tmp / f"kb-without-{dataset.name}.sqlite"
        check = holdout_kb(records, hidden_names(dataset), dest)
        self.done(key, check.model_dump(mode="json"))
        return dest

    def heldout(self, dataset: Dataset, kb_path: Path) -> SQLiteKnowledgeBase:
        """The held-out KB, its no-leak check re-run before every use."""
        kb = SQLiteKnowledgeBase(kb_path, read_only=True)
        check_no_leak(kb, hidden_names(dataset))
        return kb

    def recommendation(self, dataset: Dataset, kb_path: Path, parent: str) -> dict[str, Any]:
        key = f"{dataset.name}/metallmix/recommendation"
        found = self.cached(key)
        if found is not None:
            return found
        seed = self.settings.seeds[0]
        loading = time.perf_counter()
        llm = self.llm()
        llm_load_seconds = time.perf_counter() - loading
        kb = self.heldout(dataset, kb_path)
        started = time.perf_counter()
        view = _train_view(dataset, self.settings.max_train_images, seed)
        mf = compute_meta_features(view)
        # Every method here trains on this CPU: learn only from the KB's CPU-regime runs.
        cpu_kb = regime_kb(kb, "cpu")
        shortlist = build_shortlist(
            mf, cpu_kb, n=self.settings.n_candidates, space=self.space, seed=seed
        )
        metric, note = metric_of_runs(cpu_kb.iter_records())
        shortlist = shortlist.model_copy(
            update={"metric": metric, "metric_note": note, "regime": "cpu"}
        )
        shortlist_seconds = time.perf_counter() - started
        rec = recommend(None, llm=llm, kb=kb, seed=seed, shortlist=shortlist, name=dataset.name)
        seconds = time.perf_counter() - started
        self.space.check(rec.model, rec.hyperparameters)
        child = self.child(f"{dataset.name}/metallmix", parent, f"{dataset.name}:metallmix")
        self.client.log_metric(child, "config_seconds", seconds)
        llm_seconds = None
        if rec.mlflow_run_id:
            self.client.set_tag(child, "metallmix.recommendation_run_id", rec.mlflow_run_id)
            llm_seconds = self.client.get_run(rec.mlflow_run_id).data.metrics.get("llm_seconds")
        return self.done(
            key,
            {
                "seconds": seconds,
                "llm_load_seconds": llm_load_seconds,
                "shortlist_seconds": shortlist_seconds,
                "llm_seconds": llm_seconds,
                "model": rec.model,
                "hyperparameters": rec.hyperparameters.model_dump(mode="json"),
                "expected_accuracy": rec.expected_accuracy,
                "candidate_id": rec.candidate_id,
                "fallback": rec.fallback,
                "llm": rec.llm,
                "recommendation_run_id": rec.mlflow_run_id,
                "kb_runs": len(kb),
                "candidates": [c.model_dump(mode="json") for c in shortlist.candidates],
            },
        )

    def default_config(self, dataset: Dataset, kb_path: Path, parent: str) -> dict[str, Any]:
        key = f"{dataset.name}/best-default/config"
        found = self.cached(key)
        if found is not None:
            return found
        kb = self.heldout(dataset, kb_path)
        started = time.perf_counter()
        pool = [
            r
            for r in kb.iter_records()
            if r.status == "ok"
            and r.outcomes.val_accuracy is not None
            and self.space.contains(r.model, r.hyperparameters)
        ]
        if not pool:
            raise KnowledgeBaseError(
                f"no KB run without {dataset.name} lies inside the compared space "
                f"({self.space.describe()}); widen --models / --image-sizes / --epochs-max"
            )
        picked = best_default(pool)
        seconds = time.perf_counter() - started
        child = self.child(f"{dataset.name}/best-default", parent, f"{dataset.name}:best-default")
        self.client.log_metric(child, "config_seconds", seconds)
        return self.done(
            key,
            {
                "seconds": seconds,
                "model": picked.model,
                "hyperparameters": picked.hyperparameters.model_dump(mode="json"),
                "kb_run_id": picked.run_id,
                "kb_pool": len(pool),
            },
        )

    def search(self, dataset: Dataset, sampler: str, seed: int, parent: str) -> dict[str, Any]:
        key = f"{dataset.name}/{sampler}/s{seed}"
        found = self.cached(key)
        if found is not None:
            return found
        result = run_search(
            dataset,
            sampler=sampler,
            trials=self.settings.budget,
            seed=seed,
            space=self.space,
            storage=self.state_dir / "optuna.sqlite",
            study_name=f"{dataset.name}-{sampler}-s{seed}",
            kb=None,
            experiment=EXPERIMENT,
            max_train_images=self.settings.max_train_images,
            max_val_images=self.settings.max_val_images,
            threads=self.settings.threads,
            backend=self.backend,
            # TPE one trial at a time, so its sequence is the in-process one; random search
            # does not depend on results and runs as wide as the backend allows.
            parallel=1 if sampler == "tpe" else None,
        )
        if result.parent_run_id:
            self.client.set_tag(result.parent_run_id, "mlflow.parentRunId", parent)
        search_seconds = sum(t.seconds or 0.0 for t in result.trials if t.state != "RUNNING")
        best: dict[str, Any] = {}
        if result.best_run_id:
            metrics = self.client.get_run(result.best_run_id).data.metrics
            best = {
                "val_accuracy": result.best_value,
                "test_accuracy": metrics.get("test_accuracy"),
                "test_balanced_accuracy": metrics.get(
                    "test_balanced_accuracy", metrics.get("balanced_accuracy")
                ),
                "train_seconds": metrics.get("train_seconds"),
                "mlflow_run_id": result.best_run_id,
            }
        return self.done(
            key,
            {
                "seed": seed,
                "search_seconds": search_seconds,
                "trials_done": result.trials_done,
                "trials_failed": sum(1 for t in result.trials if t.state == "FAIL"),
                "model": result.best_model,
                # What the best trial trained: sampled values projected onto its model's ranges.
                "hyperparameters": (
                    self.space.project(result.best_model, result.best_params)
                    if result.best_model
                    else result.best_params
                ),
                "study": result.study_name,
                "search_run_id": result.parent_run_id,
                "val_accuracy": best.get("val_accuracy"),
                "test_accuracy": best.get("test_accuracy"),
                "test_balanced_accuracy": best.get("test_balanced_accuracy"),
                "train_seconds": best.get("train_seconds"),
                "mlflow_run_id": best.get("mlflow_run_id"),
                "trials": [
                    {"number": t.number, "state": t.state, "value": t.value, "seconds": t.seconds}
                    for t in result.trials
                    if t.state == "COMPLETE" or (t.state == "FAIL" and t.error)
                ],
            },
        )

    def trained(
        self,
        dataset: Dataset,
        method: str,
        config_piece: dict[str, Any],
        seed: int,
        parent: str,
    ) -> dict[str, Any]:
        key = f"{dataset.name}/{method}/s{seed}"
        found = self.cached(key)
        if found is not None:
            return found
        child = self.child(f"{dataset.name}/{method}", parent, f"{dataset.name}:{method}")
        hp = Hyperparameters.model_validate(config_piece["hyperparameters"])
        return self.done(
            key,
            self.train(
                dataset, str(config_piece["model"]), hp, seed, child, f"{dataset.name}:{method}"
            ),
        )

    def verified(
        self, dataset: Dataset, rec: dict[str, Any], kb_path: Path, seed: int, parent: str
    ) -> dict[str, Any]:
        """The shortlist's top candidates by successive halving; the winner's test scores."""
        key = f"{dataset.name}/metallmix+verify/s{seed}"
        found = self.cached(key)
        if found is not None:
            return found
        kb = self.heldout(dataset, kb_path)
        raw = rec.get("candidates")
        if raw is None:  # a state from before candidates were stored: same shortlist again
            raw = [c.model_dump(mode="json") for c in self._shortlist(dataset, kb)]
        candidates = [Candidate.model_validate(c) for c in raw]
        child = self.child(
            f"{dataset.name}/metallmix+verify", parent, f"{dataset.name}:metallmix+verify"
        )
        result = run_verify(
            dataset,
            candidates,
            zero_shot_id=str(rec["candidate_id"]),
            k=self.settings.verify,
            seed=seed,
            kb_records=list(kb.iter_records()),
            space=self.space,
            storage=self.state_dir / "optuna.sqlite",
            study_name=f"{dataset.name}-verify-s{seed}",
            kb=None,
            experiment=EXPERIMENT,
            parent_run_id=child,
            max_train_images=self.settings.max_train_images,
            max_val_images=self.settings.max_val_images,
            threads=self.settings.threads,
            backend=self.backend,
        )
        winner = result.winner
        final = (winner.final or winner.best_known) if winner is not None else None
        shortlist_seconds = rec.get("shortlist_seconds") or 0.0
        return self.done(
            key,
            {
                "seed": seed,
                "verify_seconds": result.seconds_spent,
                "config_seconds": shortlist_seconds + result.seconds_spent,
                "config_seconds_with_llm": (rec.get("seconds") or 0.0) + result.seconds_spent,
                "model": winner.model if winner is not None else None,
                "hyperparameters": dict(winner.hyperparameters) if winner is not None else {},
                "candidate_id": result.winner_id,
                "winner_is_zero_shot": result.winner_is_zero_shot,
                "first_rung_epochs": result.first_rung.epochs,
                "first_rung_source": result.first_rung.source,
                "runs": sum(len(c.runs) for c in result.candidates),
                "metric": result.metric,
                "val_value": final.value if final is not None else None,
                "val_accuracy": final.val_accuracy if final is not None else None,
                "test_accuracy": final.test_accuracy if final is not None else None,
                "test_balanced_accuracy": (
                    final.test_balanced_accuracy if final is not None else None
                ),
                "train_seconds": final.train_seconds if final is not None else None,
                "mlflow_run_id": final.mlflow_run_id if final is not None else None,
                "study": result.study_name,
                "verify_run_id": result.mlflow_run_id,
            },
        )

    def _shortlist(self, dataset: Dataset, kb: SQLiteKnowledgeBase) -> list[Any]:
        seed = self.settings.seeds[0]
        mf = compute_meta_features(_train_view(dataset, self.settings.max_train_images, seed))
        shortlist = build_shortlist(  # CPU-regime runs only, as in metallmix_config
            mf, regime_kb(kb, "cpu"), n=self.settings.n_candidates, space=self.space, seed=seed
        )
        return list(shortlist.candidates)


def _test_balanced(outcomes: Any) -> float | None:
    """Test balanced accuracy (issue 12 names it ``test_balanced_accuracy``; before, the
    ``balanced_accuracy`` outcome was the test split's)."""
    value = getattr(outcomes, "test_balanced_accuracy", None)
    return value if value is not None else outcomes.balanced_accuracy


def _train_view(dataset: Dataset, max_train_images: int | None, seed: int) -> Dataset:
    """The training set a run with ``seed`` actually sees (what the recommender describes)."""
    if max_train_images is not None and max_train_images < len(dataset.split("train")):
        return dataset.subset(train_limit=max_train_images, seed=seed)
    return dataset


def n_pieces(settings: CompareSettings, n_datasets: int) -> int:
    """Pieces a full comparison has (for progress bars)."""
    # leak check, rec, default; per seed: 2 trainings, 2 searches, 1 verification
    per_dataset = 1 + 1 + len(settings.seeds) * 5 + 1
    return n_datasets * per_dataset


def default_kb_path() -> Path:
    """``METALLMIX_KB`` when it names a file, else the shipped KB."""
    spec = config.kb_uri()
    if spec:
        return Path(spec.removeprefix("sqlite:///")).expanduser()
    return config.bundled_kb_path()


def run_compare(
    data: Sequence[str | os.PathLike[str]],
    settings: CompareSettings,
    *,
    state_dir: Path,
    kb: str | os.PathLike[str] | None = None,
    llm: LlmSpec = None,
    modality: str | None = None,
    label: str | None = None,
    on_piece: PieceFn | None = None,
    backend: Any | None = None,
) -> dict[str, Any]:
    """Run (or resume) the comparison and return the report (see :mod:`.compare_report`).

    ``backend`` (an :class:`~metallmix.tools.training.backends.ExecutionBackend`) runs the
    RS/TPE search trials, e.g. on Ray; ``None`` runs everything in this process.

    ``state_dir`` holds ``state.json``, ``kb.sqlite`` (a snapshot of the KB taken on the
    first run, so a KB that grows meanwhile does not change a resumed comparison) and
    ``optuna.sqlite``. ``on_piece(key, value)`` is called as each piece finishes.
    """
    if not data:
        raise ConfigError("bench compare needs at least one --data dataset")
    datasets = [load_dataset(Path(d), modality=modality, seed=0) for d in data]
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"two --data datasets share a name ({names}); rename one")
    settings.space()  # validate the caps before anything runs
    state_dir.mkdir(parents=True, exist_ok=True)
    state = CompareState(state_dir / "state.json", settings, names)
    snapshot = state_dir / "kb.sqlite"
    source = Path(kb).expanduser() if kb is not None else default_kb_path()
    if not snapshot.is_file():
        snapshot_kb(Path(str(source).removeprefix("sqlite:///")), snapshot)
        state.data["kb_source"] = str(source)
        state.save()
    records = list(SQLiteKnowledgeBase(snapshot, read_only=True).iter_records())
    run = _Run(state, state_dir, llm, on_piece, backend=backend)
    parent = run.parent(label or "+".join(names))
    try:
        with tempfile.TemporaryDirectory(prefix="metallmix-compare-") as tmp:
            for dataset in datasets:
                _compare_one(run, dataset, records, Path(tmp), parent)
        baselines = {d.name: majority_baseline(d) for d in datasets}
        report = build_report(state.data, [d.name for d in datasets], baselines)
        report["kb_snapshot"] = str(snapshot)
        report["kb_source"] = state.data.get("kb_source")
        report["mlflow_parent_run_id"] = parent
        report["space"] = run.space.describe()
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        with contextlib.suppress(Exception):  # never hide the original error
            run.client.set_terminated(parent, status=status)
        raise
    return report


def majority_baseline(dataset: Dataset) -> dict[str, Any]:
    """Always answering the training split's largest class, scored on the test split: the
    floor a trained model must clear (balanced accuracy 1/k, accuracy the class's share)."""
    train = dataset.split("train").labels
    test = dataset.split("test").labels
    values, counts = np.unique(train, return_counts=True)
    label = int(values[int(np.argmax(counts))])
    classes = np.unique(np.concatenate([train, test]))
    recalls = [float(np.mean(test[test == c] == label)) for c in classes if np.any(test == c)]
    names = list(dataset.class_names)
    return {
        "label": label,
        "label_name": names[label] if label < len(names) else None,
        "test_accuracy": float(np.mean(test == label)) if len(test) else None,
        "test_balanced_accuracy": float(np.mean(recalls)) if recalls else None,
    }


def _compare_one(
    run: _Run, dataset: Dataset, records: list[RunRecord], tmp: Path, parent: str
) -> None:
    kb_path = run.holdout(dataset, records, tmp)
    rec = run.recommendation(dataset, kb_path, parent)
    default = run.default_config(dataset, kb_path, parent)
    for seed in run.settings.seeds:
        run.trained(dataset, "metallmix", rec, seed, parent)
    for seed in run.settings.seeds:
        run.trained(dataset, "best-default", default, seed, parent)
    for sampler in ("random", "tpe"):
        for seed in run.settings.seeds:
            run.search(dataset, sampler, seed, parent)
    for seed in run.settings.seeds:
        run.verified(dataset, rec, kb_path, seed, parent)


def finish_mlflow(report: dict[str, Any], files: dict[str, Path]) -> None:
    """Summary metrics and the report files on the parent run, then mark it FINISHED."""
    client = tracking.client()
    parent = report["mlflow_parent_run_id"]
    now = int(time.time() * 1000)
    metrics: list[Any] = []
    for name, entry in report["datasets"].items():
        for method, row in entry["methods"].items():
            for field in ("test_accuracy_mean", "config_seconds", "train_seconds_mean"):
                value = row.get(field)
                if value is not None:
                    key = f"{name}.{_metric_name(method)}.{field}"
                    metrics.append(Metric(key, float(value), now, 0))
    for method, row in report["overall"].items():
        for field in ("test_accuracy_mean", "best_or_within_1pt"):
            value = row.get(field)
            if value is not None:
                key = f"overall.{_metric_name(method)}.{field}"
                metrics.append(Metric(key, float(value), now, 0))
    for i in range(0, len(metrics), 500):
        client.log_batch(parent, metrics=metrics[i : i + 500])
    for path in files.values():
        client.log_artifact(parent, str(path))
    client.set_terminated(parent, status="FINISHED")


def _metric_name(method: str) -> str:
    """MLflow metric names allow no '+': ``metallmix+verify`` -> ``metallmix-verify``."""
    return method.replace("+", "-")


__all__ = [
    "EXPERIMENT",
    "METHODS",
    "CompareSettings",
    "LeakCheck",
    "check_no_leak",
    "finish_mlflow",
    "holdout_kb",
    "run_compare",
    "snapshot_kb",
]
