r"""The sharing format: a folder with ``model.safetensors`` (every weight, the label graph
:math:`\mathbf{A}` as ``head.adj`` and the node features as ``head.node_features``) and
``config.json`` (backbone name, label names, the :func:`~agcn_pyg.create_model` arguments and
``pretrained_cfg``), in the layout Hugging Face and timm use. This module owns the two files
(write, read, recognise) and knows no model class: :func:`~agcn_pyg.save_pretrained` and
:func:`~agcn_pyg.from_pretrained` (:mod:`agcn_pyg.models.mlagcn`) build the config and the model."""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import torch

from agcn_pyg.io import atomic_write
from agcn_pyg.version import __version__

__all__ = ["CONFIG_FILE", "FORMAT", "WEIGHTS_FILE", "PretrainedFolder", "is_pretrained_folder",
           "read_pretrained", "write_pretrained"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: ``config.json["format"]`` of folders written by :func:`write_pretrained`.
FORMAT = "agcn_pyg.MLAGCN/1"


def write_pretrained(folder: str | os.PathLike, state_dict: dict[str, torch.Tensor],
                     config: dict[str, Any]) -> None:
    """Writes ``state_dict`` to :data:`WEIGHTS_FILE` as safetensors (tensors that share
    storage, e.g. ``share_weights``, stored once each as copies) and ``config`` plus the
    ``format`` and version tags to :data:`CONFIG_FILE`. Each file is written atomically."""
    from safetensors.torch import save as safetensors_bytes

    tensors, seen = {}, set()
    for name, value in state_dict.items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        if value.numel() and storage in seen:  # safetensors refuses shared storage
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        tensors[name] = value
    config = dict(format=FORMAT, agcn_pyg_version=__version__, **config)
    try:
        text = json.dumps(config, indent=2, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"'model': its config must be plain JSON data (names, numbers, lists), e.g. no "
            f"classes in timm_kwargs: {e}"
        ) from e

    os.makedirs(folder, exist_ok=True)
    with atomic_write(os.path.join(folder, WEIGHTS_FILE)) as f:
        f.write(safetensors_bytes(tensors, metadata={"format": "pt", "agcn_pyg": FORMAT}))
    with atomic_write(os.path.join(folder, CONFIG_FILE), "w") as f:
        f.write(text + "\n")


def is_pretrained_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a model written by :func:`write_pretrained`."""
    path = os.path.join(folder, CONFIG_FILE)
    if not (os.path.isdir(folder) and os.path.isfile(path)):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class PretrainedFolder(NamedTuple):
    """What :func:`read_pretrained` returns: the config (``pretrained_cfg`` with its tuples
    back), the label graph and node features, and every weight."""

    config: dict[str, Any]
    adj: torch.Tensor
    node_features: torch.Tensor
    state_dict: dict[str, torch.Tensor]


def read_pretrained(folder: str | os.PathLike) -> PretrainedFolder:
    """Reads a folder written by :func:`write_pretrained`: JSON and safetensors only (no
    pickle). A missing file, foreign JSON or a truncated safetensors file is a one-line
    error that names the file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = os.fspath(folder)
    weights, config_path = (os.path.join(folder, n) for n in (WEIGHTS_FILE, CONFIG_FILE))
    for path in (config_path, weights):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"'folder' {folder!r} must hold {CONFIG_FILE} and {WEIGHTS_FILE} written by "
                f"save_pretrained; {os.path.basename(path)} is missing"
            )
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as e:
        raise ValueError(f"'{config_path}' is not valid JSON: {e}") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(
            f"'{config_path}' was not written by agcn_pyg's save_pretrained (format {FORMAT}, "
            f"got {config.get('format') if isinstance(config, dict) else type(config).__name__})"
        )
    n = config["model_config"]["num_labels"]
    try:
        with safe_open(weights, framework="pt") as f:
            if "head.adj_index" in f.keys():  # a sparse label graph (MultiLabelHead)
                index, weight = f.get_tensor("head.adj_index"), f.get_tensor("head.adj_weight")
                adj = torch.sparse_coo_tensor(index.flip(0), weight, (n, n))
            else:
                adj = f.get_tensor("head.adj")
            node_features = f.get_tensor("head.node_features")
        state = load_file(weights)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"'{weights}' is not a readable ML-AGCN safetensors file: {e}") from e
    config["pretrained_cfg"] = _with_tuples(config["pretrained_cfg"])
    return PretrainedFolder(config, adj, node_features, state)


def _with_tuples(cfg: dict[str, Any]) -> dict[str, Any]:
    """JSON turns timm's tuples (``input_size``, ``mean``, ``label_names``, ...) into
    lists; give them back."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
