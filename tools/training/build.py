"""Build a knowledge base from real training runs on real datasets and derived tasks.

The plan (:func:`learning_plan`) is made for a regime that learns on 2 CPU cores: whole
training splits, all validation images, early stopping on validation balanced accuracy,
small from-scratch CNNs at 28-32 px, and the pretrained EfficientNet-Lite family at
64-128 px, mostly as linear probes on frozen features that are computed once per image and
shared by every probe (:class:`~metallmix.tools.training.trainer.FeatureCache`).

Derived tasks follow ZAP (Ozturk et al., 2022): class subsets, training-set subsamples and
lower resolutions of each source dataset, so a handful of datasets yields many meta-training
points with different meta-features. Each (task, model, hyperparameters, seed) trial has a
stable key stored in its record, which makes a build resumable: trials already in the KB
are skipped, and a killed build loses at most the trial in flight.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from metallmix.errors import ConfigError, DatasetError
from metallmix.tools.datasets import Dataset, load_dataset
from metallmix.tools.kb.records import Hyperparameters, RunRecord
from metallmix.tools.kb.store import KnowledgeBase
from metallmix.tools.meta.search_space import (
    CPU_ZOO_SPACE,
    Choice,
    FloatRange,
    IntRange,
    SearchSpace,
)
from metallmix.tools.metafeatures import MetaFeatures
from metallmix.tools.training.distributed import TrialJob, TrialRunner
from metallmix.tools.training.runner import RunSpec, compute_meta_features
from metallmix.tools.training.settings import TrialSettings
from metallmix.tools.training.trainer import FeatureCache

TRIAL_KEY_TAG = "metallmix.trial_key"
BUILD_EXPERIMENT = "metallmix-kb-build"

# The zoo minus efficientnet_b0 and resnet18 (2-3x slower than the rest on CPU at these
# sizes, see bench/train_throughput.py), epochs and sizes capped so a run takes seconds.
# A sub-space of CPU_ZOO_SPACE: every built configuration is inside the recommender's space.
SLOW_MODELS = ("efficientnet_b0", "resnet18")
BUILD_SPACE: SearchSpace = CPU_ZOO_SPACE.model_copy(
    update={
        "name": "cpu-zoo-build",
        "models": [
            m
            for m in CPU_ZOO_SPACE.models
            if m not in SLOW_MODELS and m not in CPU_ZOO_SPACE.pretrained_models
        ],
        "pretrained_models": [],
        "model_params": {},
        "params": {
            **CPU_ZOO_SPACE.params,
            "epochs": IntRange(low=3, high=5),
            "image_size": Choice(values=[28, 32]),
        },
    }
)

# Smallest image size each model can run at (feature maps must not vanish).
MIN_SIZE = {"convnext_atto": 32}

# From-scratch runs of the learning plan: whole splits at 28-32 px, enough epochs for early
# stopping (patience 3) to end them, learning rates that train these nets, both losses.
SCRATCH_SPACE: SearchSpace = BUILD_SPACE.model_copy(
    update={
        "name": "cpu-zoo-build-scratch",
        "models": [
            m
            for m in BUILD_SPACE.models
            if m not in CPU_ZOO_SPACE.pretrained_models and m != "resnet10t"
        ],
        "pretrained_models": [],
        "model_params": {},
        "params": {
            **BUILD_SPACE.params,
            "lr": FloatRange(low=3e-4, high=1e-2, log=True),
            "epochs": IntRange(low=6, high=12),
            "image_size": Choice(values=[28, 32]),
        },
    }
)

# Linear probes of the pretrained EfficientNet-Lite models (no augmentation: the features
# are computed once per image). Lite1/2 only at 64 px to bound feature extraction on 2 cores.
_PROBE_COMMON = {
    **CPU_ZOO_SPACE.params,
    "finetune": Choice(values=["linear_probe"]),
    "augmentation": Choice(values=["none"]),
    "epochs": IntRange(low=10, high=40),
    "dropout": FloatRange(low=0.0, high=0.5),
}
PROBE_SPACE: SearchSpace = CPU_ZOO_SPACE.model_copy(
    update={
        "name": "cpu-zoo-build-probe",
        "models": list(CPU_ZOO_SPACE.pretrained_models),
        "params": _PROBE_COMMON,
        "model_params": {
            "efficientnet_lite0": {"image_size": Choice(values=[64, 96, 128])},
            "efficientnet_lite1": {"image_size": Choice(values=[64])},
            "efficientnet_lite2": {"image_size": Choice(values=[64])},
        },
    }
)

# Fine-tuning the last stages costs a forward pass of the whole net per image and epoch:
# only on small tasks, at 64 px, for a few epochs.
LAST_STAGES_SPACE: SearchSpace = PROBE_SPACE.model_copy(
    update={
        "name": "cpu-zoo-build-last-stages",
        "models": ["efficientnet_lite0"],
        "params": {
            **_PROBE_COMMON,
            "finetune": Choice(values=["last_stages"]),
            "augmentation": Choice(values=["none", "light"]),
            "epochs": IntRange(low=3, high=6),
            "lr": FloatRange(low=1e-4, high=3e-3, log=True),
        },
        "model_params": {"efficientnet_lite0": {"image_size": Choice(values=[64])}},
    }
)
LAST_STAGES_MAX_TRAIN = 600

# Full fine-tuning of EfficientNet-Lite0/1 on the same small tasks, at 64-128 px, 3-8 epochs
# with early stopping, AdamW at the small learning rates full fine-tuning needs. The recommender's
# space offers ``full``; without such runs in the KB the meta-learner can never predict it,
# though random search finds it best on several medical datasets (issue 12's comparison).
FULL_SPACE: SearchSpace = PROBE_SPACE.model_copy(
    update={
        "name": "cpu-zoo-build-full",
        "models": ["efficientnet_lite0", "efficientnet_lite1"],
        "params": {
            **_PROBE_COMMON,
            "finetune": Choice(values=["full"]),
            "optimizer": Choice(values=["adamw"]),
            "augmentation": Choice(values=["none", "light"]),
            "epochs": IntRange(low=3, high=8),
            "lr": FloatRange(low=1e-4, high=3e-3, log=True),
        },
        "model_params": {
            "efficientnet_lite0": {"image_size": Choice(values=[64, 96, 128])},
            "efficientnet_lite1": {"image_size": Choice(values=[64, 96, 128])},
        },
    }
)


class TaskSpec(BaseModel):
    """One meta-training task: a source dataset, optionally narrowed and downsampled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="dataset stem, e.g. 'breastmnist'")
    classes: list[int] | None = None
    train_limit: int | None = Field(default=None, ge=10)
    resolution: int | None = Field(default=None, ge=8)

    @property
    def name(self) -> str:
        parts = [self.source]
        if self.classes is not None:
            parts.append("c" + "+".join(str(c) for c in self.classes))
        if self.train_limit is not None:
            parts.append(f"n{self.train_limit}")
        if self.resolution is not None:
            parts.append(f"r{self.resolution}")
        return "/".join(parts)


