"""LR schedules against closed-form formulas written here; optimizer/scheduler look-up by name."""
from __future__ import annotations

import math

import pytest
import torch

from ddr_restore.train.schedulers import (
    CosineAnnealingRestartCyclicLR,
    LinearWarmup,
    available_schedulers,
    build_optimizer,
    build_scheduler,
    optimizer_class,
    scheduler_class,
)


def _opt(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(sched, optimizer, n: int) -> list:
    """lr used by iterations 1..n (the scheduler steps after each optimizer step)."""
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    return out


def test_true_cosine_matches_formula():
    opt = _opt(1e-3)
    sched = build_scheduler(opt, {"type": "TrueCosineAnnealingLR", "T_max": 10, "eta_min": 1e-7})
    got = _lrs(sched, opt, 11)
    want = [1e-7 + (1e-3 - 1e-7) * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(11)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_cyclic_restart_matches_restormer_formula():
    opt = _opt(3e-4)
    periods, eta_mins = [4, 6], [3e-4, 1e-6]
    sched = CosineAnnealingRestartCyclicLR(opt, periods=periods, restart_weights=[1, 1], eta_mins=eta_mins)
    got = _lrs(sched, opt, 13)
    want = []
    for t in range(13):
        if t <= 4:  # first period: eta_min == base lr, so constant
            want.append(3e-4)
        elif t <= 10:
            want.append(1e-6 + (3e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * (t - 4) / 6)))
        else:  # past the last period: its end value
            want.append(1e-6)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_cyclic_restart_weights_and_errors():
    opt = _opt(1.0)
    sched = CosineAnnealingRestartCyclicLR(opt, periods=[2, 2], restart_weights=[1, 0.5], eta_mins=[0.0])
    got = _lrs(sched, opt, 5)
    # t=3 is inside period 2 (starts at 2): 0.5 * (1 + cos(pi/2)) / 2
    assert got == pytest.approx([1.0, 0.5, 0.0, 0.25, 0.0], abs=1e-12)
    with pytest.raises(ValueError, match="eta_mins has 3 entries but periods has 2"):
        CosineAnnealingRestartCyclicLR(_opt(), periods=[2, 2], eta_mins=[0, 0, 0])
    with pytest.raises(ValueError, match="positive"):
        CosineAnnealingRestartCyclicLR(_opt(), periods=[0])


def test_linear_warmup_then_schedule():
    opt = _opt(1.0)
    sched = build_scheduler(opt, {"type": "TrueCosineAnnealingLR", "T_max": 8, "eta_min": 0.0}, warmup_iter=4)
    assert isinstance(sched, LinearWarmup)
    got = _lrs(sched, opt, 9)
    cosine = [(1 + math.cos(math.pi * t / 8)) / 2 for t in range(9)]
    # BasicSR: iteration i (1-based) uses base * i / warmup while i < warmup, then the schedule's value for step i-1
    want = [i / 4 if i < 4 else cosine[i - 1] for i in range(1, 10)]
    assert got == pytest.approx(want, abs=1e-12)


def test_warmup_state_round_trip():
    opt1 = _opt(1.0)
    s1 = build_scheduler(opt1, {"type": "TrueCosineAnnealingLR", "T_max": 10}, warmup_iter=3)
    _lrs(s1, opt1, 2)
    opt2 = _opt(1.0)
    s2 = build_scheduler(opt2, {"type": "TrueCosineAnnealingLR", "T_max": 10}, warmup_iter=3)
    opt2.load_state_dict(opt1.state_dict())
    s2.load_state_dict(s1.state_dict())
    assert _lrs(s2, opt2, 6) == pytest.approx(_lrs(s1, opt1, 6), abs=0)


def test_constant_without_scheduler_and_torch_names():
    opt = _opt(0.5)
    assert _lrs(build_scheduler(opt, None), opt, 3) == [0.5, 0.5, 0.5]
    opt = _opt(1.0)
    sched = build_scheduler(opt, {"type": "MultiStepLR", "milestones": [2], "gamma": 0.1})
    assert _lrs(sched, opt, 4) == pytest.approx([1.0, 1.0, 0.1, 0.1])


def test_unknown_names_list_what_exists():
    with pytest.raises(KeyError, match="unknown scheduler 'Cosine'.*CosineAnnealingRestartCyclicLR"):
        scheduler_class("Cosine")
    with pytest.raises(KeyError, match="unknown optimizer 'Adamw'.*AdamW"):
        optimizer_class("Adamw")
    assert "TrueCosineAnnealingLR" in available_schedulers() and "SequentialLR" not in available_schedulers()


def test_build_optimizer_lists_to_tuples_and_errors():
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(p, {"type": "AdamW", "lr": 1e-3, "weight_decay": 1e-3, "betas": [0.9, 0.9]})
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.9, 0.9)
    with pytest.raises(TypeError, match="train.optim_g: cannot build optimizer 'AdamW'"):
        build_optimizer(p, {"type": "AdamW", "lrr": 1})
