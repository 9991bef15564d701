"""The training loop: network + a catalog of loss terms, iteration-based, BasicSR experiment layout.

One iteration: take ``accumulate_grad_batches`` batches, forward the network, ``l_total`` = the sum of the loss
terms (``train.losses`` and the ``pixel_opt``/``perceptual_opt``/``ddr_opt`` aliases, see
:func:`ddr_restore.train.options.loss_terms`; each loss module already includes its ``loss_weight``), backward,
optional gradient-norm clipping, optimizer step, scheduler step, EMA update. A loss is given the target only when
its class says it needs one (``requires_target``); a term with ``loss_weight: 0`` is built but not computed (it is
logged as 0), so a lambda = 0 cell of a sweep is exactly the run without that term. Every ``print_freq``
iterations the losses (each term under its name, and ``l_total``) and lr are logged (text + TensorBoard
``losses/<name>``), every ``save_checkpoint_freq`` a checkpoint is written, every ``val_freq`` the validation sets
are evaluated.

Speed (``train.amp``, ``train.tf32``, ``train.channels_last``, ``train.compile``; see
:mod:`ddr_restore.train.options`): the forward pass and the losses run under ``torch.autocast`` (bf16 on CUDA or
the CPU, fp16 with a GradScaler on CUDA); TF32 matmuls/convolutions are switched on for the run on CUDA (and put
back afterwards); the network and each input batch are laid out ``channels_last``; the module used for the
training forward is ``torch.compile``-d (DDP included), while validation, the EMA and the checkpoints use the plain
module, so saved keys never carry ``_orig_mod.``. Adam/AdamW take the fused CUDA step unless ``train.optim_g`` sets
``fused``/``foreach``. A failing compile stops the first iteration with one ``train.compile: ...`` message. The
effective settings are logged once at the start (``precision: ...``).

No host synchronisation per iteration: the loss values stay on the device and are read (checked for NaN/inf,
averaged over ranks, logged) only at synchronisation points: every ``logger.print_freq`` iterations, before every
checkpoint save and validation, at the last iteration, and after every iteration when an ``iteration_callback``
is given (the callback needs the values). The GPU therefore runs up to ``print_freq`` iterations ahead of Python.
The guarantees of a per-iteration check are kept: a non-finite loss raises :class:`TrainingDivergedError` naming
the *first* iteration whose loss was not finite (found at the next synchronisation point, before any save, so
nothing is saved after it); under DDP the check and the Ctrl-C agreement are one all-reduce made at the same
iterations on every rank, so every rank stops together. The logged losses keep their meaning: the values of the
logged iteration (averaged over its ``accumulate_grad_batches`` micro-batches and over ranks), ``lr`` the rate
that iteration used.

Exact resume: the training state stores the optimizer, scheduler, EMA, AMP scaler, the RNG states of every rank,
the best metrics, the epoch and the number of batches consumed in it; the data order and per-sample augmentation
seeds are functions of (seed, epoch, position) (see :mod:`ddr_restore.train.sampling`). A run stopped at any
point and restarted with ``--auto_resume`` therefore repeats the uninterrupted run's losses after the resume point
(on CPU, bit for bit). Validation runs under saved-and-restored RNG states so it never shifts training randomness.

Nothing is lost, nothing is overwritten:

* A checkpoint is written *before* the validation of its iteration, so a failure while validating (an unreadable
  image, a metric error) keeps the iteration's weights and state. After validating, the state file of that
  iteration is written once more (atomically) with the updated best metrics; a state whose validation did not
  finish is marked ``val_pending`` and the validation is run first when that state is resumed.
* A resumed run whose ``train.total_iter`` is not above the checkpoint's iteration is refused before anything is
  written (it would otherwise re-save older iterations with newer weights).
* Every state stores the resolved options; on resume they are compared with the new ones (applied where sound,
  refused with the list of differing keys otherwise: see :mod:`ddr_restore.train.options`).
* Ctrl-C (SIGINT) lets the current iteration finish, writes its checkpoint and training state (atomically), logs
  the resume command and raises :class:`TrainingInterrupted`; a second Ctrl-C aborts at once (atomic writes leave
  no partial file). Under DDP the ranks agree on the stop at the next synchronisation point (at most
  ``logger.print_freq`` iterations later) and save that iteration; a single process stops after the current one.
  Stale ``*.tmp`` files of an earlier kill are removed when a run starts or resumes.
* Validation also scores the degraded input against the target (``input_metrics``), so the gain of the network is
  reported next to its output in the log, TensorBoard, :class:`TrainResult` and the before/after PNG.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import logging
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ddr_restore.errors import CheckpointError, InputError, MissingPathError, UserError
from ddr_restore.imageio import tensor2img, write_image
from ddr_restore.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY
from ddr_restore.train import checkpoint as ckpt
from ddr_restore.train.distributed import DistInfo, all_gather_object, all_reduce_sum, barrier, init_distributed
from ddr_restore.train.logger import (MetricWriter, Progress, before_after_image, close_text_logger, log_to_file_only,
                                      setup_text_logger)
from ddr_restore.train.options import (LOADER_KEYS, LossTerm, dump_options, load_options, loss_terms, plain_options,
                                       resume_changes, validate_options)
from ddr_restore.train.sampling import ResumableSampler, SeededDataset, ignore_sigint_in_worker
from ddr_restore.train.schedulers import build_optimizer, build_scheduler

__all__ = ["Trainer", "TrainResult", "TrainingDivergedError", "TrainingInterrupted", "train"]

IterationCallback = Callable[[int, Dict[str, float]], None]


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; no checkpoint was written after it."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after writing a checkpoint of the last completed iteration.

    A ``KeyboardInterrupt``, so code that catches Ctrl-C keeps working. Attributes: ``iteration`` (the saved
    iteration), ``checkpoint`` (its network file), ``state`` (its training-state file).
    """

    def __init__(self, iteration: int, checkpoint: Path, state: Path) -> None:
        super().__init__(f"training interrupted; checkpoint of iteration {iteration} saved: {checkpoint}, {state}")
        self.iteration, self.checkpoint, self.state = iteration, checkpoint, state


class _Abort(KeyboardInterrupt):
    """The second Ctrl-C: leave at once, whatever is running (atomic writes leave no partial file)."""


class _ValidationAborted(Exception):
    """Ctrl-C during a (single-process) validation: its partial results are dropped."""


class _Interrupt:
    """SIGINT handler for the loop: the first Ctrl-C asks for a stop after the current iteration, the next aborts.

    Installed only in the main thread (signals cannot be handled elsewhere). Under torchrun every worker gets the
    terminal's SIGINT and the agent forwards another at once: repeats within ``debounce_s`` count as one.
    """

    def __init__(self, debounce_s: float = 0.0, quiet: bool = False) -> None:
        self.requested = False
        self.debounce_s = debounce_s
        self.quiet = quiet  # ranks other than 0 stop just as silently as they log
        self._first: Optional[float] = None
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False

    def request(self) -> None:
        """Ask for a stop after the current iteration (what the first Ctrl-C does)."""
        self.requested = True

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = now
            self.requested = True
            if self.quiet:
                return
            sys.stderr.write("\nCtrl-C: finishing the current iteration, then saving a checkpoint "
                             "(press Ctrl-C again to abort at once, without saving)\n")
            sys.stderr.flush()
        elif now - self._first > self.debounce_s:
            raise _Abort("second Ctrl-C: aborted without saving")


@dataclass
class TrainResult:
    """Where a finished run left its outputs, and its final figures."""

    experiment_dir: Path
    checkpoint: Optional[Path]
    tb_dir: Optional[Path]
    before_after: Optional[Path]
    log_file: Optional[Path]
    final_iter: int
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    best_metrics: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    weight_hashes: List[str] = field(default_factory=list)
    #: the same metrics of the degraded input against the target, ``{set: {metric: value}}`` (sets whose inputs
    #: and targets differ in size, e.g. super-resolution, are left out)
    input_metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    #: the iteration this run started from (0, or the resumed checkpoint's)
    start_iter: int = 0


