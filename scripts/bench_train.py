"""Training throughput of the real trainer loop: fp32 eager vs speed options, with/without DDR, real vs in-memory data.

Every figure is the loop users run (:class:`ddr_restore.train.trainer.Trainer`: loader, host-to-device copy,
forward, losses, backward, gradient clipping, optimizer, scheduler, EMA when set, the loop's bookkeeping), timed
from the end of the warm-up iterations to the end of the last one (CUDA synchronised at both ends; the
checkpoint written after the last iteration is not timed). Configurations run one after another in this process.

    python scripts/bench_train.py                       # one configuration (the flags): NAFNet-w32, 256², batch 4
    python scripts/bench_train.py --compare             # fp32 eager as before issue 11 vs the fast combination
    python scripts/bench_train.py --compare --amp bf16 --compile --channels-last   # ... vs exactly these flags
    python scripts/bench_train.py --arch restormer --batch 8 --size 128 --compare
    python scripts/bench_train.py --ddr both            # PSNR only vs PSNR + DDR (DDR's share of the step)
    python scripts/bench_train.py --real-data ../shared/data/gopro_mini/train --workers 8   # real loader vs memory
    python scripts/bench_train.py --curves 300 --real-data DIR --out curves/   # loss curves fp32 vs fast (+ noise)
    python scripts/bench_train.py --small --size 32 --batch 2 --iters 3 --warmup 1 --compare   # CPU smoke run

Networks (``--arch``): ``nafnet`` = NAFNetLocal-w32 of the GoPro recipe (options/nafnet_psnr.yml, PSNR loss);
``nafnet-plain`` = the same as plain NAFNet (no TLC wrapper); ``restormer`` = the Restormer GoPro recipe
(options/restormer_psnr.yml, L1 loss) at a fixed crop size. ``--small`` shrinks either to a smoke-test width.
AdamW with the recipe's settings and gradient clipping 0.01, no EMA (as the recipes).

Speed flags (the ``train`` options they set): ``--amp bf16|fp16|none`` (train.amp), ``--compile [MODE]``
(train.compile), ``--channels-last`` (train.channels_last), ``--tf32/--no-tf32`` (train.tf32; default: the
trainer's, on), ``--fused/--no-fused`` (train.optim_g.fused; default: the trainer's, fused on CUDA). With
``--compare`` and no speed flag the fast side is bf16 + TF32 + fused + ``torch.compile`` on CUDA, bf16 on the CPU.
The baseline of ``--compare`` is what the trainer did before these options (``--baseline today``): fp32, no
autocast, unfused AdamW (foreach), torch's own TF32 defaults (cuDNN convolutions TF32, matmuls strict);
``--baseline strict`` turns TF32 off entirely (the "eager fp32 without TF32" of the issue's prototype).

Data (``--real-data DIR``): DIR holds paired folders ``input/`` and ``target/`` (e.g. ``../shared/data/gopro_mini/
train``, 1280x720 PNG pairs); the trainer's real loader (PairedImageDataset, random ``--size`` crops, flips,
rotations, ``--workers`` workers as the recipe's 8, pinned memory) is timed against in-memory tensors of the same
shape (a dataset that returns stored crops). The epoch is made long enough to cover every timed iteration.

DDR (``--ddr on``) adds the recipe's DDR term with a randomly initialised CLIP ViT-B/32 (same cost as the
pretrained one, no download).

Loss curves (``--curves N``): N iterations each of fp32 eager (seed S), fp32 eager (seed S+1) and the fast
configuration (seed S), with the loss read every iteration; writes ``curves.csv`` and ``curves.png`` to ``--out``
and prints the mean |fast - fp32| of the smoothed curves beside the run-to-run noise |fp32(S+1) - fp32(S)|.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import math
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch

from ddr_restore.registry import DATASET_REGISTRY
from ddr_restore.train import trainer as trainer_mod
from ddr_restore.train.trainer import Trainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------------------------------------ configurations
@dataclass(frozen=True)
class Config:
    """One measured configuration (the train options it sets, the loss terms and the data source)."""

    label: str
    amp: str = "none"  # none | bf16 | fp16
    compile: Optional[str] = None  # None = off, else a torch.compile mode
    channels_last: bool = False
    tf32: Optional[bool] = None  # None = the trainer's default (on)
    torch_tf32_defaults: bool = False  # leave torch's TF32 defaults (the trainer before train.tf32)
    fused: Optional[bool] = None  # None = the trainer's default (fused on CUDA)
    ddr: bool = False
    real_data: bool = False
    seed: int = 10

    def describe(self) -> str:
        tf32 = "torch defaults" if self.torch_tf32_defaults else {None: "on", True: "on", False: "off"}[self.tf32]
        fused = {None: "trainer default", True: "fused", False: "unfused"}[self.fused]
        return (f"amp={self.amp} compile={self.compile or 'off'} channels_last={self.channels_last} tf32={tf32} "
                f"adamw={fused} loss={'PSNR+DDR' if self.ddr else 'pixel only'} "
                f"data={'real loader' if self.real_data else 'in memory'}")


@DATASET_REGISTRY.register("BenchInMemoryPairs")
class BenchInMemoryPairs(torch.utils.data.Dataset):
    """``length`` stored (lq, gt) crops of ``size`` pixels: a loader with nothing to decode."""

    def __init__(self, phase: str = "train", length: int = 64, size: int = 256, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        n = min(length, 16)  # stored crops, reused: memory stays small for long runs
        self.gt = torch.rand(n, 3, size, size, generator=g)
        self.lq = (self.gt + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        j = i % len(self.gt)
        return {"lq": self.lq[j], "gt": self.gt[j]}


def _network(args: argparse.Namespace) -> Dict[str, Any]:
    s = args.size
    if args.arch in ("nafnet", "nafnet-plain"):
        net: Dict[str, Any] = {"type": "NAFNetLocal" if args.arch == "nafnet" else "NAFNet", "img_channel": 3,
                               "width": 32, "enc_blk_nums": [1, 1, 1, 28], "middle_blk_num": 1,
                               "dec_blk_nums": [1, 1, 1, 1]}
        if args.small:
            net.update(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
        if args.arch == "nafnet":
            net["train_size"] = [1, 3, s, s]
        return net
    net = {"type": "Restormer", "inp_channels": 3, "out_channels": 3, "dim": 48, "num_blocks": [4, 6, 6, 8],
           "num_refinement_blocks": 4, "heads": [1, 2, 4, 8], "ffn_expansion_factor": 2.66, "bias": False,
           "LayerNorm_type": "WithBias", "dual_pixel_task": False}
    if args.small:
        net.update(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    return net


def _options(args: argparse.Namespace, cfg: Config, root: Path, total_iter: int) -> Dict[str, Any]:
    restormer = args.arch == "restormer"
    optim: Dict[str, Any] = ({"type": "AdamW", "lr": 3e-4, "weight_decay": 1e-4, "betas": [0.9, 0.999]} if restormer
                             else {"type": "AdamW", "lr": 1e-3, "weight_decay": 1e-3, "betas": [0.9, 0.9]})
    if cfg.fused is not None:
        optim["fused"] = cfg.fused
    train: Dict[str, Any] = {
        "optim_g": optim,
        "scheduler": {"type": "TrueCosineAnnealingLR", "T_max": 200000, "eta_min": 1e-7},
        "total_iter": total_iter,
        "use_grad_clip": True,
        "grad_clip_norm": 0.01,
        "pixel_opt": {"type": "L1Loss"} if restormer else {"type": "PSNRLoss"},
        "amp": False if cfg.amp == "none" else cfg.amp,
        "channels_last": cfg.channels_last,
        "compile": cfg.compile or False,
    }
    if cfg.tf32 is not None:
        train["tf32"] = cfg.tf32
    if cfg.torch_tf32_defaults:
        train["tf32"] = False  # mapped to torch's defaults by _torch_tf32_defaults
    if cfg.ddr:
        train["ddr_opt"] = {"type": "DDRLoss", "loss_weight": 1.0, "backbone": "ViT-B-32", "pretrained": "none",
                            "degradations": ["blur", "color", "noise", "exposure"], "check_range": False}
    samples = (total_iter + 2) * args.batch
    if cfg.real_data:
        folder = Path(args.real_data)
        n_files = len([p for p in (folder / "input").iterdir() if p.is_file()])
        data = {"type": "PairedImageDataset", "dataroot_lq": str(folder / "input"),
                "dataroot_gt": str(folder / "target"), "gt_size": args.size, "use_hflip": True, "use_rot": True,
                "num_worker_per_gpu": args.workers, "persistent_workers": args.workers > 0,
                "dataset_enlarge_ratio": max(1, math.ceil(samples / max(n_files, 1)))}
    else:
        # the images depend on --seed only: a curve with another training seed sees the same data
        data = {"type": "BenchInMemoryPairs", "length": samples, "size": args.size, "seed": args.seed}
    data.update(batch_size_per_gpu=args.batch, pin_memory=True)
    return {
        "name": "bench",
        "num_gpu": 0 if args.device == "cpu" else "auto",
        "manual_seed": cfg.seed,
        "datasets": {"train": data},
        "network_g": _network(args),
        "path": {"experiments_root": str(root)},
        "train": train,
        # logs (a host sync) only at the last iteration, after the timed window; no intermediate checkpoints
        "logger": {"print_freq": total_iter, "save_checkpoint_freq": 0, "use_tb_logger": False},
    }


# ------------------------------------------------------------------------------------------------------ running
class _TimedTrainer(Trainer):
    """The trainer with two timestamps: after iteration ``warmup`` and after the last one (device synchronised)."""

    def __init__(self, opt: Dict[str, Any], warmup: int, **kwargs: Any) -> None:
        super().__init__(opt, **kwargs)
        self.bench_warmup = warmup
        self.marks: Dict[int, float] = {}
        self.peak_mib: Optional[float] = None

    def _sync_device(self) -> None:
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize(self.dist.device)

    def _train_step(self, iteration: int) -> None:
        super()._train_step(iteration)
        if iteration == self.bench_warmup:
            self._sync_device()
            if self.dist.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.dist.device)
            self.marks["start"] = time.perf_counter()
        if iteration == self._total_iter:
            self._sync_device()
            self.marks["end"] = time.perf_counter()
            if self.dist.device.type == "cuda":
                self.peak_mib = torch.cuda.max_memory_allocated(self.dist.device) / 2**20


@contextlib.contextmanager
def _torch_tf32_defaults(on: bool) -> Iterator[None]:
    """Make the trainer leave torch's TF32 defaults (cuDNN TF32 on, matmul strict), as it did before train.tf32.

    The trainer switches both TF32 flags to ``train.tf32`` on CUDA; for the "today" baseline its switch is replaced,
    for this one run, by one that sets torch's defaults instead (the restore at the end of the run passes through).
    """
    if not on:
        yield
        return
    real = trainer_mod._set_tf32
    calls = []

    def torch_defaults(matmul: bool, cudnn: bool) -> None:
        calls.append((matmul, cudnn))
        real(*((False, True) if len(calls) == 1 else (matmul, cudnn)))

    trainer_mod._set_tf32 = torch_defaults
    try:
        yield
    finally:
        trainer_mod._set_tf32 = real


def run_config(args: argparse.Namespace, cfg: Config, iters: Optional[int] = None,
               callback: Any = None) -> Dict[str, Any]:
    """Train ``warmup + iters`` iterations of ``cfg`` in a temporary folder; returns it/s and the last losses."""
    iters = args.iters if iters is None else iters
    total = args.warmup + iters
    captured = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        trainer = _TimedTrainer(_options(args, cfg, Path(tmp), total), warmup=args.warmup,
                                iteration_callback=callback)
        torch._dynamo.reset()  # every configuration compiles afresh (no graphs shared between configurations)
        quiet = contextlib.nullcontext() if args.verbose else contextlib.redirect_stderr(captured)
        t0 = time.perf_counter()
        try:
            # the trainer touches the TF32 switches on CUDA only
            with quiet, _torch_tf32_defaults(cfg.torch_tf32_defaults and args.device != "cpu"):
                trainer.run()
        except BaseException:
            sys.stderr.write(captured.getvalue()[-6000:])
            raise
    seconds = trainer.marks["end"] - trainer.marks["start"] if args.warmup else float("nan")
    return {"cfg": cfg, "it_per_s": iters / seconds if seconds > 0 else float("nan"), "s_per_it": seconds / iters,
            "warmup_s": (trainer.marks.get("start", t0) - t0), "peak_mib": trainer.peak_mib,
            "logs": dict(getattr(trainer, "_logs", {}) or {})}


def _header(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"bench_train  {datetime.datetime.now().isoformat(timespec='seconds')}  device: {name}  "
          f"torch {torch.__version__}  python {platform.python_version()}")
    net = _network(args)
    size = f"{args.size}x{args.size}"
    width = f", width {net['width']}" if "width" in net else f", dim {net['dim']}" if "dim" in net else ""
    timing = (f"{args.curves} iterations per curve" if args.curves
              else f"{args.iters} timed iterations after {args.warmup} warm-up")
    print(f"network {net['type']} ({'small' if args.small else 'recipe'} config{width}), crops {size}, "
          f"batch {args.batch}, {timing}")
    if device.type == "cpu":
        print("(on the CPU: tf32 and fused have no effect, and bf16 autocast can be slower than fp32: measure)")


def _print(result: Dict[str, Any], baseline: Optional[Dict[str, Any]] = None) -> None:
    cfg: Config = result["cfg"]
    mem = f"  peak {result['peak_mib']:8.1f} MiB" if result["peak_mib"] is not None else ""
    ratio = f"  x{result['it_per_s'] / baseline['it_per_s']:.2f}" if baseline else ""
    loss = result["logs"].get("l_total")
    loss_txt = f"  l_total@last {loss:.4f}" if loss is not None else ""
    print(f"  {cfg.label:28s} {result['it_per_s']:8.3f} it/s  {1000 * result['s_per_it']:9.1f} ms/it{ratio}{mem}"
          f"{loss_txt}  (warm-up {result['warmup_s']:.1f} s)")
    print(f"  {'':28s} {cfg.describe()}")


# ------------------------------------------------------------------------------------------------------- modes
def _fast_config(args: argparse.Namespace, base: Config) -> Config:
    cuda = args.device != "cpu"
    if not _speed_flags_given(args):  # the default fast combination
        return replace(base, label="fast", amp="bf16", compile="default" if cuda else None, tf32=True if cuda else None)
    return replace(base, label="fast", amp=args.amp or "none", compile=args.compile, channels_last=args.channels_last,
                   tf32=args.tf32, fused=args.fused)


def _baseline(args: argparse.Namespace, base: Config) -> Config:
    strict = args.baseline == "strict"
    return replace(base, label=f"fp32 eager ({args.baseline})", amp="none", compile=None, channels_last=False,
                   tf32=False if strict else None, torch_tf32_defaults=not strict, fused=False)


def _smooth(values: List[float], window: int) -> List[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def curves(args: argparse.Namespace, base: Config) -> None:
    """Loss curves of fp32 eager (two seeds) and the fast configuration; CSV + PNG + a noise comparison."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {"fp32_seedA": _baseline(args, base), "fp32_seedB": replace(_baseline(args, base), seed=base.seed + 1),
            "fast_seedA": _fast_config(args, base)}
    series: Dict[str, List[float]] = {}
    for key, cfg in runs.items():
        values: Dict[int, float] = {}
        run_config(args, cfg, iters=args.curves - args.warmup,
                   callback=lambda it, logs, values=values: values.__setitem__(it, logs["l_total"]))
        series[key] = [values[i] for i in sorted(values)]
        print(f"  {key}: {cfg.describe()}")
    path = out / "curves.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["iteration", *series])
        for i, row in enumerate(zip(*series.values()), start=1):
            writer.writerow([i, *row])
    window = max(1, args.curves // 15)
    sm = {k: _smooth(v, window) for k, v in series.items()}
    half = len(sm["fp32_seedA"]) // 2
    count = max(1, len(sm["fp32_seedA"]) - half)
    gap = sum(abs(a - b) for a, b in zip(sm["fast_seedA"][half:], sm["fp32_seedA"][half:])) / count
    noise = sum(abs(a - b) for a, b in zip(sm["fp32_seedB"][half:], sm["fp32_seedA"][half:])) / count
    print(f"  loss curves ({args.curves} iterations, moving average of {window}), second half: mean |fast - fp32| "
          f"{gap:.4g}, run-to-run noise mean |fp32(seed B) - fp32(seed A)| {noise:.4g}  -> {path}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (curves.png skipped: matplotlib is not installed)")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, values in sm.items():
        ax.plot(range(1, len(values) + 1), values, label=key)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"l_total (moving average of {window})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    print(f"  -> {out / 'curves.png'}")


def main(argv: Optional[List[str]] = None) -> None:
    """Parse the flags, run the configurations and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=("nafnet", "nafnet-plain", "restormer"), default="nafnet")
    p.add_argument("--small", action="store_true", help="a smoke-test width of the network (CPU runs)")
    p.add_argument("--size", type=int, default=256, help="training crop side (gt_size)")
    p.add_argument("--batch", type=int, default=4, help="batch_size_per_gpu")
    p.add_argument("--iters", type=int, default=20, help="timed iterations")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (compiling happens here)")
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default=None)
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--ddr", nargs="?", const="on", default="off", choices=("off", "on", "both"),
                   help="add the DDR term (on), or run without and with it (both)")
    p.add_argument("--compare", action="store_true", help="fp32 eager baseline vs the fast configuration")
    p.add_argument("--baseline", choices=("today", "strict"), default="today")
    p.add_argument("--real-data", metavar="DIR", help="paired folders DIR/input, DIR/target: real loader vs memory")
    p.add_argument("--workers", type=int, default=8, help="loader workers for --real-data (the recipes' 8)")
    p.add_argument("--curves", type=int, default=0, metavar="N", help="loss curves of N iterations (see above)")
    p.add_argument("--out", default="bench_curves", help="folder for --curves outputs")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--cpu", dest="device", action="store_const", const="cpu", help="same as --device cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--verbose", action="store_true", help="show the trainer's log")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the first iteration compiles and allocates)")
    if args.real_data and not (Path(args.real_data) / "input").is_dir():
        p.error(f"--real-data {args.real_data}: expected the paired folders {args.real_data}/input and /target")
    _header(args)
    base = Config(label="configuration", ddr=args.ddr == "on", seed=args.seed)
    if args.curves:
        if args.real_data:
            base = replace(base, real_data=True)
        curves(args, base)
        return
    if args.compare:
        fast = _fast_config(args, base)
        if args.real_data:
            fast = replace(fast, real_data=True)
        baseline = run_config(args, _baseline(args, replace(base, real_data=fast.real_data)))
        _print(baseline)
        _print(run_config(args, fast), baseline)
    elif args.real_data:
        single = replace(_fast_config(args, base), label="real loader", real_data=True)
        memory = run_config(args, replace(single, label="in-memory tensors", real_data=False))
        real = run_config(args, single)
        _print(memory)
        _print(real, memory)
        print(f"  real loader / in memory: {real['it_per_s'] / memory['it_per_s']:.3f} "
              f"({args.workers} workers; target >= 0.95)")
    elif args.ddr == "both":
        cfg = replace(_fast_config(args, base), label="pixel loss only") if _speed_flags_given(args) else \
            replace(base, label="pixel loss only")
        without = run_config(args, cfg)
        with_ddr = run_config(args, replace(cfg, label="pixel + DDR (ViT-B/32)", ddr=True))
        _print(without)
        _print(with_ddr, without)
        share = 1.0 - without["s_per_it"] / with_ddr["s_per_it"]
        extra_ms = 1000 * (with_ddr["s_per_it"] - without["s_per_it"])
        print(f"  DDR's share of the step: {100 * share:.1f} % ({extra_ms:.1f} ms per iteration)")
    else:
        cfg = replace(_fast_config(args, base), label="configuration") if _speed_flags_given(args) else base
        _print(run_config(args, cfg))
    if args.device == "cpu":
        print(f"  process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def _speed_flags_given(args: argparse.Namespace) -> bool:
    return any(v is not None for v in (args.amp, args.compile, args.tf32, args.fused)) or args.channels_last


if __name__ == "__main__":
    main()
