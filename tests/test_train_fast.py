"""Trainer speed options (issue 11, target 2): amp / tf32 / channels_last / compile / fused, no per-step host sync.

Everything runs on the CPU with a tiny NAFNet (width 8, one level, 32 px crops) unless marked CUDA-only; those skip
with the reason on a machine without CUDA. ``torch.compile`` wiring is tested with the ``aot_eager`` backend (the
same dynamo + AOTAutograd graph capture as inductor, without generating C++); one test compiles with inductor for
real and skips with the reason where inductor cannot build here.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch
from torch import nn

from ddr_restore.errors import InputError
from ddr_restore.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY
from ddr_restore.train import checkpoint as ckpt
from ddr_restore.train import trainer as trainer_mod
from ddr_restore.train.options import OptionsError, resume_changes, validate_options
from ddr_restore.train.trainer import Trainer, TrainingDivergedError, train

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA-only path (fused AdamW, TF32, CUDA sync checks): no CUDA "
                                                 "device on this machine")


# ------------------------------------------------------------------------------------------ test-only components
@DATASET_REGISTRY.register("FastTestPairs")
class FastTestPairs(torch.utils.data.Dataset):
    """Fixed random pairs; training items get a random 32 px crop (torch RNG, so resume must restore it)."""

    def __init__(self, phase: str = "train", length: int = 6, size: int = 40, crop: int = 32) -> None:
        g = torch.Generator().manual_seed(321)
        self.gt = torch.rand(length, 3, size, size, generator=g)
        self.lq = (self.gt + 0.1 * torch.randn(length, 3, size, size, generator=g)).clamp(0, 1)
        self.phase, self.crop = phase, crop

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        top, left = torch.randint(0, self.gt.shape[-1] - self.crop + 1, (2,)).tolist()
        window = (slice(None), slice(top, top + self.crop), slice(left, left + self.crop))
        return {"lq": self.lq[i][window].clone(), "gt": self.gt[i][window].clone(), "lq_path": f"{i}.png"}


@ARCH_REGISTRY.register("FastTestConvNet")
class FastTestConvNet(nn.Module):
    """Two convolutions: the smallest network whose compiled forward and backward inductor must generate."""

    size_multiple = 1

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


PROBE: List[Dict[str, object]] = []


@LOSS_REGISTRY.register("FastTestProbeLoss")
class FastTestProbeLoss(nn.Module):
    """L1 that records how the trainer calls a loss: the autocast dtype (the output's dtype without autocast; NAFNet's
    residual addition returns fp32 either way) and the memory format of the network output."""

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        autocast = torch.is_autocast_enabled(pred.device.type)
        PROBE.append({"dtype": torch.get_autocast_dtype(pred.device.type) if autocast else pred.dtype,
                      "channels_last": pred.is_contiguous(memory_format=torch.channels_last)
                      and not pred.is_contiguous()})
        return self.loss_weight * (pred - target).abs().mean()


@LOSS_REGISTRY.register("FastTestNaNLoss")
class FastTestNaNLoss(nn.Module):
    """MSE that turns NaN from call number ``after + 1`` on (one call per iteration without accumulation)."""

    def __init__(self, after: int = 3) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = ((pred - target) ** 2).mean()
        return loss * float("nan") if self.calls > self.after else loss


TINY_NAFNET = {"type": "NAFNet", "width": 8, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]}


def fast_options(root: Path, name: str = "fast", total_iter: int = 6, logger: Optional[dict] = None,
                 **train_extra) -> dict:
    opt = {
        "name": name,
        "num_gpu": 0,
        "manual_seed": 11,
        "datasets": {"train": {"type": "FastTestPairs", "batch_size_per_gpu": 2}},
        "network_g": dict(TINY_NAFNET),
        "path": {"experiments_root": str(root)},
        "train": {
            "optim_g": {"type": "AdamW", "lr": 2e-3, "weight_decay": 1e-3, "betas": [0.9, 0.9]},
            "scheduler": {"type": "TrueCosineAnnealingLR", "T_max": 12, "eta_min": 1e-5},
            "total_iter": total_iter,
            "ema_decay": 0.9,
            "use_grad_clip": True,
            "grad_clip_norm": 0.5,
            "pixel_opt": {"type": "PSNRLoss"},
        },
        "logger": logger or {"print_freq": 2, "save_checkpoint_freq": 2, "use_tb_logger": False},
    }
    opt["train"].update(train_extra)
    return opt


class Recorder:
    def __init__(self) -> None:
        self.logs: Dict[int, Dict[str, float]] = {}

    def __call__(self, iteration: int, logs: Dict[str, float]) -> None:
        self.logs[iteration] = logs


@pytest.fixture
def aot_eager(monkeypatch):
    """``train.compile`` through dynamo + AOTAutograd without code generation (seconds instead of minutes here)."""
    monkeypatch.setattr(trainer_mod, "_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _weights(path: Path) -> Dict[str, Dict[str, torch.Tensor]]:
    return ckpt.safe_load(path)


def _log_text(result) -> str:
    return Path(result.log_file).read_text()


# ------------------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("key, value", [("amp", "fp8"), ("amp", True), ("tf32", "yes"), ("channels_last", 1),
                                        ("compile", "fastest"), ("compile", 3)])
def test_bad_speed_option_values_name_the_key(tmp_path, key, value):
    with pytest.raises(OptionsError, match=rf"train\.{key}: "):
        validate_options(fast_options(tmp_path, **{key: value}))


def test_speed_options_defaults_and_modes(tmp_path):
    opt = validate_options(fast_options(tmp_path))
    assert (opt["train"]["amp"], opt["train"]["tf32"], opt["train"]["channels_last"], opt["train"]["compile"]) == \
        (False, True, False, False)
    for mode in (True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        assert validate_options(fast_options(tmp_path, compile=mode))["train"]["compile"] == mode


def test_speed_options_may_change_on_resume_and_others_may_not(tmp_path):
    saved = validate_options(fast_options(tmp_path))
    new = validate_options(fast_options(tmp_path, amp="bf16", tf32=False, channels_last=True, compile=True))
    new["train"]["optim_g"]["fused"] = False
    applied, refused = resume_changes(saved, new)
    assert refused == []
    assert {k for k, _, _ in applied} == {"train.amp", "train.tf32", "train.channels_last", "train.compile",
                                          "train.optim_g.fused"}
    new["train"]["optim_g"]["lr"] = 1.0  # the optimizer itself stays refused
    assert [k for k, _, _ in resume_changes(saved, new)[1]] == ["train.optim_g.lr"]


# ---------------------------------------------------------------------------------------------- amp on the CPU
def test_bf16_autocast_trains_on_cpu(tmp_path):
    PROBE.clear()
    fp32, bf16 = Recorder(), Recorder()
    train(fast_options(tmp_path / "a", total_iter=3, pixel_opt={"type": "FastTestProbeLoss"}),
          iteration_callback=fp32)
    assert {p["dtype"] for p in PROBE} == {torch.float32}
    PROBE.clear()
    result = train(fast_options(tmp_path / "b", total_iter=3, amp="bf16", pixel_opt={"type": "FastTestProbeLoss"}),
                   iteration_callback=bf16)
    assert {p["dtype"] for p in PROBE} == {torch.bfloat16}  # network and losses ran under CPU autocast
    assert "precision: bf16 autocast" in _log_text(result)
    for it in (1, 2, 3):  # same data and init: close to fp32, but not the fp32 numbers
        assert bf16.logs[it]["l_pix"] == pytest.approx(fp32.logs[it]["l_pix"], rel=5e-2)
    assert bf16.logs[1]["l_pix"] != fp32.logs[1]["l_pix"]
    weights = _weights(result.checkpoint)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights["params"].values())


def test_fp16_on_cpu_warns_and_trains_in_fp32(tmp_path):
    PROBE.clear()
    result = train(fast_options(tmp_path, total_iter=2, amp="fp16", pixel_opt={"type": "FastTestProbeLoss"}))
    assert {p["dtype"] for p in PROBE} == {torch.float32}
    log = _log_text(result)
    assert "WARNING" in log and "train.amp=fp16 ignored on the CPU" in log and "use train.amp: bf16" in log


def test_tf32_has_no_effect_on_cpu_and_is_logged(tmp_path):
    before = trainer_mod._tf32_flags()
    result = train(fast_options(tmp_path, total_iter=1, tf32=True))
    assert "train.tf32 has no effect on the CPU" in _log_text(result)
    assert trainer_mod._tf32_flags() == before


# ------------------------------------------------------------------------------------------------ channels_last
def test_channels_last_trains_like_contiguous(tmp_path):
    PROBE.clear()
    dense, cl = Recorder(), Recorder()
    res_dense = train(fast_options(tmp_path / "a", total_iter=4, pixel_opt={"type": "FastTestProbeLoss"}),
                      iteration_callback=dense)
    assert not any(p["channels_last"] for p in PROBE)
    PROBE.clear()
    res_cl = train(fast_options(tmp_path / "b", total_iter=4, channels_last=True,
                                pixel_opt={"type": "FastTestProbeLoss"}), iteration_callback=cl)
    assert PROBE and all(p["channels_last"] for p in PROBE)  # the loss saw a channels_last network output
    assert "memory format: channels_last" in _log_text(res_cl)
    for it in range(1, 5):
        assert cl.logs[it]["l_total"] == pytest.approx(dense.logs[it]["l_total"], rel=1e-5, abs=1e-7), it
    a, b = _weights(res_dense.checkpoint), _weights(res_cl.checkpoint)
    for key in ("params", "params_ema"):
        assert list(a[key]) == list(b[key])
        for name, value in a[key].items():
            assert b[key][name].is_contiguous()  # saved files do not depend on the memory format
            torch.testing.assert_close(b[key][name], value, rtol=1e-4, atol=1e-5)


def _same_for_both_layouts(loss: nn.Module) -> None:
    """``loss`` gives the same value and input gradient for a contiguous and a channels_last batch."""
    torch.manual_seed(0)
    pred = torch.rand(2, 3, 32, 32)
    target = torch.rand(2, 3, 32, 32)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        x = pred.clone().contiguous(memory_format=layout).requires_grad_(True)
        value = loss(x, target.contiguous(memory_format=layout))
        value.backward()
        results.append((value.detach(), x.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6, msg=type(loss).__name__)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-6, msg=type(loss).__name__)


@pytest.mark.parametrize("name", ["PSNRLoss", "L1Loss", "CharbonnierLoss"])
def test_pixel_losses_accept_channels_last_outputs(name):
    _same_for_both_layouts(LOSS_REGISTRY.build({"type": name}, where="test"))


@pytest.mark.slow
def test_ddr_loss_accepts_channels_last_outputs(one_thread):
    """DDR resizes and normalises for CLIP internally; a channels_last output must give the same loss (~8 s)."""
    _same_for_both_layouts(LOSS_REGISTRY.build({"type": "DDRLoss", "pretrained": "none"}, where="test").eval())


# ------------------------------------------------------------------------------------------------------ compile
def test_compile_trains_saves_clean_keys_and_averages_the_real_weights(tmp_path, aot_eager):
    eager, compiled = Recorder(), Recorder()
    res_eager = train(fast_options(tmp_path / "a", total_iter=4), iteration_callback=eager)
    res_comp = train(fast_options(tmp_path / "b", total_iter=4, compile=True), iteration_callback=compiled)
    assert "torch.compile: default" in _log_text(res_comp)
    for it in range(1, 5):
        assert compiled.logs[it]["l_total"] == pytest.approx(eager.logs[it]["l_total"], rel=1e-4), it
    a, b = _weights(res_eager.checkpoint), _weights(res_comp.checkpoint)
    for key in ("params", "params_ema"):
        assert list(b[key]) == list(a[key])  # no "_orig_mod." prefix
        for name, value in a[key].items():  # the EMA followed the trained weights, not a copy of the start
            torch.testing.assert_close(b[key][name], value, rtol=1e-3, atol=1e-5)
    first = next(iter(a["params"]))
    assert not torch.equal(a["params_ema"][first], a["params"][first])


def test_compile_failure_is_one_clear_error_before_any_save(tmp_path, monkeypatch):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no code generator here")

    monkeypatch.setattr(trainer_mod, "_COMPILE_BACKEND", broken_backend)
    torch._dynamo.reset()
    try:
        with pytest.raises(InputError, match=r"^train\.compile: torch\.compile \(default\) of NAFNet failed in "
                                             r"iteration 1: .*no code generator here.*train\.compile=false"):
            train(fast_options(tmp_path, compile=True))
    finally:
        torch._dynamo.reset()
    assert not list((tmp_path / "fast" / "models").glob("*.pth"))


def _inductor_problem() -> str:
    """Why inductor cannot compile on this machine ('' when it can)."""
    try:
        torch._dynamo.reset()
        fn = torch.compile(lambda x: torch.relu(x) * 2.0 + 1.0, backend="inductor")
        fn(torch.ones(8))
        return ""
    except Exception as err:  # missing compiler / Python headers / unsupported platform
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    finally:
        torch._dynamo.reset()


@pytest.mark.slow
def test_compile_with_inductor_on_cpu(tmp_path):
    """The real code generator (C++ on the CPU): ~35 s with a cold inductor cache on a busy 2-core box, ~3 s warm."""
    problem = _inductor_problem()
    if problem:
        pytest.skip(f"torch.compile (inductor) cannot build on this machine: {problem}")
    torch._dynamo.reset()
    try:
        opt = fast_options(tmp_path, total_iter=2, compile=True, ema_decay=0.5)
        opt["network_g"] = {"type": "FastTestConvNet", "width": 4}
        result = train(opt)
    finally:
        torch._dynamo.reset()
    weights = _weights(result.checkpoint)
    assert sorted(weights["params"]) == sorted(FastTestConvNet().state_dict())
    assert all(torch.isfinite(v).all() for v in weights["params_ema"].values())


# ------------------------------------------------------------------------------------------------------- resume
def test_resume_is_exact_with_fast_options_on_cpu(tmp_path, aot_eager):
    fast = {"amp": "bf16", "channels_last": True, "compile": True}
    full = train(fast_options(tmp_path / "a", total_iter=6, **fast))
    train(fast_options(tmp_path / "b", total_iter=4, **fast))  # stops (and saves) at 4
    resumed = train(fast_options(tmp_path / "b", total_iter=6, **fast), auto_resume=True)
    assert resumed.start_iter == 4 and resumed.final_iter == 6
    a, b = _weights(full.checkpoint), _weights(resumed.checkpoint)
    for key in ("params", "params_ema"):
        for name, value in a[key].items():
            assert torch.equal(b[key][name], value), (key, name)  # bit for bit on the CPU


def test_memory_format_change_on_resume_relays_the_optimizer_state(tmp_path):
    train(fast_options(tmp_path, total_iter=2))
    trainer = Trainer(fast_options(tmp_path, total_iter=4, channels_last=True), auto_resume=True)
    result = trainer.run()
    assert "option changed since the checkpoint (applied): train.channels_last: False -> True" in _log_text(result)
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            for key in ("exp_avg", "exp_avg_sq"):
                assert trainer.optimizer.state[param][key].stride() == param.stride()


def test_restored_optimizer_keeps_this_runs_implementation():
    """``load_state_dict`` takes ``fused`` from the saved groups: a checkpoint of an unfused (e.g. CPU) run must not
    switch off the fused step of the resuming run (fused AdamW also exists on the CPU, so this runs anywhere)."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 3)
    saved = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 8, 8)).mean().backward()
    saved.step()
    resumed = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    flags = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g} for g in resumed.param_groups]
    resumed.load_state_dict(saved.state_dict())
    assert not resumed.param_groups[0]["fused"]  # what torch does on its own
    trainer_mod._align_optimizer_state(resumed, flags)
    assert resumed.param_groups[0]["fused"] is True
    step = resumed.state[model.weight]["step"]
    assert step.dtype == torch.float32 and step.device == model.weight.device and float(step) == 1.0
    resumed.step()  # the fused kernel accepts the restored state


