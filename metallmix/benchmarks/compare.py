"""Head-to-head: a zero-shot recommendation against searches, defaults and halving baselines.

Every method gets the same trainer (:func:`~metallmix.tools.training.runner.run_trial`), the
same search space (the CPU zoo with an epoch cap and optional model / image-size subsets),
the same data caps and the same seeds, and is scored on the same test split:

- ``metallmix``: one recommendation from a KB holding no run of the dataset (checked, and
  the check is part of the report), then one training run of it per seed. The
  configuration is the meta-learner's top candidate (the graph's ``choose="top1"``): the
  LLM only explains it, so ``--no-llm`` skips it without changing any configuration;
- ``random`` / ``tpe`` / ``gp``: an Optuna study of ``budget`` trials per seed, the trial
  with the best validation accuracy selected, its test accuracy reported. TPE and the GP
  draw ``max(3, budget // 4)`` random trials before their model acts
  (:func:`~metallmix.tools.training.search.startup_trials`);
- ``best-default``: the KB configuration with the best mean normalised score (the LODO
  baseline), trained once per seed;
- ``metallmix+verify``: the same recommendation's shortlist, its top ``verify`` candidates
  trained with successive halving (:mod:`metallmix.tools.training.halving`) per seed, the
  winner's test accuracy reported;
- ``random+sh`` / ``best-default+sh``: the same successive halving
  (:func:`~metallmix.tools.training.halving.run_verify`, the same first rung as
  ``metallmix+verify`` at that seed) over ``verify`` other candidates: the first ``verify``
  configurations random search draws with that seed (the first trials of the RS study), or
  the ``verify`` configurations best on average across the KB (no meta-features). They
  answer whether the meta-learned shortlist, not the halving, makes verify's score.

Times are on an equal footing: each method's time to a trained configuration is reported
*cold* (the meta-learner and retrieval index fitted on the leak-free KB snapshot, from an
empty cache) and *warm* (the same call with them cached), and the LLM's time (loading it,
explaining, judging) apart from both. Searches, defaults and halving have no learner to
fit: their cold and warm times are equal.

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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field

from metallmix import config
from metallmix.agents.evidence import ranked_candidates
from metallmix.api import recommend
from metallmix.atomic import atomic_path, write_bytes, write_text
from metallmix.benchmarks.compare_report import HALVING, METHODS, SEARCHES, build_report
from metallmix.benchmarks.lodo import LeakError, best_default, best_defaults
from metallmix.errors import ConfigError, KnowledgeBaseError
from metallmix.graphs.resources import LlmSpec, resolve_llm
from metallmix.tools import tracking
from metallmix.tools.datasets import Dataset, load_dataset
from metallmix.tools.kb.records import Hyperparameters, RunRecord
from metallmix.tools.kb.snapshot import KBSnapshot
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.contracts import Candidate
from metallmix.tools.meta.landmarks import attach_landmarks
from metallmix.tools.meta.search_space import (
    CPU_ZOO_SPACE,
    Choice,
    IntRange,
    SearchSpace,
)
from metallmix.tools.meta.shortlist import (
    FACTS_PER_CANDIDATE,
    ShortlistOptions,
    regime_shortlist,
)
from metallmix.tools.metafeatures import compute_meta_features
from metallmix.tools.training.halving import HalvingSpec, VerifyResult, run_verify
from metallmix.tools.training.runner import RunSpec, run_trial
from metallmix.tools.training.search import SearchSpec, model_based, random_configs, run_search
from metallmix.tools.training.settings import TrialSettings

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
    methods: list[str] = Field(
        default_factory=lambda: list(METHODS), description="methods compared (report order)"
    )

    def checked_methods(self) -> list[str]:
        """``methods`` in report order, or a :class:`ConfigError` naming what is wrong."""
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(
                f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}"
            )
        if "metallmix" not in self.methods:
            raise ConfigError("--methods must include metallmix (every row is compared to it)")
        needs = [m for m in ("random+sh", "best-default+sh") if m in self.methods]
        if needs and "metallmix+verify" not in self.methods:
            raise ConfigError(
                f"--methods {', '.join(needs)} take their first rung from metallmix+verify; "
                "add metallmix+verify"
            )
        return [m for m in METHODS if m in self.methods]

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


# ``--quick``: one seed, budget 10, small caps. Sized so three small datasets (MedMNIST-size
# images, a few hundred training images kept) finish within 30 minutes on 2 idle cores.
QUICK: dict[str, Any] = {
    "budget": 10,
    "n_seeds": 1,
    "epoch_cap": 3,
    "max_train_images": 300,
    "max_val_images": 150,
    "threads": 1,
}
# The defaults without ``--quick`` (what the six-dataset reports used, less their overrides).
FULL: dict[str, Any] = {
    "budget": 10,
    "n_seeds": 3,
    "epoch_cap": 5,
    "max_train_images": None,
    "max_val_images": 200,
    "threads": None,
}
DATASET_SUFFIXES = (".npz", ".csv")


def resolve_settings(
    *,
    quick: bool = False,
    first_seed: int = 0,
    methods: list[str] | None = None,
    **given: Any,
) -> CompareSettings:
    """Settings from command-line options: each of :data:`QUICK`'s keys not given (None)
    takes its ``--quick`` value, or the full default (:data:`FULL`); an option given
    explicitly always wins. Other keyword arguments go to :class:`CompareSettings` as they
    are (``models``, ``image_sizes``, ``verify``...)."""
    base = QUICK if quick else FULL
    values = {k: given.pop(k) if given.get(k) is not None else v for k, v in base.items()}
    given = {k: v for k, v in given.items() if v is not None}
    n_seeds = int(values.pop("n_seeds"))
    settings = CompareSettings(
        seeds=list(range(first_seed, first_seed + n_seeds)),
        **values,
        **given,
        **({"methods": methods} if methods is not None else {}),
    )
    settings.checked_methods()
    return settings


def datasets_in(folder: Path) -> list[Path]:
    """Every dataset in ``folder``, sorted: ``.npz`` files and ``.csv`` manifests (each with
    its ``<name>.json`` card or sidecar beside it, read by the loader) and sub-folders of
    images (ImageFolder). ``.json`` files are cards or sidecars, not datasets; hidden entries
    and ``*.state`` result folders are skipped. Nothing needs to be under ``../shared``."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"--data-dir {folder}: not a folder; give a folder of datasets")
    found = [
        entry
        for entry in sorted(folder.iterdir())
        if not entry.name.startswith(".")
        and not entry.name.endswith(".state")
        and (entry.is_dir() or entry.suffix.lower() in DATASET_SUFFIXES)
    ]
    if not found:
        raise ConfigError(
            f"--data-dir {folder}: no dataset in it (.npz, .csv manifest or a folder of "
            "images per class, each with an optional <name>.json card beside it)"
        )
    return found


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
            self.data = new_state(fingerprint)
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
        save_state(self.path, self.data)


