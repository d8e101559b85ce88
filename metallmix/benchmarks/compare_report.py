"""The head-to-head report: numbers from the comparison's state, a markdown table, plots.

Kept apart from :mod:`metallmix.benchmarks.compare` so the report can be rebuilt from a
state file alone (no training, no LLM); the comparison imports this module, never the
other way round. Each method's time to a configuration is given *cold* (MetaLLMiX's
meta-learner and retrieval index fitted on the leak-free KB from an empty cache) and *warm*
(both cached), with the LLM's time (loading, explaining, judging) apart: meta-features and
shortlist for MetaLLMiX, the summed trial time of a search for RS/TPE/GP (its selected
configuration is trained inside it), the KB scan for best-default, and the halving's summed
run time (plus the shortlist, sampling or KB scan) for the successive-halving methods.
"Time spent" in the plots adds one final training to the methods that do not train during
selection.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metallmix.atomic import atomic_path, write_text

METHODS = (
    "metallmix",
    "random",
    "tpe",
    "gp",
    "best-default",
    "metallmix+verify",
    "random+sh",
    "best-default+sh",
)
# Before issue 28 a comparison ran these five; a state without a method list had them.
LEGACY_METHODS = ("metallmix", "random", "tpe", "best-default", "metallmix+verify")
SEARCHES = ("random", "tpe", "gp")  # Optuna studies of ``budget`` trials
HALVING = ("random+sh", "best-default+sh")  # metallmix+verify's halving, other candidates
WITHIN = 0.01  # "within 1 point" of the best test accuracy (accuracies are fractions)
LABELS = {
    "metallmix": "MetaLLMiX (zero-shot)",
    "random": "RS",
    "tpe": "TPE",
    "gp": "GP",
    "best-default": "best-default",
    "metallmix+verify": "MetaLLMiX+verify@{k}",
    "random+sh": "RS+SH@{k}",
    "best-default+sh": "best-default+SH@{k}",
}


def methods_of(settings: dict[str, Any]) -> list[str]:
    """The methods a comparison ran, in report order (the legacy five for older states)."""
    chosen = settings.get("methods") or LEGACY_METHODS
    return [m for m in METHODS if m in chosen]


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that exist (0 for one value)."""
    clean = [float(v) for v in values if v is not None]
    if not clean:
        return None, None
    std = statistics.stdev(clean) if len(clean) > 1 else 0.0
    return statistics.fmean(clean), std


def label(method: str, settings: dict[str, Any] | None = None) -> str:
    """The method's name in tables and plots (``MetaLLMiX+verify@5`` names its K)."""
    return LABELS[method].format(k=(settings or {}).get("verify", 5))


