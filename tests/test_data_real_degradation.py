"""The Real-ESRGAN-style second-order degradation pipeline and the on-the-fly SyntheticSRDataset."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Mapping

import numpy as np
import pytest
import torch

from ddr_restore.data import build_dataset
from ddr_restore.data.kernels import FinalSincConfig, KernelConfig
from ddr_restore.data.real_degradation import (
    DegradationConfig,
    add_gaussian_noise,
    add_poisson_noise,
    degrade,
    usm_sharpen,
)
from ddr_restore.data.sr_synthetic import SyntheticSRDataset
from ddr_restore.errors import InputError
from ddr_restore.imageio import write_image

REPO_ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-9


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour pattern plus texture (float32 HWC in [0, 1])."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = [0.5 + 0.3 * np.sin(xx / (4 + 3 * c) + yy / (5 + 2 * c) + c) for c in range(3)]
    img = np.stack(base, -1) + 0.1 * rng.standard_normal((h, w, 3))
    return np.clip(img, 0, 1).astype(np.float32)


# A configuration whose every range differs from the defaults (narrow), so an ignored range shows up.
NARROW: Dict[str, Any] = {
    "blur": {"kernel_size": [9, 11], "sigma": [1.0, 1.2], "sinc_prob": 0.3, "betag": [0.8, 1.5],
             "betap": [1.0, 1.3], "sinc_cutoff_small": [1.5, 1.6]},
    "resize": {"prob": [0.4, 0.4, 0.2], "range": [0.6, 1.1], "modes": ["bicubic", "area"]},
    "noise": {"gaussian_prob": 0.5, "gaussian_sigma": [7, 8], "poisson_scale": [0.4, 0.5], "gray_prob": 0.5},
    "jpeg": {"quality": [60.2, 62.7]},
    "second_order": {
        "blur_prob": 0.5,
        "blur": {"kernel_size": [13, 15], "sigma": [0.5, 0.6], "sinc_prob": 0.3, "sinc_cutoff_large": [2.0, 2.1]},
        "resize": {"prob": [0.3, 0.3, 0.4], "range": [0.8, 1.05], "modes": ["bilinear"]},
        "noise": {"gaussian_prob": 0.6, "gaussian_sigma": [3, 4], "poisson_scale": [1.1, 1.2], "gray_prob": 0.3},
        "jpeg": {"quality": [80, 85]},
    },
    "final": {"resize_modes": ["area"], "sinc": {"prob": 0.5, "kernel_size": [5, 7], "cutoff": [2.5, 2.6]},
              "jpeg": {"quality": [70, 71]}, "sinc_before_jpeg_prob": 0.3},
}


def _within(value: float, r, name: str) -> None:
    assert r[0] - EPS <= value <= r[1] + EPS, f"{name}={value} outside {list(r)}"


def _check_kernel(params: Mapping[str, Any], cfg: KernelConfig, where: str) -> None:
    _within(params["size"], cfg.kernel_size, f"{where}.size")
    assert params["size"] % 2 == 1
    if params["type"] == "sinc":
        r = cfg.sinc_cutoff_small if params["size"] < cfg.sinc_small_below else cfg.sinc_cutoff_large
        _within(params["cutoff"], r, f"{where}.cutoff")
        return
    assert params["type"] in cfg.kernel_types
    _within(params["sigma_x"], cfg.sigma, f"{where}.sigma_x")
    _within(params["sigma_y"], cfg.sigma, f"{where}.sigma_y")
    if params["type"].endswith("aniso"):
        _within(params["theta"], cfg.rotation, f"{where}.theta")
    else:
        assert params["sigma_x"] == params["sigma_y"] and params["theta"] == 0
    if params["type"].startswith("generalized"):
        _within(params["beta"], cfg.betag, f"{where}.beta")
    elif params["type"].startswith("plateau"):
        _within(params["beta"], cfg.betap, f"{where}.beta")


def _check_record(rec: Mapping[str, Any], cfg: DegradationConfig, gt_shape) -> None:
    """Every value drawn lies within the configured range (independent re-statement of the spec)."""
    H, W = gt_shape[:2]
    s = rec["scale"]
    for key, stage, ref in (("first", cfg.first, (H, W)), ("second", cfg.second, (H // s, W // s))):
        r = rec[key]
        if r["blur"] is not None:
            _check_kernel(r["blur"], stage.blur, f"{key}.blur")
        rs = r["resize"]
        assert rs["mode"] in stage.resize.modes
        if rs["direction"] == "up":
            _within(rs["factor"], (1.0, stage.resize.range[1]), f"{key}.resize.factor")
        elif rs["direction"] == "down":
            _within(rs["factor"], (stage.resize.range[0], 1.0), f"{key}.resize.factor")
        else:
            assert rs["direction"] == "keep" and rs["factor"] == 1.0
        assert rs["size"] == (max(1, int(ref[0] * rs["factor"])), max(1, int(ref[1] * rs["factor"])))
        nz = r["noise"]
        if nz["type"] == "gaussian":
            _within(nz["sigma"], stage.noise.gaussian_sigma, f"{key}.noise.sigma")
        else:
            assert nz["type"] == "poisson"
            _within(nz["scale"], stage.noise.poisson_scale, f"{key}.noise.scale")
        assert isinstance(nz["gray"], bool)
        _within(r["jpeg"]["quality_drawn"], stage.jpeg.quality, f"{key}.jpeg.quality")
        assert r["jpeg"]["quality"] == round(r["jpeg"]["quality_drawn"])
    fin = rec["final"]
    assert fin["resize"]["mode"] in cfg.final.resize_modes
    assert fin["resize"]["size"] == (H // s, W // s)
    assert fin["order"] in ("sinc_then_jpeg", "jpeg_then_sinc")
    if fin["sinc"]["type"] == "sinc":
        _within(fin["sinc"]["size"], cfg.final.sinc.kernel_size, "final.sinc.size")
        _within(fin["sinc"]["cutoff"], cfg.final.sinc.cutoff, "final.sinc.cutoff")
    else:
        assert fin["sinc"]["type"] == "identity"
    _within(fin["jpeg"]["quality_drawn"], cfg.final.jpeg.quality, "final.jpeg.quality")


@pytest.fixture(scope="module")
def draws() -> Dict[str, List[Dict[str, Any]]]:
    """200 records of the default pipeline and 200 of the narrow one (x4 on 64 px, x2 on 48x40)."""
    out: Dict[str, List[Dict[str, Any]]] = {}
    gt = _photo(64, 64)
    default = DegradationConfig()
    out["default"] = [degrade(gt, 4, default, np.random.default_rng(i))[1] for i in range(200)]
    narrow = DegradationConfig.from_dict(NARROW)
    gt2 = _photo(48, 40)
    out["narrow"] = [degrade(gt2, 2, narrow, np.random.default_rng(i))[1] for i in range(200)]
    return out


# ------------------------------------------------------------------------------------------ configuration
def test_defaults_are_real_esrgan_published_options():
    """train_realesrnet_x4plus.yml / Real-ESRGAN §3, restated here from the published file."""
    c = DegradationConfig()
    f, s, fin = c.first, c.second, c.final
    assert f.blur_prob == 1.0 and s.blur_prob == 0.8
    assert f.blur.kernel_size == (7, 21) and f.blur.sigma == (0.2, 3.0) and s.blur.sigma == (0.2, 1.5)
    assert f.blur.kernel_probs == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and f.blur.sinc_prob == 0.1
    assert f.blur.betag == (0.5, 4.0) and f.blur.betap == (1.0, 2.0) and s.blur.sinc_prob == 0.1
    assert f.resize.prob == (0.2, 0.7, 0.1) and f.resize.range == (0.15, 1.5)
    assert s.resize.prob == (0.3, 0.4, 0.3) and s.resize.range == (0.3, 1.2)
    assert f.resize.modes == ("area", "bilinear", "bicubic") == s.resize.modes == fin.resize_modes
    assert (f.noise.gaussian_prob, f.noise.gaussian_sigma, f.noise.poisson_scale, f.noise.gray_prob) == (
        0.5, (1.0, 30.0), (0.05, 3.0), 0.4)
    assert (s.noise.gaussian_prob, s.noise.gaussian_sigma, s.noise.poisson_scale, s.noise.gray_prob) == (
        0.5, (1.0, 25.0), (0.05, 2.5), 0.4)
    assert f.jpeg.quality == s.jpeg.quality == fin.jpeg.quality == (30.0, 95.0)
    assert fin.sinc.prob == 0.8 and fin.sinc_before_jpeg_prob == 0.5
    assert fin.sinc.cutoff == pytest.approx((math.pi / 3, math.pi))


def test_from_dict_round_trips_and_merges_partial_sections():
    cfg = DegradationConfig.from_dict(NARROW)
    assert DegradationConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.second.noise.gaussian_sigma == (3.0, 4.0)
    assert cfg.final.sinc == FinalSincConfig(prob=0.5, kernel_size=(5, 7), cutoff=(2.5, 2.6))
    partial = DegradationConfig.from_dict({"second_order": {"noise": {"gray_prob": 0.0}}})
    assert partial.second.noise.gray_prob == 0.0
    assert partial.second.noise.gaussian_sigma == (1.0, 25.0)  # the rest of the section keeps the defaults
    assert partial.second.blur.sigma == (0.2, 1.5)  # second-order base, not first-order
    assert DegradationConfig.from_dict(None) == DegradationConfig() == DegradationConfig.from_dict({})


@pytest.mark.parametrize(
    "options, path",
    [
        ({"nosie": {}}, "degradation: unknown option(s) ['nosie']"),
        ({"second_order": {"noise": {"noise_range": [1, 2]}}}, "degradation.second_order.noise: unknown option"),
        ({"second_order": {"noise": {"gaussian_sigma": [25, 1]}}}, "degradation.second_order.noise.gaussian_sigma:"),
        ({"noise": {"gray_prob": 1.5}}, "degradation.noise.gray_prob:"),
        ({"noise": {"poisson_scale": "big"}}, "degradation.noise.poisson_scale:"),
        ({"resize": {"prob": [0.5, 0.5, 0.5]}}, "degradation.resize.prob:"),
        ({"resize": {"range": [1.1, 1.5]}}, "degradation.resize.range:"),
        ({"resize": {"modes": ["lanczos"]}}, "degradation.resize.modes:"),
        ({"jpeg": {"quality": [30, 101]}}, "degradation.jpeg.quality:"),
        ({"second_order": {"blur_prob": True}}, "degradation.second_order.blur_prob:"),
        ({"second_order": {"blur": {"sigma": [0, 1]}}}, "degradation.second_order.blur: sigma"),
        ({"blur": {"sigmaa": [1, 2]}}, "degradation.blur: unknown blur-kernel option"),
        ({"final": {"sinc": {"prob": 2}}}, "degradation.final.sinc: final sinc prob"),
        ({"final": {"order": 1}}, "degradation.final: unknown option(s) ['order']"),
        ({"final": {"sinc_before_jpeg_prob": -1}}, "degradation.final.sinc_before_jpeg_prob:"),
        ({"second_order": [1, 2]}, "degradation.second_order: must be a mapping"),
    ],
)
def test_bad_options_name_the_key_path(options, path):
    with pytest.raises(InputError) as info:
        DegradationConfig.from_dict(options)
    assert path in str(info.value)


def test_dataset_option_errors_name_the_dataset_section():
    opt = {"type": "SyntheticSRDataset", "scale": 2, "gt_size": 32, "images": ["astronaut"],
           "degradation": {"jpeg": {"quality": [95, 30]}}}
    with pytest.raises(InputError, match=r"datasets\.train: degradation\.jpeg\.quality:"):
        build_dataset(opt, "train")
    for bad, match in (({"scale": 5}, "scale must be one of"), ({"gt_size": 30, "scale": 4}, "multiple of scale"),
                       ({"gt_size": None}, "gt_size is required")):
        with pytest.raises(InputError, match=match):
            build_dataset({**opt, "degradation": None, **bad}, "train")


# ------------------------------------------------------------------------------------------ the pipeline
def test_degrade_is_deterministic_for_a_seed():
    gt = _photo(64, 64)
    a, ra = degrade(gt, 4, rng=np.random.default_rng(123))
    b, rb = degrade(gt, 4, rng=np.random.default_rng(123))
    assert a.tobytes() == b.tobytes() and ra == rb
    c, rc = degrade(gt, 4, rng=np.random.default_rng(124))
    assert a.tobytes() != c.tobytes() and ra != rc


@pytest.mark.parametrize("which", ["default", "narrow"])
def test_every_recorded_value_lies_in_its_configured_range(draws, which):
    cfg = DegradationConfig() if which == "default" else DegradationConfig.from_dict(NARROW)
    shape = (64, 64) if which == "default" else (48, 40)
    for rec in draws[which]:
        _check_record(rec, cfg, shape)
    recs = draws[which]
    # every option of a choice is drawn at some point (nothing silently fixed)
    assert {r["first"]["resize"]["mode"] for r in recs} == set(cfg.first.resize.modes)
    assert {r["second"]["resize"]["direction"] for r in recs} == {"up", "down", "keep"}
    assert {r["first"]["noise"]["type"] for r in recs} == {"gaussian", "poisson"}
    assert {r["second"]["noise"]["gray"] for r in recs} == {True, False}
    assert {r["final"]["order"] for r in recs} == {"sinc_then_jpeg", "jpeg_then_sinc"}
    assert {r["final"]["sinc"]["type"] for r in recs} == {"sinc", "identity"}


def _binomial_ok(count: int, n: int, p: float, z: float = 4.5) -> bool:
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


def test_probabilities_are_respected(draws):
    n = 200
    for which, cfg in (("default", DegradationConfig()), ("narrow", DegradationConfig.from_dict(NARROW))):
        recs = draws[which]
        second_blur = sum(r["second"]["blur"] is not None for r in recs)
        assert _binomial_ok(second_blur, n, cfg.second.blur_prob), (which, second_blur)
        assert all(r["first"]["blur"] is not None for r in recs)  # blur_prob 1 in both
        for stage in ("first", "second"):
            dirs = Counter(r[stage]["resize"]["direction"] for r in recs)
            for d, p in zip(("up", "down", "keep"), getattr(cfg, stage).resize.prob):
                assert _binomial_ok(dirs[d], n, p), (which, stage, dirs)
            gauss = sum(r[stage]["noise"]["type"] == "gaussian" for r in recs)
            assert _binomial_ok(gauss, n, getattr(cfg, stage).noise.gaussian_prob), (which, stage, gauss)
            gray = sum(r[stage]["noise"]["gray"] for r in recs)
            assert _binomial_ok(gray, n, getattr(cfg, stage).noise.gray_prob), (which, stage, gray)
        sinc_first = sum(r["final"]["order"] == "sinc_then_jpeg" for r in recs)
        assert _binomial_ok(sinc_first, n, cfg.final.sinc_before_jpeg_prob), (which, sinc_first)
        final_sinc = sum(r["final"]["sinc"]["type"] == "sinc" for r in recs)
        assert _binomial_ok(final_sinc, n, cfg.final.sinc.prob), (which, final_sinc)

    gt = _photo(32, 32)
    for prob in (0.0, 1.0):
        cfg = DegradationConfig.from_dict({"second_order": {"blur_prob": prob}})
        blurred = [degrade(gt, 2, cfg, np.random.default_rng(i))[1]["second"]["blur"] is not None for i in range(40)]
        assert all(b == bool(prob) for b in blurred)


@pytest.mark.parametrize("scale, shape", [(1, (33, 47)), (2, (62, 94)), (3, (63, 75)), (4, (64, 96)), (4, (8, 12))])
def test_output_size_and_8bit_levels(scale, shape):
    gt = _photo(*shape, seed=scale)
    for seed in range(4):
        lq, rec = degrade(gt, scale, rng=np.random.default_rng(seed))
        assert lq.shape == (shape[0] // scale, shape[1] // scale, 3) and lq.dtype == np.float32
        assert rec["output_size"] == lq.shape[:2]
        assert lq.min() >= 0 and lq.max() <= 1
        np.testing.assert_allclose(lq * 255, np.rint(lq * 255), atol=1e-4)  # 8-bit levels
    uint8_lq, _ = degrade((gt * 255).round().astype(np.uint8), scale, rng=np.random.default_rng(0))
    assert uint8_lq.shape == lq.shape


def test_sizes_not_divisible_by_scale_are_refused():
    with pytest.raises(InputError, match=r"65x64 \(WxH\) is not divisible by scale 4"):
        degrade(_photo(64, 65), 4, rng=np.random.default_rng(0))
    with pytest.raises(InputError, match="scale must be a positive integer"):
        degrade(_photo(64, 64), 0, rng=np.random.default_rng(0))
    with pytest.raises(InputError, match="HWC RGB"):
        degrade(np.zeros((64, 64), np.float32), 2, rng=np.random.default_rng(0))


# Every stage off: what remains is the final area resize, an integer block average, and (lossless-ish) JPEG.
IDENTITY_STAGE = {"blur_prob": 0.0, "resize": {"prob": [0, 0, 1]},
                  "noise": {"gaussian_prob": 1.0, "gaussian_sigma": [0, 0]}, "jpeg": {"quality": [100, 100]}}
IDENTITY = {**IDENTITY_STAGE, "second_order": IDENTITY_STAGE,
            "final": {"resize_modes": ["area"], "sinc": {"prob": 0.0}, "jpeg": {"quality": [100, 100]}}}


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_lq_is_aligned_with_gt_block_average(scale):
    """Grey blocks of size ``scale`` with random levels: a one-pixel offset would mix neighbouring blocks."""
    rng = np.random.default_rng(scale)
    blocks = rng.integers(20, 236, (8, 10)).astype(np.float32) / 255
    gt = np.repeat(np.repeat(blocks, scale, 0), scale, 1)[..., None].repeat(3, 2)
    lq, _ = degrade(gt, scale, DegradationConfig.from_dict(IDENTITY), np.random.default_rng(0))
    assert lq.shape == (8, 10, 3)
    assert np.abs(lq - blocks[..., None]).max() <= 2.5 / 255


def _noise_only(stage_noise: Dict[str, Any]) -> DegradationConfig:
    first = {**IDENTITY_STAGE, "noise": stage_noise}
    return DegradationConfig.from_dict({**IDENTITY, **first})


def test_gaussian_noise_has_the_recorded_sigma_and_grey_means_equal_channels():
    gt = np.full((96, 96, 3), 0.5, np.float32)
    for gray in (0.0, 1.0):
        cfg = _noise_only({"gaussian_prob": 1.0, "gaussian_sigma": [12, 20], "gray_prob": gray})
        lq, rec = degrade(gt, 1, cfg, np.random.default_rng(7))
        sigma = rec["first"]["noise"]["sigma"]
        assert 12 <= sigma <= 20 and rec["first"]["noise"]["gray"] is bool(gray)
        noise = (lq - 0.5) * 255
        # JPEG keeps luma at full resolution (chroma is subsampled 4:2:0), so check the noise on JPEG's Y:
        # independent channels give sigma * |w|, one grey field gives sigma.
        luma_w = np.array([0.299, 0.587, 0.114])
        expected = sigma if gray else sigma * float(np.linalg.norm(luma_w))
        assert (noise @ luma_w).std() == pytest.approx(expected, rel=0.08)
        channel_spread = np.abs(noise[..., 0] - noise[..., 1]).mean()
        if gray:
            assert channel_spread < 0.1 * sigma  # one noise field for all channels (JPEG q100 adds ~1 level)
        else:
            assert channel_spread > 0.15 * sigma  # colour noise survives the chroma subsampling in part


def test_poisson_noise_matches_the_shot_noise_formula():
    """Half the pixels at 128/255, the rest covering all 256 levels: v = 256, var = q / v * scale^2."""
    rng = np.random.default_rng(0)
    img = np.full((200, 256, 3), 128 / 255, np.float32)
    img[100:] = (np.arange(256, dtype=np.float32) / 255)[None, :, None]
    scale = 1.5
    out = add_poisson_noise(img, scale, gray=False, rng=rng)
    noise = (out - img)[:100]
    assert noise.var() == pytest.approx((128 / 255) / 256 * scale**2, rel=0.05)
    assert abs(noise.mean()) < 3e-3
    # grey: the same noise (from the luminance) on every channel
    out_g = add_poisson_noise(img, scale, gray=True, rng=rng)
    ng = (out_g - img)[:100]
    np.testing.assert_allclose(ng[..., 0], ng[..., 2], atol=1e-6)
    assert ng.var() == pytest.approx((128 / 255) / 256 * scale**2, rel=0.05)
    # few levels -> v small -> much stronger noise (photon counts of a dark, flat image)
    flat = np.full((64, 64, 3), 128 / 255, np.float32)
    nf = add_poisson_noise(flat, 0.1, gray=False, rng=rng) - flat  # v = 1: var = q * 0.01
    assert nf.var() == pytest.approx((128 / 255) * 0.01, rel=0.1)
    g = add_gaussian_noise(flat, 10.0, gray=False, rng=rng)
    assert (g - flat).std() * 255 == pytest.approx(10.0, rel=0.05)


def test_usm_sharpen_increases_edge_contrast_and_leaves_flat_areas():
    img = np.full((64, 64, 3), 0.3, np.float32)
    img[:, 32:] = 0.7
    sharp = usm_sharpen(img)
    assert sharp[:, 30].mean() < 0.3 - 1e-3 and sharp[:, 33].mean() > 0.7 + 1e-3  # overshoot at the edge
    flat = np.full((64, 64, 3), 0.4, np.float32)
    np.testing.assert_allclose(usm_sharpen(flat), flat, atol=1e-6)


# ------------------------------------------------------------------------------------------ the dataset
def _train_set(**kw: Any) -> SyntheticSRDataset:
    args: Dict[str, Any] = {"phase": "train", "scale": 4, "gt_size": 48, "images": ["astronaut", "rocket"],
                            "length": 8}
    args.update(kw)
    return SyntheticSRDataset(**args)


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_train_items_have_sr_shapes(scale):
    ds = _train_set(scale=scale)
    item = ds[0]
    assert item["gt"].shape == (3, 48, 48) and item["lq"].shape == (3, 48 // scale, 48 // scale)
    assert item["gt"].dtype == torch.float32 and item["lq"].dtype == torch.float32
    assert 0 <= float(item["lq"].min()) and float(item["lq"].max()) <= 1
    assert item["gt_path"] == "astronaut.png"


def test_train_items_are_reproducible_under_manual_seed():
    ds = _train_set()
    torch.manual_seed(3)
    a = [ds[i] for i in range(3)]
    torch.manual_seed(3)
    b = [ds[i] for i in range(3)]
    torch.manual_seed(4)
    c = ds[0]
    for x, y in zip(a, b):
        assert torch.equal(x["lq"], y["lq"]) and torch.equal(x["gt"], y["gt"])
    assert not torch.equal(a[0]["lq"], a[1]["lq"])
    assert not torch.equal(a[0]["lq"], c["lq"])


def test_dataloader_with_two_workers_gives_the_same_batches_for_a_seed():
    ds = _train_set(gt_size=32, length=8)

    def batches(seed: int) -> List[torch.Tensor]:
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=True)
        return [torch.cat([b["lq"].flatten(), b["gt"].flatten()]) for b in loader]

    first, again, other = batches(0), batches(0), batches(1)
    assert len(first) == 4
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1])  # the workers do not repeat each other


def test_val_items_are_fixed_centre_crops_of_the_photo():
    import skimage.data

    ds = SyntheticSRDataset(phase="val", scale=3, gt_size=60, seed=5)
    assert len(ds) == 2  # one item per default validation photo (chelsea, coffee)
    again = SyntheticSRDataset(phase="val", scale=3, gt_size=60, seed=5)
    other = SyntheticSRDataset(phase="val", scale=3, gt_size=60, seed=6)
    item = ds[0]
    assert torch.equal(item["lq"], again[0]["lq"]) and torch.equal(item["lq"], ds[0]["lq"])
    assert not torch.equal(item["lq"], other[0]["lq"])
    assert item["lq"].shape == (3, 20, 20) and item["gt"].shape == (3, 60, 60)
    chelsea = skimage.data.chelsea().astype(np.float32) / 255
    top, left = (chelsea.shape[0] - 60) // 2, (chelsea.shape[1] - 60) // 2
    expected = torch.from_numpy(chelsea[top : top + 60, left : left + 60].transpose(2, 0, 1).copy())
    assert torch.allclose(item["gt"], expected, atol=1e-6)
    whole = SyntheticSRDataset(phase="val", scale=4, images=["chelsea"])[0]  # 451x300 -> 448x300
    assert whole["gt"].shape == (3, 300, 448) and whole["lq"].shape == (3, 75, 112)


def test_folder_photos_are_checked_padded_and_sharpened(tmp_path):
    folder = tmp_path / "hr"
    write_image(folder / "a.png", _photo(40, 30))  # smaller than gt_size: mirror-padded
    write_image(folder / "b.png", _photo(80, 70, seed=1))
    ds = SyntheticSRDataset(phase="train", scale=2, gt_size=48, dataroot_gt=str(folder), length=4)
    torch.manual_seed(0)
    item = ds[0]
    assert item["gt"].shape == (3, 48, 48) and item["lq"].shape == (3, 24, 24)
    assert item["gt_path"].endswith("a.png")
    usm = SyntheticSRDataset(phase="val", scale=2, gt_size=48, dataroot_gt=str(folder), gt_usm=True)[1]
    plain = SyntheticSRDataset(phase="val", scale=2, gt_size=48, dataroot_gt=str(folder))[1]
    assert not torch.equal(usm["gt"], plain["gt"]) and float(usm["gt"].std()) > float(plain["gt"].std())
    (folder / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)  # a broken file is named at build time
    with pytest.raises(InputError, match="c.png"):
        SyntheticSRDataset(phase="train", scale=2, gt_size=48, dataroot_gt=str(folder))


# ------------------------------------------------------------------------------------------ basicsr comparison
# Draws N kernels with basicsr's own functions, sampled the way RealESRGANDataset does (kernel size, then sinc or
# random_mixed_kernels with the published lists), and N with ddr_restore.data.kernels; both sets are summarised by
# the same function. Runs in a subprocess: importing basicsr needs the project's torchvision shim
# (ddr_restore.integrations.basicsr) and leaves global state (registries, loggers) behind.
_COMPARE = r"""
import json, math, random, sys
import numpy as np
import ddr_restore.integrations.basicsr  # installs the torchvision shim, then imports basicsr
from basicsr.data.degradations import circular_lowpass_kernel, random_mixed_kernels
from ddr_restore.data.kernels import KernelConfig, FinalSincConfig, random_kernel, random_final_sinc_kernel

