"""Throughput of the on-the-fly SR training data (Real-ESRGAN-style degradation) in a torch DataLoader.

    OMP_NUM_THREADS=1 python scripts/bench_sr_loader.py [--n 200] [--gt-size 256] [--scale 4] [--workers 0 1 2]
                                                        [--dataroot DIR] [--gt-usm] [--json FILE]

Prints, with the machine, torch/OpenCV versions and the date:

* samples/s of :class:`ddr_restore.data.sr_synthetic.SyntheticSRDataset` (phase train, default Real-ESRGAN
  pipeline, ``gt_size`` 256, x4) through ``torch.utils.data.DataLoader`` (batch 4) with ``num_workers`` 0 (the main
  process), 1 and 2; the first batch (worker start-up) is not timed;
* the per-stage time of one sample in one process (ms): crop + flips, blur (both orders and the final sinc),
  resize, noise, JPEG, and what is left (8-bit rounding, conversions to tensors).

Photos: the scikit-image training photos (no download), or a folder of HR photos with ``--dataroot`` (those are
read from disk per item, as in training).

Decision (recorded here because this script measures it): the degradation runs **per sample in the DataLoader**
(numpy/OpenCV on the CPU), not on the GPU batch as Real-ESRGAN does, because

* each sample is reproducible from one seed (the worker's torch RNG), independent of batch composition, and every
  sample gets its own resize factor, mode and noise type (Real-ESRGAN shares those across a batch);
* no GPU is needed, so the CPU demo and the tests run the same code as a GPU training run;
* it is fast enough: one process makes 26-41 samples/s at 256 px, x4 (this script, 2026-11-26, on a 2-core Xeon
  shared with other jobs, load average 5-8, so an upper bound on the cost; blur ~55 %, noise ~25 %, JPEG ~7 %),
  while a GPU training step consumes some 15-140 samples/s at that crop size (NAFNet-w32 on an H200: batch 4 in
  86-106 ms = 38-47 samples/s, batch 16 in 115-128 ms = 125-139 samples/s, ``../shared/reference/gpu-notes.md``;
  Restormer is slower), so 1-4 workers per GPU keep up. Real-ESRGAN's GPU version saves CPU time but ties the
  degradation to the model step and to the batch.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

from ddr_restore.data.real_degradation import degrade, usm_sharpen
from ddr_restore.data.sr_synthetic import SyntheticSRDataset
from ddr_restore.data.transforms import augment
from ddr_restore.errors import run_console
from ddr_restore.imageio import img2tensor

STAGES = ("crop", "blur", "resize", "noise", "jpeg", "rest")


def _dataset(args: argparse.Namespace, length: int) -> SyntheticSRDataset:
    kw: Dict[str, Any] = {"phase": "train", "scale": args.scale, "gt_size": args.gt_size, "length": length,
                          "gt_usm": args.gt_usm}
    if args.dataroot:
        kw["dataroot_gt"] = args.dataroot
    return SyntheticSRDataset(**kw)


def loader_rate(ds: SyntheticSRDataset, workers: int, n: int, batch: int = 4) -> float:
    """Samples/s over ``n`` samples after the first batch (which includes starting the workers)."""
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=True)
    it = iter(loader)
    next(it)
    done, start = 0, time.perf_counter()
    for b in it:
        done += b["gt"].shape[0]
        if done >= n:
            break
    elapsed = time.perf_counter() - start
    del it, loader
    return done / elapsed


def stage_times(ds: SyntheticSRDataset, n: int) -> Dict[str, float]:
    """Mean ms per sample of each stage, in this process, following ``SyntheticSRDataset.__getitem__``."""
    sums = {k: 0.0 for k in STAGES}
    totals: List[float] = []
    size = ds.gt_size
    assert size is not None
    for i in range(n):
        t0 = time.perf_counter()
        rng = np.random.default_rng(i)
        _, img, _ = ds._photo(i)
        H, W = img.shape[:2]
        top, left = int(rng.integers(0, H - size + 1)), int(rng.integers(0, W - size + 1))
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        (gt,) = augment([img[top : top + size, left : left + size]], generator=gen)
        if ds.gt_usm:
            gt = usm_sharpen(gt)
        t1 = time.perf_counter()
        timings: Dict[str, float] = {}
        lq, _ = degrade(gt, ds.scale, ds.cfg, rng, timings=timings)
        img2tensor(lq), img2tensor(gt)
        t2 = time.perf_counter()
        sums["crop"] += t1 - t0
        for k, v in timings.items():
            sums[k] += v
        sums["rest"] += (t2 - t1) - sum(timings.values())
        totals.append(t2 - t0)
    out = {k: 1000 * v / n for k, v in sums.items()}
    out["total"] = 1000 * statistics.fmean(totals)
    return out


def machine() -> Dict[str, Any]:
    """What ran the benchmark (numbers are only comparable on the same machine and load)."""
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        load = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg_1_5_15": load, "python": platform.python_version(),
            "torch": torch.__version__, "opencv": cv2.__version__, "numpy": np.__version__,
            "torch_threads": torch.get_num_threads(), "opencv_threads": cv2.getNumThreads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the benchmark and print the figures; returns them as a dict."""
    ds = _dataset(args, length=max(4 * args.n, 64))
    info = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"dataset: {ds!r}")
    result: Dict[str, Any] = {"machine": info, "gt_size": args.gt_size, "scale": args.scale, "n": args.n,
                              "loader_samples_per_s": {}}
    stage_times(ds, 3)  # warm-up: imports, OpenCV's first calls
    st = stage_times(ds, args.n)
    result["stage_ms"] = st
    print(f"per sample, one process ({args.n} samples): " + ", ".join(f"{k} {v:.2f} ms" for k, v in st.items())
          + f"  -> {1000 / st['total']:.1f} samples/s")
    for w in args.workers:
        rate = loader_rate(ds, w, args.n)
        result["loader_samples_per_s"][str(w)] = rate
        print(f"DataLoader num_workers={w} batch 4: {rate:.1f} samples/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="samples per measurement (default 200)")
    p.add_argument("--gt-size", type=int, default=256)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dataroot", help="folder of HR photos (default: the scikit-image training photos)")
    p.add_argument("--gt-usm", action="store_true", help="sharpen the GT as Real-ESRGAN does (gt_usm: true)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = p.parse_args(argv)
    run_console("bench_sr_loader", lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    main()