def _method_row(pieces: dict[str, Any], name: str, method: str, seeds: list[int]) -> dict:
    runs = [pieces.get(f"{name}/{method}/s{s}") for s in seeds]
    done = [r for r in runs if r is not None]
    acc_mean, acc_std = mean_std([r.get("test_accuracy") for r in done])
    bal_mean, bal_std = mean_std([r.get("test_balanced_accuracy") for r in done])
    val_mean, _ = mean_std([r.get("val_accuracy") for r in done])
    train_mean, _ = mean_std([r.get("train_seconds") for r in done])
    row: dict[str, Any] = {
        "seeds_done": len(done),
        "test_accuracy_mean": acc_mean,
        "test_accuracy_std": acc_std,
        "test_balanced_accuracy_mean": bal_mean,
        "test_balanced_accuracy_std": bal_std,
        "val_accuracy_mean": val_mean,
        "train_seconds_mean": train_mean,
        "per_seed": done,
    }
    rec = pieces.get(f"{name}/metallmix/recommendation") or {}
    if method in SEARCHES:
        row["config_seconds"], _ = mean_std([r.get("search_seconds") for r in done])
        row["time_spent"] = row["config_seconds"]
        row["configs"] = sorted({str(r.get("model")) for r in done})
        row["cold_seconds"] = row["warm_seconds"] = row["config_seconds"]
        row["llm_seconds"] = None
    elif method == "metallmix+verify" or method in HALVING:
        # The winner is trained inside the halving, as RS/TPE train theirs.
        row["config_seconds"], _ = mean_std([r.get("config_seconds") for r in done])
        row["verify_seconds"], _ = mean_std([r.get("verify_seconds") for r in done])
        row["cold_seconds"], _ = mean_std([r.get("cold_seconds") for r in done])
        row["warm_seconds"], _ = mean_std([r.get("warm_seconds") for r in done])
        if row["cold_seconds"] is None:  # a state from before cold/warm were kept
            row["cold_seconds"] = row["config_seconds"]
        row["time_spent"] = row["config_seconds"]
        row["configs"] = sorted({str(r.get("model")) for r in done})
        row["winner_is_zero_shot"] = sum(bool(r.get("winner_is_zero_shot")) for r in done)
        row["first_rung_epochs"] = sorted({r.get("first_rung_epochs") for r in done} - {None})
        if method == "metallmix+verify":
            row["config_seconds_with_llm"], _ = mean_std(
                [r.get("config_seconds_with_llm") for r in done]
            )
            row["llm_seconds"] = _llm_share(rec)  # optional: the explanation only
        else:
            row["llm_seconds"] = None
    else:
        key = "recommendation" if method == "metallmix" else "config"
        config = pieces.get(f"{name}/{method}/{key}") or {}
        row["config_seconds"] = config.get("seconds")
        row["model"] = config.get("model")
        row["hyperparameters"] = config.get("hyperparameters")
        if method == "metallmix":
            row["llm"] = config.get("llm")
            row["fallback"] = config.get("fallback")
            row["expected_accuracy"] = config.get("expected_accuracy")
            row["llm_load_seconds"] = config.get("llm_load_seconds")
            row["shortlist_seconds"] = config.get("shortlist_seconds")
            row["llm_seconds"] = _llm_share(config)
            row["cold_seconds"] = config.get("cold_seconds", config.get("shortlist_seconds"))
            row["warm_seconds"] = config.get("warm_seconds")
        else:
            row["cold_seconds"] = row["warm_seconds"] = row["config_seconds"]
            row["llm_seconds"] = None
        row["time_spent"] = (
            None
            if row["config_seconds"] is None or train_mean is None
            else row["config_seconds"] + train_mean
        )
    return row


def _llm_share(rec: dict[str, Any]) -> float | None:
    """The LLM's seconds in a recommendation piece: loading it plus explaining and judging
    (None when it did not run). States from before issue 28 kept it as the recommendation's
    time after the shortlist, plus the load."""
    if "llm_total_seconds" in rec:
        return rec["llm_total_seconds"]
    seconds, shortlist = rec.get("seconds"), rec.get("shortlist_seconds")
    if seconds is None or shortlist is None:
        return None
    return seconds - shortlist + (rec.get("llm_load_seconds") or 0.0)


def score_field(methods: dict[str, dict[str, Any]]) -> str:
    """The metric methods are ranked by: test balanced accuracy (imbalance is the rule in
    medical data, where plain accuracy rewards predicting the majority class); plain
    accuracy only when no run reported balanced accuracy."""
    balanced = [r.get("test_balanced_accuracy_mean") for r in methods.values()]
    return (
        "test_balanced_accuracy_mean"
        if any(v is not None for v in balanced)
        else "test_accuracy_mean"
    )


