"""Per-dataset quality of a KB's own runs: how many learned, how well (issue 12).

The code lives in metallmix/benchmarks/scripts/kb_quality.py (the one home of benchmark code);
this file keeps the documented command `python bench/kb_quality.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("metallmix.benchmarks.scripts.kb_quality", run_name="__main__", alter_sys=True)
