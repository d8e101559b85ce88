"""KB-build throughput and per-trial overhead: local (in-process) vs Ray on this machine.

The same plan of tiny real trials (lcnet_050, 1 epoch, 28 px, real BreastMNIST when
``../shared/data`` is present, else a generated dataset) runs three times into fresh KBs:

* ``local``    - in this process, one trial after the other (the default backend);
* ``ray-seq``  - Ray, one trial in flight: wall time per trial minus in-trial training time
  is the per-trial overhead (dispatch, dataset fetch, worker imports, MLflow relay, KB
  write), directly comparable with ``local``'s;
* ``ray``      - Ray with every CPU busy: the throughput a build gets.

On a 2-core machine shared with other work no speed-up is expected; the point is the cost.
Ray's start-up (``ray.init``) and the first trial on each fresh worker (imports) are
reported apart: a build pays them once, not per trial.

    python bench/backends.py [--trials 8] [--cpus 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _dataset(folder: Path) -> Path:
    from metallmix import config

    real = config.shared_data_dir() / "medical" / "breastmnist.npz"
    if real.is_file():
        return real
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    images = (rng.random((300, 28, 28)) * 80 + labels[:, None, None] * 60).astype(np.uint8)
    path = folder / "synthetic.npz"
    np.savez(path, train_images=images, train_labels=labels)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the private Ray instance")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="metallmix-bench-backends-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["METALLMIX_HOME"] = str(tmp / "home")

    from metallmix.tools.kb.store import SQLiteKnowledgeBase
    from metallmix.tools.meta.search_space import Choice, IntRange
    from metallmix.tools.training.backends import RayBackend
    from metallmix.tools.training.build import (
        BUILD_SETTINGS,
        BUILD_SPACE,
        TaskSpec,
        build,
        plan,
        resolve_sources,
    )

    path = _dataset(tmp)
    space = BUILD_SPACE.model_copy(
        update={
            "name": "bench-tiny",
            "models": ["lcnet_050"],
            "params": {
                **BUILD_SPACE.params,
                "epochs": IntRange(low=1, high=1),
                "image_size": Choice(values=[28]),
                "batch_size": Choice(values=[32]),
            },
        }
    )
    sources = resolve_sources([path])
    trials = plan([TaskSpec(source=path.stem, train_limit=150)], args.trials, space=space)
    print(f"{len(trials)} trials of lcnet_050 (1 epoch, 28 px, 150 images of {path.name})")

    # Warm imports and the MLflow store so the first backend measured is not penalised.
    warm = SQLiteKnowledgeBase(tmp / "warm.sqlite")
    list(build(warm, trials[:1], sources, settings=BUILD_SETTINGS.replace(max_val_images=100)))

    rows: dict[str, list[tuple[float, float, int]]] = {"local": [], "ray-seq": [], "ray": []}

    def measure(label: str, backend: object | None, round_: int) -> None:
        kb = SQLiteKnowledgeBase(tmp / f"{label}-{round_}.sqlite")
        started = time.perf_counter()
        events = list(
            build(
                kb,
                trials,
                sources,
                settings=BUILD_SETTINGS.replace(max_val_images=100, backend=backend),
            )
        )
        wall = time.perf_counter() - started
        failed = sum(e.record is None for e in events)
        train = statistics.fmean(
            e.record.outcomes.train_seconds or 0.0 for e in events if e.record is not None
        )
        rows[label].append((wall, train, failed))
        print(f"  round {round_} {label}: {wall:.1f}s", flush=True)

    started = time.perf_counter()
    ray_backend = RayBackend(num_cpus=args.cpus)
    init_seconds = time.perf_counter() - started
    # Ray keeps its workers: the first trial on each pays the imports (torch, timm, MLflow)
    # once per build, reported apart from the per-trial figures.
    started = time.perf_counter()
    warm_ray = SQLiteKnowledgeBase(tmp / "warm-ray.sqlite")
    list(
        build(
            warm_ray,
            trials[: args.cpus],
            sources,
            settings=BUILD_SETTINGS.replace(backend=ray_backend),
        )
    )
    warmup_seconds = time.perf_counter() - started
    # Rounds interleave the backends, so load from other jobs hits them alike; medians.
    for round_ in range(args.rounds):
        measure("local", None, round_)
        ray_backend.max_in_flight = 1
        measure("ray-seq", ray_backend, round_)
        ray_backend.max_in_flight = None
        measure("ray", ray_backend, round_)
    ray_backend.close()

    n = len(trials)
    print(f"\nRay start-up (ray.init, {args.cpus} CPUs): {init_seconds:.1f}s (once per build)")
    print(
        f"Ray worker warm-up ({args.cpus} trials on fresh workers): {warmup_seconds:.1f}s "
        "(once per worker)"
    )
    print(f"medians over {args.rounds} interleaved rounds of {n} trials:")
    print(
        f"{'backend':<9} {'wall s':>8} {'trials/min':>11} {'train s/trial':>14} "
        f"{'overhead s/trial':>17} {'failed':>7}"
    )
    overheads: dict[str, float] = {}
    for label, runs in rows.items():
        wall = statistics.median(r[0] for r in runs)
        train = statistics.median(r[1] for r in runs)
        failed = sum(r[2] for r in runs)
        overheads[label] = statistics.median(r[0] / n - r[1] for r in runs)
        shown = f"{overheads[label]:.2f}" if label != "ray" else "-"
        print(
            f"{label:<9} {wall:>8.1f} {n / wall * 60:>11.1f} {train:>14.2f} {shown:>17} {failed:>7}"
        )
    print(
        f"\nRay overhead per trial over local: {overheads['ray-seq'] - overheads['local']:+.2f}s "
        "(overhead = wall per trial - training time, one trial at a time; both sides include "
        "data loading, MLflow logging and the KB write)"
    )
    print(f"load average after the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
