"""Trainer: a step lowers the loss, atomic checkpoints, exact resume, NaN stop, end-to-end layout and TensorBoard."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from ddr_restore.errors import CheckpointError
from ddr_restore.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY
from ddr_restore.train import checkpoint as ckpt
from ddr_restore.train.entry import main as train_main
from ddr_restore.train.trainer import TrainingDivergedError, train


# ------------------------------------------------------------------------------------------ test-only components
@ARCH_REGISTRY.register("TrainTestNet")
class TrainTestNet(nn.Module):
    """Residual 2-conv net with dropout (uses the global torch RNG, so resume must restore it)."""

    size_multiple = 1

    def __init__(self, width: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@DATASET_REGISTRY.register("TrainTestPairs")
class TrainTestPairs(torch.utils.data.Dataset):
    """Fixed random images; training items get a random crop (torch RNG), flip (python RNG) and noise (numpy RNG)."""

    def __init__(self, phase: str = "train", length: int = 6, size: int = 24, crop: int = 16, augment: bool = True,
                 name: str = "") -> None:
        g = torch.Generator().manual_seed(123)
        self.gt = torch.rand(length, 3, size, size, generator=g)
        self.lq = (self.gt + 0.1 * torch.randn(length, 3, size, size, generator=g)).clamp(0, 1)
        self.phase, self.crop, self.augment = phase, crop, augment

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        lq, gt = self.lq[i], self.gt[i]
        if self.phase == "train" and self.augment:
            top, left = torch.randint(0, lq.shape[1] - self.crop + 1, (2,)).tolist()
            lq, gt = lq[:, top:top + self.crop, left:left + self.crop], gt[:, top:top + self.crop, left:left + self.crop]
            if random.random() < 0.5:
                lq, gt = lq.flip(-1), gt.flip(-1)
            lq = (lq + torch.from_numpy(np.random.normal(0, 0.01, lq.shape).astype(np.float32))).clamp(0, 1)
        return {"lq": lq.clone(), "gt": gt.clone(), "lq_path": f"img{i}.png"}


@LOSS_REGISTRY.register("TrainTestTVLoss")
class TrainTestTVLoss(nn.Module):
    """A cheap no-reference loss standing in for DDR (forward(pred) only)."""

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred: torch.Tensor) -> torch.Tensor:
        return self.loss_weight * (pred[..., 1:, :] - pred[..., :-1, :]).abs().mean()


@LOSS_REGISTRY.register("TrainTestNaNLoss")
class TrainTestNaNLoss(nn.Module):
    """MSE that turns NaN from call number ``after + 1`` on."""

    def __init__(self, after: int = 3) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = ((pred - target) ** 2).mean()
        return loss * float("nan") if self.calls > self.after else loss


def tiny_options(root: Path, **train_extra) -> dict:
    opt = {
        "name": "tiny",
        "num_gpu": 0,
        "manual_seed": 7,
        "datasets": {
            "train": {"type": "TrainTestPairs", "batch_size_per_gpu": 2, "length": 6},
            "val": {"type": "TrainTestPairs", "length": 2, "name": "tinyval"},
        },
        "network_g": {"type": "TrainTestNet", "width": 8, "dropout": 0.2},
        "path": {"experiments_root": str(root)},
        "train": {
            "optim_g": {"type": "AdamW", "lr": 1e-2, "weight_decay": 1e-3, "betas": [0.9, 0.9]},
            "scheduler": {"type": "TrueCosineAnnealingLR", "T_max": 8, "eta_min": 1e-5},
            "total_iter": 8,
            "warmup_iter": 2,
            "ema_decay": 0.9,
            "use_grad_clip": True,
            "grad_clip_norm": 0.5,
            "accumulate_grad_batches": 2,
            "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
            "ddr_opt": {"type": "TrainTestTVLoss", "loss_weight": 0.1},
        },
        "val": {"val_freq": 4, "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": 0}}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": False},
    }
    opt["train"].update(train_extra)
    return opt


class SimulatedKill(Exception):
    """Stands in for SIGKILL: nothing is saved (unlike Ctrl-C, which saves the current iteration)."""


class Recorder:
    def __init__(self, stop_at: int = 0) -> None:
        self.logs: Dict[int, Dict[str, float]] = {}
        self.stop_at = stop_at

    def __call__(self, iteration: int, logs: Dict[str, float]) -> None:
        self.logs[iteration] = logs
        if iteration == self.stop_at:
            raise SimulatedKill(f"simulated kill at iteration {iteration}")


# ------------------------------------------------------------------------------------------------------- tests
def test_train_step_lowers_loss_on_fixed_batch(tmp_path):
    opt = tiny_options(tmp_path, total_iter=3, warmup_iter=-1, ema_decay=0, use_grad_clip=False,
                       accumulate_grad_batches=1, scheduler=None, ddr_opt=None)
    opt["datasets"] = {"train": {"type": "TrainTestPairs", "length": 1, "batch_size_per_gpu": 1, "augment": False}}
    opt["network_g"]["dropout"] = 0.0
    opt["train"]["optim_g"] = {"type": "Adam", "lr": 1e-3}
    opt["val"] = None
    rec = Recorder()
    result = train(opt, iteration_callback=rec)
    # independent check of the first loss: L1 between the initial net's output and gt, recomputed here
    ds = TrainTestPairs(length=1, augment=False)
    torch.manual_seed(7)  # the trainer seeds with manual_seed before building the network
    net = TrainTestNet(8).eval()
    with torch.no_grad():
        l1 = (net(ds.lq[:1]) - ds.gt[:1]).abs().mean().item()
    assert rec.logs[1]["l_pix"] == pytest.approx(l1, rel=1e-5)
    assert rec.logs[2]["l_total"] < rec.logs[1]["l_total"] and rec.logs[3]["l_total"] < rec.logs[2]["l_total"]
    assert result.before_after is None and result.checkpoint.is_file()


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "models" / "net_g_1.pth"
    ckpt.atomic_save({"params": {"w": torch.ones(2)}}, target)
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_save({"params": {"w": torch.zeros(2)}}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in target.parent.iterdir()) == ["net_g_1.pth"]
    assert torch.equal(ckpt.safe_load(target)["params"]["w"], torch.ones(2))


def test_weights_only_loading_rejects_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"params": {"w": torch.ones(1)}, "obj": Recorder()}, path)
    with pytest.raises(CheckpointError, match="evil.pth") as info:
        ckpt.safe_load(path)
    assert "weights_only=False" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ckpt.safe_load(tmp_path / "nope.pth")


def test_find_latest_state_skips_incomplete(tmp_path):
    states, models = tmp_path / "training_states", tmp_path / "models"
    for it in (2, 4):
        ckpt.atomic_save({"iter": it}, states / f"{it}.state")
    ckpt.atomic_save({"params": {}}, models / "net_g_2.pth")  # 4 has no network file: incomplete
    (states / "6.state").write_bytes(b"garbage")  # unreadable
    (models / "net_g_6.pth").write_bytes(b"garbage")
    (states / ".8.state.abc.tmp").write_bytes(b"")  # temp file of an interrupted write
    assert ckpt.find_latest_state(states, models) == (2, states / "2.state")
    assert ckpt.find_latest_state(tmp_path / "none", models) is None


def test_resume_repeats_uninterrupted_losses(tmp_path):
    full = Recorder()
    res_full = train(tiny_options(tmp_path / "a"), iteration_callback=full)

    interrupted = Recorder(stop_at=5)  # checkpoints at 2 and 4; killed during iteration 5's bookkeeping
    with pytest.raises(SimulatedKill):
        train(tiny_options(tmp_path / "b"), iteration_callback=interrupted)
    resumed = Recorder()
    res = train(tiny_options(tmp_path / "b"), auto_resume=True, iteration_callback=resumed)
    assert sorted(resumed.logs) == [5, 6, 7, 8]  # continued after the last complete checkpoint (4)
    for it in range(5, 9):
        for key in ("l_pix", "l_ddr", "l_total", "lr"):
            assert resumed.logs[it][key] == pytest.approx(full.logs[it][key], rel=1e-6, abs=1e-9), (it, key)
    a = ckpt.safe_load(res_full.checkpoint)
    b = ckpt.safe_load(res.checkpoint)
    for key in ("params", "params_ema"):
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], rtol=1e-6, atol=1e-7)
    state = ckpt.safe_load(res.experiment_dir / "training_states" / "8.state")
    assert state["iter"] == 8 and state["epoch"] == 5 and state["best_metrics"]["tinyval"]["psnr"]["iter"] in (4, 8)
    # resuming does not archive the folder; the run has two log files (first run + resume)
    assert len(list(res.experiment_dir.glob("train_tiny_*.log"))) == 2
    assert not list((tmp_path / "b").glob("tiny_archived_*"))


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    opt = tiny_options(tmp_path, pixel_opt={"type": "TrainTestNaNLoss", "after": 2}, accumulate_grad_batches=1,
                       ddr_opt=None)
    with pytest.raises(TrainingDivergedError, match=r"iteration 3: non-finite loss \(l_pix=nan.*net_g_2\.pth"):
        train(opt)
    exp = tmp_path / "tiny"
    assert sorted(p.name for p in (exp / "models").iterdir()) == ["net_g_2.pth", "net_g_latest.pth"]
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["2.state"]
    latest, two = ckpt.safe_load(exp / "models" / "net_g_latest.pth"), ckpt.safe_load(exp / "models" / "net_g_2.pth")
    for name, value in two["params"].items():
        assert torch.isfinite(value).all() and torch.equal(latest["params"][name], value)


def test_fresh_run_archives_existing_folder(tmp_path):
    opt = tiny_options(tmp_path, total_iter=1)
    opt["val"] = None
    train(opt)
    (tmp_path / "tiny" / "marker.txt").write_text("old run")
    train(opt)
    archived = list(tmp_path.glob("tiny_archived_*"))
    assert len(archived) == 1 and (archived[0] / "marker.txt").read_text() == "old run"
    assert not (tmp_path / "tiny" / "marker.txt").exists()


def _write_pairs(folder: Path, n: int, size: int, seed: int) -> None:
    from ddr_restore.imageio import write_image

    rng = np.random.default_rng(seed)
    for i in range(n):
        gt = rng.random((size, size, 3)).astype(np.float32)
        lq = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1)
        write_image(folder / "target" / f"{i:03d}.png", gt)
        write_image(folder / "input" / f"{i:03d}.png", lq)


@pytest.mark.slow
def test_end_to_end_cli_layout_and_tensorboard(tmp_path, monkeypatch, capsys):
    """Real NAFNet + PairedImageDataset + PSNRLoss + DDRLoss (random small CLIP) through the CLI."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _write_pairs(tmp_path / "data" / "train", 4, 40, 0)
    _write_pairs(tmp_path / "data" / "val", 2, 32, 1)
    opt = {
        "name": "e2e",
        "num_gpu": 0,
        "manual_seed": 3,
        "datasets": {
            "train": {"type": "PairedImageDataset", "dataroot_lq": "data/train/input",
                      "dataroot_gt": "data/train/target", "gt_size": 32, "use_hflip": True, "use_rot": True,
                      "batch_size_per_gpu": 2},
            "val": {"type": "PairedImageDataset", "name": "val", "dataroot_lq": "data/val/input",
                    "dataroot_gt": "data/val/target"},
        },
        "network_g": {"type": "NAFNet", "width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1,
                      "dec_blk_nums": [1, 1]},
        "train": {
            "optim_g": {"type": "AdamW", "lr": 1e-3, "betas": [0.9, 0.9]},
            "scheduler": {"type": "TrueCosineAnnealingLR", "T_max": 3},
            "total_iter": 3,
            "use_grad_clip": True,
            "pixel_opt": {"type": "PSNRLoss", "loss_weight": 1.0},
            "ddr_opt": {"type": "DDRLoss", "loss_weight": 0.5, "backbone": "ViT-S-32", "pretrained": "none",
                        "check_range": False},
        },
        "val": {"val_freq": 2, "save_img": True,
                "metrics": {"psnr": {"type": "calculate_psnr"}, "ssim": {"type": "calculate_ssim"}}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": True},
    }
    (tmp_path / "e2e.yml").write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)
    assert train_main(["-opt", "e2e.yml", "--set", "train.optim_g.lr=2e-3"]) == 0
    out = capsys.readouterr().out
    exp = tmp_path / "experiments" / "e2e"
    assert f"checkpoint       : {exp / 'models' / 'net_g_latest.pth'}" in out
    assert str(exp / "visualization" / "before_after.png") in out
    assert sorted(p.name for p in (exp / "models").iterdir()) == ["net_g_2.pth", "net_g_3.pth", "net_g_latest.pth"]
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["2.state", "3.state"]
    copied = (exp / "e2e.yml").read_text()
    assert copied.startswith("# time: ") and "# command: python train.py -opt e2e.yml --set train.optim_g.lr=2e-3" in copied
    assert yaml.safe_load(copied)["train"]["optim_g"]["lr"] == 2e-3
    log = next(exp.glob("train_e2e_*.log")).read_text()
    assert "l_pix:" in log and "l_ddr:" in log and "l_total:" in log and "validation val @ iter 2: psnr" in log
    assert "RANDOMLY initialised" in log
    assert (exp / "visualization" / "000" / "000_2.png").is_file()
    from ddr_restore.imageio import read_image

    fig = np.round(read_image(exp / "visualization" / "before_after.png") * 255).astype(np.uint8)
    lq0 = np.round(read_image(tmp_path / "data" / "val" / "input" / "000.png") * 255).astype(np.uint8)
    gt0 = np.round(read_image(tmp_path / "data" / "val" / "target" / "000.png") * 255).astype(np.uint8)
    # row 1: input | restored | target at full size (the crop is outlined on the input); row 2: zoomed crops
    width = fig.shape[1]
    assert np.array_equal(fig[:32, width - 32:], gt0)
    assert (fig[2:30, 2:30] == lq0[2:30, 2:30]).mean() > 0.5  # the outline covers the crop border only
    zoomed_gt = fig[fig.shape[0] - 32:, width - 32:]
    assert zoomed_gt.shape == (32, 32, 3) and fig.shape[0] > 64
    crop = zoomed_gt[::2, ::2]  # 2x nearest zoom of a 16x16 crop of the target: find it in the target
    assert np.array_equal(np.repeat(np.repeat(crop, 2, 0), 2, 1), zoomed_gt)
    assert any(np.array_equal(gt0[t:t + 16, l:l + 16], crop) for t in range(17) for l in range(17))
    acc = EventAccumulator(str(exp / "tb_logger"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("losses/l_pix", "losses/l_ddr", "losses/l_total", "lr", "metrics/val/psnr", "metrics/val/ssim"):
        assert tag in tags, (tag, tags)
    assert [e.step for e in acc.Scalars("losses/l_ddr")] == [1, 2, 3]
    assert acc.Tags()["images"]
    # logged l_pix equals PSNRLoss recomputed independently? (check the sign/magnitude: -PSNR of a noisy pair)
    l_pix = [e.value for e in acc.Scalars("losses/l_pix")]
    assert all(-60 < v < 0 for v in l_pix)
    # the validation PSNR in the log equals an independent recomputation from the saved network
    from ddr_restore.archs import NAFNet
    from ddr_restore.imageio import img2tensor, tensor2img

    net = NAFNet(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
    net.load_state_dict(ckpt.safe_load(exp / "models" / "net_g_3.pth")["params"])
    net.eval()
    psnrs = []
    for i in range(2):
        lq = read_image(tmp_path / "data" / "val" / "input" / f"{i:03d}.png")
        gt = (read_image(tmp_path / "data" / "val" / "target" / f"{i:03d}.png") * 255).round()
        with torch.no_grad():
            out = tensor2img(net(img2tensor(lq)[None])).astype(np.float64)
        psnrs.append(10 * np.log10(255.0 ** 2 / np.mean((out - gt) ** 2)))
    assert f"validation val @ iter 3: psnr: {np.mean(psnrs):.4f}" in log
