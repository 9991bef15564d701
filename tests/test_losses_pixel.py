"""Pixel losses against independent numpy / scikit-image computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio

from ddr_restore.losses.pixel import CharbonnierLoss, L1Loss, PSNRLoss, rgb_to_y
from ddr_restore.registry import LOSS_REGISTRY


def _pair(seed: int = 0, shape=(3, 3, 12, 10)):
    rng = np.random.default_rng(seed)
    gt = rng.random(shape)
    # Different noise level per image, so a batch mean of PSNRs differs from the PSNR of the batch MSE.
    sigma = np.array([0.01, 0.05, 0.2])[: shape[0]].reshape(-1, 1, 1, 1)
    pred = np.clip(gt + rng.normal(size=shape) * sigma, 0, 1)
    return pred, gt


def test_psnr_loss_is_minus_mean_per_image_psnr():
    pred, gt = _pair()
    got = PSNRLoss()(torch.from_numpy(pred), torch.from_numpy(gt)).item()
    psnrs = [peak_signal_noise_ratio(g, p, data_range=1.0) for p, g in zip(pred, gt)]
    assert got == pytest.approx(-np.mean(psnrs), abs=2e-3)  # the 1e-8 guard shifts by < 1e-3 dB at these MSEs
    guarded = [10 * np.log10(np.mean((p - g) ** 2) + 1e-8) for p, g in zip(pred, gt)]
    assert got == pytest.approx(np.mean(guarded), rel=1e-10)
    assert PSNRLoss(loss_weight=0.5)(torch.from_numpy(pred), torch.from_numpy(gt)).item() == pytest.approx(got / 2)


def test_psnr_loss_identical_images_hits_the_guard():
    x = torch.rand(2, 3, 4, 4)
    assert PSNRLoss()(x, x.clone()).item() == pytest.approx(10 * math.log10(1e-8))  # -80


def test_psnr_loss_to_y_matches_skimage_ycbcr():
    pred, gt = _pair(1)
    got = PSNRLoss(toY=True)(torch.from_numpy(pred), torch.from_numpy(gt)).item()
    # skimage: float RGB in [0, 1] -> Y in [16, 235]; PSNR on the 255 scale.
    ys = [(rgb2ycbcr(p.transpose(1, 2, 0))[..., 0], rgb2ycbcr(g.transpose(1, 2, 0))[..., 0]) for p, g in zip(pred, gt)]
    psnrs = [peak_signal_noise_ratio(yg, yp, data_range=255.0) for yp, yg in ys]
    assert got == pytest.approx(-np.mean(psnrs), abs=2e-3)
    guarded = [10 * np.log10(np.mean((yp - yg) ** 2) / 255.0**2 + 1e-8) for yp, yg in ys]
    assert got == pytest.approx(np.mean(guarded), rel=1e-9)
    y = rgb_to_y(torch.from_numpy(gt)).numpy()
    np.testing.assert_allclose(y[0, 0], rgb2ycbcr(gt[0].transpose(1, 2, 0))[..., 0] / 255.0, atol=1e-6)


def test_psnr_loss_gradient_points_towards_target():
    gt = torch.rand(2, 3, 8, 8)
    pred = (gt + 0.1 * torch.randn_like(gt)).requires_grad_()
    loss = PSNRLoss()(pred, gt)
    loss.backward()
    with torch.no_grad():
        assert PSNRLoss()(pred - 1e-3 * pred.grad / pred.grad.abs().max(), gt) < loss


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_l1_and_charbonnier_reductions(reduction):
    pred, gt = _pair(2)
    tp, tg = torch.from_numpy(pred), torch.from_numpy(gt)
    reduce = {"none": lambda a: a, "mean": np.mean, "sum": np.sum}[reduction]
    np.testing.assert_allclose(L1Loss(2.0, reduction)(tp, tg).numpy(), 2.0 * reduce(np.abs(pred - gt)), rtol=1e-12)
    charb = np.sqrt((pred - gt) ** 2 + 1e-3**2)
    np.testing.assert_allclose(CharbonnierLoss(0.5, reduction)(tp, tg).numpy(), 0.5 * reduce(charb), rtol=1e-12)
    charb2 = np.sqrt((pred - gt) ** 2 + 0.1**2)
    np.testing.assert_allclose(CharbonnierLoss(1.0, reduction, eps=0.1)(tp, tg).numpy(), reduce(charb2), rtol=1e-12)


def test_bad_options_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="'median'"):
        L1Loss(reduction="median")
    with pytest.raises(ValueError, match="'sum'"):
        PSNRLoss(reduction="sum")
    with pytest.raises(ValueError, match="'avg'"):
        CharbonnierLoss(reduction="avg")
    with pytest.raises(TypeError):
        L1Loss(weight=2.0)
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9)
    for loss in (PSNRLoss(), L1Loss(), CharbonnierLoss()):
        with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\).*\(1, 3, 8, 9\)"):
            loss(a, b)
    with pytest.raises(ValueError, match="RGB"):
        PSNRLoss(toY=True)(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))


def test_losses_are_registered():
    loss = LOSS_REGISTRY.build({"type": "PSNRLoss", "loss_weight": 1, "reduction": "mean"}, where="train.pixel_opt")
    assert isinstance(loss, PSNRLoss)
    assert isinstance(LOSS_REGISTRY.build({"type": "L1Loss"}), L1Loss)
    assert isinstance(LOSS_REGISTRY.build({"type": "CharbonnierLoss", "eps": 1e-3}), CharbonnierLoss)
