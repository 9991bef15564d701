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
  no partial file). Stale ``*.tmp`` files of an earlier kill are removed when a run starts or resumes.
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


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


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
        self.net = net

        self.ema = None
        decay = train_opt.get("ema_decay") or 0.0
        if decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(_unwrap(net), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
            self.ema.requires_grad_(False)

        params = [p for p in net.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, train_opt["optim_g"])
        self.scheduler = build_scheduler(self.optimizer, train_opt.get("scheduler"), train_opt["warmup_iter"])

        amp = train_opt.get("amp") or None
        self.amp_dtype = None
        self.scaler = None
        if amp and device.type != "cuda":
            self._notes.append(f"train.amp={amp} ignored: mixed precision is used on CUDA only")
        elif amp:
            self.amp_dtype = torch.bfloat16 if amp == "bf16" else torch.float16
            if amp == "fp16":
                self.scaler = torch.amp.GradScaler("cuda")

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
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise InputError("the training state has no EMA but train.ema_decay is set; resume with the options "
                                 "the checkpoint was trained with")
            self.ema.load_state_dict(state["ema"])
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

    def _train_step(self, iteration: int) -> Dict[str, float]:
        train_opt = self.opt["train"]
        accum = train_opt["accumulate_grad_batches"]
        device = self.dist.device
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: Dict[str, float] = {}
        for micro in range(accum):
            batch = self._next_batch()
            lq = batch["lq"].to(device, non_blocking=True)
            gt = batch["gt"].to(device, non_blocking=True)
            if self.progressive is not None:
                lq, gt = self._progressive(lq, gt, iteration)
            sync = contextlib.nullcontext()
            if self.dist.distributed and micro < accum - 1:
                sync = self.net.no_sync()  # gradients are all-reduced once, on the last micro-batch
            with sync:
                autocast = (torch.autocast(device_type=device.type, dtype=self.amp_dtype) if self.amp_dtype
                            else contextlib.nullcontext())
                with autocast:
                    out = self.net(lq)
                    terms = self._losses(out, gt)
                total = sum(terms.values())
                terms["l_total"] = total
                names = list(terms)
                # Averaged over ranks now (not after backward): a NaN on any rank stops every rank together.
                # The last entry carries the Ctrl-C requests, so that every rank stops after the same iteration.
                values = all_reduce_sum([float(terms[k].detach()) for k in names]
                                        + [float(self._interrupt.requested)], device)
                self._stop_agreed = values.pop() > 0
                values = [v / self.dist.world_size for v in values]
                if not all(np.isfinite(values)):
                    detail = ", ".join(f"{k}={v}" for k, v in zip(names, values))
                    raise TrainingDivergedError(
                        f"iteration {iteration}: non-finite loss ({detail}); training stopped. The last checkpoint "
                        f"({self._last_saved or 'none'}) is intact: nothing was saved after this iteration."
                    )
                loss = total / accum
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            for k, v in zip(names, values):
                sums[k] = sums.get(k, 0.0) + v / accum
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if train_opt["use_grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), float(train_opt["grad_clip_norm"]))
        sums["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(_unwrap(self.net))
        return sums

    def _save(self, iteration: int) -> None:
        rngs = all_gather_object(ckpt.rng_state())
        self._last_state = None
        if self.dist.is_main:
            payload = {"params": _unwrap(self.net).state_dict()}
            if self.ema is not None:
                payload["params_ema"] = self.ema.module.state_dict()
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
                    lq_img = tensor2img(item["lq"])
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

    @staticmethod
    def _panel_labels(names: List[str], scores: List[float], in_scores: List[float]) -> List[str]:
        """Corner labels of the before/after panels: the first metric of input and output, and the target."""
        if not names or not scores:
            return ["input", "restored", "target"]
        unit = " dB" if "psnr" in names[0].lower() else ""
        first = f"{names[0]} "
        return [f"input {first}{in_scores[0]:.2f}{unit}" if in_scores else "input",
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
        self._paths()
        self._archived: Optional[Path] = None
        self._last_saved: Optional[str] = None
        self._last_state: Optional[Dict[str, Any]] = None
        self._saved_at = -1
        self._val_pending = False
        self._stop_agreed = False
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
        """Every rank agrees (through the loss all-reduce of this iteration) when distributed."""
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
                logs = self._train_step(iteration)
                self.current_iter = iteration
                progress.update({k: f"{v:.4g}" for k, v in logs.items() if k != "lr"})
                if self.callback is not None:
                    try:
                        self.callback(iteration, dict(logs))
                    except _Abort:
                        raise
                    except KeyboardInterrupt:  # a library user's way to say Ctrl-C: stop after this iteration
                        self._interrupt.request()
                if iteration % print_freq == 0 or iteration == total_iter:
                    terms = "  ".join(f"{k}: {v:.4e}" for k, v in logs.items() if k != "lr")
                    self.logger.info("[epoch %d, iter %d/%d, lr %.3e, %.3f s/it, eta %s] %s", self.epoch, iteration,
                                     total_iter, logs["lr"], progress.seconds_per_iter(iteration),
                                     progress.eta(iteration), terms)
                    self.writer.scalars({f"losses/{k}": v for k, v in logs.items() if k != "lr"}, iteration)
                    self.writer.scalars({"lr": logs["lr"]}, iteration)
                # Save before validating: a failure while validating must not lose this iteration's checkpoint.
                if (save_freq > 0 and iteration % save_freq == 0) or iteration == total_iter:
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
