"""Raw speed of each bundled local LLM on this machine: load time, prompt and generation tok/s.

The code lives in metallmix/benchmarks/scripts/latency_llm.py (the one home of benchmark code);
this file keeps the documented command `python bench/latency_llm.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module(
        "metallmix.benchmarks.scripts.latency_llm", run_name="__main__", alter_sys=True
    )
