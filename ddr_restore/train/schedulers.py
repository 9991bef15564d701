"""Optimizers and learning-rate schedules looked up by name.

Names resolve first to the schedules the NAFNet/Restormer recipes need (defined here), then to any class in
``torch.optim`` / ``torch.optim.lr_scheduler``. Every schedule steps once per training iteration. Linear warm-up
(``train.warmup_iter``) wraps whatever schedule was built, see :class:`LinearWarmup`.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

__all__ = [
    "TrueCosineAnnealingLR",
    "CosineAnnealingRestartCyclicLR",
    "LinearWarmup",
    "optimizer_class",
    "scheduler_class",
    "build_optimizer",
    "build_scheduler",
    "available_optimizers",
    "available_schedulers",
]


class TrueCosineAnnealingLR(CosineAnnealingLR):
    """NAFNet's name for torch's ``CosineAnnealingLR`` (cosine from the base lr to ``eta_min`` over ``T_max``)."""


class CosineAnnealingRestartCyclicLR(LRScheduler):
    """Restormer's schedule: one cosine per period, each from ``restart_weight * base_lr`` to its own ``eta_min``.

    For step ``t`` inside period ``i`` (which starts at ``s_i`` = sum of the earlier periods)::

        lr = eta_mins[i] + restart_weights[i] * (base_lr - eta_mins[i]) * (1 + cos(pi * (t - s_i) / periods[i])) / 2

    Steps past the last period keep the last period's end value (``eta_mins[-1]``).

    Args:
        optimizer: the wrapped optimizer.
        periods: length of each cosine period, in iterations.
        restart_weights: per-period multiplier of the starting amplitude (default 1 for every period).
        eta_mins: per-period minimum lr (a single value is used for every period).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        periods: Sequence[int],
        restart_weights: Optional[Sequence[float]] = None,
        eta_mins: Sequence[float] = (0.0,),
        last_epoch: int = -1,
    ) -> None:
        self.periods = [int(p) for p in periods]
        if not self.periods or any(p <= 0 for p in self.periods):
            raise ValueError(f"CosineAnnealingRestartCyclicLR: periods must be positive integers, got {list(periods)}")
        n = len(self.periods)
        self.restart_weights = [1.0] * n if restart_weights is None else [float(w) for w in restart_weights]
        eta = [float(e) for e in eta_mins]
        self.eta_mins = eta * n if len(eta) == 1 else eta
        for label, values in (("restart_weights", self.restart_weights), ("eta_mins", self.eta_mins)):
            if len(values) != n:
                raise ValueError(
                    f"CosineAnnealingRestartCyclicLR: {label} has {len(values)} entries but periods has {n}"
                )
        self.cumulative = [sum(self.periods[: i + 1]) for i in range(n)]
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:  # closed form: resume-safe and independent of the current group lr
        t = self.last_epoch
        idx = next((i for i, end in enumerate(self.cumulative) if t <= end), None)
        if idx is None:
            return [self.eta_mins[-1] for _ in self.base_lrs]
        start = self.cumulative[idx - 1] if idx > 0 else 0
        weight, eta_min, period = self.restart_weights[idx], self.eta_mins[idx], self.periods[idx]
        cos = 0.5 * (1.0 + math.cos(math.pi * (t - start) / period))
        return [eta_min + weight * (base - eta_min) * cos for base in self.base_lrs]


