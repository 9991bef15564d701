"""Reproduce (or rule out) the ``torch.compile(NAFNetLocal)`` backward failure of issue 11.

The report (H200, torch 2.11, NAFNetLocal-w32 GoPro config, channels-last, bf16 autocast)::

    RuntimeError: Function CompiledFunctionBackward returned an invalid gradient at index 13 -
    got [32] but expected shape compatible with [1, 32, 1, 1]

Diagnosis (see the report of the session that wrote this script): not the model code. Inductor's *mix-order
reduction* (``torch._inductor.config.triton.mix_order_reduction``, on by default for CUDA/XPU Triton since torch
2.10) fuses the two reductions of ``LayerNorm2d``'s backward that run along different axes of the same tensor: the
per-pixel reduction over channels (the input gradient) and the per-channel reduction over (N, H, W) (the gradients of
the norm's weight/bias and of the preceding ``beta``/``gamma``, shape (1, C, 1, 1)). The cross-split final reduction it
writes into the wrapper, ``buf = workspace[...].view(nsplit, C).sum(dim=0)``, dropped the keepdim shape, so ``beta``'s
gradient came back as (C,): pytorch/pytorch#178080, fixed by pytorch/pytorch#178098 (the final reduction now ends in
``.view(<buffer size>)``). It only fires on CUDA/XPU with Triton and above a size threshold (rows*cols >= 5*2**20,
rows >= 4096, rows >= 2*cols), so it cannot reproduce on CPU and needs width 32 / batch 4 / 256^2 or similar on GPU.

What this script runs, each case in a fresh dynamo state, on ``--device``:

* ``block``: a single NAFNet block pattern (``y = inp + x * beta``; ``LayerNorm2d(y)``) at ``--batch``x``--width``x
  ``--size``^2, the smallest graph that has the fused reductions;
* ``nafnet``: ``NAFNetLocal`` (``--width``, ``--enc``, ...) forward + L1 loss + backward at the training size
  (where its pools are global averages, as in NAFNet);
* ``large``: the same network (``train_size`` = ``--size``) at a larger, non-square input (2x by 1.5x the training
  side), where the TLC pools are the local cumulative-sum box means of ``LocalAvgPool2d``.

and for each the Inductor setting ``--mix-order default|off|both``. Each line prints whether compile fwd+bwd ran,
the largest difference of loss and gradients against eager (relative to the gradient's max magnitude), whether every
gradient has its parameter's shape, and how many mix-order-reduction kernels Inductor generated (the evidence that
the fused path was taken). Exit status 1 when a case that should work (``mix-order off``, or a torch with the fix)
fails.

    python scripts/repro_nafnetlocal_compile.py                                  # CUDA: GoPro config, batch 4
    python scripts/repro_nafnetlocal_compile.py --device cpu --width 8 --enc 1 1 --size 64 --batch 2
"""
from __future__ import annotations

import argparse
import copy
import datetime
import sys
import traceback
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ddr_restore.archs.nafnet import LayerNorm2d, NAFNetLocal


