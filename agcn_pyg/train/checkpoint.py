"""The checkpoint format: what a training run saves, how it is written, read and loaded.

This module is the one owner of every checkpoint key. Two kinds of file share the format
(``format`` = :data:`FORMAT`, readable with ``torch.load(path, weights_only=True)``: plain
dicts, lists, tensors, strings and numbers, no pickled objects):

* a **training** checkpoint (``kind="training"``, ``last.pth``) holds everything a resumed
  run needs: the model spec (below), ``model`` and ``ema`` weights, ``optimizer``,
  ``scheduler`` and ``scaler`` states, the :class:`TrainState` (``epoch``, ``step``,
  ``global_step``, ``epoch_progress``, ``best``, ``history``, ``kept``), every rank's RNG
  states (``rng``), the resolved command line (``run_config``) and what identifies the data
  it trains on (``data``, :func:`data_record`: a resume on other data is refused by
  :func:`data_changes`, since the schedule's length and the image order depend on it);
* a **weights** checkpoint (``kind="weights"``, ``best.pth``, ``checkpoint-<epoch>.pth``)
  holds the model spec and, under ``model``, the one set of weights to use (the raw model or
  its EMA, ``weights_source``), with ``epoch``, ``best`` and ``run_config``; no optimizer.

The **model spec** (:class:`ModelSpec`) rebuilds the model with no other file:
``config`` (:func:`model_config`), ``label_names``, ``adj`` (the label graph :math:`A`)
and ``node_features``. ``config["adjacency"]`` names the reading of :math:`A` that ``adj``
holds (:meth:`~agcn_pyg.LabelGraph.adjacency`'s ``kind``); checkpoints written before it was
recorded hold the raw co-occurrence and read as ``"cooccurrence"``
(:attr:`ModelSpec.adjacency_kind`). The stored ``adj`` is what a loaded or resumed model
uses, whatever the current default.

Files are written with :func:`atomic_write` (a crash leaves the old file or the new one);
:func:`load_checkpoint` turns a missing, empty, truncated, foreign or newer file into one
clear line. :func:`load_model` is the one loader for inference (predict, plot, export).
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from agcn_pyg.io import atomic_write, load_tensors, os_error_behind
from agcn_pyg.models.linear import create_linear_model
from agcn_pyg.models.linear import set_data_config as linear_data_config
from agcn_pyg.models.mlagcn import DATA_CONFIG_KEYS, MLAGCN, create_model, from_pretrained
from agcn_pyg.train.seeding import restore_rng_state

__all__ = [
    "FORMAT",
    "LEGACY_ADJACENCY",
    "CheckpointError",
    "CheckpointWriteError",
    "LoadedModel",
    "ModelSpec",
    "TrainParts",
    "TrainState",
    "checkpoint_nbytes",
    "data_changes",
    "data_record",
    "load_checkpoint",
    "load_model",
    "model_config",
    "model_from_checkpoint",
    "restore_training",
    "save_checkpoint",
    "training_checkpoint",
    "weights_checkpoint",
]

#: Version tag of the format; bumped when a key changes meaning.
FORMAT = "agcn_pyg/2"


class CheckpointError(ValueError):
    """A file that is not a readable agcn_pyg checkpoint; the message is one line."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous file at the
    same path is intact. The message is one line."""


# ---------------------------------------------------------------------------------------
# Writing and reading
# ---------------------------------------------------------------------------------------


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes ``state`` (plus the ``format`` tag) to ``path`` with :func:`atomic_write`.

    Raises:
        CheckpointWriteError: the write failed for lack of space or another OS error; the
            file previously at ``path`` is untouched and no temporary file is left.
    """
    path = os.fspath(path)
    try:
        with atomic_write(path) as f:
            torch.save({"format": FORMAT, **state}, f)
    except Exception as e:
        os_error = os_error_behind(e)
        if os_error is None:
            raise
        reason = os_error.strerror or str(os_error)
        raise CheckpointWriteError(
            os_error.errno, f"cannot write checkpoint '{path}': {reason}; the previous "
            f"file there is intact") from e


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Reads a file written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is empty, truncated, not a torch file, holds pickled
            objects, is not an agcn_pyg checkpoint, or has another format version.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"'{path}' is a folder, not a checkpoint file (load_model reads "
                              f"save_pretrained folders)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes)")
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise CheckpointError(f"'{path}' is not a PyTorch checkpoint (not a torch.save zip "
                              f"archive)")
    try:
        state = load_tensors(path, map_location)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and "Weights only" in str(e):
            raise CheckpointError(
                f"'{path}' holds pickled Python objects, not an {FORMAT} checkpoint (files "
                f"of agcn_pyg/1 and other programs need torch.load(weights_only=False), "
                f"only for files you trust)") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or damaged ({first[:120]})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"'{path}' is not an agcn_pyg checkpoint (no 'format' key)")
    if state["format"] != FORMAT:
        raise CheckpointError(
            f"'{path}' has checkpoint format {state['format']!r}; this agcn_pyg reads "
            f"{FORMAT!r}")
    return state