def _t(
    source: str, classes: list[int] | None = None, n: int | None = None, r: int | None = None
) -> TaskSpec:
    return TaskSpec(source=source, classes=classes, train_limit=n, resolution=r)


# 20 tasks over the six medical datasets; training sets capped at 300 images so that one
# run takes seconds on a shared 2-core CPU (breastmnist, 546 images, is kept whole).
DEFAULT_TASKS: tuple[TaskSpec, ...] = (
    _t("breastmnist"),
    _t("breastmnist", n=150),
    _t("pneumoniamnist_mod", n=300),
    _t("pneumoniamnist_mod", n=150),
    _t("pneumoniamnist_mod", n=250, r=14),
    _t("brain_tumor_mri", n=300),
    _t("brain_tumor_mri", n=150),
    _t("brain_tumor_mri", classes=[0, 1], n=250),
    _t("brain_tumor_mri", n=250, r=28),
    _t("covid_ct", n=300),
    _t("covid_ct", n=150),
    _t("covid_ct", n=250, r=28),
    _t("knee_oa_kl", n=300),
    _t("knee_oa_kl", classes=[0, 2, 4], n=250),
    _t("knee_oa_kl", classes=[0, 4], n=200),
    _t("knee_oa_kl", n=250, r=28),
    _t("lc25000_lung", n=300),
    _t("lc25000_lung", n=150),
    _t("lc25000_lung", classes=[1, 2], n=250),
    _t("lc25000_lung", n=250, r=28),
)


