"""Candidates and the diverse shortlist the recommender agent chooses from.

Candidates come from two places: the configurations of the best runs on the most similar
KB datasets (evidence that worked somewhere alike) and random samples of the search space
(coverage where the KB is thin). The meta-learner scores all of them; a greedy pass keeps
the best per model first so the agent sees real alternatives, not five near-copies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metallmix.errors import KnowledgeBaseError
from metallmix.tools.kb.records import Hyperparameters, RunRecord
from metallmix.tools.kb.regime import REGIME_DESCRIPTION, REGIME_SPACE, Regime
from metallmix.tools.kb.regime_view import regime_kb
from metallmix.tools.kb.snapshot import KBSnapshot
from metallmix.tools.kb.store import KnowledgeBase
from metallmix.tools.meta.contracts import Candidate, ShapFact, Shortlist, SimilarRun
from metallmix.tools.meta.encoding import candidates_frame
from metallmix.tools.meta.explain import facts_for_rows
from metallmix.tools.meta.metalearner import (
    MetaLearner,
    MetaLearnerConfig,
    chance_level,
    fit_or_load,
)
from metallmix.tools.meta.metric import metric_of_runs
from metallmix.tools.meta.portfolio import DEFAULT_RULE, Rule, check_rule, hedged
from metallmix.tools.meta.retrieval import (
    DatasetScaler,
    RetrievalIndex,
    _raw_vector,
    _similar,
    load_or_build,
)
from metallmix.tools.meta.search_space import CPU_ZOO_SPACE, SearchSpace, get_space
from metallmix.tools.metafeatures import MetaFeatures

N_SAMPLES = 300
SIMILAR_DATASETS = 5
SHOWN_RUNS = 9  # best 3 runs on each of the 3 most similar datasets
FACTS_PER_CANDIDATE = 4
RUNS_PER_SIMILAR_DATASET = 5
# Out-of-range detection: a meta-feature beyond RANGE_SLACK times the KB's range (counts and
# sizes compare as ratios), or a dataset farther from its nearest KB dataset than any KB
# dataset is from its own nearest neighbour, is outside what the meta-learner has seen.
RANGE_FEATURES = ("n_images", "n_classes", "images_per_class", "resolution_h", "resolution_w")
RANGE_SLACK = 1.5
# An out-of-range interval is widened by its own width on each side, at least this much.
OOD_MIN_WIDENING = 0.1
# Evidence ceiling: when the KB holds a near-identical dataset (retrieval similarity at
# least EVIDENCE_SIMILARITY) with at least EVIDENCE_MIN_RUNS completed full-fidelity runs,
# no interval reaches past the best of those runs by more than EVIDENCE_SLACK: 100% on a
# dataset whose best KB run is 86% says nothing. Gated on strong evidence only: clipping to
# the best run of a merely *similar* dataset killed coverage on knee_oa_kl in LODO.
EVIDENCE_SIMILARITY = 0.95
EVIDENCE_MIN_RUNS = 5
EVIDENCE_SLACK = 0.05
# Portfolio: each KB dataset's best completed configuration joins the candidate pool
# (zero-shot portfolios in the manner of Auto-sklearn 2.0 / TabRepo).
PORTFOLIO_SIZE = 20


RESOLUTION_FEATURES = ("resolution_h", "resolution_w")


def _seen(native: float, size: float | None) -> float:
    """The resolution a run trained at ``size`` px sees of a ``native``-px image."""
    return native if size is None else min(native, float(size))


def _kb_seen_resolution(
    records: list[RunRecord], *, as_trained: bool = True
) -> dict[str, tuple[float, float]]:
    """KB range of the resolution its runs *saw*: min(native, the run's image_size)
    (``as_trained=False``: the datasets' native resolution)."""
    out: dict[str, tuple[float, float]] = {}
    for name in RESOLUTION_FEATURES:
        seen = [
            _seen(
                float(getattr(r.meta_features, name)),
                r.hyperparameters.image_size if as_trained else None,
            )
            for r in records
            if np.isfinite(getattr(r.meta_features, name) or np.nan)
            and getattr(r.meta_features, name) > 0
        ]
        if seen:
            out[name] = (min(seen), max(seen))
    return out


def _with_resolution(meta_features: MetaFeatures, values: dict[str, float]) -> MetaFeatures:
    return meta_features.model_copy(update=values) if values else meta_features


def _how_far(value: float, low: float, high: float) -> str:
    """'1.7x the KB's largest (5,778)' / '0.33x the KB's smallest (21)'."""
    if value > high:
        return f"{value / high:.1f}x the KB's largest ({high:,.6g})"
    return f"{value / low:.2f}x the KB's smallest ({low:,.6g})"


def kb_coverage(
    meta_features: MetaFeatures,
    records: list[RunRecord],
    *,
    train_sizes: tuple[int, int] | None = None,
) -> tuple[bool, list[str]]:
    """(out of range?, reasons): per-feature KB ranges and distance to the nearest dataset.

    Resolution is compared as the pipeline sees it: every run resizes to its ``image_size``,
    so the KB knows the resolutions its runs *saw* (min(native, image_size)) and the query's
    candidates see min(native, s) for the space's training sizes ``train_sizes`` (smallest,
    largest). Resolution is a reason only when no training size of the space puts the query
    inside what the KB saw: a 600 px photo trained at 64 px is a 64 px image.
    """
    metas: dict[str, MetaFeatures] = {}
    for r in records:
        metas.setdefault(r.dataset, r.meta_features)
    if not metas:
        return True, ["the knowledge base holds no dataset"]
    reasons: list[str] = []
    query = meta_features.numeric()
    kb_seen = _kb_seen_resolution(records, as_trained=train_sizes is not None)
    nearest_seen: dict[str, float] = {}
    for name in RANGE_FEATURES:
        value = query.get(name)
        if value is None or not np.isfinite(value) or value <= 0:
            continue
        if name in RESOLUTION_FEATURES:
            if name not in kb_seen:
                continue
            low, high = kb_seen[name]
            small, large = train_sizes or (None, None)
            q_low, q_high = _seen(value, small), _seen(value, large)
            # the value the closest training size gives: what the distance check compares
            nearest_seen[name] = float(np.clip(high, q_low, q_high))
            if q_low > high * RANGE_SLACK or q_high < low / RANGE_SLACK:
                seen_value = q_low if q_low > high else q_high
                trained = f" (seen at {seen_value:g} px by the space's training sizes)"
                reasons.append(
                    f"{name} {value:,.6g}{trained if train_sizes else ''} is outside the "
                    f"resolutions the KB's runs saw, {low:g}-{high:g} px "
                    f"({_how_far(seen_value, low, high)})"
                )
            continue
        known = [m.numeric().get(name) for m in metas.values()]
        seen = [float(v) for v in known if v is not None and np.isfinite(v) and v > 0]
        if not seen:
            continue
        low, high = min(seen), max(seen)
        if value < low / RANGE_SLACK or value > high * RANGE_SLACK:
            reasons.append(
                f"{name} {value:,.6g} is outside the KB's range {low:,.6g}-{high:,.6g} "
                f"({_how_far(float(value), low, high)})"
            )
    names = sorted(metas)
    if len(names) >= 2:
        # resolution as seen: KB datasets at their runs' largest size, the query at the
        # training size closest to the KB
        kb_sizes: dict[str, float] = {}
        for r in records:
            size = r.hyperparameters.image_size
            if size is not None and train_sizes is not None:
                kb_sizes[r.dataset] = max(kb_sizes.get(r.dataset, 0.0), float(size))
        seen_metas = [
            _with_resolution(
                metas[n],
                {
                    f: _seen(float(getattr(metas[n], f)), kb_sizes.get(n))
                    for f in RESOLUTION_FEATURES
                },
            )
            for n in names
        ]
        query_seen = _with_resolution(meta_features, nearest_seen)
        scaler = DatasetScaler.fit(seen_metas)
        k = len(_raw_vector(query_seen))
        kb = np.vstack([scaler.embed(m)[:k] for m in seen_metas])
        q = scaler.embed(query_seen)[:k]
        dist = np.linalg.norm(kb - q, axis=1)
        pair = np.linalg.norm(kb[:, None, :] - kb[None, :, :], axis=2)
        np.fill_diagonal(pair, np.inf)
        threshold = float(pair.min(axis=1).max())
        nearest = int(np.argmin(dist))
        if float(dist[nearest]) > threshold:
            reasons.append(
                f"its nearest KB dataset ({names[nearest]}) is at standardised distance "
                f"{float(dist[nearest]):.1f}, beyond the KB's own spread ({threshold:.1f})"
            )
    return bool(reasons), reasons


def evidence_ceiling(found: Retrieved, records: list[RunRecord]) -> tuple[float, str] | None:
    """(ceiling, why) from the near-identical KB datasets' best runs, or None when the KB
    holds none with enough runs (see :data:`EVIDENCE_SIMILARITY`)."""
    similarity: dict[str, float] = {}
    for run in [*found.shown, *found.neighbours]:
        similarity[run.dataset] = max(similarity.get(run.dataset, 0.0), run.similarity)
    close = {d for d, sim in similarity.items() if sim >= EVIDENCE_SIMILARITY}
    if not close:
        return None
    scores: dict[str, list[float]] = {}
    for r in records:
        if (
            r.dataset in close
            and r.status == "ok"
            and r.score is not None
            and r.outcomes.completed
            and r.fidelity.full
        ):
            scores.setdefault(r.dataset, []).append(float(r.score))
    strong = {d: v for d, v in scores.items() if len(v) >= EVIDENCE_MIN_RUNS}
    if not strong:
        return None
    dataset = max(strong, key=lambda d: (max(strong[d]), d))
    best = max(strong[dataset])
    why = (
        f"upper ends capped at {best + EVIDENCE_SLACK:.1%}: the best of {len(strong[dataset])} "
        f"KB runs on {dataset} (similarity {similarity[dataset]:.2f}) is {best:.1%}"
    )
    return min(1.0, best + EVIDENCE_SLACK), why


def widen_for_ood(low: float, high: float, floor: float = 0.0) -> tuple[float, float]:
    """The interval an out-of-range dataset gets: its width again on each side (>= 0.1),
    its lower end not below ``floor`` (chance, where the prediction is not under it)."""
    pad = max(high - low, OOD_MIN_WIDENING)
    return max(floor, low - pad), min(1.0, high + pad)


def portfolio(
    records: list[RunRecord], space: SearchSpace, size: int = PORTFOLIO_SIZE
) -> list[tuple[str, Hyperparameters, str]]:
    """Each KB dataset's best completed run inside ``space`` (most datasets first)."""
    best: dict[str, RunRecord] = {}
    for r in records:
        acc = r.outcomes.val_accuracy
        if r.status != "ok" or acc is None or not r.outcomes.completed:
            continue
        if not space.contains(r.model, r.hyperparameters):
            continue
        cur = best.get(r.dataset)
        if cur is None or (acc, r.run_id) > (cur.outcomes.val_accuracy or 0.0, cur.run_id):
            best[r.dataset] = r
    runs = sorted(best.values(), key=lambda r: r.dataset)[:size]
    return [(r.model, r.hyperparameters, f"portfolio:{r.run_id}") for r in runs]


def _config_key(model: str, hp: Hyperparameters) -> str:
    return json.dumps([model, hp.model_dump(mode="json")], sort_keys=True, default=str)


@dataclass(frozen=True)
class Retrieved:
    """What retrieval finds for one dataset: ``shown``, the best runs on the 3 most similar
    KB datasets (the LLM's evidence), and ``neighbours``, the best runs on the 5 most similar
    (configurations that worked somewhere alike, which join the candidate pool)."""

    shown: list[SimilarRun]
    neighbours: list[SimilarRun]


def retrieve(
    meta_features: MetaFeatures, index: RetrievalIndex, *, exclude: set[str] | None = None
) -> Retrieved:
    """The similar runs a recommendation uses, from one index (``exclude``: hidden datasets)."""
    return Retrieved(
        shown=index.similar_runs(meta_features, k=SHOWN_RUNS, exclude=exclude),
        neighbours=index.similar_runs(
            meta_features,
            k=SIMILAR_DATASETS * RUNS_PER_SIMILAR_DATASET,
            per_dataset=RUNS_PER_SIMILAR_DATASET,
            n_datasets=SIMILAR_DATASETS,
            exclude=exclude,
        ),
    )


def gather_candidates(
    neighbours: list[SimilarRun],
    space: SearchSpace,
    *,
    seed: int = 0,
    n_samples: int = N_SAMPLES,
) -> list[tuple[str, Hyperparameters, str]]:
    """(model, hp, origin) from the retrieved runs inside ``space`` plus samples of ``space``."""
    seen: set[str] = set()
    out: list[tuple[str, Hyperparameters, str]] = []
    for run in neighbours:
        key = _config_key(run.model, run.hyperparameters)
        if key in seen or not space.contains(run.model, run.hyperparameters):
            continue
        seen.add(key)
        out.append((run.model, run.hyperparameters, f"similar-run:{run.run_id}"))
    for model, hp in space.sample(n_samples, seed=seed):
        key = _config_key(model, hp)
        if key not in seen:
            seen.add(key)
            out.append((model, hp, "sampled"))
    return out


def diverse_top(models: list[str], scores: np.ndarray, n: int, *, per_model: int = 1) -> list[int]:
    """Indices of the top-``n`` scores, at most ``per_model`` per model in a first pass."""
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    picked: list[int] = []
    counts: dict[str, int] = {}
    for i in order:
        if len(picked) >= n:
            break
        if counts.get(models[i], 0) < per_model:
            picked.append(i)
            counts[models[i]] = counts.get(models[i], 0) + 1
    for i in order:
        if len(picked) >= n:
            break
        if i not in picked:
            picked.append(i)
    return picked


@dataclass(frozen=True)
class ShortlistOptions:
    """How a shortlist is made beyond its size and seed (the defaults are the product's).

    ``rule``: ``top`` or a hedging rule of :mod:`~metallmix.tools.meta.portfolio`.
    ``exclude_datasets`` (dataset names or groups) are invisible to the meta-learner and to
    retrieval, e.g. when the user's dataset is itself in the KB. ``facts_per_candidate``:
    SHAP facts added per candidate (0: none; the graph adds them in its own node).
    ``learner_config`` and ``cache`` (where the fitted meta-learner and retrieval index are
    kept; an empty folder times a cold start) apply when no learner is given.
    """

    rule: Rule = DEFAULT_RULE
    exclude_datasets: frozenset[str] = frozenset()
    n_samples: int = N_SAMPLES
    facts_per_candidate: int = 0
    learner_config: MetaLearnerConfig | None = None
    cache: Path | None = None


def regime_shortlist(
    meta_features: MetaFeatures,
    kb: KnowledgeBase,
    regime: Regime | None,
    *,
    n: int = 5,
    seed: int = 0,
    space: SearchSpace | None = None,
    learner: MetaLearner | None = None,
    found: Retrieved | None = None,
    options: ShortlistOptions | None = None,
) -> Shortlist:
    """The scored, diverse shortlist for ``meta_features`` from the ``regime``'s runs of
    ``kb`` (a store or a snapshot), carrying that regime's metric: the one place the steps
    regime -> view -> retrieval -> scoring -> metric are written. The graph's ``shortlist``
    node, ``recommend(verify=K)``, the other-regime preview and the CLI all call it.

    ``regime`` None scores on the whole KB (no view, no metric set). ``space`` defaults to
    the regime's space. ``learner`` (fitted on this view, e.g. the session's) and ``found``
    (the graph's ``retrieve`` node's runs) skip fitting and retrieval when given; without
    them the view is read once and the learner and index come from the disk cache.
    """
    options = options or ShortlistOptions()
    snapshot = KBSnapshot.of(kb)
    view: KnowledgeBase = snapshot
    if regime is not None:
        view = regime_kb(snapshot, regime, snapshot.runs)
        if not view.run_ids():
            raise KnowledgeBaseError(
                f"the knowledge base {snapshot.location} holds no {regime} run "
                f"({REGIME_DESCRIPTION[regime]})"
            )
        space = space or get_space(REGIME_SPACE[regime])
    view_snapshot = KBSnapshot.of(view)
    records = view_snapshot.runs
    excluded = _excluded_datasets(records, set(options.exclude_datasets))
    if learner is None:
        learner = fit_or_load(
            view_snapshot,
            options.learner_config or MetaLearnerConfig(seed=seed),
            exclude_datasets=excluded,
            records=records,
            kb_hash=view_snapshot.content_hash(),
            cache=options.cache,
        )
    visible = [r for r in records if r.dataset not in excluded] if excluded else records
    if found is None:
        index = (
            load_or_build(
                view_snapshot,
                records=records,
                kb_hash=view_snapshot.content_hash(),
                cache=options.cache,
            )
            if not excluded
            else RetrievalIndex.build(visible)
        )
        found = retrieve(meta_features, index, exclude=excluded)
    shortlist = rank(
        meta_features,
        learner,
        visible,
        found,
        n=n,
        space=space,
        seed=seed,
        n_samples=options.n_samples,
        rule=options.rule,
    )
    if options.facts_per_candidate > 0:
        facts = explain_shortlist(learner, shortlist, top_k=options.facts_per_candidate)
        shortlist = shortlist.model_copy(update={"facts": facts})
    if regime is None:
        return shortlist
    metric, note = metric_of_runs(records)
    return shortlist.model_copy(update={"metric": metric, "metric_note": note, "regime": regime})


def rank(
    meta_features: MetaFeatures,
    learner: MetaLearner,
    records: list[RunRecord],
    found: Retrieved,
    *,
    n: int = 5,
    space: SearchSpace | None = None,
    seed: int = 0,
    n_samples: int = N_SAMPLES,
    rule: Rule = DEFAULT_RULE,
) -> Shortlist:
    """The ``n`` best-scored, diverse candidates (no SHAP facts yet: see
    :func:`explain_shortlist`) from the retrieved runs, the portfolio of ``records`` (the
    KB runs the meta-learner may see) and samples of ``space``. ``rule``: ``top`` (the best
    scores, one per model first) or a hedging rule of :mod:`~metallmix.tools.meta.portfolio`
    (the candidates then stand in the order the rule chose them)."""
    space = space or CPU_ZOO_SPACE
    pool = gather_candidates(found.neighbours, space, seed=seed, n_samples=n_samples)
    keys = {_config_key(m, hp) for m, hp, _ in pool}
    pool += [p for p in portfolio(records, space) if _config_key(p[0], p[1]) not in keys]
    ood, ood_reasons = kb_coverage(meta_features, records, train_sizes=space.image_sizes())
    configs = [(m, hp) for m, hp, _ in pool]
    frame = candidates_frame(
        meta_features, configs, pretrained=[space.is_pretrained(m) for m, _ in configs]
    )
    pred = learner.predict(frame)
    ceiling = None if ood else evidence_ceiling(found, records)
    picked = (
        diverse_top([m for m, _ in configs], pred.score, n)
        if check_rule(rule) == "top"
        else hedged(rule, learner, frame, pred.score, records, n)
    )
    candidates: list[Candidate] = []
    for rank_, i in enumerate(picked, start=1):
        model, hp, origin = pool[i]
        seconds = float(pred.seconds[i])
        low, high = float(pred.low[i]), float(pred.high[i])
        if ood:
            floor = min(float(chance_level(frame.iloc[[i]])[0]), float(pred.accuracy[i]))
            low, high = widen_for_ood(low, high, floor)
        elif ceiling is not None:  # never past the evidence (the point stays inside)
            high = max(min(high, ceiling[0]), float(pred.accuracy[i]))
            low = min(low, high)
        candidates.append(
            Candidate(
                candidate_id=f"c{rank_}",
                model=model,
                pretrained=space.is_pretrained(model),
                hyperparameters=hp,
                predicted_accuracy=round(float(pred.accuracy[i]), 4),
                accuracy_low=round(low, 4),
                accuracy_high=round(high, 4),
                predicted_seconds=round(seconds, 1) if np.isfinite(seconds) else None,
                score=round(float(pred.score[i]), 4),
                origin=origin,
            )
        )
    return Shortlist(
        meta_features=meta_features,
        candidates=candidates,
        similar_runs=found.shown + own_model_runs(candidates, records, found),
        rank_basis=rank_basis(learner),
        kb_hash=str(learner.info.get("kb_hash") or ""),
        metalearner_version=learner.version,
        ood=ood,
        ood_reasons=ood_reasons,
        interval_note=ceiling[1] if ceiling is not None else "",
        learner_fit=str(learner.info.get("fit") or ""),
    )


OWN_MODEL_RUNS = 2  # past runs of each shortlisted model added to the evidence


def rank_basis(learner: MetaLearner) -> str:
    """What orders the shortlist, in words for the user: the ensemble ranks by where each
    configuration falls among the candidates (not by the printed prediction)."""
    if learner.score_boosters and learner.config.objective == "ensemble":
        return (
            "ranked by the meta-learner's expected rank among the candidate configurations "
            "for datasets like yours (the mean percentile of its ranking models); the "
            "predicted score is shown beside it and can order them differently"
        )
    if learner.score_boosters:
        return (
            "ranked by the meta-learner's ranking score; the predicted score is shown beside "
            "it and can order them differently"
        )
    return "ranked by the predicted score"


def own_model_runs(
    candidates: list[Candidate], records: list[RunRecord], found: Retrieved
) -> list[SimilarRun]:
    """Past runs of each candidate's model on the retrieved similar datasets (same
    configuration first, then the best score), so the evidence can cite the recommended
    configuration's own history or say that there is none."""
    similarity: dict[str, float] = {}
    for r in [*found.shown, *found.neighbours]:
        similarity.setdefault(r.dataset, r.similarity)
    shown = {r.run_id for r in found.shown}
    out: list[SimilarRun] = []
    for c in candidates:
        own = [
            r
            for r in records
            if r.dataset in similarity
            and r.model == c.model
            and r.status == "ok"
            and r.outcomes.val_accuracy is not None
            and r.run_id not in shown
        ]
        key = _config_key(c.model, c.hyperparameters)
        own.sort(
            key=lambda r: (
                _config_key(r.model, r.hyperparameters) != key,
                -similarity[r.dataset],
                -(r.score or 0.0),
                r.run_id,
            )
        )
        for record in own[:OWN_MODEL_RUNS]:
            shown.add(record.run_id)
            out.append(_similar(record, similarity[record.dataset]))
    return out


def candidate_rows(shortlist: Shortlist) -> pd.DataFrame:
    """The meta-learner's input rows of the shortlisted candidates, in shortlist order."""
    return candidates_frame(
        shortlist.meta_features,
        [(c.model, c.hyperparameters) for c in shortlist.candidates],
        pretrained=[c.pretrained for c in shortlist.candidates],
    )


def explain_shortlist(
    learner: MetaLearner, shortlist: Shortlist, *, top_k: int = FACTS_PER_CANDIDATE
) -> list[ShapFact]:
    """The ``top_k`` largest SHAP facts of each shortlisted candidate."""
    return facts_for_rows(
        learner,
        candidate_rows(shortlist),
        [c.candidate_id for c in shortlist.candidates],
        top_k=top_k,
    )


def _excluded_datasets(records: list[RunRecord], names: set[str]) -> set[str]:
    """Dataset names hidden by ``names`` (a name or a dataset group hides all its tasks)."""
    if not names:
        return set()
    return {r.dataset for r in records if r.dataset in names or r.dataset_group in names} | names