# ---------------------------------------------------------------------------------------
# What a checkpoint holds
# ---------------------------------------------------------------------------------------


def model_config(
    model_name: str,
    num_labels: int,
    num_layers: int = 2,
    hidden_channels: list[int] | None = None,
    head_kwargs: dict | None = None,
    timm_kwargs: dict | None = None,
    data_config: dict | None = None,
    adjacency: str | None = None,
) -> dict[str, Any]:
    """The plain-data description of a model stored in every checkpoint under ``config``:
    :func:`model_from_checkpoint` rebuilds the model from it, with no command-line args.
    ``data_config`` holds the eval input size and normalisation (timm's keys);
    ``adjacency`` the ``kind`` of :meth:`~agcn_pyg.LabelGraph.adjacency` that built the
    spec's ``adj`` (a record: the model uses the stored ``adj``)."""
    config = dict(
        model_name=model_name,
        num_labels=num_labels,
        num_layers=num_layers,
        hidden_channels=list(hidden_channels) if hidden_channels is not None else None,
        head_kwargs=dict(head_kwargs or {}),
        timm_kwargs=dict(timm_kwargs or {}),
        data_config=dict(data_config or {}),
    )
    if adjacency is not None:
        from agcn_pyg.data.label_graph import ADJACENCY_KINDS

        if adjacency not in ADJACENCY_KINDS:
            raise ValueError(f"'adjacency' must be one of {ADJACENCY_KINDS} (got {adjacency!r})")
        config["adjacency"] = adjacency
    return config


#: The reading of :math:`A` in checkpoints that do not record one (written before
#: ``config["adjacency"]`` existed): the raw co-occurrence.
LEGACY_ADJACENCY = "cooccurrence"


