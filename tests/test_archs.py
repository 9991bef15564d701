"""NAFNet / NAFNetLocal (TLC) / Restormer: published parameter counts, shapes, TLC semantics, padding, training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddr_restore.archs import NAFNet, NAFNetLocal, Restormer
from ddr_restore.archs.nafnet import LayerNorm2d, LocalAvgPool2d, box_mean_valid_replicate
from ddr_restore.archs.restormer import MDTA, ChannelLayerNorm, pad_to_multiple
from ddr_restore.registry import ARCH_REGISTRY

TINY_NAF = dict(width=8, middle_blk_num=1, enc_blk_nums=(1, 1, 1, 1), dec_blk_nums=(1, 1, 1, 1))
TINY_RES = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2), ffn_expansion_factor=2.0)


def _nparams(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomise_skip_scales(model: torch.nn.Module, seed: int = 0) -> None:
    """beta/gamma start at 0 (every NAFBlock is the identity); give them values so the blocks matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


# ---------------------------------------------------------------- published parameter counts (anchors §3.1, §4.1)
@pytest.mark.parametrize(
    "build, published",
    [
        (lambda: NAFNet(width=32, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28], dec_blk_nums=[1, 1, 1, 1]), 17.11e6),
        (lambda: NAFNet(width=64, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28], dec_blk_nums=[1, 1, 1, 1]), 67.89e6),
        (lambda: NAFNet(width=64, middle_blk_num=12, enc_blk_nums=[2, 2, 4, 8], dec_blk_nums=[2, 2, 2, 2]), 115.98e6),
        (lambda: Restormer(), 26.13e6),
    ],
    ids=["nafnet-gopro-w32", "nafnet-gopro-w64", "nafnet-sidd-w64", "restormer-default"],
)
def test_published_param_counts(build, published):
    assert abs(_nparams(build()) - published) / published < 0.01


def test_tlc_keeps_param_count_and_state_dict_keys():
    plain, local = NAFNet(**TINY_NAF), NAFNetLocal(**TINY_NAF, train_size=(1, 3, 64, 64))
    assert list(plain.state_dict()) == list(local.state_dict())


def test_state_dict_names_match_released_checkpoints():
    # Key layout of the official NAFNet / Restormer checkpoints, so released weights load with strict=True.
    naf = NAFNet(**TINY_NAF).state_dict()
    for key in ["intro.weight", "ending.bias", "encoders.0.0.conv1.weight", "encoders.0.0.sca.1.weight",
                "encoders.0.0.norm1.weight", "encoders.0.0.beta", "encoders.0.0.gamma", "downs.0.weight",
                "middle_blks.0.conv5.weight", "ups.0.0.weight", "decoders.3.0.conv4.bias"]:
        assert key in naf, key
    assert naf["encoders.0.0.beta"].shape == (1, 8, 1, 1)
    assert "ups.0.0.bias" not in naf  # the up-convs have no bias
    res = Restormer(**TINY_RES).state_dict()
    for key in ["patch_embed.proj.weight", "encoder_level1.0.norm1.body.weight", "encoder_level1.0.norm1.body.bias",
                "encoder_level1.0.attn.temperature", "encoder_level1.0.attn.qkv.weight",
                "encoder_level1.0.attn.qkv_dwconv.weight", "encoder_level1.0.attn.project_out.weight",
                "encoder_level1.0.ffn.project_in.weight", "encoder_level1.0.ffn.dwconv.weight",
                "down1_2.body.0.weight", "up4_3.body.0.weight", "reduce_chan_level3.weight",
                "latent.0.ffn.project_out.weight",
                "decoder_level1.0.norm2.body.weight", "refinement.0.attn.temperature", "output.weight"]:
        assert key in res, key
    assert "output.bias" not in res  # bias=False by default


