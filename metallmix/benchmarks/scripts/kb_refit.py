"""How long the meta-learner takes to be ready after one validation run (issue 26: within
10 s on an idle machine): a full fit of the CPU regime's learner on the shipped KB, then the
same KB plus one new run (a validation's record), which the product grows by warm start.

    python bench/kb_refit.py            # prints the figures with the load average

The new run is a copy of one of the KB's own CPU runs under a new id: what matters for the
timing is that the KB grew by one record, not what the record says.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the repository (metallmix/benchmarks/scripts/..)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kb", type=Path, default=ROOT / "metallmix" / "data" / "kb.sqlite")
    args = parser.parse_args()
    load_before = os.getloadavg()
    from metallmix.tools.kb.regime import regime_of
    from metallmix.tools.kb.store import SQLiteKnowledgeBase, open_kb
    from metallmix.tools.meta.metalearner import MetaLearnerConfig, fit_or_load

    source = open_kb(args.kb, read_only=True)
    cpu = [r for r in source.iter_records() if regime_of(r) == "cpu"]
    with tempfile.TemporaryDirectory(prefix="metallmix-refit-") as tmp:
        kb = SQLiteKnowledgeBase(Path(tmp) / "kb.sqlite")
        kb.add(cpu)
        cache = Path(tmp) / "cache"
        cfg = MetaLearnerConfig()
        started = time.perf_counter()
        full = fit_or_load(kb, cfg, cache=cache)
        full_s = time.perf_counter() - started
        new = cpu[0].model_copy(update={"run_id": cpu[0].run_id + "-validation"})
        kb.add([new])
        started = time.perf_counter()
        grown = fit_or_load(kb, cfg, cache=cache)
        warm_s = time.perf_counter() - started
    print(f"CPU-regime runs: {len(cpu)}; learner: {full.info.get('fit')}")
    print(f"full fit: {full_s:.1f} s")
    print(f"after one new run: {warm_s:.1f} s ({grown.info.get('fit')})")
    print(
        f"load average before: {' '.join(f'{v:.2f}' for v in load_before)}; after: "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; CPUs {os.cpu_count()}"
    )


if __name__ == "__main__":
    main()
