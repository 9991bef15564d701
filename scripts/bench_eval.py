"""Benchmark evaluation: full-resolution inference fp32 vs autocast, and ddr-eval end to end with/without read-ahead.

Prints the device name, torch version and date, then, for each network of the recipes (``options/nafnet_psnr.yml``:
NAFNetLocal-w32 with TLC; ``options/restormer_psnr.yml``: Restormer; random weights) at ``--size`` (default GoPro
1280x720):

* seconds per image (median of ``--repeats`` after ``--warmup`` full-size runs, CUDA synchronised) in fp32 and with
  ``--amp`` (default bf16; on CUDA the path ``ddr-eval --amp`` takes), the speed ratio fp32/amp, and the PSNR of the
  amp output against the fp32 output, both quantised to 8 bits as evaluation does (issue 11 target: Restormer at
  1280x720 >= 2x with >= 45 dB). On the CPU the amp row wraps ``restore`` in ``torch.autocast("cpu")`` to show why
  ``ddr-eval`` refuses ``--amp`` there; ``--channels-last`` adds a row (network and input channels-last);
* ``--tiles``/``--overlaps``: tiled vs untiled agreement (fp32), as before;
* ``--data DIR`` (default ``../shared/data/gopro_mini`` when present; ``--data none`` skips it): the wall time of
  :func:`ddr_restore.eval.evaluate` on the pairs of DIR (``DIR/input`` + ``DIR/target``, or the first sub-folder
  holding both) with ``--e2e-arch``, metrics ``--e2e-metrics`` and the outputs written (``--no-save-images`` not),
  with ``workers=0`` (read, run, score, write in turn) and ``workers=--workers`` (next pairs read and PNGs written
  on threads); their ratio is the overlap gain.

Examples::

    python scripts/bench_eval.py                                   # GPU: everything at 1280x720
    python scripts/bench_eval.py --arch restormer --amp bf16 fp16 --repeats 10 --json bench_eval.json
    python scripts/bench_eval.py --device cpu --size 256x144 --repeats 2 --e2e-arch identity --max-images 6  # CPU

NAFNet's skip-init scales (beta/gamma, zero at init, which would make every block an identity) are drawn from
N(0, 0.1) so that the blocks, and TLC's local pooling, do act. The machine may be shared: the figures are one run;
ratios within a run are what count.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from ddr_restore.eval.inference import load_restoration_model, restore

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"nafnet": ROOT / "options" / "nafnet_psnr.yml", "restormer": ROOT / "options" / "restormer_psnr.yml"}
#: a small NAFNetLocal for CPU smoke runs of the end-to-end part (decoding dominates; the overlap shows)
SMALL_NAFNET = {"type": "NAFNet", "width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "gopro_mini"


def _device_line(dev: torch.device) -> str:
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return (f"{torch.cuda.get_device_name(dev)} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
                f"cuDNN {torch.backends.cudnn.version()}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32} / "
                f"conv {torch.backends.cudnn.allow_tf32}")
    model = platform.processor() or platform.machine()
    try:  # Linux: the marketing name (platform.processor() is often just the architecture)
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"CPU {model}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores"


def _input_image(path: Optional[str], width: int, height: int) -> torch.Tensor:
    import cv2

    if path:
        from ddr_restore.imageio import read_image

        img = read_image(path)
    else:
        from skimage import data as skdata

        img = skdata.coffee().astype(np.float32) / 255.0  # a real photo, resized to the test size
    if img.shape[:2] != (height, width):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()[None]


class _Identity(torch.nn.Module):
    """A network that costs nothing: the end-to-end time is then reading, scoring and writing alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _build(arch: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "identity":
        return _Identity().to(device)
    if arch == "small":
        net = load_restoration_model(network_opt=SMALL_NAFNET, tlc=True, device=device)
    else:
        net = load_restoration_model(RECIPES[arch], tlc=True, device=device)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".beta") or name.endswith(".gamma"):
                p.normal_(0.0, 0.1)
    return net


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn: Callable[[], torch.Tensor], dev: torch.device, warmup: int, repeats: int):
    """``(output, [seconds of each timed run])`` after ``warmup`` untimed runs."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(max(1, repeats)):
        _sync(dev)
        t0 = time.perf_counter()
        out = fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return out, times


def _q8(t: torch.Tensor) -> torch.Tensor:
    return (t.float().clamp(0, 1) * 255).round().double()


def psnr8(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) between two outputs quantised to 8 bits as evaluation does; inf when identical."""
    mse = float(((_q8(a) - _q8(b)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _variant_fn(net: torch.nn.Module, x: torch.Tensor, dev: torch.device, amp: Optional[str],
                channels_last: bool) -> Callable[[], torch.Tensor]:
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        net = net.to(memory_format=torch.contiguous_format)
    if amp is None or dev.type == "cuda":
        return lambda: restore(net, x, amp=amp)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def cpu_autocast() -> torch.Tensor:  # what ddr-eval refuses on CPU, measured to say why
        with torch.autocast("cpu", dtype=dtype):
            return restore(net, x)
    return cpu_autocast


def bench_inference(args: argparse.Namespace, dev: torch.device, x: torch.Tensor) -> List[Dict[str, Any]]:
    """fp32 vs each amp (and channels-last) per network; prints one line per variant."""
    runs = []
    for arch in args.arch:
        net = _build(arch, dev)
        variants = [("fp32", None, False)] + [(amp, amp, False) for amp in args.amp]
        if args.channels_last:
            variants += [(f"{amp or 'fp32'}+channels-last", amp, True) for amp in [None, *args.amp]]
        entry: Dict[str, Any] = {"arch": arch, "network_g": net.ddr_network_opt, "variants": [], "tiled": []}
        ref = None
        base = None
        for label, amp, cl in variants:
            fn = _variant_fn(net, x, dev, amp, cl)
            try:
                out, times = _timed(fn, dev, args.warmup, args.repeats)
            except RuntimeError as err:  # e.g. out of memory: report and go on with the next variant
                print(f"{arch:9s} {label:22s} failed: {type(err).__name__}: {str(err).splitlines()[0]}", flush=True)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            sec = statistics.median(times)
            rec: Dict[str, Any] = {"label": label, "amp": amp or "none", "channels_last": cl,
                                   "seconds_median": sec, "seconds": times,
                                   "output_dtype": str(out.dtype)}
            if label == "fp32":
                ref, base = out, sec
                text = f"{sec:8.4f} s/image"
            elif ref is None:
                text = f"{sec:8.4f} s/image (no fp32 reference)"
            else:
                rec["speedup_vs_fp32"] = base / sec
                rec["psnr8_vs_fp32"] = psnr8(out, ref)
                rec["max_abs_diff_vs_fp32"] = float((out.float() - ref.float()).abs().max())
                text = (f"{sec:8.4f} s/image  x{rec['speedup_vs_fp32']:.2f} vs fp32  8-bit PSNR vs fp32 "
                        f"{rec['psnr8_vs_fp32']:.2f} dB  max|diff| {rec['max_abs_diff_vs_fp32']:.2e}")
            if dev.type == "cpu" and amp is not None:
                text += "  (CPU autocast: refused by ddr-eval)"
            print(f"{arch:9s} {label:22s} {text}  (runs {', '.join(f'{t:.4f}' for t in times)})", flush=True)
            entry["variants"].append(rec)
        net.to(memory_format=torch.contiguous_format)
        for tile in args.tiles if ref is not None else []:
            for overlap in args.overlaps:
                tiled, times = _timed(lambda: restore(net, x, tile=tile, tile_overlap=overlap), dev, 0, 1)
                sec = times[0]
                diff = (tiled - ref).abs()
                rec = {"tile": tile, "overlap": overlap, "seconds": sec, "max_abs_diff": float(diff.max()),
                       "mean_abs_diff": float(diff.mean()),
                       "max_abs_diff_uint8": float((_q8(tiled) - _q8(ref)).abs().max()),
                       "psnr_tiled_vs_untiled_uint8": psnr8(tiled, ref)}
                entry["tiled"].append(rec)
                print(f"{arch:9s} tile {tile} overlap {overlap}: {sec:.3f} s, max|diff| {rec['max_abs_diff']:.3e}, "
                      f"max uint8 diff {rec['max_abs_diff_uint8']:.0f}, PSNR(tiled vs untiled, 8-bit) "
                      f"{rec['psnr_tiled_vs_untiled_uint8']:.2f} dB", flush=True)
        runs.append(entry)
        net = ref = out = None  # free the memory before the next network
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return runs


def _pair_dirs(data: Path) -> Optional[Path]:
    """``data`` or the first sub-folder (sorted, two levels) that holds ``input/`` and ``target/``."""
    for cand in [data, *sorted(p for p in data.glob("*") if p.is_dir()),
                 *sorted(p for p in data.glob("*/*") if p.is_dir())]:
        if (cand / "input").is_dir() and (cand / "target").is_dir():
            return cand
    return None


def bench_end_to_end(args: argparse.Namespace, dev: torch.device) -> Optional[Dict[str, Any]]:
    """evaluate() on the folder with workers 0 and ``--workers``; prints one line each and the gain."""
    from ddr_restore.eval import evaluate

    if args.data in (None, "none"):
        return None
    data = Path(args.data)
    folder = _pair_dirs(data) if data.is_dir() else None
    if folder is None:
        print(f"end-to-end: skipped ({data} holds no input/ + target/ folders)", flush=True)
        return None
    net = _build(args.e2e_arch, dev)
    amp = args.e2e_amp if dev.type == "cuda" else None
    result: Dict[str, Any] = {"data": str(folder), "arch": args.e2e_arch, "metrics": args.e2e_metrics,
                              "save_images": args.save_images, "amp": amp or "none", "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        # warm-up on one pair (allocator, kernels, metric set-up), not timed
        evaluate("folder", input_dir=folder / "input", target_dir=folder / "target", net=net, device=dev,
                 metrics=args.e2e_metrics, out_dir=Path(tmp) / "warm", progress=False, max_images=1, workers=0,
                 amp=amp)
        for workers in (0, args.workers, 0, args.workers)[: 4 if args.e2e_twice else 2]:
            t0 = time.perf_counter()
            summary = evaluate("folder", input_dir=folder / "input", target_dir=folder / "target", net=net,
                               device=dev, metrics=args.e2e_metrics, out_dir=Path(tmp) / f"w{workers}",
                               overwrite=True, save_images=args.save_images, progress=False,
                               max_images=args.max_images, workers=workers, amp=amp)
            wall = time.perf_counter() - t0
            n = summary["num_images"]
            rec = {"workers": workers, "images": n, "wall_seconds": wall, "seconds_per_image": wall / max(1, n),
                   "inference_seconds_per_image": summary["seconds_per_image"]["inference"], "mean": summary["mean"]}
            result["runs"].append(rec)
            print(f"end-to-end evaluate() {n} images, {args.e2e_arch}, amp {amp or 'none'}, workers {workers}: "
                  f"{wall:.2f} s ({rec['seconds_per_image']:.3f} s/image, of which network "
                  f"{rec['inference_seconds_per_image']:.3f})", flush=True)
    by = {}
    for rec in result["runs"]:
        by.setdefault(rec["workers"], []).append(rec["seconds_per_image"])
    seq, par = min(by[0]), min(by[args.workers])
    result["overlap_gain"] = seq / par
    same = all(r["mean"] == result["runs"][0]["mean"] for r in result["runs"])
    print(f"end-to-end: workers {args.workers} vs 0: x{seq / par:.2f} ({seq:.3f} -> {par:.3f} s/image); "
          f"metric means identical: {same}", flush=True)
    result["identical_means"] = same
    return result


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the benchmark and print one line per measurement; returns the results dict."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="*", choices=["nafnet", "restormer"], default=["nafnet", "restormer"],
                   help="recipe networks for the inference part (none: skip it)")
    p.add_argument("--size", default="1280x720", help="WxH of the test image (default GoPro 1280x720)")
    p.add_argument("--image", default=None, help="image file to use (default: skimage 'coffee' resized)")
    p.add_argument("--amp", nargs="*", choices=["bf16", "fp16"], default=["bf16"],
                   help="autocast dtypes compared with fp32 (default bf16)")
    p.add_argument("--channels-last", action="store_true", help="also time each variant channels-last")
    p.add_argument("--tiles", nargs="*", type=int, default=[], help="tile sides to compare with untiled (fp32)")
    p.add_argument("--overlaps", nargs="*", type=int, default=[32, 64])
    p.add_argument("--warmup", type=int, default=2, help="untimed full-size runs per variant (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant; the median is reported")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None,
                   help="paired folder for the end-to-end evaluate() timing ('none' skips; default gopro_mini)")
    p.add_argument("--e2e-arch", choices=["nafnet", "restormer", "small", "identity"], default="nafnet",
                   help="network of the end-to-end part (small: NAFNetLocal width 8; identity: no network, the "
                        "I/O and metrics alone)")
    p.add_argument("--e2e-amp", choices=["bf16", "fp16"], default=None, help="autocast in the end-to-end run (CUDA)")
    p.add_argument("--e2e-metrics", nargs="+", default=["psnr", "ssim"])
    p.add_argument("--e2e-twice", action="store_true", help="run workers 0 / N twice each (best of two)")
    p.add_argument("--workers", type=int, default=None, help="read-ahead threads (default: ddr-eval's default)")
    p.add_argument("--max-images", type=int, default=None, help="end-to-end: first N pairs only")
    p.add_argument("--no-save-images", dest="save_images", action="store_false",
                   help="end-to-end: do not write the restored PNGs (default: write them)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    from ddr_restore.eval.evaluate import _resolve_device
    from ddr_restore.eval.prefetch import default_workers

    args.workers = default_workers() if args.workers is None else args.workers
    if args.workers < 1:
        p.error("--workers must be >= 1 (it is compared with 0)")
    dev = _resolve_device(args.device)
    width, height = (int(v) for v in args.size.lower().split("x"))
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    results: Dict[str, Any] = {"date": stamp, "size": [width, height], "device": str(dev),
                               "device_name": _device_line(dev), "torch": torch.__version__,
                               "python": platform.python_version(), "threads": torch.get_num_threads(),
                               "argv": list(argv if argv is not None else sys.argv[1:])}
    print(f"bench_eval  {stamp}  device {dev}: {results['device_name']}  torch {torch.__version__}  "
          f"python {platform.python_version()}", flush=True)
    print(f"inference at {width}x{height}, random weights, median of {args.repeats} after {args.warmup} warm-up; "
          f"8-bit PSNR = outputs clamped, x255, rounded", flush=True)
    if args.arch:
        x = _input_image(args.image, width, height).to(dev)
        results["inference"] = bench_inference(args, dev, x)
    results["end_to_end"] = bench_end_to_end(args, dev)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
