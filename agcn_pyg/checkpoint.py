"""Checkpoints that carry everything inference needs, written atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import torch

from agcn_pyg.model import DATA_CONFIG_KEYS, MLAGCN, create_model

FORMAT = "agcn_pyg/1"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary file in ``path``'s folder; on a clean exit flushes it to disk and
    renames it over ``path``, so a crash leaves the old file or the new one, never half of
    one. The file gets the mode a plain ``open`` would give it (mkstemp's is 0600)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Writes ``state`` to ``path`` with :func:`atomic_write`."""
    with atomic_write(path) as f:
        torch.save({"format": FORMAT, **state}, f)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint`, with a clear error for a
    missing file or one that is not an agcn_pyg checkpoint."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    # Our own files hold RNG states and plain containers only, but not only tensors.
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not an agcn_pyg checkpoint (format {FORMAT})")
    return state


def model_config(
    model_name: str,
    num_labels: int,
    num_layers: int = 2,
    hidden_channels: list[int] | None = None,
    head_kwargs: dict | None = None,
    timm_kwargs: dict | None = None,
    data_config: dict | None = None,
) -> dict[str, Any]:
    """The plain-data description of a model stored in every checkpoint under ``config``:
    :func:`model_from_checkpoint` rebuilds the model from it, with no command-line args.
    ``data_config`` holds the eval input size and normalisation (timm's keys)."""
    return dict(
        model_name=model_name,
        num_labels=num_labels,
        num_layers=num_layers,
        hidden_channels=list(hidden_channels) if hidden_channels is not None else None,
        head_kwargs=dict(head_kwargs or {}),
        timm_kwargs=dict(timm_kwargs or {}),
        data_config=dict(data_config or {}),
    )


def model_from_checkpoint(
    checkpoint: str | os.PathLike | dict[str, Any], use_ema: bool = True
) -> tuple[MLAGCN, dict[str, Any]]:
    """Rebuilds the trained model from a checkpoint alone: backbone name, label graph, node
    features and config all travel inside it (keys ``config``, ``adj``, ``node_features``,
    ``label_names``, ``model`` and optionally ``ema``). Returns ``(model, checkpoint)`` with
    the model in eval mode, holding the EMA weights when present and ``use_ema``."""
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    missing = [k for k in ("config", "adj", "node_features", "label_names", "model")
               if k not in state]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}; was it written by agcn_pyg?")
    cfg = state["config"]
    model = create_model(
        cfg["model_name"],
        cfg["num_labels"],
        state["adj"],
        num_layers=cfg["num_layers"],
        hidden_channels=cfg.get("hidden_channels"),
        node_features=state["node_features"],
        learn_node_features=cfg.get("head_kwargs", {}).get("learn_node_features", False),
        head_kwargs={k: v for k, v in cfg.get("head_kwargs", {}).items()
                     if k != "learn_node_features"},
        label_names=state["label_names"],
        **cfg.get("timm_kwargs", {}),
    )
    if cfg.get("data_config"):
        # What the model was trained and evaluated with; agcn_pyg trains with a squash
        # resize (older checkpoints do not say so).
        model.set_data_config({"crop_pct": 1.0, "crop_mode": "squash", **{
            k: v for k, v in cfg["data_config"].items() if k in DATA_CONFIG_KEYS}})
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    model.load_state_dict(weights)
    return model.eval(), state
