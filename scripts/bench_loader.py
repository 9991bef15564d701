#!/usr/bin/env python
"""Samples/s of the training data loader on real 1280x720 GoPro-style pairs, and the workers a GPU step needs.

    OMP_NUM_THREADS=1 python scripts/bench_loader.py [--data DIR] [--workers 0,1,2,4] [--batches 30]
                                                     [--repeats 1] [--step-ms 67,40,115@16] [--json out.json]

The loader is the trainer's (``ddr_restore/train/trainer.py``): :class:`PairedImageDataset` in the train phase
(``gt_size`` 256, random flips and rotations), wrapped in ``SeededDataset`` with the ``ResumableSampler``, a
``DataLoader`` with batch 4, ``drop_last``, persistent workers. Three variants of the same pairs:

* ``full``: the full-resolution PNG pairs (``--data``: ``input/`` and ``target/``; default the gopro_mini pairs in
  ``../shared/data``, 11 pairs of 1280x720): every sample decodes two whole frames, as training on GoPro does
  with today's option files;
* ``tiles``: their 512x512 sub-images with stride 256 (8 per frame), cut by ``scripts/extract_subimages.py`` into
  a temporary folder (removed afterwards), as the official NAFNet/Restormer recipes train;
* ``memory``: the frames decoded once into float32 arrays in memory, then the same random crop, flips/rotation and
  tensor conversion per sample: no decoding at all, the upper bound of any decoded-array cache.

Each (variant, worker count) runs ``--warmup`` + ``--batches`` batches (the warm-up also covers starting the
workers); samples/s is over the timed batches (median of ``--repeats`` runs). With ``--step-ms`` (the GPU training
step, e.g. 67 ms for NAFNet-w32 at batch 4 on an H200 with TF32 + fused AdamW, issue 11) it prints how many
workers each variant needs to deliver ``batch / step`` samples/s. The rate of one worker on a core of its own is
taken as 1 / (CPU time per sample) measured with ``--workers 0`` (the sample is made in this process), because
other jobs on a shared machine inflate wall time but hardly CPU time; the wall-clock rate of one worker is printed
beside it. The estimate assumes one free CPU core per worker and linear scaling (a GPU machine short of cores
gives less). It also times one PNG decode of a full frame and of a 512 tile with OpenCV (what ``read_image``
uses) and PIL, and ``read_image`` itself (decode + BGR->RGB + conversion of the whole image to float32).

The files are read from the page cache (the small set fits), so the figures are decoding and CPU work, not disk.
On a machine shared with other jobs the figures vary; run with ``--repeats 3`` and compare ratios within one run.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ddr_restore.data.paired import PairedImageDataset
from ddr_restore.data.transforms import augment, paired_random_crop
from ddr_restore.errors import InputError, MissingPathError, run_console
from ddr_restore.imageio import img2tensor, list_images, read_image
from ddr_restore.train.sampling import ResumableSampler, SeededDataset, ignore_sigint_in_worker

PROG = "bench_loader.py"
REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("full", "tiles", "memory")


def default_data() -> Path:
    """gopro_mini's train folder in the shared data folder (env ``DDR_SHARED_DATA``, else ../shared/data)."""
    shared = Path(os.environ.get("DDR_SHARED_DATA", REPO.parent / "shared" / "data"))
    return shared / "gopro_mini" / "train"


