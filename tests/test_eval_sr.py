"""ddr-eval super-resolution presets (issue 9, item 4): ``--preset sr --scale N`` on LR/HR folders and
``--preset realsr`` on RealSR V3 / DRealSR trees.

Every expected number is computed here, independently of the code under test: the BT.601 Y channel, the border
crop and PSNR in numpy, SSIM with scikit-image (BasicSR's settings), and the bicubic input row with a small
MATLAB-``imresize`` upsampler written in this file (Keys a=-0.5, pixel-centre grid, symmetric edges, uint8 rounding
after each pass).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from skimage import data as skdata
from skimage.metrics import structural_similarity

from ddr_restore.eval.entry import main
from ddr_restore.eval.report import CAPTION_HEIGHT

NO_EXTRAS = ["--no-lpips", "--no-ddr", "--no-progress"]
LR_H, LR_W = 24, 32  # HR 48x64 at scale 2
TINY_NAFNET = {"type": "NAFNet", "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}


# ----------------------------------------------------------------------------------------------- independent maths


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _load(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma (MATLAB rgb2ycbcr) in [16, 235] of an 8-bit RGB image: RGB scaled to [0, 1] first."""
    r, g, b = (img[..., c].astype(np.float64) / 255.0 for c in range(3))
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def _crop(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border] if border else img


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10.0 * math.log10(255.0 ** 2 / mse)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    # BasicSR's SSIM: 11x11 Gaussian (sigma 1.5), population statistics, valid region, per channel then averaged.
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    if a.ndim == 3:
        kw["channel_axis"] = -1
    return structural_similarity(a.astype(np.float64), b.astype(np.float64), **kw)


def _sr_scores(out: np.ndarray, hr: np.ndarray, border: int) -> dict:
    """psnr_y, ssim_y, psnr_rgb, ssim_rgb of an 8-bit output against the (cropped) HR, ``border`` px removed."""
    ya, yb = _crop(_y(out), border), _crop(_y(hr), border)
    ra, rb = _crop(out, border), _crop(hr, border)
    return {"psnr_y": _psnr(ya, yb), "ssim_y": _ssim(ya, yb), "psnr_rgb": _psnr(ra, rb), "ssim_rgb": _ssim(ra, rb)}


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return np.where(ax <= 1, 1.5 * ax ** 3 - 2.5 * ax ** 2 + 1,
                    np.where(ax < 2, -0.5 * ax ** 3 + 2.5 * ax ** 2 - 4 * ax + 2, 0.0))


def _upsample_matrix(n: int, s: int) -> np.ndarray:
    """MATLAB imresize weights for upsampling n samples by an integer s (no antialiasing when enlarging)."""
    u = (np.arange(n * s) + 0.5) / s - 0.5  # pixel centres aligned (0-based)
    taps = np.floor(u).astype(int)[:, None] + np.arange(-1, 3)
    w = _cubic(u[:, None] - taps)
    w /= w.sum(axis=1, keepdims=True)
    taps = np.where(taps < 0, -taps - 1, taps)  # symmetric padding: ..., 1, 0 | 0, 1, ...
    taps = np.where(taps >= n, 2 * n - taps - 1, taps)
    mat = np.zeros((n * s, n))
    np.add.at(mat, (np.repeat(np.arange(n * s), 4), taps.ravel()), w.ravel())
    return mat


def _matlab_bicubic_up(lr: np.ndarray, s: int) -> np.ndarray:
    """``imresize(lr, s, 'bicubic')`` on uint8: rows first, rounded half up and saturated after each pass."""
    x = lr.astype(np.float64)
    x = np.floor(np.clip(np.einsum("oh,hwc->owc", _upsample_matrix(x.shape[0], s), x), 0, 255) + 0.5)
    x = np.floor(np.clip(np.einsum("ow,hwc->hoc", _upsample_matrix(x.shape[1], s), x), 0, 255) + 0.5)
    return x.astype(np.uint8)


def _rows(out: Path):
    with open(out / "per_image.csv", newline="") as f:
        return list(csv.DictReader(f))


def _user_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("ddr-eval: error: "), stderr
    return last


