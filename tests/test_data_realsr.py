"""RealSRPairedDataset: RealSR V3 / DRealSR layouts, LQ/GT crop alignment at scales 1-4, bad-pair errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ddr_restore.data import build_dataset
from ddr_restore.data.realsr import RealSRPairedDataset
from ddr_restore.errors import InputError, MissingPathError
from ddr_restore.imageio import write_image

LQ_H, LQ_W = 11, 16  # not square, so a swap of height and width shows
GT_SIZE = 12  # a multiple of 1, 2, 3 and 4


def gt_pattern(lq_h: int, lq_w: int, s: int) -> np.ndarray:
    """uint8 GT of (lq_h*s, lq_w*s) whose s x s block means are integers and unique per block position.

    Pixel = base(block row, block column) + d(row in block, column in block), where d sums to zero over a block,
    so the block mean is exactly ``base``; inside a block the pixels differ, so a window shifted by one GT pixel
    has different block means.
    """
    by, bx = np.meshgrid(np.arange(lq_h), np.arange(lq_w), indexing="ij")
    base = np.stack([30 + by, 30 + bx, 30 + (5 * by + 3 * bx) % 150], axis=2)
    base = np.repeat(np.repeat(base, s, axis=0), s, axis=1)
    i, j = np.meshgrid(np.arange(lq_h * s) % s, np.arange(lq_w * s) % s, indexing="ij")
    d = 5 * (2 * i - (s - 1)) + 3 * (2 * j - (s - 1))
    gt = base + d[..., None] * np.array([1, -1, 1])
    assert gt.min() >= 0 and gt.max() <= 255
    return gt.astype(np.uint8)


def block_mean(img: np.ndarray, s: int) -> np.ndarray:
    h, w, c = img.shape
    blocks = img.astype(np.int64).reshape(h // s, s, w // s, s, c)
    total = blocks.sum(axis=(1, 3))
    assert (total % (s * s) == 0).all()
    return total // (s * s)


def as_u8(t: torch.Tensor) -> np.ndarray:
    return (t.numpy().transpose(1, 2, 0) * 255.0).round().astype(np.int64)


def make_realsr(root: Path, s: int, factor: int = 4, names=("Canon_001", "Canon_002"), camera="Canon",
                split="Train", lq_h: int = LQ_H, lq_w: int = LQ_W) -> Path:
    """RealSR V3 layout; the LR is the block mean of the GT, stored at 1/s (s = 1: at GT size)."""
    folder = root / camera / split / str(factor)
    for n in names:
        gt = gt_pattern(lq_h, lq_w, s)
        write_image(folder / f"{n}_HR.png", gt)
        write_image(folder / f"{n}_LR{factor}.png", block_mean(gt, s).astype(np.uint8))
    return folder


def check_aligned(item: dict, s: int) -> None:
    lq, gt = as_u8(item["lq"]), as_u8(item["gt"])
    assert gt.shape == (GT_SIZE, GT_SIZE, 3)
    assert lq.shape == (GT_SIZE // s, GT_SIZE // s, 3)
    np.testing.assert_array_equal(lq, block_mean(gt, s))


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_realsr_random_crops_aligned(tmp_path, s):
    factor = s if s > 1 else 4  # scale 1: LR stored at GT size (RealSR V1/V2 style) in the 4 folder
    grow = 4 // s  # GT of 33x48 to 44x64 pixels: room for crops of GT_SIZE at every scale
    make_realsr(tmp_path, s, factor=factor, lq_h=LQ_H * grow, lq_w=LQ_W * grow)
    ds = RealSRPairedDataset(tmp_path, layout="realsr", factor=factor, scale=s, phase="train", gt_size=GT_SIZE,
                             use_hflip=True, use_rot=True)
    assert len(ds) == 2 and ds.layout == "realsr"
    assert Path(ds.pairs[0][1]).name == "Canon_001_HR.png"
    assert Path(ds.pairs[0][0]).name == f"Canon_001_LR{factor}.png"
    torch.manual_seed(0)
    positions = set()
    for k in range(24):
        item = ds[k % len(ds)]
        check_aligned(item, s)
        positions.add(tuple(as_u8(item["lq"])[0, 0]))
    assert len(positions) > 3  # the crops really move


@pytest.mark.parametrize("s", [2, 3, 4])
def test_block_mean_check_sees_one_pixel_offset(s):
    """The check in check_aligned fails for a GT window one pixel off in either direction."""
    gt = gt_pattern(LQ_H, LQ_W, s)
    lq = block_mean(gt, s)
    n = GT_SIZE // s
    top, left = 1, 1  # LQ position; its GT window starts at (s, s)
    lq_crop = lq[top:top + n, left:left + n]
    np.testing.assert_array_equal(lq_crop, block_mean(gt[s:s + GT_SIZE, s:s + GT_SIZE], s))
    for dy, dx in ((1, 0), (0, 1), (-1, 0), (0, -1)):
        shifted = gt[s + dy:s + dy + GT_SIZE, s + dx:s + dx + GT_SIZE].astype(np.int64)
        means = shifted.reshape(n, s, n, s, 3).sum(axis=(1, 3)) / (s * s)
        assert not np.array_equal(lq_crop, means)


def test_scale_1_pixel_offset_would_show():
    gt = gt_pattern(LQ_H, LQ_W, 1)
    assert not np.array_equal(gt[1:1 + GT_SIZE, 0:GT_SIZE], gt[0:GT_SIZE, 0:GT_SIZE])
    assert not np.array_equal(gt[0:GT_SIZE, 1:1 + GT_SIZE], gt[0:GT_SIZE, 0:GT_SIZE])


def test_realsr_via_registry_val_whole_images_two_cameras(tmp_path):
    make_realsr(tmp_path, 4, names=("Canon_001",), camera="Canon", split="Test")
    make_realsr(tmp_path, 4, names=("Nikon_001",), camera="Nikon", split="Test")
    ds = build_dataset({"type": "RealSRPairedDataset", "dataroot": str(tmp_path), "layout": "realsr",
                        "factor": 4, "scale": 4, "batch_size_per_gpu": 1}, "val")
    assert ds.split == "test" and len(ds) == 2
    item = ds[1]
    assert "Nikon" in item["gt_path"]
    assert item["lq"].shape == (3, LQ_H, LQ_W) and item["gt"].shape == (3, LQ_H * 4, LQ_W * 4)
    np.testing.assert_array_equal(as_u8(item["lq"]), block_mean(as_u8(item["gt"]), 4))
    only = RealSRPairedDataset(tmp_path, factor=4, scale=4, phase="val", cameras=["Nikon"])
    assert len(only) == 1


def test_drealsr_layout_pairs_and_alignment(tmp_path):
    s = 4
    base = tmp_path / "x4" / "Train_x4"
    for n in ("DSC_0001", "DSC_0002", "IMG_7"):
        gt = gt_pattern(LQ_H, LQ_W, s)
        write_image(base / "train_HR" / f"{n}_x1.png", gt)
        write_image(base / "train_LR" / f"{n}_x4.png", block_mean(gt, s).astype(np.uint8))
    for root in (tmp_path, tmp_path / "x4", base):  # the dataset root, the x4 folder or the split folder
        ds = RealSRPairedDataset(root, layout="drealsr", factor=4, scale=4, gt_size=GT_SIZE, use_rot=True)
        assert len(ds) == 3
        assert [Path(g).name for _, g in ds.pairs] == ["DSC_0001_x1.png", "DSC_0002_x1.png", "IMG_7_x1.png"]
    torch.manual_seed(1)
    for k in range(6):
        check_aligned(ds[k % 3], s)


def test_wrong_ratio_names_both_files_and_sizes(tmp_path):
    # LR stored at GT size (RealSR V1/V2 style) but scale 4 requested.
    folder = make_realsr(tmp_path, 1, names=("Canon_001",))
    with pytest.raises(InputError) as err:
        RealSRPairedDataset(tmp_path, factor=4, scale=4, gt_size=GT_SIZE)
    msg = str(err.value)
    assert str(folder / "Canon_001_LR4.png") in msg and str(folder / "Canon_001_HR.png") in msg
    assert f"{LQ_W}x{LQ_H}" in msg and f"{LQ_W * 4}x{LQ_H * 4}" in msg  # the LQ size and the expected GT size


def test_true_lr_with_scale_1_is_an_error_with_hint(tmp_path):
    folder = make_realsr(tmp_path, 4, names=("Canon_001",))
    with pytest.raises(InputError) as err:
        RealSRPairedDataset(tmp_path, factor=4, scale=1, gt_size=GT_SIZE)
    msg = str(err.value)
    assert str(folder / "Canon_001_LR4.png") in msg and str(folder / "Canon_001_HR.png") in msg
    assert f"{LQ_W}x{LQ_H}" in msg and f"{LQ_W * 4}x{LQ_H * 4}" in msg
    assert "scale" in msg


def test_wrong_ratio_found_at_load_time_when_checks_are_off(tmp_path):
    folder = tmp_path / "Canon" / "Train" / "4"
    gt = gt_pattern(LQ_H, LQ_W, 4)
    write_image(folder / "Canon_001_HR.png", gt)
    write_image(folder / "Canon_001_LR4.png", block_mean(gt, 2).astype(np.uint8))  # a x2 LR in the x4 folder
    ds = RealSRPairedDataset(tmp_path, factor=4, scale=4, gt_size=GT_SIZE, check_files=False)
    with pytest.raises(InputError) as err:
        ds[0]
    msg = str(err.value)
    assert str(folder / "Canon_001_LR4.png") in msg and str(folder / "Canon_001_HR.png") in msg
    assert f"{LQ_W * 2}x{LQ_H * 2}" in msg and f"{LQ_W * 4}x{LQ_H * 4}" in msg


def test_modcrop_tolerates_a_few_extra_gt_pixels(tmp_path):
    folder = tmp_path / "Canon" / "Test" / "2"
    gt = gt_pattern(LQ_H, LQ_W, 2)
    lq = block_mean(gt, 2).astype(np.uint8)
    big = np.pad(gt, ((0, 1), (0, 1), (0, 0)), mode="edge")  # one extra row and column
    write_image(folder / "Canon_001_HR.png", big)
    write_image(folder / "Canon_001_LR2.png", lq)
    ds = RealSRPairedDataset(tmp_path, factor=2, scale=2, phase="val")
    item = ds[0]
    np.testing.assert_array_equal(as_u8(item["gt"]), gt)
    with pytest.raises(InputError, match="Canon_001_HR.png"):
        RealSRPairedDataset(tmp_path, factor=2, scale=2, phase="val", modcrop=False)


def test_missing_partner_names_the_file(tmp_path):
    folder = make_realsr(tmp_path, 4, names=("Canon_001", "Canon_002"))
    (folder / "Canon_002_LR4.png").unlink()
    with pytest.raises(MissingPathError) as err:
        RealSRPairedDataset(tmp_path, factor=4, scale=4, gt_size=GT_SIZE)
    msg = str(err.value)
    assert str(folder / "Canon_002_HR.png") in msg and str(folder / "Canon_002_LR4") in msg
    assert "Canon_001" not in msg


def test_orphan_lr_names_the_file(tmp_path):
    folder = make_realsr(tmp_path, 4, names=("Canon_001", "Canon_002"))
    (folder / "Canon_001_HR.png").unlink()
    with pytest.raises(MissingPathError) as err:
        RealSRPairedDataset(tmp_path, factor=4, scale=4, gt_size=GT_SIZE)
    msg = str(err.value)
    assert str(folder / "Canon_001_LR4.png") in msg and str(folder / "Canon_001_HR") in msg


def test_drealsr_missing_partner_names_the_file(tmp_path):
    base = tmp_path / "x4" / "Test_x4"
    gt = gt_pattern(LQ_H, LQ_W, 4)
    write_image(base / "test_HR" / "a_x1.png", gt)
    write_image(base / "test_HR" / "b_x1.png", gt)
    write_image(base / "test_LR" / "a_x4.png", block_mean(gt, 4).astype(np.uint8))
    with pytest.raises(MissingPathError) as err:
        RealSRPairedDataset(tmp_path, layout="drealsr", factor=4, scale=4, phase="val")
    assert str(base / "test_HR" / "b_x1.png") in str(err.value)


def test_layout_and_option_errors(tmp_path):
    with pytest.raises(MissingPathError, match="not found"):
        RealSRPairedDataset(tmp_path / "nope", factor=4, scale=4, gt_size=GT_SIZE)
    with pytest.raises(MissingPathError, match="Canon"):
        RealSRPairedDataset(tmp_path, factor=4, scale=4, gt_size=GT_SIZE)  # no camera folders
    make_realsr(tmp_path, 4)
    with pytest.raises(MissingPathError, match=r"Train.2"):
        RealSRPairedDataset(tmp_path, factor=2, scale=2, gt_size=GT_SIZE)  # no factor-2 folder
    with pytest.raises(InputError, match="scale"):
        RealSRPairedDataset(tmp_path, factor=4, scale=2, gt_size=GT_SIZE)
    with pytest.raises(InputError, match="factor"):
        RealSRPairedDataset(tmp_path, factor=5, scale=1, gt_size=GT_SIZE)
    with pytest.raises(InputError, match="layout"):
        RealSRPairedDataset(tmp_path, layout="div2k", scale=1, gt_size=GT_SIZE)
    with pytest.raises(InputError, match="dataroot_lq"):
        RealSRPairedDataset(tmp_path, scale=4, gt_size=GT_SIZE, dataroot_lq=str(tmp_path))
    with pytest.raises(MissingPathError, match="test_HR"):
        RealSRPairedDataset(tmp_path, layout="drealsr", factor=4, scale=4, phase="val")
