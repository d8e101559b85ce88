"""Leave-one-dataset-out (LODO) evaluation of the meta-learner against simple baselines.

For each dataset group in turn, every model and baseline sees only the *other* groups of
the held-out group's compute regime (the product fits one meta-learner per regime, see
:mod:`metallmix.tools.kb.regime`); then each held-out dataset's evaluated configurations are
ranked and the pick is scored by its true final validation score, the metric the product
optimises (``RunRecord.score``: balanced accuracy where the run recorded it, else accuracy):

- normalised regret of the top-1 pick: (best - picked) / (best - worst), 0 is perfect;
- rank of the pick among the dataset's configurations (1 = the best one);
- Spearman correlation of predicted vs true accuracy (meta-learner variants only).

Only *completed* runs count (``Outcomes.completed``: the whole epoch budget was trained):
a run stopped after 2 of 50 epochs by a multi-fidelity search is not the final accuracy of
its configuration, so it is neither learnt from nor a candidate nor the ground truth.

Methods: ``metalearner-<objective>`` (``ensemble`` is the product's pick rule, named in
``default_method``) and ``config-only``: the same rule fitted without any meta-feature (a
"good default model"; the meta-features must beat it).

Baselines on the same rows: random pick and random search best-of-5 / best-of-10 (exact
expectations, no sampling noise), best-default (the training configuration with the best
mean normalised score) and nearest-dataset-best (the best configuration of the most similar
training dataset). When the held-out dataset never evaluated that exact configuration, the
baseline gets the nearest evaluated one (same model first), which favours the baseline.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import spearmanr

from metallmix.atomic import atomic_path, write_text
from metallmix.errors import KnowledgeBaseError
from metallmix.tools.kb.frame import record_to_row, records_to_frame
from metallmix.tools.kb.quicktune import import_quicktune
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.regime import regime_of
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.metalearner import (
    DEFAULT_OBJECTIVE,
    INTERVAL_COVERAGE,
    OBJECTIVES,
    MetaLearner,
    MetaLearnerConfig,
    Objective,
    training_rows,
)
from metallmix.tools.meta.portfolio import (
    POOL_FACTOR,
    families_of,
    family_portfolio,
    greedy_portfolio,
    kb_meta_of,
    kb_score_matrix,
)
from metallmix.tools.meta.retrieval import DatasetScaler, config_vector
from metallmix.tools.meta.targets import normalized_target

BASELINES = ("random", "random-best-of-5", "random-best-of-10", "best-default", "nearest-dataset")
CONFIG_ONLY = "config-only"
DEFAULT_METHOD = f"metalearner-{DEFAULT_OBJECTIVE}"
MIN_CONFIGS = 3
# The shortlist size: "validate the top 5 predicted, keep the best" costs what best-of-5 does.
TOP_K = 5
# The shortlist rules LODO scores (tools/meta/portfolio.py): plain top-K, the greedy
# portfolio among the 3K best-predicted, the greedy portfolio over all, family diversity.
SHORTLIST_ROWS = (("top", ""), ("portfolio", ""), ("portfolio", "-all"), ("family", ""))


class LeakError(AssertionError):
    """A held-out row reached the training data: the benchmark result would be invalid."""


class FoldResult(BaseModel):
    """One held-out dataset scored by one method."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    group: str
    method: str
    n_configs: int
    regret: float
    rank: float
    picked_accuracy: float | None = None
    best_accuracy: float
    spearman: float | None = None


class LodoResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kb: str
    n_runs: int
    n_datasets: int
    seed: int
    config: dict[str, object]
    rows: list[FoldResult]
    seconds: float
    fit_seconds: dict[str, float] = Field(default_factory=dict)
    folds: list[dict[str, object]] = Field(default_factory=list)
    n_jobs: int | None = Field(default=None, description="folds fitted at once")
    nthread: int | None = Field(default=None, description="XGBoost threads per fold")
    load_average: float | None = Field(default=None, description="1-min load at the end")
    cpu_count: int | None = None
    default_method: str = DEFAULT_METHOD
    n_partial_runs: int = Field(default=0, description="runs below their epoch budget, ignored")
    interval: dict[str, float] = Field(
        default_factory=dict,
        description="coverage / mean width of the product's 10-90% interval on held-out "
        "runs (calibrated inside each fold on its training groups), overall and per regime",
    )

    def summary(self) -> pd.DataFrame:
        """Mean regret, rank and Spearman per method, plus wins against the best baseline."""
        frame = pd.DataFrame([r.model_dump() for r in self.rows])
        agg = frame.groupby("method").agg(
            regret=("regret", "mean"),
            regret_median=("regret", "median"),
            rank=("rank", "mean"),
            spearman=("spearman", "mean"),
            datasets=("dataset", "nunique"),
        )
        order = [
            m
            for m in [
                *(f"metalearner-{o}" for o in OBJECTIVES),
                CONFIG_ONLY,
                *(
                    f"metalearner-{o}-{rule}{TOP_K}{suffix}"
                    for o in OBJECTIVES
                    for rule, suffix in SHORTLIST_ROWS
                ),
                *BASELINES,
            ]
            if m in agg.index
        ]
        return agg.loc[order]

    def per_dataset(self, metric: str = "regret") -> pd.DataFrame:
        frame = pd.DataFrame([r.model_dump() for r in self.rows])
        return frame.pivot_table(index="dataset", columns="method", values=metric)


def folds(
    records: Sequence[RunRecord], *, per_regime: bool = True
) -> Iterator[tuple[str, list[RunRecord], list[RunRecord]]]:
    """(held-out group, training records, held-out records); raises LeakError on overlap.

    ``per_regime``: train only on the held-out group's compute regime, as the product does.
    """
    groups = sorted({r.dataset_group for r in records})
    regime = [regime_of(r) for r in records]  # once, not once per fold
    for group in groups:
        test = [r for r in records if r.dataset_group == group]
        held = {regime_of(r) for r in test}
        train = [
            r
            for r, g in zip(records, regime, strict=True)
            if r.dataset_group != group and (not per_regime or g in held)
        ]
        assert_no_leak(group, train, test)
        yield group, train, test


def assert_no_leak(group: str, train: Sequence[RunRecord], test: Sequence[RunRecord]) -> None:
    test_ids = {r.run_id for r in test}
    test_datasets = {r.dataset for r in test}
    for r in train:
        if r.run_id in test_ids or r.dataset_group == group or r.dataset in test_datasets:
            raise LeakError(
                f"held-out group {group!r}: run {r.run_id} (dataset {r.dataset}) is in the "
                "training data"
            )


def regret_and_rank(true: np.ndarray, picked: int) -> tuple[float, float]:
    best, worst = float(true.max()), float(true.min())
    regret = 0.0 if best == worst else (best - float(true[picked])) / (best - worst)
    rank = 1.0 + float(np.sum(true > true[picked]))
    return regret, rank


def expected_best_of(true: np.ndarray, k: int) -> tuple[float, float]:
    """Exact expected regret and rank of the best of ``k`` configurations drawn at random."""
    n = len(true)
    k = min(k, n)
    order = np.sort(true)  # ascending
    best, worst = float(order[-1]), float(order[0])
    # P(max of the draw is the i-th smallest, 1-based) = C(i-1, k-1) / C(n, k)
    probs = np.array([math.comb(i - 1, k - 1) for i in range(1, n + 1)], dtype=float)
    probs /= math.comb(n, k)
    regrets = np.zeros(n) if best == worst else (best - order) / (best - worst)
    ranks = np.array([1.0 + np.sum(true > v) for v in order])
    return float(probs @ regrets), float(probs @ ranks)


def _config_key(r: RunRecord) -> str:
    return json.dumps([r.model, r.hyperparameters.model_dump(mode="json")], sort_keys=True)


def _map_to_heldout(target: RunRecord, test: Sequence[RunRecord]) -> int:
    """Index of ``target``'s configuration in ``test``, else the nearest one (same model first)."""
    key = _config_key(target)
    for i, r in enumerate(test):
        if _config_key(r) == key:
            return i
    pool = [i for i, r in enumerate(test) if r.model == target.model] or list(range(len(test)))
    tv = config_vector(target.model, target.hyperparameters, target.pretrained)
    dists = [
        float(
            np.linalg.norm(
                config_vector(test[i].model, test[i].hyperparameters, test[i].pretrained) - tv
            )
        )
        for i in pool
    ]
    return pool[int(np.argmin(dists))]