def _photo(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


@pytest.fixture
def sr_folders(tmp_path):
    """x2 pairs: LR 24x32; HR 48x64, or 49x65 (one extra row and column: cropped, MATLAB modcrop); restored."""
    root = tmp_path / "sr"
    photos = {"astronaut": skdata.astronaut(), "chelsea": skdata.chelsea(), "coffee": skdata.coffee()}
    for i, (name, img) in enumerate(photos.items()):
        hr = _photo(img, 2 * LR_H + (i == 1), 2 * LR_W + (i == 1))
        lr = _photo(hr[: 2 * LR_H, : 2 * LR_W], LR_H, LR_W)
        _save(root / "HR" / f"{name}.png", hr)
        _save(root / "LR" / f"{name}.png", lr)
        _save(root / "restored" / f"{name}.png", cv2.GaussianBlur(hr[: 2 * LR_H, : 2 * LR_W], (0, 0), 0.7))
    return root


def _sr_args(root: Path, out: Path, *extra: str):
    return ["--preset", "sr", "--scale", "2", "--input-dir", str(root / "LR"), "--target-dir", str(root / "HR"),
            "--out", str(out), *extra]


# ----------------------------------------------------------------------------------------------- Y-PSNR protocol


def test_y_psnr_with_border_crop_matches_numpy():
    """The sr preset's psnr_y/psnr_rgb (crop_border = scale) equal a direct numpy computation; the crop matters."""
    from ddr_restore.eval.evaluate import metric_specs
    from ddr_restore.metrics import create_metric

    rng = np.random.default_rng(3)
    hr = rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)
    out = np.clip(hr.astype(np.int16) + rng.integers(-12, 13, hr.shape), 0, 255).astype(np.uint8)
    out[:3] = 255 - out[:3]  # a wrong border: only the border crop keeps it out of the score
    specs = metric_specs("sr", None, {}, scale=3)
    assert specs["psnr_y"] == {"type": "psnr", "test_y_channel": True, "crop_border": 3}

    def value(column: str, **spec) -> float:
        s = {**specs[column], **spec}
        return create_metric(s.pop("type"), **s)(out, hr)

    assert value("psnr_y") == pytest.approx(_psnr(_crop(_y(out), 3), _crop(_y(hr), 3)), abs=1e-9)
    assert value("psnr_rgb") == pytest.approx(_psnr(_crop(out, 3), _crop(hr, 3)), abs=1e-9)
    assert value("ssim_y") == pytest.approx(_ssim(_crop(_y(out), 3), _crop(_y(hr), 3)), abs=1e-6)
    uncropped = value("psnr_y", crop_border=0)
    assert uncropped == pytest.approx(_psnr(_y(out), _y(hr)), abs=1e-9)
    assert value("psnr_y") > uncropped + 3
    # --crop-border overrides the scale; "psnr" means the Y-channel PSNR under the SR presets
    assert metric_specs("sr", ["psnr"], {"crop_border": 1}, scale=3)["psnr"] == {
        "type": "psnr", "test_y_channel": True, "crop_border": 1}


# ----------------------------------------------------------------------------------------------- restored mode


