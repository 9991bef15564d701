"""NAFNet (Chen et al., ECCV 2022) and its TLC variant ``NAFNetLocal`` (Chu et al., ECCV 2022).

Own implementation written from the published architecture description. Parameter / buffer names follow the
layout of the official checkpoints (``intro``, ``encoders.i.j.conv1`` ..., ``sca.1``, ``beta``, ``gamma``) so
released NAFNet weights load with ``strict=True``. Only ``torch`` is imported so the file can be lifted elsewhere.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

try:  # registration is optional so the file also works outside ddr_restore
    from ddr_restore.registry import ARCH_REGISTRY

    _register = ARCH_REGISTRY.register
except ImportError:  # pragma: no cover - only when lifted out of the package

    def _register(name=None):  # type: ignore[no-redef]
        return lambda obj: obj


try:  # a user error (one line, exit 2 in the console scripts) inside ddr_restore; a plain ValueError outside
    from ddr_restore.errors import InputError as _OptionError
except ImportError:  # pragma: no cover - only when lifted out of the package
    _OptionError = ValueError  # type: ignore[assignment,misc]


__all__ = ["LayerNorm2d", "SimpleGate", "LocalAvgPool2d", "NAFBlock", "NAFNet", "NAFNetLocal", "count_parameters"]


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel axis of a (B, C, H, W) tensor, independently at every pixel.

    Equivalent to ``F.layer_norm`` on the (B, H, W, C) permutation, but written with plain reductions over
    dim 1 so that it needs no permute/copy and works under autocast, ``torch.compile`` and export.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (B, C, H, W) over C."""
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # statistics in fp32: eps=1e-6 is below fp16 resolution
        mu = x.mean(dim=1, keepdim=True)
        xc = x - mu
        var = xc.pow(2).mean(dim=1, keepdim=True)
        y = xc * torch.rsqrt(var + self.eps)
        y = y * self.weight.view(1, -1, 1, 1).to(y.dtype) + self.bias.view(1, -1, 1, 1).to(y.dtype)
        return y.to(dtype)


class SimpleGate(nn.Module):
    """Split the channels in two halves and return their element-wise product (C -> C/2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate ``x`` (B, 2C, H, W) -> (B, C, H, W)."""
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2


