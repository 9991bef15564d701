"""Loss terms as a catalog (issue 8, item 1): ``train.losses: {<name>: {type: ..., ...}}``, any number of terms.

Each term is logged under its name and summed into ``l_total``; a loss class says whether it needs the target
(``requires_target``); ``pixel_opt`` / ``perceptual_opt`` / ``ddr_opt`` are aliases of the terms ``l_pix`` /
``l_percep`` / ``l_ddr``. The losses used here are registered in this file, the way a user adds one: a class and
the registry decorator, no edit to the trainer or the options schema.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch
from torch import nn

from ddr_restore.errors import InputError
from ddr_restore.registry import DATASET_REGISTRY, LOSS_REGISTRY
from ddr_restore.train import checkpoint as ckpt
from ddr_restore.train.options import OptionsError, validate_options
from ddr_restore.train.trainer import TrainingDivergedError, train

# (loss tag, number of tensors it was called with) for every call of the spy losses below
CALLS: List[Tuple[str, int]] = []


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()
    yield
    CALLS.clear()


# ------------------------------------------------------------------------------------------ test-only components
@DATASET_REGISTRY.register("CatalogPairs")
class CatalogPairs(torch.utils.data.Dataset):
    """Noisy copies of fixed random 40 px images; training items get a random 32 px crop (torch RNG)."""

    def __init__(self, phase: str = "train", length: int = 4, size: int = 40, crop: int = 32) -> None:
        g = torch.Generator().manual_seed(5)
        self.gt = torch.rand(length, 3, size, size, generator=g)
        self.lq = (self.gt + 0.1 * torch.randn(length, 3, size, size, generator=g)).clamp(0, 1)
        self.phase, self.crop = phase, crop

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        top, left = torch.randint(0, self.gt.shape[-1] - self.crop + 1, (2,)).tolist()
        window = (slice(None), slice(top, top + self.crop), slice(left, left + self.crop))
        return {"lq": self.lq[i][window].clone(), "gt": self.gt[i][window].clone(), "lq_path": f"img{i}.png"}


@LOSS_REGISTRY.register("CatalogEdgeLoss")
class CatalogEdgeLoss(nn.Module):
    """A no-reference loss added the way the issue asks: one class with the decorator, ``requires_target = False``."""

    requires_target = False

    def __init__(self, loss_weight: float = 1.0, tag: str = "edge") -> None:
        super().__init__()
        self.loss_weight, self.tag = float(loss_weight), tag

    def forward(self, pred: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        CALLS.append((self.tag, 1 + len(rest)))
        return self.loss_weight * (pred[..., :, 1:] - pred[..., :, :-1]).abs().mean()


@LOSS_REGISTRY.register("CatalogTargetSpy")
class CatalogTargetSpy(nn.Module):
    """A full-reference MSE that does not declare ``requires_target`` (the default: it gets the target)."""

    def __init__(self, loss_weight: float = 1.0, tag: str = "spy") -> None:
        super().__init__()
        self.loss_weight, self.tag = float(loss_weight), tag

    def forward(self, pred: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        CALLS.append((self.tag, 1 + (target is not None)))
        assert target is not None and target.shape == pred.shape
        return self.loss_weight * (pred - target).pow(2).mean()


@LOSS_REGISTRY.register("CatalogOutputOnlyUndeclared")
class CatalogOutputOnlyUndeclared(nn.Module):
    """``forward(pred)`` only, no ``requires_target``: what user losses under ``ddr_opt`` looked like before."""

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)

    def forward(self, pred: torch.Tensor) -> torch.Tensor:
        CALLS.append(("undeclared", 1))
        return self.loss_weight * pred.std()


@LOSS_REGISTRY.register("CatalogNaNAfter")
class CatalogNaNAfter(nn.Module):
    """MSE that turns NaN after ``after`` calls."""

    requires_target = True

    def __init__(self, after: int = 1) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = (pred - target).pow(2).mean()
        return loss * float("nan") if self.calls > self.after else loss


class _RandomBackbone(nn.Module):
    """Stands in for a frozen pretrained network built with random weights: it only exposes the flag."""

    pretrained_is_random = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)


@LOSS_REGISTRY.register("CatalogWrappedRandom")
class CatalogWrappedRandom(nn.Module):
    """A user loss that wraps a randomly initialised backbone without saying so itself."""

    requires_target = True

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight, self.backbone = float(loss_weight), _RandomBackbone()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_weight * (self.backbone(pred) - self.backbone(target)).abs().mean()


# A small random-backbone PDL: a real full-reference loss of the package (its VGG says pretrained_is_random).
PDL = {"type": "ProjectedDistributionLoss", "loss_weight": 0.5, "backbone": "vgg16", "layers": ["relu1_2"],
       "pretrained": "none"}


def catalog_options(root: Path, losses: Optional[dict] = None, total_iter: int = 2, **train_extra) -> dict:
    opt = {
        "name": "cat",
        "num_gpu": 0,
        "manual_seed": 3,
        "datasets": {"train": {"type": "CatalogPairs", "batch_size_per_gpu": 2}},
        # dropout draws from the torch RNG, which an exact resume must restore
        "network_g": {"type": "NAFNet", "width": 4, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1],
                      "drop_out_rate": 0.1},
        "path": {"experiments_root": str(root)},
        "train": {"optim_g": {"type": "Adam", "lr": 1e-3}, "total_iter": total_iter},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 100, "use_tb_logger": False},
    }
    if losses is not None:
        opt["train"]["losses"] = losses
    opt["train"].update(train_extra)
    return opt


class Recorder:
    """Iteration callback: keeps the logs; raises ``SimulatedKill`` at ``stop_at`` (nothing saved, like SIGKILL)."""

    def __init__(self, stop_at: int = 0) -> None:
        self.logs: Dict[int, Dict[str, float]] = {}
        self.stop_at = stop_at

    def __call__(self, iteration: int, logs: Dict[str, float]) -> None:
        self.logs[iteration] = logs
        if iteration == self.stop_at:
            raise SimulatedKill(iteration)


class SimulatedKill(Exception):
    pass


def _errors(opt: dict) -> str:
    with pytest.raises(OptionsError) as info:
        validate_options(opt)
    return str(info.value)


def _params(path: Path) -> Dict[str, torch.Tensor]:
    return ckpt.safe_load(path)["params"]


# ------------------------------------------------------------------------------------------------------- tests
def test_three_terms_are_logged_by_name_and_summed(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    losses = {"pix": {"type": "L1Loss", "loss_weight": 1.0}, "pdl": PDL, "edge": {"type": "CatalogEdgeLoss",
                                                                                 "loss_weight": 0.1}}
    rec = Recorder()
    opt = catalog_options(tmp_path, losses, total_iter=3, accumulate_grad_batches=2)
    opt["logger"]["use_tb_logger"] = True
    res = train(opt, iteration_callback=rec)
    for it in (1, 2, 3):
        logs = rec.logs[it]
        assert set(logs) == {"pix", "pdl", "edge", "l_total", "lr"}
        assert logs["l_total"] == pytest.approx(logs["pix"] + logs["pdl"] + logs["edge"], rel=1e-6)
        assert all(logs[k] > 0 for k in ("pix", "pdl", "edge"))
    log = res.log_file.read_text()
    assert "pix: " in log and "pdl: " in log and "edge: " in log and "l_total: " in log
    assert ("loss terms (l_total = their sum): pix = L1Loss (train.losses.pix; output, target), pdl = "
            "ProjectedDistributionLoss (train.losses.pdl; output, target), edge = CatalogEdgeLoss "
            "(train.losses.edge; output)") in log
    # the random VGG inside PDL is flagged, with the term's option path; the other terms are not
    assert "WARNING train.losses.pdl (ProjectedDistributionLoss): its pretrained network is RANDOMLY" in log
    assert "WARNING train.losses.pix" not in log and "WARNING train.losses.edge" not in log
    acc = EventAccumulator(str(res.tb_dir))
    acc.Reload()
    for name in ("pix", "pdl", "edge", "l_total"):
        values = [e.value for e in acc.Scalars(f"losses/{name}")]
        assert values == pytest.approx([rec.logs[it][name] for it in (1, 2, 3)], rel=1e-6), name


def test_target_free_loss_gets_no_target(tmp_path):
    losses = {"edge": {"type": "CatalogEdgeLoss", "tag": "edge"}, "spy": {"type": "CatalogTargetSpy"}}
    train(catalog_options(tmp_path, losses, total_iter=1))
    assert CALLS == [("edge", 1), ("spy", 2)]  # in option order; the undeclared loss defaults to the target


def test_a_loss_registered_in_this_file_trains_through_train_losses(tmp_path):
    # CatalogEdgeLoss is defined above with @LOSS_REGISTRY.register and nothing else: options validation knows its
    # arguments and the trainer calls it without the target.
    opt = catalog_options(tmp_path, {"smooth": {"type": "CatalogEdgeLoss", "loss_weight": 2.0}})
    assert validate_options(opt)["train"]["losses"]["smooth"]["loss_weight"] == 2.0
    rec = Recorder()
    res = train(opt, iteration_callback=rec)
    assert sorted(rec.logs) == [1, 2] and set(rec.logs[1]) == {"smooth", "l_total", "lr"}
    assert rec.logs[1]["smooth"] == rec.logs[1]["l_total"] > 0
    assert CALLS == [("edge", 1)] * 2
    # it did train: the weights moved away from the same seed's initial network
    from ddr_restore.archs import NAFNet

    torch.manual_seed(3)  # the trainer seeds with manual_seed before building the network
    init = NAFNet(width=4, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1], drop_out_rate=0.1).state_dict()
    trained = _params(res.checkpoint)
    assert trained.keys() == init.keys()
    assert not torch.equal(trained["intro.weight"], init["intro.weight"])


ALIASES = {
    "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
    "perceptual_opt": PDL,
    "ddr_opt": {"type": "CatalogEdgeLoss", "loss_weight": 0.1},
}
AS_CATALOG = {"l_pix": ALIASES["pixel_opt"], "l_percep": ALIASES["perceptual_opt"], "l_ddr": ALIASES["ddr_opt"]}


def test_aliases_are_the_catalog_terms_bit_for_bit(tmp_path):
    a, b = Recorder(), Recorder()
    res_a = train(catalog_options(tmp_path / "a", **copy.deepcopy(ALIASES)), iteration_callback=a)
    res_b = train(catalog_options(tmp_path / "b", copy.deepcopy(AS_CATALOG)), iteration_callback=b)
    assert set(a.logs[1]) == {"l_pix", "l_percep", "l_ddr", "l_total", "lr"}
    assert a.logs == b.logs  # same names, same values, same order of summation
    pa, pb = _params(res_a.checkpoint), _params(res_b.checkpoint)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_undeclared_output_only_loss_keeps_working_under_ddr_opt(tmp_path):
    # Before the catalog the trainer called ddr_opt's loss as loss(output): a user's class written for that still is.
    rec = Recorder()
    train(catalog_options(tmp_path, pixel_opt={"type": "L1Loss"},
                          ddr_opt={"type": "CatalogOutputOnlyUndeclared", "loss_weight": 0.1}), iteration_callback=rec)
    assert ("undeclared", 1) in CALLS and set(rec.logs[2]) == {"l_pix", "l_ddr", "l_total", "lr"}
    # Under train.losses the default is the target, which this forward cannot take: refused before any work.
    with pytest.raises(InputError, match=r"train\.losses\.tv \(CatalogOutputOnlyUndeclared\): .*requires_target"):
        train(catalog_options(tmp_path / "x", {"tv": {"type": "CatalogOutputOnlyUndeclared"}}))
    assert not (tmp_path / "x").exists()


def test_resume_across_alias_and_catalog_forms_is_exact(tmp_path):
    full = Recorder()
    res_full = train(catalog_options(tmp_path / "full", total_iter=4, **copy.deepcopy(ALIASES)),
                     iteration_callback=full)
    part = catalog_options(tmp_path / "part", total_iter=4, **copy.deepcopy(ALIASES))
    part["logger"]["save_checkpoint_freq"] = 2
    with pytest.raises(SimulatedKill):
        train(part, iteration_callback=Recorder(stop_at=3))
    resumed = Recorder()
    as_catalog = catalog_options(tmp_path / "part", copy.deepcopy(AS_CATALOG), total_iter=4)
    res = train(as_catalog, auto_resume=True, iteration_callback=resumed)
    assert res.start_iter == 2 and sorted(resumed.logs) == [3, 4]
    for it in (3, 4):
        assert resumed.logs[it] == full.logs[it], it
    pa, pb = _params(res_full.checkpoint), _params(res.checkpoint)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    # a different weight is not the same run: refused, naming the key as written
    changed = copy.deepcopy(as_catalog)
    changed["train"]["total_iter"] = 6
    changed["train"]["losses"]["l_ddr"]["loss_weight"] = 0.2
    with pytest.raises(InputError, match=r"train\.losses\.l_ddr\.loss_weight: 0\.1 -> 0\.2"):
        train(changed, auto_resume=True)


def test_zero_weight_term_is_not_computed_and_changes_nothing(tmp_path):
    base = {"pix": {"type": "L1Loss"}}
    with_zero = {**base, "spy": {"type": "CatalogTargetSpy", "loss_weight": 0}}
    a, b = Recorder(), Recorder()
    res_a = train(catalog_options(tmp_path / "a", copy.deepcopy(base)), iteration_callback=a)
    res_b = train(catalog_options(tmp_path / "b", with_zero), iteration_callback=b)
    assert CALLS == []  # never called
    assert [b.logs[it]["spy"] for it in (1, 2)] == [0.0, 0.0]
    assert all(b.logs[it][k] == a.logs[it][k] for it in (1, 2) for k in ("pix", "l_total", "lr"))
    pa, pb = _params(res_a.checkpoint), _params(res_b.checkpoint)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert "train.losses.spy (CatalogTargetSpy): loss_weight 0, spy is not computed" in res_b.log_file.read_text()
    with pytest.raises(InputError, match="every loss term has loss_weight 0"):
        train(catalog_options(tmp_path / "c", {"spy": {"type": "CatalogTargetSpy", "loss_weight": 0.0}}))
    assert not (tmp_path / "c").exists()


def test_non_finite_term_stops_training_naming_it(tmp_path):
    losses = {"pix": {"type": "L1Loss"}, "bad": {"type": "CatalogNaNAfter", "after": 1}}
    with pytest.raises(TrainingDivergedError, match=r"iteration 2: non-finite loss \(pix=[0-9.e-]+, bad=nan, "
                                                    r"l_total=nan\)"):
        train(catalog_options(tmp_path, losses, total_iter=3))


def test_random_weights_inside_any_loss_are_flagged_with_the_term_name(tmp_path):
    res = train(catalog_options(tmp_path, {"feat": {"type": "CatalogWrappedRandom"}}, total_iter=1))
    log = res.log_file.read_text()
    assert ("WARNING train.losses.feat (CatalogWrappedRandom): its pretrained network is RANDOMLY initialised "
            "(pretrained: none); feat is a plumbing check") in log


def test_ddr_weights_error_names_the_catalog_key(tmp_path):
    # conftest sets HF_HUB_OFFLINE=1: the "openai" tag is unavailable; the message must name the key the user wrote.
    opt = catalog_options(tmp_path, {"pix": {"type": "PSNRLoss"},
                                     "ddr": {"type": "DDRLoss", "loss_weight": 0.1, "pretrained": "openai"}})
    with pytest.raises(InputError) as info:
        train(opt)
    assert "train.losses.ddr.pretrained" in str(info.value) and "train.ddr_opt" not in str(info.value)
    assert not (tmp_path / "cat").exists()


# ------------------------------------------------------------------------------------------------ option checks
def test_name_clash_between_alias_and_catalog_is_an_error(tmp_path):
    opt = catalog_options(tmp_path, {"l_pix": {"type": "L1Loss"}}, pixel_opt={"type": "PSNRLoss"})
    msg = _errors(opt)
    assert "train.losses.l_pix: the term 'l_pix' is also defined by train.pixel_opt" in msg
    # a term switched off with ~ does not clash (e.g. --set train.losses.l_pix=~ over a base file)
    opt["train"]["losses"]["l_pix"] = None
    assert validate_options(opt)["train"]["pixel_opt"]["type"] == "PSNRLoss"
    for bad, why in (("l_total", "taken by the training log"), ("lr", "taken by the training log"),
                     ("a.b", "letters, digits")):
        assert why in _errors(catalog_options(tmp_path, {bad: {"type": "L1Loss"}})), bad


def test_term_options_are_checked_against_the_loss_class(tmp_path):
    opt = catalog_options(tmp_path, {"ddr": {"type": "CatalogEdgeLoss", "loss_wieght": 0.1}})
    assert "train.losses.ddr.loss_wieght: unknown key for CatalogEdgeLoss (accepted: loss_weight, tag)" in _errors(opt)
    msg = _errors(catalog_options(tmp_path, {"pix": {"type": "L1Los"}}))
    assert "train.losses.pix.type: unknown loss type 'L1Los'; registered:" in msg
    assert "L1Loss" in msg and "CatalogEdgeLoss" in msg and "DDRLoss" in msg
    assert "train.losses.pix: expected map or none" in _errors(catalog_options(tmp_path, {"pix": 1.0}))
    assert "train.losses.pix.type: missing required key" in _errors(catalog_options(tmp_path, {"pix": {"x": 1}}))
    msg = _errors(catalog_options(tmp_path, {}))
    assert "needs at least one loss" in msg
    assert "needs at least one loss" in _errors(catalog_options(tmp_path, {"pix": None}))


def test_perceptual_opt_takes_our_losses_not_basicsrs(tmp_path):
    basicsr = {"type": "PerceptualLoss", "layer_weights": {"conv5_4": 1}, "vgg_type": "vgg19",
               "perceptual_weight": 1.0}
    msg = _errors(catalog_options(tmp_path, perceptual_opt=basicsr))
    assert "train.perceptual_opt.type: BasicSR's PerceptualLoss" in msg and "LPIPSLoss" in msg
    out = validate_options(catalog_options(tmp_path, perceptual_opt=PDL))
    assert out["train"]["perceptual_opt"] == PDL
    msg = _errors(catalog_options(tmp_path, perceptual_opt={**PDL, "layer_weights": {"conv5_4": 1}}))
    assert "train.perceptual_opt.layer_weights: unknown key for ProjectedDistributionLoss" in msg


def test_shipped_alias_files_resolve_to_the_same_terms():
    # The option files written before the catalog keep their keys (nothing is rewritten into train.losses, so the
    # options saved in their checkpoints compare equal) and give the terms the log has always shown.
    from ddr_restore.train.options import loss_terms, parse_options

    repo = Path(__file__).resolve().parents[1]
    for name in ("nafnet_ddr.yml", "nafnet_psnr.yml", "restormer_ddr.yml", "restormer_psnr.yml"):
        opt = parse_options(repo / "options" / name)
        assert opt["train"]["losses"] is None and opt["train"]["perceptual_opt"] is None
        terms = loss_terms(opt["train"])
        expected = [("l_pix", "train.pixel_opt")] + ([("l_ddr", "train.ddr_opt")] if "ddr" in name else [])
        assert [(t.name, t.where) for t in terms] == expected, name
        assert terms[0].cfg is opt["train"]["pixel_opt"]
