"""How good is the LLM's voice, and does its *choice* help? (issue 13)

The code lives in metallmix/benchmarks/scripts/judge_quality.py (the one home of benchmark code);
this file keeps the documented command `python bench/judge_quality.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module(
        "metallmix.benchmarks.scripts.judge_quality", run_name="__main__", alter_sys=True
    )
