"""Super-resolution options of NAFNet / NAFNetLocal / Restormer: ``upscale`` (1-4) and ``upsampler``.

* shapes at scales 1-4 for both upsamplers, odd sizes included; gradients reach every parameter;
* ``upscale=1`` is the published network: same state dict as the code before the SR options (a pinned commit,
  when git history is available) and the same output bit for bit;
* alignment: a pixel-shuffle net whose last conv is zero returns exactly ``F.interpolate(..., "bicubic")`` of its
  input, and a net wired to copy its input through the shuffle returns the nearest upsampling (a one-pixel or
  one-sub-pixel offset in the head, the residual or the crop would fail both);
* TLC (``NAFNetLocal``) with ``upscale`` equals NAFNet at its LR training size; bad options name the option.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ddr_restore.archs import NAFNet, NAFNetLocal, Restormer
from ddr_restore.errors import InputError
from ddr_restore.registry import ARCH_REGISTRY

TINY_NAF = dict(width=8, middle_blk_num=1, enc_blk_nums=(1, 1), dec_blk_nums=(1, 1))
TINY_RES = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2), ffn_expansion_factor=2.0)
# The commit before the SR options were added: its archs are the reference for "upscale=1 changes nothing".
PRE_SR_COMMIT = "1e24a3900aaaa21d6a8a270b1922aa8279041a83"
REPO = Path(__file__).resolve().parents[1]


def _build(arch: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "NAFNet":
        return NAFNet(**TINY_NAF, **kw)
    return Restormer(**TINY_RES, **kw)


def _randomise_skip_scales(model: torch.nn.Module, seed: int = 0) -> None:
    """beta/gamma start at 0 (every NAFBlock is the identity); give them values so the blocks matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _bicubic(x: torch.Tensor, s: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False)


# ------------------------------------------------------------------------------------------------- shapes, grads
@pytest.mark.parametrize("arch", ["NAFNet", "Restormer"])
@pytest.mark.parametrize("upsampler", ["pixelshuffle", "bicubic"])
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_output_shape_at_every_scale(arch, upsampler, scale):
    net = _build(arch, upscale=scale, upsampler=upsampler).eval()
    assert net.scale == scale
    with torch.no_grad():
        for hw in [(16, 24), (13, 18)]:  # a multiple of size_multiple and an odd size
            y = net(torch.rand(2, 3, *hw))
            assert y.shape == (2, 3, hw[0] * scale, hw[1] * scale)
            assert torch.isfinite(y).all()


@pytest.mark.parametrize("arch", ["NAFNet", "Restormer"])
@pytest.mark.parametrize("upsampler,scale", [("pixelshuffle", 2), ("pixelshuffle", 3), ("bicubic", 2)])
def test_gradients_reach_every_parameter(arch, upsampler, scale):
    net = _build(arch, upscale=scale, upsampler=upsampler).train()
    _randomise_skip_scales(net)  # otherwise the zero-initialised beta/gamma block every grad inside the blocks
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    target = torch.rand(2, 3, 16 * scale, 16 * scale)
    F.l1_loss(net(x), target).backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, no_grad
    dead = [n for n, p in net.named_parameters() if p.grad.abs().sum() == 0]
    assert not dead, dead
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_use_checkpoint_same_gradients_at_scale_2():
    torch.manual_seed(0)
    a = NAFNet(**TINY_NAF, upscale=2)
    b = NAFNet(**TINY_NAF, upscale=2, use_checkpoint=True)
    b.load_state_dict(a.state_dict())
    _randomise_skip_scales(a), _randomise_skip_scales(b)
    x = torch.rand(1, 3, 16, 16)
    for net in (a, b):
        net.train()
        net(x).square().mean().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