def new_state(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The state of a comparison with no piece finished yet."""
    return {
        "version": STATE_VERSION,
        "settings": fingerprint,
        "datasets": [],
        "parent_run_id": None,
        "runs": {},
        "pieces": {},
    }


def save_state(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def merge_states(into: Path, others: Sequence[Path], settings: CompareSettings) -> list[str]:
    """Copy the finished pieces of other comparisons' state folders into ``into``'s (a new
    one when it has none, for ``settings``), so one command then writes one report: datasets
    split over processes or machines (each run with the same settings and its own
    ``--name``). Returns the keys added.

    Refused, leaving every state as it was: other settings, or a piece both states hold with
    different results. The MLflow runs stay in each comparison's own tracking store."""
    target = into / "state.json"
    data = (
        json.loads(target.read_text())
        if target.is_file()
        else new_state(settings.model_dump(mode="json"))
    )
    added: list[str] = []
    for other in others:
        path = other / "state.json"
        if not path.is_file():
            raise ConfigError(f"{other}: no state.json; give the state folder of a comparison")
        theirs = json.loads(path.read_text())
        if theirs.get("settings") != data.get("settings"):
            raise ConfigError(
                f"{other} was run with other settings ({theirs.get('settings')}) than {into} "
                f"({data.get('settings')}); only comparisons with the same settings merge"
            )
        for key, value in theirs.get("pieces", {}).items():
            mine = data["pieces"].get(key)
            if mine is not None and mine != value:
                raise ConfigError(
                    f"piece {key!r} is in both {into} and {other} with different results; "
                    "keep one of them (delete the piece from the other state.json)"
                )
            if mine is None:
                data["pieces"][key] = value
                added.append(key)
        for name in theirs.get("datasets", []):
            if name not in data["datasets"]:
                data["datasets"].append(name)
    into.mkdir(parents=True, exist_ok=True)
    save_state(target, data)
    return added


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
        use_llm: bool = True,
    ) -> None:
        self.backend = backend  # an ExecutionBackend for search trials; None = in-process
        self.use_llm = use_llm
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
    def _tracked(self, run_id: object) -> bool:
        """Whether the tracking store still holds ``run_id``. A comparison resumed on
        another machine, or after the store was wiped, keeps its finished pieces (the state
        file) and opens new MLflow runs instead of failing on the old ids."""
        if not run_id:
            return False
        try:
            self.client.get_run(str(run_id))
        except MlflowException:
            return False
        return True

    def parent(self, label: str) -> str:
        run_id = self.state.data.get("parent_run_id")
        if self._tracked(run_id):
            self.client.update_run(str(run_id), status="RUNNING")
            return str(run_id)
        if run_id:  # the store lost it: every recorded run id is stale
            self.state.data["runs"] = {}
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
        if existing and self._tracked(existing):
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

    def trial_settings(self, parallel: int | None = None) -> TrialSettings:
        """How every method's runs train: the same caps and threads; searches and halving on
        the comparison's backend (a single run always trains here)."""
        return TrialSettings(
            max_train_images=self.settings.max_train_images,
            max_val_images=self.settings.max_val_images,
            threads=self.settings.threads,
            backend=self.backend,
            parallel=parallel,
        )

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
            RunSpec(
                model=model,
                hp=hp,
                seed=seed,
                experiment=EXPERIMENT,
                parent_run_id=parent,
                pretrained=self.space.is_pretrained(model),
                tags={"metallmix.compare": tag},
                run_name=f"{tag}:s{seed}",
            ),
            kb=None,
            settings=self.trial_settings(),
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

    def recommendation(
        self, dataset: Dataset, kb_path: Path, parent: str, tmp: Path
    ) -> dict[str, Any]:
        """The zero-shot pick, timed cold (meta-learner and retrieval index fitted on the
        held-out KB from an empty cache), warm (the same call, now cached) and, apart, the
        LLM's explanation (loading it included); ``--no-llm`` leaves the LLM out, which
        changes no configuration: the pick is the top-scored candidate either way."""
        key = f"{dataset.name}/metallmix/recommendation"
        found = self.cached(key)
        if found is not None:
            return found
        seed = self.settings.seeds[0]
        kb = self.heldout(dataset, kb_path)
        started = time.perf_counter()
        view = _train_view(dataset, self.settings.max_train_images, seed)
        mf, _, _ = attach_landmarks(compute_meta_features(view), view)
        mf_seconds = time.perf_counter() - started
        # Every method here trains on this CPU: learn only from the KB's CPU-regime runs.
        snapshot = KBSnapshot.of(kb)  # read before the clock starts, as the graph does
        cache = tmp / f"cache-{dataset.name}"  # empty: the first call fits, the second loads
        shortlist, cold = _timed_shortlist(mf, snapshot, self.settings, self.space, seed, cache)
        again, warm = _timed_shortlist(mf, snapshot, self.settings, self.space, seed, cache)
        same = _configs(again.candidates) == _configs(shortlist.candidates)  # reported
        shortlist_seconds = mf_seconds + cold
        child = self.child(f"{dataset.name}/metallmix", parent, f"{dataset.name}:metallmix")
        llm_fields: dict[str, Any] = {
            "llm": None,
            "fallback": None,
            "llm_load_seconds": None,
            "llm_seconds": None,
            "explain_seconds": None,
            "llm_total_seconds": None,
            "recommendation_run_id": None,
        }
        if self.use_llm:
            loading = time.perf_counter()
            llm = self.llm()
            llm_load_seconds = time.perf_counter() - loading
            explaining = time.perf_counter()
            # the graph's explanation reuses the learner fitted above; the user's last answer
            # (the next recommend's KB-change notice) is not the benchmark's business
            with _cache_at(cache), keep_last_answer():
                rec = recommend(
                    None, llm=llm, kb=kb, seed=seed, shortlist=shortlist, name=dataset.name
                )
            explain_seconds = time.perf_counter() - explaining
            self.space.check(rec.model, rec.hyperparameters)
            model, hp = rec.model, rec.hyperparameters
            candidate_id, expected = rec.candidate_id, rec.expected_accuracy
            llm_seconds = None
            if rec.mlflow_run_id:
                self.client.set_tag(child, "metallmix.recommendation_run_id", rec.mlflow_run_id)
                run = self.client.get_run(rec.mlflow_run_id)
                llm_seconds = run.data.metrics.get("llm_seconds")
            llm_fields = {
                "llm": rec.llm,
                "fallback": rec.fallback,
                "llm_load_seconds": llm_load_seconds,
                "llm_seconds": llm_seconds,
                "explain_seconds": explain_seconds,
                "llm_total_seconds": llm_load_seconds + explain_seconds,
                "recommendation_run_id": rec.mlflow_run_id,
            }
        else:
            top = ranked_candidates(shortlist)[0]  # what choose="top1" explains
            self.space.check(top.model, top.hyperparameters)
            model, hp = top.model, top.hyperparameters
            candidate_id, expected = top.candidate_id, top.predicted_accuracy
        seconds = shortlist_seconds + (llm_fields["explain_seconds"] or 0.0)
        self.client.log_metric(child, "config_seconds", seconds)
        self.client.log_metric(child, "cold_seconds", mf_seconds + cold)
        self.client.log_metric(child, "warm_seconds", mf_seconds + warm)
        return self.done(
            key,
            {
                "seconds": seconds,
                "meta_features_seconds": mf_seconds,
                "shortlist_seconds": shortlist_seconds,
                "shortlist_cold_seconds": cold,
                "shortlist_warm_seconds": warm,
                "cold_seconds": mf_seconds + cold,
                "warm_seconds": mf_seconds + warm,
                "warm_same_shortlist": same,
                **llm_fields,
                "model": model,
                "hyperparameters": hp.model_dump(mode="json"),
                "expected_accuracy": expected,
                "candidate_id": candidate_id,
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
        pool = self._default_pool(dataset, kb)
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
        search = SearchSpec(
            sampler=sampler,
            trials=self.settings.budget,
            seed=seed,
            space=self.space,
            storage=self.state_dir / "optuna.sqlite",
            study_name=f"{dataset.name}-{sampler}-s{seed}",
            experiment=EXPERIMENT,
        )
        # TPE / GP one trial at a time, so their sequence is the in-process one; random
        # search does not depend on results and runs as wide as the backend allows.
        settings = self.trial_settings(parallel=1 if model_based(sampler) else None)
        result = run_search(dataset, search, kb=None, settings=settings)
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
        result = self._halve(
            dataset,
            "metallmix+verify",
            candidates,
            str(rec["candidate_id"]),
            seed,
            parent,
            study=f"{dataset.name}-verify-s{seed}",  # the name states before issue 28 used
            kb_records=list(kb.iter_records()),
        )
        shortlist_seconds = rec.get("shortlist_seconds") or 0.0
        spent = result.seconds_spent
        cold = rec.get("cold_seconds", shortlist_seconds)
        warm = rec.get("warm_seconds", shortlist_seconds)
        return self.done(
            key,
            {
                **_halving_fields(result, seed),
                "config_seconds": shortlist_seconds + spent,
                "config_seconds_with_llm": (rec.get("seconds") or 0.0) + spent,
                "cold_seconds": cold + spent,
                "warm_seconds": warm + spent,
            },
        )

    def halved_baseline(
        self,
        dataset: Dataset,
        method: str,
        kb_path: Path,
        verified: dict[str, Any],
        seed: int,
        parent: str,
    ) -> dict[str, Any]:
        """``random+sh`` or ``best-default+sh``: the halving ``metallmix+verify`` ran at this
        seed (same code, same first rung, same K) over random or generic candidates."""
        key = f"{dataset.name}/{method}/s{seed}"
        found = self.cached(key)
        if found is not None:
            return found
        k = self.settings.verify
        started = time.perf_counter()
        if method == "random+sh":
            # The first K configurations the RS study with this seed draws (its first trials).
            candidates = [
                _baseline_candidate(f"r{i}", model, hp, self.space, k, i, f"random:trial{n}")
                for i, (n, model, hp) in enumerate(random_configs(self.space, k, seed), 1)
            ]
        elif method == "best-default+sh":
            kb = self.heldout(dataset, kb_path)
            picked = best_defaults(self._default_pool(dataset, kb), k)
            candidates = [
                _baseline_candidate(
                    f"d{i}", r.model, r.hyperparameters, self.space, k, i, f"kb-default:{r.run_id}"
                )
                for i, r in enumerate(picked, 1)
            ]
        else:  # pragma: no cover - callers pass one of the two
            raise ConfigError(f"no halving baseline called {method!r}")
        setup = time.perf_counter() - started
        rung = int(verified["first_rung_epochs"])
        result = self._halve(
            dataset,
            method,
            candidates,
            candidates[0].candidate_id,
            seed,
            parent,
            study=f"{dataset.name}-{method.replace('+', '-')}-s{seed}",
            first_rung_epochs=rung,
        )
        spent = setup + result.seconds_spent
        return self.done(
            key,
            {
                **_halving_fields(result, seed),
                "first_rung_from": "metallmix+verify",
                "setup_seconds": setup,
                "config_seconds": spent,
                "cold_seconds": spent,
                "warm_seconds": spent,
                "candidates": [
                    {"candidate_id": c.candidate_id, "model": c.model, "origin": c.origin}
                    for c in candidates
                ],
            },
        )

    def _halve(
        self,
        dataset: Dataset,
        method: str,
        candidates: list[Candidate],
        zero_shot_id: str,
        seed: int,
        parent: str,
        *,
        study: str,
        kb_records: list[RunRecord] | None = None,
        first_rung_epochs: int | None = None,
    ) -> VerifyResult:
        """One successive-halving run (:func:`run_verify`) under the method's MLflow run."""
        child = self.child(f"{dataset.name}/{method}", parent, f"{dataset.name}:{method}")
        halving = HalvingSpec(
            k=self.settings.verify,
            seed=seed,
            first_rung_epochs=first_rung_epochs,
            space=self.space,
            storage=self.state_dir / "optuna.sqlite",
            study_name=study,
            experiment=EXPERIMENT,
            parent_run_id=child,
        )
        settings = self.trial_settings()
        return run_verify(
            dataset,
            candidates,
            zero_shot_id=zero_shot_id,
            halving=halving,
            settings=settings,
            kb=None,
            kb_records=kb_records,
        )

    def _default_pool(self, dataset: Dataset, kb: SQLiteKnowledgeBase) -> list[RunRecord]:
        """The held-out KB's finished runs inside the compared space (best-default's pool)."""
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
        return pool

    def _shortlist(self, dataset: Dataset, kb: SQLiteKnowledgeBase) -> list[Any]:
        seed = self.settings.seeds[0]
        view = _train_view(dataset, self.settings.max_train_images, seed)
        mf, _, _ = attach_landmarks(compute_meta_features(view), view)
        shortlist = regime_shortlist(  # CPU-regime runs only, as in metallmix_config
            mf, kb, "cpu", n=self.settings.n_candidates, space=self.space, seed=seed
        )
        return list(shortlist.candidates)


def _baseline_candidate(
    cid: str, model: str, hp: Hyperparameters, space: SearchSpace, k: int, rank: int, origin: str
) -> Candidate:
    """A halving baseline's configuration in the shape :func:`run_verify` takes: no
    prediction (0), ranked in the order given (the first is its "zero-shot" pick)."""
    return Candidate(
        candidate_id=cid,
        model=model,
        pretrained=space.is_pretrained(model),
        hyperparameters=hp,
        predicted_accuracy=0.0,
        accuracy_low=0.0,
        accuracy_high=0.0,
        score=float(k - rank),
        origin=origin,
    )


def _halving_fields(result: VerifyResult, seed: int) -> dict[str, Any]:
    """A successive-halving piece: the winner's scores and how it was reached."""
    winner = result.winner
    final = (winner.final or winner.best_known) if winner is not None else None
    return {
        "seed": seed,
        "verify_seconds": result.seconds_spent,
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
        "test_balanced_accuracy": final.test_balanced_accuracy if final is not None else None,
        "train_seconds": final.train_seconds if final is not None else None,
        "mlflow_run_id": final.mlflow_run_id if final is not None else None,
        "study": result.study_name,
        "verify_run_id": result.mlflow_run_id,
    }


@contextlib.contextmanager
def keep_last_answer() -> Iterator[None]:
    """The workspace's ``last_answer.json`` as it was before the block. A benchmark's
    recommendations on leak-free KB copies must not become the user's last answer: the
    next real ``recommend`` would announce a hundred "new runs" against a temporary KB."""
    from metallmix.kb_changes import last_answer_path

    path = last_answer_path()
    before = path.read_bytes() if path.is_file() else None
    try:
        yield
    finally:
        if before is not None:
            write_bytes(path, before)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _cache_at(path: Path) -> Iterator[None]:
    """``METALLMIX_CACHE`` pointed at ``path`` for the block: the recommendation graph finds
    the meta-learner the timed shortlist fitted there instead of fitting its own."""
    before = os.environ.get("METALLMIX_CACHE")
    os.environ["METALLMIX_CACHE"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("METALLMIX_CACHE", None)
        else:
            os.environ["METALLMIX_CACHE"] = before


def _timed_shortlist(
    mf: Any, kb: Any, settings: CompareSettings, space: SearchSpace, seed: int, cache: Path
) -> tuple[Any, float]:
    """The CPU-regime shortlist (with its SHAP facts, as the graph explains it) and its wall
    time, its learner and index kept in ``cache``."""
    started = time.perf_counter()
    shortlist = regime_shortlist(
        mf,
        kb,
        "cpu",
        n=settings.n_candidates,
        space=space,
        seed=seed,
        options=ShortlistOptions(facts_per_candidate=FACTS_PER_CANDIDATE, cache=cache),
    )
    return shortlist, time.perf_counter() - started


def _configs(candidates: Sequence[Candidate]) -> list[str]:
    return [
        json.dumps([c.model, c.hyperparameters.model_dump(mode="json")], sort_keys=True)
        for c in candidates
    ]


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
    methods = settings.checked_methods()
    # leak check, recommendation, best-default's configuration; per seed one piece a method
    per_dataset = 3 + len(settings.seeds) * len(methods)
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
    use_llm: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the comparison and return the report (see :mod:`.compare_report`).

    ``backend`` (an :class:`~metallmix.tools.training.backends.ExecutionBackend`) runs the
    search trials and halving runs, e.g. on Ray; ``None`` runs everything in this process.
    ``use_llm=False`` makes the zero-shot pick without the LLM (the same configuration:
    the LLM only explains the top candidate), so no LLM time is spent or reported.

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
    settings.space()  # validate the caps and methods before anything runs
    settings.checked_methods()
    state_dir.mkdir(parents=True, exist_ok=True)
    state = CompareState(state_dir / "state.json", settings, names)
    snapshot = state_dir / "kb.sqlite"
    source = Path(kb).expanduser() if kb is not None else default_kb_path()
    if not snapshot.is_file():
        snapshot_kb(Path(str(source).removeprefix("sqlite:///")), snapshot)
        state.data["kb_source"] = str(source)
        state.save()
    records = list(SQLiteKnowledgeBase(snapshot, read_only=True).iter_records())
    run = _Run(state, state_dir, llm, on_piece, backend=backend, use_llm=use_llm)
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
    methods = run.settings.checked_methods()
    kb_path = run.holdout(dataset, records, tmp)
    rec = run.recommendation(dataset, kb_path, parent, tmp)
    default = run.default_config(dataset, kb_path, parent)
    for seed in run.settings.seeds:
        run.trained(dataset, "metallmix", rec, seed, parent)
    if "best-default" in methods:
        for seed in run.settings.seeds:
            run.trained(dataset, "best-default", default, seed, parent)
    for sampler in (m for m in SEARCHES if m in methods):
        for seed in run.settings.seeds:
            run.search(dataset, sampler, seed, parent)
    if "metallmix+verify" not in methods:
        return
    for seed in run.settings.seeds:
        verified = run.verified(dataset, rec, kb_path, seed, parent)
        for method in (m for m in HALVING if m in methods):
            run.halved_baseline(dataset, method, kb_path, verified, seed, parent)


def finish_mlflow(report: dict[str, Any], files: dict[str, Path]) -> None:
    """Summary metrics and the report files on the parent run, then mark it FINISHED."""
    client = tracking.client()
    parent = report["mlflow_parent_run_id"]
    now = int(time.time() * 1000)
    metrics: list[Any] = []
    for name, entry in report["datasets"].items():
        for method, row in entry["methods"].items():
            for field in (
                "test_accuracy_mean",
                "test_balanced_accuracy_mean",
                "config_seconds",
                "cold_seconds",
                "warm_seconds",
                "llm_seconds",
                "train_seconds_mean",
            ):
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
    "QUICK",
    "CompareSettings",
    "LeakCheck",
    "check_no_leak",
    "datasets_in",
    "finish_mlflow",
    "holdout_kb",
    "resolve_settings",
    "run_compare",
    "snapshot_kb",
]
