"""ddr-eval: presets, restored/model modes, CSV/JSON/grids, error messages (ddr_restore.eval.evaluate)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from skimage import data as skdata
from skimage.metrics import structural_similarity

import ddr_restore
from ddr_restore.errors import InputError, MissingPathError
from ddr_restore.eval import evaluate, main
from ddr_restore.eval.presets import collect_items
from ddr_restore.eval.report import CAPTION_HEIGHT

TINY_NAFNET = {"type": "NAFNet", "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}
H, W = 72, 96


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _load(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    # 11x11 Gaussian (sigma 1.5, truncate 3.5 -> radius 5), population covariance, valid region: BasicSR's SSIM.
    return structural_similarity(a.astype(np.float64), b.astype(np.float64), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255, channel_axis=-1)


@pytest.fixture
def photo_set(tmp_path):
    """Real photos (skimage) as targets, synthetic blur+noise as inputs, a milder blur as 'restored' outputs."""
    rng = np.random.default_rng(0)
    root = tmp_path / "GoPro"
    restored = tmp_path / "restored"
    for name, img in [("astronaut", skdata.astronaut()), ("chelsea", skdata.chelsea()), ("coffee", skdata.coffee())]:
        gt = cv2.resize(img, (W * 2, H * 2), interpolation=cv2.INTER_AREA)[::2, ::2].copy()
        blurred = cv2.GaussianBlur(gt, (0, 0), 2.0).astype(np.float64) + rng.normal(0, 4, gt.shape)
        _save(root / "test" / "target" / f"{name}.png", gt)
        _save(root / "test" / "input" / f"{name}.png", np.clip(blurred, 0, 255).round().astype(np.uint8))
        _save(restored / f"{name}.png", cv2.GaussianBlur(gt, (0, 0), 0.8))
    return root, restored


def _read_csv(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_restored_mode_metrics_csv_json_grid(photo_set, tmp_path):
    root, restored = photo_set
    out = tmp_path / "res"
    summary = evaluate("gopro", root=root, restored_dir=restored, out_dir=out, lpips=False, ddr=False, grid=2,
                       progress=False)
    rows = _read_csv(out / "per_image.csv")
    assert [r["name"] for r in rows] == ["astronaut", "chelsea", "coffee"]
    expected_psnr, expected_ssim = [], []
    for r in rows:
        a = _load(restored / f"{r['name']}.png")
        b = _load(root / "test" / "target" / f"{r['name']}.png")
        expected_psnr.append(_psnr(a, b))
        expected_ssim.append(_ssim(a, b))
        assert float(r["psnr"]) == pytest.approx(expected_psnr[-1], abs=1e-6)
        assert float(r["ssim"]) == pytest.approx(expected_ssim[-1], abs=1e-4)
        assert r["lpips"] == "" and r["q_ddr"] == ""
    js = json.loads((out / "summary.json").read_text())
    assert js == summary
    assert js["ddr_restore_version"] == ddr_restore.__version__
    assert js["mode"] == "restored" and js["num_images"] == 3 and js["preset"] == "gopro"
    assert js["mean"]["psnr"] == pytest.approx(np.mean(expected_psnr), abs=1e-6)
    assert js["mean"]["ssim"] == pytest.approx(np.mean(expected_ssim), abs=1e-4)
    assert js["metrics"]["psnr"]["crop_border"] == 0 and js["metrics"]["psnr"]["test_y_channel"] is False
    assert "peak 255" in js["protocol"] and "11x11" in js["protocol"]
    assert js["metrics"]["lpips"]["status"].startswith("disabled")
    assert js["clip_weights"] is None
    grids = sorted((out / "grid").glob("*.png"))
    assert [g.name for g in grids] == ["astronaut.png", "chelsea.png"]
    g = _load(grids[0])
    assert g.shape == (H + CAPTION_HEIGHT, 3 * W, 3)  # input | restored | target
    assert np.array_equal(g[CAPTION_HEIGHT:, W:2 * W], _load(restored / "astronaut.png"))
    assert g[:CAPTION_HEIGHT].max() > 0  # a caption was drawn


def test_restored_mode_errors(photo_set, tmp_path):
    """Pairing, size and decoding problems are user errors (ddr_restore.errors) naming the file."""
    root, restored = photo_set
    kw = dict(lpips=False, ddr=False, progress=False, out_dir=tmp_path / "o")
    (restored / "chelsea.png").unlink()
    with pytest.raises(InputError, match="chelsea"):
        evaluate("gopro", root=root, restored_dir=restored, **kw)
    _save(restored / "chelsea.png", np.zeros((H, W + 4, 3), np.uint8))
    with pytest.raises(InputError, match=r"size mismatch.*chelsea\.png.*chelsea\.png"):
        evaluate("gopro", root=root, restored_dir=restored, **kw)
    (restored / "chelsea.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="chelsea.png"):
        evaluate("gopro", root=root, restored_dir=restored, **kw)
    with pytest.raises(MissingPathError, match="nowhere"):
        evaluate("gopro", root=tmp_path / "nowhere", restored_dir=restored, **kw)
    with pytest.raises(MissingPathError, match="nothing"):
        evaluate("folder", target_dir=root / "test" / "target", restored_dir=tmp_path / "nothing", **kw)
    (root / "test" / "input" / "coffee.png").unlink()
    with pytest.raises(MissingPathError, match="coffee"):  # pairing is the data package's: same errors
        collect_items("gopro", root=root)


def test_model_mode_checkpoint_and_saved_images(photo_set, tmp_path):
    root, _ = photo_set
    from ddr_restore.registry import ARCH_REGISTRY

    torch.manual_seed(0)
    state = ARCH_REGISTRY.build(TINY_NAFNET).state_dict()
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    ckpt = tmp_path / "net_g_5.pth"
    torch.save({"params": state, "params_ema": ema}, ckpt)
    opt = tmp_path / "opt.yml"
    opt.write_text(yaml.safe_dump({"name": "tiny_run", "network_g": TINY_NAFNET}))
    out = tmp_path / "model_out"
    summary = evaluate("gopro", root=root, option_file=opt, checkpoint=ckpt, out_dir=out, save_images=True,
                       lpips=False, ddr=False, tile=48, tile_overlap=16, progress=False)
    assert summary["name"] == "tiny_run" and summary["mode"] == "model"
    assert summary["network"]["checkpoint_key"] == "params_ema"
    assert summary["network"]["network_g"]["type"] == "NAFNetLocal"
    assert summary["checkpoint"] == str(ckpt) and summary["option_file"] == str(opt)
    assert summary["seconds_per_image"]["inference"] > 0
    rows = _read_csv(out / "per_image.csv")
    assert len(rows) == 3 and all(float(r["seconds"]) > 0 for r in rows)
    for r in rows:
        saved = _load(out / "images" / f"{r['name']}.png")
        assert saved.shape == (H, W, 3)
        assert float(r["psnr"]) == pytest.approx(_psnr(saved, _load(root / "test" / "target" / f"{r['name']}.png")),
                                                 abs=1e-6)


def test_cli_folder_preset(photo_set, tmp_path, capsys):
    root, restored = photo_set
    out = tmp_path / "cli"
    main(["--preset", "folder", "--target-dir", str(root / "test" / "target"), "--restored", str(restored),
          "--out", str(out), "--no-lpips", "--no-ddr", "--no-progress", "--max-images", "2"])
    assert "PSNR" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["num_images"] == 2
    with pytest.raises(SystemExit):
        main(["--preset", "folder", "--target-dir", str(root / "test" / "target")])  # neither mode given
    with pytest.raises(SystemExit) as err:
        main(["--preset", "folder", "--target-dir", str(tmp_path / "absent"), "--restored", str(restored),
              "--no-lpips", "--no-ddr", "--out", str(out)])
    assert err.value.code == 2
    assert "absent" in capsys.readouterr().err


def test_realblur_list_layout_and_alignment(tmp_path):
    """RealBlur list file + <scene>/{blur,gt}; a slightly shifted output scores far higher after ECC alignment."""
    root = tmp_path / "RealBlur_J"
    big = cv2.resize(skdata.chelsea(), (W + 8, H + 8), interpolation=cv2.INTER_AREA)
    gt = big[4:4 + H, 4:4 + W].copy()
    shifted = big[5:5 + H, 3:3 + W].copy()  # 1 px down-left: what a misaligned pair looks like
    _save(root / "scene1" / "gt" / "gt_1.png", gt)
    _save(root / "scene1" / "blur" / "blur_1.png", cv2.GaussianBlur(gt, (0, 0), 2.0))
    lst = root / "RealBlur_J_test_list.txt"
    lst.write_text("scene1/gt/gt_1.png scene1/blur/blur_1.png\n")
    items = collect_items("realblur", root=root, list_file=lst)
    assert [it.name for it in items] == ["scene1/blur/blur_1"]
    restored = tmp_path / "rb_out"
    _save(restored / "scene1" / "blur" / "blur_1.png", shifted)
    summary = evaluate("realblur", root=root, list_file=lst, restored_dir=restored, out_dir=tmp_path / "rb",
                       lpips=False, ddr=False, progress=False)
    assert summary["metrics"]["psnr"]["aligned"] is True
    assert summary["mean"]["psnr"] > _psnr(shifted, gt) + 5
    lst.write_text("scene1/gt/gt_1.png scene1/blur/blur_9.png\n")
    with pytest.raises(MissingPathError, match=r"line 1: .*blur_9"):
        collect_items("realblur", root=root, list_file=lst)


def test_json_records_random_clip_and_lpips(photo_set, tmp_path):
    root, restored = photo_set
    summary = evaluate("gopro", root=root, restored_dir=restored, out_dir=tmp_path / "q", ddr_pretrained="none",
                       max_images=1, progress=False)
    assert summary["clip_weights"] == "random"
    assert summary["metrics"]["q_ddr"]["clip_random"] is True and summary["metrics"]["q_ddr"]["status"] == "ok"
    assert np.isfinite(summary["mean"]["q_ddr"])
    lp = summary["metrics"]["lpips"]
    if lp["status"] == "ok":
        import lpips as lpips_pkg  # independent check of the value with the same offline model
        from ddr_restore.metrics.lpips_metric import build_lpips

        model = build_lpips("alex")
        a = lpips_pkg.im2tensor(_load(restored / "astronaut.png"))
        b = lpips_pkg.im2tensor(_load(root / "test" / "target" / "astronaut.png"))
        assert summary["mean"]["lpips"] == pytest.approx(float(model(a, b)), abs=1e-5)
    else:
        assert lp["status"].startswith("skipped") and summary["mean"]["lpips"] is None


def test_shared_gopro_blurred_inputs_as_outputs(shared_data, tmp_path):
    """Scoring the blurred GoPro inputs as if restored: PSNR equals a direct numpy computation."""
    train = shared_data / "gopro_mini" / "train"
    summary = evaluate("folder", target_dir=train / "target", restored_dir=train / "input", out_dir=tmp_path / "g",
                       lpips=False, ddr=False, progress=False)
    rows = _read_csv(tmp_path / "g" / "per_image.csv")
    assert len(rows) == summary["num_images"] == len(list((train / "target").glob("*.png")))
    direct = []
    for r in rows:
        p = _psnr(_load(train / "input" / f"{r['name']}.png"), _load(train / "target" / f"{r['name']}.png"))
        direct.append(p)
        assert float(r["psnr"]) == pytest.approx(p, abs=1e-6)
    assert summary["mean"]["psnr"] == pytest.approx(np.mean(direct), abs=1e-6)
    print(f"\n[gopro_mini blurred inputs] mean PSNR {np.mean(direct):.4f} dB over {len(direct)} images, "
          f"mean SSIM {summary['mean']['ssim']:.4f}")
