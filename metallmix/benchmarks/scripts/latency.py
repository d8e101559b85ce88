"""Latency of ``metallmix.recommend``: p50/p95, cold and warm, per LLM and per graph node.

cold: the LLM is unloaded and the meta-learner / FAISS caches are emptied before the call,
so it pays model load, meta-learner fit and index build (what a first recommendation on a
new KB costs). warm: the same process again (model loaded, caches filled). Every call is a
full tracked recommendation (MLflow run included) on the bundled ISIC 2018 card, seed fixed.

    python bench/latency.py --models fast,default --cold 1 --warm 3
    python bench/latency.py --kb path/to/kb.sqlite      # default: a synthetic KB (6 x 25 runs)

``--cli`` measures what a user waits for (issue 13's targets: at most 15 s with ``fast`` and
40 s with ``default`` on an idle 2-core machine): ``metallmix recommend <bundled card>`` as a
fresh process from the shell, on the shipped KB, after one unmeasured run has filled the
caches (meta-learner, retrieval index, the system prompts' saved llama.cpp state). It also
reports when the scored shortlist appeared on stderr (target: within 3 s).

    python bench/latency.py --cli --models fast,default --warm 3 --out bench/results/cli.json

Prints one table; ``--out`` also writes the raw timings as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from metallmix.atomic import write_text


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with 3 samples p95 is the maximum: say so in reports)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def setup(workdir: Path, kb_arg: str | None) -> str:
    """Point state at ``workdir`` (MLflow store, caches) and return the KB path."""
    user_cache = Path(os.environ.get("METALLMIX_CACHE") or Path.home() / ".metallmix" / "cache")
    cache = workdir / "cache"
    cache.mkdir(parents=True)
    if (user_cache / "llm").is_dir():  # reuse the verified weights, not the fitted models
        (cache / "llm").symlink_to((user_cache / "llm").resolve())
    os.environ["METALLMIX_CACHE"] = str(cache)
    os.environ["METALLMIX_HOME"] = str(workdir / "home")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    if kb_arg:
        return kb_arg
    from metallmix.benchmarks.synthetic import synthetic_records
    from metallmix.tools.kb.store import SQLiteKnowledgeBase

    path = workdir / "kb.sqlite"
    SQLiteKnowledgeBase(path).add(synthetic_records(6, 25, seed=0))
    return str(path)


def make_cold(cache: Path) -> None:
    from metallmix.agents.runtime.llm import unload_all

    unload_all()
    for sub in ("metalearner", "retrieval"):
        shutil.rmtree(cache / sub, ignore_errors=True)


def one_call(model: str, kb: str, card: Path) -> dict[str, Any]:
    import metallmix
    from metallmix.tools import tracking

    started = time.perf_counter()
    rec = metallmix.recommend(card, llm=model, kb=kb, seed=0)
    total = time.perf_counter() - started
    metrics = tracking.client().get_run(rec.mlflow_run_id).data.metrics
    nodes = {k[len("latency_") : -2]: v for k, v in metrics.items() if k.startswith("latency_")}
    return {
        "total_s": total,
        "nodes": nodes,
        "attempts": rec.attempts,
        "fallback": rec.fallback,
        "llm_prompt_tokens": metrics.get("llm_prompt_tokens"),
        "llm_completion_tokens": metrics.get("llm_completion_tokens"),
    }


def cli_call(model: str, card: Path, kb: str | None, env: dict[str, str]) -> dict[str, Any]:
    """``metallmix recommend CARD --llm MODEL --json`` in a new process, timed from outside."""
    import subprocess

    cmd = [sys.executable, "-m", "metallmix", "recommend", str(card), "--llm", model, "--json"]
    if kb:
        cmd += ["--kb", kb]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    shortlist_at: float | None = None
    assert proc.stderr is not None and proc.stdout is not None
    err_lines = []
    for line in proc.stderr:
        err_lines.append(line)
        if shortlist_at is None and "scored shortlist" in line:
            shortlist_at = time.perf_counter() - started
    out = proc.stdout.read()
    code = proc.wait()
    total = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {code}: {''.join(err_lines)[-2000:]}")
    doc = json.loads(out)
    nodes: dict[str, float] = {}
    if doc.get("mlflow_run_id"):
        from metallmix.tools import tracking

        metrics = tracking.client().get_run(doc["mlflow_run_id"]).data.metrics
        nodes = {k[len("latency_") : -2]: v for k, v in metrics.items() if k.startswith("latency_")}
    return {
        "total_s": total,
        "shortlist_printed_s": shortlist_at,
        "nodes": nodes,
        "attempts": doc.get("attempts"),
        "fallback": doc.get("fallback"),
        "judge_passed": (doc.get("judge") or {}).get("passed"),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def cli_main(args: argparse.Namespace) -> int:
    """Warm shell-to-answer latency of ``metallmix recommend`` on a bundled card."""
    from metallmix.cli.recommend import example_card

    workdir = Path(tempfile.mkdtemp(prefix="metallmix-latency-cli-"))
    user_cache = Path(os.environ.get("METALLMIX_CACHE") or Path.home() / ".metallmix" / "cache")
    cache = workdir / "cache"
    cache.mkdir(parents=True)
    if (user_cache / "llm").is_dir():  # the verified weights; prompt states are made here
        (cache / "llm").mkdir()
        for f in (user_cache / "llm").glob("*.gguf*"):
            (cache / "llm" / f.name).symlink_to(f.resolve())
    env = {
        **os.environ,
        "METALLMIX_CACHE": str(cache),
        "METALLMIX_HOME": str(workdir / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
    }
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    card = example_card(args.example)
    results: dict[str, Any] = {
        "mode": "cli (fresh process per call, caches warm)",
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "llm_threads": os.environ.get("METALLMIX_LLM_THREADS", "auto"),
        "kb": args.kb or "shipped default",
        "example": args.example,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "models": {},
    }
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        first = cli_call(model, card, args.kb, env)  # fills the caches: not measured
        print(f"{model} warm-up: {first['total_s']:.1f} s", file=sys.stderr)
        rows = []
        for i in range(args.warm):
            rows.append(cli_call(model, card, args.kb, env))
            print(f"{model} warm {i + 1}: {rows[-1]['total_s']:.1f} s", file=sys.stderr)
        summary = summarise(rows)
        printed = [r["shortlist_printed_s"] for r in rows if r["shortlist_printed_s"] is not None]
        summary["shortlist_printed_p50_s"] = statistics.median(printed) if printed else None
        results["models"][model] = {"raw": {"warm-up": [first], "warm": rows}, "warm": summary}
    results["load_after"] = f"{os.getloadavg()[0]:.1f}"
    print(render(results))
    if args.out:
        write_text(args.out, json.dumps(results, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    totals = [r["total_s"] for r in rows]
    node_names = sorted({n for r in rows for n in r["nodes"] if n != "total"})
    per_node = {}
    for node in node_names:
        values = [r["nodes"].get(node, 0.0) for r in rows]
        per_node[node] = {"p50": statistics.median(values), "p95": percentile(values, 95)}
    return {
        "n": len(rows),
        "p50_s": statistics.median(totals),
        "p95_s": percentile(totals, 95),
        "nodes": per_node,
        "fallbacks": sum(bool(r["fallback"]) for r in rows),
        "mean_attempts": statistics.mean(r["attempts"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fast,default", help="comma-separated LLMs")
    parser.add_argument("--cold", type=int, default=1, help="cold calls per model")
    parser.add_argument("--warm", type=int, default=3, help="warm calls per model")
    parser.add_argument("--kb", default=None, help="KB file (default: synthetic, 150 runs)")
    parser.add_argument("--example", default="isic2018", help="bundled card to recommend for")
    parser.add_argument("--out", type=Path, default=None, help="write raw timings here (JSON)")
    parser.add_argument(
        "--cli", action="store_true", help="time `metallmix recommend` as a fresh process"
    )
    args = parser.parse_args(argv)
    if args.cli:
        return cli_main(args)

    workdir = Path(tempfile.mkdtemp(prefix="metallmix-latency-"))
    kb = setup(workdir, args.kb)
    from metallmix.cli.recommend import example_card

    card = example_card(args.example)
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "llm_threads": os.environ.get("METALLMIX_LLM_THREADS", "2"),
        "kb": args.kb or "synthetic (6 datasets x 25 runs)",
        "example": args.example,
        "models": {},
    }
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        runs: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
        for i in range(args.cold):
            make_cold(workdir / "cache")
            runs["cold"].append(one_call(model, kb, card))
            print(f"{model} cold {i + 1}: {runs['cold'][-1]['total_s']:.1f} s", file=sys.stderr)
        if not runs["cold"]:
            one_call(model, kb, card)  # warm-up, not measured
        for i in range(args.warm):
            runs["warm"].append(one_call(model, kb, card))
            print(f"{model} warm {i + 1}: {runs['warm'][-1]['total_s']:.1f} s", file=sys.stderr)
        results["models"][model] = {
            "raw": runs,
            **{mode: summarise(rows) for mode, rows in runs.items() if rows},
        }
    results["load_after"] = f"{os.getloadavg()[0]:.1f}"
    print(render(results))
    if args.out:
        write_text(args.out, json.dumps(results, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def render(results: dict[str, Any]) -> str:
    lines = [
        f"{results.get('mode', 'recommend()')} latency on {results['machine']} (load after: "
        f"{results['load_after']}), KB {results['kb']}, card {results['example']}, "
        f"LLM threads {results['llm_threads']}",
        "",
        "| LLM | mode | n | p50 s | p95 s | fallbacks | shortlist printed p50 s | per node p50 s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, data in results["models"].items():
        for mode in ("cold", "warm"):
            if mode not in data:
                continue
            s = data[mode]
            nodes = ", ".join(
                f"{name} {v['p50']:.2f}" for name, v in s["nodes"].items() if v["p50"] >= 0.005
            )
            printed = s.get("shortlist_printed_p50_s")
            shown = "-" if printed is None else f"{printed:.1f}"
            lines.append(
                f"| {model} | {mode} | {s['n']} | {s['p50_s']:.1f} | {s['p95_s']:.1f} | "
                f"{s['fallbacks']} | {shown} | {nodes} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
