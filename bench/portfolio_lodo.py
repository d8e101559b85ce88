"""Shortlist rules in LODO (issue 29): plain top-5 against the hedging rules, per regime.

The code lives in metallmix/benchmarks/scripts/portfolio_lodo.py (the one home of benchmark code);
this file keeps the documented command `python bench/portfolio_lodo.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module(
        "metallmix.benchmarks.scripts.portfolio_lodo", run_name="__main__", alter_sys=True
    )
