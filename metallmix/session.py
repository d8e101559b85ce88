"""A recommendation session: what successive answers share, held by one object.

In the spirit of Optuna's ``Study``: a :class:`Session` holds the knowledge base (read once
per answer, hashed; the snapshot of the last answer kept), the meta-learners fitted on it
(per compute regime and seed, reused while the content is unchanged), the LLM handle
(loaded in the background on the first answer, then reused) and the tracking target.
:meth:`Session.recommend`, :meth:`Session.verify` and :meth:`Session.validate` are its
methods; :func:`metallmix.recommend` and :func:`metallmix.validate` are thin wrappers over
a session made for the call.

>>> session = metallmix.Session(kb="kb.sqlite", llm="fast")  # doctest: +SKIP
>>> rec = session.recommend("breastmnist.npz")  # doctest: +SKIP
>>> record = session.validate(rec, "breastmnist.npz")  # doctest: +SKIP

The graph receives the session's objects through LangGraph's run context
(:class:`~metallmix.graphs.configuration.Context` with its ``resources``), never through
process-global caches.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metallmix import config
from metallmix.agents.runtime.llm import ChatLLM
from metallmix.agents.schemas import Recommendation
from metallmix.errors import ConfigError, DatasetError, MetaLLMiXError
from metallmix.graphs import recording, tracing
from metallmix.graphs.configuration import EXPERIMENT, Context
from metallmix.graphs.graph import build_graph
from metallmix.graphs.resources import (
    KbSpec,
    Learners,
    LlmSpec,
    RunResources,
    load_llm_in_background,
    require_runs,
    resolve_kb,
)
from metallmix.node_names import NodeName
from metallmix.progress import epoch_printer, node_printer, wait_lines
from metallmix.tools import tracking
from metallmix.tools.datasets import load_dataset
from metallmix.tools.kb.regime import check_regime
from metallmix.tools.kb.snapshot import KBSnapshot
from metallmix.tools.kb.store import KnowledgeBase
from metallmix.tools.meta.contracts import Shortlist
from metallmix.tools.metafeatures import MetaFeatures
from metallmix.tools.training.runner import RunSpec, run_trial
from metallmix.tools.training.settings import TrialSettings
from metallmix.verify import (
    VerifiedRecommendation,
    VerifyOptions,
    check_k,
    plan_verification,
    run_verification,
    to_train,
    verify_shortlist,
)

if TYPE_CHECKING:
    from metallmix.tools.kb.records import RunRecord

DataSpec = str | os.PathLike[str] | MetaFeatures | None

_GRAPH: Any = None


def graph() -> Any:
    """The compiled graph sessions run (built once per process: it holds no run state)."""
    global _GRAPH
    if _GRAPH is None:
        _GRAPH = build_graph(internal_inputs=True)
    return _GRAPH


@dataclass(frozen=True)
class Hooks:
    """The caller's progress callbacks: ``on_node(name)`` as each graph node finishes,
    ``on_shortlist(shortlist)`` once the scored shortlist exists (before the LLM answers);
    ``progress`` prints progress lines on stderr."""

    on_node: Callable[[str], None] | None = None
    on_shortlist: Callable[[Shortlist], None] | None = None
    progress: bool = True

    def listening(self) -> bool:
        return self.on_node is not None or self.on_shortlist is not None

    def __call__(self, node: str, update: Any) -> None:
        scored = node == NodeName.SHORTLIST and isinstance(update, dict) and update.get("shortlist")
        if self.on_shortlist is not None and scored:  # not again when evidence adds its facts
            self.on_shortlist(update["shortlist"])
        if self.on_node is not None:
            self.on_node(node)


class Session:
    """One KB, one LLM and one tracking target, shared by successive answers.

    ``kb`` is a ``.sqlite`` path or an open store (default: ``METALLMIX_KB`` or the layered
    default); ``llm`` a registry name, a profile (``fast``, ``default``), a ``.gguf`` path or
    a loaded model. The tracking target is ``MLFLOW_TRACKING_URI`` when the session is made.
    """

    def __init__(
        self, kb: KbSpec = None, llm: LlmSpec = None, *, learners: Learners | None = None
    ) -> None:
        self.kb = kb
        self.llm = llm
        self.learners = learners or Learners()
        self.tracking_uri = config.tracking_uri()
        self.experiment = EXPERIMENT
        self.snapshot: KBSnapshot | None = None  # the KB as the last answer read it
        self._llm: ChatLLM | Future[ChatLLM] | None = None

    # ------------------------------------------------------------------ recommend
    def recommend(
        self,
        data: DataSpec,
        settings: Context | None = None,
        *,
        modality: str | None = None,
        name: str | None = None,
        shortlist: Shortlist | None = None,
        max_attempts: int = 2,
        hooks: Hooks | None = None,
    ) -> Recommendation:
        """The zero-shot recommendation for ``data`` (see :func:`metallmix.recommend`);
        ``settings`` are the run's (seed, shortlist size, compute regime, ...)."""
        settings = settings or Context()
        if max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {max_attempts}")
        if settings.compute is not None:
            settings = replace(settings, compute=check_regime(settings.compute))
        inputs = _inputs(data, modality, name, shortlist, max_attempts)
        store = resolve_kb(self.kb, read_only=True)
        require_runs(store)  # an empty or unreadable KB fails before any model is touched
        return self._answer(inputs, settings, store, hooks or Hooks())

    def _answer(
        self, inputs: dict[str, Any], settings: Context, kb: KnowledgeBase, hooks: Hooks
    ) -> Recommendation:
        """Run the graph on ``inputs`` with this session's resources; the KB-change notice
        on the result."""
        resources = RunResources(kb, self._llm_handle(settings.seed), learners=self.learners)
        context = replace(settings, resources=resources, experiment=self.experiment)
        if hooks.progress:
            hooks = replace(hooks, on_node=node_printer(hooks.on_node))
        with wait_lines(hooks.progress):  # the meta-learner fit's lines follow ``progress`` too
            if context.track:
                rec = self._tracked(inputs, context, hooks)
            else:
                rec = _result(_invoke(inputs, context, hooks))
        if resources.snapshot is not None:
            self.snapshot = resources.snapshot
        return _with_kb_change(rec, kb, resources.snapshot)

    def _llm_handle(self, seed: int) -> ChatLLM | Future[ChatLLM]:
        """The session's model: loading in the background from the first answer on (while
        features and shortlist run), reused by later answers; a failed load is retried."""
        failed = (
            isinstance(self._llm, Future) and self._llm.done() and self._llm.exception() is not None
        )
        if self._llm is None or failed:
            self._llm = load_llm_in_background(self.llm, seed)
        return self._llm

    def _tracked(self, inputs: dict[str, Any], context: Context, hooks: Hooks) -> Recommendation:
        """Run the graph inside an MLflow run and its root trace span (one opener for this
        and served runs: :func:`~metallmix.graphs.tracing.open_run`).

        The store must be writable before any work starts (a read-only ``mlflow.db`` is a
        one-line :class:`~metallmix.errors.TrackingError` here, not after the LLM answered).
        From then on tracking never costs the answer: a failure to log or to close the run
        is put on the result as ``tracking_error``. Ctrl-C or SIGTERM close the run as KILLED
        (and its trace with an error), any other error as FAILED.
        """
        assert context.resources is not None
        uri = self.tracking_uri
        tracking.check_writable_store(uri)
        run_name = inputs.get("dataset_name") or _stem(inputs.get("data"))
        shown = {k: str(v)[:200] for k, v in inputs.items() if k != "shortlist"}
        opened = tracing.open_run(context, run_name, shown, uri)
        context.resources.trace = opened
        try:
            result = _result(_invoke(inputs, context, hooks))
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through the CLI's handler
            tracking.close_traced_run(opened, "KILLED", tracking_uri=uri)
            raise
        except BaseException:
            tracking.close_traced_run(opened, "FAILED", tracking_uri=uri)
            raise
        problem = tracking.close_traced_run(
            opened,
            "FAILED" if result.tracking_error else "FINISHED",
            outputs=result.model_dump(mode="json", exclude={"meta_features"}),
            note=result.tracking_error,
            span_status="OK",  # the answer is whole; only its record failed
            tracking_uri=uri,
        )
        if problem and not result.tracking_error:
            result = result.model_copy(update={"tracking_error": problem})
        return result

    # --------------------------------------------------------------------- verify
    def verify(
        self,
        data: str | os.PathLike[str],
        k: int,
        settings: Context | None = None,
        *,
        modality: str | None = None,
        name: str | None = None,
        shortlist: Shortlist | None = None,
        max_attempts: int = 2,
        options: VerifyOptions | None = None,
        hooks: Hooks | None = None,
    ) -> VerifiedRecommendation:
        """The zero-shot answer on the CPU-regime shortlist, then successive halving over its
        top ``k`` candidates (:mod:`metallmix.verify`); re-running the same call resumes."""
        settings = settings or Context()
        options = options or VerifyOptions()
        plan = plan_verification(
            data,
            k,
            options,
            kb=self.kb,
            llm=self.llm,
            seed=settings.seed,
            space=settings.space,
            modality=modality,
        )
        if plan.stored is not None:  # a resumed call: neither the LLM nor the shortlist again
            rec, candidates = plan.stored, []
        else:
            found = shortlist or verify_shortlist(
                plan,
                data,
                k,
                n_candidates=settings.n_candidates,
                seed=settings.seed,
                space=settings.space,
                modality=modality,
            )
            check_k(found, k)
            inputs = _inputs(data, modality, name or plan.dataset.name, found, max_attempts)
            zero_shot = replace(settings, n_candidates=max(settings.n_candidates, k))
            rec = self._answer(inputs, zero_shot, plan.snapshot, hooks or Hooks())
            candidates = to_train(plan, found, rec.candidate_id, k)
        return run_verification(plan, rec, candidates, k=k, seed=settings.seed, options=options)

    # ------------------------------------------------------------------- validate
    def validate(
        self,
        recommendation: Recommendation,
        data: str | os.PathLike[str],
        seed: int = 0,
        *,
        modality: str | None = None,
        max_train_images: int | None = None,
        threads: int | None = None,
        progress: bool = True,
        track: bool = True,
    ) -> RunRecord:
        """Train the recommended configuration on ``data`` (see :func:`metallmix.validate`);
        the outcome joins this session's KB."""
        store = resolve_kb(self.kb, read_only=False)  # the validated run joins the KB
        dataset = load_dataset(Path(data), modality=modality, seed=seed)
        if track:
            nest = recording.validation_nesting(recommendation)
        else:
            nest = recording.Nesting("metallmix-validation", f"validate {recommendation.model}", {})
        hook = None
        if progress:
            hook = epoch_printer(recommendation.hyperparameters.epochs)
        record = run_trial(
            dataset,
            RunSpec(
                model=recommendation.model,
                hp=recommendation.hyperparameters,
                seed=seed,
                parent_run_id=recommendation.mlflow_run_id if track else None,
                pretrained=recommendation.pretrained,
                tags={"metallmix.recommendation": recommendation.candidate_id, **nest.tags},
                experiment=nest.experiment,
                run_name=nest.run_name,
            ),
            kb=store,
            settings=TrialSettings(
                max_train_images=max_train_images, threads=threads, progress=hook, track=track
            ),
        )
        if not track:
            return record
        try:
            recording.link_validation(recommendation, record)
        except Exception as exc:  # the training result is known: tracking must not cost it
            problem = tracking.redact_text(f"linking to the recommendation's run failed: {exc}")
            notes = {**record.provenance.notes}
            notes.setdefault("mlflow_logging_error", problem[:500])
            record = record.model_copy(
                update={"provenance": record.provenance.model_copy(update={"notes": notes})}
            )
        return record


