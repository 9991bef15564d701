"""Training throughput and peak memory of NAFNet-w32 (GoPro config) with and without the DDR term.

Each configuration runs in its own subprocess so peak-memory figures do not mix:
  * CUDA: ``torch.cuda.max_memory_allocated`` (reset before the timed iterations);
  * CPU: growth of the process's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) from just before the
    model is built to the end (tracemalloc cannot see torch's allocations).

    python scripts/bench_train.py                      # 256x256, batch 4, CUDA if available
    python scripts/bench_train.py --iters 3 --warmup 1 # fewer iterations (CPU)

The DDR term uses a randomly initialised CLIP ViT-B/32 (same cost as the pretrained one, no download).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Dict


def _worker(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    from ddr_restore.archs import NAFNetLocal
    from ddr_restore.losses.ddr_loss import DDRLoss
    from ddr_restore.losses.pixel import PSNRLoss

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    torch.manual_seed(0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = args.size
    net = NAFNetLocal(width=32, enc_blk_nums=(1, 1, 1, 28), middle_blk_num=1, dec_blk_nums=(1, 1, 1, 1),
                      train_size=(1, 3, s, s)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3, betas=(0.9, 0.9))
    cri_pix = PSNRLoss().to(device)
    cri_ddr = DDRLoss(loss_weight=1.0, pretrained="none", check_range=False).to(device).eval() if args.ddr else None
    lq = torch.rand(args.batch, 3, s, s, device=device)
    gt = torch.rand(args.batch, 3, s, s, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = net(lq)
        loss = cri_pix(out, gt)
        if cri_ddr is not None:
            loss = loss + cri_ddr(out)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.01)
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync()
    dt = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"ddr": bool(args.ddr), "device": str(device), "threads": torch.get_num_threads(),
              "it_per_s": args.iters / dt, "s_per_it": dt / args.iters}
    if device.type == "cuda":
        result["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["mem_kind"] = "cuda max_memory_allocated"
    else:
        result["peak_mem_mib"] = (rss1 - rss0) / 1024  # ru_maxrss is in KiB on Linux
        result["mem_kind"] = "CPU peak-RSS growth"
    return result


def main(argv=None) -> None:
    """Run both configurations in subprocesses and print the figures and their ratio."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cpu", action="store_true", help="force CPU")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ddr", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(_worker(args)), flush=True)
        return
    results = []
    for ddr in (0, 1):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"--ddr={ddr}", f"--size={args.size}",
               f"--batch={args.batch}", f"--iters={args.iters}", f"--warmup={args.warmup}"] + (["--cpu"] if args.cpu else [])
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"benchmark worker failed (ddr={ddr}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        results.append(json.loads(line[7:]))
    print(f"NAFNet-w32 GoPro config (enc 1,1,1,28), {args.size}x{args.size}, batch {args.batch}, "
          f"{args.iters} timed iterations after {args.warmup} warm-up, device {results[0]['device']} "
          f"({results[0]['threads']} threads)")
    for r in results:
        name = "PSNR + DDR (ViT-B/32)" if r["ddr"] else "PSNR only"
        print(f"  {name:24s} {r['it_per_s']:8.3f} it/s  ({r['s_per_it']:.3f} s/it)   peak memory {r['peak_mem_mib']:9.1f} MiB"
              f"  [{r['mem_kind']}]")
    base, ddr = results
    print(f"  ratio DDR/PSNR-only: time per iteration x{ddr['s_per_it'] / base['s_per_it']:.2f}, "
          f"peak memory x{ddr['peak_mem_mib'] / max(base['peak_mem_mib'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
