"""Benchmark: top-10 retrieval over a 1,000,000-row synthetic experiment index (FAISS).

The code lives in metallmix/benchmarks/scripts/retrieval_1m.py (the one home of benchmark code);
this file keeps the documented command `python bench/retrieval_1m.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module(
        "metallmix.benchmarks.scripts.retrieval_1m", run_name="__main__", alter_sys=True
    )