def _timestamp() -> str:
    return time.strftime("%Y%m%d_%H%M%S")


def _new_log_file(exp_dir: Path, name: str) -> Path:
    """A fresh log file name per run (a resume in the same second gets a numeric suffix, never shares a file)."""
    stem = f"train_{name}_{_timestamp()}"
    candidate, n = exp_dir / f"{stem}.log", 1
    while candidate.exists():
        candidate, n = exp_dir / f"{stem}_{n}.log", n + 1
    return candidate


def _avoid_mix_order_reduction_bug() -> None:
    """Turn off Inductor's CUDA mix-order reduction on torch < 2.14 (pytorch/pytorch#178080).

    It fuses LayerNorm2d's per-pixel and per-channel backward reductions and returns the gradient of a keepdim
    (1, C, 1, 1) parameter (NAFNet's beta/gamma) as (C,): "CompiledFunctionBackward returned an invalid gradient at
    index 13 - got [32] but expected shape compatible with [1, 32, 1, 1]". Fixed upstream (#178098, in 2.14.1).
    """
    try:
        import torch._inductor.config as inductor_config
    except ImportError:  # pragma: no cover - torch without inductor
        return
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2] if p.isdigit())
    triton_cfg = getattr(inductor_config, "triton", None)
    if version < (2, 14) and getattr(triton_cfg, "mix_order_reduction", False):
        triton_cfg.mix_order_reduction = False


def _input_at_target_size(lq_img: np.ndarray, gt_img: Optional[np.ndarray], scale: int) -> np.ndarray:
    """The degraded input as validation scores and draws it: at the target's size.

    A super-resolution input (``scale`` > 1, LR exactly ``1/scale`` of the target) is upsampled with the
    MATLAB-compatible bicubic :func:`~ddr_restore.data.imresize.imresize` (the classical SR baseline), so the
    "input" figures of an SR run are bicubic's. Any other input is returned unchanged.
    """
    if gt_img is None or scale <= 1 or lq_img.shape[:2] == gt_img.shape[:2]:
        return lq_img
    if (lq_img.shape[0] * scale, lq_img.shape[1] * scale) != gt_img.shape[:2]:
        return lq_img
    from ddr_restore.data.imresize import imresize

    return imresize(lq_img, output_shape=gt_img.shape[:2])


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


# ---------------------------------------------------------------------------------------------- speed helpers
#: the ``torch.compile`` backend of ``train.compile`` (a module attribute so that a test can swap in a backend that
#: captures the same graphs without generating code)
_COMPILE_BACKEND = "inductor"

# Python frames of the compiler stack: an exception raised inside them is a torch.compile failure, not the model's
_COMPILER_PATHS = tuple(os.sep + os.path.join("torch", part) + os.sep for part in ("_dynamo", "_inductor",
                                                                                     "_functorch", "fx"))


def _compile_failure(err: BaseException) -> bool:
    """Whether ``err`` comes from ``torch.compile`` (dynamo, AOTAutograd, inductor) rather than from the model.

    A compiled backward that returns a wrongly shaped gradient fails in the C++ autograd engine, outside any
    compiler frame; its message names ``CompiledFunction``.
    """
    if isinstance(err, torch.OutOfMemoryError):  # the model's size, not the compiler (even inside compiled code)
        return False
    if "CompiledFunction" in str(err) or type(err).__module__.startswith("torch._dynamo"):
        return True
    tb = err.__traceback__
    while tb is not None:
        if any(part in tb.tb_frame.f_code.co_filename for part in _COMPILER_PATHS):
            return True
        tb = tb.tb_next
    return False


def _contiguous_state(net: nn.Module) -> Dict[str, torch.Tensor]:
    """``net.state_dict()`` with contiguous tensors: a ``train.channels_last`` run writes the same files as any
    other (the state dict keeps its ``_metadata``)."""
    state = net.state_dict()
    for key, value in state.items():
        state[key] = value.contiguous()
    return state


def _tf32_flags() -> Tuple[bool, bool]:
    """(matmul, cuDNN convolution) TF32 switches as they are now."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # torch >= 2.9 refuses the legacy read after someone set the new fp32_precision API
        return (torch.backends.cuda.matmul.fp32_precision == "tf32",
                torch.backends.cudnn.conv.fp32_precision == "tf32")


def _set_tf32(matmul: bool, cudnn: bool) -> None:
    # The legacy switches on purpose: code that reads either these or the newer ``fp32_precision`` attributes keeps
    # working, whereas setting ``fp32_precision`` makes a later read of ``allow_tf32`` raise (torch >= 2.9).
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def _align_optimizer_state(optimizer: torch.optim.Optimizer, flags: List[Dict[str, Any]]) -> None:
    """After ``optimizer.load_state_dict``: keep this run's implementation switches and lay the state out for it.

    ``load_state_dict`` takes ``fused``/``foreach``/``capturable`` from the saved param groups, so a checkpoint of a
    CPU (unfused) run would switch the fused CUDA step off, and one of a fused run would leave its ``step`` counters
    on the GPU of an unfused run (whose step then reads them back to the host every iteration). The current run's
    switches (``flags``, one dict per group) are put back; ``step`` goes to the parameter's device (fused or
    capturable) or the CPU; moment buffers saved in another memory format (``train.channels_last`` changed) are
    copied into the parameter's layout so that the fused/foreach kernels see matching strides.
    """
    for group, keep in zip(optimizer.param_groups, flags):
        group.update(keep)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for param in group["params"]:
            state = optimizer.state.get(param)
            if not state:
                continue
            for key, value in list(state.items()):
                if not torch.is_tensor(value):
                    continue
                if key == "step":
                    target = (param.device, torch.float32) if on_device else (torch.device("cpu"), value.dtype)
                    state[key] = value.to(*target)
                elif value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float, first: bool) -> None:
    """One EMA step of a ``torch.optim.swa_utils.AveragedModel`` (``use_buffers=True``) without a host sync.

    The same arithmetic as ``AveragedModel.update_parameters`` with ``get_ema_multi_avg_fn(decay)`` (the first
    update copies, later ones ``lerp`` by ``1 - decay``; integer buffers use ``ema * decay + model * (1 - decay)``),
    but that method compares its CPU counter ``n_averaged`` and copies it to the GPU on every call: a blocking copy,
    i.e. a host synchronisation per iteration. ``first`` is tracked by the caller instead.
    """
    mine = [t.detach() for t in list(ema.module.parameters()) + list(ema.module.buffers())]
    theirs = [t.detach() for t in list(model.parameters()) + list(model.buffers())]
    if first:
        for a, b in zip(mine, theirs):
            a.copy_(b)
    else:
        groups: Dict[Tuple[torch.device, torch.dtype], Tuple[List[torch.Tensor], List[torch.Tensor]]] = {}
        for a, b in zip(mine, theirs):
            dst, src = groups.setdefault((a.device, a.dtype), ([], []))
            dst.append(a)
            src.append(b)
        for (_, dtype), (dst, src) in groups.items():
            if dtype.is_floating_point or dtype.is_complex:
                torch._foreach_lerp_(dst, src, 1 - decay)
            else:
                for a, b in zip(dst, src):
                    a.copy_(a * decay + b * (1 - decay))
    ema.n_averaged += 1  # a CPU tensor: no device work


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _build_val_metrics(metrics_opt: Mapping[str, Mapping[str, Any]], device: torch.device) -> Dict[str, Any]:
    """``val.metrics`` as catalog metrics (:mod:`ddr_restore.metrics.catalog`), loaded on ``device``.

    Built once per trainer (LPIPS and CLIP load once, not per image or per validation); each metric's direction
    (``info.better``) drives best-value tracking.
    """
    from ddr_restore.metrics.catalog import create_metric

    metrics = {}
    for name, cfg in metrics_opt.items():
        options = {k: v for k, v in cfg.items() if k != "type"}
        metric = create_metric(cfg["type"], where=f"val.metrics.{name}", **options)
        if hasattr(metric, "switch_hint"):  # Q_DDR: a missing CLIP names this option key
            metric.switch_hint = f"val.metrics.{name}.pretrained"
        metrics[name] = metric.to(device).load()
    return metrics


def _weights_hash(net: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _remove_stale_tmp(folders: List[Path]) -> List[Path]:
    """Delete ``*.tmp`` files (left by a process killed inside :func:`ckpt.atomic_save`); returns what went."""
    removed = []
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.glob("*.tmp")):
                if path.is_file():
                    path.unlink()
                    removed.append(path)
    return removed


def _format_change(key: str, old: Any, new: Any) -> str:
    return f"{key}: {old!r} -> {new!r}"


@dataclass
class _BuiltLoss:
    """A built loss term and how the loop calls it."""

    name: str  # the log name
    where: str  # the dotted option path
    module: Callable[..., torch.Tensor]
    requires_target: bool  # called as module(output, gt), else module(output)
    skipped: bool  # loss_weight 0: never called, logged as 0


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory`` takes a keyword argument called ``name`` (not merely ``**kwargs``)."""
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _call_problem(loss: Any, requires_target: bool) -> Optional[str]:
    """Why ``loss`` cannot be called the way its ``requires_target`` says (None when it can, or when unknown)."""
    try:
        sig = inspect.signature(loss.forward if isinstance(loss, nn.Module) else loss)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in sig.parameters.values() if p.kind in kinds]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values()):
        return None
    if requires_target and len(params) < 2:
        return ("it is called as loss(output, target) (requires_target is true or undeclared) but its forward takes "
                "only the output; declare requires_target = False on the class")
    if not requires_target and sum(p.default is p.empty for p in params) > 1:
        return "it declares requires_target = False (called as loss(output)) but its forward needs a target"
    return None