class LinearWarmup:
    """Linear warm-up in front of any per-iteration schedule (BasicSR semantics).

    The lr used by iteration ``i`` (1-based) is ``initial_lr * i / warmup_iter`` while ``i < warmup_iter`` and the
    wrapped schedule's own value afterwards. The wrapped schedule keeps stepping underneath; before each of its
    steps the un-warmed lr is put back into the optimizer so recursive (chainable) torch schedules see their own
    values, not the warm-up's.
    """

    def __init__(self, scheduler: Any, warmup_iter: int) -> None:
        if warmup_iter <= 0:
            raise ValueError(f"LinearWarmup: warmup_iter must be positive, got {warmup_iter}")
        self.scheduler = scheduler
        self.optimizer: Optimizer = scheduler.optimizer
        self.warmup_iter = int(warmup_iter)
        self.initial_lrs = [g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups]
        self.iteration = 1  # the iteration the current lr is for
        self._inner_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self._apply()

    def _apply(self) -> None:
        for group, inner, init in zip(self.optimizer.param_groups, self._inner_lrs, self.initial_lrs):
            group["lr"] = init * self.iteration / self.warmup_iter if self.iteration < self.warmup_iter else inner

    def step(self) -> None:
        """Advance one iteration."""
        for group, inner in zip(self.optimizer.param_groups, self._inner_lrs):
            group["lr"] = inner
        self.scheduler.step()
        self._inner_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.iteration += 1
        self._apply()

    def get_last_lr(self) -> List[float]:
        """The lr values currently in the optimizer (warm-up applied)."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> Dict[str, Any]:
        """Picklable state (the wrapped schedule's state included)."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "warmup_iter": self.warmup_iter,
            "initial_lrs": list(self.initial_lrs),
            "iteration": self.iteration,
            "inner_lrs": list(self._inner_lrs),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.scheduler.load_state_dict(state["scheduler"])
        self.warmup_iter = int(state["warmup_iter"])
        self.initial_lrs = list(state["initial_lrs"])
        self.iteration = int(state["iteration"])
        self._inner_lrs = list(state["inner_lrs"])
        self._apply()


# Schedules defined in this project; everything else comes from torch.optim.lr_scheduler by name.
_OWN_SCHEDULERS = {
    "TrueCosineAnnealingLR": TrueCosineAnnealingLR,
    "CosineAnnealingRestartCyclicLR": CosineAnnealingRestartCyclicLR,
}
# Schedulers that wrap other schedulers cannot be built from a flat option dict.
_NOT_BUILDABLE = {"LRScheduler", "_LRScheduler", "SequentialLR", "ChainedScheduler", "ReduceLROnPlateau"}


def available_optimizers() -> List[str]:
    """Names accepted for ``train.optim_g.type``: every optimizer class in ``torch.optim``."""
    return sorted(
        name
        for name, obj in vars(torch.optim).items()
        if inspect.isclass(obj) and issubclass(obj, Optimizer) and obj is not Optimizer and not name.startswith("_")
    )


def available_schedulers() -> List[str]:
    """Names accepted for ``train.scheduler.type``: the project's schedules plus torch's."""
    torch_names = [
        name
        for name, obj in vars(torch.optim.lr_scheduler).items()
        if inspect.isclass(obj) and issubclass(obj, LRScheduler) and name not in _NOT_BUILDABLE
    ]
    return sorted(set(torch_names) | set(_OWN_SCHEDULERS))


def optimizer_class(name: str, where: str = "train.optim_g.type") -> type:
    """The optimizer class called ``name``; unknown names raise a KeyError listing the available ones."""
    if name not in available_optimizers():
        raise KeyError(f"{where}: unknown optimizer {name!r}; available: {', '.join(available_optimizers())}")
    return getattr(torch.optim, name)


def scheduler_class(name: str, where: str = "train.scheduler.type") -> type:
    """The scheduler class called ``name``; unknown names raise a KeyError listing the available ones."""
    if name not in available_schedulers():
        raise KeyError(f"{where}: unknown scheduler {name!r}; available: {', '.join(available_schedulers())}")
    return _OWN_SCHEDULERS.get(name) or getattr(torch.optim.lr_scheduler, name)


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: Mapping[str, Any], where: str = "train.optim_g") -> Optimizer:
    """Build ``cfg['type'](params, **rest)``; lists (e.g. ``betas``) become tuples."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k != "type"}
    cls = optimizer_class(cfg["type"], f"{where}.type")
    try:
        return cls(params, **kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: cannot build optimizer {cfg['type']!r} with {kwargs}: {err}") from err


def build_scheduler(
    optimizer: Optimizer, cfg: Optional[Mapping[str, Any]], warmup_iter: int = -1, where: str = "train.scheduler"
) -> Any:
    """Build the per-iteration schedule from ``cfg`` (None = constant lr), wrapped in :class:`LinearWarmup` when
    ``warmup_iter > 0``."""
    if cfg is None:
        scheduler: Any = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    else:
        kwargs = dict(cfg)
        cls = scheduler_class(kwargs.pop("type"), f"{where}.type")
        try:
            scheduler = cls(optimizer, **kwargs)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{where}: cannot build scheduler {cfg['type']!r} with {kwargs}: {err}") from err
    return LinearWarmup(scheduler, warmup_iter) if warmup_iter and warmup_iter > 0 else scheduler
