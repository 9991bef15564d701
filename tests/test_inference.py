"""Full-resolution inference: padding, tiling, TLC switch and checkpoint loading (ddr_restore.eval.inference)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ddr_restore.errors import CheckpointError, InputError, MissingPathError
from ddr_restore.eval.inference import (
    load_checkpoint_state,
    load_option_file,
    load_restoration_model,
    network_options,
    restore,
    tile_starts,
    tile_weight,
)

TINY_NAFNET = {"type": "NAFNet", "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}


class StrictIdentity(nn.Module):
    """Identity that insists on inputs padded to its size_multiple (as an arch without internal padding would)."""

    size_multiple = 8

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0, x.shape
        return x + self.dummy


class SmallConvNet(nn.Module):
    """Three 3x3 convs: receptive-field radius 3 pixels."""

    size_multiple = 4

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class ConstantOnes(nn.Module):
    size_multiple = 1

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.ones_like(x) + self.dummy


@pytest.mark.parametrize("hw", [(17, 33), (5, 7), (64, 40), (1, 9)])
@pytest.mark.parametrize("pad_mode", ["reflect", "zeros", "replicate"])
def test_pad_crop_round_trip_odd_sizes(hw, pad_mode):
    net = StrictIdentity()
    x = torch.rand(3, *hw)
    y = restore(net, x, pad_mode=pad_mode)
    assert y.shape == x.shape
    assert torch.equal(y, x)
    yb = restore(net, x[None], pad_mode=pad_mode)
    assert yb.shape == (1, 3, *hw)
    assert all(h % 8 == 0 and w % 8 == 0 for h, w in net.seen)


def test_tiled_equals_untiled_for_small_receptive_field(capsys):
    net = SmallConvNet().eval()
    x = torch.rand(1, 3, 101, 131, generator=torch.Generator().manual_seed(1))
    full = restore(net, x)
    tiled = restore(net, x, tile=48, tile_overlap=16)  # blend margin 16//4 = 4 >= radius 3
    diff = (full - tiled).abs().max().item()
    with capsys.disabled():
        print(f"\n[tiled vs untiled, conv net radius 3, tile 48 overlap 16] max |diff| = {diff:.3e}")
    assert diff < 1e-5
    # A naive uniform average of overlapping tiles would be wrong near tile edges: check the test can tell.
    naive = torch.zeros_like(x)
    count = torch.zeros_like(x)
    with torch.no_grad():
        for top in tile_starts(104, 48, 16):
            for left in tile_starts(132, 48, 16):
                padded = torch.nn.functional.pad(x, (0, 1, 0, 3), mode="reflect")
                patch = padded[..., top:top + 48, left:left + 48]
                naive[..., top:top + 48, left:left + 48][..., : min(48, 101 - top), : min(48, 131 - left)] += \
                    net(patch)[..., : min(48, 101 - top), : min(48, 131 - left)]
                count[..., top:top + 48, left:left + 48][..., : min(48, 101 - top), : min(48, 131 - left)] += 1
    assert (naive / count - full).abs().max().item() > 1e-3


@pytest.mark.parametrize("length,tile,overlap", [(101, 48, 16), (48, 48, 8), (30, 48, 8), (1000, 256, 32),
                                                 (257, 256, 64), (720, 384, 64)])
def test_tiles_cover_every_pixel(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(starts)
    assert starts[-1] + min(tile, length) == length  # last (partial) tile reaches the end
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap  # neighbours overlap by at least `overlap`
    acc = torch.zeros(length, dtype=torch.float64)
    for s in starts:
        acc[s:s + min(tile, length)] += tile_weight(length, tile, s, overlap)
    assert acc.min().item() > 0


def test_tiled_normalisation_with_constant_net():
    out = restore(ConstantOnes(), torch.rand(3, 70, 95), tile=32, tile_overlap=12)
    assert torch.allclose(out, torch.ones_like(out), atol=1e-6)


def test_amp_ignored_on_cpu_and_bad_tiles():
    net = SmallConvNet().eval()
    x = torch.rand(3, 20, 24)
    assert torch.equal(restore(net, x, amp="bf16"), restore(net, x))
    with pytest.raises(ValueError, match="tile_overlap"):
        restore(net, torch.rand(3, 64, 64), tile=16, tile_overlap=8)
    with pytest.raises(ValueError, match="amp"):
        restore(net, x, amp="int8")
    with pytest.raises(ValueError, match="shape"):
        restore(net, torch.rand(2, 3, 8, 8))


def test_network_options_tlc_switch():
    opt = {"network_g": dict(TINY_NAFNET), "datasets": {"train": {"gt_size": 128}}}
    local = network_options(opt, tlc=True)
    assert local["type"] == "NAFNetLocal" and local["train_size"] == (1, 3, 128, 128)
    assert network_options({"network_g": dict(TINY_NAFNET)}, tlc=True)["train_size"] == (1, 3, 256, 256)
    plain = network_options({"network_g": {**TINY_NAFNET, "type": "NAFNetLocal", "train_size": [1, 3, 64, 64]}},
                            tlc=False)
    assert plain["type"] == "NAFNet" and "train_size" not in plain
    assert network_options({"network_g": {"type": "Restormer", "dim": 8}}, tlc=True) == {"type": "Restormer", "dim": 8}
    with pytest.raises(InputError, match="network_g"):
        network_options({"name": "x"})


def _states(net_opt):
    from ddr_restore.registry import ARCH_REGISTRY

    torch.manual_seed(1)
    a = ARCH_REGISTRY.build(net_opt).state_dict()
    torch.manual_seed(2)
    b = ARCH_REGISTRY.build(net_opt).state_dict()
    # NAFNet's beta/gamma start at zero; make the two states clearly different everywhere.
    b = {k: v + 0.5 if v.is_floating_point() else v for k, v in b.items()}
    return a, b


def test_checkpoint_prefers_params_ema(tmp_path):
    params, ema = _states(TINY_NAFNET)
    ckpt = tmp_path / "net_g_10.pth"
    torch.save({"params": params, "params_ema": ema}, ckpt)
    opt_file = tmp_path / "opt.yml"
    opt_file.write_text(yaml.safe_dump({"name": "t", "network_g": TINY_NAFNET, "datasets": {"train": {"gt_size": 64}}}))

    net = load_restoration_model(opt_file, ckpt)
    assert type(net).__name__ == "NAFNetLocal" and net.ddr_checkpoint_key == "params_ema"
    assert tuple(net.train_size) == (1, 3, 64, 64)
    for k, v in net.state_dict().items():
        assert torch.equal(v, ema[k]), k
    net2 = load_restoration_model(opt_file, ckpt, prefer_ema=False, tlc=False)
    assert type(net2).__name__ == "NAFNet" and net2.ddr_checkpoint_key == "params"
    for k, v in net2.state_dict().items():
        assert torch.equal(v, params[k]), k
    assert not any(p.requires_grad for p in net.parameters()) and not net.training

    only_params = tmp_path / "p.pth"
    torch.save({"params": params}, only_params)
    assert load_restoration_model(opt_file, only_params).ddr_checkpoint_key == "params"

    bare = tmp_path / "bare.pth"
    torch.save({"module." + k: v for k, v in ema.items()}, bare)
    state, key = load_checkpoint_state(bare)
    assert key == "<state_dict>" and set(state) == set(ema)
    net3 = load_restoration_model(network_opt=TINY_NAFNET, checkpoint=bare)
    for k, v in net3.state_dict().items():
        assert torch.equal(v, ema[k]), k


def test_checkpoint_errors(tmp_path):
    params, _ = _states(TINY_NAFNET)
    opt_file = tmp_path / "opt.yml"
    opt_file.write_text(yaml.safe_dump({"network_g": TINY_NAFNET}))
    with pytest.raises(MissingPathError, match="missing.pth"):
        load_restoration_model(opt_file, tmp_path / "missing.pth")
    with pytest.raises(MissingPathError, match="nope.yml"):
        load_restoration_model(tmp_path / "nope.yml", tmp_path / "missing.pth")
    partial = tmp_path / "partial.pth"
    dropped = sorted(params)[0]
    torch.save({"params": {k: v for k, v in params.items() if k != dropped}, "extra": 1}, partial)
    with pytest.raises(CheckpointError, match="partial.pth") as err:
        load_restoration_model(opt_file, partial)
    assert dropped in str(err.value)
    weird = tmp_path / "weird.pth"
    torch.save({"epoch": 3, "iter": 5}, weird)
    with pytest.raises(CheckpointError, match="weird.pth"):
        load_restoration_model(opt_file, weird)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth") as err:
        load_restoration_model(opt_file, garbage)
    assert "weights_only" not in str(err.value)
    bad_yaml = tmp_path / "bad.yml"
    bad_yaml.write_text("network_g: [unclosed")
    with pytest.raises(InputError, match="bad.yml"):
        load_restoration_model(bad_yaml)
    unknown = tmp_path / "unknown.yml"
    unknown.write_text(yaml.safe_dump({"network_g": {"type": "NoSuchNet"}}))
    with pytest.raises(InputError, match="NoSuchNet"):
        load_restoration_model(unknown)
    typo = tmp_path / "typo.yml"
    typo.write_text(yaml.safe_dump({"network_g": {**TINY_NAFNET, "widht": 8}}))
    with pytest.raises(InputError, match="widht"):
        load_restoration_model(typo)


def test_width_mismatch_is_one_paragraph(tmp_path):
    """A width-8 checkpoint in a width-32 network: one CheckpointError naming both files and a tensor's shapes."""
    small, _ = _states(TINY_NAFNET)
    ckpt = tmp_path / "net_g_8.pth"
    torch.save({"params": small}, ckpt)
    wide = {**TINY_NAFNET, "width": 32}
    opt_file = tmp_path / "wide.yml"
    opt_file.write_text(yaml.safe_dump({"network_g": wide}))
    with pytest.raises(CheckpointError) as err:
        load_restoration_model(opt_file, ckpt)
    text = str(err.value)
    assert "net_g_8.pth" in text and "wide.yml" in text
    assert len(text.splitlines()) <= 3 and len(text) < 2000, text
    from ddr_restore.registry import ARCH_REGISTRY

    big = ARCH_REGISTRY.build(wide).state_dict()
    named = [k for k in small if k in big and small[k].shape != big[k].shape and k in text]
    assert named, text  # at least one mismatched tensor by name ...
    k = named[0]
    for shape in (small[k].shape, big[k].shape):  # ... with both of its shapes
        assert str(list(shape)) in text or str(tuple(shape)) in text, (k, text)


