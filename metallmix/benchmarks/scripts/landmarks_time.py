"""How long a dataset's landmarks take (issue 29: at most 10 s for a 500-image dataset on an
idle 2-core machine), in a fresh process so torch's import and the weight checks count.

    nice -n 10 .venv/bin/python bench/landmarks_time.py [DATA.npz] [--images 500] [--seed 0]

Prints the wall time of the whole step (load, subsample, pixel and backbone landmarks), the
values, and the machine's load (``os.getloadavg``), which a quoted figure must carry.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the repository (metallmix/benchmarks/scripts/..)
DEFAULT = ROOT.parent / "shared" / "data" / "medical" / "breastmnist.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--images", type=int, default=500, help="training images kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data}: not found (the shared data is ../shared/data/medical)")
    load = os.getloadavg()
    started = time.perf_counter()
    cpu_started = time.process_time()
    from metallmix.tools.datasets import load_dataset
    from metallmix.tools.meta.landmarks import compute_landmarks

    dataset = load_dataset(args.data)
    if args.images < len(dataset.split("train")):
        dataset = dataset.subset(train_limit=args.images, seed=args.seed)
    result = compute_landmarks(dataset, seed=args.seed)
    total = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    print(f"dataset {args.data.name}: {len(dataset.split('train'))} training images")
    print(f"landmarks: {result.describe()}")
    print(f"landmark step {result.seconds:.2f} s; whole process incl. imports {total:.2f} s")
    print(
        f"CPU time of the process (all threads) {cpu:.2f} s: on an idle 2-core machine the "
        "wall time lies between CPU/2 and CPU"
    )
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