def test_sr_preset_restored_folders_csv_summary_input_row_and_grid(sr_folders, tmp_path, capsys):
    out = tmp_path / "res"
    summary = main(_sr_args(sr_folders, out, "--restored", str(sr_folders / "restored"), "--grid", "3",
                            *NO_EXTRAS))
    printed = capsys.readouterr().out
    rows = _rows(out)
    assert [r["name"] for r in rows] == ["astronaut", "chelsea", "coffee"]
    h, w = 2 * LR_H, 2 * LR_W
    restored_means, input_means = [], []
    for r in rows:
        hr = _load(sr_folders / "HR" / f"{r['name']}.png")[:h, :w]  # chelsea's extra row/column cropped
        restored = _load(sr_folders / "restored" / f"{r['name']}.png")
        bicubic = _matlab_bicubic_up(_load(sr_folders / "LR" / f"{r['name']}.png"), 2)
        want, want_in = _sr_scores(restored, hr, 2), _sr_scores(bicubic, hr, 2)
        for col in want:
            tol = 1e-6 if col.startswith("psnr") else 1e-5
            assert float(r[col]) == pytest.approx(want[col], abs=tol), (r["name"], col)
            assert float(r[f"input_{col}"]) == pytest.approx(want_in[col], abs=tol), (r["name"], col)
        assert r["lpips"] == "" and r["q_ddr"] == "" and r["input_lpips"] == ""
        restored_means.append(want)
        input_means.append(want_in)
        grid = _load(out / "grid" / f"{r['name']}.png")
        assert grid.shape == (CAPTION_HEIGHT + h, 3 * w, 3)  # bicubic | restored | target, equal panels
        panels = [grid[CAPTION_HEIGHT:, i * w:(i + 1) * w] for i in range(3)]
        assert np.array_equal(panels[0], bicubic)
        assert np.array_equal(panels[1], restored)
        assert np.array_equal(panels[2], hr)

    assert summary["preset"] == "sr" and summary["scale"] == 2 and summary["mode"] == "restored"
    for col in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"):
        assert summary["mean"][col] == pytest.approx(np.mean([m[col] for m in restored_means]), abs=1e-5)
        assert summary["input_scores"]["mean"][col] == pytest.approx(np.mean([m[col] for m in input_means]),
                                                                     abs=1e-5)
        assert summary["metrics"][col]["crop_border"] == 2
        assert summary["metrics"][col]["test_y_channel"] is col.endswith("_y")
    assert summary["input_scores"]["label"] == "bicubic x2" and summary["input_scores"]["num_images"] == 3
    assert summary["mean"]["psnr_y"] > summary["input_scores"]["mean"]["psnr_y"]  # mild blur beats bicubic x2
    protocol = summary["protocol"]
    for needle in ("BT.601", "65.481", "crop_border=2", "modcrop", "LR size x 2", "quantised to uint8",
                   "bicubic imresize", "upsampled x2"):
        assert needle in protocol, needle
    assert json.loads((out / "summary.json").read_text()) == summary
    # the printed table: one row for the bicubic inputs, one for the restored images, the means as in the summary
    lines = {line.split()[0]: line for line in printed.splitlines() if line.split()}
    assert f"{summary['input_scores']['mean']['psnr_y']:.4f}" in lines["bicubic"]
    assert f"{summary['mean']['psnr_y']:.4f}" in lines["restored"]

    # --metrics psnr under sr is the Y-channel PSNR; --crop-border 0 overrides crop_border = scale
    summary = main(_sr_args(sr_folders, tmp_path / "nocrop", "--restored", str(sr_folders / "restored"),
                            "--metrics", "psnr", "psnr_rgb", "--crop-border", "0", "--no-progress"))
    hr = _load(sr_folders / "HR" / "astronaut.png")
    first = _rows(tmp_path / "nocrop")[0]
    assert float(first["psnr"]) == pytest.approx(_psnr(_y(_load(sr_folders / "restored" / "astronaut.png")),
                                                       _y(hr)), abs=1e-6)
    assert summary["metrics"]["psnr"]["crop_border"] == 0 and "set by --crop-border" in summary["protocol"]


def test_sr_restored_without_lr_folder_crops_hr_and_skips_input_row(sr_folders, tmp_path):
    summary = main(["--preset", "sr", "--scale", "2", "--target-dir", str(sr_folders / "HR"), "--restored",
                    str(sr_folders / "restored"), "--out", str(tmp_path / "o"), *NO_EXTRAS])
    assert summary["input_scores"] is None and summary["num_images"] == 3
    row = _rows(tmp_path / "o")[1]
    hr = _load(sr_folders / "HR" / "chelsea.png")[: 2 * LR_H, : 2 * LR_W]  # 49x65 -> 48x64
    assert float(row["psnr_y"]) == pytest.approx(
        _sr_scores(_load(sr_folders / "restored" / "chelsea.png"), hr, 2)["psnr_y"], abs=1e-6)
    assert "input_psnr_y" not in row


def test_sr_filename_tmpl_and_inputs_stored_at_hr_size(tmp_path):
    """BasicSR-style LR names (0001x2.png, --filename-tmpl '{}x2'); an input at HR size is scored as it is."""
    hr = _photo(skdata.astronaut(), 2 * LR_H, 2 * LR_W)
    registered = cv2.GaussianBlur(hr, (0, 0), 1.5)  # an LR stored at HR size (RealSR V1/V2 style)
    _save(tmp_path / "HR" / "0001.png", hr)
    _save(tmp_path / "LR" / "0001x2.png", registered)
    _save(tmp_path / "out" / "0001x2.png", cv2.GaussianBlur(hr, (0, 0), 0.6))  # an output named like its input
    summary = main(["--preset", "sr", "--scale", "2", "--input-dir", str(tmp_path / "LR"), "--target-dir",
                    str(tmp_path / "HR"), "--filename-tmpl", "{}x2", "--restored", str(tmp_path / "out"),
                    "--out", str(tmp_path / "r"), *NO_EXTRAS])
    row = _rows(tmp_path / "r")[0]
    assert row["name"] == "0001" and row["restored_path"].endswith("0001x2.png")
    assert float(row["input_psnr_y"]) == pytest.approx(_sr_scores(registered, hr, 2)["psnr_y"], abs=1e-6)
    assert summary["input_scores"]["label"] == "input" and "scored as they are" in summary["protocol"]


