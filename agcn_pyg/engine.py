"""Training and evaluation loops, reproducible data order, RNG capture and resume.

**Reproducibility.** A training run is a deterministic function of ``(seed, epoch)``:

* the image order of an epoch is :class:`~torch.utils.data.DistributedSampler`'s permutation
  seeded with ``seed + epoch`` (one process is the one-replica case), so every rank agrees;
* the augmentation of image ``i`` in epoch ``e`` draws from Python, NumPy and torch RNGs
  seeded with ``(seed, e, i)`` just for that image (:class:`SeededDataset`), so it does not
  depend on the number of workers, their persistence, the world size, or where a resumed
  run started;
* the process RNGs (dropout, drop-path) are reseeded at the start of each epoch from
  ``(seed, epoch, rank)``.

A run resumed from an epoch boundary therefore repeats the uninterrupted one (bit for bit on
the CPU; on GPUs up to the nondeterminism of cuDNN kernels). A run resumed from a mid-epoch
checkpoint (:class:`StopSignal`) skips the images already seen in that epoch and sees the
same augmented images as the uninterrupted run.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from agcn_pyg.data import collate_skip_corrupt
from agcn_pyg.metrics import gather_predictions, multilabel_metrics

__all__ = [
    "EpochResult",
    "EpochSampler",
    "NonFiniteLossError",
    "SeededDataset",
    "StopSignal",
    "build_eval_loader",
    "build_train_loader",
    "capture_rng_state",
    "derive_seed",
    "evaluate",
    "load_training_state",
    "restore_rng_state",
    "seed_everything",
    "train_one_epoch",
]


# ---------------------------------------------------------------------------------------
# Seeds and RNG states
# ---------------------------------------------------------------------------------------


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from a tuple of non-negative integers (NumPy's
    :class:`~numpy.random.SeedSequence`): nearby keys give unrelated streams."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's (CPU and every CUDA device) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of Python, NumPy, torch and CUDA (``None`` without CUDA)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restores what :func:`capture_rng_state` captured. CUDA states are restored only when
    the device count matches (a checkpoint moved to another machine keeps going)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.as_tensor(s).cpu() for s in cuda])
        else:
            warnings.warn(
                f"checkpoint holds CUDA RNG states of {len(cuda)} devices, this machine has "
                f"{torch.cuda.device_count()}: CUDA RNGs not restored",
                stacklevel=2,
            )


# ---------------------------------------------------------------------------------------
# Data: seeded per-image augmentation, epoch-seeded order, loaders
# ---------------------------------------------------------------------------------------


class SeededDataset(Dataset):
    """Wraps a dataset so that ``dataset[(index, seed)]`` transforms image ``index`` with
    every global RNG seeded by ``seed``, then puts the RNGs back as they were. A plain
    integer key reads the item untouched. See :class:`EpochSampler`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                seed_everything(seed)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def __getattr__(self, name: str):
        # Forward dataset attributes (labels, label_names, image_paths, ...).
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class EpochSampler(Sampler):
    """This rank's share of a :class:`~torch.utils.data.DistributedSampler` permutation
    (seeded with ``seed + epoch``), yielding ``(index, seed(seed, epoch, index))`` keys for
    :class:`SeededDataset`.

    ``set_epoch(epoch, skip=k)`` also drops the first ``k`` samples of the rank's share, to
    resume in the middle of an epoch.
    """

    def __init__(self, dataset_len: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 drop_last: bool = False):
        class _Sized:
            def __len__(self):
                return dataset_len

        self.base = DistributedSampler(_Sized(), num_replicas=num_replicas, rank=rank,
                                       shuffle=True, seed=seed, drop_last=drop_last)
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in list(self.base)[self.skip:]:
            yield i, derive_seed(self.seed, self.epoch, i)