@dataclass
class ModelSpec:
    """What rebuilds a trained model besides its weights: the :func:`model_config`, the
    label names, the label graph ``adj`` :math:`[N, N]` and the node features (or
    :obj:`None` for one-hot)."""

    config: dict[str, Any]
    label_names: list[str]
    adj: Tensor
    node_features: Tensor | None = None

    @property
    def adjacency_kind(self) -> str:
        r"""Which reading of :math:`A` ``adj`` holds (``config["adjacency"]``);
        ``"cooccurrence"`` (the raw :math:`P(j \mid i)`) for checkpoints written before the
        reading was recorded, which is what they hold."""
        return self.config.get("adjacency") or LEGACY_ADJACENCY

    def to_dict(self) -> dict[str, Any]:
        return dict(config=self.config, label_names=list(self.label_names),
                    adj=self.adj.detach().cpu(),
                    node_features=None if self.node_features is None
                    else self.node_features.detach().cpu())

    def build(self, pretrained: str | os.PathLike | None = None) -> MLAGCN:
        """The model this spec describes, freshly initialised (the backbone from a local
        ``pretrained`` file, see :func:`~agcn_pyg.create_model`), its ``pretrained_cfg``
        holding the label names, the ``data_config`` it is trained and evaluated with and
        the reading of :math:`A` (``"adjacency"``, :attr:`adjacency_kind`)."""
        cfg = self.config
        if cfg.get("head") == "linear":  # the ASL baseline: timm's own classifier, no graph
            model = create_linear_model(cfg["model_name"], cfg["num_labels"], pretrained,
                                        self.label_names, **cfg.get("timm_kwargs", {}))
            if cfg.get("data_config"):
                self.set_data_config(model, cfg["data_config"])
            return model
        head_kwargs = dict(cfg.get("head_kwargs", {}))
        model = create_model(
            cfg["model_name"], cfg["num_labels"], self.adj, num_layers=cfg["num_layers"],
            hidden_channels=cfg.get("hidden_channels"), node_features=self.node_features,
            pretrained=pretrained,
            learn_node_features=head_kwargs.pop("learn_node_features", False),
            head_kwargs=head_kwargs, label_names=self.label_names,
            **cfg.get("timm_kwargs", {}))
        if cfg.get("data_config"):
            self.set_data_config(model, cfg["data_config"])
        # The reading of A travels with the model (and save_pretrained's config.json).
        model.pretrained_cfg["adjacency"] = self.adjacency_kind
        return model

    @staticmethod
    def set_data_config(model: MLAGCN, data_config: Mapping[str, Any]) -> None:
        """Records ``data_config`` in ``model.pretrained_cfg``; agcn_pyg trains with a
        squash resize, which older configs do not say."""
        setter = getattr(model, "set_data_config", None) or partial(linear_data_config, model)
        setter({"crop_pct": 1.0, "crop_mode": "squash", **{
            k: v for k, v in data_config.items() if k in DATA_CONFIG_KEYS}})

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any]) -> ModelSpec:
        missing = [k for k in ("config", "label_names", "adj", "model") if k not in state]
        if missing:
            raise CheckpointError(f"checkpoint lacks {missing}; was it written by agcn_pyg?")
        return cls(state["config"], list(state["label_names"]), state["adj"],
                   state.get("node_features"))


def _no_best() -> dict[str, Any]:
    return {"mAP": -math.inf, "epoch": None, "source": None}


