"""One training epoch: forward under autocast, ASL loss, backward, optimizer update (with
gradient accumulation and clipping), one schedule step and one EMA update per update.

The host synchronises with the device only every ``log_interval`` updates (and at the end
of the epoch): then it checks that every loss since the last check was finite, reports
progress and polls the stop flag. Under DDP both flags are agreed over all ranks with one
collective, so every rank stops, or raises, at the same step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from agcn_pyg.train.checkpoint import TrainParts
from agcn_pyg.train.distributed import all_reduce_max, all_reduce_sum
from agcn_pyg.train.logs import Progress
from agcn_pyg.train.signals import StopSignal

__all__ = ["AMP_MODES", "EpochResult", "LoopConfig", "NonFiniteLossError", "resolve_amp",
           "schedule_update", "train_one_epoch"]

#: ``--amp`` choices (``fp32`` is accepted as another name of ``off``).
AMP_MODES = ("auto", "bf16", "fp16", "off")


def resolve_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)`` of an AMP mode: ``auto`` is bf16 on
    GPUs that have it, else fp16 with a GradScaler, and off on the CPU."""
    if mode == "auto":
        if device.type != "cuda":
            return None, False
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode in ("off", "fp32"):
        return None, False
    if mode == "bf16":
        return torch.bfloat16, False
    if mode == "fp16":
        return torch.float16, True
    raise ValueError(f"'amp' must be one of {AMP_MODES} (got {mode!r})")