# ---------------------------------------------------------------- shapes
@pytest.mark.parametrize("hw", [(37, 53), (16, 16), (1, 1), (5, 70)])
@pytest.mark.parametrize("cls", [NAFNet, NAFNetLocal, Restormer])
def test_any_size_round_trip(cls, hw):
    torch.manual_seed(0)
    kwargs = TINY_RES if cls is Restormer else dict(TINY_NAF)
    if cls is NAFNetLocal:
        kwargs["train_size"] = (1, 3, 16, 16)  # small kernels, so the local (non-global) path runs too
    model = cls(**kwargs).eval()
    x = torch.rand(2, 3, *hw)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_size_multiple_attribute():
    assert NAFNet.size_multiple == 16 and NAFNetLocal.size_multiple == 16 and Restormer.size_multiple == 8
    assert NAFNet(width=8, enc_blk_nums=(1, 1), dec_blk_nums=(1, 1)).size_multiple == 4


def test_registry_builds_archs_and_reports_bad_options():
    net = ARCH_REGISTRY.build({"type": "NAFNetLocal", **TINY_NAF, "train_size": [1, 3, 32, 32]}, where="network_g")
    assert isinstance(net, NAFNetLocal)
    assert isinstance(ARCH_REGISTRY.build({"type": "Restormer", **TINY_RES}), Restormer)
    with pytest.raises(TypeError, match="network_g"):
        ARCH_REGISTRY.build({"type": "NAFNet", "widht": 8}, where="network_g")
    with pytest.raises(ValueError, match="dec_blk_nums"):
        NAFNet(enc_blk_nums=(1, 1), dec_blk_nums=(1,))
    with pytest.raises(ValueError, match="LayerNorm_type"):
        Restormer(**TINY_RES, LayerNorm_type="Bogus")


# ---------------------------------------------------------------- NAFNet building blocks
def test_layernorm2d_matches_f_layer_norm_values_and_grads():
    torch.manual_seed(0)
    ln = LayerNorm2d(6)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(6))
        ln.bias.copy_(torch.randn(6))
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    ln = ln.double()
    y = ln(x)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ln.weight, ln.bias, eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad((y * g).sum(), (x, ln.weight))
    rx, rw = torch.autograd.grad((ref * g).sum(), (x, ln.weight))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    assert torch.autograd.gradcheck(ln, (torch.randn(1, 6, 2, 3, dtype=torch.float64, requires_grad=True),))


