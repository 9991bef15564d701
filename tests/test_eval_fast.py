"""Fast evaluation (issue 11, target 4): ``--amp``, ``--device auto``, read-ahead/background writes (``--workers``).

CPU tests: the amp option is validated, recorded, and refused on CPU with the reason; ``auto`` picks the CPU
without CUDA and says so; workers 0 and 2 give byte-identical CSVs, images and grids (restoration with a network,
SR scoring of saved outputs with the bicubic input row); a bad file in the middle is reported naming the file,
with workers too, after the same earlier pairs; Ctrl-C leaves no thread behind and the CLI prints one line.
CUDA tests (skipped without CUDA): ``auto`` picks CUDA; bf16 autocast of a small random Restormer is within 45 dB
(8-bit PSNR) of fp32; the GPU-side uint8 transfer/quantisation gives the CPU path's values.
"""
from __future__ import annotations

import csv
import io
import json
import threading
import time
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import pytest
import torch

from ddr_restore.errors import InputError
from ddr_restore.eval import evaluate, main
from ddr_restore.eval.evaluate import _resolve_device
from ddr_restore.eval.inference import AMP_CHOICES, normalize_amp, restore
from ddr_restore.eval.prefetch import BackgroundWriter, Prefetcher, check_workers, default_workers

H, W = 40, 56
NAMES = ["a0", "b1", "c2", "d3", "e4", "f5", "g6"]
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA (autocast and device auto=cuda are CUDA paths)")


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture
def pairs(tmp_path) -> Path:
    """Seven smooth random pairs (input = target + noise) and 'restored' outputs, 56x40."""
    rng = np.random.default_rng(0)
    root = tmp_path / "pairs"
    for name in NAMES:
        gt = cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3)).astype(np.uint8), (0, 0), 2.0)
        noisy = np.clip(gt + rng.normal(0, 8, gt.shape), 0, 255).round().astype(np.uint8)
        _save(root / "target" / f"{name}.png", gt)
        _save(root / "input" / f"{name}.png", noisy)
        _save(root / "restored" / f"{name}.png", cv2.GaussianBlur(noisy, (3, 3), 0))
    return root


def _tiny_nafnet() -> torch.nn.Module:
    from ddr_restore.archs.nafnet import NAFNet

    torch.manual_seed(0)
    net = NAFNet(width=4, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])
    with torch.no_grad():  # skip-init scales are 0 at init (every block an identity): make the blocks act
        for name, p in net.named_parameters():
            if name.endswith((".beta", ".gamma")):
                p.normal_(0.0, 0.1)
    return net.eval()