@dataclass
class LoopConfig:
    """How the loops run: ``device``, autocast ``amp_dtype`` (None = float32),
    ``channels_last`` inputs, ``log_interval`` updates between host syncs,
    ``grad_accum_steps`` batches per optimizer update, ``clip_grad`` (None = no clipping) in
    timm's ``clip_mode`` (``norm``, ``value`` or ``agc``), ``input_size`` (C, H, W) of the
    blank image a DDP rank uses when a batch has no readable image, ``show_progress`` and
    ``distributed`` (the model is wrapped in DDP; collectives agree across ranks)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    log_interval: int = 20
    grad_accum_steps: int = 1
    clip_grad: float | None = None
    clip_mode: str = "norm"
    input_size: tuple[int, int, int] | None = None
    show_progress: bool = False
    distributed: bool = False

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype,
                              enabled=self.amp_dtype is not None)

    def images_to_device(self, images: Tensor) -> Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochResult:
    """What :func:`train_one_epoch` did. ``loss`` is the mean per-image loss (ASL's sum over
    labels) over the images of the steps completed in this epoch, including those before a
    resume (``progress``); ``steps`` counts the batches of the epoch done so far, out of
    ``total_steps``, and ``global_step`` the optimizer updates of the run."""

    loss: float
    steps: int
    images: int
    seconds: float
    total_steps: int = 0
    global_step: int = 0
    interrupted: bool = False
    skipped_batches: int = 0
    progress: dict[str, float] = field(default_factory=dict)


class _LossMonitor:
    """Per-image losses since the last check (kept on the device), and the epoch's sums
    as of the last optimizer update (what a checkpoint at that step holds)."""

    def __init__(self, device, epoch, start_step, total_steps, global_start, accum):
        self.epoch, self.total, self.accum = epoch, total_steps, accum
        self.start, self.global_start = start_step, global_start
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.images = 0
        self.committed = (self.loss_sum.clone(), 0, start_step)
        self.pending: list[Tensor] = []
        self.pending_start = start_step
        self.tick, self.tick_images, self.last_loss = time.perf_counter(), 0, math.nan

    def add(self, loss: Tensor, n: int) -> None:
        self.loss_sum += loss.double()
        self.images += n
        self.tick_images += n
        self.pending.append(loss / n)

    def commit(self, step: int) -> None:
        self.committed = (self.loss_sum.clone(), self.images, step)

    def check(self, step_done: int) -> str | None:
        """The error to raise if a loss since the last check was not finite."""
        pending, first_step = self.pending, self.pending_start
        self.pending, self.pending_start = [], step_done
        if not pending:
            return None
        values = torch.stack(pending).float().cpu()
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            first = first_step + int(bad[0])
            gstep = self.global_start + (first - self.start) // self.accum + 1
            return (f"non-finite training loss ({values[int(bad[0])].item()}) at epoch "
                    f"{self.epoch}, step {first + 1}/{self.total} (global step {gstep}); no "
                    f"checkpoint was written for it. Try a lower --lr, or --amp off "
                    f"(float32) / bf16 instead of fp16.")
        self.last_loss = values[-1].item()
        return None

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.tick_images / max(now - self.tick, 1e-9)
        self.tick, self.tick_images = now, 0
        return rate


_STOPPED = object()


def _batches(loader: DataLoader, stop: StopSignal | None) -> Iterator[Any]:
    it = iter(loader)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except RuntimeError:
            # Ctrl-C reaches DataLoader workers too: they die, and the main process sees it
            # here. Stop like after a signal if one arrived, re-raise otherwise.
            if stop is not None and stop.requested:
                yield _STOPPED
                return
            raise


def _forward_backward(model: nn.Module, parts: TrainParts, batch: Any, criterion: Callable,
                      cfg: LoopConfig, monitor: _LossMonitor, sync: bool) -> bool:
    """Accumulates one batch's gradients; False when there was nothing to back-propagate.

    A batch whose images were all unreadable (``None``) is skipped, except under DDP where
    every rank must run the same collectives: there the rank back-propagates a zero loss on
    a blank image and the gradient all-reduce brings the other ranks' gradients."""
    blank = batch is None
    if blank and not cfg.distributed:
        return False
    if blank:
        if cfg.input_size is None:
            raise RuntimeError("a batch of unreadable images under DDP needs 'input_size'")
        images, targets = torch.zeros(1, *cfg.input_size), None
    else:
        images, targets, _ = batch
        targets = targets.to(cfg.device, non_blocking=True)
    images = cfg.images_to_device(images)
    # Between accumulation boundaries DDP need not all-reduce the gradients.
    with model.no_sync() if cfg.distributed and not sync else contextlib.nullcontext():
        with cfg.autocast():
            logits = model(images)
        loss = logits.float().sum() * 0.0 if blank else criterion(logits, targets)
        (parts.scaler.scale(loss) if parts.scaler is not None else loss).backward()
    if not blank:
        monitor.add(loss.detach(), images.size(0))
    return True


def schedule_update(scheduler: Any, num_updates: int) -> None:
    """One schedule step after an optimizer update: timm schedulers take the update count
    (``step_update``), torch ones a plain ``step()``."""
    if hasattr(scheduler, "step_update"):
        scheduler.step_update(num_updates)
    else:
        scheduler.step()


