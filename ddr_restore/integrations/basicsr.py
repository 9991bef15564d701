"""DDR inside an existing BasicSR project: our networks and losses in BasicSR's registries, plus a model class.

Install with the ``basicsr`` extra (see the README, "Using DDR inside an existing BasicSR project"), then import this
module before BasicSR builds anything, e.g. at the top of the project's ``train.py``::

    import ddr_restore.integrations.basicsr  # noqa: F401  (compatibility fixes + registration)
    from basicsr.train import train_pipeline

    train_pipeline(root_path=os.path.dirname(os.path.abspath(__file__)))

or train with BasicSR's own pipeline and no script at all (the experiments go under the current folder, or
``--root DIR``)::

    python -m ddr_restore.integrations.basicsr -opt options/basicsr/nafnet_ddr_basicsr.yml [--auto_resume]

What importing it does:

1. **Compatibility with PyPI basicsr 1.4.2** (the last release, 2022) on current torch/torchvision, applied here
   and only here, before basicsr is first imported. Each fix is a function below, with its reason.
2. **Registration** (:func:`register_ddr_parts`): every network of ``ddr_restore.registry.ARCH_REGISTRY`` (NAFNet,
   NAFNetLocal, Restormer) and every loss of ``LOSS_REGISTRY`` (DDRLoss, PSNRLoss, L1Loss, CharbonnierLoss,
   LPIPSLoss, ContextualLoss, ProjectedDistributionLoss, FrequencyDistributionLoss) goes into BasicSR's
   ``ARCH_REGISTRY`` / ``LOSS_REGISTRY`` under its own name; a name BasicSR already uses (its ``L1Loss`` and
   ``CharbonnierLoss``) gets the suffix ``_ddr`` instead (``type: CharbonnierLoss_ddr``), so BasicSR option files
   keep meaning what they meant. :data:`REGISTERED` lists the names used.
3. **A model class**, :class:`DDRImageRestorationModel` (``model_type: DDRImageRestorationModel``): BasicSR's
   ``SRModel`` plus a no-reference loss term ``train.ddr_opt`` (any registered loss, logged as ``l_ddr``), optimizers
   and schedulers by name (AdamW, ``TrueCosineAnnealingLR``, ...), optional gradient-norm clipping, and CPU DDP.

This is the only module of ddr_restore that imports basicsr.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import torch

__all__ = [
    "BASICSR_VERSION",
    "REGISTERED",
    "DDRImageRestorationModel",
    "apply_compat",
    "register_ddr_parts",
    "load_resume_state",
    "init_dist",
    "main",
]

#: The basicsr release these fixes were written and tested against (the extra pins it).
BASICSR_VERSION = "1.4.2"

#: Suffix given to a part whose name BasicSR already registers (BasicSR's own ``Registry.get`` convention).
CLASH_SUFFIX = "_ddr"


# ------------------------------------------------------------------------------------ compatibility (before basicsr)
def _alias_functional_tensor() -> None:
    """Provide ``torchvision.transforms.functional_tensor``, which basicsr 1.4.2 imports and torchvision removed.

    Why: ``basicsr/data/degradations.py`` does ``from torchvision.transforms.functional_tensor import
    rgb_to_grayscale`` and every ``import basicsr`` reaches it (``basicsr.data`` imports all its modules), so
    basicsr cannot be imported at all with torchvision >= 0.17. The public ``torchvision.transforms.functional.
    rgb_to_grayscale`` has the same signature; the alias holds only that function. It must exist before the first
    ``import basicsr``, including in spawned DataLoader workers, which import this module again (it is idempotent).
    """
    name = "torchvision.transforms.functional_tensor"
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        return  # an older torchvision still has it: use the real one
    from torchvision.transforms import functional

    alias = types.ModuleType(name, "ddr_restore alias for basicsr 1.4.2 (removed in torchvision 0.17)")
    alias.rgb_to_grayscale = functional.rgb_to_grayscale  # type: ignore[attr-defined]
    sys.modules[name] = alias


_alias_functional_tensor()

# basicsr is imported only now, after the alias (see above). Its NIQE module imports scipy.ndimage.filters, which
# SciPy deprecates (to be removed in SciPy 2, hence the extra's scipy<2): that one warning is silenced, as it says
# nothing a user of this module can act on.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*scipy\.ndimage\.filters.*", category=DeprecationWarning)
    import basicsr.train  # noqa: E402
import basicsr.utils.options  # noqa: E402
from basicsr.losses import build_loss  # noqa: E402
from basicsr.models import lr_scheduler as basicsr_lr_scheduler  # noqa: E402
from basicsr.models.sr_model import SRModel  # noqa: E402
from basicsr.utils import check_resume  # noqa: E402
from basicsr.utils.registry import ARCH_REGISTRY as BASICSR_ARCH_REGISTRY  # noqa: E402
from basicsr.utils.registry import LOSS_REGISTRY as BASICSR_LOSS_REGISTRY  # noqa: E402
from basicsr.utils.registry import MODEL_REGISTRY as BASICSR_MODEL_REGISTRY  # noqa: E402

from ddr_restore import registry as ddr_registry  # noqa: E402
from ddr_restore.train import schedulers as ddr_schedulers  # noqa: E402

_original_init_dist = basicsr.utils.options.init_dist


def load_resume_state(opt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Replacement for ``basicsr.train.load_resume_state``: CPU-safe and relative to the run's root.

    Why: basicsr 1.4.2 (a) maps the state onto ``torch.cuda.current_device()``, so ``--auto_resume`` and
    ``path.resume_state`` fail on a machine without CUDA ("Found no NVIDIA driver"); and (b) looks for
    ``experiments/<name>/training_states`` relative to the *current folder*, not the ``root_path`` the run writes
    to, so ``--auto_resume`` started from another folder silently starts again from iteration 0 and renames the old
    run to ``*_archived_<time>``. This version reads ``opt['path']['training_states']`` (under ``root_path``), loads
    onto the CPU unless the run uses CUDA, and loads with ``weights_only=True`` (the states hold only tensors,
    numbers and ``collections.Counter``, which torch allows).
    """
    state_path: Optional[str] = None
    if opt.get("auto_resume"):
        state_dir = opt["path"]["training_states"]
        if os.path.isdir(state_dir):
            iters = [int(f[: -len(".state")]) for f in os.listdir(state_dir)
                     if f.endswith(".state") and f[: -len(".state")].isdigit()]
            if iters:
                state_path = os.path.join(state_dir, f"{max(iters)}.state")
                opt["path"]["resume_state"] = state_path
    elif opt["path"].get("resume_state"):
        state_path = opt["path"]["resume_state"]
    if state_path is None:
        return None
    use_cuda = opt.get("num_gpu", 0) != 0 and torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    state = torch.load(state_path, map_location=device, weights_only=True)
    check_resume(opt, state["iter"])
    return state