def test_option_file_overrides(tmp_path):
    """--set KEY.PATH=VALUE (the trainer's parser) applied to the option file before the network is built."""
    small, _ = _states(TINY_NAFNET)
    ckpt = tmp_path / "net_g_8.pth"
    torch.save({"params": small}, ckpt)
    opt_file = tmp_path / "wide.yml"
    opt_file.write_text(yaml.safe_dump({"name": "wide", "network_g": {**TINY_NAFNET, "width": 32}}))
    opt = load_option_file(opt_file, ["network_g.width=8", "name=narrow", "datasets.train.gt_size=64"])
    assert opt["network_g"]["width"] == 8 and opt["name"] == "narrow" and opt["datasets"]["train"]["gt_size"] == 64
    assert load_option_file(opt_file)["network_g"]["width"] == 32  # the file itself is unchanged
    net = load_restoration_model(opt_file, ckpt, overrides=["network_g.width=8"])
    for k, v in net.state_dict().items():
        assert torch.equal(v, small[k]), k
    with pytest.raises(CheckpointError, match=r"network_g\.width=16"):  # the message says the net came from --set
        load_restoration_model(opt_file, ckpt, overrides=["network_g.width=16"])
    for bad in ("network_g.width", "=3", "network_g..width=3", "name.x=1"):
        with pytest.raises(InputError, match="wide.yml"):
            load_option_file(opt_file, [bad])


