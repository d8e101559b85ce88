"""Training throughput of the CPU model zoo: images per second per model and image size.

The code lives in metallmix/benchmarks/scripts/train_throughput.py (the one home of benchmark code);
this file keeps the documented command `python bench/train_throughput.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module(
        "metallmix.benchmarks.scripts.train_throughput", run_name="__main__", alter_sys=True
    )
