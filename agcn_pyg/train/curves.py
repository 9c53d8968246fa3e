"""Loss and mAP curves as PNG files, from a run's JSON-lines log.

Each line of ``log.jsonl`` (written by :class:`~agcn_pyg.train.RunLogger`) is one epoch's
record; the keys read here are ``epoch``, ``train_loss``, ``val_loss``, ``val_loss_ema``,
``mAP`` and ``mAP_ema`` (missing or ``null`` values are skipped). The figures are
:class:`matplotlib.figure.Figure` objects drawn straight to PNG: pyplot and the caller's
matplotlib backend are never touched, so this works on a headless server and inside a
notebook alike.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["plot_curves", "read_log"]


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines log, in file order; blank lines are ignored."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"'{path}' line {lineno} is not JSON: {e}") from None
    return records


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and v == v:  # skips None and NaN
            xs.append(r["epoch"])
            ys.append(float(v))
    return xs, ys


_PLOTS = (
    ("loss.png", "ASL loss per image", "loss",
     {"train_loss": "train", "val_loss": "val (model)", "val_loss_ema": "val (EMA)"}),
    ("map.png", "Validation mAP", "mAP (%)", {"mAP": "model", "mAP_ema": "EMA"}),
)


def plot_curves(log_path: str | os.PathLike, out_dir: str | os.PathLike | None = None
                ) -> list[str]:
    """Writes ``loss.png`` (training and validation loss per image) and ``map.png``
    (validation mAP of the model and its EMA) next to the log, or into ``out_dir``.

    Returns:
        The paths written (none when the log is empty).
    """
    from matplotlib.figure import Figure

    from agcn_pyg.io import atomic_write

    records = read_log(log_path)
    if not records:
        return []
    out_dir = os.fspath(out_dir) if out_dir is not None else os.path.dirname(
        os.path.abspath(log_path))
    written = []
    for name, title, ylabel, keys in _PLOTS:
        fig = Figure(figsize=(6, 4), dpi=100)  # no pyplot: no global figure, no backend
        ax = fig.add_subplot()
        for key, label in keys.items():
            xs, ys = _series(records, key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        with atomic_write(path) as f:
            fig.savefig(f, format="png")
        written.append(path)
    return written
