"""What a run reports: progress while it runs, and per-epoch records on disk.

* :class:`Progress` draws tqdm's bar on a terminal; anywhere else (a log file, a pipe, a
  cluster's captured output) it prints one plain line per report, with no carriage returns.
* :class:`RunLogger` keeps ``log.jsonl`` (one JSON record per epoch, every metric),
  ``summary.csv`` (one row per epoch: timm's ``epoch, train_loss, eval_loss, ..., lr``
  columns plus ours), TensorBoard events under ``tensorboard/`` when TensorBoard is
  installed (``pip install agcn_pyg[tensorboard]``), and the PNG curves at the end. The
  files are rewritten whole from the run's history after every epoch, atomically, so they
  always agree with ``last.pth`` (also after a resume).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

from agcn_pyg.io import atomic_write
from agcn_pyg.train.metrics import TABLE_COLUMNS

__all__ = ["Progress", "RunLogger", "is_terminal", "json_safe", "summary_row"]


def is_terminal(stream: IO | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where tqdm draws) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A progress report over ``total`` steps named ``desc``: tqdm's bar on a terminal, else
    a plain line on stdout for every :meth:`report` (the caller reports every
    ``--log-interval`` steps). ``enabled=False`` shows nothing."""

    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True):
        self.total, self.desc, self.n = total, desc, initial
        self.bar = None
        self.plain = enabled and not is_terminal()
        if enabled and not self.plain:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                            leave=False)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)

    def report(self, **values: str) -> None:
        """Shows ``values`` (already formatted) next to the position."""
        if self.bar is not None:
            self.bar.set_postfix(values)
        elif self.plain:
            shown = " ".join(f"{k} {v}" for k, v in values.items())
            print(f"{self.desc} [{self.n}/{self.total}] {shown}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def summary_row(record: dict[str, Any]) -> dict[str, Any]:
    """One ``summary.csv`` row of an epoch record: ``epoch``, ``train_loss``, ``eval_loss``,
    ``eval_<metric>`` (mAP, CP, CR, CF1, OP, OR, OF1) of the model and ``eval_ema_...`` of
    its EMA, ``lr``, then the best mAP so far, images per second and seconds."""
    row = {"epoch": record["epoch"], "train_loss": record["train_loss"],
           "eval_loss": record["val_loss"]}
    row.update({f"eval_{k}": (record.get("model") or {}).get(k) for k in TABLE_COLUMNS})
    if record.get("ema"):
        row["eval_ema_loss"] = record["val_loss_ema"]
        row.update({f"eval_ema_{k}": record["ema"].get(k) for k in TABLE_COLUMNS})
    for k in ("lr", "best_mAP", "best_epoch", "train_images_per_s", "epoch_seconds"):
        row[k] = record.get(k)
    return row


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


class RunLogger:
    """Writes a run's records into ``folder`` (only where ``enabled``: rank 0).

    Args:
        folder (str): The run folder.
        enabled (bool, optional): Write anything at all. (default: :obj:`True`)
        tensorboard (bool, optional): Also write TensorBoard events when it is installed.
        start_epoch (int, optional): Epochs already done (a resume): TensorBoard events of
            later epochs left by the interrupted run are purged.
    """

    def __init__(self, folder: str, enabled: bool = True, tensorboard: bool = True,
                 start_epoch: int = 0):
        self.folder, self.enabled = folder, enabled
        self.log_path = os.path.join(folder, "log.jsonl")
        self.summary_path = os.path.join(folder, "summary.csv")
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # an optional extra
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(os.path.join(folder, "tensorboard"),
                                            purge_step=start_epoch + 1)

    def write(self, history: Sequence[dict[str, Any]], new: bool = True) -> None:
        """Rewrites ``log.jsonl`` and ``summary.csv`` from ``history``; with ``new`` the
        last record is a new epoch, also sent to TensorBoard."""
        if not self.enabled:
            return
        with atomic_write(self.log_path, "w") as f:
            f.writelines(json.dumps(json_safe(r)) + "\n" for r in history)
        if history:
            with atomic_write(self.summary_path, "w") as f:
                f.write(_csv_text([summary_row(r) for r in history]))
        if new and history and self.writer is not None:
            row = summary_row(history[-1])
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(k.replace("eval_", "eval/", 1)
                                           .replace("train_", "train/", 1), v, row["epoch"])
            self.writer.flush()

    def close(self) -> list[str]:
        """Closes TensorBoard and draws the curves; returns the PNG paths."""
        if not self.enabled:
            return []
        if self.writer is not None:
            self.writer.close()
        from agcn_pyg.train.curves import plot_curves

        return plot_curves(self.log_path)