def test_nafnet_local_full_res_tiled_close(capsys):
    """TLC net: tiles see other local statistics at their borders; the blended result stays close."""
    net = load_restoration_model(network_opt={**TINY_NAFNET, "train_size": [1, 3, 32, 32]})
    x = torch.rand(1, 3, 72, 100, generator=torch.Generator().manual_seed(3))
    full = restore(net, x)
    tiled = restore(net, x, tile=48, tile_overlap=16)
    diff = (full - tiled).abs().max().item()
    with capsys.disabled():
        print(f"\n[tiled vs untiled, tiny random NAFNetLocal] max |diff| = {diff:.3e}")
    assert full.shape == x.shape and torch.isfinite(full).all()
    assert diff < 0.05


# ------------------------------------------------------------------------------------ super-resolution (scale > 1)
class StrictNearestSR(nn.Module):
    """Nearest-neighbour x``scale``; insists on inputs padded to its size_multiple (as an arch without padding)."""

    size_multiple = 8

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.dummy = nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0, x.shape
        s = self.scale
        return x.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1) + self.dummy


class SmallConvSR(nn.Module):
    """Three 3x3 convs at LR (radius 3 LR pixels), PixelShuffle, plus the bicubic upsampling (radius 2)."""

    size_multiple = 4

    def __init__(self, scale: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.scale = scale
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(8, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x):
        return self.body(x) + F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)


