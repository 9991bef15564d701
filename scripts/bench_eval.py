"""Benchmark full-resolution inference (GoPro 1280x720) and tiled-vs-untiled agreement, random weights.

Example (CPU)::

    python scripts/bench_eval.py --arch nafnet restormer --tiles 256 384 --overlaps 32 64 --json bench_eval.json

NAFNet is the GoPro width-32 config built as NAFNetLocal (TLC, train_size 256); Restormer is the default
motion-deblurring config. Weights are random: NAFNet's skip-init scales (beta/gamma, zero at init, which would make
every block an identity) are drawn from N(0, 0.1) so that the blocks, and TLC's local pooling, do act.
With TLC, a tile sees local statistics that differ from the whole image's near its edges, so tiled and untiled
outputs are not identical; the script reports the max and mean absolute difference (on the [0,1] scale).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ddr_restore.eval.inference import load_restoration_model, restore

NAFNET_GOPRO_W32 = {"type": "NAFNet", "width": 32, "enc_blk_nums": [1, 1, 1, 28], "middle_blk_num": 1,
                    "dec_blk_nums": [1, 1, 1, 1]}
RESTORMER_DEFAULT = {"type": "Restormer"}


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


def _build(arch: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "nafnet":
        net = load_restoration_model(network_opt=NAFNET_GOPRO_W32, tlc=True, device=device)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.endswith(".beta") or name.endswith(".gamma"):
                    p.normal_(0.0, 0.1)
        return net
    return load_restoration_model(network_opt=RESTORMER_DEFAULT, device=device)


def _timed(net: torch.nn.Module, x: torch.Tensor, device: str, **kw: Any):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    y = restore(net, x, **kw)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return y, time.perf_counter() - t0


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the benchmark and print one line per measurement; returns the results dict."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", choices=["nafnet", "restormer"], default=["nafnet", "restormer"])
    p.add_argument("--size", default="1280x720", help="WxH of the test image (default GoPro 1280x720)")
    p.add_argument("--image", default=None, help="image file to use (default: skimage 'coffee' resized)")
    p.add_argument("--tiles", nargs="*", type=int, default=[256, 384])
    p.add_argument("--overlaps", nargs="*", type=int, default=[32, 64])
    p.add_argument("--repeats", type=int, default=1, help="timed untiled runs (after one warm-up at 256x256)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default=None, choices=[None, "bf16", "fp16"])
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    x = _input_image(args.image, width, height).to(args.device)
    results: Dict[str, Any] = {"size": [width, height], "device": args.device, "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "python": platform.python_version(),
                               "cpu": platform.processor() or platform.machine(), "runs": []}
    print(f"# {width}x{height}, device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads",
          flush=True)
    for arch in args.arch:
        net = _build(arch, args.device)
        restore(net, x[..., :256, :256])  # warm-up (allocator, kernels)
        times = []
        for _ in range(max(1, args.repeats)):
            full, sec = _timed(net, x, args.device, amp=args.amp)
            times.append(sec)
        entry = {"arch": arch, "network_g": net.ddr_network_opt, "untiled_seconds": times,
                 "output_std": float(full.std()), "output_min": float(full.min()), "output_max": float(full.max()),
                 "tiled": []}
        print(f"{arch}: untiled {np.mean(times):.2f} s/image (runs {', '.join(f'{t:.2f}' for t in times)}); "
              f"output range [{entry['output_min']:.3f}, {entry['output_max']:.3f}]", flush=True)
        for tile in args.tiles:
            for overlap in args.overlaps:
                tiled, sec = _timed(net, x, args.device, tile=tile, tile_overlap=overlap, amp=args.amp)
                diff = (tiled - full).abs()
                q = lambda t: (t.clamp(0, 1) * 255).round()  # noqa: E731  (8-bit outputs as evaluated)
                d8 = (q(tiled) - q(full)).abs()
                mse8 = max(1e-12, float((d8 ** 2).mean()))
                rec = {"tile": tile, "overlap": overlap, "seconds": sec, "max_abs_diff": float(diff.max()),
                       "mean_abs_diff": float(diff.mean()), "max_abs_diff_uint8": float(d8.max()),
                       "psnr_tiled_vs_untiled_uint8": float(10 * np.log10(255.0 ** 2 / mse8))}
                entry["tiled"].append(rec)
                print(f"{arch}: tile {tile} overlap {overlap}: {sec:.2f} s, max|diff| {rec['max_abs_diff']:.3e}, "
                      f"mean|diff| {rec['mean_abs_diff']:.3e}, max uint8 diff {rec['max_abs_diff_uint8']:.0f}, "
                      f"PSNR(tiled vs untiled, 8-bit) {rec['psnr_tiled_vs_untiled_uint8']:.2f} dB", flush=True)
        results["runs"].append(entry)
        del net
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