N, N_OTHER = int(sys.argv[1]), int(sys.argv[2])
KLIST = ['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso']
KPROB = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
SIZES = [2 * v + 1 for v in range(3, 11)]

def basicsr_kernel(sigma):
    size = random.choice(SIZES)
    if np.random.uniform() < 0.1:
        wc = np.random.uniform(np.pi / 3, np.pi) if size < 13 else np.random.uniform(np.pi / 5, np.pi)
        return circular_lowpass_kernel(wc, size, pad_to=False), True
    k = random_mixed_kernels(KLIST, KPROB, size, sigma, sigma, [-math.pi, math.pi], [0.5, 4], [1, 2], noise_range=None)
    return k, False

def basicsr_final():
    if np.random.uniform() < 0.8:
        size = random.choice(SIZES)
        return circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), size, pad_to=False), True
    return np.ones((1, 1)), False

def stats(items):
    size, spread, aniso, peak, sinc_centre, is_sinc, ksum = [], [], [], [], [], [], []
    for k, sinc in items:
        k = np.asarray(k, np.float64)
        r = k.shape[0] // 2
        y, x = np.mgrid[-r:r + 1, -r:r + 1]
        size.append(k.shape[0]); is_sinc.append(float(sinc)); ksum.append(abs(k.sum() - 1))
        if sinc:
            sinc_centre.append(k[r, r])
            continue
        m = np.array([[(k * x * x).sum(), (k * x * y).sum()], [(k * x * y).sum(), (k * y * y).sum()]])
        ev = np.linalg.eigvalsh(m)
        spread.append(ev.sum()); peak.append(k.max())
        aniso.append(ev[0] / ev[1] if ev[1] > 1e-12 else 1.0)  # a near-delta kernel is isotropic
    out = {}
    for name, v in (('size', size), ('sinc_fraction', is_sinc), ('spread', spread), ('anisotropy', aniso),
                    ('peak', peak), ('sinc_centre', sinc_centre)):
        v = np.asarray(v, np.float64)
        out[name] = [float(v.mean()), float(v.std()), int(v.size)] if v.size else [0.0, 0.0, 0]
    out['max_sum_error'] = float(max(ksum))
    return out

