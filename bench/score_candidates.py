"""Benchmark: scoring 10,000 candidate configurations with the meta-learner.

The code lives in metallmix/benchmarks/scripts/score_candidates.py (the one home of benchmark code);
this file keeps the documented command `python bench/score_candidates.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module(
        "metallmix.benchmarks.scripts.score_candidates", run_name="__main__", alter_sys=True
    )