def test_ema_update_matches_averaged_model():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # float params, float and int buffers
    ours = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for step in range(3):
        model(torch.rand(2, 3, 8, 8)).mean().backward()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        trainer_mod._ema_update(ours, model, 0.9, first=step == 0)
        ref.update_parameters(model)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------------------------------- no per-step sync
# the Tensor methods that bring a value to the host (each one waits for the device on CUDA)
_HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__")


def test_loss_values_are_read_only_at_print_and_save_points(tmp_path, monkeypatch):
    """Regression: the loop read every loss (``float(t)``) and all-reduced it each iteration."""
    trainer = Trainer(fast_options(tmp_path, total_iter=10, ema_decay=0.9, accumulate_grad_batches=2,
                                   logger={"print_freq": 5, "save_checkpoint_freq": 5, "use_tb_logger": False}))
    reads: List[int] = []
    trainer_file = Path(trainer_mod.__file__).resolve()
    dist_file = Path(sys.modules["ddr_restore.train.distributed"].__file__).resolve()
    for name in _HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            caller = Path(sys._getframe(1).f_code.co_filename).resolve()
            if caller in (trainer_file, dist_file) and getattr(trainer, "_loop_running", False):
                reads.append(trainer.current_iter)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    reduces: List[int] = []
    real_reduce = trainer_mod.all_reduce_sum
    monkeypatch.setattr(trainer_mod, "all_reduce_sum",
                        lambda values, device: reduces.append(trainer.current_iter) or real_reduce(values, device))
    real_step = Trainer._train_step

    def step(self, iteration):
        self._loop_running = True
        try:
            return real_step(self, iteration)
        finally:
            self._loop_running = iteration < 10  # reads after the last step (final hashes) do not count

    monkeypatch.setattr(Trainer, "_train_step", step)
    trainer.run()
    assert reads, "the loss values were never read"
    assert set(reads) <= {5, 10}, f"host reads of loss values after the steps of iterations {sorted(set(reads))}"
    assert set(reduces) <= {5, 10}


