"""How long the meta-learner takes to be ready after one validation run (issue 26).

The code lives in metallmix/benchmarks/scripts/kb_refit.py (the one home of benchmark code);
this file keeps the documented command `python bench/kb_refit.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("metallmix.benchmarks.scripts.kb_refit", run_name="__main__", alter_sys=True)