def _load_extractor():
    # scripts/ is not a package; register the module by name so its worker processes can unpickle its functions.
    if "extract_subimages" not in sys.modules:
        spec = importlib.util.spec_from_file_location("extract_subimages", REPO / "scripts" / "extract_subimages.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["extract_subimages"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules["extract_subimages"]


class InMemoryPairs(Dataset):
    """The train items of ``base`` (a :class:`PairedImageDataset`) from frames decoded once, kept in memory."""

    def __init__(self, base: PairedImageDataset) -> None:
        self.base = base
        self.arrays = {p: read_image(p) for pair in base.pairs for p in pair}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        b = self.base
        lq_path, gt_path = b.pairs[index]
        lq, gt = paired_random_crop(self.arrays[lq_path], self.arrays[gt_path], b.gt_size, b.scale)
        if b.use_hflip or b.use_rot:
            lq, gt = augment([lq, gt], hflip=b.use_hflip, rotation=b.use_rot)
        return {"lq": img2tensor(lq), "gt": img2tensor(gt), "lq_path": str(lq_path), "gt_path": str(gt_path)}


def make_loader(dataset: Dataset, batch: int, workers: int, samples: int, seed: int = 0) -> DataLoader:
    """The trainer's loader around ``dataset``, its epoch enlarged to at least ``samples`` samples."""
    enlarge = max(1, math.ceil(samples / len(dataset)))  # type: ignore[arg-type]
    sampler = ResumableSampler(len(dataset), seed, enlarge_ratio=enlarge)  # type: ignore[arg-type]
    return DataLoader(
        SeededDataset(dataset), batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=ignore_sigint_in_worker if workers > 0 else None,
    )


def time_loader(dataset: Dataset, batch: int, workers: int, warmup: int, batches: int) -> Tuple[float, float]:
    """(samples/s, CPU ms per sample of this process) over ``batches`` batches after ``warmup`` batches.

    The warm-up also covers starting the workers. The CPU time is this process's (all its threads): with
    ``workers=0`` it is the whole cost of producing a sample, which other jobs on a shared machine do not inflate
    the way they inflate wall time; with workers it is only the cost of receiving batches.
    """
    loader = make_loader(dataset, batch, workers, samples=(warmup + batches) * batch)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    del it, loader  # stops the workers before the next configuration starts its own
    return batches * batch / seconds, cpu * 1e3 / (batches * batch)


def time_call(fn, repeats: int) -> Tuple[float, float]:
    """Median (wall ms, CPU ms of this process) of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def decode_times(path: Path, repeats: int) -> Dict[str, Tuple[float, float]]:
    """ms to decode ``path``: OpenCV (file bytes -> BGR uint8), the same + BGR->RGB in uint8 (the least a loader
    of whole frames pays), PIL (-> RGB uint8 array), ``read_image`` (-> float32 RGB, what the dataset calls)."""

    def cv2_decode() -> np.ndarray:
        return cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)

    return {
        "cv2": time_call(cv2_decode, repeats),
        "cv2_rgb_u8": time_call(lambda: cv2.cvtColor(cv2_decode(), cv2.COLOR_BGR2RGB), repeats),
        "pil": time_call(lambda: np.asarray(Image.open(path).convert("RGB")), repeats),
        "read_image": time_call(lambda: read_image(path), repeats),
    }


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment() -> Dict[str, Any]:
    """Where the figures come from: date, CPU, cores, torch/OpenCV versions, thread settings, load."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only (no CUDA device)",
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "python": platform.python_version(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "cv2_threads": cv2.getNumThreads(),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def workers_needed(per_worker: float, need: float) -> Optional[int]:
    """Workers to deliver ``need`` samples/s at ``per_worker`` samples/s each (None without a rate)."""
    return math.ceil(need / per_worker) if per_worker > 0 else None


def parse_steps(text: str, batch: int) -> List[Tuple[float, int]]:
    """``"67,115@16"`` -> ``[(67.0, batch), (115.0, 16)]``: GPU step ms, optionally ``@`` the batch it processes."""
    steps = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        ms, _, b = item.partition("@")
        try:
            step, n = float(ms), int(b) if b else batch
        except ValueError:
            raise InputError(f"--step-ms: expected 'ms' or 'ms@batch' items, got {item!r}") from None
        if step <= 0 or n <= 0:
            raise InputError(f"--step-ms: step and batch must be positive, got {item!r}")
        steps.append((step, n))
    return steps


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the benchmark; prints a report and returns every figure."""
    # More workers than CPUs is allowed on purpose (it shows the saturation); torch warns about it each time.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    data = Path(args.data) if args.data else default_data()
    for sub in ("input", "target"):
        if not (data / sub).is_dir():
            raise MissingPathError(f"{data / sub} not found: --data must hold input/ and target/ folders of image "
                                   "pairs (the gopro_mini pairs of ../shared/data by default; set DDR_SHARED_DATA or "
                                   "--data)")
    workers = [int(w) for w in args.workers.split(",")]
    if any(w < 0 for w in workers):
        raise InputError(f"--workers must be counts >= 0, got {args.workers!r}")
    steps = parse_steps(args.step_ms, args.batch)
    env = environment()
    print(f"bench_loader  {env['date']}")
    print(f"device: {env['device']}; CPU: {env['cpu']}, {env['cpu_count']} logical CPUs ({env['cpus_usable']} usable)")
    print(f"torch {env['torch']}, OpenCV {env['opencv']}, Python {env['python']}; OMP_NUM_THREADS="
          f"{env['OMP_NUM_THREADS']}, torch threads {env['torch_threads']}, OpenCV threads {env['cv2_threads']}; "
          f"load average at start {env['loadavg_start']}")
    result: Dict[str, Any] = {"env": env, "data": str(data), "batch": args.batch, "gt_size": args.gt_size}

    full = PairedImageDataset(data / "input", data / "target", phase="train", gt_size=args.gt_size,
                              use_hflip=True, use_rot=True)
    print(f"data: {data} ({full.file_summary()}); batch {args.batch}, gt_size {args.gt_size}, flips + rotations")

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        es = _load_extractor()
        t0 = time.perf_counter()
        summary = es.extract_subimages(
            [([data / "input", data / "target"], [Path(tmp) / "input", Path(tmp) / "target"])],
            crop_size=512, step=256, workers=max(1, env["cpus_usable"]), log=lambda line: None,
        )
        cut_s = time.perf_counter() - t0
        frame_bytes = sum(p.stat().st_size for p in list_images(data / "input") + list_images(data / "target"))
        tile_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*.png"))
        print(f"sub-images: {summary.tiles} tiles of 512x512 per folder from {summary.images} pairs in {cut_s:.1f} s "
              f"({cut_s / summary.images:.2f} s per pair, {env['cpus_usable']} processes); on disk "
              f"{tile_bytes / 2**20:.1f} MiB vs {frame_bytes / 2**20:.1f} MiB of frames "
              f"({tile_bytes / frame_bytes:.2f}x)")
        result["extract"] = {"seconds": cut_s, "pairs": summary.images, "tiles_per_folder": summary.tiles,
                             "tile_bytes": tile_bytes, "frame_bytes": frame_bytes}

        frame = full.pairs[0][1]
        tile = sorted((Path(tmp) / "target").glob("*.png"))[0]
        dec = {"frame_1280x720": decode_times(frame, args.decode_repeats),
               "tile_512": decode_times(tile, args.decode_repeats)}
        result["decode_ms"] = dec
        print(f"\none PNG decode, median of {args.decode_repeats}, wall ms / CPU ms (one process):")
        print(f"  {'':16}{'cv2.imdecode':>14}{'+ BGR->RGB':>14}{'PIL':>14}{'read_image':>14}")
        for name, d in dec.items():
            print(f"  {name:16}" + "".join(f"{d[k][0]:7.1f} /{d[k][1]:5.1f}"
                                           for k in ("cv2", "cv2_rgb_u8", "pil", "read_image")))
        print("  (read_image = cv2.imdecode + BGR->RGB + conversion of the whole image to float32 in [0,1])")

        datasets = {
            "full": full,
            "tiles": PairedImageDataset(Path(tmp) / "input", Path(tmp) / "target", phase="train",
                                        gt_size=args.gt_size, use_hflip=True, use_rot=True),
            "memory": InMemoryPairs(full),
        }
        rates: Dict[str, Dict[int, float]] = {v: {} for v in VARIANTS}
        cpu_ms: Dict[str, Dict[int, float]] = {v: {} for v in VARIANTS}
        print()
        for w in workers:  # worker counts outermost: drift of a shared machine hits every variant alike
            for v in VARIANTS:
                warmup = args.warmup if args.warmup is not None else 2 * w + 2
                runs = [time_loader(datasets[v], args.batch, w, warmup, args.batches) for _ in range(args.repeats)]
                rates[v][w] = statistics.median(r for r, _ in runs)
                cpu_ms[v][w] = statistics.median(c for _, c in runs)
                print(f"  ... {v:6} workers {w}: {rates[v][w]:.1f} samples/s "
                      f"({', '.join(f'{r:.1f}' for r, _ in runs)}); main-process CPU {cpu_ms[v][w]:.1f} ms/sample",
                      flush=True)
    env["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    result["samples_per_s"] = {v: {str(w): r for w, r in rates[v].items()} for v in VARIANTS}
    result["main_process_cpu_ms_per_sample"] = {v: {str(w): c for w, c in cpu_ms[v].items()} for v in VARIANTS}

    print(f"\nloader samples/s (batch {args.batch}, {args.batches} timed batches, median of {args.repeats}); "
          f"load average at end {env['loadavg_end']}:")
    print(f"  {'workers':>8}" + "".join(f"{v:>10}" for v in VARIANTS) + f"{'tiles/full':>12}{'memory/full':>13}")
    for w in workers:
        f, t, m = (rates[v][w] for v in VARIANTS)
        print(f"  {w:>8}{f:10.1f}{t:10.1f}{m:10.1f}{t / f:12.2f}{m / f:13.2f}")

    # What one worker delivers on a core of its own: 1 / (CPU time per sample), measured without workers (the
    # sample is made in this process), so other jobs on a shared machine barely change it. The wall-clock rate
    # of one worker is printed beside it; on an idle machine the two agree.
    per_worker: Dict[str, float] = {}
    wall_one: Dict[str, Optional[float]] = {}
    for v in VARIANTS:
        wall_one[v] = rates[v].get(1)
        if 0 in cpu_ms[v]:
            per_worker[v] = 1e3 / cpu_ms[v][0]
        else:
            w = min(rates[v])
            per_worker[v] = rates[v][w] / w
    result["per_worker_samples_per_s"] = per_worker
    print("\none core's rate (1000 / CPU ms per sample, workers 0) vs the wall-clock rate of 1 worker here:")
    for v in VARIANTS:
        cpu_text = f"{cpu_ms[v][0]:.1f} CPU ms/sample -> " if 0 in cpu_ms[v] else ""
        wall = f"{wall_one[v]:.1f}" if wall_one[v] is not None else "-"
        print(f"  {v:6}: {cpu_text}{per_worker[v]:.1f} samples/s per core; 1 worker here: {wall} samples/s")
    if steps:
        print(f"\nworkers per GPU to keep up (one core's rate x workers; assumes a free CPU core per worker and "
              f"linear scaling; the recipe has {args.recipe_workers}):")
        result["keep_up"] = {}
        for step, step_batch in steps:
            need = step_batch / (step / 1e3)
            print(f"  step {step:g} ms at batch {step_batch}: the GPU takes {need:.1f} samples/s")
            rows = {}
            for v in VARIANTS:
                n = workers_needed(per_worker[v], need)
                supply = per_worker[v] * args.recipe_workers
                frac = min(1.0, supply / need)
                rows[v] = {"per_worker": per_worker[v], "workers_needed": n, "recipe_supply": supply,
                           "recipe_fraction_of_step_speed": frac}
                print(f"    {v:6}: {per_worker[v]:6.1f} samples/s per worker -> {n} worker{'s' if n != 1 else ''}; "
                      f"{args.recipe_workers} workers give {supply:.0f} samples/s = {frac:.2f}x of the GPU's pace")
            result["keep_up"][f"{step:g}@{step_batch}"] = {"need": need, **rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")
    return result


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="folder with input/ and target/ pairs (default: gopro_mini)")
    cpus = os.cpu_count() or 1
    default_workers = ",".join(str(w) for w in (0, 1, 2, 4, 8) if w <= max(cpus, 1))
    p.add_argument("--workers", default=default_workers, help=f"DataLoader worker counts (default {default_workers})")
    p.add_argument("--batch", type=int, default=4, help="batch size (default 4, the NAFNet GoPro recipe per GPU)")
    p.add_argument("--gt-size", type=int, default=256, help="training crop (default 256)")
    p.add_argument("--batches", type=int, default=30, help="timed batches per configuration (default 30)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up batches (default 2 x workers + 2)")
    p.add_argument("--repeats", type=int, default=1, help="runs per configuration; the median is reported")
    p.add_argument("--decode-repeats", type=int, default=10, help="decodes per image for the decode timing")
    p.add_argument("--step-ms", default="",
                   help="GPU step times in ms, comma-separated, each optionally @ its batch size (default --batch); "
                        "e.g. 67,40,115@16")
    p.add_argument("--recipe-workers", type=int, default=8, help="workers per GPU of the recipe (default 8)")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    p.add_argument("--debug", action="store_true", help="tracebacks for user errors")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; a missing data folder is one error line and exit status 2."""
    args = build_parser().parse_args(argv)
    run_console(PROG, lambda: run(args), debug=args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
