"""Full-resolution inference: padding, tiling, TLC switch and checkpoint loading (ddr_restore.eval.inference)."""
from __future__ import annotations

import pytest
import torch
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