def init_dist(launcher: str, backend: Optional[str] = None, **kwargs: Any) -> None:
    """Replacement for ``basicsr.utils.options.init_dist``: ``torchrun ... --launcher pytorch`` also on CPU.

    Why: basicsr 1.4.2 calls ``torch.cuda.set_device(rank % torch.cuda.device_count())`` (a ZeroDivisionError
    without CUDA), hard-codes the ``nccl`` backend for ``pytorch`` and forces the ``spawn`` start method, which
    re-creates DataLoader workers every epoch (2.0 s against 0.03 s of data time per iteration in a measurement on
    a tiny set). Here: with CUDA, the device is ``LOCAL_RANK`` (the GPU of this node, not the global rank) and the
    backend nccl; without CUDA, gloo and no device. The start method is left alone. ``slurm`` keeps basicsr's own
    code (CUDA only).
    """
    if launcher != "pytorch":
        _original_init_dist(launcher, **({"backend": backend} if backend else {}), **kwargs)
        return
    import torch.distributed as dist

    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        backend = backend or "nccl"
    else:
        backend = backend or "gloo"
    dist.init_process_group(backend=backend, **kwargs)


def apply_compat() -> None:
    """Install the replacements above into basicsr (idempotent; done when this module is imported).

    ``basicsr.train.train_pipeline`` and ``basicsr.utils.options.parse_options`` look these names up in their
    modules' globals at call time, so assigning the module attributes is enough. AdamW, torch's schedulers and CPU
    DDP are handled by :class:`DDRImageRestorationModel` (basicsr 1.4.2's ``BaseModel`` knows only Adam and
    wraps DDP with ``device_ids=[torch.cuda.current_device()]``).
    """
    _alias_functional_tensor()
    basicsr.train.load_resume_state = load_resume_state
    basicsr.utils.options.init_dist = init_dist


