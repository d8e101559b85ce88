"""``metallmix meta ...``: the meta-learner, retrieval and shortlist from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from metallmix import config
from metallmix.cli.output import JsonOption, emit, stderr
from metallmix.errors import ConfigError, DatasetError, KnowledgeBaseError
from metallmix.tools.datasets import load_dataset
from metallmix.tools.kb.records import Scalar
from metallmix.tools.kb.store import KnowledgeBase, open_kb
from metallmix.tools.meta.contracts import Shortlist
from metallmix.tools.meta.search_space import get_space, make_hyperparameters
from metallmix.tools.metafeatures import MetaFeatures, compute_meta_features

meta_app = typer.Typer(
    help="Meta-learner predictions, SHAP facts, similar runs and shortlists.",
    no_args_is_help=True,
)

KbOption = typer.Option(
    None, "--kb", help="Knowledge-base file (default: METALLMIX_KB or the layered default)."
)
FeaturesOption = typer.Option(
    None, "--features", help="MetaFeatures JSON file (e.g. from `metallmix features --json`)."
)
LikeOption = typer.Option(
    None, "--like", help="Use the meta-features of this KB dataset (it is then held out)."
)
SeedOption = typer.Option(0, "--seed", help="Seed of the meta-learner and of sampling.")


def _meta_features(
    kb: KnowledgeBase,
    features: Path | None,
    like: str | None,
    data: Path | None = None,
    modality: str | None = None,
) -> tuple[MetaFeatures, set[str]]:
    """The query dataset, and what to hide from the KB (the dataset itself for --like).

    ``data`` is what ``recommend`` and ``features`` take: a dataset path or a dataset card
    (a meta-features JSON, e.g. ``features --json`` output, is accepted there too).
    """
    if data is not None:
        if features is not None or like is not None:
            raise ConfigError("give the dataset, --features FILE.json or --like DATASET, not two")
        return _features_of(data, modality), set()
    if (features is None) == (like is None):
        raise ConfigError("give exactly one of --features FILE.json or --like DATASET")
    if features is not None:
        try:
            payload = json.loads(Path(features).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read meta-features from {features}: {exc}") from exc
        if isinstance(payload, dict) and "meta_features" in payload:
            payload = payload["meta_features"]
        try:
            return MetaFeatures.model_validate(payload), set()
        except ValueError as exc:
            raise ConfigError(f"{features} is not a MetaFeatures document: {exc}") from exc
    for record in kb.iter_records():
        if record.dataset == like or record.dataset_group == like:
            return record.meta_features, {str(like)}
    raise KnowledgeBaseError(
        f"--like {like}: no such dataset in {kb.location}; see `metallmix kb info`"
    )


def _features_of(data: Path, modality: str | None) -> MetaFeatures:
    if not data.exists():
        raise DatasetError(f"{data}: no such file or directory; check the dataset path")
    if data.suffix.lower() == ".json":  # a meta-features document rather than a card?
        try:
            payload = json.loads(data.read_text())
            payload = payload.get("meta_features", payload) if isinstance(payload, dict) else {}
            mf = MetaFeatures.model_validate(payload)
            return mf.model_copy(update={"modality": modality}) if modality else mf
        except (OSError, ValueError):
            pass  # not meta-features: read it as a dataset card
    # Imported here: pandas and the trainer stay off the CLI's start-up path.
    from metallmix.tools.meta.landmarks import MISSING_NO_IMAGES, attach_landmarks

    with stderr.status(f"meta-features of {data.name}"):
        mf = compute_meta_features(data, modality=modality)
    if data.suffix.lower() == ".json":  # a card: no images, no landmarks
        stderr.print(f"  {MISSING_NO_IMAGES}")
        return mf
    with stderr.status(f"landmarks of {data.name}"):  # the recommendation reads them too
        mf, _, note = attach_landmarks(mf, load_dataset(data, modality=modality))
    stderr.print(f"  {note}", soft_wrap=True)
    return mf


def _parse_hp(pairs: list[str]) -> dict[str, Scalar]:
    out: dict[str, Scalar] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--hp {pair!r}: expected name=value, e.g. --hp lr=0.001")
        key, text = pair.split("=", 1)
        value: Scalar = text
        for cast in (int, float):
            try:
                value = cast(text)
                break
            except ValueError:
                continue
        if text.lower() in {"true", "false"}:
            value = text.lower() == "true"
        out[key.strip()] = value
    return out


@meta_app.command("space")
def space(
    name: str = typer.Option("cpu-zoo", "--name", help="cpu-zoo or quicktune"),
    as_json: bool = JsonOption,
) -> None:
    """Show a search space (models and hyperparameter ranges)."""
    chosen = get_space(name)

    def render(console: Console) -> None:
        table = Table(title=f"search space {chosen.name}")
        table.add_column("parameter")
        table.add_column("range")
        for key, value in chosen.describe().items():
            table.add_row(key, value)
        console.print(table)

    emit(chosen.model_dump(mode="json"), as_json, render)


@meta_app.command("fit")
def fit(
    kb: Path | None = KbOption,
    seed: int = SeedOption,
    objective: str = typer.Option(
        None,
        "--objective",
        help="a registered target (raw, normalized, rank, percentile) or ensemble "
        "(default: the LODO winner, ensemble)",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Fit (or load from cache) the meta-learner for the KB's current content."""
    # start-up time: the meta-learner stack (xgboost, faiss) loads only for this verb
    from metallmix.tools.meta.metalearner import OBJECTIVES, MetaLearnerConfig, fit_or_load

    if objective is not None and objective not in OBJECTIVES:
        raise ConfigError(f"--objective {objective}: choose one of {', '.join(OBJECTIVES)}")
    store = open_kb(kb, read_only=True)
    cfg = MetaLearnerConfig(seed=seed, **({"objective": objective} if objective else {}))
    started = time.perf_counter()
    with stderr.status("fitting the meta-learner"):
        learner = fit_or_load(store, cfg)
    result = {
        "kb": store.location,
        "version": learner.version,
        "cached": learner.info.get("cached"),
        "seconds": round(time.perf_counter() - started, 2),
        "n_rows": learner.info.get("n_rows"),
        "datasets": learner.info.get("datasets"),
        "kb_hash": learner.info.get("kb_hash"),
        "cache_dir": str(config.cache_dir() / "metalearner"),
        "n_features": len(learner.encoder.columns),
    }
    emit(result, as_json, lambda c: c.print_json(json.dumps(result)))


