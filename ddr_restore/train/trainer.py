"""The training loop: network + pixel loss + DDR loss, iteration-based, BasicSR experiment layout.

One iteration: take ``accumulate_grad_batches`` batches, forward the network, ``l_total = l_pix + l_ddr`` (each
loss module already includes its ``loss_weight``), backward, optional gradient-norm clipping, optimizer step,
scheduler step, EMA update. Every ``print_freq`` iterations the losses and lr are logged (text + TensorBoard),
every ``save_checkpoint_freq`` a checkpoint is written, every ``val_freq`` the validation sets are evaluated.

Exact resume: the training state stores the optimizer, scheduler, EMA, AMP scaler, the RNG states of every rank,
the best metrics, the epoch and the number of batches consumed in it; the data order and per-sample augmentation
seeds are functions of (seed, epoch, position) (see :mod:`ddr_restore.train.sampling`). A run stopped at any
point and restarted with ``--auto_resume`` therefore repeats the uninterrupted run's losses after the resume point
(on CPU, bit for bit). Validation runs under saved-and-restored RNG states so it never shifts training randomness.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ddr_restore.imageio import tensor2img, write_image
from ddr_restore.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY
from ddr_restore.train import checkpoint as ckpt
from ddr_restore.train.distributed import DistInfo, all_gather_object, all_reduce_sum, barrier, init_distributed
from ddr_restore.train.logger import MetricWriter, Progress, close_text_logger, setup_text_logger
from ddr_restore.train.options import LOADER_KEYS, dump_options, validate_options
from ddr_restore.train.sampling import ResumableSampler, SeededDataset
from ddr_restore.train.schedulers import build_optimizer, build_scheduler

__all__ = ["Trainer", "TrainResult", "TrainingDivergedError", "train"]

IterationCallback = Callable[[int, Dict[str, float]], None]


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; no checkpoint was written after it."""


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


def _metric_better(metric_type: str) -> str:
    try:
        from ddr_restore.metrics.psnr_ssim import METRIC_BETTER
    except ImportError:
        return "higher"
    return METRIC_BETTER.get(metric_type, "higher")


