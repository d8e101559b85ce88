"""Raw speed of each bundled local LLM on this machine: load time, prompt and generation tok/s.

Sizes the recommender's LLM step: how long a shortlist-sized prompt takes to read and a
Recommendation-sized JSON answer takes to write, cold (first call, nothing cached) and warm
(same prompt again, served from llama.cpp's prompt cache), and warm again with
llama-cpp-python's stock grammar sampler instead of ours. Generation is reported twice:
decode-only tok/s from llama.cpp's own counters, and effective tok/s including the JSON
grammar's per-token sampling cost, which is what a caller waits for. The 1-minute load
average is printed because the figures scale with how busy the cores are.

The engine is measured in this process by default (``--isolation none``: the stock-sampler
comparison needs it); ``--isolation process`` measures it behind the child-process boundary
the product uses. The llama.cpp build (``llama_print_system_info``) and whether the extra
buffer types (weight repacking) were on are printed with the figures, so a portable and a
native build, or ``METALLMIX_LLM_EXTRA_BUFTS=0`` and ``=1``, can be compared.

    python bench/latency_llm.py [--models fast default] [--threads 2] [--max-tokens 160]
        [--isolation none|process]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from typing import Any

from pydantic import BaseModel, Field

from metallmix.agents.runtime.llm import (
    ChatLLM,
    build_info,
    load_llm,
    thread_setting,
    unload_all,
    use_extra_buffers,
)
from metallmix.agents.runtime.weights import resolve_weights

CANDIDATES = ["resnet18", "efficientnet_b0", "mobilenetv3_small_100", "convnext_atto", "vit_tiny"]


class BenchRecommendation(BaseModel):
    """Shaped like the recommender's output: a choice, hyperparameters and a short why."""

    model: str
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(gt=0)
    epochs: int = Field(gt=0)
    confidence: float = Field(ge=0, le=1)
    explanation: str = Field(max_length=400)


def prompt(nonce: str) -> list[dict[str, str]]:
    """A shortlist-sized prompt (~450 tokens); the nonce defeats prefix caching between runs."""
    rows = "\n".join(
        f"- {name}: predicted accuracy {0.81 + 0.02 * i:.3f} +- 0.02, predicted time "
        f"{40 + 15 * i} s, lr {10 ** -(3 + i % 2):.0e}, batch {32 * (1 + i % 2)}, "
        f"epochs {5 + i}; SHAP: n_images raises accuracy by {0.01 * (i + 1):.3f}, "
        f"class imbalance lowers it by {0.004 * (5 - i):.3f}"
        for i, name in enumerate(CANDIDATES)
    )
    return [
        {
            "role": "system",
            "content": f"[session {nonce}] You recommend a pretrained image classifier and its "
            "hyperparameters. Choose only among the shortlist, keep the numbers you are given, "
            "and explain the choice in two sentences citing the SHAP facts. Answer in JSON.",
        },
        {
            "role": "user",
            "content": "Dataset: chest X-ray, 5,216 images, 2 classes, imbalance ratio 2.9, "
            "entropy 0.83 bits, median resolution 1,320 x 968, grey, smallest class 1,341 "
            f"images.\nShortlist:\n{rows}\nPick one model and its hyperparameters.",
        },
    ]


def call(llm: ChatLLM, messages: list[dict[str, str]], max_tokens: int, grammar: bool) -> dict:
    started = time.perf_counter()
    if grammar:
        llm.chat_json(messages, BenchRecommendation, max_tokens=max_tokens)
    else:
        llm.chat(messages, max_tokens=max_tokens)
    seconds = time.perf_counter() - started
    u = llm.last_usage
    after_prompt = max(seconds - u["prompt_eval_seconds"], 1e-9)
    return {
        "seconds": round(seconds, 3),
        "prompt_tokens": int(u["prompt_tokens"]),
        "prompt_eval_tokens": int(u["prompt_eval_tokens"]),
        "prompt_tok_s": round(u["prompt_eval_tokens"] / u["prompt_eval_seconds"], 1)
        if u["prompt_eval_seconds"] > 0
        else None,
        "completion_tokens": int(u["completion_tokens"]),
        "decode_tok_s": round(u["gen_tokens"] / u["gen_seconds"], 1) if u["gen_seconds"] else None,
        "effective_gen_tok_s": round(u["completion_tokens"] / after_prompt, 1),
        "threads": int(u["threads"]),
    }


