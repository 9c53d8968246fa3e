"""The optimizer and the learning-rate schedule, from timm's factories.

The paper's recipe (ASL's) is the default: Adam, ``lr`` 1e-4, L2 weight decay 1e-4 (none
on biases and norms, :meth:`~agcn_pyg.MLAGCN.param_groups`) and a OneCycle schedule whose
warm-up is the first ``pct_start`` = 20 % of the updates. Any other
:func:`timm.optim.create_optimizer_v2` optimizer (``opt``) and
:func:`timm.scheduler.create_scheduler_v2` schedule (``sched``: cosine, step, plateau, ...,
stepped per update, with ``warmup_epochs``) works the same way.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agcn_pyg.train.checkpoint import TrainParts

__all__ = ["RecipeConfig", "build_optimizer", "build_parts", "build_scheduler", "schedule_epoch"]


@dataclass
class RecipeConfig:
    """Optimizer, schedule and EMA settings (``sched_epochs``: the schedule's length; a run
    may stop earlier, as ASL's ``train.py`` schedules 80 epochs and stops at 40;
    ``ema_decay`` 0 disables the EMA)."""

    sched_epochs: int
    opt: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    sched: str = "onecycle"
    pct_start: float = 0.2
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    ema_decay: float = 0.9997


def build_optimizer(model: nn.Module, cfg: RecipeConfig) -> torch.optim.Optimizer:
    """timm's optimizer ``cfg.opt`` over the model's parameter groups (no weight decay on
    biases, norms and the backbone's ``no_weight_decay()``)."""
    from timm.optim import create_optimizer_v2

    params = (model.param_groups(cfg.weight_decay) if hasattr(model, "param_groups")
              else model)
    return create_optimizer_v2(params, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum)


def _one_cycle(optimizer: torch.optim.Optimizer, cfg: RecipeConfig,
               updates_per_epoch: int) -> torch.optim.lr_scheduler.OneCycleLR:
    total = updates_per_epoch * cfg.sched_epochs
    pct_start = cfg.warmup_epochs / cfg.sched_epochs if cfg.warmup_epochs else cfg.pct_start
    if math.isclose(pct_start * total, 1.0):
        # OneCycleLR divides by zero when its warm-up ends exactly at step 0.
        pct_start = min(1.5 / total, 0.99)
        warnings.warn(f"OneCycle's warm-up raised to {pct_start:.3g} of the schedule: "
                      f"{total} updates in all", stacklevel=3)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total,
                                               pct_start=pct_start)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RecipeConfig,
                    updates_per_epoch: int) -> Any:
    """The schedule, stepped once per optimizer update
    (:func:`~agcn_pyg.train.loop.schedule_update`) and once per epoch
    (:func:`schedule_epoch`). ``onecycle`` is torch's :class:`OneCycleLR` peaking at
    ``cfg.lr`` (its warm-up: ``warmup_epochs`` when given, else ``pct_start``); the other
    names go to :func:`timm.scheduler.create_scheduler_v2`."""
    if updates_per_epoch < 1:
        raise ValueError(f"'updates_per_epoch' must be at least 1 (got {updates_per_epoch})")
    if cfg.sched == "onecycle":
        return _one_cycle(optimizer, cfg, updates_per_epoch)
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.sched_epochs,
        warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
        step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    if scheduler is None:
        raise ValueError(f"'sched': timm has no schedule {cfg.sched!r}")
    return scheduler


def schedule_epoch(scheduler: Any, epochs_done: int, metric: float | None = None) -> None:
    """The end-of-epoch step of a timm schedule (``plateau`` watches ``metric``, the
    validation mAP); torch schedules step per update only."""
    if hasattr(scheduler, "step_update"):
        scheduler.step(epochs_done, metric)


def build_parts(model: nn.Module, cfg: RecipeConfig, updates_per_epoch: int,
                grad_scaler: bool = False) -> TrainParts:
    """The model (already on its device) with its EMA (timm's ``ModelEmaV3``), optimizer,
    schedule and, with ``grad_scaler`` (fp16), a GradScaler."""
    ema = None
    if cfg.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, updates_per_epoch)
    device = next(model.parameters()).device
    scaler = torch.amp.GradScaler(device.type) if grad_scaler else None
    return TrainParts(model, optimizer, scheduler, scaler, ema)