# ------------------------------------------------------------------------------------------ upscale=1 unchanged
def _pre_sr_module(rel_path: str, tmp_path: Path):
    """The file at ``PRE_SR_COMMIT``, imported as a stand-alone module (without registering its classes)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git history of the repository (pre-SR reference version)")
    proc = subprocess.run(["git", "show", f"{PRE_SR_COMMIT}:{rel_path}"], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"commit {PRE_SR_COMMIT[:10]} is not in this checkout: {proc.stderr.strip()}")
    # Its registry import would register a second "NAFNet"; make it take its stand-alone fallback instead.
    source = proc.stdout.replace("from ddr_restore.registry import ARCH_REGISTRY", "raise ImportError('isolated')")
    path = tmp_path / f"pre_sr_{Path(rel_path).stem}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("arch,rel_path,kwargs", [
    ("NAFNet", "ddr_restore/archs/nafnet.py", TINY_NAF),
    ("NAFNetLocal", "ddr_restore/archs/nafnet.py", {**TINY_NAF, "train_size": (1, 3, 16, 16)}),
    ("Restormer", "ddr_restore/archs/restormer.py", TINY_RES),
])
def test_upscale_1_is_the_pre_sr_network(arch, rel_path, kwargs, tmp_path):
    old_cls = getattr(_pre_sr_module(rel_path, tmp_path), arch)
    new_cls = ARCH_REGISTRY.get(arch)
    torch.manual_seed(0)
    old = old_cls(**kwargs).eval()
    _randomise_skip_scales(old)
    for new_kw in ({}, {"upscale": 1}, {"upscale": 1, "upsampler": "bicubic"}):  # upsampler ignored at scale 1
        new = new_cls(**kwargs, **new_kw).eval()
        assert {k: v.shape for k, v in new.state_dict().items()} == {k: v.shape for k, v in old.state_dict().items()}
        new.load_state_dict(old.state_dict(), strict=True)
        assert new.size_multiple == old.size_multiple and new.scale == 1 and not hasattr(new, "pad_mode")
        with torch.no_grad():
            for hw in [(32, 32), (21, 38)]:  # larger than the TLC train size, and padded
                x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(hw[1]))
                assert torch.equal(new(x), old(x)), (arch, new_kw, hw)


def test_upscale_1_state_dict_keys_without_git():
    """Independent of git: the SR options add no parameter or buffer at scale 1 (and only widen the head at s>1)."""
    for arch, head in (("NAFNet", "ending"), ("Restormer", "output")):
        base = _build(arch).state_dict()
        assert set(_build(arch, upscale=1, upsampler="bicubic").state_dict()) == set(base)
        for s in (2, 3, 4):
            shuffle = _build(arch, upscale=s).state_dict()
            assert set(shuffle) == set(base)
            diff = {k for k in base if shuffle[k].shape != base[k].shape}
            assert diff == {f"{head}.weight"} | ({f"{head}.bias"} if f"{head}.bias" in base else set())
            assert shuffle[f"{head}.weight"].shape[0] == 3 * s * s
            pre = _build(arch, upscale=s, upsampler="bicubic")
            pre.load_state_dict(base, strict=True)  # restoration weights fine-tune into the bicubic SR net


# ------------------------------------------------------------------------------------------------------ alignment
@pytest.mark.parametrize("arch", ["NAFNet", "Restormer"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_zero_head_pixelshuffle_is_exactly_bicubic(arch, scale):
    net = _build(arch, upscale=scale).eval()
    _randomise_skip_scales(net)
    head = net.ending if arch == "NAFNet" else net.output
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()
        for hw in [(16, 16), (13, 19)]:
            x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(scale))
            assert torch.equal(net(x), _bicubic(x, scale)), hw
            # The test can fail: the same upsampling shifted by one LR pixel is far off.
            shifted = _bicubic(torch.roll(x, 1, dims=-1), scale)
            assert (shifted - net(x)).abs().max() > 0.1


@pytest.mark.parametrize("arch", ["NAFNet", "Restormer"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_zero_head_bicubic_upsampler_is_bicubic(arch, scale):
    """Pre-upsampling mode: a zero head leaves the (replicate-padded) bicubic upsampling, equal inside the image."""
    net = _build(arch, upscale=scale, upsampler="bicubic").eval()
    head = net.ending if arch == "NAFNet" else net.output
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()
        for hw in [(16, 16), (13, 19)]:
            x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(scale))
            assert torch.allclose(net(x), _bicubic(x, scale), atol=1e-6, rtol=0), hw


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_pixelshuffle_head_sub_pixel_order(scale):
    """NAFNet wired so that the shuffled head copies its input: output = nearest(x) + bicubic(x), odd sizes too.

    The U-Net is made an identity (zero beta/gamma, zero down/up convs so each level returns its skip), ``intro``
    copies the image into the first three channels, and ``ending`` puts channel c at every sub-pixel (c, a, b) of
    PixelShuffle's channel order ``c * s * s + a * s + b``. A swapped (a, b), a shift, or a crop at the wrong corner
    of the padded output breaks the equality.
    """
    net = NAFNet(width=4, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1], upscale=scale).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for c in range(3):
            net.intro.weight[c, c, 1, 1] = 1.0
            net.ending.weight[c * scale * scale:(c + 1) * scale * scale, c, 1, 1] = 1.0
        # Per-sub-pixel marks show the order, not just the count: sub-pixel (a, b) of channel c adds a * s + b.
        marks = torch.arange(scale * scale, dtype=torch.float32)
        for c in range(3):
            net.ending.bias[c * scale * scale:(c + 1) * scale * scale] = marks
        for hw in [(8, 10), (7, 9)]:  # size_multiple 2: the second one is padded
            x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(5))
            near = x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
            grid = marks.view(scale, scale).repeat(hw[0], hw[1])
            expected = near + grid + _bicubic(x, scale)
            assert torch.allclose(net(x), expected, atol=1e-6, rtol=0), hw


# ---------------------------------------------------------------------------------------------- TLC, bad values
@pytest.mark.parametrize("upsampler,scale", [("pixelshuffle", 2), ("pixelshuffle", 4), ("bicubic", 2), ("bicubic", 3)])
def test_nafnet_local_sr_equals_nafnet_at_lr_train_size(upsampler, scale):
    """TLC's windows follow the LR training input: at that size NAFNetLocal is NAFNet; larger inputs differ."""
    opts = dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1], upscale=scale,
                upsampler=upsampler)
    torch.manual_seed(0)
    plain = NAFNet(**opts).eval()
    _randomise_skip_scales(plain)
    local = NAFNetLocal(**opts, train_size=(1, 3, 12, 12)).eval()
    local.load_state_dict(plain.state_dict(), strict=True)
    assert local.scale == scale
    with torch.no_grad():
        x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(local(x), plain(x), atol=1e-5, rtol=0)
        big = torch.rand(1, 3, 40, 44, generator=torch.Generator().manual_seed(2))
        yl, yp = local(big), plain(big)
        assert yl.shape == yp.shape == (1, 3, 40 * scale, 44 * scale)
        assert (yl - yp).abs().max() > 1e-4  # the local windows are in effect