def best_default(train: Sequence[RunRecord]) -> RunRecord:
    """The training configuration with the best mean normalised score across datasets.

    Ties (common: every dataset's best run scores 1) go to the configuration whose model has
    the best mean normalised score, then to the run id.
    """
    return best_defaults(train, 1)[0]


def best_defaults(train: Sequence[RunRecord], k: int) -> list[RunRecord]:
    """The ``k`` distinct configurations with the best mean normalised score across the
    KB's datasets (no meta-features: the same for every dataset), best first, one run each;
    ranked and tie-broken as :func:`best_default`. Fewer when the KB holds fewer."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    frame = training_rows(records_to_frame(train))
    frame = frame.assign(norm=normalized_target(frame))
    by_id = {r.run_id: r for r in train}
    frame["key"] = [_config_key(by_id[i]) for i in frame["run_id"]]
    per_config = frame.groupby("key")["norm"].mean()
    per_model = frame.groupby("model")["norm"].mean()
    frame["config_score"] = frame["key"].map(per_config)
    frame["model_score"] = frame["model"].map(per_model)
    frame = frame.sort_values(
        ["config_score", "model_score", "run_id"], ascending=[False, False, True]
    )
    firsts = frame.drop_duplicates("key", keep="first").head(k)
    return [by_id[str(i)] for i in firsts["run_id"]]


def nearest_dataset_best(train: Sequence[RunRecord], test: Sequence[RunRecord]) -> RunRecord:
    """The best run of the training dataset most similar (cosine, meta-features) to ``test``."""
    metas: dict[str, RunRecord] = {}
    for r in train:
        metas.setdefault(r.dataset, r)
    names = sorted(metas)
    scaler = DatasetScaler.fit([metas[n].meta_features for n in names])
    query = scaler.embed(test[0].meta_features)
    vectors = np.vstack([scaler.embed(metas[n].meta_features) for n in names])
    sims = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query) + 1e-12)
    nearest = names[int(np.argmax(sims))]
    runs = [r for r in train if r.dataset == nearest and r.score is not None]
    return max(runs, key=lambda r: (r.score or 0.0, r.run_id))


def lodo_config(
    objective: Objective, seed: int, n_estimators: int, max_depth: int, *, blind: bool = False
) -> MetaLearnerConfig:
    """The meta-learner LODO fits per fold: the product's settings, no cost model."""
    return MetaLearnerConfig(
        objective=objective,
        seed=seed,
        n_estimators=n_estimators,
        max_depth=max_depth,
        with_uncertainty=False,
        with_cost=False,
        use_meta_features=not blind,
    )


def interval_config(seed: int, n_estimators: int, max_depth: int) -> MetaLearnerConfig:
    """The product's interval model for a fold: accuracy + quantile model + its conformal
    calibration on grouped inner folds of the *training* groups (no ranking members)."""
    return lodo_config("raw", seed, n_estimators, max_depth).model_copy(
        update={"with_uncertainty": True}
    )


def interval_summary(
    per_dataset: dict[str, tuple[str, np.ndarray, np.ndarray, np.ndarray]],
) -> dict[str, float]:
    """Coverage and mean width of the product's 10-90% interval on held-out runs, overall
    and per compute regime (``per_dataset``: dataset -> (regime, true, low, high)).

    The interval is the one a user sees: calibrated inside each fold on the training groups
    only, so these are coverages on datasets the calibration never saw.
    """
    if not per_dataset:
        return {}
    out: dict[str, float] = {"target_coverage": INTERVAL_COVERAGE}
    regimes = sorted({regime for regime, *_ in per_dataset.values()})
    for scope in ["all", *regimes]:
        hit = width = n = 0.0
        for regime, y, low, high in per_dataset.values():
            if scope != "all" and regime != scope:
                continue
            hit += float(np.sum((y >= low) & (y <= high)))
            width += float(np.sum(high - low))
            n += len(y)
        prefix = "" if scope == "all" else f"{scope}_"
        out[f"{prefix}coverage"] = round(hit / n, 4)
        out[f"{prefix}mean_width"] = round(width / n, 4)
        out[f"{prefix}n_runs"] = int(n)
    return out