def _weights_hash(net: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _side_by_side(images: List[np.ndarray]) -> np.ndarray:
    """Concatenate HWC uint8 images horizontally, resizing (nearest) to the last image's height."""
    import cv2

    h = images[-1].shape[0]
    resized = [im if im.shape[0] == h else cv2.resize(im, (round(im.shape[1] * h / im.shape[0]), h),
                                                          interpolation=cv2.INTER_NEAREST) for im in images]
    return np.concatenate(resized, axis=1)


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

    def _find_resume(self) -> Optional[Tuple[int, Path, Path]]:
        """(iter, state file, network file) to resume from, or None for a fresh run."""
        explicit = self.opt["path"].get("resume_state")
        if explicit:
            state_path = Path(explicit)
            state = ckpt.safe_load(state_path)
            iteration = int(state["iter"])
            net_path = state_path.parent.parent / "models" / f"net_g_{iteration}.pth"
            if not net_path.is_file():
                raise FileNotFoundError(f"path.resume_state {state_path}: the matching network file {net_path} is missing")
            return iteration, state_path, net_path
        if self.auto_resume:
            found = ckpt.find_latest_state(self.states_dir, self.models_dir)
            if found is not None:
                return found[0], found[1], self.models_dir / f"net_g_{found[0]}.pth"
        return None

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
        return DATASET_REGISTRY.build(kwargs, where=f"datasets.{phase}", phase="train" if phase == "train" else "val")

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
            raise ValueError(
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
            ckpt.load_network(net, resume[2], "params", strict=True)
        elif path_opt.get("pretrain_network_g"):
            missing, unexpected = ckpt.load_network(
                net, path_opt["pretrain_network_g"], path_opt["param_key_g"], strict=path_opt["strict_load_g"]
            )
            self._notes.append(f"loaded {path_opt['pretrain_network_g']} [{path_opt['param_key_g']}] "
                               f"(missing keys: {len(missing)}, unexpected: {len(unexpected)})")
        net = net.to(device)
        n_params = sum(p.numel() for p in net.parameters())
        self._notes.append(f"network_g: {type(net).__name__}, {n_params / 1e6:.3f} M parameters")

        train_opt = self.opt["train"]
        self.cri_pix = self.cri_ddr = None
        if train_opt.get("pixel_opt"):
            self.cri_pix = LOSS_REGISTRY.build(train_opt["pixel_opt"], where="train.pixel_opt").to(device).eval()
        if train_opt.get("ddr_opt"):
            # A separate module: the frozen CLIP is never part of net_g, so DDP neither wraps nor syncs it.
            self.cri_ddr = LOSS_REGISTRY.build(train_opt["ddr_opt"], where="train.ddr_opt").to(device).eval()
            if getattr(getattr(self.cri_ddr, "ddr", self.cri_ddr), "pretrained_is_random", False):
                self._notes.append("WARNING train.ddr_opt: the CLIP backbone is RANDOMLY initialised (pretrained: "
                                   "none); l_ddr is a plumbing check, not the DDR objective")

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

    def _restore(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError("the training state has no EMA but train.ema_decay is set; resume with the same options")
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best = copy.deepcopy(state.get("best_metrics") or {})
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.current_iter = int(state["iter"])
        rngs = state.get("rng") or []
        if len(rngs) == self.dist.world_size:
            ckpt.set_rng_state(rngs[self.dist.rank])
        else:
            self.logger.warning("training state saved with %d processes, resuming with %d: RNG states not restored "
                                "(the run continues but is not bit-identical)", len(rngs), self.dist.world_size)

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
        terms: Dict[str, torch.Tensor] = {}
        if self.cri_pix is not None:
            terms["l_pix"] = self.cri_pix(out, gt)
        if self.cri_ddr is not None:
            terms["l_ddr"] = self.cri_ddr(out)
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
                values = all_reduce_sum([float(terms[k].detach()) for k in names], device)
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
                "best_metrics": self.best,
            }
            # Written last: its presence marks the checkpoint of this iteration as complete.
            ckpt.atomic_save(state, self.states_dir / f"{iteration}.state")
            self.logger.info("saved checkpoint: %s, %s", self.models_dir / f"net_g_{iteration}.pth",
                             self.states_dir / f"{iteration}.state")
        self._last_saved = str(self.models_dir / f"net_g_{iteration}.pth")
        barrier()

    @torch.no_grad()
    def validate(self, iteration: int) -> Dict[str, Dict[str, float]]:
        """Evaluate every validation set (sharded over ranks, sums all-reduced); returns {set: {metric: value}}."""
        val_opt = self.opt.get("val") or {}
        metrics_opt = val_opt.get("metrics") or {}
        model = self.ema.module if self.ema is not None else _unwrap(self.net)
        was_training = model.training
        model.eval()
        results: Dict[str, Dict[str, float]] = {}
        rng = ckpt.rng_state()  # validation must not shift the training randomness
        device = self.dist.device
        max_save = val_opt.get("max_save_images", 4)
        for set_idx, (phase, label, ds) in enumerate(self.val_sets):
            names = list(metrics_opt)
            sums = [0.0] * len(names)
            count = 0
            for i in range(self.dist.rank, len(ds), self.dist.world_size):
                item = ds[i]
                lq = item["lq"].unsqueeze(0).to(device)
                out = model(lq)
                out_img = tensor2img(out)
                gt_img = tensor2img(item["gt"]) if "gt" in item else None
                for j, name in enumerate(names):
                    mcfg = {k: v for k, v in metrics_opt[name].items() if k not in ("type", "better")}
                    if gt_img is None:
                        raise ValueError(f"val.metrics.{name}: datasets.{phase} items have no 'gt' image")
                    sums[j] += float(METRIC_REGISTRY.get(metrics_opt[name]["type"])(out_img, gt_img, **mcfg))
                count += 1
                if i < max_save:
                    stem = Path(str(item.get("lq_path", f"{i:04d}"))).stem
                    panels = [tensor2img(item["lq"]), out_img] + ([gt_img] if gt_img is not None else [])
                    strip = _side_by_side(panels)
                    if val_opt.get("save_img"):
                        suffix = val_opt.get("suffix") or str(iteration)
                        write_image(self.vis_dir / stem / f"{stem}_{suffix}.png", out_img)
                    self.writer.image(f"val_{label}/{stem}", strip, iteration)
                    if set_idx == 0 and i == 0:
                        self.before_after = write_image(self.vis_dir / "before_after.png", strip)
            totals = all_reduce_sum(sums + [float(count)], device)
            n = max(totals[-1], 1.0)
            results[label] = {name: totals[j] / n for j, name in enumerate(names)}
        ckpt.set_rng_state(rng)
        model.train(was_training)
        self._record(results, iteration)
        return results

    def _record(self, results: Dict[str, Dict[str, float]], iteration: int) -> None:
        metrics_opt = (self.opt.get("val") or {}).get("metrics") or {}
        for label, values in results.items():
            parts = []
            for name, value in values.items():
                better = metrics_opt[name].get("better") or _metric_better(metrics_opt[name]["type"])
                best = self.best.setdefault(label, {}).get(name)
                improved = best is None or (value > best["val"] if better == "higher" else value < best["val"])
                if improved:
                    self.best[label][name] = {"val": value, "iter": iteration}
                b = self.best[label][name]
                parts.append(f"{name}: {value:.4f} (best {b['val']:.4f} @ iter {b['iter']})")
                self.writer.scalars({f"metrics/{label}/{name}": value}, iteration)
            self.logger.info("validation %s @ iter %d: %s", label, iteration, ", ".join(parts) or "no metrics")

    # ------------------------------------------------------------------------------------------------ main
    def run(self) -> TrainResult:
        """Train to ``train.total_iter`` (resuming if asked) and return where the outputs are."""
        opt = self.opt
        self.dist: DistInfo = init_distributed(self.launcher, opt["num_gpu"])
        seed = opt.get("manual_seed")
        if seed is None:
            seed = all_gather_object(random.randrange(2**31))[0]  # rank 0's draw, shared
            opt["manual_seed"] = seed
        self.seed = int(seed)
        self._paths()
        self._archived: Optional[Path] = None
        self._last_saved: Optional[str] = None
        self.before_after: Optional[Path] = None
        self.best: Dict[str, Dict[str, Dict[str, float]]] = {}
        self.epoch, self.batch_in_epoch, self.current_iter = 0, 0, 0
        self._iter = None
        self.writer = MetricWriter(None, enabled=False)
        log_file: Optional[Path] = None
        self._notes: List[str] = []
        try:
            resume = self._find_resume()
            # Build everything first: a bad dataset/network/loss option fails before the folder is touched.
            self.logger = setup_text_logger(None, is_main=self.dist.is_main)
            _set_seed(self.seed)  # identical model init on every rank
            self._build_train_loader()
            self._build_val_sets()
            self._build_model(resume)

            self._prepare_folder(resuming=resume is not None)
            log_file = _new_log_file(self.exp_dir, opt["name"]) if self.dist.is_main else None
            self.logger = setup_text_logger(log_file, is_main=self.dist.is_main)
            if self._archived is not None:
                self.logger.info("existing experiment folder archived to %s", self._archived)
            if self.dist.is_main:
                header = [f"time: {time.strftime('%Y-%m-%d %H:%M:%S')}"]
                if self.command_line:
                    header.append(f"command: {self.command_line}")
                dump_options(opt, self.exp_dir / f"{Path(self.options_name).stem}.yml", header)
            self.logger.info("ddr_restore training %s: device %s, %d process(es), seed %d, torch %s", opt["name"],
                             self.dist.device, self.dist.world_size, self.seed, torch.__version__)
            for note in self._notes:
                (self.logger.warning if note.startswith("WARNING") else self.logger.info)(note)
            self.logger.info("train set: %d items, %d batches of %d per epoch per process; %d validation set(s)",
                             len(self.train_set), self.batches_per_epoch, self.batch_size, len(self.val_sets))
            tb_on = opt["logger"]["use_tb_logger"] and self.dist.is_main
            wandb_opt = opt["logger"].get("wandb") or {}
            if wandb_opt.get("project") and self.dist.is_main:
                self._init_wandb(wandb_opt, tb_on)
            self.writer = MetricWriter(self.tb_dir, enabled=tb_on)

            if resume is not None:
                state = ckpt.safe_load(resume[1], map_location="cpu")
                self._restore(state)
                self._last_saved = str(resume[2])
                self.logger.info("resumed from %s: iteration %d, epoch %d", resume[1], self.current_iter, self.epoch)
            else:
                _set_seed(self.seed + self.dist.rank)  # BasicSR: per-rank training randomness
            return self._loop(log_file)
        finally:
            self.writer.close()
            close_text_logger()

    def _init_wandb(self, wandb_opt: Mapping[str, Any], tb_on: bool) -> None:
        if not tb_on:
            raise ValueError("logger.wandb: needs logger.use_tb_logger: true (wandb syncs the TensorBoard logs)")
        try:
            import wandb
        except ImportError as err:
            raise ImportError("logger.wandb.project is set but the 'wandb' package is not installed") from err
        wandb.init(project=wandb_opt["project"], id=wandb_opt.get("resume_id"), resume="allow", name=self.opt["name"],
                   config=dict(self.opt), sync_tensorboard=True)

    def _loop(self, log_file: Optional[Path]) -> TrainResult:
        opt, train_opt = self.opt, self.opt["train"]
        total_iter = train_opt["total_iter"]
        print_freq = opt["logger"]["print_freq"]
        save_freq = int(opt["logger"]["save_checkpoint_freq"])
        val_opt = opt.get("val") or {}
        val_freq = int(val_opt.get("val_freq") or 0) if self.val_sets else 0
        progress = Progress(self.current_iter, total_iter, enabled=self.dist.is_main)
        last_metrics: Dict[str, Dict[str, float]] = {}
        saved_at = validated_at = -1
        try:
            for iteration in range(self.current_iter + 1, total_iter + 1):
                logs = self._train_step(iteration)
                self.current_iter = iteration
                progress.update({k: f"{v:.4g}" for k, v in logs.items() if k != "lr"})
                if self.callback is not None:
                    self.callback(iteration, dict(logs))
                if iteration % print_freq == 0 or iteration == total_iter:
                    terms = "  ".join(f"{k}: {v:.4e}" for k, v in logs.items() if k != "lr")
                    self.logger.info("[epoch %d, iter %d/%d, lr %.3e, %.3f s/it, eta %s] %s", self.epoch, iteration,
                                     total_iter, logs["lr"], progress.seconds_per_iter(iteration),
                                     progress.eta(iteration), terms)
                    self.writer.scalars({f"losses/{k}": v for k, v in logs.items() if k != "lr"}, iteration)
                    self.writer.scalars({"lr": logs["lr"]}, iteration)
                # Validate before saving, so the state written at this iteration holds its best metrics.
                if val_freq > 0 and iteration % val_freq == 0:
                    last_metrics = self.validate(iteration)
                    validated_at = iteration
                if save_freq > 0 and iteration % save_freq == 0:
                    self._save(iteration)
                    saved_at = iteration
        finally:
            progress.close()
        if self.val_sets and validated_at != total_iter:
            last_metrics = self.validate(total_iter)
        if saved_at != total_iter:
            self._save(total_iter)
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
            final_iter=total_iter,
            metrics=last_metrics,
            best_metrics=copy.deepcopy(self.best),
            weight_hashes=hashes,
        )
        self.logger.info("training finished at iteration %d", total_iter)
        return result


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
        options_name: file name for the copied options (default ``<name>.yml``).
        iteration_callback: called as ``fn(iteration, {"l_pix":..., "l_ddr":..., "l_total":..., "lr":...})``
            after every iteration (the loss values are averaged over ranks).

    Returns:
        A :class:`TrainResult` with the checkpoint, TensorBoard folder and before/after image paths.

    Raises:
        TrainingDivergedError: a loss became NaN/inf (the last checkpoint is left intact).
    """
    return Trainer(options, auto_resume=auto_resume, launcher=launcher, command_line=command_line,
                   options_name=options_name, iteration_callback=iteration_callback).run()