# The learning plan's tasks: every dataset whole, ZAP-style subsamples, class subsets and
# lower resolutions (33 tasks). Validation and test splits are always kept whole.
LEARNING_TASKS: tuple[TaskSpec, ...] = (
    _t("breastmnist"),
    _t("breastmnist", n=200),
    _t("pneumoniamnist_mod"),
    _t("pneumoniamnist_mod", n=500),
    _t("pneumoniamnist_mod", n=200),
    _t("pneumoniamnist_mod", n=1000, r=14),
    _t("brain_tumor_mri"),
    _t("brain_tumor_mri", n=500),
    _t("brain_tumor_mri", n=200),
    _t("brain_tumor_mri", classes=[0, 1]),
    _t("brain_tumor_mri", classes=[1, 2], n=300),
    _t("brain_tumor_mri", n=1000, r=28),
    _t("covid_ct"),
    _t("covid_ct", n=500),
    _t("covid_ct", n=200),
    _t("covid_ct", n=1000, r=28),
    _t("knee_oa_kl"),
    _t("knee_oa_kl", n=1000),
    _t("knee_oa_kl", n=500),
    _t("knee_oa_kl", n=200),
    _t("knee_oa_kl", classes=[0, 2, 4]),
    _t("knee_oa_kl", classes=[0, 4]),
    _t("knee_oa_kl", classes=[0, 4], n=300),
    _t("knee_oa_kl", classes=[0, 1]),
    _t("knee_oa_kl", n=1000, r=28),
    _t("lc25000_lung"),
    _t("lc25000_lung", n=500),
    _t("lc25000_lung", n=200),
    _t("lc25000_lung", classes=[1, 2]),
    _t("lc25000_lung", classes=[0, 1], n=300),
    _t("lc25000_lung", n=1000, r=28),
    _t("breastmnist", r=14),
    _t("covid_ct", classes=[0, 1], n=300, r=32),
)


@dataclass(frozen=True)
class Trial:
    """One planned run of the build."""

    task: TaskSpec
    model: str
    hp: Hyperparameters
    seed: int
    pretrained: bool = False

    @property
    def key(self) -> str:
        parts: list[object] = [self.task.name, self.model, self.hp.model_dump(mode="json")]
        parts.append(self.seed)
        if self.pretrained:  # from-scratch keys stay those of earlier builds
            parts.append("pretrained")
        payload = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _fit_size(model: str, hp: Hyperparameters) -> Hyperparameters:
    low = MIN_SIZE.get(model)
    if low is not None and hp.image_size is not None and hp.image_size < low:
        return hp.model_copy(update={"image_size": low})
    return hp


def plan(
    tasks: Iterable[TaskSpec],
    configs_per_task: int,
    *,
    space: SearchSpace = BUILD_SPACE,
    seed: int = 0,
) -> list[Trial]:
    """Seeded configurations for every task; the same arguments always give the same plan.

    Trials are interleaved task by task (round-robin) so a partial build still covers every
    task instead of finishing the first few.
    """
    if configs_per_task < 1:
        raise ConfigError(f"configs per task must be at least 1, got {configs_per_task}")
    per_task: list[list[Trial]] = []
    for task in tasks:
        task_seed = zlib.crc32(f"{task.name}:{seed}".encode())
        sampled = space.sample(configs_per_task, seed=task_seed)
        per_task.append(
            [
                Trial(task, model, _fit_size(model, hp), seed + i)
                for i, (model, hp) in enumerate(sampled)
            ]
        )
    out: list[Trial] = []
    for i in range(configs_per_task):
        out.extend(trials[i] for trials in per_task if i < len(trials))
    return out