@dataclass(frozen=True)
class _FoldTask:
    """One fold's inputs, picklable for a worker process."""

    group: str
    train: list[RunRecord]
    test: list[RunRecord]
    methods: dict[str, MetaLearnerConfig]
    seed: int
    n_estimators: int
    max_depth: int
    intervals: bool
    landmark_level: bool  # the accuracy / interval models' landmark anchor (meta.level)
    encoded: dict[str, dict[str, object]]  # run_id -> its frame row (encoded once)
    nthread: int  # XGBoost threads of this fold's fits: its share of the CPUs


@dataclass
class _FoldOut:
    group: str
    rows: list[FoldResult]
    info: dict[str, object]
    fit_seconds: dict[str, float]
    covered: dict[str, tuple[str, np.ndarray, np.ndarray, np.ndarray]]


def _frame(task: _FoldTask, records: Sequence[RunRecord]) -> pd.DataFrame:
    """``records_to_frame(records)`` from the rows encoded once for every fold."""
    return (
        pd.DataFrame([task.encoded[r.run_id] for r in records])
        if records
        else (records_to_frame(records))
    )


def _map_folds(tasks: Sequence[_FoldTask], jobs: int) -> Iterator[_FoldOut]:
    """Each fold's result as it finishes: in this process, or ``jobs`` spawned workers
    (spawn, not fork: a forked child of a process that has run OpenMP can hang)."""
    if jobs <= 1:
        for task in tasks:
            yield _run_fold(task)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        pending = [pool.submit(_run_fold, t) for t in tasks]
        try:
            for future in as_completed(pending):
                yield future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _run_fold(task: _FoldTask) -> _FoldOut:
    """Fit every method on the fold's training runs and score its held-out datasets."""
    group, train, test_all = task.group, task.train, task.test
    methods = {m: c.model_copy(update={"nthread": task.nthread}) for m, c in task.methods.items()}
    seed, n_estimators, max_depth = task.seed, task.n_estimators, task.max_depth
    rows: list[FoldResult] = []
    fit_seconds = dict.fromkeys(methods, 0.0)
    covered: dict[str, tuple[str, np.ndarray, np.ndarray, np.ndarray]] = {}
    if not train:  # the only group of its regime: the product could not recommend here
        info: dict[str, object] = {
            "group": group,
            "skipped": "no other dataset group in its regime",
        }
        return _FoldOut(group, rows, info, fit_seconds, covered)
    train_frame = _frame(task, train)
    learners: dict[str, MetaLearner] = {}
    for method, cfg in methods.items():
        t0 = time.perf_counter()
        learners[method] = MetaLearner.fit(train_frame, cfg)
        fit_seconds[method] += time.perf_counter() - t0
        trained_on = learners[method].info["dataset_groups"]
        seen = set(trained_on) if isinstance(trained_on, list) else set()
        if group in seen:
            raise LeakError(f"held-out group {group!r} reached the {method} meta-learner")
    interval_learner = None
    if task.intervals:
        t0 = time.perf_counter()
        interval_learner = MetaLearner.fit(
            train_frame,
            interval_config(seed, n_estimators, max_depth).model_copy(
                update={"nthread": task.nthread, "landmark_level": task.landmark_level}
            ),
        )
        fit_seconds["interval"] = time.perf_counter() - t0
    default_run = best_default(train)
    kb_meta, kb_weights = kb_meta_of(train_frame)
    info = {
        "group": group,
        "n_train": len(train),
        "n_test": len(test_all),
        "train_groups": sorted({r.dataset_group for r in train}),
        "best_default": default_run.run_id,
    }
    for dataset in sorted({r.dataset for r in test_all}):
        test = sorted((r for r in test_all if r.dataset == dataset), key=lambda r: r.run_id)
        if len(test) < MIN_CONFIGS:
            continue
        true = np.array([r.score for r in test], dtype=float)
        best = float(true.max())
        frame = _frame(task, test)

        def add(
            method: str,
            regret: float,
            rank: float,
            picked: float | None,
            rho: float | None = None,
            _d: str = dataset,
            _n: int = len(test),
            _b: float = best,
            _g: str = group,
        ) -> None:
            rows.append(
                FoldResult(
                    dataset=_d,
                    group=_g,
                    method=method,
                    n_configs=_n,
                    regret=regret,
                    rank=rank,
                    picked_accuracy=picked,
                    best_accuracy=_b,
                    spearman=rho,
                )
            )

        def add_best_of(method: str, picked: Sequence[int], _true: np.ndarray = true) -> None:
            """Train the ``picked`` shortlist and keep the best: comparable to best-of-5."""
            chosen = int(picked[int(np.argmax(_true[list(picked)]))])
            add(method, *regret_and_rank(_true, chosen), float(_true[chosen]))

        scored: dict[str, np.ndarray] = {}
        for name, learner in learners.items():
            scored[name] = learner.predict(frame).score
        families = families_of(frame)
        for name, scores in sorted(scored.items()):
            pick = int(np.argmax(scores))
            regret, rank = regret_and_rank(true, pick)
            rho = float(spearmanr(scores, true).statistic) if np.std(scores) > 0 else 0.0
            add(name, regret, rank, float(true[pick]), rho)
            if name == CONFIG_ONLY:
                continue
            add_best_of(f"{name}-top{TOP_K}", np.argsort(-scores, kind="stable")[:TOP_K].tolist())
            kb_scores = kb_score_matrix(learners[name], frame, kb_meta)
            weights = [kb_weights[d] for d in sorted(kb_meta)]
            add_best_of(
                f"{name}-portfolio{TOP_K}",
                greedy_portfolio(
                    scores, kb_scores, TOP_K, weights=weights, pool=POOL_FACTOR * TOP_K
                ),
            )
            add_best_of(
                f"{name}-portfolio{TOP_K}-all",
                greedy_portfolio(scores, kb_scores, TOP_K, weights=weights),
            )
            add_best_of(f"{name}-family{TOP_K}", family_portfolio(scores, families, TOP_K))
        if interval_learner is not None:
            band = interval_learner.predict(frame)
            covered[dataset] = (regime_of(test[0]), true, band.low, band.high)
        add("random", *expected_best_of(true, 1), None)
        add("random-best-of-5", *expected_best_of(true, 5), None)
        add("random-best-of-10", *expected_best_of(true, 10), None)
        pick = _map_to_heldout(default_run, test)
        add("best-default", *regret_and_rank(true, pick), float(true[pick]))
        pick = _map_to_heldout(nearest_dataset_best(train, test), test)
        add("nearest-dataset", *regret_and_rank(true, pick), float(true[pick]))
    return _FoldOut(group, rows, info, fit_seconds, covered)


