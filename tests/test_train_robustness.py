"""Trainer robustness (issue 7): nothing lost, nothing overwritten, one-line user errors, Ctrl-C, --list/--version.

Each test fails on the trainer before issue 7: resuming below the checkpoint overwrote older checkpoints; a failing
validation lost its iteration's checkpoint; option changes on resume were ignored; shape-mismatched weights gave
torch's hundreds of lines; data errors were tracebacks with status 1; Ctrl-C saved nothing.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from ddr_restore.errors import CheckpointError, InputError, MissingPathError
from ddr_restore.imageio import read_image, write_image
from ddr_restore.registry import ARCH_REGISTRY, DATASET_REGISTRY
from ddr_restore.train import checkpoint as ckpt
from ddr_restore.train.entry import main as train_main
from ddr_restore.train.options import OptionsError
from ddr_restore.train.trainer import TrainingInterrupted, train

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ test-only components
@ARCH_REGISTRY.register("RobustNet")
class RobustNet(nn.Module):
    """Residual 2-conv net with dropout (training randomness that a resume must restore)."""

    size_multiple = 1

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Dropout(0.1),
                                  nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@DATASET_REGISTRY.register("RobustPairs")
class RobustPairs(torch.utils.data.Dataset):
    """Noisy copies of fixed random images; ``fail_at`` makes reading that item raise (a corrupt file)."""

    def __init__(self, phase: str = "train", length: int = 4, size: int = 32, crop: int = 16, fail_at: int = -1,
                 name: str = "") -> None:
        g = torch.Generator().manual_seed(11 if phase == "train" else 12)
        self.gt = torch.rand(length, 3, size, size, generator=g)
        self.lq = (self.gt + 0.1 * torch.randn(length, 3, size, size, generator=g)).clamp(0, 1)
        self.phase, self.crop, self.fail_at = phase, crop, fail_at

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        if i == self.fail_at:
            raise InputError(f"bad{i}.png: truncated PNG (simulated)")
        lq, gt = self.lq[i], self.gt[i]
        if self.phase == "train":
            top, left = torch.randint(0, lq.shape[1] - self.crop + 1, (2,)).tolist()
            window = (slice(None), slice(top, top + self.crop), slice(left, left + self.crop))
            lq, gt = lq[window], gt[window]
        return {"lq": lq.clone(), "gt": gt.clone(), "lq_path": f"img{i}.png"}


def options(root: Path, total_iter: int = 8, **extra) -> dict:
    opt = {
        "name": "robust",
        "num_gpu": 0,
        "manual_seed": 7,
        "datasets": {
            "train": {"type": "RobustPairs", "batch_size_per_gpu": 2, "length": 4},
            "val": {"type": "RobustPairs", "length": 2, "name": "v"},
        },
        "network_g": {"type": "RobustNet", "width": 4},
        "path": {"experiments_root": str(root)},
        "train": {
            "optim_g": {"type": "Adam", "lr": 1e-2},
            "scheduler": {"type": "TrueCosineAnnealingLR", "T_max": 8, "eta_min": 1e-5},
            "total_iter": total_iter,
            "ema_decay": 0.5,
            "pixel_opt": {"type": "L1Loss"},
        },
        "val": {"val_freq": 4, "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": 0}}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 4, "use_tb_logger": False},
    }
    for key, value in extra.items():
        node = opt
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return opt


def _snapshot(folder: Path) -> Dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _weights_equal(a: Path, b: Path) -> bool:
    wa, wb = ckpt.safe_load(a), ckpt.safe_load(b)
    return all(torch.equal(wa[k][n], wb[k][n]) for k in ("params", "params_ema") for n in wa[k])


# ------------------------------------------------------------------------------------------- 1. total_iter on resume
@pytest.mark.parametrize("new_total", [6, 8])
def test_resume_with_total_iter_not_above_checkpoint_writes_nothing(tmp_path, new_total):
    train(options(tmp_path, total_iter=8))
    exp = tmp_path / "robust"
    before = _snapshot(exp)
    with pytest.raises(InputError) as info:
        train(options(tmp_path, total_iter=new_total), auto_resume=True)
    message = str(info.value)
    assert f"train.total_iter={new_total}" in message and "(8)" in message and "8.state" in message
    assert "above 8" in message and "nothing was written" in message
    assert _snapshot(exp) == before  # no checkpoint re-saved, no log file, no option file rewritten


def test_resume_summary_names_the_true_iterations(tmp_path, monkeypatch, capsys):
    (tmp_path / "o.yml").write_text(yaml.safe_dump(options(tmp_path, total_iter=4)))
    monkeypatch.chdir(tmp_path)
    assert train_main(["-opt", "o.yml"]) == 0
    assert "Done: 4 iterations in" in capsys.readouterr().out
    assert train_main(["-opt", "o.yml", "--set", "train.total_iter=6", "--auto_resume"]) == 0
    out = capsys.readouterr().out
    assert "Done: 6 iterations (resumed at iteration 4) in" in out
    log = sorted((tmp_path / "robust").glob("train_robust_*.log"))[-1].read_text()
    assert "training finished at iteration 6 (this run: iterations 5-6)" in log
    assert "option changed since the checkpoint (applied): train.total_iter: 4 -> 6" in log


# --------------------------------------------------------------------------------- 2. save before validating
def test_failing_validation_keeps_the_checkpoint_and_is_redone_on_resume(tmp_path):
    bad = options(tmp_path, total_iter=8, datasets__val__fail_at=1)
    with pytest.raises(InputError, match="bad1.png"):
        train(bad)
    exp = tmp_path / "robust"
    assert (exp / "models" / "net_g_4.pth").is_file() and (exp / "training_states" / "4.state").is_file()
    state = ckpt.safe_load(exp / "training_states" / "4.state")
    assert state["iter"] == 4 and state["val_pending"] is True and state["best_metrics"] == {}
    log = next(exp.glob("train_robust_*.log")).read_text()
    assert "bad1.png" in log and "Traceback" in log  # the log file keeps the traceback

    # The bad file fixed (the set's option unchanged: fail_at is a test switch, so drop it by hand in the state
    # check too): the resumed run validates iteration 4 first, then goes on; its record equals a clean run's.
    fixed = options(tmp_path, total_iter=8)
    res = train(fixed, auto_resume=True)
    clean = train(options(tmp_path / "clean", total_iter=8))
    assert res.best_metrics == clean.best_metrics and res.metrics == clean.metrics
    log = sorted(exp.glob("train_robust_*.log"))[-1].read_text()
    assert "validating iteration 4 first" in log and "validation v @ iter 4" in log
    assert _weights_equal(res.checkpoint, clean.checkpoint)


def test_state_written_before_validation_holds_that_validations_best(tmp_path):
    res = train(options(tmp_path, total_iter=8))
    for it in (4, 8):
        state = ckpt.safe_load(tmp_path / "robust" / "training_states" / f"{it}.state")
        assert state["val_pending"] is False
        best = state["best_metrics"]["v"]["psnr"]
        assert best["iter"] <= it
    assert state["best_metrics"] == res.best_metrics


# ------------------------------------------------------------------------------------ 4. option changes on resume
def test_unsound_option_changes_are_refused_with_the_list(tmp_path):
    train(options(tmp_path, total_iter=4))
    exp = tmp_path / "robust"
    before = _snapshot(exp)
    changed = options(tmp_path, total_iter=6, train__scheduler={"type": "TrueCosineAnnealingLR", "T_max": 9,
                                                                  "eta_min": 1e-5})
    changed["network_g"]["width"] = 8
    with pytest.raises(InputError) as info:
        train(changed, auto_resume=True)
    message = str(info.value)
    assert "train.scheduler.T_max: 8 -> 9" in message and "network_g.width: 4 -> 8" in message
    assert "train.total_iter" not in message  # an increase is applied, not refused
    assert _snapshot(exp) == before

    # A state written before options were stored in it: the option file copied to the folder is read instead.
    state_path = exp / "training_states" / "4.state"
    state = ckpt.safe_load(state_path)
    del state["options"]
    ckpt.atomic_save(state, state_path)
    with pytest.raises(InputError, match=r"train\.scheduler\.T_max: 8 -> 9"):
        train(changed, auto_resume=True, options_name="robust.yml")


def test_sound_option_changes_are_applied_and_seed_is_kept(tmp_path):
    full = train(options(tmp_path / "full", total_iter=8))
    train(options(tmp_path / "part", total_iter=4))
    resumed_opt = options(tmp_path / "part", total_iter=8, logger__print_freq=3, val__val_freq=8)
    resumed_opt["manual_seed"] = None  # the checkpoint's seed is used
    res = train(resumed_opt, auto_resume=True)
    log = sorted((tmp_path / "part" / "robust").glob("train_robust_*.log"))[-1].read_text()
    assert "logger.print_freq: 1 -> 3" in log and "val.val_freq: 4 -> 8" in log
    assert "manual_seed: null -> the checkpoint's seed 7" in log
    assert _weights_equal(res.checkpoint, full.checkpoint)  # resume stays exact


# ------------------------------------------------------------------------------------ 5. checkpoint messages
def _nafnet(width: int):
    from ddr_restore.archs import NAFNet

    return NAFNet(width=width, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])


def test_shape_mismatch_is_one_paragraph_with_files_shapes_and_hint(tmp_path):
    exp = tmp_path / "experiments" / "small"
    (exp / "small_opts.yml").parent.mkdir(parents=True)
    (exp / "small_opts.yml").write_text("name: small\n")
    path = exp / "models" / "net_g_4.pth"
    small = _nafnet(8)
    ckpt.atomic_save({"params": small.state_dict()}, path)
    big = _nafnet(16)
    with pytest.raises(CheckpointError) as info:
        ckpt.load_network(big, path, "params", strict=True, options_file="options/big.yml")
    message = str(info.value)
    assert "\n" not in message and len(message) < 1500
    assert str(path) in message and "options/big.yml" in message
    assert str(exp / "small_opts.yml") in message and "experiments/<name>/<file>.yml" in message
    own, theirs = big.state_dict(), small.state_dict()
    differing = [k for k in own if own[k].shape != theirs[k].shape]
    for key in differing[:3]:
        assert f"{key}: checkpoint {list(theirs[key].shape)} vs network {list(own[key].shape)}" in message
    assert differing[3] not in message and f"and {len(differing) - 3} more" in message
    # positional call of the old signature still works, and strict=False still needs equal shapes
    with pytest.raises(CheckpointError):
        ckpt.load_network(big, path, "params", False)
    assert ckpt.load_network(_nafnet(8), path) == ([], [])


def test_missing_keys_and_wrong_param_key_are_checkpoint_errors(tmp_path):
    path = tmp_path / "net.pth"
    ckpt.atomic_save({"params": _nafnet(8).state_dict()}, path)
    deeper = __import__("ddr_restore.archs", fromlist=["NAFNet"]).NAFNet(
        width=8, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1])
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: .*\(and \d+ more\)"):
        ckpt.load_network(deeper, path)
    with pytest.raises(CheckpointError, match=r"no 'params_ema' entry \(found: params\)"):
        ckpt.load_network(_nafnet(8), path, "params_ema")


_RANDOM = np.random.default_rng(0).bytes(512)


@pytest.mark.parametrize("content", [_RANDOM, b"", b"PK\x03\x04" + _RANDOM[:64], b"\x80\x02}q\x00"],
                         ids=["random-bytes", "empty", "zip-header-only", "truncated-pickle"])
def test_corrupt_checkpoints_are_checkpoint_errors_without_unsafe_advice(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        ckpt.safe_load(path)
    message = str(info.value)
    assert str(path) in message and "weights_only=False" not in message and "\n" not in message
    good = tmp_path / "good.pth"
    ckpt.atomic_save({"params": {"w": torch.ones(3)}}, good)
    good.write_bytes(good.read_bytes()[:-200])  # truncated
    with pytest.raises(CheckpointError, match="good.pth"):
        ckpt.safe_load(good)
    with pytest.raises(MissingPathError):
        ckpt.safe_load(tmp_path / "none.pth")


def test_resume_into_other_network_options_names_both_files(tmp_path):
    train(options(tmp_path, total_iter=4))
    exp = tmp_path / "robust"
    state_path = exp / "training_states" / "4.state"
    state = ckpt.safe_load(state_path)
    del state["options"]  # an old state, and no option file copy to compare with: the weights tell
    ckpt.atomic_save(state, state_path)
    for yml in exp.glob("*.yml"):
        yml.unlink()
    wider = options(tmp_path, total_iter=6, network_g__width=6)
    with pytest.raises(CheckpointError, match=r"net_g_4\.pth does not fit the RobustNet built from option file "
                                              r"wider\.yml: 3 tensor\(s\) differ in shape: body\.0\.weight: "
                                              r"checkpoint \[4, 3, 3, 3\] vs network \[6, 3, 3, 3\]"):
        train(wider, auto_resume=True, options_name="wider.yml")


# -------------------------------------------------------------------------------------- 7. one-line user errors
def _cli(tmp_path, monkeypatch, opt, *extra):
    (tmp_path / "o.yml").write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        train_main(["-opt", "o.yml", *extra])
    return info.value.code


def test_data_errors_are_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    opt = options(tmp_path, datasets__train__batch_size_per_gpu=8)  # 4 items, batch 8
    assert _cli(tmp_path, monkeypatch, opt) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddr-train: error: datasets.train: 4 samples per process is less than batch_size_per_gpu 8")
    assert "Traceback" not in err and err.count("\n") == 1
    assert _cli(tmp_path, monkeypatch, opt, "--debug") == 2
    assert "Traceback" in capsys.readouterr().err

    opt = options(tmp_path)
    opt["datasets"]["val"] = {"type": "PairedImageDataset", "name": "v", "dataroot_lq": "nowhere/input",
                              "dataroot_gt": "nowhere/target"}
    assert _cli(tmp_path, monkeypatch, opt) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddr-train: error: datasets.val: ") and "nowhere" in err and "Traceback" not in err
    assert issubclass(OptionsError, InputError) and issubclass(OptionsError, ValueError)


def test_options_a_part_cannot_be_built_with_are_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    """A wrongly typed option reaches a constructor as a TypeError; it is still the user's error: one line, exit 2,
    nothing written (it was a traceback for ``pretrained: 5``)."""
    from ddr_restore.errors import OptionTypeError

    opt = options(tmp_path)
    opt["train"]["ddr_opt"] = {"type": "DDRLoss", "loss_weight": 1.0, "pretrained": 5}
    assert _cli(tmp_path, monkeypatch, opt) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddr-train: error: train.ddr_opt: cannot build loss 'DDRLoss'") and "got 5" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "robust").exists()  # the experiment folder (experiments_root is tmp_path)
    assert issubclass(OptionTypeError, TypeError)  # callers catching TypeError still do


# -------------------------------------------------------------------------------------------------- 8. Ctrl-C
def test_interrupt_saves_current_iteration_and_resume_is_exact(tmp_path):
    full = train(options(tmp_path / "full", total_iter=8))

    def ctrl_c_at_5(iteration, logs):
        if iteration == 5:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as info:
        train(options(tmp_path / "part", total_iter=8), iteration_callback=ctrl_c_at_5)
    exp = tmp_path / "part" / "robust"
    assert info.value.iteration == 5 and info.value.state == exp / "training_states" / "5.state"
    assert ckpt.safe_load(info.value.state)["iter"] == 5 and info.value.checkpoint.is_file()
    log = next(exp.glob("train_robust_*.log")).read_text()
    assert "training interrupted (Ctrl-C) at iteration 5 of 8" in log

    # leftovers of a kill inside atomic_save are removed (and logged) when the run resumes
    stale = [exp / "models" / ".net_g_6.pth.x1y2.tmp", exp / "training_states" / ".6.state.a9b8.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    res = train(options(tmp_path / "part", total_iter=8), auto_resume=True)
    assert res.start_iter == 5 and not any(p.exists() for p in stale)
    log = sorted(exp.glob("train_robust_*.log"))[-1].read_text()
    assert all(f"removed {p}" in log for p in stale)
    assert _weights_equal(res.checkpoint, full.checkpoint)


def test_second_ctrl_c_during_the_save_aborts_without_partial_files(tmp_path, monkeypatch):
    real_save = ckpt.atomic_save
    presses = []

    def ctrl_c_at_3(iteration, logs):
        if iteration == 3:
            signal.raise_signal(signal.SIGINT)  # the first Ctrl-C: finish iteration 3, then save
            presses.append("the first Ctrl-C did not stop the iteration")

    def save_with_second_ctrl_c(obj, path):
        if Path(path).name == "net_g_3.pth":
            signal.raise_signal(signal.SIGINT)  # the second Ctrl-C, while saving
        return real_save(obj, path)

    monkeypatch.setattr(ckpt, "atomic_save", save_with_second_ctrl_c)
    with pytest.raises(KeyboardInterrupt) as info:
        train(options(tmp_path, total_iter=8, logger__save_checkpoint_freq=2), iteration_callback=ctrl_c_at_3)
    assert presses and not isinstance(info.value, TrainingInterrupted)
    exp = tmp_path / "robust"  # iteration 2's checkpoint intact; nothing of iteration 3, no temporary file
    assert sorted(p.name for p in (exp / "models").iterdir()) == ["net_g_2.pth", "net_g_latest.pth"]
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["2.state"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler was removed again


def _write_pairs(folder: Path, n: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        gt = rng.random((size, size, 3)).astype(np.float32)
        write_image(folder / "target" / f"{i:03d}.png", gt)
        write_image(folder / "input" / f"{i:03d}.png", np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1))


def _cli_options(total_iter: int) -> dict:
    return {
        "name": "sig",
        "num_gpu": 0,
        "manual_seed": 1,
        "datasets": {"train": {"type": "PairedImageDataset", "dataroot_lq": "data/input",
                               "dataroot_gt": "data/target", "gt_size": 32, "batch_size_per_gpu": 2}},
        "network_g": {"type": "NAFNet", "width": 4, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]},
        "train": {"optim_g": {"type": "Adam", "lr": 1e-3}, "total_iter": total_iter, "pixel_opt": {"type": "L1Loss"}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 1000, "use_tb_logger": False},
    }


@pytest.mark.slow
def test_sigint_on_the_command_line_saves_prints_resume_command_and_exits_130(tmp_path):
    _write_pairs(tmp_path / "data", 4, 40, 0)
    (tmp_path / "sig.yml").write_text(yaml.safe_dump(_cli_options(100000)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "train.py"), "-opt", "sig.yml", "--set", "logger.print_freq=1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    seen = ""
    while time.time() < deadline:  # wait until training is under way
        line = proc.stderr.readline()
        seen += line
        if re.search(r"iter 3/100000", line) or proc.poll() is not None:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    err = seen + err
    assert proc.returncode == 130, err[-3000:]
    m = re.search(r"Interrupted at iteration (\d+); saved (\S+) and (\S+)\.\nTo continue: (.+)", err)
    assert m, err[-3000:]
    iteration = int(m.group(1))
    exp = tmp_path / "experiments" / "sig"
    assert Path(m.group(3)) == exp / "training_states" / f"{iteration}.state" and Path(m.group(3)).is_file()
    assert ckpt.safe_load(m.group(3))["iter"] == iteration and Path(m.group(2)).is_file()
    resume = shlex.split(m.group(4))
    assert resume[-1] == "--auto_resume" and resume[-3:-1] == ["--set", "logger.print_freq=1"]
    assert "Traceback" not in err
    # the printed command continues the run (to a nearer end for the test)
    resume = [sys.executable if a == "python" else a for a in resume]
    done = subprocess.run(resume + ["--set", f"train.total_iter={iteration + 2}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Done: {iteration + 2} iterations (resumed at iteration {iteration})" in done.stdout


# --------------------------------------------------------------------------------------------- 10. --list/--version
def test_list_and_version(capsys):
    from ddr_restore import __version__

    assert train_main(["--list", "archs"]) == 0
    names = capsys.readouterr().out.split("\n")
    assert "NAFNet" in names and "Restormer" in names and "RobustNet" in names
    assert train_main(["--list", "schedulers"]) == 0
    assert "TrueCosineAnnealingLR" in capsys.readouterr().out.split("\n")
    for kind, expected in (("losses", "L1Loss"), ("datasets", "PairedImageDataset"), ("metrics", "calculate_psnr"),
                           ("optimizers", "AdamW")):
        assert train_main(["--list", kind]) == 0
        assert expected in capsys.readouterr().out.split("\n")
    with pytest.raises(SystemExit) as info:
        train_main(["--version"])
    assert info.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        train_main([])  # -opt is still required for training
    assert info.value.code == 2 and "-opt" in capsys.readouterr().err


# ------------------------------------------------------------------------------- 11. input PSNR next to output
def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_validation_reports_input_psnr_and_draws_zoomed_before_after(tmp_path, monkeypatch, capsys):
    _write_pairs(tmp_path / "data", 4, 40, 0)
    _write_pairs(tmp_path / "val", 2, 64, 1)
    opt = _cli_options(4)
    opt["datasets"]["val"] = {"type": "PairedImageDataset", "name": "v", "dataroot_lq": "val/input",
                              "dataroot_gt": "val/target"}
    opt["val"] = {"val_freq": 2, "metrics": {"psnr": {"type": "calculate_psnr"}}}
    opt["logger"]["use_tb_logger"] = True
    (tmp_path / "v.yml").write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)
    assert train_main(["-opt", "v.yml"]) == 0
    out = capsys.readouterr().out

    def u8(path):
        return np.round(read_image(path) * 255).astype(np.uint8)

    lqs = [u8(tmp_path / "val" / "input" / f"{i:03d}.png") for i in range(2)]
    gts = [u8(tmp_path / "val" / "target" / f"{i:03d}.png") for i in range(2)]
    input_psnr = float(np.mean([_psnr(a, b) for a, b in zip(lqs, gts)]))
    exp = tmp_path / "experiments" / "sig"
    log = next(exp.glob("train_sig_*.log")).read_text()
    m = re.search(r"validation v @ iter 4: psnr: ([\d.]+) \(input ([\d.]+), ([+-][\d.]+) dB", log)
    assert m and float(m.group(2)) == pytest.approx(input_psnr, abs=1e-4)
    assert float(m.group(3)) == pytest.approx(float(m.group(1)) - input_psnr, abs=2e-4)
    summary = re.search(r"validation v: psnr ([\d.]+) \(input ([\d.]+), ([+-][\d.]+) dB\)", out)
    assert summary and float(summary.group(2)) == pytest.approx(input_psnr, abs=1e-4)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(exp / "tb_logger"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("metrics/v/psnr_input")] == pytest.approx([input_psnr] * 2, abs=1e-4)

    # before/after: full 64 px images (input | restored | target), then a 3x nearest zoom of a crop of each
    fig = u8(exp / "visualization" / "before_after.png")
    h, w = fig.shape[:2]
    assert np.array_equal(fig[22:64, w - 64:], gts[0][22:]) and h > 2 * 64 - 10 and w < 3 * 64 + 20  # (label above)
    zoomed = fig[h - 64:, w - 64:]
    crop = zoomed[::3, ::3]
    assert np.array_equal(np.repeat(np.repeat(crop, 3, 0), 3, 1)[:64, :64], zoomed)
    size = crop.shape[0]
    assert any(np.array_equal(gts[0][t:t + size, l:l + size], crop)
               for t in range(64 - size + 1) for l in range(64 - size + 1))