class WrongScale(nn.Module):
    def __init__(self, declared: int, actual: int) -> None:
        super().__init__()
        self.scale, self.actual = declared, actual
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.actual, mode="nearest") + self.dummy if self.actual > 1 else x


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("hw", [(17, 33), (5, 7), (64, 40)])
def test_sr_pad_and_crop_odd_sizes(scale, hw):
    """LR padded to size_multiple, HR cropped to (h*s, w*s): the nearest upsampling comes back exactly."""
    net = StrictNearestSR(scale)
    x = torch.rand(3, *hw)
    expected = x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    for tile in (None, 16):
        y = restore(net, x, tile=tile, tile_overlap=4, pad_mode="zeros")
        assert y.shape == (3, hw[0] * scale, hw[1] * scale)
        # Blending equal values is exact only up to rounding: (a*w1 + a*w2) / (w1 + w2).
        assert torch.allclose(y, expected, atol=1e-6, rtol=0), tile
    assert all(h % 8 == 0 and w % 8 == 0 for h, w in net.seen)


@pytest.mark.parametrize("scale", [2, 3])
def test_sr_tiled_equals_untiled_small_receptive_field(scale, capsys):
    net = SmallConvSR(scale).eval()
    x = torch.rand(1, 3, 61, 83, generator=torch.Generator().manual_seed(1))
    full = restore(net, x)
    tiled = restore(net, x, tile=40, tile_overlap=16)  # blend margin 16//4 = 4 LR px >= radius 3
    diff = (full - tiled).abs().max().item()
    with capsys.disabled():
        print(f"\n[SR x{scale} tiled vs untiled, conv net radius 3, tile 40 overlap 16] max |diff| = {diff:.3e}")
    assert full.shape == (1, 3, 61 * scale, 83 * scale)
    # x2 agrees to ~1e-7; x3 to ~5e-6: F.interpolate maps output pixel i to (i + 0.5) / 3 - 0.5 in float32, which
    # rounds differently at i and i + 3 * left, so PyTorch's bicubic itself is not exactly shift-equivariant at x3.
    assert diff < 1e-5
    # Weights built at LR and stretched, or tiles placed at LR offsets, would not match: tell the two apart.
    with torch.no_grad():
        wrong = restore(net, x, tile=40, tile_overlap=2)  # margin 0: tile borders leak into the blend
    assert (wrong - full).abs().max().item() > 1e-3