@dataclass(frozen=True)
class LodoSpec:
    """What one LODO benchmark fits and scores: the learners' objectives, trees and seed,
    whether the dataset-blind twin and the intervals are scored, and per-regime learners.
    One value, so the figures' settings travel (and are recorded) together; how the folds
    are scheduled (``n_jobs``, ``nthread``) is not part of it, since it never changes them."""

    objectives: Sequence[Objective] = (DEFAULT_OBJECTIVE,)
    seed: int = 0
    n_estimators: int = 300
    max_depth: int = 5
    config_only: bool = True
    intervals: bool = True
    per_regime: bool = True
    landmark_level: bool = True  # False: the models without the landmarks' level line


def run_lodo(
    records: Sequence[RunRecord],
    spec: LodoSpec = LodoSpec(),
    *,
    kb_label: str = "",
    on_fold: Callable[[str], None] | None = None,
    n_jobs: int | None = 1,
    nthread: int | None = None,
) -> LodoResult:
    """The whole benchmark; deterministic for ``spec.seed``. Completed runs only (module doc).
    ``spec.per_regime=False`` fits one learner on every regime's runs (what the product does
    not do; kept to measure that choice). ``n_jobs`` folds are fitted at once, in worker
    processes (None: one per CPU; 1, the default: in this process); the figures do not depend on it.
    ``nthread``: XGBoost threads per fold (default 1: processes, not threads, share the CPUs).
    ``on_fold(group)`` is called in this process as each fold finishes."""
    objectives, seed, n_estimators, max_depth = (
        spec.objectives,
        spec.seed,
        spec.n_estimators,
        spec.max_depth,
    )
    config_only, intervals, per_regime = spec.config_only, spec.intervals, spec.per_regime
    if n_jobs is not None and n_jobs < 1:
        raise ValueError(f"n_jobs must be at least 1, got {n_jobs}")
    ok = [r for r in records if r.status == "ok" and r.score is not None]
    usable = [r for r in ok if r.outcomes.completed]
    groups = sorted({r.dataset_group for r in usable})
    if len(groups) < 2:
        raise KnowledgeBaseError(
            f"LODO needs completed runs from at least 2 dataset groups, the KB has "
            f"{len(groups)}; import more datasets first"
        )
    started = time.perf_counter()
    rows: list[FoldResult] = []
    methods: dict[str, MetaLearnerConfig] = {
        f"metalearner-{o}": lodo_config(o, seed, n_estimators, max_depth) for o in objectives
    }
    if config_only:
        methods[CONFIG_ONLY] = lodo_config(
            DEFAULT_OBJECTIVE, seed, n_estimators, max_depth, blind=True
        )
    methods = {
        m: c.model_copy(update={"landmark_level": spec.landmark_level}) for m, c in methods.items()
    }
    fit_seconds = dict.fromkeys(methods, 0.0)
    fold_info: list[dict[str, object]] = []
    covered: dict[str, tuple[str, np.ndarray, np.ndarray, np.ndarray]] = {}
    # Encoded once for every fold (each run's row is the same in every fold it joins).
    encoded = {r.run_id: record_to_row(r) for r in usable}
    splits = list(folds(usable, per_regime=per_regime))
    cpus = os.cpu_count() or 1
    jobs = max(1, min(n_jobs if n_jobs is not None else cpus, len(splits)))
    # One XGBoost thread per fold; the CPUs are shared by fitting folds at once. More
    # threads per fit are far slower, not faster, on these small matrices as soon as the
    # cores are busy (OpenMP threads spin while they wait: 20 trees took 8.5 s with 2
    # threads and 0.09 s with 1 at load 12 on 2 cores); the boosters are the same whatever
    # the thread count (hist is deterministic), so the figures do not depend on it.
    threads = nthread if nthread is not None else 1
    tasks = [
        _FoldTask(
            group,
            train,
            test,
            methods,
            seed,
            n_estimators,
            max_depth,
            intervals,
            spec.landmark_level,
            {r.run_id: encoded[r.run_id] for r in (*train, *test)},
            threads,
        )
        for group, train, test in splits
    ]
    done: dict[str, _FoldOut] = {}
    for out in _map_folds(tasks, jobs):
        done[out.group] = out
        if on_fold is not None:
            on_fold(out.group)
    for task in tasks:  # fold order, whatever order they finished in: results as serial
        out = done[task.group]
        rows += out.rows
        fold_info.append(out.info)
        covered.update(out.covered)
        for method, seconds in out.fit_seconds.items():
            fit_seconds[method] = fit_seconds.get(method, 0.0) + seconds
    return LodoResult(
        kb=kb_label,
        n_runs=len(usable),
        n_datasets=len({r.dataset for r in usable}),
        seed=seed,
        config={
            "n_estimators": n_estimators,
            "max_depth": max_depth,
            "objectives": list(objectives),
            **MetaLearnerConfig().model_dump(
                mode="json", include={"members", "tree_settings", "bags"}
            ),
            "completed_runs_only": True,
            "per_regime": per_regime,
            "ground_truth": "RunRecord.score (val balanced accuracy where recorded)",
        },
        rows=rows,
        seconds=round(time.perf_counter() - started, 2),
        fit_seconds={k: round(v, 2) for k, v in fit_seconds.items()},
        folds=fold_info,
        n_jobs=jobs,
        nthread=threads,
        load_average=round(os.getloadavg()[0], 2),
        cpu_count=os.cpu_count(),
        default_method=DEFAULT_METHOD,
        n_partial_runs=len(ok) - len(usable),
        interval=interval_summary(covered),
    )