@meta_app.command("predict")
def predict(
    model: str = typer.Option(..., "--model", help="timm model name"),
    hp: list[str] = typer.Option([], "--hp", help="hyperparameter name=value (repeatable)"),
    pretrained: bool = typer.Option(False, "--pretrained/--scratch"),
    features: Path | None = FeaturesOption,
    like: str | None = LikeOption,
    kb: Path | None = KbOption,
    seed: int = SeedOption,
    as_json: bool = JsonOption,
) -> None:
    """Predict accuracy (with a 10-90% band) and cost of one configuration, with SHAP facts."""
    # start-up time: the meta-learner stack (xgboost, faiss) loads only for this verb
    from metallmix.tools.meta.encoding import candidates_frame
    from metallmix.tools.meta.explain import facts_for_rows
    from metallmix.tools.meta.metalearner import MetaLearnerConfig, fit_or_load

    store = open_kb(kb, read_only=True)
    mf, excluded = _meta_features(store, features, like)
    hyper = make_hyperparameters(_parse_hp(hp))
    learner = fit_or_load(store, MetaLearnerConfig(seed=seed), exclude_datasets=excluded)
    frame = candidates_frame(mf, [(model, hyper)], pretrained=pretrained)
    pred = learner.predict(frame)
    facts = facts_for_rows(learner, frame, ["query"], top_k=6, include_meta_features=True)
    seconds = float(pred.seconds[0])
    result = {
        "model": model,
        "hyperparameters": hyper.model_dump(mode="json", exclude_none=True),
        "predicted_accuracy": round(float(pred.accuracy[0]), 4),
        "accuracy_low": round(float(pred.low[0]), 4),
        "accuracy_high": round(float(pred.high[0]), 4),
        "predicted_seconds": round(seconds, 1) if seconds == seconds else None,
        "score": round(float(pred.score[0]), 4),
        "facts": [f.sentence for f in facts],
        "metalearner_version": learner.version,
    }

    def render(console: Console) -> None:
        console.print(
            f"[bold]{model}[/bold]: predicted accuracy {result['predicted_accuracy']:.3f} "
            f"(10-90%: {result['accuracy_low']:.3f}-{result['accuracy_high']:.3f}), "
            f"cost {result['predicted_seconds']} s"
        )
        for sentence in result["facts"]:  # type: ignore[attr-defined]
            console.print(f"  - {sentence}")

    emit(result, as_json, render)


@meta_app.command("similar")
def similar(
    features: Path | None = FeaturesOption,
    like: str | None = LikeOption,
    k: int = typer.Option(5, "--k", min=1, help="number of datasets"),
    kb: Path | None = KbOption,
    as_json: bool = JsonOption,
) -> None:
    """The most similar KB datasets and their best runs (FAISS over meta-features)."""
    # start-up time: the meta-learner stack (xgboost, faiss) loads only for this verb
    from metallmix.tools.meta.retrieval import RetrievalIndex, load_or_build

    store = open_kb(kb, read_only=True)
    mf, excluded = _meta_features(store, features, like)
    records = list(store.iter_records())
    if excluded:
        visible = [r for r in records if r.dataset not in excluded]
        index = RetrievalIndex.build([r for r in visible if r.dataset_group not in excluded])
    else:
        index = load_or_build(store, records=records)
    datasets = index.similar_datasets(mf, k, exclude=excluded)
    runs = index.similar_runs(mf, k=3 * k, n_datasets=k, exclude=excluded)
    result = {
        "datasets": [{"dataset": d, "similarity": round(s, 4)} for d, s in datasets],
        "runs": [r.model_dump(mode="json") for r in runs],
    }

    def render(console: Console) -> None:
        table = Table(title="most similar datasets and their best runs")
        for col in ("dataset", "similarity", "model", "lr", "val acc"):
            table.add_column(col)
        for r in runs:
            table.add_row(
                r.dataset,
                f"{r.similarity:.3f}",
                r.model,
                str(r.hyperparameters.lr),
                "" if r.val_accuracy is None else f"{r.val_accuracy:.3f}",
            )
        console.print(table)

    emit(result, as_json, render)