def test_score_input_on_a_same_size_preset(tmp_path, capsys):
    """--score-input works for the other presets too (off by default there): the degraded input itself."""
    gt = _photo(skdata.coffee(), 40, 48)
    blurred = cv2.GaussianBlur(gt, (0, 0), 2.0)
    for sub, img in (("target", gt), ("input", blurred), ("restored", cv2.GaussianBlur(gt, (0, 0), 0.8))):
        _save(tmp_path / sub / "a.png", img)
    argv = ["--preset", "folder", "--input-dir", str(tmp_path / "input"), "--target-dir", str(tmp_path / "target"),
            "--restored", str(tmp_path / "restored"), "--no-progress", "--metrics", "psnr"]
    plain = main(argv + ["--out", str(tmp_path / "plain")])
    assert plain["input_scores"] is None and "input_psnr" not in _rows(tmp_path / "plain")[0]
    scored = main(argv + ["--out", str(tmp_path / "scored"), "--score-input"])
    assert scored["input_scores"]["mean"]["psnr"] == pytest.approx(_psnr(blurred, gt), abs=1e-6)
    assert scored["mean"] == plain["mean"]
    assert "input " in capsys.readouterr().out  # the table's input row


# ----------------------------------------------------------------------------------------------- realsr preset


def _realsr_tree(root: Path, scale: int = 2) -> dict:
    """A fake RealSR V3 tree: Canon|Nikon/Test/<scale>/<name>_HR.png + <name>_LR<scale>.png (+ a Train split)."""
    hrs = {}
    for cam, img in (("Canon", skdata.astronaut()), ("Nikon", skdata.coffee())):
        for split in ("Test", "Train"):
            hr = _photo(img, scale * LR_H + 1, scale * LR_W)  # one extra row: modcrop
            folder = root / cam / split / str(scale)
            _save(folder / f"{cam}_001_HR.png", hr)
            _save(folder / f"{cam}_001_LR{scale}.png", _photo(hr[: scale * LR_H], LR_H, LR_W))
            if split == "Test":
                hrs[f"{cam}_001"] = hr[: scale * LR_H]
    return hrs


def test_realsr_preset_on_realsr_v3_and_drealsr_trees(tmp_path, capsys):
    root = tmp_path / "RealSR(V3)"
    hrs = _realsr_tree(root)
    restored = tmp_path / "realsr_out"
    outputs = {name: cv2.GaussianBlur(hr, (0, 0), 0.8) for name, hr in hrs.items()}
    _save(restored / "Canon_001.png", outputs["Canon_001"])  # named by the pair
    _save(restored / "Nikon_001_LR2.png", outputs["Nikon_001"])  # named by its LR file: found too
    summary = main(["--preset", "realsr", "--scale", "2", "--root", str(root), "--restored", str(restored),
                    "--out", str(tmp_path / "r"), *NO_EXTRAS])
    rows = _rows(tmp_path / "r")
    assert [r["name"] for r in rows] == ["Canon_001", "Nikon_001"]  # both cameras, the Test split only
    for r in rows:
        assert "/Test/2/" in r["target_path"].replace("\\", "/")
        lr = _load(Path(r["input_path"]))
        want = _sr_scores(outputs[r["name"]], hrs[r["name"]], 2)
        want_in = _sr_scores(_matlab_bicubic_up(lr, 2), hrs[r["name"]], 2)
        assert float(r["psnr_y"]) == pytest.approx(want["psnr_y"], abs=1e-6)
        assert float(r["input_psnr_y"]) == pytest.approx(want_in["psnr_y"], abs=1e-6)
        assert float(r["ssim_rgb"]) == pytest.approx(want["ssim_rgb"], abs=1e-5)
    assert summary["data"]["layout"] == "realsr" and summary["scale"] == 2
    assert "RealSR/DRealSR Test split" in summary["protocol"]
    one = main(["--preset", "realsr", "--scale", "2", "--root", str(root), "--camera", "Nikon", "--restored",
                str(restored), "--out", str(tmp_path / "nikon"), *NO_EXTRAS])
    assert one["num_images"] == 1 and one["mean"]["psnr_y"] == pytest.approx(float(rows[1]["psnr_y"]))

    # DRealSR: x2/Test_x2/{test_HR,test_LR}, _x1/_x2 suffixes; detected without --layout
    droot = tmp_path / "DRealSR"
    hr = _photo(skdata.chelsea(), 2 * LR_H, 2 * LR_W)
    _save(droot / "x2" / "Test_x2" / "test_HR" / "d_001_x1.png", hr)
    _save(droot / "x2" / "Test_x2" / "test_LR" / "d_001_x2.png", _photo(hr, LR_H, LR_W))
    _save(tmp_path / "d_out" / "d_001.png", hr)
    summary = main(["--preset", "realsr", "--scale", "2", "--root", str(droot), "--restored",
                    str(tmp_path / "d_out"), "--out", str(tmp_path / "d"), *NO_EXTRAS])
    assert summary["data"]["layout"] == "drealsr" and summary["num_images"] == 1
    assert summary["mean"]["psnr_y"] == math.inf
    bicubic = _matlab_bicubic_up(_photo(hr, LR_H, LR_W), 2)
    assert summary["input_scores"]["mean"]["psnr_y"] == pytest.approx(_sr_scores(bicubic, hr, 2)["psnr_y"],
                                                                      abs=1e-6)
    # a layout that does not match the tree names what it looked for
    err = _user_error(capsys, ["--preset", "realsr", "--scale", "2", "--root", str(droot), "--layout", "realsr",
                               "--restored", str(tmp_path / "d_out"), "--out", str(tmp_path / "x"), *NO_EXTRAS])
    assert "Canon" in err and str(droot) in err


