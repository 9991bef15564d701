"""ddr-eval with the metric catalog: --metrics selects columns, unknown names list the catalog, named metrics are
required, metric options reach the metrics that have them, and the library entry point's two forms agree."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from ddr_restore.errors import InputError, MissingPathError, UnknownNameError
from ddr_restore.eval import EvalConfig, Network, Outputs, TestSet, evaluate
from ddr_restore.eval.entry import main
from ddr_restore.metrics import Metric, register_metric
from ddr_restore.metrics.psnr_ssim import calculate_psnr

H, W = 64, 72
TINY_NAFNET = {"type": "NAFNet", "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}


@register_metric("test_eval_mean_abs", better="lower", needs_reference=True, title="MAE")
class EvalTestMeanAbs(Metric):
    """Mean absolute difference of the 8-bit images (registered by this test file only)."""

    def score(self, restored, reference):
        return float(np.mean(np.abs(restored.astype(np.float64) - reference)))


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _load(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture
def pairs(tmp_path):
    rng = np.random.default_rng(3)
    data = tmp_path / "data"
    for name in ("a", "b"):
        coarse = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
        gt = cv2.resize(coarse, (W, H), interpolation=cv2.INTER_CUBIC)
        noisy = np.clip(gt.astype(np.int16) + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
        _save(data / "target" / f"{name}.png", gt)
        _save(data / "input" / f"{name}.png", noisy)
        _save(data / "restored" / f"{name}.png", cv2.GaussianBlur(gt, (3, 3), 0.7))
    return data


def _restored(data: Path, out: Path, *extra: str):
    return ["--preset", "folder", "--target-dir", str(data / "target"), "--restored", str(data / "restored"),
            "--out", str(out), "--no-progress", *extra]


def _rows(out: Path):
    with open(out / "per_image.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_flag_selects_the_columns(pairs, tmp_path, capsys):
    out = tmp_path / "sel"
    summary = main(_restored(pairs, out, "--metrics", "ssim", "psnr", "test_eval_mean_abs"))
    with open(out / "per_image.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["name", "ssim", "psnr", "test_eval_mean_abs", "seconds", "input_path", "target_path",
                      "restored_path"]
    assert list(summary["mean"]) == ["ssim", "psnr", "test_eval_mean_abs"]
    assert summary["metrics"]["test_eval_mean_abs"]["better"] == "lower"
    assert summary["metrics"]["psnr"]["better"] == "higher" and summary["metrics"]["psnr"]["status"] == "ok"
    for r in _rows(out):
        a, b = _load(pairs / "restored" / f"{r['name']}.png"), _load(pairs / "target" / f"{r['name']}.png")
        assert float(r["psnr"]) == pytest.approx(calculate_psnr(a, b), abs=1e-9)
        assert float(r["test_eval_mean_abs"]) == pytest.approx(np.mean(np.abs(a.astype(float) - b)), abs=1e-9)
    printed = capsys.readouterr().out
    assert "SSIM" in printed and "TEST_EVAL_MEAN_ABS" in printed and "LPIPS" not in printed
    assert json.loads((out / "summary.json").read_text()) == summary


def test_unknown_metric_lists_the_catalog(pairs, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(_restored(pairs, tmp_path / "x", "--metrics", "psnr", "lpis"))
    assert err.value.code == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("ddr-eval: error: ")
    for name in ("'lpis'", "lpips (lower is better", "psnr", "ssim", "q_ddr", "psnr_realblur", "ssim_realblur"):
        assert name in line
    assert not (tmp_path / "x").exists()
    with pytest.raises(UnknownNameError, match="the metric catalog has"):
        evaluate("folder", target_dir=pairs / "target", restored_dir=pairs / "restored", metrics=["lpis"],
                 out_dir=tmp_path / "y", progress=False)


def test_old_flags_with_metrics_is_a_usage_error(pairs, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(_restored(pairs, tmp_path / "x", "--metrics", "psnr", "--no-lpips"))
    assert err.value.code == 2 and "--metrics" in capsys.readouterr().err


def test_old_flags_keep_the_default_columns_empty(pairs, tmp_path):
    """--no-lpips/--no-ddr (deprecated) still write the default set's columns, empty, with the reason."""
    summary = main(_restored(pairs, tmp_path / "o", "--no-lpips", "--no-ddr"))
    assert list(summary["mean"]) == ["psnr", "ssim", "lpips", "q_ddr"]
    assert summary["metrics"]["lpips"]["status"] == "disabled (--no-lpips)"
    assert summary["metrics"]["q_ddr"]["status"] == "disabled (--no-ddr)"
    assert all(r["lpips"] == "" and r["q_ddr"] == "" for r in _rows(tmp_path / "o"))