@pytest.mark.parametrize("upsampler", ["pixelshuffle", "bicubic"])
def test_sr_nafnet_restore_matches_forward_and_tiles(upsampler, capsys):
    """A real NAFNet x2 (no U-Net levels: receptive radius 2 LR px): restore == net(x), tiled == untiled."""
    from ddr_restore.archs import NAFNet

    torch.manual_seed(0)
    net = NAFNet(width=8, middle_blk_num=0, enc_blk_nums=[], dec_blk_nums=[], upscale=2, upsampler=upsampler).eval()
    x = torch.rand(1, 3, 45, 70, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        direct = net(x)
    full = restore(net, x)
    tiled = restore(net, x, tile=40, tile_overlap=16)
    diff = (full - tiled).abs().max().item()
    with capsys.disabled():
        print(f"\n[NAFNet x2 {upsampler} tiled vs untiled, tile 40 overlap 16] max |diff| = {diff:.3e}")
    assert full.shape == (1, 3, 90, 140) and torch.allclose(full, direct, atol=1e-6, rtol=0)
    assert diff < 1e-5


def test_sr_unet_restore_pads_like_the_net():
    """NAFNet x3 with two levels on a size that needs padding: restore (replicate, the arch's pad_mode) == net(x)."""
    from ddr_restore.archs import NAFNet, Restormer

    torch.manual_seed(0)
    for net in (NAFNet(**{k: v for k, v in TINY_NAFNET.items() if k != "type"}, upscale=3),
                Restormer(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2], upscale=3)):
        net.eval()
        x = torch.rand(1, 3, 19, 21, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            direct = net(x)
        y = restore(net, x)
        assert y.shape == (1, 3, 57, 63)
        assert torch.allclose(y, direct, atol=1e-5, rtol=0), type(net).__name__


def test_sr_wrong_output_size_is_an_error():
    x = torch.rand(3, 16, 16)
    with pytest.raises(InputError, match=r"2 times its input .* \(1, 3, 16, 16\)"):
        restore(WrongScale(declared=2, actual=1), x)
    with pytest.raises(InputError, match="3 times its input"):
        restore(WrongScale(declared=3, actual=2), torch.rand(3, 40, 40), tile=16, tile_overlap=4)
    with pytest.raises(InputError, match="the size of its input"):
        restore(WrongScale(declared=1, actual=2), x)
    with pytest.raises(InputError, match="scale must be a positive integer"):
        restore(WrongScale(declared=0.5, actual=1), x)


def test_model_scale_looks_through_wrappers():
    from torch.optim.swa_utils import AveragedModel

    from ddr_restore.archs import NAFNet
    from ddr_restore.eval.inference import model_scale, model_size_multiple

    net = NAFNet(width=4, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1], upscale=4, upsampler="bicubic")
    assert model_scale(net) == 4 and model_size_multiple(net) == 1  # 2 // gcd(2, 4)
    for wrapped in (nn.DataParallel(net), AveragedModel(net), AveragedModel(nn.DataParallel(net))):
        assert model_scale(wrapped) == 4 and model_size_multiple(wrapped) == 1
    assert model_scale(SmallConvNet()) == 1  # declares none: a restoration net
    with pytest.raises(InputError, match="WrongScale.scale"):
        model_scale(WrongScale(declared="2", actual=2))


def test_sr_network_options_and_checkpoint_round_trip(tmp_path):
    """upscale/upsampler survive the TLC switch; train_size is the LR crop gt_size // upscale; strict load works."""
    sr = {**TINY_NAFNET, "upscale": 4}
    opt = {"network_g": dict(sr), "datasets": {"train": {"gt_size": 128}}}
    local = network_options(opt, tlc=True)
    assert local["type"] == "NAFNetLocal" and local["upscale"] == 4 and local["train_size"] == (1, 3, 32, 32)
    assert network_options({"network_g": dict(sr)}, tlc=True)["train_size"] == (1, 3, 64, 64)
    plain = network_options({"network_g": {**local, "upsampler": "bicubic"}}, tlc=False)
    assert plain == {**TINY_NAFNET, "upscale": 4, "upsampler": "bicubic"}

    params, ema = _states(sr)
    ckpt = tmp_path / "net_g_5.pth"
    torch.save({"params": params, "params_ema": ema}, ckpt)
    opt_file = tmp_path / "sr.yml"
    opt_file.write_text(yaml.safe_dump({"name": "sr", **opt}))
    net = load_restoration_model(opt_file, ckpt)
    assert type(net).__name__ == "NAFNetLocal" and net.scale == 4 and tuple(net.train_size) == (1, 3, 32, 32)
    for k, v in net.state_dict().items():
        assert torch.equal(v, ema[k]), k
    assert restore(net, torch.rand(3, 20, 24)).shape == (3, 80, 96)
    with pytest.raises(CheckpointError, match="net_g_5.pth"):  # an x4 head does not fit an x2 network
        load_restoration_model(opt_file, ckpt, overrides=["network_g.upscale=2"])
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"network_g": {**sr, "upscale": 8}}))
    with pytest.raises(InputError, match=r"network_g\.upscale must be 1, 2, 3 or 4, got 8"):
        load_restoration_model(bad)
