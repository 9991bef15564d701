"""Benchmark the DDR loss (forward + backward) and the Q_DDR blind score.

    python scripts/bench_ddr.py [--device cpu|cuda] [--repeats 3] [--threads N] [--pretrained none]

Prints, per batch size (1, 4, 16 at 256x256), the median time of ``DDR(x).backward()`` and, on 1280x720 images,
the Q_DDR throughput (images/s) of ``DDR.quality_score`` (2 patches of 720x720 per image). Each measurement has
one warm-up run, then the median of ``--repeats`` runs. CLIP is random-initialised by default: the timings do not
depend on the weight values, only on the architecture.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

import torch

from ddr_restore.ddr.descriptor import DDR


def _timeit(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn`` after ``warmup`` calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    """Run the benchmark and print a small report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default="ViT-B-32")
    p.add_argument("--pretrained", default="none", help="default none: random CLIP (timings are weight-independent)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--size", type=int, default=256, help="training crop side for the loss timing")
    p.add_argument("--hd-batch", type=int, default=4, help="1280x720 images per quality_score call")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--autocast", action="store_true", help="CUDA fp16 autocast for the image encoder")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    ddr = DDR(backbone=args.backbone, pretrained=args.pretrained, autocast=args.autocast).to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"DDR {ddr.model_name} weights={ddr.source} types={','.join(ddr.degradations)} device={name} "
          f"autocast={args.autocast} torch={torch.__version__}")
    if ddr.pretrained_is_random:
        print("NOTE: CLIP is random-init; timings are weight-independent (same architecture, same FLOPs).")
    print(f"warm-up {args.warmup}, median of {args.repeats} repeats")

    print(f"\nDDR loss forward+backward, {args.size}x{args.size} input:")
    print(f"{'batch':>6} {'ms/batch':>10} {'ms/image':>10}")
    for b in args.batch_sizes:
        x = torch.rand(b, 3, args.size, args.size, device=device, requires_grad=True)

        def step() -> None:
            x.grad = None
            ddr(x).backward()

        t = _timeit(step, device, args.warmup, args.repeats)
        print(f"{b:>6} {t * 1e3:>10.1f} {t * 1e3 / b:>10.1f}")

    hd = torch.rand(args.hd_batch, 3, 720, 1280, device=device)
    t = _timeit(lambda: ddr.quality_score(hd), device, args.warmup, args.repeats)
    print(f"\nQ_DDR quality_score on 1280x720 (2 patches/image), batch {args.hd_batch}: "
          f"{t * 1e3:.1f} ms/batch, {args.hd_batch / t:.2f} images/s")


if __name__ == "__main__":
    main()