def _files(folder: Path) -> Dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _csv_without(text: str, column: str) -> List[List[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    k = rows[0].index(column)
    return [r[:k] + r[k + 1:] for r in rows]


# ----------------------------------------------------------------------------------------------- amp


def test_amp_values_are_validated_and_normalised():
    assert AMP_CHOICES == ("none", "bf16", "fp16")
    for value, expected in [(None, None), ("none", None), ("fp32", None), ("bf16", "bf16"), ("bfloat16", "bf16"),
                            ("fp16", "fp16"), ("half", "fp16"), ("BF16", "bf16")]:
        assert normalize_amp(value) == expected, value
    for bad in ("int8", "fp8", 16):
        with pytest.raises(InputError, match=repr(bad)):
            normalize_amp(bad)


def test_amp_refused_on_cpu_and_with_restored_outputs(pairs, tmp_path):
    net = _tiny_nafnet()
    kw = dict(input_dir=pairs / "input", target_dir=pairs / "target", metrics=["psnr"], progress=False)
    with pytest.raises(InputError, match="int8"):
        evaluate("folder", net=net, amp="int8", out_dir=tmp_path / "o1", **kw)
    # CPU bf16 autocast: 0.7-0.8x (NAFNet), 1.0-1.1x (Restormer) the fp32 speed (evaluate.CPU_AMP_NOTE): refused,
    # with the reason, before any result folder is created
    with pytest.raises(InputError, match=r"--amp bf16 .*CUDA.*cpu.*fp32"):
        evaluate("folder", net=net, amp="bf16", device="cpu", out_dir=tmp_path / "o2", **kw)
    assert not (tmp_path / "o2").exists()
    with pytest.raises(InputError, match="restored_dir scores saved outputs"):
        evaluate("folder", restored_dir=pairs / "restored", amp="bf16", out_dir=tmp_path / "o3", **kw)


def test_amp_none_recorded_in_summary(pairs, tmp_path):
    summary = evaluate("folder", input_dir=pairs / "input", target_dir=pairs / "target", net=_tiny_nafnet(),
                       metrics=["psnr"], amp="none", device="cpu", out_dir=tmp_path / "o", progress=False,
                       max_images=2)
    assert summary["network"]["amp"] == "none" and summary["runtime"]["amp"] == "none"
    saved = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert saved["runtime"] == summary["runtime"] and list(saved).index("runtime") == list(saved).index("device") + 1


def test_cli_amp_and_workers_flags(pairs, tmp_path, capsys):
    base = ["--preset", "folder", "--target-dir", str(pairs / "target"), "--out", str(tmp_path / "o"),
            "--no-lpips", "--no-ddr", "--no-progress"]
    for argv, needle in [(base + ["--restored", str(pairs / "restored"), "--amp", "int8"], "invalid choice"),
                         (base + ["--restored", str(pairs / "restored"), "--amp", "bf16"], "--amp applies"),
                         (base + ["--restored", str(pairs / "restored"), "--workers", "-1"], "--workers")]:
        with pytest.raises(SystemExit) as err:
            main(argv)
        assert err.value.code == 2
        assert needle in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--workers" in text and "auto (default" in text and "--amp {none,bf16,fp16}" in text


# ----------------------------------------------------------------------------------------------- device


def test_device_auto_picks_cpu_without_cuda_and_says_so(pairs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine: the CPU branch
    assert _resolve_device("auto") == torch.device("cpu")
    summary = evaluate("folder", target_dir=pairs / "target", restored_dir=pairs / "restored", metrics=["psnr"],
                       out_dir=tmp_path / "o", progress=True, max_images=1)  # device left at its default
    assert summary["device"] == "cpu"
    assert summary["runtime"]["auto"] is True and summary["runtime"]["requested_device"] == "auto"
    assert f"[ddr-eval] device cpu ({summary['runtime']['device_name']}, auto)" in capsys.readouterr().err
    assert summary["runtime"]["device_name"].endswith(f"{torch.get_num_threads()} threads")


@needs_cuda
def test_device_auto_picks_cuda(pairs, tmp_path):
    assert _resolve_device("auto").type == "cuda"
    summary = evaluate("folder", target_dir=pairs / "target", restored_dir=pairs / "restored", metrics=["psnr"],
                       out_dir=tmp_path / "o", progress=False, max_images=1)
    assert summary["device"].startswith("cuda") and summary["runtime"]["device_name"] == torch.cuda.get_device_name()


# ----------------------------------------------------------------------------------------------- read-ahead


def _run_twice(tmp_path: Path, **kw) -> List[Dict]:
    """The same evaluation with workers 0 and 2, in the same folder (so the CSV's paths are the same); returns
    each run's summary, CSV text and PNG files."""
    out = tmp_path / "out"
    runs = []
    for workers in (0, 2):
        summary = evaluate(out_dir=out, overwrite=True, progress=False, workers=workers, **kw)
        runs.append({"summary": summary, "csv": (out / "per_image.csv").read_text(), "png": _files(out)})
    return runs


def test_workers_give_identical_results_with_a_network(pairs, tmp_path):
    seq, par = _run_twice(tmp_path, config="folder", input_dir=pairs / "input", target_dir=pairs / "target",
                          net=_tiny_nafnet(), metrics=["psnr", "ssim"], score_input=True, save_images=True, grid=3,
                          device="cpu")
    assert seq["summary"]["runtime"]["workers"] == 0 and par["summary"]["runtime"]["workers"] == 2
    # the inference time differs from run to run; everything else is the same bytes
    assert _csv_without(seq["csv"], "seconds") == _csv_without(par["csv"], "seconds")
    assert [r[0] for r in _csv_without(par["csv"], "seconds")[1:]] == NAMES
    assert len(seq["png"]) == len(NAMES) + 3 and seq["png"] == par["png"]
    for key in ("mean", "input_scores", "protocol", "num_images"):
        assert seq["summary"][key] == par["summary"][key], key


def test_workers_give_identical_results_sr_scoring(tmp_path):
    """SR scoring of saved outputs: the bicubic input row (computed on the read-ahead threads) and its counts."""
    rng = np.random.default_rng(1)
    root = tmp_path / "sr"
    for i in range(5):
        hr = cv2.GaussianBlur(rng.integers(0, 256, (2 * H + i % 2, 2 * W, 3)).astype(np.uint8), (0, 0), 1.5)
        lr = cv2.resize(hr[: 2 * H], (W, H), interpolation=cv2.INTER_AREA)
        _save(root / "HR" / f"p{i}.png", hr)
        _save(root / "LR" / f"p{i}.png", lr)
        _save(root / "restored" / f"p{i}.png", cv2.resize(lr, (2 * W, 2 * H), interpolation=cv2.INTER_CUBIC))
    seq, par = _run_twice(tmp_path, config="sr", scale=2, input_dir=root / "LR", target_dir=root / "HR",
                          restored_dir=root / "restored", metrics=["psnr_y", "ssim_y"], grid=5)
    assert seq["csv"] == par["csv"] and seq["png"] == par["png"] and len(par["png"]) == 5
    assert seq["summary"]["input_scores"] == par["summary"]["input_scores"]
    assert "(5 images)" in par["summary"]["input_scores"]["description"]  # counted once per pair, in order


def _corrupt(pairs: Path, name: str) -> Path:
    bad = pairs / "input" / f"{name}.png"
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG: the header is there, the pixels are not
    return bad


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_file_in_the_middle_is_named(pairs, tmp_path, workers):
    bad = _corrupt(pairs, "d3")
    seen: List[int] = []

    class Recording(torch.nn.Module):  # records which pairs reached the network
        def forward(self, x):
            seen.append(1)
            return x

    threads = threading.active_count()
    with pytest.raises(InputError) as err:
        evaluate("folder", input_dir=pairs / "input", target_dir=pairs / "target", net=Recording(),
                 metrics=["psnr"], out_dir=tmp_path / "o", progress=False, workers=workers, device="cpu")
    assert str(bad) in str(err.value) and "input image" in str(err.value)
    # the pairs before it went through the network (a0, b1, c2), none after it; no CSV for a failed run
    assert len(seen) == 3
    assert not (tmp_path / "o" / "per_image.csv").exists()
    _threads_settle(threads)


def test_bad_file_cli_one_line_with_workers(pairs, tmp_path, capsys):
    from ddr_restore.archs.nafnet import NAFNet
    import yaml

    bad = _corrupt(pairs, "c2")
    opt = tmp_path / "opt.yml"
    opt.write_text(yaml.safe_dump({"name": "t", "network_g": {"type": "NAFNet", "width": 4, "middle_blk_num": 1,
                                                              "enc_blk_nums": [1], "dec_blk_nums": [1]}}))
    ckpt = tmp_path / "net.pth"
    torch.manual_seed(0)
    torch.save({"params": NAFNet(width=4, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]).state_dict()}, ckpt)
    with pytest.raises(SystemExit) as err:
        main(["--preset", "folder", "--input-dir", str(pairs / "input"), "--target-dir", str(pairs / "target"),
              "-opt", str(opt), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--metrics", "psnr",
              "--no-progress", "--workers", "3", "--device", "cpu"])
    assert err.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("ddr-eval: error: input image")
    assert str(bad) in stderr


def _threads_settle(before: int, timeout: float = 5.0) -> None:
    """The read-ahead/writer threads end soon after the run stops (each finishes at most one item)."""
    deadline = time.monotonic() + timeout
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    names = [t.name for t in threading.enumerate() if t.name.startswith(("ddr-read", "ddr-write"))]
    assert not names, names


def test_ctrl_c_stops_cleanly(pairs, tmp_path, capsys, monkeypatch):
    calls: List[int] = []

    class Interrupted(torch.nn.Module):  # Ctrl-C arriving while the network runs on the third pair
        def forward(self, x):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return x

    threads = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        evaluate("folder", input_dir=pairs / "input", target_dir=pairs / "target", net=Interrupted(),
                 metrics=["psnr"], out_dir=tmp_path / "o", progress=False, workers=2, save_images=True,
                 device="cpu")
    _threads_settle(threads)
    assert not (tmp_path / "o" / "per_image.csv").exists()

    # the console script: one line and exit status 130, no traceback
    import sys

    ev = sys.modules["ddr_restore.eval.evaluate"]  # the module (the package attribute of that name is the function)

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "evaluate", interrupted)
    with pytest.raises(SystemExit) as err:
        main(["--preset", "folder", "--target-dir", str(pairs / "target"), "--restored", str(pairs / "restored"),
              "--out", str(tmp_path / "o2"), "--no-progress"])
    assert err.value.code == 130
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and stderr.strip() == (
        "ddr-eval: interrupted (no per_image.csv/summary.json written for this run)")


# ----------------------------------------------------------------------------------------------- prefetch parts


def test_prefetcher_order_errors_and_bounded_read_ahead():
    rng = np.random.default_rng(0)
    delays = rng.uniform(0, 0.01, 30)
    started: List[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(delays[i])  # out-of-order completion
        if i == 17:
            raise InputError(f"file {i}.png is bad")
        return i * i

    got = []
    with pytest.raises(InputError, match="17.png"):
        with Prefetcher(work, range(30), workers=3, depth=4) as pf:
            for i, value in pf:
                got.append((i, value))
                with lock:  # never more than depth + 1 items started beyond those handed out
                    assert len(started) <= len(got) + 4 + 1
    assert got == [(i, i * i) for i in range(17)]
    assert [v for _, v in Prefetcher(lambda i: i + 1, range(5), workers=0)] == [1, 2, 3, 4, 5]
    assert check_workers(None) == default_workers() >= 1 and check_workers(0) == 0
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(InputError, match="workers"):
            check_workers(bad)


def test_background_writer_reraises_and_bounds(tmp_path):
    written: List[int] = []

    def write(i: int) -> None:
        time.sleep(0.002)
        if i == 5:
            raise InputError(f"cannot write out/{i}.png")
        written.append(i)

    with pytest.raises(InputError, match="5.png"):
        with BackgroundWriter(enabled=True, max_pending=2) as w:
            for i in range(10):
                w.submit(write, i)
                assert len(w._pending) <= 2
    assert 5 not in written and written[:5] == [0, 1, 2, 3, 4]
    done: List[int] = []
    with BackgroundWriter(enabled=False) as w:  # sequential: at once, in this thread
        w.submit(done.append, threading.current_thread().name)
    assert done == [threading.current_thread().name]


# ----------------------------------------------------------------------------------------------- CUDA


def _psnr8(a: torch.Tensor, b: torch.Tensor) -> float:
    qa, qb = ((t.clamp(0, 1) * 255).round().double() for t in (a, b))
    mse = float(((qa - qb) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@needs_cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_restormer_close_to_fp32(amp):
    from ddr_restore.archs.restormer import Restormer

    torch.manual_seed(0)
    net = Restormer(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4]).cuda().eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 200, 264, generator=gen), 5, 1, 2).cuda()  # smooth
    fp32 = restore(net, x)
    half = restore(net, x, amp=amp)
    assert half.dtype == torch.float32  # float32 before quantisation
    psnr = _psnr8(half, fp32)
    print(f"\n[Restormer dim 16, random, 264x200, {amp} vs fp32] 8-bit PSNR {psnr:.2f} dB")
    assert psnr >= 45.0


@needs_cuda
def test_cuda_amp_recorded_and_uint8_transfers_exact(pairs, tmp_path):
    from ddr_restore.eval.evaluate import _to_device, _to_uint8
    from ddr_restore.imageio import img2tensor, tensor2img

    summary = evaluate("folder", input_dir=pairs / "input", target_dir=pairs / "target", net=_tiny_nafnet(),
                       metrics=["psnr"], amp="bf16", device="cuda", out_dir=tmp_path / "o", progress=False)
    assert summary["network"]["amp"] == "bf16" and summary["runtime"]["amp"] == "bf16"
    dev = torch.device("cuda")
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    assert torch.equal(_to_device(img, dev).cpu(), img2tensor(img)[None])
    y = torch.rand(1, 3, 37, 53) * 1.2 - 0.1
    y[0, 0, 0, :8] = torch.tensor([0.5, 1.5, 2.5, 127.5, 254.5, -0.0, 1.0, 0.0]) / 255.0  # halfway cases
    assert np.array_equal(_to_uint8(y.to(dev)), tensor2img(y))


# ----------------------------------------------------------------------------------------------- benchmark script


def test_bench_eval_script_runs_small_on_cpu(pairs, capsys):
    """scripts/bench_eval.py end to end at a tiny size: header, fp32 vs bf16 line with ratio and PSNR, workers 0/2."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_eval.py"
    spec = importlib.util.spec_from_file_location("bench_eval", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--device", "cpu", "--arch", "nafnet", "--size", "48x32", "--repeats", "1", "--warmup", "0",
                      "--data", str(pairs.parent), "--e2e-arch", "identity", "--workers", "2", "--max-images", "3",
                      "--e2e-metrics", "psnr"])
    printed = capsys.readouterr().out
    assert res["torch"] == torch.__version__ and res["date"] in printed and "device cpu" in printed
    fp32, bf16 = res["inference"][0]["variants"]
    assert fp32["label"] == "fp32" and bf16["amp"] == "bf16" and bf16["psnr8_vs_fp32"] > 40
    assert bf16["speedup_vs_fp32"] > 0 and "refused by ddr-eval" in printed
    e2e = res["end_to_end"]
    assert [r["workers"] for r in e2e["runs"]] == [0, 2] and e2e["identical_means"] and e2e["runs"][0]["images"] == 3
