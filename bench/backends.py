"""KB-build throughput and per-trial overhead: local (in-process) vs Ray on this machine.

The code lives in metallmix/benchmarks/scripts/backends.py (the one home of benchmark code);
this file keeps the documented command `python bench/backends.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("metallmix.benchmarks.scripts.backends", run_name="__main__", alter_sys=True)
