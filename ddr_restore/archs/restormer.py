"""Restormer (Zamir et al., CVPR 2022): a U-Net of transposed-attention (MDTA) + gated-FFN (GDFN) blocks.

Own implementation written from the published architecture description. Module names follow the layout of the
official checkpoints (``patch_embed.proj``, ``encoder_level1.0.attn.qkv``, ``norm1.body.weight``, ...) so
released Restormer weights load with ``strict=True``. Only ``torch`` is imported so the file can be lifted.
"""
from __future__ import annotations

import math
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


__all__ = ["ChannelLayerNorm", "MDTA", "GDFN", "TransformerBlock", "Restormer", "pad_to_multiple"]


class _WithBiasLN(nn.Module):
    """Per-pixel LayerNorm over channels of (B, C, H, W): (x - mean) / sqrt(var + eps) * weight + bias."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # fp32 statistics under autocast
        mu = x.mean(dim=1, keepdim=True)
        xc = x - mu
        var = xc.pow(2).mean(dim=1, keepdim=True)
        y = xc * torch.rsqrt(var + self.eps)
        y = y * self.weight.view(1, -1, 1, 1).to(y.dtype) + self.bias.view(1, -1, 1, 1).to(y.dtype)
        return y.to(dtype)


class _BiasFreeLN(nn.Module):
    """Restormer's "BiasFree" LayerNorm: x / sqrt(var + eps) * weight; the mean is not subtracted from x."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        var = x.var(dim=1, keepdim=True, unbiased=False)
        y = x * torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1).to(x.dtype)
        return y.to(dtype)


