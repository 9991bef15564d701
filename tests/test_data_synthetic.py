"""Synthetic camera-shake degradations and the no-download SyntheticMotionBlurDataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ddr_restore.data import build_dataset
from ddr_restore.data.degradations import (
    add_gaussian_noise,
    blur,
    quantize_8bit,
    random_motion_kernel,
    rasterize_trajectory,
    synthesize_motion_blur,
)
from ddr_restore.data.synthetic import SyntheticMotionBlurDataset
from ddr_restore.errors import InputError, MissingPathError
from ddr_restore.imageio import write_image


# ------------------------------------------------------------------ kernels and blur
@pytest.mark.parametrize("seed", range(8))
def test_motion_kernel_is_normalised_non_negative_and_centred(seed):
    k = random_motion_kernel(np.random.default_rng(seed), kernel_size=(11, 31))
    size = k.shape[0]
    assert k.shape == (size, size) and size % 2 == 1 and 11 <= size <= 31
    assert k.min() >= 0.0
    assert k.sum() == pytest.approx(1.0, abs=1e-9)
    rows, cols = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    assert (rows * k).sum() == pytest.approx(c, abs=1e-6)  # centre of mass at the centre: no image shift
    assert (cols * k).sum() == pytest.approx(c, abs=1e-6)
    assert (k > 1e-3).sum() >= 3  # an actual trajectory, not a delta


def test_motion_kernel_seeded():
    a = random_motion_kernel(np.random.default_rng(5))
    b = random_motion_kernel(np.random.default_rng(5))
    c = random_motion_kernel(np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    assert random_motion_kernel(np.random.default_rng(0), kernel_size=15).shape == (15, 15)
    with pytest.raises(InputError, match="kernel_size"):
        random_motion_kernel(np.random.default_rng(0), kernel_size=(20, 10))


def test_straight_trajectory_rasterises_to_a_line():
    pts = np.stack([np.arange(10.0), np.zeros(10)], axis=1)  # horizontal path, equal speed
    k = rasterize_trajectory(pts, 11, extent=6.0)
    assert k.sum() == pytest.approx(1.0)
    assert np.count_nonzero(k.sum(axis=1) > 1e-12) <= 2  # at most two rows (sub-pixel vertical position)
    cols = np.nonzero(k.sum(axis=0) > 1e-12)[0]
    assert 6 <= cols.max() - cols.min() <= 8


def test_blur_is_true_convolution_with_mirrored_border():
    rng = np.random.default_rng(0)
    img = rng.random((20, 23, 3)).astype(np.float32)
    kernel = np.zeros((5, 5))
    kernel[0, 0], kernel[2, 3], kernel[4, 1] = 0.5, 0.3, 0.2  # asymmetric: a missing flip would show
    out = blur(img, kernel)
    expected = np.stack([ndimage.convolve(img[..., ch].astype(np.float64), kernel, mode="reflect")
                         for ch in range(3)], axis=2)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    delta = np.zeros((3, 3))
    delta[1, 1] = 1
    np.testing.assert_allclose(blur(img, delta), img, atol=1e-6)
    with pytest.raises(InputError, match="odd"):
        blur(img, np.ones((4, 4)) / 16)


def test_noise_and_quantisation():
    rng = np.random.default_rng(0)
    flat = np.full((200, 200, 3), 0.5, np.float32)
    noisy = add_gaussian_noise(flat, 0.05, rng)
    assert np.std(noisy - flat) == pytest.approx(0.05, rel=0.05)
    q = quantize_8bit(np.array([-0.1, 0.31, 0.50001, 1.2], np.float32))
    np.testing.assert_allclose(q * 255, [0, 79, 128, 255], atol=1e-4)  # 79.05, 127.5026
    img = rng.random((16, 16, 3)).astype(np.float32)
    lq, k = synthesize_motion_blur(img, np.random.default_rng(1), kernel_size=9, noise_sigma=[0.0, 0.02])
    assert k.shape == (9, 9) and lq.shape == img.shape
    np.testing.assert_allclose(lq * 255, np.round(lq * 255), atol=1e-3)
    with pytest.raises(InputError, match="noise_sigma"):
        synthesize_motion_blur(img, np.random.default_rng(1), noise_sigma=[0.2, 0.1])


# ------------------------------------------------------------------ dataset
def test_validation_set_is_fixed_by_seed():
    a = SyntheticMotionBlurDataset(phase="val", gt_size=64, seed=3)
    b = SyntheticMotionBlurDataset(phase="val", gt_size=64, seed=3)
    c = SyntheticMotionBlurDataset(phase="val", gt_size=64, seed=4)
    assert len(a) == 4  # 2 held-out photos x 2 kernels
    for i in range(len(a)):
        x, y = a[i], b[i]
        torch.testing.assert_close(x["lq"], y["lq"], rtol=0, atol=0)
        assert x["lq_path"] == y["lq_path"] == f"{['chelsea', 'coffee'][i % 2]}_k{i}.png"
    assert not torch.equal(a[0]["lq"], c[0]["lq"])
    torch.testing.assert_close(a[0]["gt"], c[0]["gt"])
    torch.testing.assert_close(a[1]["lq"], a[1]["lq"])  # cached items are returned unchanged


def test_validation_gt_is_the_centre_crop_of_the_photo():
    import skimage.data

    photo = skimage.data.chelsea()  # 300 x 451
    item = SyntheticMotionBlurDataset(phase="val", gt_size=64, seed=0)[0]
    expected = photo[118:182, 193:257].astype(np.float32) / 255.0  # (300-64)//2, (451-64)//2
    np.testing.assert_allclose(item["gt"].numpy().transpose(1, 2, 0), expected, atol=1e-6)
    lq = item["lq"].numpy()
    np.testing.assert_allclose(lq * 255, np.round(lq * 255), atol=1e-3)  # 8-bit quantised
    assert abs(lq.mean() - expected.mean()) < 0.02  # the kernel preserves brightness
    mse = float(np.mean((lq.transpose(1, 2, 0) - expected) ** 2))
    assert 1e-5 < mse  # actually blurred
    whole = SyntheticMotionBlurDataset(phase="val", images=["chelsea"], length=1)[0]
    assert whole["gt"].shape == (3, 300, 451)


def test_training_items_random_but_reproducible():
    ds = SyntheticMotionBlurDataset(phase="train", gt_size=32, length=10, noise_sigma=0.01)
    torch.manual_seed(0)
    first = [ds[i] for i in range(4)]
    torch.manual_seed(0)
    again = [ds[i] for i in range(4)]
    for x, y in zip(first, again):
        torch.testing.assert_close(x["lq"], y["lq"], rtol=0, atol=0)
        assert x["lq"].shape == x["gt"].shape == (3, 32, 32)
    assert not torch.equal(first[0]["lq"], first[1]["lq"])
    assert not torch.equal(ds[0]["gt"], ds[0]["gt"])  # a fresh crop / kernel each draw
    assert first[0]["gt_path"] == "astronaut.png" and first[1]["gt_path"] == "rocket.png"


def test_dataroot_gt_folder_and_grey_images(tmp_path):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "colour.png", (rng.random((40, 50, 3)) * 255).astype(np.uint8))
    write_image(tmp_path / "grey.png", (rng.random((40, 40)) * 255).astype(np.uint8))
    opt = {"type": "SyntheticMotionBlurDataset", "dataroot_gt": str(tmp_path), "gt_size": 24, "kernel_size": [5, 9],
           "batch_size_per_gpu": 2}
    with pytest.raises(InputError, match=r"grey\.png: greyscale.*gray: replicate in the dataset options"):
        build_dataset(opt, "train")  # the project-wide policy: greyscale files only when asked for
    ds = build_dataset({**opt, "gray": "replicate"}, "train")
    torch.manual_seed(0)
    item = ds[1]
    assert item["gt"].shape == (3, 24, 24)
    assert torch.equal(item["gt"][0], item["gt"][1])  # grey replicated to RGB


def test_synthetic_option_errors(tmp_path):
    with pytest.raises(InputError, match="nosuchphoto"):
        SyntheticMotionBlurDataset(phase="val", images=["nosuchphoto"])
    with pytest.raises(InputError, match="scale"):
        SyntheticMotionBlurDataset(phase="val", scale=2)
    with pytest.raises(InputError, match=r"chelsea \(451x300\)"):
        SyntheticMotionBlurDataset(phase="val", images=["chelsea"], gt_size=320)
    with pytest.raises(InputError, match="gt_size is required"):
        SyntheticMotionBlurDataset(phase="train")
    with pytest.raises(InputError, match="kernel_size"):
        SyntheticMotionBlurDataset(phase="val", kernel_size=[1, 2])
    with pytest.raises(MissingPathError, match="missing_dir"):
        SyntheticMotionBlurDataset(phase="val", dataroot_gt=tmp_path / "missing_dir")
    with pytest.raises(TypeError, match="kernel_sise"):
        build_dataset({"type": "SyntheticMotionBlurDataset", "kernel_sise": 5}, "val")