def test_callback_gets_every_iteration(tmp_path):
    rec = Recorder()
    train(fast_options(tmp_path, total_iter=5, logger={"print_freq": 4, "save_checkpoint_freq": 0,
                                                       "use_tb_logger": False}), iteration_callback=rec)
    assert sorted(rec.logs) == [1, 2, 3, 4, 5]
    assert set(rec.logs[3]) == {"l_pix", "l_total", "lr"}


# ------------------------------------------------------------------------------------------------------ NaN stop
@pytest.mark.parametrize("first_bad", [2, 7])
def test_nan_names_the_first_bad_iteration_and_nothing_is_saved_after_it(tmp_path, first_bad):
    opt = fast_options(tmp_path, total_iter=12, pixel_opt={"type": "FastTestNaNLoss", "after": first_bad - 1},
                       ema_decay=0, logger={"print_freq": 5, "save_checkpoint_freq": 4, "use_tb_logger": False})
    found = 4 if first_bad < 4 else 8  # the next save point
    with pytest.raises(TrainingDivergedError,
                       match=rf"^iteration {first_bad}: non-finite loss \(l_pix=nan, l_total=nan\) \(found at "
                             rf"iteration {found}\)"):
        train(opt)
    exp = tmp_path / "fast"
    saved = sorted(p.name for p in (exp / "training_states").iterdir())
    assert saved == ([] if first_bad < 4 else ["4.state"])
    for path in (exp / "models").glob("*.pth"):
        assert all(torch.isfinite(v).all() for v in ckpt.safe_load(path)["params"].values())


