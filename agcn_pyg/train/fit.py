"""The epoch loop of a run: train, evaluate the model and its EMA, keep the best, write the
checkpoints and the logs, stop cleanly on a signal.

Per epoch, rank 0 writes ``last.pth`` (everything to resume), then ``best.pth`` when the
better of the model and its EMA beats every earlier epoch (the weights alone), then the
``--checkpoint-hist`` weights, then ``log.jsonl``/``summary.csv``: a kill at any moment
leaves files that agree with each other or that a resume repairs
(:meth:`~agcn_pyg.train.RunFolder.repair_best`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from agcn_pyg.train.checkpoint import (
    ModelSpec,
    TrainParts,
    TrainState,
    checkpoint_nbytes,
    restore_training,
    save_checkpoint,
    training_checkpoint,
    weights_checkpoint,
)
from agcn_pyg.train.distributed import all_gather_object, all_reduce_max, on_main
from agcn_pyg.train.evaluation import evaluate
from agcn_pyg.train.logs import RunLogger
from agcn_pyg.train.loop import EpochResult, LoopConfig, train_one_epoch
from agcn_pyg.train.metrics import format_table
from agcn_pyg.train.recipe import schedule_epoch
from agcn_pyg.train.run_dir import RunFolder
from agcn_pyg.train.seeding import capture_rng_state, derive_seed, seed_everything
from agcn_pyg.train.signals import StopSignal

__all__ = ["FitConfig", "Trainer"]


@dataclass
class FitConfig:
    """``epochs`` to reach, ``seed`` of the run, ``threshold`` of the CP/CR/... metrics,
    ``checkpoint_hist`` best weights kept besides ``best.pth`` (1: best.pth only), this
    process's ``rank`` (rank 0 writes and prints)."""

    epochs: int
    seed: int = 0
    threshold: float = 0.5
    checkpoint_hist: int = 1
    rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _better(candidates: dict[str, float]) -> str:
    return max(candidates, key=lambda k: -math.inf if math.isnan(candidates[k])
               else candidates[k])


