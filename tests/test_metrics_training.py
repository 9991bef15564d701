"""Catalog metrics in training validation: directions drive best tracking, LPIPS/Q_DDR entries run, heavy metrics
are built once per trainer."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Dict

import numpy as np
import pytest
import torch
from torch import nn

from ddr_restore.metrics import create_metric
from ddr_restore.registry import ARCH_REGISTRY, DATASET_REGISTRY
from ddr_restore.train.trainer import Trainer, train
from ddr_restore.weights import converted_weights_path


@ARCH_REGISTRY.register("MetricsTestNet")
class MetricsTestNet(nn.Module):
    """A residual 3x3 conv: cheap, and its output changes as it trains."""

    size_multiple = 1

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@DATASET_REGISTRY.register("MetricsTestPairs")
class MetricsTestPairs(torch.utils.data.Dataset):
    """Smooth random images (LPIPS needs 64 px for AlexNet's pooling) and noisy copies."""

    def __init__(self, phase: str = "train", length: int = 2, size: int = 64, name: str = "") -> None:
        g = torch.Generator().manual_seed(5)
        coarse = torch.rand(length, 3, size // 8, size // 8, generator=g)
        self.gt = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        self.lq = (self.gt + 0.08 * torch.randn(self.gt.shape, generator=g)).clamp(0, 1)

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return {"lq": self.lq[i].clone(), "gt": self.gt[i].clone(), "lq_path": f"m{i}.png"}


def _options(root: Path, metrics: dict, total_iter: int = 4) -> dict:
    return {
        "name": "metrics_in_training", "num_gpu": 0, "manual_seed": 3,
        "datasets": {"train": {"type": "MetricsTestPairs", "batch_size_per_gpu": 2, "length": 2, "size": 32},
                     "val": {"type": "MetricsTestPairs", "length": 2, "name": "mval"}},
        "network_g": {"type": "MetricsTestNet", "width": 4},
        "path": {"experiments_root": str(root)},
        "train": {"optim_g": {"type": "Adam", "lr": 5e-3}, "total_iter": total_iter,
                  "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0}},
        "val": {"val_freq": 2, "metrics": metrics},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": False},
    }


def _recorder(**metrics) -> SimpleNamespace:
    """Just what Trainer._record uses: the built metrics, best values, input metrics, a writer and a logger."""
    return SimpleNamespace(_val_metrics=metrics, best={}, input_metrics={},
                           writer=SimpleNamespace(scalars=lambda *a, **k: None),
                           logger=logging.getLogger("test_metrics_training"))


def test_best_tracking_reads_each_metrics_direction():
    """LPIPS is lower-is-better: its best is the smallest value, PSNR's the largest (regression: LPIPS was
    tracked as higher-is-better because the trainer only knew the directions of calculate_psnr/ssim)."""
    stub = _recorder(lpips=create_metric("lpips"), psnr=create_metric("calculate_psnr"))
    for iteration, (lp, ps) in zip((2, 4, 6, 8), ((0.50, 20.0), (0.30, 24.0), (0.40, 22.0), (0.35, 23.0))):
        Trainer._record(stub, {"val": {"lpips": lp, "psnr": ps}}, iteration)
    assert stub.best["val"]["lpips"] == {"val": 0.30, "iter": 4}
    assert stub.best["val"]["psnr"] == {"val": 24.0, "iter": 4}


def test_lpips_and_q_ddr_in_val_metrics_run_and_load_once(tmp_path, monkeypatch, one_thread):
    if not converted_weights_path("alex").is_file():
        pytest.skip("offline LPIPS alex weights not prepared (run ddr-fetch-lpips)")
    from ddr_restore.metrics.lpips_metric import LPIPSMetric
    from ddr_restore.metrics.q_ddr import QDDRMetric

    loads = {"lpips": 0, "q_ddr": 0}
    for cls, key in ((LPIPSMetric, "lpips"), (QDDRMetric, "q_ddr")):
        original = cls._load

        def counted(self, _original=original, _key=key):
            loads[_key] += 1
            _original(self)

        monkeypatch.setattr(cls, "_load", counted)
    seen = []
    original_record = Trainer._record
    monkeypatch.setattr(Trainer, "_record", lambda self, results, it: seen.append((it, results))
                        or original_record(self, results, it))
    metrics = {"psnr": {"type": "calculate_psnr"}, "lpips": {"type": "lpips", "net": "alex"},
               "q_ddr": {"type": "q_ddr", "pretrained": "none"}}
    result = train(_options(tmp_path, metrics, total_iter=4))
    assert [it for it, _ in seen] == [2, 4]
    assert loads == {"lpips": 1, "q_ddr": 1}  # built once per trainer, not per image or per validation
    values = [r["mval"] for _, r in seen]
    best = result.best_metrics["mval"]
    assert best["lpips"]["val"] == min(v["lpips"] for v in values)
    assert best["psnr"]["val"] == max(v["psnr"] for v in values)
    assert best["q_ddr"]["val"] == max(v["q_ddr"] for v in values)
    # the values are the metrics of the saved 8-bit output of the last checkpoint
    assert 0 < result.metrics["mval"]["lpips"] < 1 and np.isfinite(result.metrics["mval"]["q_ddr"])
    assert set(result.input_metrics["mval"]) == {"psnr", "lpips", "q_ddr"}


def test_no_reference_metric_validates_sets_without_targets(tmp_path, monkeypatch):
    """A no-reference metric needs no 'gt'; a full-reference one names itself when the set has none."""
    import ddr_restore.metrics.q_ddr as q_ddr_module

    class NoTarget(MetricsTestPairs):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            del item["gt"]
            return item

    DATASET_REGISTRY.register("MetricsTestNoTarget")(NoTarget)
    # a stand-in for CLIP: the score is the mean intensity (fast, and the catalog declaration is the real one)
    monkeypatch.setattr(q_ddr_module.QDDRMetric, "_load", lambda self: None)
    monkeypatch.setattr(q_ddr_module.QDDRMetric, "score", lambda self, r, ref: float(r.mean()) / 255.0)
    opt = _options(tmp_path, {"q": {"type": "q_ddr", "pretrained": "none"}}, total_iter=2)
    opt["datasets"]["val"]["type"] = "MetricsTestNoTarget"
    result = train(opt)
    assert 0 < result.metrics["mval"]["q"] < 1 and result.input_metrics == {}
    opt = _options(tmp_path / "b", {"psnr": {"type": "psnr"}}, total_iter=2)
    opt["datasets"]["val"]["type"] = "MetricsTestNoTarget"
    from ddr_restore.errors import InputError

    with pytest.raises(InputError, match=r"val\.metrics\.psnr.*no 'gt'"):
        train(opt)
