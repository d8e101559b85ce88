"""One meta-learner for both compute regimes, or one per regime? Decided by LODO.

The code lives in metallmix/benchmarks/scripts/regime_lodo.py (the one home of benchmark code);
this file keeps the documented command `python bench/regime_lodo.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module(
        "metallmix.benchmarks.scripts.regime_lodo", run_name="__main__", alter_sys=True
    )