def _loader_kwargs(workers: int, pin_memory: bool, persistent_workers: bool,
                   prefetch_factor: int | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(num_workers=workers, pin_memory=pin_memory,
                                  collate_fn=collate_skip_corrupt)
    if workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return kwargs


def build_train_loader(dataset: Dataset, batch_size: int, seed: int, rank: int = 0,
                       world_size: int = 1, workers: int = 0, pin_memory: bool = False,
                       persistent_workers: bool = True, prefetch_factor: int | None = None,
                       drop_last: bool = True) -> DataLoader:
    """A training loader whose order and augmentations are functions of ``(seed, epoch)``.
    Call ``loader.sampler.set_epoch(epoch)`` before each epoch. ``drop_last`` is ignored
    when a rank's share is smaller than one batch."""
    sampler = EpochSampler(len(dataset), world_size, rank, seed)
    drop_last = drop_last and len(sampler) >= batch_size
    return DataLoader(SeededDataset(dataset), batch_size=batch_size, sampler=sampler,
                      drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed),  # keeps global RNG out
                      **_loader_kwargs(workers, pin_memory, persistent_workers, prefetch_factor))


def build_eval_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                      workers: int = 0, pin_memory: bool = False,
                      persistent_workers: bool = True,
                      prefetch_factor: int | None = None) -> DataLoader:
    """An evaluation loader; under DDP each rank reads a shard (the sampler pads the last
    round with repeats, which :func:`evaluate` removes by dataset index)."""
    sampler = (DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
               if world_size > 1 else None)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      **_loader_kwargs(workers, pin_memory, persistent_workers, prefetch_factor))


# ---------------------------------------------------------------------------------------
# Graceful stop
# ---------------------------------------------------------------------------------------