def bench_model(name: str, threads: int | None, max_tokens: int, isolated: bool) -> dict[str, Any]:
    unload_all()
    started = time.perf_counter()
    weights = resolve_weights(name)
    resolve_s = time.perf_counter() - started
    started = time.perf_counter()
    llm = load_llm(name, threads=threads, isolated=isolated)
    cold_load_s = time.perf_counter() - started
    started = time.perf_counter()
    again = load_llm(name, threads=threads, isolated=isolated)
    warm_load_s = time.perf_counter() - started
    assert again is llm
    messages = prompt(uuid.uuid4().hex[:8])
    cold = call(llm, messages, max_tokens, grammar=True)
    warm = call(llm, messages, max_tokens, grammar=True)
    stock = None
    if not isolated:  # llama-cpp-python's own sampler chain, for comparison (in-process only)
        llm.fast_grammar = False
        stock = call(llm, messages, max_tokens, grammar=True)
        llm.fast_grammar = True
    plain = call(llm, prompt(uuid.uuid4().hex[:8]), max_tokens, grammar=False)
    return {
        "model": weights.name,
        "weights_source": weights.source,
        "resolve_s": round(resolve_s, 3),
        "load_s": {"cold": round(cold_load_s, 3), "warm": round(warm_load_s, 6)},
        "json_call": {"cold": cold, "warm": warm, "warm_stock_sampler": stock},
        "plain_call": plain,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fast", "default"])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="pin threads (default: auto)",
    )
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--isolation", choices=["none", "process"], default="none")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    threads = args.threads or thread_setting()
    load_before = os.getloadavg()[0]
    isolated = args.isolation == "process"
    results = [bench_model(name, threads, args.max_tokens, isolated) for name in args.models]
    system = build_info()
    report = {
        "build": system.strip(),
        "extra_buffers": use_extra_buffers(system),
        "isolation": args.isolation,
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "loadavg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"llama.cpp build: {report['build']}")
    print(f"extra buffer types: {report['extra_buffers']}; isolation: {args.isolation}")
    print(
        f"threads={threads or 'auto'} cpus={report['cpu_count']} load average (1 min) "
        f"{report['loadavg_1min']['before']} -> {report['loadavg_1min']['after']}"
    )
    header = (
        f"{'model':20} {'call':10} {'secs':>6} {'prompt':>7} {'evald':>6} {'p tok/s':>8} "
        f"{'gen':>4} {'decode tok/s':>12} {'eff tok/s':>9} {'thr':>3}"
    )
    for r in results:
        print(
            f"\n{r['model']} (weights from {r['weights_source']}, resolve {r['resolve_s']} s): "
            f"load cold {r['load_s']['cold']} s, warm {r['load_s']['warm']} s"
        )
        print(header)
        for label, c in (
            ("json cold", r["json_call"]["cold"]),
            ("json warm", r["json_call"]["warm"]),
            ("json stock", r["json_call"]["warm_stock_sampler"]),
            ("plain", r["plain_call"]),
        ):
            if c is None:
                continue
            print(
                f"{r['model']:20} {label:10} {c['seconds']:>6} {c['prompt_tokens']:>7} "
                f"{c['prompt_eval_tokens']:>6} {c['prompt_tok_s']!s:>8} "
                f"{c['completion_tokens']:>4} {c['decode_tok_s']!s:>12} "
                f"{c['effective_gen_tok_s']:>9} {c['threads']:>3}"
            )


if __name__ == "__main__":
    main()
