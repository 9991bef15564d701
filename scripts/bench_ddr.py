"""Benchmark the DDR loss (forward + backward) in its eager and fast modes, and the Q_DDR blind score.

    python scripts/bench_ddr.py                                   # CUDA if present: every mode, batch 1/4/16/64
    python scripts/bench_ddr.py --device cpu --batches 1 2 --iters 2 --modes eager eager-bf16 compile

Modes (``--modes``; ``eager`` is always measured first, as the baseline):

* ``eager``: ``DDR()``, exact fp32 eager (the default of the loss);
* ``eager-bf16``: ``DDR(autocast="bf16")``;
* ``compile``: ``DDR(compile=True)`` (``torch.compile`` default mode of the fixed-size part);
* ``compile-bf16``: ``DDR(compile=True, autocast="bf16")`` (not in the default list);
* ``reduce-overhead``: ``DDR(compile="reduce-overhead")``, CUDA graphs (CUDA only);
* ``reduce-overhead-bf16``: the same with ``autocast="bf16"`` (CUDA only): the fast path.

For every mode and batch size (``--batches``, inputs ``--size``^2 uniform in [0,1], the same tensor for every mode)
it prints the time of one ``loss = ddr(x); loss.backward()`` (mean over ``--iters`` iterations, median of
``--repeats`` such blocks; ``--warmup`` calls first, excluded, which include compilation: their total is printed
as ``first s``), the speed-up against eager fp32 (eager time / mode time), the largest |loss - eager loss| and
the largest input-gradient difference relative to the eager gradient's largest magnitude. CUDA is synchronised
before and after each timed block. Then (unless ``--hd-batch 0``) the eager Q_DDR throughput on 1280x720 images.

CLIP is random-initialised by default (``--pretrained none``): timings depend on the architecture only. TF32 is
left at torch's defaults unless ``--tf32`` (printed in the header).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch._dynamo

from ddr_restore.ddr.clip_backend import load_clip
from ddr_restore.ddr.descriptor import DDR

#: mode name -> (DDR keyword arguments, needs CUDA)
MODES: Dict[str, Tuple[Dict[str, object], bool]] = {
    "eager": ({}, False),
    "eager-bf16": ({"autocast": "bf16"}, False),
    "compile": ({"compile": True}, False),
    "compile-bf16": ({"compile": True, "autocast": "bf16"}, False),
    "reduce-overhead": ({"compile": "reduce-overhead"}, True),
    "reduce-overhead-bf16": ({"compile": "reduce-overhead", "autocast": "bf16"}, True),
}
DEFAULT_MODES = ["eager", "eager-bf16", "compile", "reduce-overhead", "reduce-overhead-bf16"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _block_time(fn: Callable[[], None], device: torch.device, iters: int, repeats: int) -> float:
    """Median over ``repeats`` blocks of the mean seconds per call of ``fn`` in a block of ``iters`` calls."""
    blocks: List[float] = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(device)
        blocks.append((time.perf_counter() - start) / iters)
    return statistics.median(blocks)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, " \
           f"{os.cpu_count()} logical cores)"


def _header(args: argparse.Namespace, device: torch.device, ddr: DDR) -> None:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"# DDR loss benchmark, {now}")
    print(f"# device: {_device_name(device)}")
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    print(f"# torch {torch.__version__}{cuda}, python {platform.python_version()}")
    if device.type == "cuda":
        print(f"# TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32}")
    print(f"# CLIP {ddr.model_name}, weights {ddr.source}, types {','.join(ddr.degradations)}; input "
          f"{args.size}x{args.size}; warm-up {args.warmup} call(s) excluded, mean of {args.iters} iteration(s), "
          f"median of {args.repeats} block(s)")
    if ddr.pretrained_is_random:
        print("# CLIP is random-init: timings are weight-independent (same architecture, same FLOPs)")


def _measure(ddr: DDR, x: torch.Tensor, args: argparse.Namespace, device: torch.device):
    """(seconds per fwd+bwd, warm-up seconds, loss, input gradient) of ``ddr`` on ``x``."""
    xg = x.detach().clone().requires_grad_(True)

    def step() -> None:
        xg.grad = None
        ddr(xg).backward()

    _sync(device)
    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    _sync(device)
    first = time.perf_counter() - start
    seconds = _block_time(step, device, args.iters, args.repeats)
    # The values compared with eager: one more call, after the timing (CUDA graphs replayed, not recorded).
    xg.grad = None
    loss = ddr(xg)
    loss.backward()
    return seconds, first, float(loss.detach()), xg.grad.detach().clone()


def main(argv: Optional[List[str]] = None) -> None:
    """Run the benchmark and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default="ViT-B-32")
    p.add_argument("--pretrained", default="none", help="default none: random CLIP (timings are weight-independent)")
    p.add_argument("--batches", "--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64],
                   help="batch sizes (default 1 4 16 64)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=DEFAULT_MODES,
                   help=f"modes to measure (default: {' '.join(DEFAULT_MODES)}); eager always runs first")
    p.add_argument("--size", type=int, default=256, help="input side (default 256)")
    p.add_argument("--iters", type=int, default=None,
                   help="timed iterations per block (default 20 on CUDA, 2 on the CPU)")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks, the median is printed (default 3)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed calls first (default 3: compile, CUDA-graph warm-up and recording)")
    p.add_argument("--hd-batch", type=int, default=4, help="1280x720 images per Q_DDR call (0: skip that part)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions on CUDA")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.iters is None:
        args.iters = 20 if device.type == "cuda" else 2
    for name in ("iters", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0 or min(args.batches) < 1:
        p.error("--warmup must be >= 0 and every batch size >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    modes = ["eager"] + [m for m in dict.fromkeys(args.modes) if m != "eager"]
    # Every batch size of every compiled mode is its own graph of one function; make room so that none silently
    # falls back to eager after torch's default recompile limit (8).
    limit = max(8, 2 * len(args.batches))
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, max(getattr(torch._dynamo.config, key), limit))

    torch.manual_seed(0)
    bundle = load_clip(args.backbone, args.pretrained, switch_hint="--pretrained")
    baseline = DDR(clip=bundle).to(device)
    _header(args, device, baseline)
    g = torch.Generator().manual_seed(0)
    inputs = {b: torch.rand(b, 3, args.size, args.size, generator=g).to(device) for b in args.batches}

    print()
    print(f"{'mode':<21} {'batch':>5} {'ms/iter':>9} {'ms/img':>8} {'speed-up':>9} {'|dloss|':>9} "
          f"{'grad rel d':>10} {'first s':>8}")
    eager: Dict[int, Tuple[float, float, torch.Tensor]] = {}
    for mode in modes:
        kwargs, cuda_only = MODES[mode]
        if cuda_only and device.type != "cuda":
            print(f"{mode:<21} skipped: CUDA only (on CPU, reduce-overhead is the default mode)")
            continue
        torch._dynamo.reset()  # each mode compiles from scratch: its "first s" includes its own compilation
        ddr = baseline if mode == "eager" else DDR(clip=bundle, **kwargs).to(device)
        for b in args.batches:
            seconds, first, loss, grad = _measure(ddr, inputs[b], args, device)
            if mode == "eager":
                eager[b] = (seconds, loss, grad)
            ref_s, ref_loss, ref_grad = eager[b]
            dloss = abs(loss - ref_loss)
            dgrad = float((grad - ref_grad).abs().max()) / max(float(ref_grad.abs().max()), 1e-30)
            print(f"{mode:<21} {b:>5} {seconds * 1e3:>9.2f} {seconds * 1e3 / b:>8.2f} {ref_s / seconds:>8.2f}x "
                  f"{dloss:>9.2e} {dgrad:>10.2e} {first:>8.1f}", flush=True)
        if mode != "eager":
            del ddr
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if args.hd_batch > 0:
        hd = torch.rand(args.hd_batch, 3, 720, 1280, generator=g).to(device)
        baseline.quality_score(hd)  # warm-up
        t = _block_time(lambda: baseline.quality_score(hd), device, 1, args.repeats)
        print(f"\nQ_DDR quality_score (eager fp32) on 1280x720 (2 patches/image), batch {args.hd_batch}: "
              f"{t * 1e3:.1f} ms/batch, {args.hd_batch / t:.2f} images/s")


if __name__ == "__main__":
    main()