def box_mean_valid_replicate(x: torch.Tensor, kernel: Tuple[int, int]) -> torch.Tensor:
    """Mean over every fully-inside ``kernel`` window (stride 1), replicate-padded back to the input size.

    This is the TLC local statistic: windows never leave the image; the border rows/columns, which have no
    centred window, copy the nearest valid one. Computed with 2-D cumulative sums, so the cost is O(HW)
    whatever the kernel size. ``kernel`` is clipped to the input size.
    """
    h, w = x.shape[-2:]
    k1, k2 = min(int(kernel[0]), h), min(int(kernel[1]), w)
    dtype = x.dtype
    # Accumulate in >= fp32 and around the mean: long cumulative sums of raw fp16/fp32 values lose digits.
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    offset = xf.mean(dim=(-2, -1), keepdim=True)
    s = (xf - offset).cumsum(dim=-1).cumsum(dim=-2)
    s = F.pad(s, (1, 0, 1, 0))  # s[..., i, j] = sum of x[..., :i, :j]
    out = s[..., k1:, k2:] - s[..., :-k1, k2:] - s[..., k1:, :-k2] + s[..., :-k1, :-k2]
    out = out / (k1 * k2) + offset
    oh, ow = out.shape[-2:]
    pad = ((w - ow) // 2, (w - ow + 1) // 2, (h - oh) // 2, (h - oh + 1) // 2)
    if any(pad):
        out = _edge_pad(out, pad)
    return out.to(dtype)


def _edge_pad(x: torch.Tensor, pad: Tuple[int, int, int, int]) -> torch.Tensor:
    """``F.pad(x, pad, mode="replicate")`` on the last two dims (pad = left, right, top, bottom), from edge slices.

    The same values, written with ``expand`` + ``cat`` so that the backward is sums over the expanded edges instead
    of ``replication_pad2d_backward``: that CPU kernel returns a channels-last gradient for a channels-last input
    while its meta function promises a contiguous one, so ``torch.compile``'s backward fails a stride assertion
    (torch 2.14, CPU; NAFNetLocal above its train_size). The sums are also deterministic on CUDA.
    """
    left, right, top, bottom = pad
    if left or right:
        lead = x.shape[:-1]
        x = torch.cat([x[..., :1].expand(*lead, left), x, x[..., -1:].expand(*lead, right)], dim=-1)
    if top or bottom:
        lead, width = x.shape[:-2], x.shape[-1]
        x = torch.cat([x[..., :1, :].expand(*lead, top, width), x, x[..., -1:, :].expand(*lead, bottom, width)],
                      dim=-2)
    return x


class LocalAvgPool2d(nn.Module):
    """TLC replacement of ``AdaptiveAvgPool2d(1)``: a local box mean of fixed ``kernel_size``, same output size.

    When the kernel covers the whole input (e.g. at the training resolution) it is exactly global average
    pooling with a (B, C, 1, 1) output, so weights trained with the global pool are interchangeable.
    """

    def __init__(self, kernel_size: Tuple[int, int]) -> None:
        super().__init__()
        self.kernel_size = (int(kernel_size[0]), int(kernel_size[1]))
        if min(self.kernel_size) < 1:
            raise ValueError(f"LocalAvgPool2d: kernel_size must be positive, got {self.kernel_size}")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Local (or, for small inputs, global) average of ``x`` (B, C, H, W)."""
        h, w = x.shape[-2:]
        if self.kernel_size[0] >= h and self.kernel_size[1] >= w:
            return F.adaptive_avg_pool2d(x, 1)
        return box_mean_valid_replicate(x, self.kernel_size)


class NAFBlock(nn.Module):
    """Nonlinear-activation-free block: (LN, 1x1 c->2c, 3x3 dw, SimpleGate, SCA, 1x1) + (LN, 1x1 c->2c, SG, 1x1).

    Both residual branches are scaled by learnable per-channel factors (``beta``, ``gamma``) initialised to
    zero, so a freshly built block is the identity.
    """

    def __init__(self, c: int, dw_expand: int = 2, ffn_expand: int = 2, drop_out_rate: float = 0.0) -> None:
        super().__init__()
        dw_channel = c * dw_expand
        self.conv1 = nn.Conv2d(c, dw_channel, 1)
        self.conv2 = nn.Conv2d(dw_channel, dw_channel, 3, padding=1, groups=dw_channel)
        self.conv3 = nn.Conv2d(dw_channel // 2, c, 1)
        # Simplified channel attention; Sequential so the conv is "sca.1" as in released checkpoints.
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw_channel // 2, dw_channel // 2, 1))
        self.sg = SimpleGate()
        ffn_channel = ffn_expand * c
        self.conv4 = nn.Conv2d(c, ffn_channel, 1)
        self.conv5 = nn.Conv2d(ffn_channel // 2, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0.0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0.0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``inp`` (B, c, H, W)."""
        x = self.conv2(self.conv1(self.norm1(inp)))
        x = self.sg(x)
        x = x * self.sca(x)
        x = self.dropout1(self.conv3(x))
        y = inp + x * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        x = self.dropout2(x)
        return y + x * self.gamma


def _check_positive_int(name: str, value: object, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")
    return value


_UPSCALES = (1, 2, 3, 4)
_UPSAMPLERS = ("pixelshuffle", "bicubic")


def _check_upscale(arch: str, upscale: object, upsampler: object) -> Tuple[int, str]:
    """Validate the super-resolution options of ``arch``; returns ``(upscale, upsampler)``.

    Raises ``InputError`` (a ``ValueError``) naming the option (``network_g.upscale`` / ``network_g.upsampler``).
    """
    if isinstance(upscale, bool) or not isinstance(upscale, int) or upscale not in _UPSCALES:
        raise _OptionError(f"{arch}: network_g.upscale must be 1, 2, 3 or 4, got {upscale!r}")
    if upsampler not in _UPSAMPLERS:
        raise _OptionError(f"{arch}: network_g.upsampler must be 'pixelshuffle' or 'bicubic', got {upsampler!r}")
    return upscale, str(upsampler)


def _bicubic_upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)``; fp16/bf16 computed in fp32.

    PyTorch's bicubic clamps at the border (as edge replication would), so the result inside the image does not
    depend on how the image was padded with :func:`_replicate_pad` before.
    """
    dtype = x.dtype
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    return F.interpolate(xf, scale_factor=scale, mode="bicubic", align_corners=False).to(dtype)


def _replicate_pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right to a multiple of ``multiple`` by repeating the last row/column."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x


@_register()
class NAFNet(nn.Module):
    """NAFNet U-Net for image restoration; input (B, img_channel, H, W), any H, W; output ``upscale`` times larger.

    Args:
        img_channel: input/output channels.
        width: channels at the first level (doubled at each downsampling).
        middle_blk_num: NAFBlocks at the bottleneck.
        enc_blk_nums: NAFBlocks per encoder level (its length L sets the depth; input padded to 2**L).
        dec_blk_nums: NAFBlocks per decoder level (same length as ``enc_blk_nums``).
        drop_out_rate: dropout inside the blocks.
        use_checkpoint: gradient checkpointing per block while training (saves memory, costs compute).
        upscale: 1 (restoration: output the size of the input, the published network) or 2, 3, 4 for
            super-resolution of a true low-resolution input (output ``upscale`` times larger).
        upsampler: how ``upscale > 1`` is done (ignored when ``upscale == 1``):

            * ``"pixelshuffle"`` (default; cheap, NAFSSR-like): the U-Net runs at the low resolution, its last
              conv ``ending`` outputs ``img_channel * upscale**2`` channels that ``PixelShuffle(upscale)``
              rearranges to the high resolution, and the global residual is the bicubic upsampling of the input,
              so an untrained network starts near bicubic interpolation. Use it for training SR from scratch.
            * ``"bicubic"`` (classical pre-upsampling, as in SRCNN/VDSR): the input is bicubic-upsampled first
              and the unchanged network runs at the high resolution. It costs about ``upscale**2`` times the compute
              and activation memory of ``"pixelshuffle"``, but has exactly the parameters of the ``upscale=1``
              network, so restoration weights (e.g. a deblurring checkpoint) load into it strictly and can be
              fine-tuned for SR.

    Attributes:
        scale: the output/input size ratio (= ``upscale``); inference code reads it.
        size_multiple: the low-resolution input is padded to a multiple of this internally; padding it to that
            multiple outside (tiled inference) gives the same result.
        pad_mode: only with ``upscale > 1``: ``"replicate"``, the padding used internally (zeros would leak into
            the bicubic upsampling at the bottom/right border).
    """

    size_multiple: int = 16
    scale: int = 1

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (1, 1, 1, 28),
        dec_blk_nums: Sequence[int] = (1, 1, 1, 1),
        drop_out_rate: float = 0.0,
        use_checkpoint: bool = False,
        upscale: int = 1,
        upsampler: str = "pixelshuffle",
    ) -> None:
        super().__init__()
        _check_positive_int("NAFNet img_channel", img_channel)
        _check_positive_int("NAFNet width", width)
        _check_positive_int("NAFNet middle_blk_num", middle_blk_num, allow_zero=True)
        enc_blk_nums = [_check_positive_int("NAFNet enc_blk_nums[]", n, allow_zero=True) for n in enc_blk_nums]
        dec_blk_nums = [_check_positive_int("NAFNet dec_blk_nums[]", n, allow_zero=True) for n in dec_blk_nums]
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError(
                f"NAFNet enc_blk_nums and dec_blk_nums must have the same length, got {enc_blk_nums} and {dec_blk_nums}"
            )
        self.scale, self.upsampler = _check_upscale(type(self).__name__, upscale, upsampler)
        # The head's width is the only parameter that depends on the scale (and only with pixel shuffle).
        head = self.scale ** 2 if (self.scale > 1 and self.upsampler == "pixelshuffle") else 1
        self.use_checkpoint = bool(use_checkpoint)
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel * head, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[NAFBlock(chan, drop_out_rate=drop_out_rate) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, stride=2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(chan, drop_out_rate=drop_out_rate) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            # 1x1 to 2C then PixelShuffle(2): spatial x2, channels C -> C/2.
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan, drop_out_rate=drop_out_rate) for _ in range(num)]))
        body_multiple = 2 ** len(self.encoders)
        self.body_multiple = body_multiple  # what the U-Net itself needs, at the resolution it runs at
        self.size_multiple = body_multiple
        if self.scale > 1:
            self.pad_mode = "replicate"
            if self.upsampler == "pixelshuffle":
                self.shuffle = nn.PixelShuffle(self.scale)  # no parameters: the state dict only has `ending`
            else:
                # The body runs at HR: an LR side that is a multiple of m / gcd(m, s) is one of m after upsampling.
                self.size_multiple = body_multiple // math.gcd(body_multiple, self.scale)

    def _run(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            for blk in blocks:
                x = checkpoint(blk, x, use_reentrant=False)
            return x
        return blocks(x)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """The U-Net from ``intro`` to the last decoder; ``x``'s sides must be multiples of ``body_multiple``."""
        x = self.intro(x)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = self._run(encoder, x)
            skips.append(x)
            x = down(x)
        x = self._run(self.middle_blks, x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = up(x) + skip
            x = self._run(decoder, x)
        return x

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """Restore ``inp`` (B, C, H, W) -> (B, C, H * scale, W * scale); pads internally and crops back."""
        if inp.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects a (B, C, H, W) tensor, got shape {tuple(inp.shape)}")
        h, w = inp.shape[-2:]
        s = self.scale
        if s > 1:
            x_in = _replicate_pad(inp, self.size_multiple)
            if self.upsampler == "bicubic":
                x_up = _bicubic_upsample(x_in, s)  # a multiple of body_multiple: the body needs no padding
                return (self.ending(self._features(x_up)) + x_up)[..., :h * s, :w * s]
            x = self.shuffle(self.ending(self._features(x_in)))[..., :h * s, :w * s]
            # The residual comes from the unpadded input; bicubic clamps at the border, which equals what it
            # would read from the replicate-padded one, so tiles of a padded image get the same values.
            return x + _bicubic_upsample(inp, s)
        m = self.size_multiple
        ph, pw = (m - h % m) % m, (m - w % m) % m
        x_in = F.pad(inp, (0, pw, 0, ph)) if (ph or pw) else inp
        x = self.ending(self._features(x_in)) + x_in
        return x[..., :h, :w]


def _tlc_kernel(train_hw: Tuple[int, int], multiple: int, level: int, scale: int = 1) -> Tuple[int, int]:
    """Kernel of the level-``level`` pool: 1.5x the feature size that level sees at the training resolution.

    Reproduces what a dummy forward at ``train_size`` would fix (feature = padded train size * ``scale`` /
    2**level, kernel = feature * int(1.5 * t) // t with ``t`` the side the U-Net body sees, ``train * scale``),
    without running one. ``scale`` > 1 is the bicubic pre-upsampling SR mode, where the body runs at HR.
    """
    out = []
    for t in train_hw:
        padded = -(-t // multiple) * multiple * scale
        body_t = t * scale
        feat = padded >> level
        out.append(max(1, feat * int(1.5 * body_t) // body_t))
    return out[0], out[1]


@_register()
class NAFNetLocal(NAFNet):
    """NAFNet with Test-time Local Converter (TLC): SCA pools over a local window instead of the whole image.

    The window is 1.5x the feature size seen at ``train_size`` (per level), so training at ``train_size`` with
    this class is identical to plain ``NAFNet`` and the two share weights; at larger test images (e.g. full
    1280x720 GoPro frames) statistics stay local, as during training on crops.

    Args:
        img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums, drop_out_rate, use_checkpoint, upscale,
            upsampler: as in :class:`NAFNet` (spelled out, not ``**kwargs``, so option files are checked
            against them up front).
        train_size: (N, C, H, W) (or (H, W)) of the training *input* crops. With ``upscale > 1`` that is the
            low-resolution crop (``gt_size // upscale``), as in NAFSSR's option files; the windows follow the
            resolution the U-Net body runs at (LR with ``"pixelshuffle"``, HR with ``"bicubic"``).
        fast_imp: accepted for option-file compatibility; the exact cumulative-sum pool used here is already
            O(HW), so ``True`` only emits a warning and uses it.
    """

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (1, 1, 1, 28),
        dec_blk_nums: Sequence[int] = (1, 1, 1, 1),
        drop_out_rate: float = 0.0,
        use_checkpoint: bool = False,
        train_size: Sequence[int] = (1, 3, 256, 256),
        fast_imp: bool = False,
        upscale: int = 1,
        upsampler: str = "pixelshuffle",
    ) -> None:
        super().__init__(
            img_channel=img_channel, width=width, middle_blk_num=middle_blk_num, enc_blk_nums=enc_blk_nums,
            dec_blk_nums=dec_blk_nums, drop_out_rate=drop_out_rate, use_checkpoint=use_checkpoint,
            upscale=upscale, upsampler=upsampler,
        )
        train_size = tuple(train_size)
        if len(train_size) not in (2, 4) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                for v in train_size):
            raise ValueError(f"NAFNetLocal train_size must be (N, C, H, W) or (H, W) positive ints, got {train_size!r}")
        if fast_imp:
            warnings.warn("NAFNetLocal: fast_imp=True is not implemented separately; using the exact local pool",
                          stacklevel=2)
        self.train_size = train_size
        self.fast_imp = bool(fast_imp)
        train_hw = (train_size[-2], train_size[-1])
        if self.scale > 1 and self.upsampler == "bicubic":
            # The body sees the LR crop padded to size_multiple, then upsampled.
            multiple, body_scale = self.size_multiple, self.scale
        else:
            multiple, body_scale = self.body_multiple, 1
        depth = len(self.encoders)
        levels = [(blocks, i) for i, blocks in enumerate(self.encoders)]
        levels.append((self.middle_blks, depth))
        levels += [(blocks, depth - 1 - i) for i, blocks in enumerate(self.decoders)]
        for blocks, level in levels:
            kernel = _tlc_kernel(train_hw, multiple, level, body_scale)
            for blk in blocks:
                blk.sca[0] = LocalAvgPool2d(kernel)  # index 0 holds no parameters: state dicts are unchanged


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (sum of ``numel``) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
