"""The README demo option file: it validates, keeps its promises (offline, seeded, held-out whole photos), its header's
input figure is true, and two iterations of it train end to end (random CLIP, tiny network)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from ddr_restore.data import build_dataset
from ddr_restore.imageio import read_image, tensor2img
from ddr_restore.metrics.psnr_ssim import calculate_psnr
from ddr_restore.train import parse_options, train

DEMO = Path(__file__).resolve().parents[1] / "options" / "demo" / "nafnet_ddr_demo.yml"


def _val_input_psnr(val_cfg) -> float:
    """Mean PSNR (uint8, RGB, no border crop) of the degraded validation inputs against their targets."""
    ds = build_dataset(val_cfg, "val")
    scores = [calculate_psnr(tensor2img(ds[i]["lq"]), tensor2img(ds[i]["gt"]), crop_border=0) for i in range(len(ds))]
    return float(np.mean(scores))


def test_demo_option_file_validates_and_runs_offline_on_bundled_photos():
    opt = parse_options(DEMO)
    ddr = opt["train"]["ddr_opt"]
    # the product's demo keeps the DDR term, with a random CLIP so nothing is downloaded
    assert ddr["type"] == "DDRLoss" and ddr["pretrained"] == "none"
    assert opt["num_gpu"] == "auto" and isinstance(opt["manual_seed"], int)
    train_cfg, val_cfg = opt["datasets"]["train"], opt["datasets"]["val"]
    for cfg in (train_cfg, val_cfg):
        # photos bundled with scikit-image: no data folder to download or point at
        assert cfg["type"] == "SyntheticMotionBlurDataset" and cfg.get("dataroot_gt") is None
    # the cosine schedule must end where training ends, or the last iterations run at the wrong LR
    assert opt["train"]["scheduler"]["T_max"] == opt["train"]["total_iter"]


def test_demo_validation_is_held_out_whole_photos_and_seeded():
    opt = parse_options(DEMO)
    train_set = build_dataset(opt["datasets"]["train"], "train")
    val_a = build_dataset(opt["datasets"]["val"], "val")
    val_b = build_dataset(opt["datasets"]["val"], "val")
    assert not {n for n, _ in train_set.photos} & {n for n, _ in val_a.photos}  # held-out photos
    for i in range(len(val_a)):
        item = val_a[i]
        photo = val_a.photos[i % len(val_a.photos)][1]
        assert tuple(item["gt"].shape[1:]) == photo.shape[:2]  # the whole photo, not a crop
        assert (item["lq"] == val_b[i]["lq"]).all()  # the same degraded inputs in every run


def test_demo_header_states_the_true_input_psnr():
    """The header promises a figure for the degraded validation input; it must match what the data produces."""
    header = DEMO.read_text(encoding="utf-8")
    match = re.search(r"degraded input (\d+\.\d+) dB", header)
    assert match, "the demo header should state the validation PSNR of the degraded input"
    stated = float(match.group(1))
    actual = _val_input_psnr(parse_options(DEMO)["datasets"]["val"])
    decimals = len(match.group(1).split(".")[1])
    assert abs(actual - stated) <= 0.5 * 10 ** -decimals + 1e-9, (stated, actual)


@pytest.mark.usefixtures("one_thread")  # random CLIP ViT-B/32 inside DDR: far faster single-threaded on 2 cores
def test_demo_trains_two_iterations_with_tiny_overrides(tmp_path):
    overrides = [
        f"path.experiments_root={tmp_path}",
        "train.total_iter=2", "train.scheduler.T_max=2",
        "val.val_freq=2", "logger.save_checkpoint_freq=2", "logger.print_freq=1",
        "network_g.width=8", "network_g.train_size=[1,3,32,32]", "datasets.train.gt_size=32",
        "datasets.val.length=1",  # one whole held-out photo
    ]
    opt = parse_options(DEMO, overrides)
    result = train(opt)

    assert result.final_iter == 2
    assert result.checkpoint is not None and result.checkpoint.is_file()
    (val_name,) = result.metrics
    assert math.isfinite(result.metrics[val_name]["psnr"]) and math.isfinite(result.metrics[val_name]["ssim"])
    # the blurred input is scored next to the output, computed here independently of the trainer
    assert result.input_metrics[val_name]["psnr"] == pytest.approx(_val_input_psnr(opt["datasets"]["val"]), abs=1e-6)

    assert result.before_after is not None and result.before_after.is_file()
    panel = read_image(result.before_after)
    photo = build_dataset(opt["datasets"]["val"], "val")[0]["gt"]
    assert panel.shape[1] >= photo.shape[2]  # the whole validation photo is shown, not a small crop