# ---------------------------------------------------------------------------------------- DDP (2 CPU processes)
_DDP_PARTS = '''
import os
import torch
from torch import nn
from ddr_restore.registry import LOSS_REGISTRY
from ddr_restore.train import trainer

trainer._COMPILE_BACKEND = os.environ.get("FAST_TEST_COMPILE_BACKEND", "inductor")
_CTRL_C = os.environ.get("FAST_TEST_CTRL_C")  # "rank:iteration": that rank gets a Ctrl-C during that iteration
if _CTRL_C:
    _rank, _iteration = (int(v) for v in _CTRL_C.split(":"))
    _real_step = trainer.Trainer._train_step

    def _step(self, iteration):
        _real_step(self, iteration)
        if self.dist.rank == _rank and iteration == _iteration:
            self._interrupt.request()  # what the first SIGINT does

    trainer.Trainer._train_step = _step


@LOSS_REGISTRY.register("RankNaNLoss")
class RankNaNLoss(nn.Module):
    """L1 that turns NaN from iteration ``from_iter`` on, on rank ``rank`` only."""

    def __init__(self, rank: int = 1, from_iter: int = 3) -> None:
        super().__init__()
        self.rank, self.from_iter, self.calls = rank, from_iter, 0

    def forward(self, pred, target):
        self.calls += 1
        loss = (pred - target).abs().mean()
        bad = int(os.environ.get("RANK", 0)) == self.rank and self.calls >= self.from_iter
        return loss * float("nan") if bad else loss
'''


