"""Issue 29: shipped-KB LODO, CPU regime, with and without landmarks, 3 seeds.

The code lives in metallmix/benchmarks/scripts/landmarks_lodo.py (the one home of benchmark code);
this file keeps the documented command `python bench/landmarks_lodo.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module(
        "metallmix.benchmarks.scripts.landmarks_lodo", run_name="__main__", alter_sys=True
    )