random.seed(0); np.random.seed(0)
res = {'first': {'basicsr': stats([basicsr_kernel([0.2, 3]) for _ in range(N)])},
       'second': {'basicsr': stats([basicsr_kernel([0.2, 1.5]) for _ in range(N_OTHER)])},
       'final': {'basicsr': stats([basicsr_final() for _ in range(N_OTHER)])}}
rng = np.random.default_rng(0)
def ours(cfg):
    k, p = random_kernel(rng, cfg)
    return k, p['type'] == 'sinc'
def ours_final():
    k, p = random_final_sinc_kernel(rng, FinalSincConfig())
    return k, p['type'] == 'sinc'
res['first']['ours'] = stats([ours(KernelConfig.first_order()) for _ in range(N)])
res['second']['ours'] = stats([ours(KernelConfig.second_order()) for _ in range(N_OTHER)])
res['final']['ours'] = stats([ours_final() for _ in range(N_OTHER)])
print(json.dumps(res))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("basicsr") is None,
                    reason="basicsr is not installed (optional extra: pip install -e '.[basicsr]')")
def test_kernel_statistics_match_basicsr(capsys):
    # 3000 first-order kernels (all six types + sinc) from each side, 1000 second-order and final ones (test time)
    proc = subprocess.run([sys.executable, "-c", _COMPARE, "3000", "1000"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"basicsr cannot be imported here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = []
    for order, pair in res.items():
        b, o = pair["basicsr"], pair["ours"]
        assert b["max_sum_error"] < 1e-6 and o["max_sum_error"] < 1e-6  # every kernel sums to 1
        names = ("size", "sinc_fraction", "sinc_centre")  # the final filter is a sinc or the identity
        if order != "final":
            names += ("spread", "anisotropy", "peak")
        for name in names:
            (mb, sb, nb), (mo, so, no) = b[name], o[name]
            se = math.sqrt(sb**2 / max(nb, 1) + so**2 / max(no, 1))
            z = abs(mb - mo) / se if se > 0 else 0.0
            lines.append(f"{order:6s} {name:13s} basicsr {mb:.4f} (n={nb})  ours {mo:.4f} (n={no})  z={z:.2f}")
            assert z < 4.5, lines[-1]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