def build_report(
    state: dict[str, Any],
    names: list[str],
    baselines: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Per dataset and overall figures for the datasets in ``names``; ``baselines`` adds each
    dataset's majority-class ``test_accuracy`` / ``test_balanced_accuracy`` (no training)."""
    pieces: dict[str, Any] = state["pieces"]
    settings = state["settings"]
    seeds = list(settings["seeds"])
    chosen = methods_of(settings)
    datasets: dict[str, Any] = {}
    for name in names:
        methods = {m: _method_row(pieces, name, m, seeds) for m in chosen}
        _versus_metallmix(methods, "config_seconds")
        field = score_field(methods)
        scored = {m: r[field] for m, r in methods.items()}
        valid = {m: v for m, v in scored.items() if v is not None}
        best = max(valid.values()) if valid else None
        datasets[name] = {
            "leak_check": pieces.get(f"{name}/leak-check"),
            "methods": methods,
            "ranked_by": field,
            "best_score": best,
            "best": sorted(m for m, v in valid.items() if v == best),
            "within_1pt": sorted(
                m for m, v in valid.items() if best is not None and _near(v, best)
            ),
            "majority_class": (baselines or {}).get(name),
        }
        if "metallmix+verify" in methods and "random" in methods:
            k = int(settings.get("verify", 5))
            datasets[name]["verify_vs_rs"] = _verify_vs_rs(methods, k)
        if "random" in methods:
            datasets[name]["zero_shot_vs_rs"] = _zero_shot_vs_rs(methods)
        datasets[name]["verify_vs_halving"] = {
            m: _verify_vs(methods, m) for m in HALVING if m in methods
        }
    overall: dict[str, Any] = {}
    for method in chosen:
        rows = [datasets[n]["methods"][method] for n in names]
        acc, _ = mean_std([r["test_accuracy_mean"] for r in rows])
        bal, _ = mean_std([r.get("test_balanced_accuracy_mean") for r in rows])
        cfg, _ = mean_std([r["config_seconds"] for r in rows])
        train, _ = mean_std([r["train_seconds_mean"] for r in rows])
        cold, _ = mean_std([r.get("cold_seconds") for r in rows])
        warm, _ = mean_std([r.get("warm_seconds") for r in rows])
        llm, _ = mean_std([r.get("llm_seconds") for r in rows])
        overall[method] = {
            "test_balanced_accuracy_mean": bal,
            "test_accuracy_mean": acc,
            "config_seconds_mean": cfg,
            "cold_seconds_mean": cold,
            "warm_seconds_mean": warm,
            "llm_seconds_mean": llm,
            "train_seconds_mean": train,
            "best": sum(method in datasets[n]["best"] for n in names),
            "best_or_within_1pt": sum(method in datasets[n]["within_1pt"] for n in names),
        }
    _versus_metallmix(overall, "config_seconds_mean")
    complete = all(
        datasets[n]["methods"][m]["seeds_done"] == len(seeds) for n in names for m in chosen
    )
    return {
        "settings": settings,
        "datasets": datasets,
        "overall": overall,
        "complete": complete,
        "n_datasets": len(names),
        "load": load_summary(pieces, names),
    }


def load_summary(pieces: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The 1-minute load average recorded as each piece of ``names`` finished: the times in
    the report are wall times, comparable only when the machine's load was alike."""
    mine = [v for k, v in pieces.items() if k.split("/", 1)[0] in names]
    recorded = [v for v in mine if isinstance(v, dict) and "load_average" in v]
    loads = [float(v["load_average"]) for v in recorded]
    cpus = {v["cpus"] for v in recorded if v.get("cpus")}
    return {
        "min": min(loads) if loads else None,
        "median": statistics.median(loads) if loads else None,
        "max": max(loads) if loads else None,
        "pieces_with_load": len(loads),
        "pieces": len(mine),
        "cpus": sorted(cpus),
    }


def _versus_metallmix(rows: dict[str, dict[str, Any]], config_field: str) -> None:
    """Each method's config time and training time as ratios to MetaLLMiX's (in place)."""
    ref = rows["metallmix"]
    for row in rows.values():
        row["config_speedup_vs_metallmix"] = _ratio(row[config_field], ref[config_field])
        row["train_ratio_vs_metallmix"] = _ratio(
            row["train_seconds_mean"], ref["train_seconds_mean"]
        )


def _verify_vs_rs(methods: dict[str, Any], k: int) -> dict[str, Any]:
    """MetaLLMiX+verify@K against random search: test balanced accuracy against RS at the
    full budget, time against RS after K trials (the first K trials of the same study are
    exactly a K-trial random search with that seed)."""
    ver, rs = methods["metallmix+verify"], methods["random"]
    rs_k_times = [
        sum(t.get("seconds") or 0.0 for t in run["trials"][:k])
        for run in rs["per_seed"]
        if len(run.get("trials") or []) >= k
    ]
    rs_k_seconds, _ = mean_std(rs_k_times)
    bal_v, bal_rs = ver.get("test_balanced_accuracy_mean"), rs.get("test_balanced_accuracy_mean")
    return {
        "k": k,
        "rs_at_k_seconds": rs_k_seconds,
        "verify_seconds": ver.get("config_seconds"),
        "balanced_at_least_rs": None if bal_v is None or bal_rs is None else bal_v >= bal_rs,
        "time_at_most_rs_at_k": (
            None
            if rs_k_seconds is None or ver.get("config_seconds") is None
            else ver["config_seconds"] <= rs_k_seconds
        ),
    }


def _verify_vs(methods: dict[str, Any], other: str) -> dict[str, Any]:
    """MetaLLMiX+verify@K against another method under the same halving (``random+sh``,
    ``best-default+sh``): the gap in test balanced accuracy (points, verify minus other) and
    whether verify took no more time, cold and warm."""
    ver, rival = methods["metallmix+verify"], methods[other]
    bal_v, bal_o = ver.get("test_balanced_accuracy_mean"), rival.get("test_balanced_accuracy_mean")
    gap = None if bal_v is None or bal_o is None else 100 * (bal_v - bal_o)

    def no_more(field: str) -> bool | None:
        a, b = ver.get(field), rival.get(field)
        return None if a is None or b is None else a <= b

    return {
        "gap_points": gap,
        "at_least": None if gap is None else gap >= -1e-7,
        "verify_cold_seconds": ver.get("cold_seconds"),
        "verify_warm_seconds": ver.get("warm_seconds"),
        "other_seconds": rival.get("cold_seconds"),
        "no_more_time_cold": no_more("cold_seconds"),
        "no_more_time_warm": no_more("warm_seconds"),
    }


def _zero_shot_vs_rs(methods: dict[str, Any]) -> dict[str, Any]:
    """Issue 12's bar: the zero-shot pick within 1 point of RS@budget's test balanced
    accuracy, at less than a tenth of RS's time to configuration. Two times for MetaLLMiX:
    until the configuration is fixed (meta-features + shortlist; with ``choose="top1"`` the
    LLM does not change it) and until the explained answer (LLM and judge included)."""
    ms, rs = methods["metallmix"], methods["random"]
    bal_ms, bal_rs = ms.get("test_balanced_accuracy_mean"), rs.get("test_balanced_accuracy_mean")
    rs_time = rs.get("config_seconds")
    pick, answer = ms.get("shortlist_seconds"), ms.get("config_seconds")
    return {
        "within_1pt_of_rs": None
        if bal_ms is None or bal_rs is None
        else bal_ms >= bal_rs - WITHIN - 1e-9,
        "pick_time_ratio": _ratio(pick, rs_time),
        "answer_time_ratio": _ratio(answer, rs_time),
        "pick_under_tenth": None if _ratio(pick, rs_time) is None else pick < rs_time / 10,
        "answer_under_tenth": None if _ratio(answer, rs_time) is None else answer < rs_time / 10,
    }


def _near(value: float, best: float) -> bool:
    return value >= best - WITHIN - 1e-9


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "—"
    if std is None:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _sec(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if value >= 0.05 else "<0.1"


def _yes(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "no")


def _x(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 10:
        return f"{value:.0f}x"
    return f"{value:.1f}x" if value >= 1 else f"{value:.2g}x"


def _no_llm(report: dict[str, Any]) -> bool:
    rows = [e["methods"]["metallmix"] for e in report["datasets"].values()]
    return bool(rows) and all(r.get("llm_seconds") is None for r in rows)


def _startup_line(settings: dict[str, Any]) -> str:
    """Which samplers model after how many random trials (only when one ran)."""
    from metallmix.tools.training.search import startup_trials

    model_based = [m for m in methods_of(settings) if m in ("tpe", "gp")]
    if not model_based:
        return ""
    n = startup_trials(int(settings["budget"]))
    names = " and ".join(LABELS[m] for m in model_based)
    return f" {names} draw {n} random trials, then their model picks the rest."


def _load_line(load: dict[str, Any] | None) -> str:
    if not load or load.get("median") is None:
        return "Machine load: not recorded (state written before pieces kept their load)."
    cpus = "/".join(str(c) for c in load.get("cpus") or []) or "?"
    line = (
        f"Machine load (1-min average as each piece finished): median {load['median']:.2f}, "
        f"range {load['min']:.2f}-{load['max']:.2f}, on {cpus} CPUs"
    )
    missing = load["pieces"] - load["pieces_with_load"]
    return line + (f"; {missing} pieces have no record." if missing else ".")


def markdown_table(report: dict[str, Any]) -> str:
    """Per-dataset rows and an overall table (accuracies in %, times in seconds)."""
    s = report["settings"]
    lines = [
        f"Budget {s['budget']} trials per search, seeds {s['seeds']}, epochs ≤ {s['epoch_cap']}, "
        f"train images ≤ {s['max_train_images'] or 'all'}, val images ≤ "
        f"{s['max_val_images'] or 'all'}, models {s['models'] or 'CPU zoo'}, image sizes "
        f"{s['image_sizes'] or 'zoo'}, threads {s['threads'] or 'default'}." + _startup_line(s),
        "",
        "Methods are ranked by test balanced accuracy (**best**, or ≤1 pt of it); the majority "
        "class row is the floor any model must clear (balanced accuracy 1/k).",
        "",
        _load_line(report.get("load")),
        "",
        "Time to a configuration, in seconds: **cold** includes fitting MetaLLMiX's "
        "meta-learner and retrieval index on the leak-free KB (empty cache), **warm** has "
        "them cached; searches, defaults and halving fit nothing, so theirs are equal. "
        "The **LLM** column (loading the model, explaining, judging) is apart from both: the "
        "LLM explains the top candidate and changes no configuration"
        + (" (not run: `--no-llm`)." if _no_llm(report) else "."),
        "",
        "| dataset | method | test balanced acc % (mean ± std) | test acc % | cold (s) "
        "| warm (s) | LLM (s) | final training (s) | config |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, entry in report["datasets"].items():
        for method, row in entry["methods"].items():
            mark = " **best**" if method in entry["best"] else ""
            if not mark and method in entry["within_1pt"]:
                mark = " (≤1 pt)"
            config = row.get("model") or ", ".join(row.get("configs") or []) or "—"
            balanced = _pct(
                row.get("test_balanced_accuracy_mean"), row.get("test_balanced_accuracy_std")
            )
            lines.append(
                f"| {name} | {label(method, s)} | {balanced}{mark} | "
                f"{_pct(row['test_accuracy_mean'], row['test_accuracy_std'])} | "
                f"{_sec(row.get('cold_seconds'))} | {_sec(row.get('warm_seconds'))} | "
                f"{_sec(row.get('llm_seconds'))} | {_sec(row['train_seconds_mean'])} | "
                f"{config} |"
            )
        floor = entry.get("majority_class")
        if floor:
            lines.append(
                f"| {name} | majority class | {_pct(floor.get('test_balanced_accuracy'))} | "
                f"{_pct(floor.get('test_accuracy'))} | — | — | — | — | predicts "
                f"{floor.get('label_name') or floor.get('label')} |"
            )
    lines += [
        "",
        f"Overall ({report['n_datasets']} datasets):",
        "",
        "| method | mean test balanced acc % | mean test acc % | best | best or within 1 pt "
        "| mean cold (s) | mean warm (s) | mean LLM (s) | mean final training (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, row in report["overall"].items():
        lines.append(
            f"| {label(method, s)} | {_pct(row.get('test_balanced_accuracy_mean'))} | "
            f"{_pct(row['test_accuracy_mean'])} | {row['best']} | "
            f"{row['best_or_within_1pt']} | {_sec(row.get('cold_seconds_mean'))} | "
            f"{_sec(row.get('warm_seconds_mean'))} | {_sec(row.get('llm_seconds_mean'))} | "
            f"{_sec(row['train_seconds_mean'])} |"
        )
    leaks = [
        f"{name}: {e['leak_check']['removed_runs']} of {e['leak_check']['kb_runs']} KB runs "
        f"removed ({', '.join(e['leak_check']['removed_datasets']) or 'none present'}), "
        f"{e['leak_check']['kept_runs']} kept, 0 touching {e['leak_check']['hidden_names']}"
        for name, e in report["datasets"].items()
        if e.get("leak_check")
    ]
    parts = []
    for name, entry in report["datasets"].items():
        row = entry["methods"]["metallmix"]
        if row.get("cold_seconds") is None:
            continue
        detail = [f"cold {_sec(row['cold_seconds'])} s"]
        if row.get("warm_seconds") is not None:
            detail.append(f"warm {_sec(row['warm_seconds'])} s")
        if row.get("llm_seconds") is not None:
            detail.append(f"LLM {_sec(row['llm_seconds'])} s apart ({row.get('llm')})")
        else:
            detail.append("LLM not run")
        fallback = " (templated fallback: the LLM's answers failed the judge)"
        parts.append(
            f"- {name}: {row.get('model')}, {', '.join(detail)}"
            + (fallback if row.get("fallback") else "")
        )
    if parts:
        lines += ["", "MetaLLMiX recommendation time:", "", *parts]
    if leaks:
        lines += ["", "No-leak check (KB used for the recommendation):", ""]
        lines += [f"- {line}" for line in leaks]
    zs = [
        (n, e["zero_shot_vs_rs"]) for n, e in report["datasets"].items() if e.get("zero_shot_vs_rs")
    ]
    if zs:
        lines += ["", f"MetaLLMiX (zero-shot) against random search @{s['budget']}:", ""]
        for name, z in zs:
            lines.append(
                f"- {name}: test balanced accuracy within 1 pt of RS (or better): "
                f"{_yes(z.get('within_1pt_of_rs'))}; time to the configuration "
                f"{_x(z.get('pick_time_ratio'))} of RS's (< 1/10: "
                f"{_yes(z.get('pick_under_tenth'))}), to the explained answer "
                f"{_x(z.get('answer_time_ratio'))} (< 1/10: {_yes(z.get('answer_under_tenth'))})"
            )
    vs = [(n, e["verify_vs_rs"]) for n, e in report["datasets"].items() if e.get("verify_vs_rs")]
    if vs:
        k = s.get("verify", 5)
        lines += ["", f"MetaLLMiX+verify@{k} against random search:", ""]
        for name, v in vs:
            rs_k = v.get("rs_at_k_seconds")
            lines.append(
                f"- {name}: test balanced accuracy ≥ RS@{s['budget']}: "
                f"{_yes(v.get('balanced_at_least_rs'))}; time {_sec(v.get('verify_seconds'))} s "
                f"≤ RS@{k} ({_sec(rs_k)} s, its first {k} trials): "
                f"{_yes(v.get('time_at_most_rs_at_k'))}"
            )
    for other in HALVING:
        rows: list[tuple[str, dict[str, Any]]] = [
            (n, e["verify_vs_halving"][other])
            for n, e in report["datasets"].items()
            if other in (e.get("verify_vs_halving") or {})
        ]
        if not rows:
            continue
        k = s.get("verify", 5)
        wins = sum(bool(v.get("at_least")) for _, v in rows)
        lines += [
            "",
            f"MetaLLMiX+verify@{k} against {label(other, s)} (the same halving and first rung "
            f"over {'random' if other == 'random+sh' else 'the KB-wide best'} configurations): "
            f"at least as good on {wins} of {len(rows)} datasets.",
            "",
        ]
        for name, v in rows:
            gap = v.get("gap_points")
            lines.append(
                f"- {name}: {'—' if gap is None else f'{gap:+.1f}'} pts of test balanced "
                f"accuracy; time cold {_sec(v.get('verify_cold_seconds'))} s / warm "
                f"{_sec(v.get('verify_warm_seconds'))} s against {_sec(v.get('other_seconds'))} s "
                f"(no more time: cold {_yes(v.get('no_more_time_cold'))}, warm "
                f"{_yes(v.get('no_more_time_warm'))})"
            )
    run = report.get("run")
    if run:
        lines += [
            "",
            f"Run: `{run.get('command')}` at {run.get('code_version')}, wall "
            f"{_sec(run.get('wall_seconds'))} s, load average at start/end "
            f"{run.get('load_start')} / {run.get('load_end')}, {run.get('cpus')} CPUs.",
        ]
    if not report.get("complete", True):
        lines += ["", "**Incomplete**: some pieces have not run yet (resume the command)."]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path:
    """Test balanced accuracy vs time spent, one panel per dataset (log time axis)."""
    import matplotlib  # heavy, plots only; the Agg backend must be set before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    names = list(report["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False)
    markers = {
        "metallmix": "*",
        "random": "o",
        "tpe": "s",
        "gp": "^",
        "best-default": "D",
        "metallmix+verify": "P",
        "random+sh": "X",
        "best-default+sh": "d",
    }
    for ax, name in zip(axes[0], names, strict=True):
        for method, row in report["datasets"][name]["methods"].items():
            x, y = row.get("time_spent"), row.get("test_balanced_accuracy_mean")
            if x is None or y is None:
                continue
            ax.errorbar(
                [x],
                [100 * y],
                yerr=[100 * (row.get("test_balanced_accuracy_std") or 0.0)],
                fmt=markers[method],
                markersize=12 if method == "metallmix" else 8,
                capsize=3,
                label=label(method, report.get("settings")),
            )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("time spent to get a trained model (s, log)")
        ax.set_ylabel("test balanced accuracy (%)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(report: dict[str, Any], out_dir: Path, name: str) -> dict[str, Path]:
    """``<name>.md``, ``<name>.json`` and ``<name>.png`` in ``out_dir`` (atomic writes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "md": out_dir / f"{name}.md",
        "json": out_dir / f"{name}.json",
        "png": out_dir / f"{name}.png",
    }
    write_text(
        paths["md"],
        "# Head-to-head: zero-shot recommendation, searches, defaults and halving baselines\n\n"
        + markdown_table(report),
    )
    write_text(paths["json"], json.dumps(report, indent=2, default=str))
    with atomic_path(paths["png"], suffix=".png") as tmp:
        plot(report, tmp)
    return paths


__all__ = [
    "HALVING",
    "LEGACY_METHODS",
    "METHODS",
    "SEARCHES",
    "build_report",
    "markdown_table",
    "mean_std",
    "methods_of",
    "plot",
    "write_results",
]