@pytest.mark.parametrize("cls", [NAFNet, NAFNetLocal, Restormer])
@pytest.mark.parametrize("kw,named", [
    ({"upscale": 5}, "upscale"), ({"upscale": 0}, "upscale"), ({"upscale": 2.0}, "upscale"),
    ({"upscale": "2"}, "upscale"), ({"upscale": True}, "upscale"), ({"upsampler": "nearest"}, "upsampler"),
    ({"upscale": 2, "upsampler": None}, "upsampler"),
])
def test_bad_sr_values_name_the_option(cls, kw, named):
    base = TINY_RES if cls is Restormer else TINY_NAF
    with pytest.raises(InputError, match=rf"network_g\.{named} must be") as err:
        cls(**base, **kw)
    assert repr(next(iter(kw.values())) if named == "upscale" else kw["upsampler"]) in str(err.value)


def test_restormer_dual_pixel_rejects_upscale():
    with pytest.raises(InputError, match="upscale=2.*dual_pixel_task"):
        Restormer(**{**TINY_RES, "inp_channels": 6}, dual_pixel_task=True, upscale=2)
    Restormer(**{**TINY_RES, "inp_channels": 6}, dual_pixel_task=True, upscale=1)  # unchanged


def test_sr_attributes_read_by_inference():
    for arch in ("NAFNet", "Restormer"):
        net = _build(arch, upscale=4)
        assert net.scale == 4 and net.pad_mode == "replicate" and net.size_multiple == net.body_multiple
        pre = _build(arch, upscale=4, upsampler="bicubic")
        # The body runs at HR: LR sides only need multiples of body_multiple / gcd(body_multiple, 4).
        assert pre.size_multiple * 4 % pre.body_multiple == 0 and pre.size_multiple == max(1, pre.body_multiple // 4)
        assert _build(arch, upscale=3, upsampler="bicubic").size_multiple == _build(arch).size_multiple
