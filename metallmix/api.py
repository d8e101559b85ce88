"""The public Python API: recommend a configuration, then optionally validate it.

>>> data = "../shared/data/medical/breastmnist.npz"
>>> rec = metallmix.recommend(data, llm="fast")  # doctest: +SKIP
>>> record = metallmix.validate(rec, data)  # doctest: +SKIP

Every ``recommend`` is one MLflow run (experiment ``metallmix-recommendations``) with a
trace of the graph; ``validate`` trains the recommendation and nests its run under it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, cast

from metallmix.agents.schemas import Recommendation
from metallmix.errors import ConfigError
from metallmix.graphs.configuration import Context
from metallmix.graphs.graph import build_graph as build
from metallmix.graphs.resources import KbSpec, Learners, LlmSpec
from metallmix.session import Hooks, Session
from metallmix.tools.meta.contracts import Shortlist
from metallmix.tools.metafeatures import MetaFeatures
from metallmix.verify import VerifyOptions

if TYPE_CHECKING:
    from metallmix.tools.kb.records import RunRecord

__all__ = ["Recommendation", "Session", "build_graph", "recommend", "validate"]

# The module-level functions' sessions share their fitted meta-learners (keyed by KB
# content), so repeated calls on an unchanged KB do not load them again.
_LEARNERS = Learners()


def build_graph() -> Any:
    """A freshly compiled recommendation graph (a LangChain runnable), as ``recommend``
    runs it: it also takes a precomputed ``shortlist`` and ``max_attempts`` as input."""
    return build(internal_inputs=True)


def recommend(
    data: str | os.PathLike[str] | MetaFeatures | None,
    modality: str | None = None,
    llm: LlmSpec = None,
    kb: KbSpec = None,
    seed: int = 0,
    *,
    shortlist: Shortlist | None = None,
    name: str | None = None,
    space: str | None = None,
    compute: str | None = None,
    n_candidates: int = 5,
    judge_with_llm: bool = True,
    max_attempts: int = 2,
    choose: Literal["llm", "top1"] | None = None,
    track: bool = True,
    on_node: Callable[[str], None] | None = None,
    verify: int | None = None,
    budget_minutes: float | None = None,
    backend: Any | None = None,
    verify_options: dict[str, Any] | None = None,
    on_shortlist: Callable[[Shortlist], None] | None = None,
    progress: bool = True,
) -> Recommendation:
    """Recommend a model and hyperparameters for ``data``.

    ``data`` is a dataset path (``.npz``, ImageFolder, CSV manifest), a dataset-card JSON,
    or precomputed :class:`MetaFeatures`. ``llm`` is a registry name, a profile (``fast``,
    ``default``), a ``.gguf`` path or a loaded model; ``kb`` a ``.sqlite`` path or an open
    store (default: ``METALLMIX_KB`` or the layered default). ``track`` logs the decision to
    MLflow (``MLFLOW_TRACKING_URI``); the run id is on the result. ``choose`` is ``"llm"``
    (the LLM picks among the shortlist) or ``"top1"`` (it explains the meta-learner's top
    candidate); None keeps the graph's default. ``on_shortlist`` is called with the scored
    shortlist as soon as it exists, before the LLM has answered.

    ``progress`` prints one line per finished graph node on stderr, and lines every 2 s
    while the meta-learner is fitted for new KB content (``progress=False``: silent).
    ``on_node(name)`` is your own hook, called with each node's name as it finishes
    (``features``, ``retrieve``, ``shortlist``, ``evidence``, ``recommender``, ``judge``,
    ``fallback``, ``record``; the recommender and judge once per attempt), e.g. to drive a
    progress bar.
    ``compute`` (``cpu`` or ``gpu``; default: ``gpu`` when torch sees CUDA) picks the
    regime: which KB runs the meta-learner learns from and which search space it proposes from.

    ``verify=K`` then trains the top-K shortlisted configurations with successive halving
    within ``budget_minutes`` on ``backend`` (``"local"``, ``"ray"`` or an execution
    backend) and returns a :class:`~metallmix.verify.VerifiedRecommendation`; re-running
    the same call resumes it. ``verify_options`` go to
    :class:`metallmix.verify.VerifyOptions` (``max_train_images``, ``threads``, ...).
    """
    if verify is None and budget_minutes is not None:
        raise ConfigError(
            "budget_minutes only applies with verify=K (training the top K candidates); "
            "pass verify or drop budget_minutes"
        )
    session = Session(kb, llm, learners=_LEARNERS)
    settings = Context(
        seed=seed,
        n_candidates=n_candidates,
        space=space,
        compute=cast(Any, compute),  # checked by the session
        judge_with_llm=judge_with_llm,
        track=track,
    )
    if choose:
        settings.choose = choose
    hooks = Hooks(on_node, on_shortlist, progress)
    if verify is None:
        return session.recommend(
            data,
            settings,
            modality=modality,
            name=name,
            shortlist=shortlist,
            max_attempts=max_attempts,
            hooks=hooks,
        )
    if data is None or isinstance(data, MetaFeatures):
        raise ConfigError("verify needs a dataset path to train on, not only meta-features")
    options = VerifyOptions(
        budget_minutes=budget_minutes, backend=backend, **(verify_options or {})
    )
    return session.verify(
        data,
        verify,
        replace(settings, compute=None),  # the verified shortlist fixes the regime: CPU
        modality=modality,
        name=name,
        shortlist=shortlist,
        max_attempts=max_attempts,
        options=options,
        hooks=Hooks(on_node, None, progress),
    )


def validate(
    recommendation: Recommendation,
    data: str | os.PathLike[str],
    seed: int = 0,
    *,
    kb: KbSpec = None,
    modality: str | None = None,
    max_train_images: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    track: bool = True,
) -> RunRecord:
    """Train the recommended configuration on ``data``; the MLflow run nests under the
    recommendation's run (same experiment, ``mlflow.parentRunId``, a link back in its
    description) and the outcome joins the KB (the KB grows with every validation).
    ``progress`` prints one line per epoch on stderr (``progress=False``: silent).

    ``track=False`` records nothing in MLflow. With tracking, a store that fails once
    training has started never costs the result: it is returned, with the reason in
    ``record.provenance.notes["mlflow_logging_error"]``.
    """
    return Session(kb, learners=_LEARNERS).validate(
        recommendation,
        data,
        seed,
        modality=modality,
        max_train_images=max_train_images,
        threads=threads,
        progress=progress,
        track=track,
    )