# ----------------------------------------------------------------------------------------------- errors


def test_sr_size_and_scale_errors_name_the_files(sr_folders, tmp_path, capsys):
    out = str(tmp_path / "o")
    restored = ["--restored", str(sr_folders / "restored")]
    # an HR larger than LR x scale by >= scale pixels is not a modcrop: both files named
    _save(sr_folders / "HR" / "coffee.png", _photo(skdata.coffee(), 2 * LR_H + 2, 2 * LR_W))
    err = _user_error(capsys, _sr_args(sr_folders, tmp_path / "o", *restored, *NO_EXTRAS))
    assert str(sr_folders / "LR" / "coffee.png") in err and str(sr_folders / "HR" / "coffee.png") in err
    assert "64x50" in err and "32x24" in err and "(1 of 3 pairs)" in err
    assert not (tmp_path / "o").exists()  # found from the headers, before any work
    # the wrong --scale for the data: both files named
    err = _user_error(capsys, ["--preset", "sr", "--scale", "3", "--input-dir", str(sr_folders / "LR"),
                               "--target-dir", str(sr_folders / "HR"), *restored, "--out", out, *NO_EXTRAS])
    assert "astronaut.png" in err and str(sr_folders / "LR") in err and str(sr_folders / "HR") in err
    # a restored image of the wrong size: both named
    _save(sr_folders / "HR" / "coffee.png", _photo(skdata.coffee(), 2 * LR_H, 2 * LR_W))
    _save(sr_folders / "restored" / "chelsea.png", np.zeros((LR_H, LR_W, 3), np.uint8))
    err = _user_error(capsys, _sr_args(sr_folders, tmp_path / "o", *restored, *NO_EXTRAS))
    assert str(sr_folders / "restored" / "chelsea.png") in err and str(sr_folders / "HR" / "chelsea.png") in err
    # scale: required by sr, refused by the same-size presets, realsr only 2-4 and its folder must exist
    assert "--scale" in _user_error(capsys, ["--preset", "sr", "--target-dir", str(sr_folders / "HR"), *restored,
                                             "--out", out, *NO_EXTRAS])
    assert "--preset sr" in _user_error(capsys, ["--preset", "folder", "--scale", "2", "--target-dir",
                                                 str(sr_folders / "HR"), *restored, "--out", out, *NO_EXTRAS])
    root = tmp_path / "RealSR"
    _realsr_tree(root)
    assert "2, 3, 4" in _user_error(capsys, ["--preset", "realsr", "--scale", "5", "--root", str(root),
                                             *restored, "--out", out, *NO_EXTRAS])
    err = _user_error(capsys, ["--preset", "realsr", "--scale", "4", "--root", str(root), *restored, "--out",
                               out, *NO_EXTRAS])
    assert str(root / "Canon" / "Test" / "4") in err


# ----------------------------------------------------------------------------------------------- model mode