def _naive_tlc_pool(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Mean over every fully-inside k1 x k2 window, edges replicated (TLC semantics), with explicit loops."""
    n, c, h, w = x.shape
    k1, k2 = min(k1, h), min(k2, w)
    oh, ow = h - k1 + 1, w - k2 + 1
    valid = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            valid[:, :, i, j] = x[:, :, i:i + k1, j:j + k2].mean(axis=(2, 3))
    top, left = (h - oh) // 2, (w - ow) // 2
    rows = np.clip(np.arange(h) - top, 0, oh - 1)
    cols = np.clip(np.arange(w) - left, 0, ow - 1)
    return valid[:, :, rows][:, :, :, cols]


@pytest.mark.parametrize("kernel", [(3, 3), (4, 6), (1, 1), (9, 2), (20, 5), (11, 13)])
def test_local_pool_matches_naive_box_average(kernel):
    x = np.random.default_rng(1).random((2, 3, 11, 13)) + 5.0  # offset: checks the mean-centred cumsum
    got = box_mean_valid_replicate(torch.from_numpy(x), kernel).numpy()
    np.testing.assert_allclose(got, _naive_tlc_pool(x, *kernel), rtol=0, atol=1e-10)
    pool = LocalAvgPool2d(kernel)
    out = pool(torch.from_numpy(x)).numpy()
    if kernel[0] >= 11 and kernel[1] >= 13:
        assert out.shape == (2, 3, 1, 1)
        np.testing.assert_allclose(out[..., 0, 0], x.mean(axis=(2, 3)), atol=1e-12)
    else:
        np.testing.assert_allclose(out, _naive_tlc_pool(x, *kernel), atol=1e-10)


def test_local_pool_fp32_precision_on_large_maps():
    x = torch.rand(1, 2, 720, 1280, dtype=torch.float64) + 3.0
    got = box_mean_valid_replicate(x.float(), (384, 384)).double()
    ref = box_mean_valid_replicate(x, (384, 384))
    assert (got - ref).abs().max() < 1e-4


@pytest.mark.parametrize("train_hw", [(48, 40), (45, 33)])
def test_tlc_kernels_equal_what_a_dummy_forward_at_train_size_sees(train_hw):
    # The TLC rule: kernel = feature size at the training resolution * int(1.5 * train) // train, per level.
    plain = NAFNet(**TINY_NAF)
    seen = []
    hooks = [blk.sca[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
             for blocks in [*plain.encoders, plain.middle_blks, *plain.decoders] for blk in blocks]
    with torch.no_grad():
        plain(torch.rand(1, 3, *train_hw))
    for h in hooks:
        h.remove()
    local = NAFNetLocal(**TINY_NAF, train_size=(1, 3, *train_hw))
    kernels = [blk.sca[0].kernel_size for blocks in [*local.encoders, local.middle_blks, *local.decoders]
               for blk in blocks]
    th, tw = train_hw
    expected = [(fh * int(1.5 * th) // th, fw * int(1.5 * tw) // tw) for fh, fw in seen]
    assert kernels == expected


def test_nafnet_local_equals_nafnet_at_train_size_and_differs_above():
    torch.manual_seed(0)
    plain = NAFNet(**TINY_NAF).eval()
    _randomise_skip_scales(plain)
    local = NAFNetLocal(**TINY_NAF, train_size=(1, 3, 32, 32)).eval()
    local.load_state_dict(plain.state_dict(), strict=True)
    plain.load_state_dict(local.state_dict(), strict=True)  # interchangeable both ways
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        torch.testing.assert_close(local(x), plain(x), rtol=1e-5, atol=1e-5)
        big = torch.rand(1, 3, 96, 80)
        assert (local(big) - plain(big)).abs().max() > 1e-3


def test_nafnet_blocks_are_identity_at_init_and_padding_is_cropped():
    # Freshly built: beta = gamma = 0, so the net is intro -> downs/ups -> ending plus the global residual.
    net = NAFNet(**TINY_NAF)
    assert all((b.beta == 0).all() and (b.gamma == 0).all() for blocks in net.encoders for b in blocks)
    x = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        y = net(x)
        padded = F.pad(x, (0, 32 - 23, 0, 32 - 19))  # zero padding to the next multiple of 16
        torch.testing.assert_close(y, net(padded)[..., :19, :23])


# ---------------------------------------------------------------- Restormer building blocks
def test_restormer_layernorms():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    ln = ChannelLayerNorm(5, "WithBias").double()
    with torch.no_grad():
        ln.body.weight.copy_(torch.randn(5))
        ln.body.bias.copy_(torch.randn(5))
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (5,), ln.body.weight, ln.body.bias, eps=1e-5).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), ref)
    bf = ChannelLayerNorm(5, "BiasFree").double()
    with torch.no_grad():
        bf.body.weight.copy_(torch.randn(5))
    xn = x.numpy()
    ref_bf = xn / np.sqrt(xn.var(axis=1, keepdims=True) + 1e-5) * bf.body.weight.detach().numpy()[None, :, None, None]
    np.testing.assert_allclose(bf(x).detach().numpy(), ref_bf, rtol=1e-12)
    assert not hasattr(bf.body, "bias")


def test_mdta_matches_explicit_per_head_channel_attention():
    torch.manual_seed(0)
    att = MDTA(8, 2, bias=True).double()
    with torch.no_grad():
        att.temperature.copy_(torch.tensor([0.7, 2.0], dtype=torch.float64).view(2, 1, 1))
    x = torch.randn(1, 8, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        qkv = att.qkv_dwconv(att.qkv(x))[0].numpy().reshape(24, 30)
        q, k, v = qkv[:8], qkv[8:16], qkv[16:]
        heads = []
        for hd, t in enumerate([0.7, 2.0]):
            qs, ks, vs = (a[hd * 4:(hd + 1) * 4] for a in (q, k, v))
            qs = qs / np.linalg.norm(qs, axis=1, keepdims=True)
            ks = ks / np.linalg.norm(ks, axis=1, keepdims=True)
            logits = qs @ ks.T * t
            a = np.exp(logits - logits.max(axis=1, keepdims=True))
            a /= a.sum(axis=1, keepdims=True)
            heads.append(a @ vs)
        mixed = torch.from_numpy(np.concatenate(heads).reshape(1, 8, 5, 6))
        torch.testing.assert_close(att(x), att.project_out(mixed))


def test_restormer_pads_by_reflection_and_crops_back():
    x = torch.rand(1, 3, 21, 29, dtype=torch.float64)
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 3), (0, 3)), mode="reflect")  # to 24 x 32
    np.testing.assert_array_equal(pad_to_multiple(x, 8).numpy(), ref)
    torch.manual_seed(0)
    net = Restormer(**TINY_RES).double().eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(torch.from_numpy(ref))[..., :21, :29])
    tiny = torch.rand(1, 3, 3, 2)  # too small for reflect: replicate instead
    np.testing.assert_array_equal(pad_to_multiple(tiny, 8).numpy(),
                                  np.pad(tiny.numpy(), ((0, 0), (0, 0), (0, 5), (0, 6)), mode="edge"))


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("cls", [NAFNetLocal, Restormer])
def test_one_optimisation_step_lowers_the_loss(cls):
    torch.manual_seed(0)
    kwargs = TINY_RES if cls is Restormer else dict(TINY_NAF, train_size=(1, 3, 32, 32))
    net = cls(**kwargs).train()
    gt = torch.rand(2, 3, 32, 32)
    lq = F.avg_pool2d(gt, 5, stride=1, padding=2, count_include_pad=False)  # a blurred version
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = F.l1_loss(net(lq), gt)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = F.l1_loss(net(lq), gt)
    assert after.item() < before.item()


@pytest.mark.parametrize("cls", [NAFNet, Restormer])
def test_gradient_checkpointing_gives_same_gradients(cls):
    torch.manual_seed(0)
    kwargs = TINY_RES if cls is Restormer else TINY_NAF
    a, b = cls(**kwargs), cls(**kwargs, use_checkpoint=True)
    b.load_state_dict(a.state_dict())
    if cls is NAFNet:
        _randomise_skip_scales(a)
        b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 16, 24)
    a(x).square().mean().backward()
    b(x).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


# ---------------------------------------------------------------- option checking of NAFNetLocal (issue 7, item 6)
def test_nafnet_local_arguments_are_checked_like_nafnet():
    """A typo in a NAFNetLocal option is a one-line "unknown key (accepted: ...)" error, as for NAFNet/Restormer."""
    import copy
    import inspect

    from ddr_restore.train.options import OptionsError, validate_options

    # Every NAFNet argument is an explicit NAFNetLocal argument (no **kwargs hiding them from the option check).
    local = inspect.signature(NAFNetLocal).parameters
    assert not any(p.kind is p.VAR_KEYWORD or p.kind is p.VAR_POSITIONAL for p in local.values())
    assert set(inspect.signature(NAFNet).parameters) | {"train_size", "fast_imp"} == set(local)

    base = {
        "name": "tlc_typo", "model_type": "ImageRestorationModel", "num_gpu": 0, "manual_seed": 1,
        "datasets": {"train": {"name": "t", "type": "SyntheticMotionBlurDataset", "gt_size": 32,
                               "batch_size_per_gpu": 2}},
        "network_g": {"type": "NAFNetLocal", "width": 8, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1],
                      "train_size": [1, 3, 32, 32]},
        "train": {"optim_g": {"type": "AdamW", "lr": 1e-3}, "total_iter": 2,
                  "pixel_opt": {"type": "PSNRLoss", "loss_weight": 1.0}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": False},
    }
    validate_options(copy.deepcopy(base))  # the correct spelling passes
    for arch in ("NAFNetLocal", "NAFNet"):
        opt = copy.deepcopy(base)
        opt["network_g"]["type"] = arch
        opt["network_g"].pop("train_size")
        opt["network_g"]["enc_blk_num"] = opt["network_g"].pop("enc_blk_nums")
        with pytest.raises(OptionsError) as info:
            validate_options(opt)
        assert f"network_g.enc_blk_num: unknown key for {arch} (accepted: " in str(info.value)
        assert "enc_blk_nums" in str(info.value)
    local_net = NAFNetLocal(**TINY_NAF, train_size=(1, 3, 32, 32))
    assert NAFNet(**TINY_NAF).state_dict().keys() == local_net.state_dict().keys()