apply_compat()


# ------------------------------------------------------------------------------------------------------ the model
class DDRImageRestorationModel(SRModel):
    """BasicSR's ``SRModel`` with a no-reference loss term and the optimizers/schedulers NAFNet/Restormer use.

    Options it adds to ``train`` (everything else is ``SRModel``'s):

    * ``ddr_opt``: a loss (usually ``{type: DDRLoss, loss_weight: ...}``) added to the total and logged as
      ``l_ddr``. It is called with the restored image only, unless its class declares ``requires_target = True``.
    * ``use_grad_clip`` (default false) and ``grad_clip_norm`` (default 0.01, NAFNet's): clip the gradient norm.
    * ``optim_g.type``: any ``torch.optim`` class (AdamW, ...); ``scheduler.type``: basicsr's ``MultiStepLR``,
      ``MultiStepRestartLR``, ``CosineAnnealingRestartLR``, else ddr_restore's schedules
      (``TrueCosineAnnealingLR``, ``CosineAnnealingRestartCyclicLR``) and any ``torch.optim.lr_scheduler`` class.

    ``perceptual_opt`` may be one of our losses (which return one tensor) as well as basicsr's ``PerceptualLoss``
    (which returns a ``(percep, style)`` pair).
    """

    def init_training_settings(self) -> None:
        """Build the ``ddr_opt`` loss, then ``SRModel``'s losses, optimizer and scheduler."""
        ddr_opt = self.opt["train"].get("ddr_opt")
        self.cri_ddr = build_loss(ddr_opt).to(self.device) if ddr_opt else None
        super().init_training_settings()

    def model_to_device(self, net: torch.nn.Module) -> torch.nn.Module:
        """Move ``net`` to the device and wrap it for DDP/DataParallel; on the CPU, DDP gets no ``device_ids``.

        Why: basicsr 1.4.2 always passes ``device_ids=[torch.cuda.current_device()]``, which fails without CUDA.
        """
        from torch.nn.parallel import DataParallel, DistributedDataParallel

        net = net.to(self.device)
        if self.opt["dist"]:
            device_ids = [torch.cuda.current_device()] if self.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=device_ids,
                                          find_unused_parameters=self.opt.get("find_unused_parameters", False))
        elif self.opt["num_gpu"] > 1:
            net = DataParallel(net)
        return net

    def get_optimizer(self, optim_type: str, params: Any, lr: float, **kwargs: Any) -> torch.optim.Optimizer:
        """Any ``torch.optim`` optimizer by name. Why: basicsr 1.4.2 knows only Adam (NAFNet/Restormer use AdamW)."""
        return ddr_schedulers.optimizer_class(optim_type)(params, lr, **kwargs)

    def setup_schedulers(self) -> None:
        """basicsr's schedules by their names, else ddr_restore's and torch's (basicsr 1.4.2 knows three)."""
        cfg = dict(self.opt["train"]["scheduler"])
        name = cfg.pop("type")
        basicsr_names = {"MultiStepLR": "MultiStepRestartLR", "MultiStepRestartLR": "MultiStepRestartLR",
                         "CosineAnnealingRestartLR": "CosineAnnealingRestartLR"}
        if name in basicsr_names:
            cls = getattr(basicsr_lr_scheduler, basicsr_names[name])
        else:
            cls = ddr_schedulers.scheduler_class(name)
        for optimizer in self.optimizers:
            self.schedulers.append(cls(optimizer, **cfg))

    def optimize_parameters(self, current_iter: int) -> None:
        """One step: the pixel, perceptual and ``ddr_opt`` terms summed, backward, optional clipping, step, EMA."""
        train_opt = self.opt["train"]
        self.optimizer_g.zero_grad()
        self.output = self.net_g(self.lq)

        l_total = 0
        loss_dict: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        if self.cri_pix:
            loss_dict["l_pix"] = self.cri_pix(self.output, self.gt)
        if self.cri_perceptual:
            result = self.cri_perceptual(self.output, self.gt)
            l_percep, l_style = result if isinstance(result, tuple) else (result, None)
            if l_percep is not None:
                loss_dict["l_percep"] = l_percep
            if l_style is not None:
                loss_dict["l_style"] = l_style
        if self.cri_ddr is not None:
            # A no-reference term by default (DDRLoss declares requires_target = False).
            if getattr(self.cri_ddr, "requires_target", False):
                loss_dict["l_ddr"] = self.cri_ddr(self.output, self.gt)
            else:
                loss_dict["l_ddr"] = self.cri_ddr(self.output)
        for value in loss_dict.values():
            l_total = l_total + value
        l_total.backward()
        if train_opt.get("use_grad_clip", False):
            torch.nn.utils.clip_grad_norm_(self.net_g.parameters(), float(train_opt.get("grad_clip_norm", 0.01)))
        self.optimizer_g.step()

        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)


