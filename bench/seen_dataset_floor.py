"""The seen-dataset floor: what a zero-shot learner could reach at best (issues 26, 29).

The code lives in metallmix/benchmarks/scripts/seen_dataset_floor.py (the one home of
benchmark code); this file keeps the documented command `python bench/seen_dataset_floor.py
...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module(
        "metallmix.benchmarks.scripts.seen_dataset_floor", run_name="__main__", alter_sys=True
    )
