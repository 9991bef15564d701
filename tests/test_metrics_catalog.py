"""The metric catalog (ddr_restore.metrics.catalog): declarations, create_metric, errors, shared RealBlur alignment,
LPIPS/Q_DDR as catalog metrics, and option-file checks of val.metrics."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from skimage import data

from ddr_restore.errors import InputError, UnknownNameError
from ddr_restore.metrics import (Metric, create_metric, list_metrics, metric_direction, metric_info,
                                 register_metric)
from ddr_restore.metrics.alignment import realblur_score
from ddr_restore.metrics.psnr_ssim import calculate_psnr, calculate_ssim
from ddr_restore.registry import METRIC_REGISTRY
from ddr_restore.weights import converted_weights_path

EXPECTED = {  # name: (better, needs_reference) as the paper's tables and the metrics' definitions have them
    "psnr": ("higher", True), "ssim": ("higher", True), "lpips": ("lower", True), "q_ddr": ("higher", False),
    "psnr_realblur": ("higher", True), "ssim_realblur": ("higher", True),
}


OPTIONS = {  # a valid option file (the shipped NAFNet one, made tiny); val.metrics is what the tests vary
    "name": "catalog_test", "num_gpu": 0, "manual_seed": 1,
    "datasets": {"train": {"name": "t", "type": "SyntheticMotionBlurDataset", "gt_size": 32, "batch_size_per_gpu": 2},
                 "val": {"name": "v", "type": "SyntheticMotionBlurDataset", "length": 1}},
    "network_g": {"type": "NAFNet", "width": 8, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]},
    "train": {"optim_g": {"type": "AdamW", "lr": 1e-3}, "total_iter": 10,
              "pixel_opt": {"type": "PSNRLoss", "loss_weight": 1.0}},
    "val": {"val_freq": 5, "metrics": {"psnr": {"type": "calculate_psnr"}}},
}


def _pair(size: int = 48, seed: int = 0):
    rng = np.random.default_rng(seed)
    gt = np.ascontiguousarray(data.astronaut()[100:100 + size, 180:180 + size])
    noisy = np.clip(gt.astype(np.int16) + rng.integers(-25, 26, gt.shape), 0, 255).astype(np.uint8)
    return noisy, gt


# ------------------------------------------------------------------------------------------------ declarations


def test_catalog_lists_every_metric_with_its_declaration():
    assert set(EXPECTED) <= set(list_metrics())
    for name, (better, needs_ref) in EXPECTED.items():
        info = metric_info(name)
        assert (info.name, info.better, info.needs_reference) == (name, better, needs_ref)
        assert metric_direction(name) == better and info.description
    assert metric_info("psnr").options == {"crop_border": 0, "test_y_channel": False, "input_order": "HWC"}
    assert metric_info("lpips").options["net"] == "alex"
    assert metric_info("psnr_realblur").details == ("ecc_converged",)
    # aliases resolve to the catalog entry and are not listed twice
    assert metric_info("calculate_ssim") is metric_info("ssim")
    assert "calculate_psnr" not in list_metrics()


def test_is_better_follows_the_direction():
    lpips, psnr = metric_info("lpips"), metric_info("psnr")
    assert lpips.is_better(0.2, 0.3) and not lpips.is_better(0.3, 0.2)
    assert psnr.is_better(30.0, 29.0) and not psnr.is_better(29.0, 30.0)
    assert lpips.is_better(0.9, None) and not psnr.is_better(30.0, 30.0)


def test_pixel_metrics_equal_the_functions():
    noisy, gt = _pair()
    for y in (False, True):
        assert create_metric("psnr", crop_border=3, test_y_channel=y)(noisy, gt) == calculate_psnr(
            noisy, gt, crop_border=3, test_y_channel=y)
        assert create_metric("ssim", crop_border=3, test_y_channel=y)(noisy, gt) == calculate_ssim(
            noisy, gt, crop_border=3, test_y_channel=y)


def test_tensors_are_quantised_like_saved_images():
    import torch

    noisy, gt = _pair()
    t = torch.from_numpy(noisy).permute(2, 0, 1).float() / 255.0
    assert create_metric("psnr")(t, gt) == calculate_psnr(noisy, gt)
    with pytest.raises(InputError, match="uint8"):
        create_metric("psnr")(noisy.astype(np.float64), gt)


def test_realblur_variants_share_one_alignment(monkeypatch):
    from ddr_restore.metrics import alignment

    big = data.chelsea()[:80, :100]
    gt, shifted = big[4:68, 4:92].copy(), big[5:69, 3:91].copy()
    expected = realblur_score(shifted, gt)
    calls = []
    real = alignment.realblur_align
    monkeypatch.setattr(alignment, "realblur_align", lambda r, g: calls.append(1) or real(r, g))
    psnr, ssim = create_metric("psnr_realblur"), create_metric("ssim_realblur")
    value, details = psnr.compute(shifted, gt)
    assert value == expected.psnr and details == {"ecc_converged": expected.ecc_converged}
    assert ssim(shifted.copy(), gt.copy()) == expected.ssim  # equal content, other arrays: same alignment
    assert len(calls) == 1
    psnr(gt, gt)
    assert len(calls) == 2  # another pair is aligned again


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_name_lists_the_catalog():
    with pytest.raises(UnknownNameError) as err:
        create_metric("lpip")
    message = str(err.value)
    assert "'lpip'" in message
    for name, (better, _) in EXPECTED.items():
        assert name in message
    assert "lpips (lower is better" in message and "q_ddr (higher is better, no-reference" in message


def test_options_are_checked_without_loading_anything():
    with pytest.raises(InputError, match=r"nett.*accepted: net, cache_dir"):
        create_metric("lpips", nett="alex")
    with pytest.raises(InputError, match="squeeze"):
        create_metric("lpips", net="squeeze")
    with pytest.raises(InputError, match="crop_border"):
        create_metric("psnr", crop_border=-1)
    with pytest.raises(InputError, match="lower-is-better"):
        create_metric("lpips", better="higher")
    assert create_metric("lpips", better="lower").info.better == "lower"
    assert not create_metric("lpips").loaded  # creating is cheap; the network loads on first use
    with pytest.raises(InputError, match="needs a reference"):
        create_metric("psnr")(_pair()[0])


def test_val_metrics_entries_are_validated_against_the_catalog():
    from ddr_restore.train.options import OptionsError, validate_options

    def errors(metrics):
        opt = copy.deepcopy(OPTIONS)
        opt["val"]["metrics"] = metrics
        with pytest.raises(OptionsError) as info:
            validate_options(opt)
        return str(info.value)

    ok = copy.deepcopy(OPTIONS)
    ok["val"]["metrics"] = {"psnr": {"type": "calculate_psnr", "crop_border": 0}, "lpips": {"type": "lpips",
                            "net": "alex"}, "q_ddr": {"type": "q_ddr", "pretrained": "none"}}
    validate_options(ok)
    assert "val.metrics.lpips: net: unknown LPIPS network 'alexx'" in errors({"lpips": {"type": "lpips",
                                                                                          "net": "alexx"}})
    assert "val.metrics.lpips: unknown option(s) nett" in errors({"lpips": {"type": "lpips", "nett": "alex"}})
    assert "lower-is-better" in errors({"lpips": {"type": "lpips", "better": "higher"}})
    text = errors({"x": {"type": "lpip"}})
    assert "val.metrics.x.type: unknown metric type 'lpip'" in text and "psnr_realblur" in text


# ------------------------------------------------------------------------------------------------ extending


def test_a_new_metric_is_one_class_with_the_decorator():
    @register_metric("test_mean_abs_error", better="lower", needs_reference=True, title="MAE", unit="DN")
    class MeanAbsError(Metric):
        """Mean absolute difference of the 8-bit images."""

        def __init__(self, scale: float = 1.0) -> None:
            super().__init__()
            self.scale = scale

        def score(self, restored, reference):
            return self.scale * float(np.mean(np.abs(restored.astype(np.float64) - reference)))

    noisy, gt = _pair()
    metric = create_metric("test_mean_abs_error", scale=2.0)
    assert metric(noisy, gt) == pytest.approx(2 * np.mean(np.abs(noisy.astype(float) - gt)))
    assert metric_direction("test_mean_abs_error") == "lower" and metric.options == {"scale": 2.0}
    assert "test_mean_abs_error" in list_metrics()


def test_plain_registered_function_still_works():
    @METRIC_REGISTRY.register("test_plain_fn_metric")
    def plain(img, img2, offset=0.0):
        """BasicSR-style: a function of two images."""
        return float(np.mean(img)) - float(np.mean(img2)) + offset

    noisy, gt = _pair()
    metric = create_metric("test_plain_fn_metric", offset=1.0)
    assert metric(noisy, gt) == pytest.approx(plain(noisy, gt, 1.0))
    assert metric.info.better == "higher"  # undeclared: the old default
    assert create_metric("test_plain_fn_metric", better="lower").info.better == "lower"
    with pytest.raises(InputError, match="offst"):
        create_metric("test_plain_fn_metric", offst=1.0)
    assert "test_plain_fn_metric" not in list_metrics()  # not a catalog class, but usable by name


# ------------------------------------------------------------------------------------------------ heavy metrics


def test_lpips_metric_matches_lpips_distance():
    if not converted_weights_path("alex").is_file():
        pytest.skip("offline LPIPS alex weights not prepared (run ddr-fetch-lpips)")
    from ddr_restore.metrics.lpips_metric import build_lpips, lpips_distance

    noisy, gt = _pair(64)
    metric = create_metric("lpips", net="alex")
    value = metric(noisy, gt)
    assert metric.loaded and value == pytest.approx(lpips_distance(build_lpips("alex"), noisy, gt), abs=1e-6)
    assert metric(gt, gt) == pytest.approx(0.0, abs=1e-6)
    assert metric.describe() == {"net": "alex", "version": "0.1", "input": "uint8 outputs scaled to [-1,1]"}


def test_lpips_without_weights_names_the_fix(tmp_path):
    from ddr_restore.errors import MissingPathError

    metric = create_metric("lpips", cache_dir=str(tmp_path))
    with pytest.raises(MissingPathError, match="ddr-fetch-lpips"):
        metric.load()


def test_q_ddr_needs_no_reference_and_says_when_clip_is_random(one_thread):
    metric = create_metric("q_ddr", pretrained="none")
    assert metric.caveats() == [] and metric.describe()["clip_random"] is None  # nothing loaded yet
    noisy, gt = _pair(64)
    value = metric(noisy)
    assert np.isfinite(value) and metric(noisy, gt) == value  # a reference is ignored
    assert metric.describe()["clip_random"] is True and "RANDOMLY" in metric.caveats()[0]