def test_metric_options_reach_only_the_metrics_that_have_them(pairs, tmp_path):
    kw = dict(target_dir=pairs / "target", restored_dir=pairs / "restored", progress=False)
    s = evaluate("folder", metrics=["psnr", "test_eval_mean_abs"], metric_options={"crop_border": 4},
                 out_dir=tmp_path / "c", **kw)
    a, b = _load(pairs / "restored" / "a.png"), _load(pairs / "target" / "a.png")
    assert float(_rows(tmp_path / "c")[0]["psnr"]) == pytest.approx(calculate_psnr(a, b, crop_border=4))
    assert s["metrics"]["psnr"]["crop_border"] == 4
    # per metric, with a mapping of columns (as in val.metrics): the same metric twice with other options
    s = evaluate("folder", metrics={"psnr": {"type": "psnr"}, "psnr_y": {"type": "psnr", "test_y_channel": True}},
                 out_dir=tmp_path / "m", **kw)
    row = _rows(tmp_path / "m")[0]
    assert float(row["psnr_y"]) == pytest.approx(calculate_psnr(a, b, test_y_channel=True))
    assert float(row["psnr"]) != float(row["psnr_y"])
    # an option nothing takes does nothing: refused (here the RealBlur-aligned metrics have no border crop)
    with pytest.raises(InputError, match="crop_border"):
        evaluate("realblur", metrics=["psnr"], metric_options={"crop_border": 4}, out_dir=tmp_path / "r", **kw)
    with pytest.raises(InputError, match="lpips is not among the metrics"):
        evaluate("folder", metrics=["psnr"], metric_options={"lpips.net": "vgg"}, out_dir=tmp_path / "r", **kw)


def test_named_metric_is_required_default_set_skips(pairs, tmp_path, capsys):
    """LPIPS named explicitly and not loadable is an error; in the default set it is skipped with the reason."""
    kw = dict(target_dir=pairs / "target", restored_dir=pairs / "restored", progress=False,
              metric_options={"lpips.cache_dir": str(tmp_path / "no_weights")})
    with pytest.raises(MissingPathError, match="ddr-fetch-lpips"):
        evaluate("folder", metrics=["psnr", "lpips"], out_dir=tmp_path / "n", **kw)
    summary = evaluate("folder", disabled={"q_ddr": "test"}, out_dir=tmp_path / "d", **kw)
    assert summary["metrics"]["lpips"]["status"].startswith("skipped: MissingPathError")
    assert summary["mean"]["lpips"] is None and summary["mean"]["psnr"] is not None
    assert "LPIPS skipped" in capsys.readouterr().err


def test_keyword_and_config_forms_agree_and_unknown_keywords_are_named(pairs, tmp_path):
    """What ddr-ablate calls: a checkpoint scored on a test set with named metrics, in either form."""
    from ddr_restore.registry import ARCH_REGISTRY

    torch.manual_seed(0)
    ckpt = tmp_path / "net_g_1.pth"
    torch.save({"params": ARCH_REGISTRY.build(TINY_NAFNET).state_dict()}, ckpt)
    opt = tmp_path / "cell.yml"
    opt.write_text(yaml.safe_dump({"name": "cell", "network_g": TINY_NAFNET}))
    a = evaluate("folder", input_dir=pairs / "input", target_dir=pairs / "target", option_file=opt, checkpoint=ckpt,
                 metrics=["psnr", "test_eval_mean_abs"], out_dir=tmp_path / "a", overwrite=True, progress=False,
                 device="auto")
    b = evaluate(EvalConfig(test=TestSet("folder", input_dir=pairs / "input", target_dir=pairs / "target"),
                            network=Network(option_file=opt, checkpoint=ckpt), metrics=["psnr", "test_eval_mean_abs"],
                            outputs=Outputs(out_dir=tmp_path / "b", progress=False), device="auto"))
    assert a["mean"] == b["mean"] and a["name"] == "cell" and a["mode"] == "model"
    assert a["metrics"]["test_eval_mean_abs"]["better"] == "lower"
    with pytest.raises(InputError, match=r"'lpips_nett'.*accepted: .*metrics"):
        evaluate("folder", target_dir=pairs / "target", restored_dir=pairs / "restored", lpips_nett="vgg")
