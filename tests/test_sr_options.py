"""The super-resolution option files: they validate, follow the SR protocol, and the synthetic x4 recipe trains,
validates (Y-PSNR, crop_border = scale), checkpoints, is scored by ``ddr-eval --preset sr`` and runs under ddr-ablate."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from ddr_restore.data import build_dataset
from ddr_restore.imageio import tensor2img, write_image
from ddr_restore.train import parse_options, train

REPO = Path(__file__).resolve().parents[1]
REALSR = REPO / "options" / "realsr"
SYNTHETIC = REALSR / "nafnet_ddr_x4_synthetic.yml"
SR_DEMO = REPO / "options" / "demo" / "nafnet_ddr_sr_demo.yml"
PAIRED = ["nafnet_psnr_x4", "nafnet_ddr_x4", "restormer_psnr_x4", "restormer_ddr_x4"]

# Shrinks a recipe to a few seconds of CPU: a width-8 two-level NAFNet, 32 px HR crops, 3 iterations.
TINY = [
    "network_g.width=8", "network_g.enc_blk_nums=[1,1]", "network_g.dec_blk_nums=[1,1]", "network_g.middle_blk_num=1",
    "datasets.train.gt_size=32", "datasets.train.batch_size_per_gpu=2", "datasets.train.num_worker_per_gpu=0",
    "datasets.train.persistent_workers=false", "datasets.val.gt_size=48",
    "train.total_iter=3", "train.scheduler.T_max=3", "val.val_freq=3", "logger.save_checkpoint_freq=3",
    "logger.print_freq=1", "logger.use_tb_logger=false", "num_gpu=0",
]


def _photo_folders(tmp: Path) -> tuple:
    """Two small HR folders (train, held-out val) cut from scikit-image photos, as a user's HR-only data would be."""
    import skimage.data

    train_dir, val_dir = tmp / "hr_train", tmp / "hr_val"
    write_image(train_dir / "astronaut.png", skimage.data.astronaut()[100:196, 150:246])
    write_image(train_dir / "rocket.png", skimage.data.rocket()[200:296, 100:196])
    write_image(val_dir / "chelsea.png", skimage.data.chelsea()[60:140, 120:200])
    return train_dir, val_dir


def _y_psnr_numpy(out: np.ndarray, gt: np.ndarray, border: int) -> float:
    """BT.601 luma PSNR with a border crop, written out directly (uint8 RGB inputs)."""
    def luma(img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float64) / 255.0
        return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]

    a, b = luma(out)[border:-border, border:-border], luma(gt)[border:-border, border:-border]
    return float(10 * np.log10(255.0 ** 2 / np.mean((a - b) ** 2)))


@pytest.mark.parametrize("name", PAIRED)
def test_realsr_option_files_validate_and_follow_the_sr_protocol(name):
    opt = parse_options(REALSR / f"{name}.yml")
    assert opt["scale"] == 4 and opt["network_g"]["upscale"] == 4
    assert opt["network_g"]["upsampler"] == "pixelshuffle"
    for phase in ("train", "val"):
        cfg = opt["datasets"][phase]
        assert cfg["type"] == "RealSRPairedDataset" and cfg["layout"] == "realsr" and cfg["factor"] == 4
    for metric in opt["val"]["metrics"].values():  # the SR convention: Y channel, crop_border = scale
        assert metric["test_y_channel"] is True and metric["crop_border"] == opt["scale"]
    terms = {k for k in ("pixel_opt", "ddr_opt") if opt["train"].get(k)}
    assert terms == ({"pixel_opt", "ddr_opt"} if "_ddr_" in name else {"pixel_opt"})