def _inputs(
    data: DataSpec,
    modality: str | None,
    name: str | None,
    shortlist: Shortlist | None,
    max_attempts: int,
) -> dict[str, Any]:
    """The graph's input state; a dataset path that does not exist fails here, before the
    KB is read or the LLM loaded."""
    inputs: dict[str, Any] = {"modality": modality, "max_attempts": max_attempts}
    if isinstance(data, MetaFeatures):
        inputs["meta_features"] = data
        inputs["dataset_name"] = name or "meta-features"
    elif data is not None:
        path = Path(data).expanduser()
        if not path.exists():
            raise DatasetError(f"{path}: no such file or directory; check the dataset path")
        inputs["data"] = str(path)
        if name:
            inputs["dataset_name"] = name
    elif shortlist is None:
        raise ConfigError("recommend() needs data: a dataset path, a card or MetaFeatures")
    if shortlist is not None:
        inputs["shortlist"] = shortlist
        inputs.setdefault("meta_features", shortlist.meta_features)
        inputs.setdefault("dataset_name", name or "meta-features")
    return inputs


def _with_kb_change(
    rec: Recommendation, kb: KnowledgeBase, seen: KBSnapshot | None
) -> Recommendation:
    """``rec`` with :attr:`Recommendation.kb_change` set when the KB changed since the last
    answer (see :mod:`metallmix.kb_changes`); the workspace remembers this answer. ``seen``
    is what the answer read (no second read of the store). The notice never costs the
    answer: a KB or workspace that cannot be read leaves it out."""
    from metallmix.kb_changes import answer_of, note_answer

    try:
        records = seen.runs if seen is not None else list(kb.iter_records())
        notice = note_answer(records, kb.location, answer_of(rec))
    except (MetaLLMiXError, OSError, ValueError):
        return rec
    return rec.model_copy(update={"kb_change": notice}) if notice else rec


def _invoke(inputs: dict[str, Any], context: Context, hooks: Hooks) -> Any:
    """Run the graph; stream node updates only when someone listens."""
    if not hooks.listening():
        return graph().invoke(inputs, context=context)
    final: Any = None
    for mode, chunk in graph().stream(inputs, context=context, stream_mode=["updates", "values"]):
        if mode == "updates":
            for node, update in chunk.items():
                hooks(str(node), update)
        else:
            final = chunk
    return final


def _stem(data: Any) -> str | None:
    return Path(str(data)).stem if data else None


def _result(final: Any) -> Recommendation:
    rec = final["recommendation"] if isinstance(final, dict) else final.recommendation
    if rec is None:  # pragma: no cover - the graph always ends with one (or raises)
        raise MetaLLMiXError("the recommendation graph ended without a recommendation")
    if isinstance(rec, dict):
        rec = Recommendation.model_validate(rec)
    run_id = final.get("mlflow_run_id") if isinstance(final, dict) else None
    if run_id and rec.mlflow_run_id != run_id:
        rec = rec.model_copy(update={"mlflow_run_id": run_id})
    return rec