@dataclass
class Trainer:
    """Everything a run's epoch loop needs. ``criterion`` is the training loss (a sum),
    ``eval_criterion`` the per-element one (``reduction='none'``); ``ddp_model`` is the
    DDP wrapper of ``parts.model`` when ``loop.distributed`` (made here when not given);
    ``say`` prints (a no-op on ranks other than 0); ``tensorboard`` adds TensorBoard
    events when it is installed; ``data`` (:func:`~agcn_pyg.train.checkpoint.data_record`)
    is kept in ``last.pth``."""

    parts: TrainParts
    spec: ModelSpec
    train_loader: DataLoader
    val_loader: DataLoader
    criterion: Callable
    eval_criterion: Callable
    loop: LoopConfig
    cfg: FitConfig
    folder: RunFolder
    run_config: dict[str, Any]
    state: TrainState = field(default_factory=TrainState)
    ddp_model: nn.Module | None = None
    say: Callable[..., Any] = print
    tensorboard: bool = True
    data: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.loop.distributed and self.ddp_model is None:
            device = self.loop.device
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.parts.model, device_ids=[device.index] if device.type == "cuda" else None)

    def resume(self, checkpoint: dict[str, Any]) -> None:
        """Continues the run of a training checkpoint: restores the parts, this rank's RNGs
        and the state; rank 0 checks ``best.pth`` against it
        (:meth:`~agcn_pyg.train.RunFolder.repair_best`) and every rank takes its answer."""
        self.state = restore_training(checkpoint, self.parts, rank=self.cfg.rank)
        best = on_main(self.folder.repair_best, checkpoint, self.say)
        self.state.best = all_gather_object(best)[0]
        self.state.kept = [k for k in self.state.kept if os.path.isfile(
            os.path.join(self.folder.path, k["file"]))]

    def check_free_space(self) -> None:
        """Fails before the first epoch when ``last.pth``, ``best.pth`` and the kept
        weights would not fit on the run folder's disk (rank 0)."""
        training, weights = checkpoint_nbytes(self.parts)
        hist = self.cfg.checkpoint_hist if self.cfg.checkpoint_hist > 1 else 0
        on_main(self.folder.check_free_space, training + weights * (1 + hist))

    def fit(self) -> int:
        """Runs the epochs left; returns 0, or 128 + signal number after a stop."""
        logger = RunLogger(self.folder.path, self.cfg.is_main, self.tensorboard,
                           start_epoch=self.state.epoch)
        logger.write(self.state.history, new=False)  # consistent with the checkpoint
        with StopSignal() as stop:
            for epoch in range(self.state.epoch, self.cfg.epochs):
                result = self._train_epoch(epoch, stop)
                if result.interrupted:
                    self._save(epoch, result.steps, result.progress)
                    self.say(f"Stopped at epoch {epoch + 1}, step {result.steps}/"
                             f"{result.total_steps}; wrote {self.folder.last}. Continue "
                             f"with --resume {self.folder.last}")
                    return stop.exit_code
                self._end_epoch(epoch, result, logger)
                requested = stop.requested
                if self.loop.distributed:
                    requested = all_reduce_max(float(requested)) > 0
                if requested:
                    self.say(f"Stopped after epoch {epoch + 1}; continue with --resume "
                             f"{self.folder.last}")
                    return stop.exit_code
        self._report(logger.close())
        return 0

    def _train_epoch(self, epoch: int, stop: StopSignal) -> EpochResult:
        state, loader = self.state, self.train_loader
        skip = state.step if epoch == state.epoch else 0
        loader.sampler.set_epoch(epoch, skip=skip * loader.batch_size)
        seed_everything(derive_seed(self.cfg.seed, epoch, self.cfg.rank, skip))
        result = train_one_epoch(
            self.parts, loader, self.criterion, self.loop, epoch + 1, start_step=skip,
            progress=state.epoch_progress if skip else None, global_step=state.global_step,
            stop=stop, ddp_model=self.ddp_model)
        state.global_step = result.global_step
        state.epoch_progress = {}
        if result.skipped_batches:
            self.say(f"Warning: {result.skipped_batches} training batch(es) had no readable "
                     f"image and were skipped")
        return result

    def _end_epoch(self, epoch: int, result: EpochResult, logger: RunLogger) -> None:
        parts = self.parts
        models = {"model": parts.model, **({"EMA": parts.ema.module} if parts.ema else {})}
        results = evaluate(models, self.val_loader, self.loop,
                           num_labels=len(self.spec.label_names), threshold=self.cfg.threshold,
                           criterion=self.eval_criterion, desc=f"eval {epoch + 1}")
        m, e = results["model"], results.get("EMA")
        candidates = {"model": m["mAP"], **({"ema": e["mAP"]} if e else {})}
        source = _better(candidates)
        best = self.state.best
        is_best = not math.isnan(candidates[source]) and candidates[source] > best["mAP"]
        if is_best:
            self.state.best = best = {"mAP": candidates[source], "epoch": epoch + 1,
                                      "source": source}
        schedule_epoch(parts.scheduler, epoch + 1, candidates[source])
        record = {
            "epoch": epoch + 1, "train_loss": result.loss, "val_loss": m["loss"],
            "val_loss_ema": e["loss"] if e else None, "mAP": m["mAP"],
            "mAP_ema": e["mAP"] if e else None, "lr": parts.optimizer.param_groups[0]["lr"],
            "train_images_per_s": result.images / max(result.seconds, 1e-9),
            "epoch_seconds": result.seconds, "best_mAP": best["mAP"],
            "best_epoch": best["epoch"], "model": m, "ema": e}
        self.state.history.append(record)
        self._save(epoch + 1, 0, None, best=is_best, source=source,
                   mAP=candidates[source])
        logger.write(self.state.history)
        self.say(f"\nEpoch {epoch + 1}/{self.cfg.epochs}: train loss {result.loss:.4f}, "
                 f"val loss {m['loss']:.4f}, {record['train_images_per_s']:.1f} img/s, "
                 f"lr {record['lr']:.3g}, best mAP {best['mAP']:.2f} "
                 f"(epoch {best['epoch']}, {best['source']})")
        self.say(format_table(results))

    def _save(self, epoch: int, step: int, progress: dict | None, best: bool = False,
              source: str = "model", mAP: float = math.nan) -> None:
        """Writes ``last.pth`` as "``epoch`` epochs and ``step`` steps done" (a collective:
        every rank calls), then on an epoch end ``best.pth`` and the kept weights."""
        state = self.state
        state.epoch, state.step, state.epoch_progress = epoch, step, dict(progress or {})
        rng = all_gather_object(capture_rng_state())
        on_main(self._write, epoch, step == 0, best, source, mAP, rng)

    def _write(self, epoch: int, epoch_end: bool, best: bool, source: str, mAP: float,
               rng: list) -> None:
        """Rank 0's writes of :meth:`_save`: last.pth, then best.pth, then kept weights."""
        dropped = self._keep(epoch, mAP) if epoch_end else []
        last = training_checkpoint(self.spec, self.parts, self.state, rng, self.run_config,
                                   self.data)
        save_checkpoint(last, self.folder.last)
        if best:
            save_checkpoint(weights_checkpoint(last), self.folder.best)
        if epoch_end and any(k["epoch"] == epoch for k in self.state.kept):
            save_checkpoint(weights_checkpoint(last, source), self.folder.hist_path(epoch))
        for path in dropped:
            if os.path.isfile(path):
                os.remove(path)

    def _keep(self, epoch: int, mAP: float) -> list[str]:
        """Updates ``state.kept`` (``--checkpoint-hist``) with this epoch; returns the files
        that dropped out."""
        k = self.cfg.checkpoint_hist
        if k <= 1 or math.isnan(mAP):
            return []
        kept = sorted([*self.state.kept, {"epoch": epoch, "mAP": mAP,
                                          "file": os.path.basename(self.folder.hist_path(epoch))}],
                      key=lambda r: -r["mAP"])
        self.state.kept = kept[:k]
        return [os.path.join(self.folder.path, r["file"]) for r in kept[k:]]

    def _report(self, plots: list[str]) -> None:
        history, best = self.state.history, self.state.best
        if history:
            last = history[-1]
            rows = {"model": last["model"], **({"EMA": last["ema"]} if last["ema"] else {})}
            self.say(f"\nFinal (epoch {last['epoch']}):")
            self.say(format_table(rows))
            self.say(f"Best mAP {best['mAP']:.2f} at epoch {best['epoch']} ({best['source']}); "
                     f"checkpoints {self.folder.last}, {self.folder.best}")
        self.say(f"Log {self.folder.log}; plots {', '.join(plots)}")