def learning_plan(
    tasks: Iterable[TaskSpec],
    *,
    scratch_per_task: int = 4,
    probes_per_task: int = 9,
    last_stages_per_task: int = 1,
    full_per_task: int = 2,
    seed: int = 0,
    small_tasks: set[str] | None = None,
) -> list[Trial]:
    """The learning regime's trials: probes, from-scratch runs and (small tasks) last-stages
    and full fine-tunes.

    Seeded like :func:`plan` and interleaved task by task, pretrained probes first in each
    round (they are cheapest), so a partial build covers every task with both kinds.
    ``small_tasks`` names the tasks cheap enough for fine-tuning (default: those with a
    ``train_limit`` of at most :data:`LAST_STAGES_MAX_TRAIN`, and breastmnist). Each kind
    draws from its own seed, so adding a kind (or more of one) keeps every earlier trial key.
    """
    tasks = list(tasks)
    if small_tasks is None:
        small_tasks = {
            t.name
            for t in tasks
            if (t.train_limit is not None and t.train_limit <= LAST_STAGES_MAX_TRAIN)
            or (t.source == "breastmnist" and t.resolution is None)
        }
    rounds: list[list[Trial]] = []
    for task in tasks:
        base = zlib.crc32(f"{task.name}:{seed}".encode())
        probes = [
            Trial(task, m, _fit_size(m, hp), seed + 100 + i, pretrained=True)
            for i, (m, hp) in enumerate(PROBE_SPACE.sample(probes_per_task, seed=base + 1))
        ]
        scratch = [
            Trial(task, m, _fit_size(m, hp), seed + i)
            for i, (m, hp) in enumerate(SCRATCH_SPACE.sample(scratch_per_task, seed=base + 2))
        ]
        last: list[Trial] = []
        full: list[Trial] = []
        if task.name in small_tasks:
            last = [
                Trial(task, m, hp, seed + 200 + i, pretrained=True)
                for i, (m, hp) in enumerate(
                    LAST_STAGES_SPACE.sample(last_stages_per_task, seed=base + 3)
                )
            ]
            full = [
                Trial(task, m, hp, seed + 300 + i, pretrained=True)
                for i, (m, hp) in enumerate(FULL_SPACE.sample(full_per_task, seed=base + 4))
            ]
        # one task's trials in the order: probe, scratch, probe, probe, scratch, ...
        mixed: list[Trial] = []
        queues = [probes, scratch, last, full]
        weights = [len(q) for q in queues]
        while any(queues):
            for q, w in zip(queues, weights, strict=True):
                take = max(1, round(w / max(1, min(x for x in weights if x)))) if q else 0
                mixed.extend(q[:take])
                del q[:take]
        rounds.append(mixed)
    out: list[Trial] = []
    for i in range(max((len(r) for r in rounds), default=0)):
        out.extend(r[i] for r in rounds if i < len(r))
    return out


def resolve_sources(paths: Iterable[str | Path]) -> dict[str, Path]:
    """Dataset stem -> file, refusing duplicates and missing files with the path named."""
    out: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise DatasetError(f"{path}: no such dataset file; check --datasets")
        stem = path.stem if path.is_file() else path.name
        if stem in out:
            raise DatasetError(f"two datasets are both called {stem!r}: {out[stem]} and {path}")
        out[stem] = path
    return out


def default_tasks_for(sources: dict[str, Path]) -> list[TaskSpec]:
    """The learning tasks whose source is present, plus a plain task for any other dataset."""
    tasks = [t for t in LEARNING_TASKS if t.source in sources]
    known = {t.source for t in LEARNING_TASKS}
    tasks.extend(_t(stem, n=1000) for stem in sources if stem not in known)
    return tasks