def _optimizer_update(parts: TrainParts, cfg: LoopConfig, accumulated: bool,
                      global_step: int) -> None:
    """Clips, steps the optimizer (through the scaler) and the EMA, then the schedule; the
    schedule also advances after a batch with nothing to learn from, so it stays a
    function of the position in the epoch."""
    if accumulated:
        if cfg.clip_grad is not None:
            from timm.utils import dispatch_clip_grad

            if parts.scaler is not None:
                parts.scaler.unscale_(parts.optimizer)
            dispatch_clip_grad(parts.model.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
        if parts.scaler is not None:
            parts.scaler.step(parts.optimizer)
            parts.scaler.update()
        else:
            parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        if parts.ema is not None:
            parts.ema.update(parts.model, step=global_step)
    schedule_update(parts.scheduler, global_step)


def _sync_flags(monitor: _LossMonitor, step: int, stop: StopSignal | None,
                cfg: LoopConfig) -> bool:
    """The host sync: raises on a non-finite loss (on any rank), returns whether a stop was
    requested (on any rank)."""
    error = monitor.check(step)
    requested = stop is not None and stop.requested
    if cfg.distributed:
        # One collective for both flags: 2 = a rank saw a non-finite loss, 1 = stop.
        flag = all_reduce_max(2.0 if error else float(requested))
        if flag >= 2 and error is None:
            error = (f"non-finite training loss on another rank in epoch {monitor.epoch} "
                     f"before step {step}/{monitor.total}; no checkpoint was written.")
        requested = flag >= 1
    if error:
        raise NonFiniteLossError(error)
    return requested


def train_one_epoch(parts: TrainParts, loader: DataLoader, criterion: Callable[[Tensor, Tensor],
                    Tensor], cfg: LoopConfig, epoch: int, *, start_step: int = 0,
                    progress: Mapping[str, float] | None = None, global_step: int = 0,
                    stop: StopSignal | None = None, ddp_model: nn.Module | None = None
                    ) -> EpochResult:
    """One epoch of ASL training (Section 3.1) from batch ``start_step`` of epoch ``epoch``
    (1-based), ``global_step`` updates done before it and the loss sums of the steps before
    ``start_step`` in ``progress``. Under DDP (``cfg.distributed``) ``ddp_model`` is the
    wrapped ``parts.model``. A non-finite loss raises :class:`NonFiniteLossError` naming the
    first bad step (the caller must then save nothing). When ``stop`` is requested the loop
    returns after an update with ``interrupted=True``, so that the state can be saved as
    "``steps`` batches of this epoch done"."""
    if cfg.distributed and ddp_model is None:
        raise ValueError("'ddp_model' (the DDP wrapper of parts.model) is needed when "
                         "cfg.distributed is True")
    model = ddp_model if ddp_model is not None else parts.model
    model.train()
    total = start_step + len(loader)
    monitor = _LossMonitor(cfg.device, epoch, start_step, total, global_step,
                           cfg.grad_accum_steps)
    bar = Progress(total, f"train {epoch}", start_step, cfg.show_progress)
    parts.optimizer.zero_grad(set_to_none=True)
    t0, step, skipped, since_check, accumulated = time.perf_counter(), start_step, 0, 0, False
    interrupted = False
    try:
        for batch in _batches(loader, stop):
            if batch is _STOPPED:
                interrupted = True
                break
            step, since_check, skipped = step + 1, since_check + 1, skipped + (batch is None)
            boundary = step % cfg.grad_accum_steps == 0 or step == total
            accumulated |= _forward_backward(model, parts, batch, criterion, cfg, monitor,
                                             sync=boundary)
            bar.update(1)
            if not boundary:
                continue
            global_step += 1
            _optimizer_update(parts, cfg, accumulated, global_step)
            accumulated = False
            monitor.commit(step)
            if since_check >= cfg.log_interval or step == total:
                since_check = 0
                requested = _sync_flags(monitor, step, stop, cfg)
                bar.report(loss=f"{monitor.last_loss:.4g}", img_s=f"{monitor.rate():.1f}",
                           lr=f"{parts.optimizer.param_groups[0]['lr']:.3g}")
                if requested and step < total:
                    interrupted = True
                    break
        if interrupted:
            _sync_flags(monitor, step, None, LoopConfig(cfg.device))  # this rank's losses
    finally:
        bar.close()
    loss_sum, images, step = monitor.committed
    totals = [loss_sum.item(), float(images)]
    if cfg.distributed:
        totals = all_reduce_sum(totals)
    prog = dict(progress or {})
    loss_total = totals[0] + prog.get("loss_sum", 0.0)
    img_total = totals[1] + prog.get("images", 0.0)
    return EpochResult(
        loss=loss_total / img_total if img_total else math.nan, steps=step,
        images=int(img_total), seconds=time.perf_counter() - t0, total_steps=total,
        global_step=global_step, interrupted=interrupted,
        skipped_batches=skipped, progress={"loss_sum": loss_total, "images": img_total})