def _torchrun(tmp_path: Path, opt: dict, **env_extra: str) -> "subprocess.CompletedProcess[str]":
    import yaml

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "fast_ddp_parts.py").write_text(_DDP_PARTS)
    (tmp_path / "ddp.yml").write_text(yaml.safe_dump(opt))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(repo), str(tmp_path)]),
           "FAST_TEST_COMPILE_BACKEND": "aot_eager", **env_extra}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(repo / "train.py"), "-opt", "ddp.yml", "--launcher", "pytorch"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def _ddp_options(tmp_path: Path, logger: dict, **train_extra) -> dict:
    """Options for 2 CPU ranks on 8 small PNG pairs written to ``tmp_path/data``."""
    import numpy as np

    from ddr_restore.imageio import write_image

    rng = np.random.default_rng(0)
    for i in range(8):
        gt = rng.random((40, 40, 3)).astype(np.float32)
        write_image(tmp_path / "data" / "target" / f"{i}.png", gt)
        write_image(tmp_path / "data" / "input" / f"{i}.png", np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1))
    opt = fast_options(Path("experiments"), name="ddp", ema_decay=0.5, logger=logger, **train_extra)
    opt["imports"] = ["fast_ddp_parts"]
    opt["datasets"]["train"] = {"type": "PairedImageDataset", "dataroot_lq": "data/input", "dataroot_gt": "data/target",
                                "gt_size": 32, "use_hflip": True, "batch_size_per_gpu": 2}
    return opt


