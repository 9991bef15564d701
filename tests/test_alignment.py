"""RealBlur protocol: ECC homography alignment and masked PSNR/SSIM."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.metrics import structural_similarity

from ddr_restore.metrics.alignment import masked_psnr, masked_ssim, realblur_psnr_ssim, realblur_score

# A small camera-like homography: ~1% zoom/rotation, a few pixels of shift, slight perspective.
H_TRUE = np.array([[1.01, 0.005, 2.5], [-0.004, 0.995, -1.7], [1e-5, -1e-5, 1.0]], np.float32)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.astronaut()[::2, ::2].astype(np.float32) / 255.0  # 256x256 real photo


def plain_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_recovers_known_homography():
    # Warp the full 512x512 photo, then cut the same 256x256 window from both: the pair is related by a homography
    # everywhere (no reflected borders that would bias ECC).
    big = data.astronaut().astype(np.float32) / 255.0
    moved_big = cv2.warpPerspective(big, H_TRUE, big.shape[1::-1], flags=cv2.INTER_CUBIC,
                                    borderMode=cv2.BORDER_REFLECT)
    y0 = x0 = 128
    gt, moved = big[y0:y0 + 256, x0:x0 + 256], moved_big[y0:y0 + 256, x0:x0 + 256]
    shift = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], np.float64)
    h_crop = np.linalg.inv(shift) @ H_TRUE @ shift  # the same motion in window coordinates

    score = realblur_score(moved, gt)
    assert score.ecc_converged and score.ecc_cc > 0.99
    warp = score.warp / score.warp[2, 2]
    # ECC's map from GT to prediction coordinates is h_crop itself (warpPerspective: dst(x) = src(H^-1 x)).
    # ECC interpolates bilinearly, which biases fractional shifts by a few hundredths of a pixel.
    np.testing.assert_allclose(warp[:2, :2], h_crop[:2, :2], atol=3e-3)
    np.testing.assert_allclose(warp[:2, 2], h_crop[:2, 2], atol=0.15)  # pixels

    unaligned = plain_psnr(moved, gt)
    # oracle: undo the true homography the same way and score the valid region as the protocol does
    back = cv2.warpPerspective(moved, h_crop, (256, 256), flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpPerspective(np.ones_like(gt), h_crop, (256, 256),
                               flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP, borderValue=0)
    oracle = float(10 * np.log10(mask.sum() / np.sum(((back - gt) * mask).astype(np.float64) ** 2)))
    assert score.psnr > unaligned + 10.0
    # ~0.05 px of ECC error costs several dB on a sharp photo against the exact inverse (oracle ~38 dB), so the
    # closeness bound is loose; it still separates "aligned" from "unaligned" (~13 dB) by a wide margin.
    assert oracle - 12.0 < score.psnr < oracle + 0.5
    unaligned_ssim = structural_similarity(gt, moved, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False, data_range=1.0, channel_axis=-1)
    assert score.ssim > 0.95 and score.ssim > unaligned_ssim + 0.3


def test_identical_and_intensity_scaled(photo):
    psnr, ssim = realblur_psnr_ssim(photo, photo)
    assert psnr == float("inf") and ssim == pytest.approx(1.0, abs=1e-6)
    # step 1 (least-squares intensity matching) removes a global gain completely
    darker = photo * 0.8
    score = realblur_score(darker, photo)
    assert plain_psnr(darker, photo) < 25
    assert score.psnr > 60
    np.testing.assert_allclose(score.warp, np.eye(3), atol=1e-3)


def test_uint8_input_equals_float(photo):
    u8 = (photo * 255).round().astype(np.uint8)
    noisy = np.clip(u8 + np.random.default_rng(0).normal(0, 6, u8.shape), 0, 255).astype(np.uint8)
    assert realblur_psnr_ssim(noisy, u8) == pytest.approx(
        realblur_psnr_ssim(noisy.astype(np.float32) / 255, u8.astype(np.float32) / 255))


def test_masked_metrics_against_direct(photo):
    rng = np.random.default_rng(1)
    pred = np.clip(photo + rng.normal(0, 0.03, photo.shape), 0, 1).astype(np.float32)
    ones = np.ones_like(photo)
    # full mask: plain PSNR, and skimage's own mean SSIM (it drops the same 5-pixel border)
    assert masked_psnr(photo, pred, ones) == pytest.approx(plain_psnr(pred, photo), abs=1e-6)
    ref = structural_similarity(photo, pred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0, channel_axis=-1)
    assert masked_ssim(photo, pred, ones) == pytest.approx(ref, abs=1e-6)
    # partial mask: error summed over masked images / number of masked entries
    mask = ones.copy()
    mask[:, :40] = 0
    err = np.sum(((photo - pred) * mask).astype(np.float64) ** 2) / mask.sum()
    assert masked_psnr(photo * mask, pred * mask, mask) == pytest.approx(10 * np.log10(1 / err), abs=1e-6)


def test_ecc_failure_falls_back_to_identity(photo):
    flat = np.full_like(photo, 0.5)
    with pytest.warns(RuntimeWarning, match="ECC alignment failed"):
        score = realblur_score(flat, photo)
    assert not score.ecc_converged and np.isnan(score.ecc_cc)
    np.testing.assert_array_equal(score.warp, np.eye(3))
    scaled = flat * (np.sum(photo.astype(np.float64) * flat) / np.sum(flat.astype(np.float64) ** 2))
    assert score.psnr == pytest.approx(plain_psnr(scaled, photo), abs=1e-4)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\(32, 32, 3\).*\(32, 40, 3\)"):
        realblur_psnr_ssim(np.zeros((32, 32, 3), np.float32), np.zeros((32, 40, 3), np.float32))
    with pytest.raises(ValueError, match="RGB HWC"):
        realblur_psnr_ssim(np.zeros((32, 32), np.float32), np.zeros((32, 32), np.float32))
