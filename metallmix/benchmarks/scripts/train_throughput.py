"""Training throughput of the CPU model zoo: images per second per model and image size.

Used to plan the default knowledge-base build (which models and sizes fit a per-run budget
of seconds on 2 shared cores). Each cell times real optimiser steps (forward, backward,
AdamW step) on random grey images after warm-up steps; a model that cannot run at a size
(feature map shrinks to nothing) is reported as such rather than skipped silently.

    python bench/train_throughput.py [--threads 1] [--sizes 28 32 48] [--batch 64] [--steps 4]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from metallmix.tools.meta.search_space import CPU_ZOO_MODELS


def measure(model_name: str, size: int, batch: int, steps: int, channels: int) -> float:
    """Training images per second (forward + backward + step), after two warm-up steps."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=3, in_chans=channels)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, channels, size, size)
    y = torch.randint(0, 3, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 32, 48])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=CPU_ZOO_MODELS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# training images/s, torch {torch.__version__}, threads={args.threads}, "
        f"batch={args.batch}, steps={args.steps}, channels={args.channels}"
    )
    header = f"{'model':<24}" + "".join(f"{s:>10}px" for s in args.sizes)
    print(header)
    for name in args.models:
        cells = []
        for size in args.sizes:
            try:
                rate = measure(name, size, args.batch, args.steps, args.channels)
                cells.append(f"{rate:>12.0f}")
            except RuntimeError as exc:  # model cannot run at this size
                cells.append(f"{'n/a':>12}")
                print(f"#   {name} @ {size}px: {str(exc).splitlines()[0][:90]}")
        print(f"{name:<24}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