class TaskCache:
    """Loaded source datasets and derived tasks with their meta-features, built once each."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources
        self._datasets: dict[str, Dataset] = {}
        self._tasks: dict[str, tuple[Dataset, MetaFeatures]] = {}

    def source(self, stem: str) -> Dataset:
        if stem not in self._datasets:
            if stem not in self.sources:
                raise DatasetError(
                    f"task needs dataset {stem!r} but --datasets has only {sorted(self.sources)}"
                )
            self._datasets[stem] = load_dataset(self.sources[stem])
        return self._datasets[stem]

    def task(self, spec: TaskSpec) -> tuple[Dataset, MetaFeatures]:
        if spec.name not in self._tasks:
            base = self.source(spec.source)
            limit = spec.train_limit
            if limit is not None and limit >= len(base.split("train")):
                limit = None
            if spec.classes is not None or limit is not None:
                ds = base.subset(classes=spec.classes, train_limit=limit, seed=0, name=spec.name)
            else:
                ds = Dataset(
                    name=spec.name,
                    class_names=base.class_names,
                    splits=base.splits,
                    modality=base.modality,
                    source_info=base.source_info,
                    path=base.path,
                    format=base.format,
                )
            mf = compute_meta_features(ds)
            if spec.resolution is not None:
                side = float(spec.resolution)
                mf = mf.model_copy(update={"resolution_h": side, "resolution_w": side})
            self._tasks[spec.name] = (ds, mf)
        return self._tasks[spec.name]


def done_keys(kb: KnowledgeBase) -> set[str]:
    """Trial keys already recorded in ``kb``."""
    keys: set[str] = set()
    for record in kb.iter_records():
        key = record.provenance.notes.get(TRIAL_KEY_TAG)
        if isinstance(key, str):
            keys.add(key)
    return keys


@dataclass
class BuildEvent:
    """Reported after each trial: what ran, how it ended, where the build stands."""

    trial: Trial
    record: RunRecord | None
    error: str | None
    done: int
    total: int


BUILD_SETTINGS = TrialSettings(threads=1, max_val_images=200)


def build(
    kb: KnowledgeBase,
    trials: list[Trial],
    sources: dict[str, Path],
    *,
    settings: TrialSettings = BUILD_SETTINGS,
    experiment: str = BUILD_EXPERIMENT,
    shard: tuple[int, int] = (0, 1),
    on_trial: Callable[[BuildEvent], None] | None = None,
) -> Iterator[BuildEvent]:
    """Run every trial of ``trials`` not yet in ``kb``; yields one event per trial run.

    ``shard=(i, n)`` runs only trials ``i, i+n, ...`` so ``n`` processes can share a build;
    a trial another process has recorded meanwhile is skipped, so two processes may also walk
    the same plan from both ends.
    A trial that fails with a user-facing error (model cannot run at a size, ...) is
    reported and skipped; the build goes on. ``settings.backend`` (see
    :mod:`metallmix.tools.training.backends`) runs the trials elsewhere, events then come
    in completion order; ``None`` keeps them in this process, one after the other. A trial
    whose worker died ``max_retries + 1`` times is reported with an error and left out of
    the KB, so re-running the build retries it. ``settings.track=False`` records the runs in
    the KB only, not in MLflow. A task's own ``train_limit`` caps its training images, so
    ``settings.max_train_images`` is best left unset here.
    """
    index, count = shard
    if not 0 <= index < count:
        raise ConfigError(f"shard index {index} is not in 0..{count - 1}")
    settings = settings.resolved()  # the store is checked before the first trial, not after
    if settings.feature_cache is None:
        settings = settings.replace(feature_cache=FeatureCache())
    runner = TrialRunner(settings, kb=kb)
    recorded = done_keys(kb)
    planned: set[str] = set()
    todo: list[Trial] = []
    for i, trial in enumerate(trials):
        if i % count == index and trial.key not in recorded and trial.key not in planned:
            planned.add(trial.key)
            todo.append(trial)
    cache = TaskCache(sources)
    shipped: dict[str, Any] = {}
    queue = deque(todo)
    ended = 0
    seen = len(kb)

    def next_job() -> tuple[Trial, TrialJob, Any] | None:
        nonlocal ended, seen, recorded
        while queue:
            trial = queue.popleft()
            if len(kb) != seen:  # another process on the same KB (e.g. --reverse) did some
                seen = len(kb)
                recorded = done_keys(kb)
            if trial.key in recorded:
                ended += 1
                continue
            name = trial.task.name
            if name not in shipped:
                shipped[name] = runner.ship(*cache.task(trial.task))
            spec = RunSpec(
                model=trial.model,
                hp=trial.hp,
                seed=trial.seed,
                experiment=experiment,
                source_resolution=trial.task.resolution,
                dataset_group=trial.task.source,
                tags={TRIAL_KEY_TAG: trial.key, "metallmix.task": name},
                pretrained=trial.pretrained,
                live_metrics=False,
            )
            job = runner.job(trial.key, spec)
            return trial, job, shipped[name]
        return None

    for finished in runner.run(next_job, runner.width()):
        ended += 1
        if finished.record is not None:  # our own row: no reason to re-read the KB
            recorded.add(finished.payload.key)
            seen += 1
        error = finished.error
        if finished.lost is not None:
            error = f"worker lost on all {finished.attempts} attempt(s): {finished.lost}"
        event = BuildEvent(finished.payload, finished.record, error, ended, len(todo))
        if on_trial is not None:
            on_trial(event)
        yield event
