"""Latency of ``metallmix.recommend``: p50/p95, cold and warm, per LLM and per graph node.

The code lives in metallmix/benchmarks/scripts/latency.py (the one home of benchmark code);
this file keeps the documented command `python bench/latency.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("metallmix.benchmarks.scripts.latency", run_name="__main__", alter_sys=True)
