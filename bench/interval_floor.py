"""How narrow a 10-90% interval can be with what the KB records (issue 26).

The code lives in metallmix/benchmarks/scripts/interval_floor.py (the one home of benchmark code);
this file keeps the documented command `python bench/interval_floor.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module(
        "metallmix.benchmarks.scripts.interval_floor", run_name="__main__", alter_sys=True
    )