@meta_app.command("shortlist")
def shortlist(
    data: Path | None = typer.Argument(
        None, help="Dataset (.npz, folder, .csv manifest), dataset card or meta-features JSON."
    ),
    modality: str | None = typer.Option(None, "--modality", help="Imaging modality override."),
    features: Path | None = FeaturesOption,
    like: str | None = LikeOption,
    n: int = typer.Option(5, "--n", min=1, help="shortlist size"),
    space_name: str = typer.Option("cpu-zoo", "--space", help="cpu-zoo or quicktune"),
    kb: Path | None = KbOption,
    seed: int = SeedOption,
    plots: Path | None = typer.Option(
        None, "--plots", help="Folder for SHAP bar/waterfall PNGs of the shortlist."
    ),
    as_json: bool = JsonOption,
) -> None:
    """A scored, diverse shortlist with SHAP facts: what the recommender chooses from."""
    # start-up time: the meta-learner stack (xgboost, faiss) loads only for this verb
    from metallmix.tools.meta.shortlist import (
        FACTS_PER_CANDIDATE,
        ShortlistOptions,
        regime_shortlist,
    )

    store = open_kb(kb, read_only=True)
    mf, excluded = _meta_features(store, features, like, data, modality)
    chosen = get_space(space_name)
    with stderr.status("scoring candidates"):
        options = ShortlistOptions(
            exclude_datasets=frozenset(excluded), facts_per_candidate=FACTS_PER_CANDIDATE
        )
        # the whole KB (regime None): the space is named here, not derived from a regime
        result = regime_shortlist(mf, store, None, n=n, space=chosen, seed=seed, options=options)
    written: list[str] = []
    if plots is not None:
        written = [str(p) for p in _write_plots(store, result, plots, seed, excluded)]
    payload = result.model_dump(mode="json")
    if written:
        payload["plots"] = written

    def render(console: Console) -> None:
        table = Table(title=f"shortlist ({result.metalearner_version}, KB {result.kb_hash})")
        for col in ("id", "model", "lr", "bs", "opt", "pred acc", "10-90%", "sec", "origin"):
            table.add_column(col)
        for c in result.candidates:
            h = c.hyperparameters
            table.add_row(
                c.candidate_id,
                c.model,
                f"{h.lr:.2g}" if h.lr else "",
                str(h.batch_size or ""),
                str(h.optimizer or ""),
                f"{c.predicted_accuracy:.3f}",
                f"{c.accuracy_low:.2f}-{c.accuracy_high:.2f}",
                "" if c.predicted_seconds is None else f"{c.predicted_seconds:.0f}",
                c.origin,
            )
        console.print(table)
        for fact in result.facts:
            console.print(f"  {fact.candidate_id}: {fact.sentence}")
        for path in written:
            console.print(f"plot: {path}")

    emit(payload, as_json, render)


def _write_plots(
    store: KnowledgeBase, result: object, folder: Path, seed: int, excluded: set[str]
) -> list[Path]:
    # start-up time: pandas and the meta-learner stack load only for the plots
    from metallmix.tools.kb.frame import records_to_frame
    from metallmix.tools.meta.encoding import candidates_frame
    from metallmix.tools.meta.explain import global_importance, plot_bar, plot_waterfall
    from metallmix.tools.meta.metalearner import MetaLearnerConfig, fit_or_load, training_rows

    assert isinstance(result, Shortlist)
    learner = fit_or_load(store, MetaLearnerConfig(seed=seed), exclude_datasets=excluded)
    rows = training_rows(records_to_frame(store.iter_records()))
    rows = rows.sample(n=min(len(rows), 1000), random_state=seed)
    paths = [plot_bar(global_importance(learner, rows), folder / "shap_global_bar.png")]
    for c in result.candidates:
        frame = candidates_frame(
            result.meta_features, [(c.model, c.hyperparameters)], pretrained=c.pretrained
        )
        paths.append(
            plot_waterfall(
                learner,
                frame,
                folder / f"shap_waterfall_{c.candidate_id}.png",
                title=f"{c.candidate_id}: {c.model}",
            )
        )
    return paths


def register(app: typer.Typer) -> None:
    app.add_typer(meta_app, name="meta")
