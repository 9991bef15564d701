"""PSNR/SSIM (BasicSR semantics) checked against direct numpy and scikit-image computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from skimage.color import rgb2ycbcr
from skimage.metrics import structural_similarity

from ddr_restore.metrics.psnr_ssim import (
    calculate_psnr,
    calculate_ssim,
    psnr_ssim_tensors,
    rgb_to_y,
)
from ddr_restore.registry import METRIC_REGISTRY


def direct_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    # Same window (Gaussian sigma 1.5 truncated at 3.5 sigma -> 11x11), population statistics, data range 255.
    # skimage averages its full-size map after dropping a 5-pixel border: exactly the "valid" region.
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    if a.ndim == 3:
        kw["channel_axis"] = -1
    return float(structural_similarity(a, b, **kw))


def degraded_pairs():
    rng = np.random.default_rng(0)
    out = []
    for name in ("astronaut", "chelsea", "coffee"):
        img = getattr(data, name)()[:200, :240]
        noisy = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).round().astype(np.uint8)
        # a shifted, darkened copy: a structurally different degradation
        shifted = np.clip(np.roll(img, 2, axis=1).astype(np.float64) * 0.9, 0, 255).round().astype(np.uint8)
        out += [pytest.param(img, noisy, id=name + "-noise"), pytest.param(img, shifted, id=name + "-shift")]
    return out


# SSIM: both sides run in float64 with the same Gaussian weights; only the summation order differs, so agreement is
# ~1e-15. 1e-6 leaves room for platform BLAS/filter differences while still catching any protocol difference
# (a different window, sample covariance or border handling moves SSIM by >1e-3 on these images).
SSIM_TOL = 1e-6


@pytest.mark.parametrize("img,deg", degraded_pairs())
def test_psnr_ssim_against_independent(img, deg):
    assert calculate_psnr(deg, img) == pytest.approx(direct_psnr(deg, img), abs=1e-10)
    assert abs(calculate_ssim(deg, img) - skimage_ssim(deg, img)) < SSIM_TOL


def test_identical_images():
    img = data.astronaut()[:64, :64]
    assert calculate_psnr(img, img.copy()) == float("inf")
    assert calculate_ssim(img, img.copy()) == pytest.approx(1.0, abs=1e-12)


def test_float_input_is_not_rounded():
    img = data.camera()[:64, :64].astype(np.float64)
    other = img + 0.25  # sub-level offset: MSE 0.0625 exactly
    assert calculate_psnr(img, other) == pytest.approx(10 * np.log10(255.0**2 / 0.0625), abs=1e-9)


def test_y_channel_matches_skimage_bt601():
    img = data.coffee()[:96, :128]
    ours = rgb_to_y(img)[..., 0]
    ref = rgb2ycbcr(img)[..., 0]  # ITU-R BT.601, Y in [16, 235] for 8-bit-range input
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    rng = np.random.default_rng(1)
    deg = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).round().astype(np.uint8)
    y1, y2 = rgb2ycbcr(deg)[..., 0], rgb2ycbcr(img)[..., 0]
    assert calculate_psnr(deg, img, test_y_channel=True) == pytest.approx(direct_psnr(y1, y2), abs=1e-9)
    assert abs(calculate_ssim(deg, img, test_y_channel=True) - skimage_ssim(y1, y2)) < SSIM_TOL


def test_y_channel_range():
    black = np.zeros((4, 4, 3), np.uint8)
    white = np.full((4, 4, 3), 255, np.uint8)
    assert np.allclose(rgb_to_y(black), 16.0) and np.allclose(rgb_to_y(white), 235.0)
    rand = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    y = rgb_to_y(rand)
    assert y.min() >= 16.0 and y.max() <= 235.0
    # channel order matters: pure red and pure blue differ in luma (RGB, not BGR, weights)
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    assert rgb_to_y(red)[0, 0, 0] == pytest.approx(16 + 65.481, abs=1e-9)


def test_crop_border():
    img = data.chelsea()[:80, :100]
    deg = img.copy()
    deg[:3] = 0  # damage only the top 3 rows
    assert calculate_psnr(deg, img, crop_border=3) == float("inf")
    assert calculate_ssim(deg, img, crop_border=3) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(3)
    noisy = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).round().astype(np.uint8)
    c = 4
    assert calculate_psnr(noisy, img, crop_border=c) == pytest.approx(direct_psnr(noisy[c:-c, c:-c], img[c:-c, c:-c]))
    assert abs(calculate_ssim(noisy, img, crop_border=c) - skimage_ssim(noisy[c:-c, c:-c], img[c:-c, c:-c])) < SSIM_TOL


def test_chw_order_and_grey():
    img = data.astronaut()[:48, :48]
    deg = np.clip(img.astype(int) + 5, 0, 255).astype(np.uint8)
    chw = dict(input_order="CHW")
    assert calculate_psnr(deg.transpose(2, 0, 1), img.transpose(2, 0, 1), **chw) == calculate_psnr(deg, img)
    assert calculate_ssim(deg.transpose(2, 0, 1), img.transpose(2, 0, 1), **chw) == calculate_ssim(deg, img)
    g1, g2 = deg[..., 0], img[..., 1]
    assert abs(calculate_ssim(g1, g2) - skimage_ssim(g1, g2)) < SSIM_TOL


def test_bad_input_errors():
    a, b = np.zeros((16, 16, 3)), np.zeros((16, 17, 3))
    with pytest.raises(ValueError, match=r"\(16, 16, 3\).*\(16, 17, 3\)"):
        calculate_psnr(a, b)
    with pytest.raises(ValueError, match=r"\(16, 16, 3\).*\(16, 17, 3\)"):
        calculate_ssim(a, b)
    with pytest.raises(ValueError, match="input_order"):
        calculate_psnr(a, a, input_order="HCW")
    with pytest.raises(ValueError, match="crop_border"):
        calculate_psnr(a, a, crop_border=8)


def test_basicsr_names_are_catalog_aliases():
    """``type: calculate_psnr`` / ``calculate_ssim`` (BasicSR option files) build the catalog's psnr / ssim."""
    from ddr_restore.metrics import create_metric, metric_info

    assert METRIC_REGISTRY.get("calculate_psnr") is METRIC_REGISTRY.get("psnr")
    assert METRIC_REGISTRY.get("calculate_ssim") is METRIC_REGISTRY.get("ssim")
    assert metric_info("calculate_psnr").name == "psnr" and metric_info("calculate_psnr").better == "higher"
    img = data.astronaut()[:40, :40]
    deg = (img // 2).astype(np.uint8)
    metric = METRIC_REGISTRY.build({"type": "calculate_psnr", "crop_border": 2})
    assert metric(deg, img) == pytest.approx(direct_psnr(deg[2:-2, 2:-2], img[2:-2, 2:-2]))
    assert create_metric("calculate_ssim", test_y_channel=True)(deg, img) == calculate_ssim(deg, img,
                                                                                             test_y_channel=True)
    # a misspelt option is an error, not silently ignored
    with pytest.raises(ValueError, match="crop_bordr"):
        create_metric("calculate_psnr", crop_bordr=2)


def test_tensor_convenience_quantises_and_does_not_mutate():
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, 24, 24, generator=gen)
    pred = gt + 0.1 * torch.randn(2, 3, 24, 24, generator=gen)  # leaves [0,1]: must be clamped
    before = pred.clone()
    psnrs, ssims = psnr_ssim_tensors(pred, gt)
    assert torch.equal(pred, before)
    for i in range(2):
        p8 = np.round(np.clip(pred[i].numpy().transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
        g8 = np.round(gt[i].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
        assert psnrs[i] == pytest.approx(direct_psnr(p8, g8), abs=1e-9)
        assert abs(ssims[i] - skimage_ssim(p8, g8)) < SSIM_TOL


def test_gopro_mini_inputs_as_restorations(shared_data):
    """The blurred GoPro inputs scored against their sharp targets, as if they were restorations."""
    from ddr_restore.imageio import list_images, read_image

    root = shared_data / "gopro_mini" / "train"
    inputs = list_images(root / "input")
    assert inputs, f"no images in {root / 'input'}"
    max_diff = 0.0
    for path in inputs:
        lq = (read_image(path) * 255).round().astype(np.uint8)
        gt = (read_image(root / "target" / path.name) * 255).round().astype(np.uint8)
        psnr = calculate_psnr(lq, gt)
        assert psnr == pytest.approx(direct_psnr(lq, gt), abs=1e-10)
        assert 15 < psnr < 45  # a blurred frame: neither identical nor noise
        max_diff = max(max_diff, abs(calculate_ssim(lq, gt) - skimage_ssim(lq, gt)))
    assert max_diff < SSIM_TOL