class StopSignal:
    """Turns SIGINT / SIGTERM into a flag the training loop polls, so it can stop after the
    current step and write a checkpoint. A second signal raises :class:`KeyboardInterrupt`
    at once (checkpoints are atomic, so the last one on disk stays valid).

    Use as a context manager; outside the main thread it installs nothing.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = signals
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}")
        self.signum = signum
        print(f"\nReceived {signal.Signals(signum).name}: stopping after the current step "
              f"and writing a checkpoint (send it again to stop at once).",
              file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochResult:
    """What :func:`train_one_epoch` did. ``loss`` is the mean per-image loss (ASL's sum over
    labels) over the images of the steps completed in this epoch, including those before a
    resume (``progress``)."""

    loss: float
    steps: int
    images: int
    seconds: float
    interrupted: bool = False
    skipped_batches: int = 0
    progress: dict[str, float] = field(default_factory=dict)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def _to_device(images: Tensor, targets: Tensor, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: Callable[[Tensor, Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    epoch: int,
    *,
    scaler: torch.amp.GradScaler | None = None,
    ema: Any = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    start_step: int = 0,
    progress: Mapping[str, float] | None = None,
    global_step: int = 0,
    log_interval: int = 20,
    stop: StopSignal | None = None,
    reduce_max: Callable[[float], float] | None = None,
    reduce_sums: Callable[[list[float]], list[float]] | None = None,
    input_size: tuple[int, int, int] | None = None,
    show_progress: bool = False,
) -> EpochResult:
    """One epoch of ASL training (Section 3.1), from step ``start_step`` of the epoch.

    Per step: forward under autocast (``amp_dtype``), loss in float32, backward through the
    ``scaler`` (fp16), optimizer step, one ``scheduler.step()`` and one EMA update.

    The host synchronises with the device only every ``log_interval`` steps (and at the end):
    then it checks that every loss since the last check was finite, refreshes the progress
    bar and polls ``stop``. A non-finite loss raises :class:`NonFiniteLossError` naming the
    first bad step; the caller must then save nothing. When ``stop`` was requested (on any
    rank: ``reduce_max``, the maximum over ranks, spreads the flag; it also spreads a
    non-finite loss, so that every rank raises together), the loop returns with
    ``interrupted=True``
    after a checked step, so the state can be saved as "``steps`` steps of this epoch done".

    A batch whose images were all unreadable (``None`` from
    :func:`~agcn_pyg.collate_skip_corrupt`) skips the optimizer step but still advances the
    schedule, so the schedule stays a function of the position in the epoch. Under DDP every
    rank must run the same collectives, so such a rank instead back-propagates a zero loss
    on a blank image (``input_size``) and the gradient all-reduce takes the other ranks'.
    """
    from tqdm import tqdm

    distributed = reduce_max is not None
    model.train()
    unwrapped = getattr(model, "module", model)
    prog = dict(progress or {})
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    images_seen = 0
    skipped = 0
    pending: list[Tensor] = []  # per-image losses since the last check
    pending_start = start_step
    total_steps = start_step + len(loader)
    t0 = tick = time.perf_counter()
    tick_images = 0
    step = start_step
    global_start = global_step
    interrupted = False

    bar = tqdm(total=total_steps, initial=start_step, desc=f"train {epoch}",
               disable=not show_progress, dynamic_ncols=True, leave=False)

    def check(step_done: int) -> str | None:
        """Checks the losses since the last check; returns the error to raise, if any."""
        nonlocal pending, pending_start, tick, tick_images
        if pending:
            values = torch.stack(pending).float().cpu()
            bad = (~torch.isfinite(values)).nonzero()
            if len(bad):
                first = pending_start + int(bad[0])
                gstep = global_start + first - start_step + 1
                return (
                    f"non-finite training loss ({values[int(bad[0])].item()}) at epoch {epoch}, "
                    f"step {first + 1}/{total_steps} (global step {gstep}); "
                    f"no checkpoint was written for it. Try a lower --lr, or --amp off "
                    f"(float32) / bf16 instead of fp16."
                )
            now = time.perf_counter()
            rate = tick_images / max(now - tick, 1e-9)
            bar.set_postfix(loss=f"{values[-1].item():.4g}", img_s=f"{rate:.1f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.3g}")
            tick, tick_images = now, 0
        pending, pending_start = [], step_done
        return None

    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            break
        except RuntimeError:
            # Ctrl-C reaches DataLoader workers too: they die, and the main process sees it
            # here. Stop like after a signal if one arrived, re-raise otherwise.
            if stop is not None and stop.requested:
                interrupted = True
                break
            raise

        blank = batch is None
        if blank:
            skipped += 1
            if not distributed:
                scheduler.step()
                global_step += 1
                step += 1
                bar.update(1)
                continue
            if input_size is None:
                raise RuntimeError("a batch of unreadable images under DDP needs 'input_size'")
            images = torch.zeros(1, *input_size)
            targets = None
        else:
            images, targets, _ = batch
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if targets is not None:
            targets = targets.to(device, non_blocking=True)

        with _autocast(device, amp_dtype):
            logits = model(images)
        if blank:
            loss = logits.float().sum() * 0.0
        else:
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        global_step += 1
        if ema is not None:
            ema.update(unwrapped, step=global_step)

        step += 1
        bar.update(1)
        if not blank:
            n = images.size(0)
            loss_sum += loss.detach().double()
            images_seen += n
            tick_images += n
            pending.append(loss.detach() / n)

        if (step - start_step) % log_interval == 0 or step == total_steps:
            error = check(step)
            requested = stop is not None and stop.requested
            if distributed:
                # One collective for both flags: 2 = a rank saw a non-finite loss, 1 = stop.
                flag = reduce_max(2.0 if error else float(requested))
                if flag >= 2 and error is None:
                    error = (f"non-finite training loss on another rank in epoch {epoch} "
                             f"before step {step}/{total_steps}; no checkpoint was written.")
                requested = flag >= 1
            if error:
                raise NonFiniteLossError(error)
            if requested and step < total_steps:
                interrupted = True
                break
    error = check(step)
    bar.close()
    if error:
        raise NonFiniteLossError(error)

    loss_total, img_total = loss_sum.item(), float(images_seen)
    if reduce_sums is not None:
        loss_total, img_total = reduce_sums([loss_total, img_total])
    loss_total += prog.get("loss_sum", 0.0)
    img_total += prog.get("images", 0.0)
    return EpochResult(
        loss=loss_total / img_total if img_total else math.nan,
        steps=step,
        images=int(img_total),
        seconds=time.perf_counter() - t0,
        interrupted=interrupted,
        skipped_batches=skipped,
        progress={"loss_sum": loss_total, "images": img_total},
    )


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    models: Mapping[str, nn.Module],
    loader: DataLoader,
    device: torch.device,
    *,
    num_labels: int,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    threshold: float = 0.5,
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
    show_progress: bool = False,
    desc: str = "eval",
) -> dict[str, dict[str, float]]:
    """Scores every model in ``models`` on one pass over ``loader`` and returns, per model,
    :func:`~agcn_pyg.multilabel_metrics` plus ``num_images`` and, with a ``criterion`` whose
    reduction is ``'none'``, ``loss`` (mean per-image ASL loss).

    Under DDP the predictions of all ranks are gathered and de-duplicated by dataset index
    (:func:`~agcn_pyg.metrics.gather_predictions`), so every validation image counts once;
    every rank gets the result. Unreadable images are left out, with a warning.
    """
    from tqdm import tqdm

    for m in models.values():
        m.eval()
    scores: dict[str, list[Tensor]] = {k: [] for k in models}
    losses: dict[str, list[Tensor]] = {k: [] for k in models}
    targets_all: list[Tensor] = []
    indices_all: list[Tensor] = []
    for batch in tqdm(loader, desc=desc, disable=not show_progress, dynamic_ncols=True,
                      leave=False):
        if batch is None:
            continue
        images, targets, idx = batch
        images, targets_dev = _to_device(images, targets, device, channels_last)
        for name, m in models.items():
            with _autocast(device, amp_dtype):
                logits = m(images)
            logits = logits.float()
            scores[name].append(torch.sigmoid(logits).cpu())
            if criterion is not None:
                losses[name].append(criterion(logits, targets_dev).sum(1).cpu())
        targets_all.append(targets.bool().cpu())
        indices_all.append(torch.as_tensor(idx).long().cpu())

    def cat(parts: list[Tensor], shape: tuple[int, ...], dtype) -> Tensor:
        return torch.cat(parts) if parts else torch.zeros(shape, dtype=dtype)

    indices = cat(indices_all, (0,), torch.long)
    targets = cat(targets_all, (0, num_labels), torch.bool)
    results: dict[str, dict[str, float]] = {}
    total = len(loader.dataset)
    for name in models:
        s, t, i = gather_predictions(cat(scores[name], (0, num_labels), torch.float32),
                                     targets, indices)
        if s.size(0) == 0:
            raise ValueError(f"{desc}: none of the {total} images could be read")
        res = multilabel_metrics(s, t, threshold)
        res["num_images"] = int(s.size(0))
        if criterion is not None:
            per_image = cat(losses[name], (0,), torch.float32)
            lv, _, _ = gather_predictions(per_image[:, None], torch.zeros_like(per_image[:, None],
                                          dtype=torch.uint8), indices)
            res["loss"] = lv.double().mean().item()
        results[name] = res
    n = next(iter(results.values()))["num_images"]
    if n < total:
        warnings.warn(f"{desc}: {total - n} of {total} images were unreadable and are left out "
                      f"of the metrics", stacklevel=2)
    return results


# ---------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------


def load_training_state(
    checkpoint: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    ema: Any = None,
    rank: int = 0,
) -> None:
    """Restores model, EMA, optimizer, scheduler, grad scaler and this rank's RNG states
    from a training checkpoint (see ``examples/coco_train.py`` for its keys)."""
    getattr(model, "module", model).load_state_dict(checkpoint["model"])
    if ema is not None:
        ema_state = checkpoint.get("ema_resume") or checkpoint.get("ema")
        if ema_state is None:
            raise ValueError("checkpoint has no EMA weights but EMA is enabled")
        ema.module.load_state_dict(ema_state)
    if optimizer is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint.get("rng")
    if rng:
        restore_rng_state(rng[rank] if rank < len(rng) else rng[0])