def _option_and_checkpoint(tmp_path: Path, name: str, **net_options) -> tuple:
    from ddr_restore.registry import ARCH_REGISTRY

    net_opt = {**TINY_NAFNET, **net_options}
    torch.manual_seed(0)
    state = ARCH_REGISTRY.build(dict(net_opt)).state_dict()
    ckpt = tmp_path / name / "net_g_1.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save({"params": state}, ckpt)
    opt = tmp_path / name / "options.yml"
    opt.write_text(yaml.safe_dump({"name": name, "network_g": net_opt}))
    return opt, ckpt


def test_sr_model_mode_upscale_network(sr_folders, tmp_path, capsys):
    """A tiny NAFNet with network_g.upscale: 2 runs on the LR images; scale mismatches are one clear error."""
    opt, ckpt = _option_and_checkpoint(tmp_path, "x2", upscale=2)
    out = tmp_path / "m"
    summary = main(["--preset", "sr", "--scale", "2", "--input-dir", str(sr_folders / "LR"), "--target-dir",
                    str(sr_folders / "HR"), "--opt", str(opt), "--checkpoint", str(ckpt), "--out", str(out),
                    "--save-images", "--grid", "1", *NO_EXTRAS])
    assert summary["mode"] == "model" and summary["network"]["scale"] == 2
    assert summary["input_scores"]["label"] == "bicubic x2"
    h, w = 2 * LR_H, 2 * LR_W
    for r in _rows(out):
        saved = _load(out / "images" / f"{r['name']}.png")
        assert saved.shape == (h, w, 3)
        hr = _load(sr_folders / "HR" / f"{r['name']}.png")[:h, :w]
        assert float(r["psnr_y"]) == pytest.approx(_sr_scores(saved, hr, 2)["psnr_y"], abs=1e-6)
        assert float(r["seconds"]) > 0
    assert _load(out / "grid" / "astronaut.png").shape == (CAPTION_HEIGHT + h, 3 * w, 3)

    common = ["--input-dir", str(sr_folders / "LR"), "--target-dir", str(sr_folders / "HR"), "--out",
              str(tmp_path / "e"), *NO_EXTRAS]
    # the checkpoint's scale must be --scale
    err = _user_error(capsys, ["--preset", "sr", "--scale", "3", "--opt", str(opt), "--checkpoint", str(ckpt),
                               *common])
    assert "--scale 3" in err and "x2" in err and str(opt) in err
    # an upsampling network on a same-size preset
    assert "--preset sr --scale 2" in _user_error(capsys, ["--preset", "folder", "--opt", str(opt),
                                                           "--checkpoint", str(ckpt), *common])
    # a restoration (scale 1) network on true low-resolution inputs: the fix is network_g.upscale
    opt1, ckpt1 = _option_and_checkpoint(tmp_path, "x1")
    err = _user_error(capsys, ["--preset", "sr", "--scale", "2", "--opt", str(opt1), "--checkpoint", str(ckpt1),
                               *common])
    assert "network_g.upscale: 2" in err and "astronaut.png" in err and str(sr_folders / "HR") in err
    assert not (tmp_path / "e").exists()  # refused before the results folder was touched


# ----------------------------------------------------------------------------------------------- LPIPS, Q_DDR, help


def test_sr_input_row_with_lpips_and_random_clip_q_ddr(sr_folders, tmp_path, one_thread):
    summary = main(_sr_args(sr_folders, tmp_path / "q", "--restored", str(sr_folders / "restored"),
                            "--ddr-pretrained", "none", "--max-images", "1", "--no-progress"))
    assert summary["clip_weights"] == "random"
    row = _rows(tmp_path / "q")[0]
    assert np.isfinite(float(row["q_ddr"])) and np.isfinite(float(row["input_q_ddr"]))
    lp = summary["metrics"]["lpips"]
    if lp["status"] == "ok":
        import lpips as lpips_pkg
        from ddr_restore.metrics.lpips_metric import build_lpips

        hr = _load(sr_folders / "HR" / "astronaut.png")
        bicubic = _matlab_bicubic_up(_load(sr_folders / "LR" / "astronaut.png"), 2)
        want = float(build_lpips("alex")(lpips_pkg.im2tensor(bicubic), lpips_pkg.im2tensor(hr)))
        assert float(row["input_lpips"]) == pytest.approx(want, abs=1e-5)
    else:
        assert lp["status"].startswith("skipped") and row["input_lpips"] == ""


def test_help_describes_the_sr_presets(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--help"])
    assert err.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("realsr", "--scale", "--layout", "--camera", "crop_border", "psnr_y", "bicubic | restored | "
                   "target", "network_g.upscale", "--score-input"):
        assert needle in text, needle