class _BlockPattern(nn.Module):
    """``LayerNorm2d(inp + x * beta)`` with ``beta`` (1, C, 1, 1): the part of a NAFBlock whose backward has a
    per-pixel (over C) and a per-channel (over N, H, W) reduction of the same tensor."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.randn(1, c, 1, 1))
        self.norm = LayerNorm2d(c)
        with torch.no_grad():
            self.norm.weight.normal_()
            self.norm.bias.normal_()

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        y = inp + self.conv(inp) * self.beta
        return self.norm(y)


def _mix_order_count() -> Optional[int]:
    try:
        from torch._inductor import metrics
    except ImportError:  # pragma: no cover
        return None
    return getattr(metrics, "codegen_mix_order_reduction", None)


def _set_mix_order(value: Optional[bool]) -> str:
    """Set Inductor's mix-order reduction (None: leave torch's default). Returns the value in force, as text."""
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config.triton, "mix_order_reduction"):
        return "n/a (this torch has no mix-order reduction)"
    if value is not None:
        inductor_config.triton.mix_order_reduction = value
    return str(inductor_config.triton.mix_order_reduction)


def _run_case(
    build, x: torch.Tensor, target: torch.Tensor, amp: Optional[torch.dtype], channels_last: bool
) -> Dict[str, object]:
    """Eager and compiled fwd+bwd of ``build()`` on ``x``; the differences and the gradient shapes."""
    torch.manual_seed(0)
    eager = build().to(x.device)
    if channels_last:
        eager = eager.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model = copy.deepcopy(eager)

    def loss_of(net: nn.Module) -> torch.Tensor:
        ctx = torch.autocast(x.device.type, dtype=amp) if amp is not None else torch.autocast(x.device.type,
                                                                                              enabled=False)
        with ctx:
            out = net(x)
        return F.l1_loss(out.float(), target)

    ref = loss_of(eager)
    ref.backward()
    result: Dict[str, object] = {"ok": False}
    from torch._inductor import metrics

    metrics.reset()
    compiled = torch.compile(model)
    try:
        loss = loss_of(compiled)
        loss.backward()
    except Exception as err:  # the failure under study: report it, do not stop the other cases
        result["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        result["mix_order_kernels"] = _mix_order_count()
        return result
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    result["mix_order_kernels"] = _mix_order_count()
    result["loss_diff"] = abs(float(loss.detach()) - float(ref.detach()))
    worst, bad_shapes = 0.0, []
    for (name, p_ref), (_, p) in zip(eager.named_parameters(), model.named_parameters()):
        if p.grad is None or p_ref.grad is None:
            bad_shapes.append(f"{name}: no grad")
            continue
        if p.grad.shape != p.shape:
            bad_shapes.append(f"{name}: grad {tuple(p.grad.shape)} vs param {tuple(p.shape)}")
            continue
        scale = float(p_ref.grad.abs().max()) or 1.0
        worst = max(worst, float((p.grad - p_ref.grad).abs().max()) / scale)
    result["grad_rel_diff"] = worst
    result["bad_shapes"] = bad_shapes
    result["ok"] = not bad_shapes
    return result


def main(argv: Optional[List[str]] = None) -> int:
    """Run the cases; return 1 when a case expected to work failed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--enc", type=int, nargs="+", default=[1, 1, 1, 28], help="enc_blk_nums (dec: ones)")
    p.add_argument("--middle", type=int, default=1)
    p.add_argument("--size", type=int, default=256, help="training crop side (= train_size)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="bf16")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW (the report used channels-last)")
    p.add_argument("--mix-order", choices=("default", "off", "both"), default="both",
                   help="Inductor's triton.mix_order_reduction: torch's default, off (the work-around), or both")
    p.add_argument("--cases", nargs="+", choices=("block", "nafnet", "large"),
                   default=["block", "nafnet", "large"])
    p.add_argument("--tol", type=float, default=None,
                   help="max relative gradient difference for 'match' (default 1e-5 fp32, 5e-2 with amp)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    tol = args.tol if args.tol is not None else (1e-5 if amp is None else 5e-2)
    channels_last = not args.no_channels_last
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"cpu ({torch.get_num_threads()} threads)"
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  device {dev_name}")
    print(f"# width {args.width} enc {args.enc} batch {args.batch} size {args.size} amp {args.amp} "
          f"channels_last {channels_last}")
    if device.type == "cpu":
        print("# note: mix-order reduction is a CUDA/XPU Triton optimisation; on CPU the reported failure cannot occur")

    torch.manual_seed(0)
    n, s, w = args.batch, args.size, args.width
    builders: Dict[str, Tuple] = {}
    if "block" in args.cases:
        xb = torch.randn(n, w, s, s, device=device)
        builders["block"] = (lambda: _BlockPattern(w), xb, torch.randn_like(xb))

    def build_net() -> nn.Module:
        return NAFNetLocal(width=w, enc_blk_nums=tuple(args.enc), middle_blk_num=args.middle,
                           dec_blk_nums=tuple([1] * len(args.enc)), train_size=(1, 3, s, s))

    if "nafnet" in args.cases:
        xn = torch.rand(n, 3, s, s, device=device)
        builders["nafnet"] = (build_net, xn, torch.rand_like(xn))
    if "large" in args.cases:
        xl = torch.rand(1, 3, 2 * s, 3 * s // 2, device=device)
        builders["large"] = (build_net, xl, torch.rand_like(xl))

    settings = {"default": [None], "off": [False], "both": [None, False]}[args.mix_order]
    failed_expected = False
    for value in settings:
        for case, (build, x, target) in builders.items():
            torch._dynamo.reset()
            state = _set_mix_order(value)
            label = f"{case:6s} mix_order_reduction={state:5s}"
            try:
                res = _run_case(build, x, target, amp, channels_last)
            except Exception:  # an unexpected failure outside the compiled call: show it whole
                traceback.print_exc()
                res = {"ok": False, "error": "see traceback"}
            if res["ok"]:
                match = "match" if res["grad_rel_diff"] <= tol else "MISMATCH"
                print(f"{label}  OK   loss diff {res['loss_diff']:.2e}  max rel grad diff {res['grad_rel_diff']:.2e}"
                      f" ({match}, tol {tol:g})  mix-order kernels {res['mix_order_kernels']}")
                failed_expected |= match != "match"
            else:
                detail = res.get("error") or "; ".join(res.get("bad_shapes", []))[:300]
                print(f"{label}  FAIL {detail}  mix-order kernels {res.get('mix_order_kernels')}")
                failed_expected |= value is False
    _set_mix_order(None)
    return 1 if failed_expected else 0


if __name__ == "__main__":
    sys.exit(main())