class ChannelLayerNorm(nn.Module):
    """Channel LayerNorm of type ``"WithBias"`` or ``"BiasFree"`` (the parameters live in ``.body``)."""

    def __init__(self, channels: int, layer_norm_type: str = "WithBias") -> None:
        super().__init__()
        if layer_norm_type == "BiasFree":
            self.body: nn.Module = _BiasFreeLN(channels)
        elif layer_norm_type == "WithBias":
            self.body = _WithBiasLN(channels)
        else:
            raise ValueError(f"Restormer LayerNorm_type must be 'WithBias' or 'BiasFree', got {layer_norm_type!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (B, C, H, W) over C at every pixel."""
        return self.body(x)


class MDTA(nn.Module):
    """Multi-Dconv-head Transposed Attention: attention across channels (C/h x C/h per head), linear in H*W."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Restormer: channels {dim} are not divisible by heads {num_heads}")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over ``x`` (B, C, H, W)."""
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q = q.reshape(b, self.num_heads, c // self.num_heads, h * w)
        k = k.reshape(b, self.num_heads, c // self.num_heads, h * w)
        v = v.reshape(b, self.num_heads, c // self.num_heads, h * w)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        attn = attn.softmax(dim=-1)
        out = (attn @ v).reshape(b, c, h, w)
        return self.project_out(out)


class GDFN(nn.Module):
    """Gated-Dconv Feed-forward Network: 1x1 to 2*hidden, 3x3 dw, GELU(x1) * x2, 1x1 back to C."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the gated FFN to ``x`` (B, C, H, W)."""
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """``x + MDTA(LN(x))`` then ``x + GDFN(LN(x))``."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool, layer_norm_type: str):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, layer_norm_type)
        self.attn = MDTA(dim, num_heads, bias)
        self.norm2 = ChannelLayerNorm(dim, layer_norm_type)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` (B, C, H, W)."""
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, in_c: int, dim: int, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_c, dim, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class _Downsample(nn.Module):
    """3x3 conv C -> C/2, PixelUnshuffle(2): spatial /2, channels x2."""

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Upsample(nn.Module):
    """3x3 conv C -> 2C, PixelShuffle(2): spatial x2, channels /2."""

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``x`` (B, C, H, W) at the bottom/right to a multiple of ``multiple``.

    Reflect padding (as the official Restormer test script) when the image is large enough for it, otherwise
    replicate (reflect needs pad < size; replicate needs size >= 1).
    """
    h, w = x.shape[-2:]
    ph, pw = (multiple - h % multiple) % multiple, (multiple - w % multiple) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


_UPSCALES = (1, 2, 3, 4)
_UPSAMPLERS = ("pixelshuffle", "bicubic")


def _check_upscale(upscale: object, upsampler: object) -> Tuple[int, str]:
    """Validate ``upscale`` / ``upsampler``; ``InputError`` (a ``ValueError``) naming the option otherwise."""
    if isinstance(upscale, bool) or not isinstance(upscale, int) or upscale not in _UPSCALES:
        raise _OptionError(f"Restormer: network_g.upscale must be 1, 2, 3 or 4, got {upscale!r}")
    if upsampler not in _UPSAMPLERS:
        raise _OptionError(f"Restormer: network_g.upsampler must be 'pixelshuffle' or 'bicubic', got {upsampler!r}")
    return upscale, str(upsampler)


def _bicubic_upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic ``scale``-times upsampling (``align_corners=False``, border clamped); fp16/bf16 computed in fp32."""
    dtype = x.dtype
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    return F.interpolate(xf, scale_factor=scale, mode="bicubic", align_corners=False).to(dtype)


def _replicate_pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right to a multiple of ``multiple`` by repeating the last row/column."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x


@_register()
class Restormer(nn.Module):
    """Restormer U-Net; input (B, inp_channels, H, W) with any H, W (padded to 8 internally), output ``upscale`` x.

    Args:
        inp_channels, out_channels: image channels in and out.
        dim: channels at level 1 (doubled per level).
        num_blocks: transformer blocks at levels 1, 2, 3 and the latent level.
        num_refinement_blocks: blocks after the decoder, at 2*dim channels.
        heads: attention heads at levels 1..4.
        ffn_expansion_factor: GDFN hidden = int(C * factor).
        bias: biases in the convolutions of the blocks.
        LayerNorm_type: ``"WithBias"`` (deblurring/deraining) or ``"BiasFree"`` (denoising).
        dual_pixel_task: dual-pixel defocus variant (6 input channels, extra skip conv, no global residual).
        use_checkpoint: gradient checkpointing per block while training.
        upscale: 1 (restoration: output the size of the input, the published network) or 2, 3, 4 for
            super-resolution of a true low-resolution input (output ``upscale`` times larger). Not with
            ``dual_pixel_task``.
        upsampler: how ``upscale > 1`` is done (ignored when ``upscale == 1``):

            * ``"pixelshuffle"`` (default; cheap, as NAFSSR does it): the U-Net runs at the low resolution, the
              ``output`` conv gives ``out_channels * upscale**2`` channels that ``PixelShuffle(upscale)``
              rearranges to the high resolution, and the global residual is the bicubic upsampling of the input,
              so an untrained network starts near bicubic interpolation. Use it for training SR from scratch.
            * ``"bicubic"`` (classical pre-upsampling, as in SRCNN/VDSR): the input is bicubic-upsampled first
              and the unchanged network runs at the high resolution: about ``upscale**2`` times the compute and
              activation memory of ``"pixelshuffle"``, but exactly the parameters of the ``upscale=1`` network,
              so restoration weights load into it strictly for fine-tuning.

    Attributes:
        scale: the output/input size ratio (= ``upscale``); inference code reads it.
        size_multiple: the (low-resolution) input is padded to a multiple of this internally.
        pad_mode: only with ``upscale > 1``: ``"replicate"``, the padding used internally (the bicubic
            upsampling clamps at the border too, so padding never changes it inside the image).
    """

    size_multiple: int = 8
    scale: int = 1

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",  # noqa: N803  (option name used by released configs)
        dual_pixel_task: bool = False,
        use_checkpoint: bool = False,
        upscale: int = 1,
        upsampler: str = "pixelshuffle",
    ) -> None:
        super().__init__()
        self.scale, self.upsampler = _check_upscale(upscale, upsampler)
        if self.scale > 1 and dual_pixel_task:
            raise _OptionError(f"Restormer: network_g.upscale={self.scale} cannot be combined with dual_pixel_task "
                               "(the dual-pixel variant has no global residual to upsample)")
        num_blocks, heads = list(num_blocks), list(heads)
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f"Restormer num_blocks and heads need 4 entries each, got {num_blocks} and {heads}")
        if dim < 2 or dim % 2:
            raise ValueError(f"Restormer dim must be an even integer >= 2, got {dim!r}")
        if ffn_expansion_factor <= 0:
            raise ValueError(f"Restormer ffn_expansion_factor must be > 0, got {ffn_expansion_factor!r}")
        if not dual_pixel_task and inp_channels != out_channels:
            raise ValueError(
                f"Restormer global residual needs inp_channels == out_channels, got {inp_channels} and {out_channels}"
            )
        self.use_checkpoint = bool(use_checkpoint)
        self.dual_pixel_task = bool(dual_pixel_task)
        ln = LayerNorm_type

        def stage(channels: int, n: int, h: int) -> nn.Sequential:
            return nn.Sequential(*[TransformerBlock(channels, h, ffn_expansion_factor, bias, ln) for _ in range(n)])

        self.patch_embed = _PatchEmbed(inp_channels, dim)
        self.encoder_level1 = stage(dim, num_blocks[0], heads[0])
        self.down1_2 = _Downsample(dim)
        self.encoder_level2 = stage(dim * 2, num_blocks[1], heads[1])
        self.down2_3 = _Downsample(dim * 2)
        self.encoder_level3 = stage(dim * 4, num_blocks[2], heads[2])
        self.down3_4 = _Downsample(dim * 4)
        self.latent = stage(dim * 8, num_blocks[3], heads[3])
        self.up4_3 = _Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)
        self.decoder_level3 = stage(dim * 4, num_blocks[2], heads[2])
        self.up3_2 = _Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)
        self.decoder_level2 = stage(dim * 2, num_blocks[1], heads[1])
        self.up2_1 = _Upsample(dim * 2)
        # Level 1 keeps the concatenated 2*dim channels (no reduction).
        self.decoder_level1 = stage(dim * 2, num_blocks[0], heads[0])
        self.refinement = stage(dim * 2, num_refinement_blocks, heads[0])
        if self.dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        # The head's width is the only parameter that depends on the scale (and only with pixel shuffle).
        head = self.scale ** 2 if (self.scale > 1 and self.upsampler == "pixelshuffle") else 1
        self.output = nn.Conv2d(dim * 2, out_channels * head, 3, padding=1, bias=bias)
        self.body_multiple = type(self).size_multiple  # what the U-Net needs, at the resolution it runs at
        if self.scale > 1:
            self.pad_mode = "replicate"
            if self.upsampler == "pixelshuffle":
                self.shuffle = nn.PixelShuffle(self.scale)  # no parameters: the state dict only has `output`
            else:
                # The body runs at HR: an LR side that is a multiple of m / gcd(m, s) is one of m after upsampling.
                self.size_multiple = self.body_multiple // math.gcd(self.body_multiple, self.scale)

    def _run(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            for blk in blocks:
                x = checkpoint(blk, x, use_reentrant=False)
            return x
        return blocks(x)

    def _decode(self, x_in: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The U-Net through the refinement blocks: ``(features, patch embedding)``.

        ``x_in``'s sides must be multiples of ``body_multiple``.
        """
        emb = self.patch_embed(x_in)
        e1 = self._run(self.encoder_level1, emb)
        e2 = self._run(self.encoder_level2, self.down1_2(e1))
        e3 = self._run(self.encoder_level3, self.down2_3(e2))
        lat = self._run(self.latent, self.down3_4(e3))
        d3 = self.reduce_chan_level3(torch.cat([self.up4_3(lat), e3], dim=1))
        d3 = self._run(self.decoder_level3, d3)
        d2 = self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], dim=1))
        d2 = self._run(self.decoder_level2, d2)
        d1 = self._run(self.decoder_level1, torch.cat([self.up2_1(d2), e1], dim=1))
        return self._run(self.refinement, d1), emb

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """Restore ``inp`` (B, C, H, W) -> (B, C_out, H * scale, W * scale); pads internally and crops back."""
        if inp.dim() != 4:
            raise ValueError(f"Restormer expects a (B, C, H, W) tensor, got shape {tuple(inp.shape)}")
        h, w = inp.shape[-2:]
        s = self.scale
        if s > 1:
            x_in = _replicate_pad(inp, self.size_multiple)
            if self.upsampler == "bicubic":
                x_up = _bicubic_upsample(x_in, s)  # a multiple of body_multiple: the body needs no padding
                d1, _ = self._decode(x_up)
                return (self.output(d1) + x_up)[..., :h * s, :w * s]
            d1, _ = self._decode(x_in)
            # Residual from the unpadded input: bicubic clamps at the border, equal to reading the replicate pad.
            return self.shuffle(self.output(d1))[..., :h * s, :w * s] + _bicubic_upsample(inp, s)
        x_in = pad_to_multiple(inp, self.size_multiple)
        d1, emb = self._decode(x_in)
        if self.dual_pixel_task:
            out = self.output(d1 + self.skip_conv(emb))
        else:
            out = self.output(d1) + x_in
        return out[..., :h, :w]