@pytest.mark.parametrize("arch", ["nafnet", "restormer"])
def test_psnr_and_ddr_files_differ_only_by_name_and_the_ddr_term(arch):
    """The baseline and the DDR file of an architecture must be the same recipe, or Table 5's comparison is unfair."""
    psnr = yaml.safe_load((REALSR / f"{arch}_psnr_x4.yml").read_text(encoding="utf-8"))
    ddr = yaml.safe_load((REALSR / f"{arch}_ddr_x4.yml").read_text(encoding="utf-8"))
    assert ddr["train"].pop("ddr_opt")["type"] == "DDRLoss"
    psnr.pop("name"), ddr.pop("name")
    assert psnr == ddr


def test_synthetic_x4_file_uses_the_real_esrgan_defaults():
    from ddr_restore.data.real_degradation import DegradationConfig

    opt = parse_options(SYNTHETIC)
    cfg = opt["datasets"]["train"]
    assert cfg["type"] == "SyntheticSRDataset" and opt["scale"] == 4 and opt["network_g"]["upscale"] == 4
    # written out in full so users can edit it, and equal to the published defaults
    assert DegradationConfig.from_dict(cfg["degradation"]) == DegradationConfig()


@pytest.mark.usefixtures("one_thread")  # random CLIP ViT-B/32 inside DDR: far faster single-threaded on 2 cores
def test_synthetic_x4_smoke_trains_validates_checkpoints_and_ddr_eval_scores_it(tmp_path):
    from ddr_restore.eval.entry import main as eval_main

    train_dir, val_dir = _photo_folders(tmp_path)
    overrides = TINY + [
        f"path.experiments_root={tmp_path / 'experiments'}",
        f"datasets.train.dataroot_gt={train_dir}", f"datasets.val.dataroot_gt={val_dir}",
        "train.ddr_opt.pretrained=none",
    ]
    opt = parse_options(SYNTHETIC, overrides)
    result = train(opt)
    assert result.final_iter == 3 and result.checkpoint is not None and result.checkpoint.is_file()
    (val_name,) = result.metrics
    val_psnr = result.metrics[val_name]["psnr"]
    assert math.isfinite(val_psnr)

    # The same held-out item as LR/HR files, scored by ddr-eval's SR protocol with the checkpoint just written.
    ds = build_dataset(opt["datasets"]["val"], "val")
    assert len(ds) == 1
    item = ds[0]
    lr, hr = tensor2img(item["lq"]), tensor2img(item["gt"])
    assert hr.shape[:2] == (48, 48) and lr.shape[:2] == (12, 12)
    write_image(tmp_path / "lr" / "chelsea.png", lr)
    write_image(tmp_path / "hr" / "chelsea.png", hr)
    exp = result.checkpoint.parents[1]
    summary = eval_main([
        "--preset", "sr", "--scale", "4", "--input-dir", str(tmp_path / "lr"), "--target-dir", str(tmp_path / "hr"),
        "--opt", str(exp / f"{opt['name']}.yml"), "--checkpoint", str(result.checkpoint),
        "--metrics", "psnr", "ssim", "--device", "cpu", "--out", str(tmp_path / "eval"), "--no-progress",
    ])
    # validation and ddr-eval follow one protocol (Y channel, crop_border 4): the same number for the same weights
    assert summary["mean"]["psnr"] == pytest.approx(val_psnr, abs=1e-6)
    with open(tmp_path / "eval" / "per_image.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["mean"]["psnr"] == pytest.approx(float(row["psnr"]))
    # ...and that number is the Y-PSNR with a 4-pixel border crop, computed here independently
    from ddr_restore.eval.inference import load_restoration_model, restore

    net = load_restoration_model(exp / f"{opt['name']}.yml", result.checkpoint, device="cpu")
    out = tensor2img(restore(net, item["lq"]))
    assert float(row["psnr"]) == pytest.approx(_y_psnr_numpy(out, hr, 4), abs=1e-6)


@pytest.mark.usefixtures("one_thread")
def test_synthetic_x4_runs_under_ddr_ablate_with_the_sr_protocol(tmp_path):
    """The SR option files need no change for ddr-ablate: its default test set (the base file's val set) is scored
    with the SR preset at the base file's scale."""
    from ddr_restore.ablate import load_spec, run_ablation

    train_dir, val_dir = _photo_folders(tmp_path)
    overrides = [o for o in TINY if not o.startswith(("train.total_iter", "train.scheduler", "val.val_freq",
                                                       "logger.save"))]
    overrides += [
        f"datasets.train.dataroot_gt={train_dir}", f"datasets.val.dataroot_gt={val_dir}",
        "train.ddr_opt.pretrained=none", "train.total_iter=1", "train.scheduler.T_max=1", "val.val_freq=0",
        "logger.save_checkpoint_freq=1",
    ]
    spec = load_spec(base=SYNTHETIC, grid=["train.ddr_opt.loss_weight=0,1"], seeds="0", overrides=overrides)
    spec.metrics = ["psnr"]
    out = tmp_path / "abl"
    result = run_ablation(spec, out_dir=out, launcher="inline", echo=lambda *_: None)
    assert len(result.ran) == 2 and not result.failed
    for cell in result.ran:
        summary = json.loads((out / "cells" / cell / "eval" / "summary.json").read_text())
        assert summary["scale"] == 4 and math.isfinite(summary["mean"]["psnr"])
        assert "crop_border" in summary["protocol"] or "crop" in summary["protocol"]


def test_sr_demo_file_validates_offline_with_held_out_photos():
    opt = parse_options(SR_DEMO)
    assert opt["scale"] == 4 and opt["network_g"]["upscale"] == 4
    assert opt["train"]["ddr_opt"]["pretrained"] == "none"
    assert opt["train"]["scheduler"]["T_max"] == opt["train"]["total_iter"]
    train_set = build_dataset({**opt["datasets"]["train"], "scale": 4}, "train")
    val_set = build_dataset({**opt["datasets"]["val"], "scale": 4}, "val")
    assert train_set[0]["lq"].shape[-1] * 4 == train_set[0]["gt"].shape[-1]
    assert not {p[0] for p in train_set.photos} & {p[0] for p in val_set.photos}


def test_sr_demo_header_states_the_true_bicubic_psnr():
    """The header promises the validation Y-PSNR of the bicubic input; it must be what the data produces."""
    import re

    from ddr_restore.data.imresize import imresize
    from ddr_restore.metrics.psnr_ssim import calculate_psnr

    header = SR_DEMO.read_text(encoding="utf-8")
    match = re.search(r"bicubic input (\d+\.\d+) dB", header)
    assert match, "the SR demo header should state the validation PSNR of the bicubic input"
    opt = parse_options(SR_DEMO)
    ds = build_dataset({**opt["datasets"]["val"], "scale": 4}, "val")
    scores = []
    for i in range(len(ds)):
        lr, hr = tensor2img(ds[i]["lq"]), tensor2img(ds[i]["gt"])
        scores.append(calculate_psnr(imresize(lr, output_shape=hr.shape[:2]), hr, crop_border=4, test_y_channel=True))
    decimals = len(match.group(1).split(".")[1])
    assert abs(float(np.mean(scores)) - float(match.group(1))) <= 0.5 * 10 ** -decimals + 1e-9


@pytest.mark.parametrize("name", PAIRED + ["nafnet_ddr_x4_synthetic"])
def test_sr_option_file_networks_build_and_upsample_by_the_scale(name):
    """The full-size networks of the option files build and return scale x their (odd-sized) input."""
    import torch

    import ddr_restore.archs  # noqa: F401  (registers the architectures)
    from ddr_restore.registry import ARCH_REGISTRY

    opt = parse_options(REALSR / f"{name}.yml")
    net = ARCH_REGISTRY.build(dict(opt["network_g"]), where="network_g").eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 13, 18))
    assert tuple(out.shape) == (1, 3, 13 * opt["scale"], 18 * opt["scale"])