@dataclass
class TrainState:
    """Where a run stands: ``epoch`` completed epochs, ``step`` completed steps of the next
    one (0 at an epoch boundary) with ``epoch_progress`` (``loss_sum``, ``images``) of those
    steps, ``global_step`` optimizer updates in all, the ``best`` record (``mAP``,
    ``epoch``, ``source`` = ``"model"`` or ``"ema"``), one ``history`` record per epoch and
    the weights checkpoints ``kept`` by ``--checkpoint-hist`` (``epoch``, ``mAP``,
    ``file``)."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    epoch_progress: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=_no_best)
    history: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any]) -> TrainState:
        return cls(int(state["epoch"]), int(state.get("step", 0)),
                   int(state.get("global_step", 0)), dict(state.get("epoch_progress") or {}),
                   dict(state.get("best") or _no_best()), list(state.get("history", [])),
                   list(state.get("kept", [])))


@dataclass
class TrainParts:
    """The objects a training step changes: the (unwrapped) ``model``, its ``optimizer``,
    the ``scheduler`` (anything with ``state_dict``/``load_state_dict``), the fp16 grad
    ``scaler`` and the ``ema`` (timm's ``ModelEmaV3``), the latter two optional."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None = None
    ema: Any = None


def data_record(train_images: int, val_images: int, train_labels_sha256: str,
                updates_per_epoch: int, world_size: int = 1) -> dict[str, Any]:
    """The ``data`` entry of a training checkpoint: what identifies the data a run trains
    on. The image counts and the digest of the training labels (which labels each image
    carries, :func:`~agcn_pyg.train.datasets.labels_digest`) name the data; the optimizer
    updates per epoch (with ``world_size`` processes) fix the schedule's length."""
    return dict(train_images=int(train_images), val_images=int(val_images),
                train_labels_sha256=str(train_labels_sha256),
                updates_per_epoch=int(updates_per_epoch), world_size=int(world_size))


def data_changes(checkpoint: Mapping[str, Any], record: Mapping[str, Any]) -> str | None:
    """How the data of ``record`` (:func:`data_record`) differs from the data
    ``checkpoint`` was trained on, as one phrase; ``None`` when it is the same (or the
    checkpoint predates the record). A run resumed on other data would run past its
    schedule (more updates per epoch), stop short of it, or skip other images than those
    it saw in a mid-epoch resume; its best mAP would compare other validation sets."""
    saved = checkpoint.get("data")
    if not saved:
        return None
    for key, what in (("train_images", "training images"), ("val_images", "validation images")):
        if saved.get(key) != record.get(key):
            return (f"the data differs from the checkpoint's: {saved.get(key)} {what} then, "
                    f"{record.get(key)} now")
    if saved.get("train_labels_sha256") != record.get("train_labels_sha256"):
        return (f"the training labels differ from the checkpoint's (the same "
                f"{record.get('train_images')} images, other labels)")
    if saved.get("updates_per_epoch") != record.get("updates_per_epoch"):
        return (f"its schedule has {saved.get('updates_per_epoch')} updates per epoch "
                f"({saved.get('world_size')} process(es)), this run would make "
                f"{record.get('updates_per_epoch')} ({record.get('world_size')} process(es))")
    return None


def training_checkpoint(spec: ModelSpec, parts: TrainParts, state: TrainState,
                        rng: list[dict[str, Any]], run_config: Mapping[str, Any],
                        data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``last.pth`` dict: everything needed to resume (``rng``: one
    :func:`~agcn_pyg.train.capture_rng_state` per rank, in rank order; ``data``: the
    :func:`data_record` of the run's data)."""
    return dict(
        kind="training", **spec.to_dict(),
        model=parts.model.state_dict(),
        ema=parts.ema.module.state_dict() if parts.ema is not None else None,
        optimizer=parts.optimizer.state_dict(), scheduler=parts.scheduler.state_dict(),
        scaler=parts.scaler.state_dict() if parts.scaler is not None else None,
        **asdict(state), rng=list(rng), run_config=dict(run_config),
        data=dict(data) if data is not None else None)


def weights_checkpoint(training: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """A weights checkpoint (``best.pth``) from a training checkpoint dict: the model spec,
    the weights of ``source`` (``"model"`` or ``"ema"``; default: the run's best source)
    under ``model``, and the run's ``epoch``, ``best`` and ``run_config``."""
    source = source or (training.get("best") or {}).get("source") or "model"
    if source not in ("model", "ema"):
        raise ValueError(f"'source' must be 'model' or 'ema' (got {source!r})")
    weights = training["ema"] if source == "ema" else training["model"]
    if weights is None:
        raise CheckpointError(f"the training checkpoint has no '{source}' weights")
    return dict(kind="weights", **ModelSpec.from_checkpoint(training).to_dict(),
                model=weights, weights_source=source, epoch=training.get("epoch"),
                best=training.get("best"), run_config=training.get("run_config", {}))


def restore_training(checkpoint: Mapping[str, Any], parts: TrainParts, rank: int = 0
                     ) -> TrainState:
    """Loads model, EMA, optimizer, scheduler, grad scaler and this rank's RNG states from
    a training checkpoint; returns its :class:`TrainState`."""
    if checkpoint.get("kind") != "training":
        raise CheckpointError("cannot resume from a weights checkpoint (best.pth); resume "
                              "from last.pth")
    parts.model.load_state_dict(checkpoint["model"])
    if parts.ema is not None:
        if checkpoint.get("ema") is None:
            raise CheckpointError("the checkpoint has no EMA weights but EMA is enabled")
        parts.ema.module.load_state_dict(checkpoint["ema"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    parts.scheduler.load_state_dict(checkpoint["scheduler"])
    if parts.scaler is not None and checkpoint.get("scaler"):
        parts.scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint.get("rng")
    if rng:
        restore_rng_state(rng[rank] if rank < len(rng) else rng[0])
    return TrainState.from_checkpoint(checkpoint)


# ---------------------------------------------------------------------------------------
# Rebuilding the model
# ---------------------------------------------------------------------------------------


def model_from_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, Any], use_ema: bool = True
) -> tuple[MLAGCN, dict[str, Any]]:
    """Rebuilds the trained model from a checkpoint alone. Returns ``(model, checkpoint)``
    with the model in eval mode. A training checkpoint gives its EMA weights when it has
    them and ``use_ema``, else the raw ones; a weights checkpoint gives its weights."""
    state = (dict(checkpoint) if isinstance(checkpoint, Mapping)
             else load_checkpoint(checkpoint))
    model = ModelSpec.from_checkpoint(state).build()
    use_ema = use_ema and state.get("kind", "training") == "training"
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    model.load_state_dict(weights)
    return model.eval(), state


class LoadedModel(NamedTuple):
    """What inference needs: the model (eval mode), its label names and the data config
    of its evaluation transform (timm's keys: ``input_size``, ``mean``, ``std``, ...)."""

    model: MLAGCN
    label_names: list[str]
    data_config: dict[str, Any]


def load_model(
    source: str | os.PathLike | Mapping[str, Any] | MLAGCN | LoadedModel,
    use_ema: bool = True,
) -> LoadedModel:
    """The one loader for inference: a checkpoint path or dict, a folder written by
    :func:`~agcn_pyg.save_pretrained`, or a model. Returns
    :class:`LoadedModel` ``(model, label_names, data_config)``, the model in eval mode (a
    model passed in is returned as it is).

    ``use_ema`` picks a training checkpoint's EMA weights when it has them (a weights
    checkpoint or a folder holds one set). ``data_config`` is timm's
    :func:`~timm.data.resolve_data_config` of the model, i.e. its ``pretrained_cfg``: the
    preprocessing it was trained with (timm's default for the backbone, with a warning,
    for a checkpoint that does not record it); labels without names are named by index.
    """
    from timm.data import resolve_data_config

    if isinstance(source, LoadedModel):
        return source
    if isinstance(source, nn.Module):  # an MLAGCN, or the asl recipe's timm classifier
        model = source
    elif isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        model = from_pretrained(os.fspath(source))
    else:
        model, state = model_from_checkpoint(source, use_ema=use_ema)
        data_config = state["config"].get("data_config") or {}
        if "input_size" not in data_config or "mean" not in data_config:
            warnings.warn(
                "the checkpoint has no data_config (input_size, mean, std); using timm's "
                f"default for the backbone '{state['config']['model_name']}'", stacklevel=2)
    names = (getattr(model, "label_names", None) or model.pretrained_cfg.get("label_names")
             or [str(i) for i in range(model.num_classes)])
    return LoadedModel(model, list(names), dict(resolve_data_config({}, model=model)))


def checkpoint_nbytes(parts: TrainParts) -> tuple[int, int]:
    """Estimated sizes of the ``(training, weights)`` checkpoints of ``parts``, before the
    optimizer has state: Adam-like optimizers keep two tensors per parameter."""

    def nbytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor))

    weights = nbytes(parts.model.state_dict().values())
    ema = nbytes(parts.ema.module.state_dict().values()) if parts.ema is not None else 0
    opt_state = [t for s in parts.optimizer.state.values() for t in s.values()]
    optimizer = nbytes(opt_state) if opt_state else 2 * nbytes(
        p for p in parts.model.parameters() if p.requires_grad)
    return weights + ema + optimizer + 2**20, weights + 2**20