# --------------------------------------------------------------------------------------------------- registration
#: What :func:`register_ddr_parts` put into basicsr: ``{"arch": {our name: basicsr name}, "loss": {...},
#: "model": {...}}``. A basicsr name differs from ours only where basicsr already had the name (suffix ``_ddr``).
REGISTERED: Dict[str, Dict[str, str]] = {"arch": {}, "loss": {}, "model": {}}


def _same_part(a: Any, b: Any) -> bool:
    # The same class imported twice (e.g. this file run as __main__ and imported by name) counts as the same part.
    return a is b or (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == (
        getattr(b, "__module__", None), getattr(b, "__qualname__", None))


def _register(target: Any, kind: str, name: str, obj: Any) -> str:
    """Put ``obj`` into basicsr's registry ``target`` as ``name``, or ``name + CLASH_SUFFIX`` when basicsr's own
    part has the name; returns the name used. Registering the same part again is a no-op."""
    for candidate in (name, name + CLASH_SUFFIX):
        if candidate not in target:
            # basicsr's Registry.register() can only use obj.__name__; the name we registered may differ.
            target._do_register(candidate, obj)
            REGISTERED[kind][name] = candidate
            return candidate
        if _same_part(target.get(candidate), obj):
            REGISTERED[kind][name] = candidate
            return candidate
    raise KeyError(f"basicsr {kind} registry: both {name!r} and {name + CLASH_SUFFIX!r} are taken by other parts")


def register_ddr_parts(extra_modules: Sequence[str] = ()) -> Dict[str, Dict[str, str]]:
    """Register ddr_restore's networks, losses and :class:`DDRImageRestorationModel` into basicsr's registries.

    Called when this module is imported; call it again after importing (or listing in ``extra_modules``) modules
    that register more parts with ddr_restore's decorators, to copy those too. Idempotent. Returns
    :data:`REGISTERED`.
    """
    if extra_modules:
        from ddr_restore.plugins import import_modules

        import_modules(extra_modules, key="extra_modules")
    for name in ddr_registry.ARCH_REGISTRY.keys():
        _register(BASICSR_ARCH_REGISTRY, "arch", name, ddr_registry.ARCH_REGISTRY.get(name))
    for name in ddr_registry.LOSS_REGISTRY.keys():
        _register(BASICSR_LOSS_REGISTRY, "loss", name, ddr_registry.LOSS_REGISTRY.get(name))
    _register(BASICSR_MODEL_REGISTRY, "model", "DDRImageRestorationModel", DDRImageRestorationModel)
    return REGISTERED


if __name__ != "__main__":
    # Run as a script (python -m ...), this file's body is executed twice: as __main__ and, through the import in
    # the __main__ block, under its real name. Only the real module registers, so each part is registered once.
    register_ddr_parts()


# -------------------------------------------------------------------------------------------------- command line
def main(argv: Optional[List[str]] = None) -> None:
    """``python -m ddr_restore.integrations.basicsr -opt FILE.yml [basicsr's options] [--root DIR]``.

    Runs ``basicsr.train.train_pipeline`` with this module's fixes and parts. ``--root DIR`` (default: the current
    folder) is where basicsr writes ``experiments/`` and ``tb_logger/``; every other argument is basicsr's
    (``--auto_resume``, ``--launcher``, ``--debug``, ``--force_yml``). Relative ``dataroot_*`` paths in the option
    file are read from the current folder, as in basicsr.
    """
    import argparse

    args = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--root", default=None)
    known, rest = pre.parse_known_args(args)
    root = os.path.abspath(os.path.expanduser(known.root or os.getcwd()))
    # basicsr's parse_options reads sys.argv itself.
    sys.argv = ["python -m ddr_restore.integrations.basicsr"] + rest
    basicsr.train.train_pipeline(root)


if __name__ == "__main__":
    from ddr_restore.integrations.basicsr import main as _main  # the registered copy of this module

    _main()
