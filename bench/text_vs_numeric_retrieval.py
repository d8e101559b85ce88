"""Benchmark: should retrieval use a text index (LangChain FAISS over summaries) or numbers?

The code lives in metallmix/benchmarks/scripts/text_vs_numeric_retrieval.py (the one home
of benchmark code); this file keeps the documented command
`python bench/text_vs_numeric_retrieval.py ...` working.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module(
        "metallmix.benchmarks.scripts.text_vs_numeric_retrieval",
        run_name="__main__",
        alter_sys=True,
    )