def _random_weights(loss: Any) -> bool:
    """True when the loss, or a module inside it, says its pretrained weights are random.

    The flag is ``pretrained_is_random``: DDRLoss and the DDR/CLIP inside it, LPIPSLoss, the VGG extractor of the
    feature losses (and their ``FrozenFeatureLoss`` base) expose it; a user's loss wrapping one of them inherits
    the warning without declaring anything.
    """
    parts = loss.modules() if isinstance(loss, nn.Module) else (loss,)
    for part in parts:
        flag = getattr(part, "pretrained_is_random", False)
        if isinstance(flag, (bool, np.bool_)) and flag:
            return True
    return False


class Trainer:
    """Builds everything from resolved options and runs the loop; see :func:`train` for the arguments."""

    def __init__(
        self,
        opt: Mapping[str, Any],
        auto_resume: bool = False,
        launcher: str = "none",
        command_line: Optional[str] = None,
        options_name: Optional[str] = None,
        iteration_callback: Optional[IterationCallback] = None,
    ) -> None:
        self.opt = validate_options(opt)
        self.auto_resume = auto_resume
        self.launcher = launcher
        self.command_line = command_line
        self.options_name = options_name or self.opt["name"]
        self.callback = iteration_callback
        self.logger = logging.getLogger("ddr_restore.train")

    # ------------------------------------------------------------------------------------------------ set-up
    def _paths(self) -> None:
        self.exp_dir = Path(self.opt["path"]["experiments_root"]) / self.opt["name"]
        self.models_dir = self.exp_dir / "models"
        self.states_dir = self.exp_dir / "training_states"
        self.vis_dir = self.exp_dir / "visualization"
        self.tb_dir = self.exp_dir / "tb_logger"

    def _find_resume(self) -> Optional[Tuple[int, Path, Path, Mapping[str, Any]]]:
        """(iter, state file, network file, state) to resume from, or None for a fresh run."""
        explicit = self.opt["path"].get("resume_state")
        if explicit:
            state_path = Path(explicit)
            state = ckpt.safe_load(state_path)
            if not isinstance(state, Mapping) or "iter" not in state:
                raise CheckpointError(f"path.resume_state {state_path}: not a training state (no 'iter' entry)")
            iteration = int(state["iter"])
            net_path = state_path.parent.parent / "models" / f"net_g_{iteration}.pth"
            if not net_path.is_file():
                raise MissingPathError(f"path.resume_state {state_path}: the matching network file {net_path} is "
                                       "missing")
            return iteration, state_path, net_path, state
        if self.auto_resume:
            found = ckpt.find_latest_state(self.states_dir, self.models_dir)
            if found is not None:
                return found[0], found[1], self.models_dir / f"net_g_{found[0]}.pth", ckpt.safe_load(found[1])
        return None

    def _saved_options(self, state_path: Path, state: Mapping[str, Any]) -> Tuple[Optional[Mapping[str, Any]], str]:
        """The options the checkpoint was trained with and where they come from (state, else the copied yml)."""
        if isinstance(state.get("options"), Mapping):
            return state["options"], "as saved in that state"
        exp_dir = state_path.parent.parent
        preferred = exp_dir / f"{Path(self.options_name).stem}.yml"
        ymls = [preferred] if preferred.is_file() else sorted(exp_dir.glob("*.yml"))
        if len(ymls) != 1:
            return None, ""
        try:
            return load_options(ymls[0]), f"as copied to {ymls[0]} when that run started"
        except InputError:
            return None, ""

    def _check_resume(self, resume: Tuple[int, Path, Path, Mapping[str, Any]]) -> None:
        """Before anything is written: compare options with the checkpoint's, refuse a total_iter not above it."""
        iteration, state_path, net_path, state = resume
        how = "path.resume_state" if self.opt["path"].get("resume_state") else "--auto_resume"
        saved, source = self._saved_options(state_path, state)
        self._applied_changes: List[Tuple[str, Any, Any]] = []
        if saved is None:
            self._notes.append(f"WARNING resume: no saved options found next to {state_path}; option changes since "
                               "that run cannot be checked")
        else:
            applied, refused = resume_changes(saved, self.opt)
            if refused:
                lines = "\n  ".join(_format_change(*c) for c in refused)
                copied = sorted(state_path.parent.parent.glob("*.yml"))
                where = (f"the option file {copied[0]}" if len(copied) == 1
                         else f"the option file in {state_path.parent.parent}")
                raise InputError(
                    f"{how}: these options differ from the ones checkpoint {state_path} (iteration {iteration}) was "
                    f"trained with ({source}) and cannot change in a resumed run:\n  {lines}\nResume with the "
                    f"options it was trained with ({where}), or start a new experiment (another name; "
                    f"path.pretrain_network_g: {net_path} to start from these weights)."
                )
            self._applied_changes = applied
            if self.opt.get("manual_seed") is None and saved.get("manual_seed") is not None:
                self.opt["manual_seed"] = int(saved["manual_seed"])
                self._notes.append(f"manual_seed: null -> the checkpoint's seed {saved['manual_seed']}")
        total = int(self.opt["train"]["total_iter"])
        if total <= iteration:
            relation = "equal to" if total == iteration else "below"
            again = ("without path.resume_state" if how == "path.resume_state" else "without --auto_resume")
            raise InputError(
                f"{how}: train.total_iter={total} is {relation} the iteration of checkpoint {state_path} "
                f"({iteration}): there is nothing to train and nothing was written. To train further, set "
                f"train.total_iter above {iteration} (e.g. --set train.total_iter={max(2 * iteration, 1)}); "
                f"the weights of iteration {iteration} are in {net_path}; to start again from scratch, run {again} "
                "(the experiment folder is archived first)."
            )

    def _prepare_folder(self, resuming: bool) -> None:
        if self.dist.is_main:
            if not resuming and self.exp_dir.exists():
                target = self.exp_dir.with_name(f"{self.exp_dir.name}_archived_{_timestamp()}")
                n = 1
                while target.exists():  # two fresh starts within one second: never overwrite an archive
                    target = self.exp_dir.with_name(f"{self.exp_dir.name}_archived_{_timestamp()}_{n}")
                    n += 1
                os.replace(self.exp_dir, target)
                self._archived = target
            for d in (self.models_dir, self.states_dir, self.vis_dir):
                d.mkdir(parents=True, exist_ok=True)
        barrier()

    def _build_dataset(self, phase: str, cfg: Mapping[str, Any]) -> Any:
        kwargs = {k: v for k, v in cfg.items() if k not in LOADER_KEYS}
        cls = DATASET_REGISTRY.get(kwargs.get("type", ""))
        if "scale" not in kwargs and "scale" in inspect.signature(cls).parameters:
            kwargs["scale"] = self.opt["scale"]  # BasicSR copies the top-level scale into every dataset
        try:
            return DATASET_REGISTRY.build(kwargs, where=f"datasets.{phase}",
                                          phase="train" if phase == "train" else "val")
        except UserError as err:
            if str(err).startswith("datasets."):
                raise
            try:  # say which dataset option the message is about
                prefixed = type(err)(f"datasets.{phase}: {err}")
            except Exception:  # a subclass with another constructor: keep it as it is
                raise err from None
            raise prefixed from err
        except FileNotFoundError as err:  # a dataset reads the user's folders: these are the user's to fix
            raise MissingPathError(f"datasets.{phase}: {err}") from err
        except (ValueError, OSError) as err:
            raise InputError(f"datasets.{phase}: {err}") from err

    def _build_train_loader(self) -> None:
        cfg = self.opt["datasets"]["train"]
        self.train_set = self._build_dataset("train", cfg)
        self.batch_size = cfg["batch_size_per_gpu"]
        self.sampler = ResumableSampler(
            len(self.train_set), self.seed, self.dist.rank, self.dist.world_size,
            enlarge_ratio=cfg["dataset_enlarge_ratio"], shuffle=cfg["use_shuffle"],
        )
        self.batches_per_epoch = self.sampler.num_samples // self.batch_size
        if self.batches_per_epoch == 0:
            raise InputError(
                f"datasets.train: {self.sampler.num_samples} samples per process is less than batch_size_per_gpu "
                f"{self.batch_size}; use a larger dataset_enlarge_ratio or a smaller batch"
            )
        workers = cfg["num_worker_per_gpu"]
        if cfg.get("prefetch_mode"):
            self._notes.append(f"datasets.train.prefetch_mode={cfg['prefetch_mode']} is ignored: pin_memory + "
                               "non_blocking copies are used")
        self.train_loader = DataLoader(
            SeededDataset(self.train_set),
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            drop_last=True,
            pin_memory=cfg["pin_memory"] and self.dist.device.type == "cuda",
            persistent_workers=cfg["persistent_workers"] and workers > 0,
            # Own generator: creating an iterator must not draw from the global torch RNG (exact resume).
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=ignore_sigint_in_worker if workers > 0 else None,
        )
        prog = [cfg.get(k) for k in ("mini_batch_sizes", "gt_sizes", "iters")]
        self.progressive = prog if prog[0] is not None else None

    def _build_val_sets(self) -> None:
        self.val_sets: List[Tuple[str, str, Any]] = []
        for phase, cfg in self.opt["datasets"].items():
            if phase.startswith("val"):
                ds = self._build_dataset(phase, cfg)
                self.val_sets.append((phase, cfg.get("name") or phase, ds))

    def _build_model(self, resume: Optional[Tuple[int, Path, Path]]) -> None:
        device = self.dist.device
        net = ARCH_REGISTRY.build(self.opt["network_g"], where="network_g")
        path_opt = self.opt["path"]
        if resume is not None:
            ckpt.load_network(net, resume[2], "params", strict=True, options_file=self.options_name)
        elif path_opt.get("pretrain_network_g"):
            missing, unexpected = ckpt.load_network(
                net, path_opt["pretrain_network_g"], path_opt["param_key_g"], strict=path_opt["strict_load_g"],
                options_file=self.options_name,
            )
            self._notes.append(f"loaded {path_opt['pretrain_network_g']} [{path_opt['param_key_g']}] "
                               f"(missing keys: {len(missing)}, unexpected: {len(unexpected)})")
        net = net.to(device)
        n_params = sum(p.numel() for p in net.parameters())
        self._notes.append(f"network_g: {type(net).__name__}, {n_params / 1e6:.3f} M parameters")
        self.channels_last = bool(self.opt["train"]["channels_last"])
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)  # 4-D weights only; EMA and optimizer state follow

        train_opt = self.opt["train"]
        self.losses = [self._build_loss(term, device) for term in loss_terms(train_opt)]
        if all(loss.skipped for loss in self.losses):
            raise InputError("train: every loss term has loss_weight 0 (" + ", ".join(t.where for t in self.losses)
                             + "): there is nothing to train")
        self._notes.append("loss terms (l_total = their sum): " + ", ".join(
            f"{t.name} = {type(t.module).__name__} ({t.where}; {'output, target' if t.requires_target else 'output'})"
            for t in self.losses))

        if self.dist.distributed:
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=self.opt["find_unused_parameters"],
            )  # the constructor broadcasts rank 0's weights, so the EMA below starts equal on every rank
        self.net = net  # validation, checkpoints and EMA use this one (never the compiled wrapper)

        self.ema = None
        self.ema_decay = float(train_opt.get("ema_decay") or 0.0)
        self._ema_first = True
        if self.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(_unwrap(net), multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay),
                                     use_buffers=True)
            self.ema.requires_grad_(False)

        params = [p for p in net.parameters() if p.requires_grad]
        optim_cfg = dict(train_opt["optim_g"])
        if (device.type == "cuda" and optim_cfg["type"] in ("Adam", "AdamW") and "fused" not in optim_cfg
                and "foreach" not in optim_cfg and params and all(p.is_cuda and p.is_floating_point() for p in params)):
            optim_cfg["fused"] = True  # one kernel for the whole step instead of a dozen per parameter group
        self.optimizer = build_optimizer(params, optim_cfg)
        self._optim_flags = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g}
                             for g in self.optimizer.param_groups]
        self.scheduler = build_scheduler(self.optimizer, train_opt.get("scheduler"), train_opt["warmup_iter"])

        amp = train_opt.get("amp") or None
        self.amp_dtype = None
        self.scaler = None
        if amp == "fp16" and device.type != "cuda":
            self._notes.append("WARNING train.amp=fp16 ignored on the CPU (fp16 arithmetic is emulated there, slower "
                               "than fp32): training in fp32; use train.amp: bf16 for mixed precision on the CPU")
        elif amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise InputError(f"train.amp: bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 "
                             "(with a GradScaler) or false")
        elif amp:
            self.amp_dtype = torch.bfloat16 if amp == "bf16" else torch.float16
            if amp == "fp16":
                self.scaler = torch.amp.GradScaler("cuda")

        self._train_net: Callable[[torch.Tensor], torch.Tensor] = net
        self.compile_mode: Optional[str] = None
        compile_opt = train_opt["compile"]
        if compile_opt is not False:
            self.compile_mode = "default" if compile_opt is True else str(compile_opt)
            # Compiling is lazy: the graphs are built (and a failure shows) in the first iteration, see _train_step.
            # DDP is compiled whole so that dynamo splits the graph at its gradient buckets (DDPOptimizer).
            _avoid_mix_order_reduction_bug()
            self._train_net = torch.compile(net, mode=None if self.compile_mode == "default" else self.compile_mode,
                                            backend=_COMPILE_BACKEND)
        self._notes.append(self._speed_summary(device))

    def _speed_summary(self, device: torch.device) -> str:
        """One line with the effective precision and speed settings (logged once at the start)."""
        if device.type == "cuda":
            matmul, conv = _tf32_flags()
            tf32 = (f"TF32 matmul {'on' if matmul else 'off'}, TF32 convolutions {'on' if conv else 'off'} "
                    f"(train.tf32: {str(self.opt['train']['tf32']).lower()})")
        else:
            tf32 = "train.tf32 has no effect on the CPU"
        amp = {None: "fp32 (no autocast)", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}
        group = self.optimizer.param_groups[0]
        impl = "fused" if group.get("fused") else "foreach" if group.get("foreach") else "default implementation"
        return (f"precision: {amp[self.amp_dtype]}, {tf32}; memory format: "
                f"{'channels_last' if self.channels_last else 'contiguous'}; torch.compile: "
                f"{self.compile_mode or 'off'}; optimizer: {type(self.optimizer).__name__} ({impl})")

    def _build_loss(self, term: LossTerm, device: torch.device) -> _BuiltLoss:
        """Build one loss term on ``device`` (a module of its own: DDP never wraps or syncs a frozen CLIP/VGG).

        Whether the loss gets the target is what its class declares (``requires_target``; an undeclared class
        keeps its alias's historical call, see :class:`~ddr_restore.train.options.LossTerm`). A loss whose
        constructor takes ``switch_hint`` (DDRLoss) is told the option that sets its weights, ``<where>.pretrained``,
        so that a "weights unavailable" message names the key the user wrote.
        """
        kind = term.cfg["type"]
        factory = LOSS_REGISTRY.get(kind)
        extra = {}
        if "switch_hint" not in term.cfg and _accepts(factory, "switch_hint"):
            extra["switch_hint"] = f"{term.where}.pretrained"
        module = LOSS_REGISTRY.build(term.cfg, where=term.where, **extra)
        if isinstance(module, nn.Module):
            module = module.to(device).eval()
        requires_target = bool(getattr(module, "requires_target", term.target_default))
        problem = _call_problem(module, requires_target)
        if problem:
            raise InputError(f"{term.where} ({kind}): {problem}")
        weight = getattr(module, "loss_weight", term.cfg.get("loss_weight"))
        skipped = isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight == 0
        if skipped:
            self._notes.append(f"{term.where} ({kind}): loss_weight 0, {term.name} is not computed (logged as 0)")
        elif _random_weights(module):
            self._notes.append(f"WARNING {term.where} ({kind}): its pretrained network is RANDOMLY initialised "
                               f"(pretrained: none); {term.name} is a plumbing check, not the {kind} objective")
        return _BuiltLoss(term.name, term.where, module, requires_target, skipped)

    def _restore(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        _align_optimizer_state(self.optimizer, self._optim_flags)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise InputError("the training state has no EMA but train.ema_decay is set; resume with the options "
                                 "the checkpoint was trained with")
            self.ema.load_state_dict(state["ema"])
            self._ema_first = int(self.ema.n_averaged) == 0
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best = copy.deepcopy(state.get("best_metrics") or {})
        self._drop_stale_best()
        self._val_pending = bool(state.get("val_pending"))
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.current_iter = int(state["iter"])
        rngs = state.get("rng") or []
        if len(rngs) == self.dist.world_size:
            ckpt.set_rng_state(rngs[self.dist.rank])
        else:
            self.logger.warning("training state saved with %d processes, resuming with %d: RNG states not restored "
                                "(the run continues but is not bit-identical)", len(rngs), self.dist.world_size)

    def _drop_stale_best(self) -> None:
        """Forget best values of validation sets / metrics whose options changed on resume (not comparable)."""
        labels, metrics = set(), set()
        for key, old, new in getattr(self, "_applied_changes", []):
            parts = key.split(".")
            if parts[0] == "datasets" and len(parts) > 1 and parts[1].startswith("val"):
                labels.add(parts[1])  # a set's best values are filed under its name (default: the phase)
                cfg = self.opt["datasets"].get(parts[1])
                if isinstance(cfg, Mapping) and cfg.get("name"):
                    labels.add(cfg["name"])
                if parts[2:] == ["name"]:
                    labels.update(v for v in (old, new) if isinstance(v, str))
            elif parts[:2] == ["val", "metrics"] and len(parts) > 2:
                metrics.add(parts[2])
        for label in list(self.best):
            if label in labels:
                del self.best[label]
                continue
            for name in metrics & set(self.best[label]):
                del self.best[label][name]

    # ------------------------------------------------------------------------------------------------ loop parts
    def _next_batch(self) -> Dict[str, Any]:
        while True:
            if self._iter is None:
                self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.batch_size)
                self._iter = iter(self.train_loader)
            try:
                batch = next(self._iter)
            except StopIteration:
                self.epoch += 1
                self.batch_in_epoch = 0
                self._iter = None
                continue
            self.batch_in_epoch += 1
            return batch

    def _progressive(self, lq: torch.Tensor, gt: torch.Tensor, iteration: int) -> Tuple[torch.Tensor, torch.Tensor]:
        from ddr_restore.data.transforms import progressive_crop, progressive_stage

        mini_batch_sizes, gt_sizes, iters = self.progressive
        batch, size = progressive_stage(iteration, iters, mini_batch_sizes, gt_sizes)
        g = torch.Generator().manual_seed(self.seed * 1000003 + iteration * 97 + self.dist.rank)
        return progressive_crop(lq, gt, batch, size, generator=g, scale=int(self.opt.get("scale") or 1))

    def _losses(self, out: torch.Tensor, gt: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{term name: weighted loss}`` in the order of :func:`loss_terms` (the order they are summed in)."""
        terms: Dict[str, torch.Tensor] = {}
        for loss in self.losses:
            if loss.skipped:
                terms[loss.name] = out.new_zeros(())
            else:
                terms[loss.name] = loss.module(out, gt) if loss.requires_target else loss.module(out)
        return terms

    def _train_step(self, iteration: int) -> None:
        """One optimizer step; its loss values stay on the device until the next :meth:`_sync` (no host sync)."""
        try:
            self._step(iteration)
        except (KeyboardInterrupt, UserError, TrainingDivergedError):
            raise
        except Exception as err:
            if self.compile_mode is None or not _compile_failure(err):
                raise
            root = err  # dynamo wraps a backend's exception (BackendCompilerFailed): name the original one
            while (getattr(root, "inner_exception", None) or root.__cause__) is not None:
                root = getattr(root, "inner_exception", None) or root.__cause__
            first = (str(root).strip().splitlines() or [""])[0]
            raise InputError(
                f"train.compile: torch.compile ({self.compile_mode}) of {type(_unwrap(self.net)).__name__} failed "
                f"in iteration {iteration}: {type(root).__name__}: {first[:300]} -- train without it "
                "(--set train.compile=false); the full traceback is in the log file"
            ) from err

    def _step(self, iteration: int) -> None:
        train_opt = self.opt["train"]
        accum = train_opt["accumulate_grad_batches"]
        device = self.dist.device
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.compile_mode is not None and device.type == "cuda":
            # reduce-overhead / max-autotune replay CUDA graphs: one training step per graph generation
            torch.compiler.cudagraph_mark_step_begin()
        row: Optional[torch.Tensor] = None
        for micro in range(accum):
            batch = self._next_batch()
            lq = batch["lq"].to(device, non_blocking=True)
            gt = batch["gt"].to(device, non_blocking=True)
            if self.progressive is not None:
                lq, gt = self._progressive(lq, gt, iteration)
            if self.channels_last:
                lq = lq.contiguous(memory_format=torch.channels_last)
                gt = gt.contiguous(memory_format=torch.channels_last)
            sync = contextlib.nullcontext()
            if self.dist.distributed and micro < accum - 1:
                sync = self.net.no_sync()  # gradients are all-reduced once, on the last micro-batch
            with sync:
                autocast = (torch.autocast(device_type=device.type, dtype=self.amp_dtype) if self.amp_dtype
                            else contextlib.nullcontext())
                with autocast:
                    out = self._train_net(lq)
                    terms = self._losses(out, gt)
                total = sum(terms.values())
                terms["l_total"] = total
                self._term_names = list(terms)
                # The values stay on the device (float64, like the host sums they replace); they are read, checked
                # for NaN/inf and averaged over ranks at the next synchronisation point, not here.
                values = torch.stack([t.detach().reshape(()) for t in terms.values()]).to(torch.float64)
                values = values / accum if accum > 1 else values
                row = values if row is None else row + values
                loss = total / accum
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if train_opt["use_grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), float(train_opt["grad_clip_norm"]))
        lr = self.optimizer.param_groups[0]["lr"]  # the lr this iteration used
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            _ema_update(self.ema, _unwrap(self.net), self.ema_decay, self._ema_first)
            self._ema_first = False
        assert row is not None  # accumulate_grad_batches >= 1 (validated)
        self._pending.append((iteration, float(lr), row))

    def _sync(self, iteration: int) -> Dict[str, float]:
        """Read the loss values of the iterations since the last call: the loop's only host synchronisation.

        Called at ``logger.print_freq``, before every checkpoint save and validation, at the last iteration, and
        after every iteration when an ``iteration_callback`` is set. Under DDP one all-reduce averages the values
        over ranks and carries the Ctrl-C requests, so every rank makes the same decision at the same iteration
        (the calls happen at the same iterations on every rank). Raises :class:`TrainingDivergedError` naming the
        first iteration whose (rank-averaged) loss is not finite; since every save calls this first, nothing is
        saved after such an iteration. Returns the logs of the last iteration: ``{term: value, "l_total", "lr"}``.
        """
        if self._synced_at == iteration:
            return self._logs
        pending, self._pending = self._pending, []
        n = len(self._term_names)
        device = self.dist.device
        if pending:
            block = torch.stack([values for _, _, values in pending])
        else:
            block = torch.zeros((0, n), dtype=torch.float64, device=device)
        if self.dist.distributed:
            requested = torch.tensor([float(self._interrupt.requested)], dtype=torch.float64, device=device)
            flat = torch.cat([block.reshape(-1), requested])
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            host = flat.tolist()
            self._stop_agreed = host.pop() > 0
            rows = [[v / self.dist.world_size for v in host[i * n:(i + 1) * n]] for i in range(len(pending))]
        else:
            rows = block.tolist()
        for (it, _, _), values in zip(pending, rows):
            if not all(np.isfinite(values)):
                detail = ", ".join(f"{k}={v}" for k, v in zip(self._term_names, values))
                found = f" (found at iteration {iteration})" if it != iteration else ""
                raise TrainingDivergedError(
                    f"iteration {it}: non-finite loss ({detail}){found}; training stopped. The last checkpoint "
                    f"({self._last_saved or 'none'}) is intact: nothing was saved after this iteration."
                )
        self._synced_at = iteration
        if pending:
            self._logs = {**dict(zip(self._term_names, rows[-1])), "lr": pending[-1][1]}
        return self._logs

    def _save(self, iteration: int) -> None:
        self._sync(iteration)  # raises if a loss since the last check was NaN/inf: nothing is saved after it
        rngs = all_gather_object(ckpt.rng_state())
        self._last_state = None
        if self.dist.is_main:
            payload = {"params": _contiguous_state(_unwrap(self.net))}
            if self.ema is not None:
                payload["params_ema"] = _contiguous_state(self.ema.module)
            ckpt.atomic_save(payload, self.models_dir / f"net_g_{iteration}.pth")
            ckpt.atomic_save(payload, self.models_dir / "net_g_latest.pth")
            state = {
                "iter": iteration,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "world_size": self.dist.world_size,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rngs,
                "best_metrics": copy.deepcopy(self.best),
                "val_pending": self._val_due(iteration),
                "options": plain_options(self.opt),
            }
            # Written last: its presence marks the checkpoint of this iteration as complete.
            ckpt.atomic_save(state, self.states_dir / f"{iteration}.state")
            self._last_state = state
            self.logger.info("saved checkpoint: %s, %s", self.models_dir / f"net_g_{iteration}.pth",
                             self.states_dir / f"{iteration}.state")
        self._last_saved = str(self.models_dir / f"net_g_{iteration}.pth")
        self._saved_at = iteration
        barrier()

    def _val_due(self, iteration: int) -> bool:
        return self._val_freq > 0 and (iteration % self._val_freq == 0 or iteration == self._total_iter)

    def _validate_at(self, iteration: int) -> Dict[str, Dict[str, float]]:
        """Validate; when this iteration's checkpoint is already on disk, store the new best metrics in its state.

        The state is rewritten (atomically) from the dict saved a moment ago: validation changes neither the
        weights, the optimizer nor the RNG states, so it is the same state plus the metrics. Keeping a separate
        metrics file instead would let a resumed run pair a state with another run's records.
        """
        results = self.validate(iteration)
        if self._saved_at == iteration:
            if self.dist.is_main and self._last_state is not None and self._last_state["iter"] == iteration:
                self._last_state["best_metrics"] = copy.deepcopy(self.best)
                self._last_state["val_pending"] = False
                ckpt.atomic_save(self._last_state, self.states_dir / f"{iteration}.state")
            barrier()
        self._last_state = None
        return results

    @torch.no_grad()
    def validate(self, iteration: int) -> Dict[str, Dict[str, float]]:
        """Evaluate every validation set (sharded over ranks, sums all-reduced); returns {set: {metric: value}}.

        The degraded inputs are scored against the targets too, once per run (``self.input_metrics``), and the
        first image of the first set is drawn as the before/after PNG (full images and a zoomed detailed crop).
        """
        val_opt = self.opt.get("val") or {}
        metrics_opt = val_opt.get("metrics") or {}
        model = self.ema.module if self.ema is not None else _unwrap(self.net)
        was_training = model.training
        model.eval()
        results: Dict[str, Dict[str, float]] = {}
        rng = ckpt.rng_state()  # validation must not shift the training randomness
        device = self.dist.device
        max_save = val_opt.get("max_save_images", 4)
        names = list(metrics_opt)
        if getattr(self, "_val_metrics", None) is None:
            self._val_metrics = _build_val_metrics(metrics_opt, device)
        if not getattr(self, "_val_caveats_logged", False):
            self._val_caveats_logged = True
            for name, metric in self._val_metrics.items():
                for note in metric.caveats():
                    self.logger.warning("val.metrics.%s: %s", name, note)
        metrics = [self._val_metrics[n] for n in names]
        needs_gt = [n for n, m in zip(names, metrics) if m.info.needs_reference]
        try:
            for set_idx, (phase, label, ds) in enumerate(self.val_sets):
                need_input = label not in self.input_metrics
                sums = [0.0] * len(names)
                input_sums = [0.0] * len(names)
                count = input_count = 0
                for i in range(self.dist.rank, len(ds), self.dist.world_size):
                    if self._interrupt.requested and not self.dist.distributed:
                        raise _ValidationAborted()
                    item = ds[i]
                    lq = item["lq"].unsqueeze(0).to(device)
                    out = model(lq)
                    out_img = tensor2img(out)
                    gt_img = tensor2img(item["gt"]) if "gt" in item else None
                    if needs_gt and gt_img is None:
                        raise InputError(f"val.metrics.{needs_gt[0]}: compares with a target, but datasets.{phase} "
                                         "items have no 'gt' image (use a no-reference metric such as q_ddr)")
                    lq_img = _input_at_target_size(tensor2img(item["lq"]), gt_img, int(self.opt.get("scale") or 1))
                    same_size = gt_img is not None and lq_img.shape == gt_img.shape
                    scores, in_scores = [], []
                    for j, metric in enumerate(metrics):
                        ref = gt_img if metric.info.needs_reference else None
                        scores.append(metric(out_img, ref))
                        sums[j] += scores[-1]
                        if need_input and same_size:
                            in_scores.append(metric(lq_img, ref))
                            input_sums[j] += in_scores[-1]
                    count += 1
                    input_count += int(same_size)
                    if i < max_save:
                        stem = Path(str(item.get("lq_path", f"{i:04d}"))).stem
                        panels = [lq_img, out_img] + ([gt_img] if gt_img is not None else [])
                        labels = self._panel_labels(names, scores, in_scores or self._cached_input(label, i))
                        figure = before_after_image(panels, labels)
                        if val_opt.get("save_img"):
                            suffix = val_opt.get("suffix") or str(iteration)
                            write_image(self.vis_dir / stem / f"{stem}_{suffix}.png", out_img)
                        self.writer.image(f"val_{label}/{stem}", figure, iteration)
                        if set_idx == 0 and i == 0:
                            self.before_after = write_image(self.vis_dir / "before_after.png", figure)
                        if in_scores:
                            self._input_per_image[(label, i)] = in_scores
                totals = all_reduce_sum(sums + input_sums + [float(count), float(input_count)], device)
                n = max(totals[-2], 1.0)
                results[label] = {name: totals[j] / n for j, name in enumerate(names)}
                if need_input and names and totals[-1] == totals[-2] and totals[-2] > 0:
                    self.input_metrics[label] = {name: totals[len(names) + j] / n for j, name in enumerate(names)}
                elif need_input:
                    self.input_metrics[label] = {}  # inputs and targets differ in size (or no metric): not scored
        finally:
            ckpt.set_rng_state(rng)
            model.train(was_training)
        self._record(results, iteration)
        return results

    def _cached_input(self, label: str, index: int) -> List[float]:
        return self._input_per_image.get((label, index), [])

    def _panel_labels(self, names: List[str], scores: List[float], in_scores: List[float]) -> List[str]:
        """Corner labels of the before/after panels: the first metric of input and output, and the target.

        For super-resolution (``scale`` > 1) the input panel is the bicubic upsampling of the LR input.
        """
        first_label = "bicubic" if int(self.opt.get("scale") or 1) > 1 else "input"
        if not names or not scores:
            return [first_label, "restored", "target"]
        unit = " dB" if "psnr" in names[0].lower() else ""
        first = f"{names[0]} "
        return [f"{first_label} {first}{in_scores[0]:.2f}{unit}" if in_scores else first_label,
                f"restored {first}{scores[0]:.2f}{unit}", "target"]

    def _record(self, results: Dict[str, Dict[str, float]], iteration: int) -> None:
        """Update the best values (in each metric's catalog direction), log and write the scalars."""
        for label, values in results.items():
            parts = []
            inputs = self.input_metrics.get(label) or {}
            for name, value in values.items():
                info = self._val_metrics[name].info
                best = self.best.setdefault(label, {}).get(name)
                if info.is_better(value, None if best is None else best["val"]):
                    self.best[label][name] = {"val": value, "iter": iteration}
                b = self.best[label][name]
                vs_input = ""
                if name in inputs:
                    unit = f" {info.unit}" if info.unit else ""
                    vs_input = f"input {inputs[name]:.4f}, {value - inputs[name]:+.4f}{unit}; "
                    self.writer.scalars({f"metrics/{label}/{name}_input": inputs[name]}, iteration)
                parts.append(f"{name}: {value:.4f} ({vs_input}best {b['val']:.4f} @ iter {b['iter']})")
                self.writer.scalars({f"metrics/{label}/{name}": value}, iteration)
            self.logger.info("validation %s @ iter %d: %s", label, iteration, ", ".join(parts) or "no metrics")

    # ------------------------------------------------------------------------------------------------ main
    def run(self) -> TrainResult:
        """Train to ``train.total_iter`` (resuming if asked) and return where the outputs are.

        Raises:
            InputError (and other :class:`ddr_restore.errors.UserError`): bad data, options or checkpoints, found
                before anything is written where possible.
            TrainingInterrupted: Ctrl-C; the last completed iteration was saved.
            TrainingDivergedError: a loss became NaN/inf.
        """
        opt = self.opt
        self.dist: DistInfo = init_distributed(self.launcher, opt["num_gpu"])
        tf32_before = _tf32_flags()  # process-wide switches: put back when the run ends
        self._paths()
        self._archived: Optional[Path] = None
        self._last_saved: Optional[str] = None
        self._last_state: Optional[Dict[str, Any]] = None
        self._saved_at = -1
        self._val_pending = False
        self._stop_agreed = False
        self._pending: List[Tuple[int, float, torch.Tensor]] = []  # (iteration, lr, loss values on the device)
        self._term_names: List[str] = []
        self._synced_at = -1
        self._logs: Dict[str, float] = {}
        self._interrupt = _Interrupt(debounce_s=1.0 if self.dist.distributed else 0.0, quiet=not self.dist.is_main)
        self.before_after: Optional[Path] = None
        self.best: Dict[str, Dict[str, Dict[str, float]]] = {}
        self.input_metrics: Dict[str, Dict[str, float]] = {}
        self._input_per_image: Dict[Tuple[str, int], List[float]] = {}
        self.epoch, self.batch_in_epoch, self.current_iter = 0, 0, 0
        self.start_iter = 0
        self._iter = None
        self.writer = MetricWriter(None, enabled=False)
        log_file: Optional[Path] = None
        self._notes: List[str] = []
        self.logger = setup_text_logger(None, is_main=self.dist.is_main)
        try:
            if self.dist.device.type == "cuda":
                _set_tf32(bool(opt["train"]["tf32"]), bool(opt["train"]["tf32"]))
            # Everything that can be refused is checked before the experiment folder is touched.
            resume = self._find_resume()
            if resume is not None:
                self._check_resume(resume)
            seed = opt.get("manual_seed")
            if seed is None:
                seed = all_gather_object(random.randrange(2**31))[0]  # rank 0's draw, shared
                opt["manual_seed"] = seed
            self.seed = int(seed)
            _set_seed(self.seed)  # identical model init on every rank
            self._build_train_loader()
            self._build_val_sets()
            self._build_model(resume)
            if self.val_sets and (opt.get("val") or {}).get("metrics"):
                # LPIPS / CLIP weights of val.metrics load now: a missing file stops the run before anything is written
                self._val_metrics = _build_val_metrics(opt["val"]["metrics"], self.dist.device)

            self._prepare_folder(resuming=resume is not None)
            log_file = _new_log_file(self.exp_dir, opt["name"]) if self.dist.is_main else None
            self.logger = setup_text_logger(log_file, is_main=self.dist.is_main)
            if self._archived is not None:
                self.logger.info("existing experiment folder archived to %s", self._archived)
            if self.dist.is_main:
                for path in _remove_stale_tmp([self.models_dir, self.states_dir]):
                    self.logger.info("removed %s (an unfinished write of an earlier, killed run)", path)
                header = [f"time: {time.strftime('%Y-%m-%d %H:%M:%S')}"]
                if self.command_line:
                    header.append(f"command: {self.command_line}")
                dump_options(opt, self.exp_dir / f"{Path(self.options_name).stem}.yml", header)
            self.logger.info("ddr_restore training %s: device %s, %d process(es), seed %d, torch %s", opt["name"],
                             self.dist.device, self.dist.world_size, self.seed, torch.__version__)
            for note in self._notes:
                (self.logger.warning if note.startswith("WARNING") else self.logger.info)(note)
            for change in getattr(self, "_applied_changes", []):
                self.logger.info("option changed since the checkpoint (applied): %s", _format_change(*change))
            self.logger.info("train set: %d items, %d batches of %d per epoch per process; %d validation set(s)",
                             len(self.train_set), self.batches_per_epoch, self.batch_size, len(self.val_sets))
            tb_on = opt["logger"]["use_tb_logger"] and self.dist.is_main
            wandb_opt = opt["logger"].get("wandb") or {}
            if wandb_opt.get("project") and self.dist.is_main:
                self._init_wandb(wandb_opt, tb_on)
            self.writer = MetricWriter(self.tb_dir, enabled=tb_on)

            if resume is not None:
                self._restore(resume[3])
                self._last_saved = str(resume[2])
                self._saved_at = self.start_iter = self.current_iter
                self.logger.info("resumed from %s: iteration %d, epoch %d", resume[1], self.current_iter, self.epoch)
            else:
                _set_seed(self.seed + self.dist.rank)  # BasicSR: per-rank training randomness
            self._interrupt.install()
            try:
                return self._loop(log_file)
            finally:
                self._interrupt.uninstall()
        except TrainingInterrupted:
            raise
        except BaseException as err:
            # The console shows one line for a user error; the log file keeps the whole story.
            log_to_file_only(f"training stopped: {type(err).__name__}: {err}", exc_info=(type(err), err,
                                                                                         err.__traceback__))
            raise
        finally:
            _set_tf32(*tf32_before)
            self.writer.close()
            close_text_logger()

    def _init_wandb(self, wandb_opt: Mapping[str, Any], tb_on: bool) -> None:
        if not tb_on:
            raise InputError("logger.wandb: needs logger.use_tb_logger: true (wandb syncs the TensorBoard logs)")
        try:
            import wandb
        except ImportError as err:
            raise InputError("logger.wandb.project is set but the 'wandb' package is not installed "
                             "(pip install wandb, or remove logger.wandb)") from err
        wandb.init(project=wandb_opt["project"], id=wandb_opt.get("resume_id"), resume="allow", name=self.opt["name"],
                   config=dict(self.opt), sync_tensorboard=True)

    def _stop_now(self) -> bool:
        """Stop after the current iteration? Distributed: what every rank agreed at the last :meth:`_sync` (so a
        Ctrl-C stops at the next synchronisation point); one process: as soon as Ctrl-C was pressed."""
        return self._stop_agreed if self.dist.distributed else self._interrupt.requested

    def _loop(self, log_file: Optional[Path]) -> TrainResult:
        opt, train_opt = self.opt, self.opt["train"]
        total_iter = self._total_iter = int(train_opt["total_iter"])
        print_freq = opt["logger"]["print_freq"]
        save_freq = int(opt["logger"]["save_checkpoint_freq"])
        val_opt = opt.get("val") or {}
        self._val_freq = int(val_opt.get("val_freq") or 0) if self.val_sets else 0
        progress = Progress(self.current_iter, total_iter, enabled=self.dist.is_main)
        last_metrics: Dict[str, Dict[str, float]] = {}
        validated_at = -1
        try:
            if self._val_pending and self.val_sets:
                # The resumed state was saved but its validation did not finish (e.g. a bad validation image).
                self.logger.info("validating iteration %d first (its validation had not finished)", self.current_iter)
                last_metrics = self._validate_at(self.current_iter)
                validated_at = self.current_iter
            for iteration in range(self.current_iter + 1, total_iter + 1):
                if self._stop_now():
                    break
                self._last_state = None  # it shares tensors with the optimizer, which the step below changes
                self._train_step(iteration)
                self.current_iter = iteration
                print_due = iteration % print_freq == 0 or iteration == total_iter
                save_due = (save_freq > 0 and iteration % save_freq == 0) or iteration == total_iter
                # The loss values are read on the host only here (the same iterations on every rank): the GPU runs
                # ahead of Python between these points.
                logs: Optional[Dict[str, float]] = None
                if self.callback is not None or print_due or save_due or self._val_due(iteration):
                    logs = self._sync(iteration)
                progress.update({k: f"{v:.4g}" for k, v in logs.items() if k != "lr"} if logs else None)
                if self.callback is not None and logs is not None:
                    try:
                        self.callback(iteration, dict(logs))
                    except _Abort:
                        raise
                    except KeyboardInterrupt:  # a library user's way to say Ctrl-C: stop after this iteration
                        self._interrupt.request()
                if print_due and logs is not None:
                    terms = "  ".join(f"{k}: {v:.4e}" for k, v in logs.items() if k != "lr")
                    self.logger.info("[epoch %d, iter %d/%d, lr %.3e, %.3f s/it, eta %s] %s", self.epoch, iteration,
                                     total_iter, logs["lr"], progress.seconds_per_iter(iteration),
                                     progress.eta(iteration), terms)
                    self.writer.scalars({f"losses/{k}": v for k, v in logs.items() if k != "lr"}, iteration)
                    self.writer.scalars({"lr": logs["lr"]}, iteration)
                # Save before validating: a failure while validating must not lose this iteration's checkpoint.
                if save_due:
                    self._save(iteration)
                if self._val_due(iteration) and not self._stop_now():
                    last_metrics = self._validate_at(iteration)
                    validated_at = iteration
        except _ValidationAborted:
            pass
        finally:
            progress.close()
        if self._stop_now():
            if self.current_iter < total_iter:
                self._interrupted()
            self.logger.info("Ctrl-C at the last iteration: training is complete, its final validation is skipped")
        elif self.val_sets and validated_at != self.current_iter:  # safety net: the last iteration is validated
            last_metrics = self._validate_at(self.current_iter)
        hashes = all_gather_object(_weights_hash(_unwrap(self.net)))
        if self.dist.distributed:
            same = len(set(hashes)) == 1
            (self.logger.info if same else self.logger.error)(
                "final weights sha256 on %d ranks: %s (%s)", len(hashes), ", ".join(h[:16] for h in hashes),
                "identical" if same else "DIFFERENT")
        latest = self.models_dir / "net_g_latest.pth"
        result = TrainResult(
            experiment_dir=self.exp_dir,
            checkpoint=latest,
            tb_dir=self.tb_dir if self.writer.writer is not None else None,
            before_after=self.before_after,
            log_file=log_file,
            final_iter=self.current_iter,
            metrics=last_metrics,
            best_metrics=copy.deepcopy(self.best),
            weight_hashes=hashes,
            input_metrics={k: dict(v) for k, v in self.input_metrics.items() if v},
            start_iter=self.start_iter,
        )
        self.logger.info("training finished at iteration %d (this run: iterations %d-%d)", self.current_iter,
                         self.start_iter + 1, self.current_iter)
        return result

    def _interrupted(self) -> None:
        """Ctrl-C: save the last completed iteration (unless just saved) and raise :class:`TrainingInterrupted`."""
        iteration = self.current_iter
        if self._saved_at != iteration:
            self.logger.info("Ctrl-C: saving the checkpoint of iteration %d", iteration)
            self._save(iteration)
        net_path = self.models_dir / f"net_g_{iteration}.pth"
        state_path = self.states_dir / f"{iteration}.state"
        self.logger.info("training interrupted (Ctrl-C) at iteration %d of %d; checkpoint: %s, %s", iteration,
                         self._total_iter, net_path, state_path)
        raise TrainingInterrupted(iteration, net_path, state_path)


def train(
    options: Mapping[str, Any],
    auto_resume: bool = False,
    launcher: str = "none",
    command_line: Optional[str] = None,
    options_name: Optional[str] = None,
    iteration_callback: Optional[IterationCallback] = None,
) -> TrainResult:
    """Train a network from an options dict (as loaded from YAML; validated here).

    Args:
        options: the options (see :mod:`ddr_restore.train.options`).
        auto_resume: continue from the newest complete state in this run's ``training_states`` if there is one.
        launcher: ``"none"`` or ``"pytorch"`` (inside ``torchrun``).
        command_line: written as a comment at the top of the copied options file.
        options_name: the option file (its stem names the copy in the experiment folder, default ``<name>.yml``;
            error messages name it).
        iteration_callback: called as ``fn(iteration, {<term>: ..., "l_total": ..., "lr": ...})`` after every
            iteration, one entry per loss term (``l_pix``/``l_percep``/``l_ddr`` for the aliases, the
            ``train.losses`` names otherwise); the loss values are averaged over ranks. Raising
            ``KeyboardInterrupt`` in it stops training like Ctrl-C does (a checkpoint of that iteration is written).
            Giving one makes every iteration a host synchronisation point (the values must be read for it); leave
            it out for full speed.

    Returns:
        A :class:`TrainResult` with the checkpoint, TensorBoard folder and before/after image paths, the final
        validation metrics and those of the degraded inputs.

    Raises:
        InputError: a user error (options, data, checkpoint, ``total_iter`` not above the resumed iteration).
        TrainingInterrupted: Ctrl-C (a ``KeyboardInterrupt``); the last completed iteration was saved.
        TrainingDivergedError: a loss became NaN/inf (the last checkpoint is left intact).
    """
    return Trainer(options, auto_resume=auto_resume, launcher=launcher, command_line=command_line,
                   options_name=options_name, iteration_callback=iteration_callback).run()