@pytest.mark.slow
def test_ddp_with_fast_options_and_sparse_syncs_keeps_ranks_identical(tmp_path):
    """bf16 + channels_last + compile (aot_eager) + accumulation under DDP, losses read every 3 iterations only."""
    opt = _ddp_options(tmp_path, {"print_freq": 3, "save_checkpoint_freq": 4, "use_tb_logger": False},
                       amp="bf16", channels_last=True, compile=True, accumulate_grad_batches=2)
    proc = _torchrun(tmp_path, opt)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    log = next((tmp_path / "experiments" / "ddp").glob("train_ddp_*.log")).read_text()
    m = re.search(r"final weights sha256 on 2 ranks: (\w+), (\w+) \((\w+)\)", log)
    assert m and m.group(1) == m.group(2) and m.group(3) == "identical", log[-2000:]
    assert "torch.compile: default" in log and "bf16 autocast" in log
    assert sorted(int(x) for x in re.findall(r"\[epoch \d+, iter (\d+)/6", log)) == [3, 6]
    exp = tmp_path / "experiments" / "ddp"
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["4.state", "6.state"]
    assert all(torch.isfinite(v).all() for v in _weights(exp / "models" / "net_g_6.pth")["params"].values())


@pytest.mark.slow
def test_ddp_ctrl_c_on_one_rank_stops_every_rank_at_the_next_sync_point(tmp_path):
    """Rank 1 alone is interrupted during iteration 2; the ranks agree at the print point 4 and save iteration 4."""
    opt = _ddp_options(tmp_path, {"print_freq": 4, "save_checkpoint_freq": 100, "use_tb_logger": False},
                       total_iter=10)
    proc = _torchrun(tmp_path, opt, FAST_TEST_CTRL_C="1:2")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Interrupted at iteration 4" in out, out[-3000:]
    exp = tmp_path / "experiments" / "ddp"
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["4.state"]
    assert ckpt.safe_load(exp / "training_states" / "4.state")["iter"] == 4


