"""How long a dataset's landmarks take (issue 29: at most 10 s for a 500-image dataset on an
idle 2-core machine), in a fresh process so torch's import and the weight checks count.

The code lives in metallmix/benchmarks/scripts/landmarks_time.py (the one home of benchmark code);
this file keeps the documented command `python bench/landmarks_time.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module(
        "metallmix.benchmarks.scripts.landmarks_time", run_name="__main__", alter_sys=True
    )