def markdown_table(result: LodoResult) -> str:
    summary = result.summary()
    lines = [
        f"LODO on `{result.kb}`: {result.n_runs} runs, {result.n_datasets} datasets, "
        f"seed {result.seed}, {result.seconds:.0f} s wall"
        + (
            f" (load average {result.load_average} on {result.cpu_count} CPUs)."
            if result.load_average is not None
            else "."
        ),
        "",
        "| method | mean normalised regret | median regret | mean rank of pick | mean Spearman |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, row in summary.iterrows():
        rho = "" if pd.isna(row["spearman"]) else f"{row['spearman']:.3f}"
        lines.append(
            f"| {method} | {row['regret']:.3f} | {row['regret_median']:.3f} | "
            f"{row['rank']:.1f} | {rho} |"
        )
    per = result.per_dataset("regret")
    n_cfg = (
        pd.DataFrame([r.model_dump() for r in result.rows]).groupby("dataset")["n_configs"].max()
    )
    cols = list(summary.index)
    lines += [
        "",
        "Random search best-of-k trains k configurations (the meta-learner picks one; its "
        f"-top{TOP_K} rows train its {TOP_K} best-predicted and keep the best); on a dataset "
        "with k or fewer evaluated configurations best-of-k trivially finds the best.",
        "Regret: (best - picked) / (best - worst) of the final validation score (balanced "
        "accuracy where the run recorded it, else accuracy); rank 1 = best.",
    ]
    if result.interval:
        iv = result.interval
        lines += [
            "",
            f"10-90% interval of the predicted score on held-out runs (target coverage "
            f"{iv['target_coverage']:.0%}; calibrated inside each fold on its training groups):",
            "",
            "| regime | runs | coverage | mean width |",
            "|---|---:|---:|---:|",
        ]
        for scope in ["all", *sorted({k.split("_", 1)[0] for k in iv if k.endswith("_n_runs")})]:
            prefix = "" if scope == "all" else f"{scope}_"
            if f"{prefix}coverage" in iv:
                lines.append(
                    f"| {scope} | {int(iv[f'{prefix}n_runs'])} | {iv[f'{prefix}coverage']:.1%} "
                    f"| {iv[f'{prefix}mean_width']:.3f} |"
                )
    lines += ["", "Normalised regret per held-out dataset (0 = picked the best config):", ""]
    lines.append("| dataset | configs | " + " | ".join(cols) + " |")
    lines.append("|---|---:|" + "---:|" * len(cols))
    for dataset, row in per.iterrows():
        name = str(dataset)  # dataset names index both frames
        cells = " | ".join(f"{row[c]:.3f}" for c in cols)
        lines.append(f"| {name} | {int(n_cfg[name])} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(result: LodoResult, path: Path) -> Path:
    import matplotlib  # heavy, plots only; the Agg backend must be set before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result.summary()
    per = result.per_dataset("regret")
    methods = list(summary.index)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = np.arange(len(methods))
    colors = ["#3b75af" if m.startswith("metalearner") else "#999999" for m in methods]
    ax.bar(xs, summary["regret"].to_numpy(), color=colors, alpha=0.8)
    for x, method in zip(xs, methods, strict=True):
        values = per[method].dropna().to_numpy()
        ax.scatter(
            np.full(len(values), x) + np.linspace(-0.2, 0.2, len(values)),
            values,
            s=10,
            color="black",
            zorder=3,
        )
    ax.set_xticks(xs, methods, rotation=30, ha="right", fontsize=8)
    # Two lines: on one, the label was longer than the axes and was clipped.
    ax.set_ylabel("normalised regret of the\ntop-1 pick (lower is better)")
    ax.set_title(
        f"Leave-one-dataset-out, {result.n_datasets} datasets (bars: mean; dots: datasets)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(result: LodoResult, out_dir: Path, name: str) -> dict[str, Path]:
    """``<name>.md``, ``<name>.json`` and ``<name>.png`` in ``out_dir`` (atomic writes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "md": out_dir / f"{name}.md",
        "json": out_dir / f"{name}.json",
        "png": out_dir / f"{name}.png",
    }
    payload = {
        "md": f"# Leave-one-dataset-out benchmark\n\n{markdown_table(result)}",
        "json": result.model_dump_json(indent=2),
    }
    for kind, text in payload.items():
        write_text(paths[kind], text)
    with atomic_path(paths["png"], suffix=".png") as tmp_png:
        plot(result, tmp_png)
    return paths


def load_kb_records(spec: str | Path) -> tuple[list[RunRecord], str]:
    """Records from a Quick-Tune folder or a KB ``.sqlite`` file (read-only)."""
    path = Path(str(spec).removeprefix("sqlite:///")).expanduser()
    if path.is_dir():
        return import_quicktune(path), str(spec)
    if path.is_file():
        return list(SQLiteKnowledgeBase(path, read_only=True).iter_records()), str(spec)
    raise KnowledgeBaseError(
        f"--kb {spec}: no such file or folder; give a KB .sqlite file or a Quick-Tune "
        "version folder (e.g. ../shared/data/quicktune/extended)"
    )
