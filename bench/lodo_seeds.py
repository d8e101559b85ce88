"""Combine ``bench lodo`` result files of several seeds into one table (mean and worst case).

The code lives in metallmix/benchmarks/scripts/lodo_seeds.py (the one home of benchmark code);
this file keeps the documented command `python bench/lodo_seeds.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("metallmix.benchmarks.scripts.lodo_seeds", run_name="__main__", alter_sys=True)
