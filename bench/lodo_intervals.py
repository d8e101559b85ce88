"""Leave-one-dataset-out coverage and width of the predicted score's 10-90% interval.

The code lives in metallmix/benchmarks/scripts/lodo_intervals.py (the one home of benchmark code);
this file keeps the documented command `python bench/lodo_intervals.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module(
        "metallmix.benchmarks.scripts.lodo_intervals", run_name="__main__", alter_sys=True
    )