@pytest.mark.slow
def test_ddp_nan_on_one_rank_stops_every_rank_at_the_first_bad_iteration(tmp_path):
    """Rank 1 alone goes NaN at iteration 3; the ranks synchronise at 4 (a save): both stop, naming iteration 3."""
    opt = _ddp_options(tmp_path, {"print_freq": 5, "save_checkpoint_freq": 2, "use_tb_logger": False},
                       pixel_opt={"type": "RankNaNLoss", "rank": 1, "from_iter": 3})
    proc = _torchrun(tmp_path, opt)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    # both ranks report it (neither hangs in a collective); counted in the text, not by line, since the two
    # processes write to one pipe and their lines can interleave
    assert out.count("ddr-train: error: iteration") == 2, out[-3000:]
    assert out.count("ddr-train: error: iteration 3: non-finite loss (l_pix=nan, l_total=nan) (found at iteration "
                     "4)") == 2, out[-3000:]
    exp = tmp_path / "experiments" / "ddp"
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["2.state"]


# --------------------------------------------------------------------------------------------------- CUDA only
def cuda_options(root: Path, **train_extra) -> dict:
    opt = fast_options(root, **train_extra)
    opt["num_gpu"] = 1
    return opt


@needs_cuda
def test_fused_adamw_is_the_default_on_cuda(tmp_path):
    trainer = Trainer(cuda_options(tmp_path / "a", total_iter=2))
    result = trainer.run()
    assert trainer.optimizer.param_groups[0]["fused"] is True
    assert "optimizer: AdamW (fused)" in _log_text(result)
    opt = cuda_options(tmp_path / "b", total_iter=2)
    opt["train"]["optim_g"]["foreach"] = True  # the user's choice wins
    trainer = Trainer(opt)
    trainer.run()
    assert not trainer.optimizer.param_groups[0].get("fused")


@needs_cuda
@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_switches_during_a_cuda_run_and_restored_after(tmp_path, tf32):
    before = trainer_mod._tf32_flags()
    seen = []
    result = train(cuda_options(tmp_path, total_iter=2, tf32=tf32),
                   iteration_callback=lambda it, logs: seen.append(trainer_mod._tf32_flags()))
    assert set(seen) == {(tf32, tf32)}
    assert trainer_mod._tf32_flags() == before
    assert f"TF32 matmul {'on' if tf32 else 'off'}" in _log_text(result)


@needs_cuda
def test_no_cuda_synchronisation_inside_training_steps(tmp_path, monkeypatch):
    """``torch.cuda.set_sync_debug_mode('error')`` makes any synchronising call inside a step raise."""
    real_step = Trainer._train_step

    def strict_step(self, iteration):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real_step(self, iteration)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(Trainer, "_train_step", strict_step)
    opt = cuda_options(tmp_path, total_iter=6, amp="bf16", channels_last=True, accumulate_grad_batches=2,
                       logger={"print_freq": 3, "save_checkpoint_freq": 3, "use_tb_logger": False})
    opt["datasets"]["train"]["pin_memory"] = True
    train(opt)


@needs_cuda
def test_fp16_trains_with_a_grad_scaler_on_cuda(tmp_path):
    result = train(cuda_options(tmp_path, total_iter=3, amp="fp16"))
    assert "fp16 autocast + GradScaler" in _log_text(result)
    state = ckpt.safe_load(result.experiment_dir / "training_states" / "3.state")
    assert state["scaler"] and state["scaler"]["scale"] > 0
    assert all(torch.isfinite(v).all() for v in _weights(result.checkpoint)["params"].values())


@needs_cuda
@pytest.mark.slow
def test_resume_on_cuda_with_the_fast_path_is_within_amp_tolerance(tmp_path):
    fast = {"amp": "bf16", "channels_last": True, "compile": True, "tf32": True}
    full = train(cuda_options(tmp_path / "a", total_iter=6, **fast))
    train(cuda_options(tmp_path / "b", total_iter=4, **fast))
    resumed = train(cuda_options(tmp_path / "b", total_iter=6, **fast), auto_resume=True)
    a, b = _weights(full.checkpoint), _weights(resumed.checkpoint)
    assert list(a["params"]) == list(b["params"])
    for name, value in a["params"].items():
        torch.testing.assert_close(b["params"][name], value, rtol=2e-2, atol=2e-3)
