"""DDP on 2 CPU processes (gloo) through torchrun: both ranks end with identical weights; validation is gathered."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ddr_restore.imageio import img2tensor, read_image, tensor2img, write_image
from ddr_restore.train.checkpoint import safe_load

REPO = Path(__file__).resolve().parents[1]


def _pairs(folder: Path, n: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        gt = rng.random((size, size, 3)).astype(np.float32)
        write_image(folder / "target" / f"{i:03d}.png", gt)
        write_image(folder / "input" / f"{i:03d}.png", np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1))


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    _pairs(tmp_path / "train", 6, 40, 0)
    _pairs(tmp_path / "val", 3, 32, 1)  # 3 images over 2 ranks: uneven shards (2 + 1)
    net_cfg = {"type": "NAFNet", "width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}
    opt = {
        "name": "ddp",
        "num_gpu": 0,
        "manual_seed": 5,
        "datasets": {
            "train": {"type": "PairedImageDataset", "dataroot_lq": "train/input", "dataroot_gt": "train/target",
                      "gt_size": 32, "use_hflip": True, "use_rot": True, "batch_size_per_gpu": 2},
            "val": {"type": "PairedImageDataset", "name": "v", "dataroot_lq": "val/input", "dataroot_gt": "val/target"},
        },
        "network_g": net_cfg,
        "train": {"optim_g": {"type": "AdamW", "lr": 1e-3}, "total_iter": 4, "ema_decay": 0.5, "use_grad_clip": True,
                  "pixel_opt": {"type": "PSNRLoss"}},
        "val": {"val_freq": 4, "metrics": {"psnr": {"type": "calculate_psnr"}}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": False},
    }
    (tmp_path / "ddp.yml").write_text(yaml.safe_dump(opt))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), "-opt", "ddp.yml", "--launcher", "pytorch"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / "experiments" / "ddp"
    log = next(exp.glob("train_ddp_*.log")).read_text()
    assert "2 process(es)" in log
    m = re.search(r"final weights sha256 on 2 ranks: (\w+), (\w+) \((\w+)\)", log)
    assert m and m.group(1) == m.group(2) and m.group(3) == "identical", log[-2000:]
    assert proc.stdout.count("Done: 4 iterations") == 1  # only rank 0 prints the summary
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["2.state", "4.state"]
    state = safe_load(exp / "training_states" / "4.state")
    assert state["world_size"] == 2 and len(state["rng"]) == 2

    # Validation was sharded and all-reduced: it must equal the mean PSNR over all 3 images, recomputed here
    # from the saved EMA weights.
    from ddr_restore.archs import NAFNet

    net = NAFNet(**{k: v for k, v in net_cfg.items() if k != "type"}).eval()
    net.load_state_dict(safe_load(exp / "models" / "net_g_4.pth")["params_ema"])
    psnrs = []
    for i in range(3):
        lq = read_image(tmp_path / "val" / "input" / f"{i:03d}.png")
        gt = (read_image(tmp_path / "val" / "target" / f"{i:03d}.png") * 255).round()
        with torch.no_grad():
            out = tensor2img(net(img2tensor(lq)[None])).astype(np.float64)
        psnrs.append(10 * np.log10(255.0 ** 2 / np.mean((out - gt) ** 2)))
    got = float(re.search(r"validation v @ iter 4: psnr: ([\d.]+)", log).group(1))
    assert got == pytest.approx(np.mean(psnrs), abs=2e-4)
