"""How good is the LLM's voice, and does its *choice* help? (issue 13)

Part 1, the voice: both bundled models recommend for >= 12 inputs (the six shared medical
datasets, derived tasks of the KB, the bundled cards, synthetic cards) and the benchmark
reports first-attempt pass rate, fallback rate, answers rejected for misattributed numbers or
untrue words (caught), LLM tokens, and latency p50/p95 per graph node, with the load average.

Part 2, the choice: on leave-one-dataset-out folds (the meta-learner and retrieval never
see the held-out dataset), the shortlist is built from the held-out dataset's *evaluated*
configurations, so each pick's true accuracy is known; the normalised regret of the LLM's
pick (among the top ``MAX_CHOICES``) is compared with the meta-learner's top-1.

    python bench/judge_quality.py --models fast --limit 4 --lodo-limit 2     # a small subset
    python bench/judge_quality.py --models fast,default                     # everything

Part 3, the judge: explanations built from real shortlists (the shipped KB, the shared
medical datasets, cards, synthetic inputs), each correct or with one planted error
(:mod:`metallmix.benchmarks.judge_plants`): the code checks' catch rate per error type and
their false-alarm rate. Part 1 also reports how often the writer's drafts and the final
answer contradict the pick (names another model or candidate, a wrong metric word, a run
described wrongly).

    python bench/judge_quality.py --adversarial-only --tag adversarial      # part 3, minutes

Writes ``bench/results/judge_quality[_<tag>].{json,md}``. Expensive on a busy 2-core box:
each recommendation is 2-4 LLM calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from metallmix.atomic import write_text

ROOT = Path(__file__).resolve().parents[3]  # the repository (metallmix/benchmarks/scripts/..)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ----------------------------------------------------------------- the inputs
def inputs(kb_path: str) -> list[tuple[str, Any]]:
    """(name, data) pairs: dataset paths, cards and MetaFeatures, in a fixed order that
    mixes the kinds, so ``--limit`` keeps a varied subset."""
    from metallmix import config
    from metallmix.cli.recommend import example_card
    from metallmix.tools.kb.store import open_kb
    from metallmix.tools.metafeatures import MetaFeatures

    shared = config.shared_data_dir() / "medical"
    datasets = sorted(shared.glob("*.npz")) if shared.is_dir() else []
    cards = [example_card("isic2018"), example_card("chest-xray")]
    derived: dict[str, MetaFeatures] = {}
    for r in open_kb(kb_path, read_only=True).iter_records():
        if "/" in r.dataset and r.dataset not in derived:
            derived[r.dataset] = r.meta_features
    derived_items = [
        (name, derived[name]) for name in sorted(derived)[:: max(1, len(derived) // 3)]
    ]
    synthetic = [
        (
            "synthetic: large RGB histopathology",
            MetaFeatures(
                n_images=40000,
                n_classes=9,
                imbalance_ratio=1.8,
                resolution_h=224,
                resolution_w=224,
                channels=3,
                class_size_mean=4444,
                modality="histopathology",
                images_per_class=4444,
            ),
        ),
        (
            "synthetic: tiny grey X-ray, 3 classes",
            MetaFeatures(
                n_images=240,
                n_classes=3,
                imbalance_ratio=4.0,
                resolution_h=64,
                resolution_w=64,
                channels=1,
                class_size_mean=80,
                modality="chest X-ray",
                images_per_class=80,
            ),
        ),
        (
            "synthetic: imbalanced fundus",
            MetaFeatures(
                n_images=3500,
                n_classes=5,
                imbalance_ratio=25.0,
                resolution_h=512,
                resolution_w=512,
                channels=3,
                class_size_mean=700,
                modality="fundus photography",
                images_per_class=700,
            ),
        ),
    ]
    pools: list[list[tuple[str, Any]]] = [
        [(p.stem, str(p)) for p in datasets],
        [(c.stem, str(c)) for c in cards],
        derived_items,
        synthetic,
    ]
    mixed: list[tuple[str, Any]] = []
    while any(pools):
        for pool in pools:
            if pool:
                mixed.append(pool.pop(0))
    return mixed


# ----------------------------------------------------------------- part 1: the voice
def _final_state(graph: Any, inputs_: dict[str, Any], context: Any) -> dict[str, Any]:
    """The whole final state, rebuilt from the node updates.

    The graph's output schema returns only the recommendation and the run id; the benchmark
    needs the judge's verdicts and the LLM exchanges too, so it folds the per-node updates
    (lists append and timings merge, like the state's reducers; the rest is replaced)."""
    final: dict[str, Any] = {"verdicts": [], "exchanges": []}
    for update in graph.stream(inputs_, context=context, stream_mode="updates"):
        for delta in update.values():
            for key, value in (delta or {}).items():
                if key in ("verdicts", "exchanges"):
                    final[key] = final[key] + list(value)
                elif key == "timings":
                    final[key] = {**final.get(key, {}), **value}
                else:
                    final[key] = value
    return final


def one(model: str, name: str, data: Any, kb: Any, llm: Any, choose: str | None) -> dict[str, Any]:
    """One untracked recommendation through the real graph; the whole final state."""
    from metallmix.graphs.configuration import Context
    from metallmix.graphs.resources import RunResources
    from metallmix.session import graph
    from metallmix.tools.metafeatures import MetaFeatures

    inputs_: dict[str, Any] = {"max_attempts": 2, "dataset_name": name}
    if isinstance(data, MetaFeatures):
        inputs_["meta_features"] = data
    else:
        inputs_["data"] = data
    context = Context(seed=0, track=False, resources=RunResources(kb, llm))
    if choose:
        context.choose = choose  # type: ignore[assignment]
    before = load()
    started = time.perf_counter()
    final = _final_state(graph(), inputs_, context)
    total = time.perf_counter() - started
    rec = final["recommendation"]
    verdicts = final["verdicts"]
    wording = {"numbers_attributed", "claims_true", "confidence_consistent", "numbers_grounded"}
    caught = [
        sorted(k for k, ok in v.checks.items() if not ok and k in wording)
        for v in verdicts
        if any(not v.checks.get(k, True) for k in wording)
    ]
    identity = {"names_the_pick", "metric_words", "runs_described", "no_placeholder"}
    drafts_contradicting = sum(any(not v.checks.get(k, True) for k in identity) for v in verdicts)
    from metallmix.agents.judge import hard_checks

    final_checks, _ = hard_checks(
        rec,
        final["shortlist"],
        known_run_ids={r.run_id for r in final.get("similar_runs", [])},
        evidence=final.get("evidence"),
    )
    contradicts = [k for k in sorted(identity) if not final_checks.get(k, True)]
    usage = [e.get("usage", {}) for e in final["exchanges"]]
    return {
        "model": model,
        "input": name,
        "total_s": round(total, 2),
        "load_before": before,
        "load_after": load(),
        "first_attempt_pass": bool(verdicts and verdicts[0].passed),
        "fallback": bool(final.get("fallback")),
        "drafts": len(verdicts),
        "drafts_contradicting": drafts_contradicting,
        "final_contradicts": contradicts,
        "attempts": final["attempts"],
        "caught": caught,
        "llm_graded": [v.llm_graded for v in verdicts],
        "failures": [v.failures for v in verdicts],
        "timings": final["timings"],
        "candidate": rec.candidate_id,
        "explanation": rec.explanation,
        # the prompt shows a rationale built by code from this request's evidence; how often
        # the LLM's final words are that example verbatim says how much of the text is its own
        "pasted_example": _pasted_example(final, rec.rationale),
        "tokens": [
            {
                k: u.get(k)
                for k in (
                    "prompt_tokens",
                    "prompt_eval_tokens",
                    "completion_tokens",
                    "fixed_prefix_tokens",
                    "fixed_prefix_loaded",
                    "seconds",
                )
            }
            for u in usage
        ],
        "raw": [e.get("raw", "")[:600] for e in final["exchanges"]],
    }


def _pasted_example(final: dict[str, Any], rationale: str) -> bool:
    from metallmix.agents.evidence import example_rationale

    ev = final.get("evidence")
    if ev is None or not ev.candidates:
        return False
    return rationale.strip() == example_rationale(ev, ev.candidates[0]).strip()


def voice(
    models: list[str], limit: int | None, kb_path: str, choose: str | None
) -> list[dict[str, Any]]:
    from metallmix.agents.runtime.llm import load_llm
    from metallmix.tools.kb.store import open_kb

    kb = open_kb(kb_path, read_only=True)
    rows: list[dict[str, Any]] = []
    chosen = inputs(kb_path)[:limit]
    for model in models:
        llm = load_llm(model)
        for name, data in chosen:
            row = one(model, name, data, kb, llm, choose)
            rows.append(row)
            print(
                f"{model} {name}: pass1={row['first_attempt_pass']} fallback={row['fallback']} "
                f"{row['total_s']:.1f} s (load {row['load_before']})",
                file=sys.stderr,
            )
    return rows


def summarise_voice(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        nodes: dict[str, list[float]] = {}
        for r in mine:
            for key, seconds in r["timings"].items():
                node = key.split("_")[0]
                nodes.setdefault(node, []).append(seconds)
        out[model] = {
            "n": len(mine),
            "first_attempt_pass_rate": round(
                sum(r["first_attempt_pass"] for r in mine) / len(mine), 3
            ),
            "fallback_rate": round(sum(r["fallback"] for r in mine) / len(mine), 3),
            "contradiction_rate": round(
                sum(bool(r.get("final_contradicts")) for r in mine) / len(mine), 3
            ),
            "draft_contradiction_rate": round(
                sum(r.get("drafts_contradicting", 0) for r in mine)
                / max(1, sum(r.get("drafts", 0) for r in mine)),
                3,
            ),
            "rejections_for_wording": sum(len(r["caught"]) for r in mine),
            "pasted_example_rate": round(
                sum(bool(r.get("pasted_example")) for r in mine) / len(mine), 3
            ),
            "grading_failures": sum(g is False for r in mine for g in r["llm_graded"]),
            "total_p50_s": round(statistics.median(r["total_s"] for r in mine), 2),
            "total_p95_s": round(percentile([r["total_s"] for r in mine], 95), 2),
            "nodes": {
                n: {"p50": round(statistics.median(v), 2), "p95": round(percentile(v, 95), 2)}
                for n, v in nodes.items()
            },
            "load_range": [min(r["load_before"] for r in mine), max(r["load_after"] for r in mine)],
        }
    return out


# ----------------------------------------------------------------- part 3: the judge
def real_shortlists(kb_path: str, limit: int | None) -> list[tuple[str, Any]]:
    """(name, shortlist) of the benchmark's inputs, built by the real graph up to the
    evidence (the LLM is a stand-in that always fails: only the shortlist is kept)."""
    from metallmix.agents.runtime.fake import ScriptedLLM
    from metallmix.agents.runtime.llm import LLMOutputError
    from metallmix.graphs.configuration import Context
    from metallmix.graphs.resources import RunResources
    from metallmix.session import graph
    from metallmix.tools.kb.store import open_kb
    from metallmix.tools.metafeatures import MetaFeatures

    kb = open_kb(kb_path, read_only=True)
    out: list[tuple[str, Any]] = []
    for name, data in inputs(kb_path)[:limit]:
        llm = ScriptedLLM([LLMOutputError("no LLM here", raw="")] * 4)
        inputs_: dict[str, Any] = {"max_attempts": 1, "dataset_name": name}
        inputs_["meta_features" if isinstance(data, MetaFeatures) else "data"] = data
        resources = RunResources(kb, llm)
        context = Context(seed=0, track=False, judge_with_llm=False, resources=resources)
        final = _final_state(graph(), inputs_, context)
        out.append((name, final["shortlist"]))
        print(f"shortlist {name}: {len(final['shortlist'].candidates)} candidates", file=sys.stderr)
    return out


def adversarial(kb_path: str, limit: int | None, seed: int = 0) -> dict[str, Any]:
    """The judge's catch rate per planted error type and its false alarms on correct
    explanations, over explanations built from real shortlists."""
    from metallmix.benchmarks.judge_plants import build_cases, score_cases

    started = time.perf_counter()
    shortlists = real_shortlists(kb_path, limit)
    cases = build_cases(shortlists, seed=seed)
    summary = score_cases(cases)
    summary["inputs"] = [name for name, _ in shortlists]
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


# ----------------------------------------------------------------- part 2: the choice
def lodo_choice(model: str, kb_spec: str, limit: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """Per held-out dataset: regret of the meta-learner's top-1 and of the LLM's pick."""
    import numpy as np

    from metallmix.agents.recommender import evidence_for, recommend_once
    from metallmix.agents.runtime.llm import load_llm
    from metallmix.benchmarks.lodo import load_kb_records, regret_and_rank
    from metallmix.tools.kb.store import SQLiteKnowledgeBase
    from metallmix.tools.meta.contracts import Candidate, Shortlist
    from metallmix.tools.meta.encoding import candidates_frame
    from metallmix.tools.meta.explain import facts_for_rows
    from metallmix.tools.meta.metalearner import MetaLearnerConfig, fit_or_load
    from metallmix.tools.meta.retrieval import RetrievalIndex
    from metallmix.tools.meta.shortlist import diverse_top

    records, _ = load_kb_records(kb_spec)
    usable = [r for r in records if r.status == "ok" and r.outcomes.val_accuracy is not None]
    tmp = Path(tempfile.mkdtemp(prefix="metallmix-jq-")) / "kb.sqlite"
    kb = SQLiteKnowledgeBase(tmp)
    kb.add(usable)
    llm = load_llm(model)
    groups = sorted({r.dataset_group for r in usable})[:limit]
    rows: list[dict[str, Any]] = []
    for group in groups:
        train = [r for r in usable if r.dataset_group != group]
        test_all = [r for r in usable if r.dataset_group == group]
        hidden = {r.dataset for r in test_all}
        learner = fit_or_load(
            kb, MetaLearnerConfig(seed=seed), exclude_datasets=hidden, records=usable
        )
        index = RetrievalIndex.build(train)
        for dataset in sorted(hidden):
            test = sorted((r for r in test_all if r.dataset == dataset), key=lambda r: r.run_id)
            if len(test) < 10:
                continue
            true = np.array([r.outcomes.val_accuracy for r in test], dtype=float)
            configs = [(r.model, r.hyperparameters) for r in test]
            pretrained = bool(test[0].pretrained)
            mf = test[0].meta_features
            frame = candidates_frame(mf, configs, pretrained=pretrained)
            pred = learner.predict(frame)
            picked = diverse_top([m for m, _ in configs], pred.score, 5)
            cands = [
                Candidate(
                    candidate_id=f"c{rank}",
                    model=configs[i][0],
                    pretrained=pretrained,
                    hyperparameters=configs[i][1],
                    predicted_accuracy=round(float(pred.accuracy[i]), 4),
                    accuracy_low=round(float(pred.low[i]), 4),
                    accuracy_high=round(float(pred.high[i]), 4),
                    predicted_seconds=(
                        round(float(pred.seconds[i]), 1) if np.isfinite(pred.seconds[i]) else None
                    ),
                    score=round(float(pred.score[i]), 4),
                    origin="heldout-evaluated",
                )
                for rank, i in enumerate(picked, start=1)
            ]
            facts = facts_for_rows(
                learner,
                frame.iloc[picked].reset_index(drop=True),
                [c.candidate_id for c in cands],
                top_k=4,
            )
            shortlist = Shortlist(
                meta_features=mf,
                candidates=cands,
                facts=facts,
                similar_runs=index.similar_runs(mf, k=9),
            )
            started = time.perf_counter()
            draft = recommend_once(llm, evidence_for(dataset, shortlist, "llm"), attempt=1)
            seconds = time.perf_counter() - started
            by_id = {c.candidate_id: i for c, i in zip(cands, picked, strict=True)}
            top1 = by_id["c1"]
            llm_pick = (
                by_id.get(draft.recommendation.candidate_id) if draft.recommendation else None
            )
            rows.append(
                {
                    "dataset": dataset,
                    "group": group,
                    "n_configs": len(test),
                    "top1_regret": round(regret_and_rank(true, top1)[0], 4),
                    "llm_pick": draft.recommendation.candidate_id if draft.recommendation else None,
                    "llm_regret": (
                        round(regret_and_rank(true, llm_pick)[0], 4)
                        if llm_pick is not None
                        else None
                    ),
                    "best_of_offered_regret": round(
                        min(regret_and_rank(true, by_id[c.candidate_id])[0] for c in cands[:3]), 4
                    ),
                    "llm_seconds": round(seconds, 1),
                    "load": load(),
                    "error": draft.error,
                }
            )
            print(f"lodo {dataset}: {rows[-1]}", file=sys.stderr)
    return rows


def summarise_choice(rows: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [r for r in rows if r["llm_regret"] is not None]
    if not scored:
        return {"n": 0}
    top1 = statistics.mean(r["top1_regret"] for r in scored)
    llm = statistics.mean(r["llm_regret"] for r in scored)
    return {
        "n": len(scored),
        "top1_mean_regret": round(top1, 4),
        "llm_mean_regret": round(llm, 4),
        "llm_better": sum(r["llm_regret"] < r["top1_regret"] for r in scored),
        "llm_worse": sum(r["llm_regret"] > r["top1_regret"] for r in scored),
        "llm_same_pick": sum(r["llm_pick"] == "c1" for r in scored),
        "verdict": "llm" if llm < top1 else "top1",
    }


# ----------------------------------------------------------------- report
def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Judge quality ({result['date']}, {result['machine']})",
        "",
        f"Command: `{result['command']}`",
    ]
    if result.get("voice_summary"):
        lines += ["", *voice_table(result)]
    adv = result.get("adversarial")
    if adv:
        lines += [
            "",
            f"## The judge on planted errors (code checks only; {adv['n_correct']} correct "
            f"explanations from {len(adv['inputs'])} real shortlists, one error planted in each "
            "copy)",
            "",
            "| planted error | n | caught |",
            "|---|---:|---:|",
        ]
        for kind, rate in adv["catch_rate"].items():
            shown = "n/a" if rate is None else f"{rate:.1%}"
            lines.append(f"| {kind} | {adv['n_planted'][kind]} | {shown} |")
        fa = adv["false_alarm_rate"]
        lines.append(f"| (none: false alarms) | {adv['n_correct']} | {fa:.1%} |")
    choice = result.get("choice_summary")
    if choice:
        lines += [
            "",
            f"## The choice (LODO on {result['lodo_kb']}, LLM {result['lodo_model']})",
            "",
            "| n | top-1 mean regret | LLM pick mean regret | LLM better / worse | LLM kept c1 "
            "| default |",
            "|---:|---:|---:|---:|---:|---|",
            f"| {choice.get('n', 0)} | {choice.get('top1_mean_regret')} | "
            f"{choice.get('llm_mean_regret')} | {choice.get('llm_better')} / "
            f"{choice.get('llm_worse')} | {choice.get('llm_same_pick')} | "
            f"{choice.get('verdict')} |",
        ]
    return "\n".join(lines) + "\n"


def voice_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "## The voice (recommend -> judge)",
        "",
        "| LLM | n | first-attempt pass | fallback | final contradicts answer | drafts "
        "contradicting | rejected for wording | pasted the example | grading failures "
        "| total p50 / p95 s | per node p50 / p95 s | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for model, s in result.get("voice_summary", {}).items():
        nodes = ", ".join(f"{n} {v['p50']}/{v['p95']}" for n, v in s["nodes"].items())
        lines.append(
            f"| {model} | {s['n']} | {s['first_attempt_pass_rate']:.0%} | {s['fallback_rate']:.0%} "
            f"| {s.get('contradiction_rate', 0):.0%} | {s.get('draft_contradiction_rate', 0):.0%} "
            f"| {s['rejections_for_wording']} | {s.get('pasted_example_rate', 0):.0%} "
            f"| {s['grading_failures']} "
            f"| {s['total_p50_s']} / {s['total_p95_s']} | {nodes} | {s['load_range'][0]}-"
            f"{s['load_range'][1]} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fast,default")
    parser.add_argument("--limit", type=int, default=None, help="first N inputs (default: all)")
    parser.add_argument("--kb", default=str(ROOT / "metallmix" / "data" / "kb.sqlite"))
    parser.add_argument(
        "--choose", default=None, choices=["llm", "top1"], help="default: the graph's (top1)"
    )
    parser.add_argument(
        "--lodo-kb", default=None, help="KB for part 2 (default: ../shared/data/quicktune/extended)"
    )
    parser.add_argument("--lodo-limit", type=int, default=None, help="first N held-out groups")
    parser.add_argument("--lodo-model", default="fast")
    parser.add_argument("--skip-voice", action="store_true")
    parser.add_argument("--skip-lodo", action="store_true")
    parser.add_argument(
        "--adversarial", action="store_true", help="part 3: planted errors (code checks only)"
    )
    parser.add_argument("--adversarial-only", action="store_true", help="only part 3")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    from metallmix import config

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs, load {load()} at start",
        "command": "python bench/judge_quality.py " + " ".join(argv or sys.argv[1:]),
    }
    if args.adversarial or args.adversarial_only:
        result["adversarial"] = adversarial(args.kb, args.limit)
        if args.adversarial_only:
            args.skip_voice = args.skip_lodo = True
    if not args.skip_voice:
        rows = voice(models, args.limit, args.kb, args.choose)
        result["voice"] = rows
        result["voice_summary"] = summarise_voice(rows)
    if not args.skip_lodo:
        lodo_kb = args.lodo_kb or str(config.shared_data_dir() / "quicktune" / "extended")
        result["lodo_kb"], result["lodo_model"] = lodo_kb, args.lodo_model
        choice = lodo_choice(args.lodo_model, lodo_kb, args.lodo_limit)
        result["choice"] = choice
        result["choice_summary"] = summarise_choice(choice)
    result["load_at_end"] = load()
    name = "judge_quality" + (f"_{args.tag}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    for suffix, text in (
        (".json", json.dumps(result, indent=2, default=str)),
        (".md", markdown(result)),
    ):
        write_text(args.out / f"{name}{suffix}", text)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
