"""Sharing a trained ML-AGCN without pickle: ``save_pretrained`` writes a folder with
``model.safetensors`` (every weight, the label graph :math:`\\mathbf{A}` as ``head.adj`` and
the node features as ``head.node_features``) and ``config.json`` (backbone name, label
names, the :func:`~agcn_pyg.create_model` arguments and ``pretrained_cfg``), in the layout
Hugging Face and timm use; ``from_pretrained`` rebuilds the model from it alone."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from agcn_pyg.models.head import MultiLabelHead
from agcn_pyg.models.mlagcn import MLAGCN, create_model

__all__ = ["CONFIG_FILE", "FORMAT", "WEIGHTS_FILE", "from_pretrained", "is_pretrained_folder",
           "save_pretrained"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: ``config.json["format"]`` of folders written by :func:`save_pretrained`.
FORMAT = "agcn_pyg.MLAGCN/1"


def save_pretrained(model: MLAGCN, folder: str | os.PathLike) -> None:
    """Writes ``model`` (as it is: call it on the EMA copy to share the EMA weights) to
    ``folder``: :data:`WEIGHTS_FILE` holds the state dict as safetensors, tensors shared
    between modules stored once each; :data:`CONFIG_FILE` the JSON description
    :func:`from_pretrained` rebuilds it from. Each file is written atomically."""
    from safetensors.torch import save as safetensors_bytes

    from agcn_pyg import __version__
    from agcn_pyg.train.checkpoint import atomic_write

    if not isinstance(model, MLAGCN) or not isinstance(model.head, MultiLabelHead):
        raise TypeError(
            f"'model' must be an MLAGCN with its graph head (got {type(model).__name__}"
            f"{'' if not isinstance(model, MLAGCN) else ' without a head'})"
        )
    if model.config is None:
        raise ValueError(
            "'model' carries no config (it was assembled by hand): build it with "
            "agcn_pyg.create_model so that from_pretrained can rebuild it"
        )
    tensors, seen = {}, set()
    for name, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        if value.numel() and storage in seen:  # e.g. share_weights: safetensors wants copies
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        tensors[name] = value
    param = next(model.parameters())
    config = dict(
        format=FORMAT,
        agcn_pyg_version=__version__,
        backbone=model.config["model_name"],
        num_classes=model.num_classes,
        num_features=model.num_features,
        head_hidden_size=model.head_hidden_size,
        label_names=model.label_names,
        dtype=str(param.dtype).removeprefix("torch."),
        model_config=model.config,
        pretrained_cfg=model.pretrained_cfg,
    )
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
    """Whether ``folder`` holds a model written by :func:`save_pretrained`."""
    path = os.path.join(folder, CONFIG_FILE)
    if not (os.path.isdir(folder) and os.path.isfile(path)):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def from_pretrained(folder: str | os.PathLike, device: Any = "cpu") -> MLAGCN:
    """Rebuilds the model :func:`save_pretrained` wrote to ``folder``, in eval mode, on
    ``device``: same weights, label graph, node features, label names and
    ``pretrained_cfg``, hence the same logits. Reads JSON and safetensors only (no pickle);
    nothing is downloaded (the backbone is built without weights, then filled)."""
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
    mc = config["model_config"]
    try:
        with safe_open(weights, framework="pt") as f:
            if "head.adj_index" in f.keys():  # a sparse label graph (MultiLabelHead)
                n = mc["num_labels"]
                index, weight = f.get_tensor("head.adj_index"), f.get_tensor("head.adj_weight")
                adj = torch.sparse_coo_tensor(index.flip(0), weight, (n, n))
            else:
                adj = f.get_tensor("head.adj")
            node_features = f.get_tensor("head.node_features")
        state = load_file(weights)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"'{weights}' is not a readable ML-AGCN safetensors file: {e}") from e

    model = create_model(
        mc["model_name"],
        mc["num_labels"],
        adj,
        hidden_channels=mc["hidden_channels"],
        node_features=node_features,
        learn_node_features=mc["learn_node_features"],
        head_kwargs=mc["head_kwargs"],
        label_names=config.get("label_names"),
        **mc["timm_kwargs"],
    )
    dtype = getattr(torch, config.get("dtype", "float32"))
    model.to(dtype)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"'{weights}' does not fit the model of '{config_path}': {e}") from e
    model.pretrained_cfg = _with_tuples(config["pretrained_cfg"])
    return model.to(device).eval()


def _with_tuples(cfg: dict[str, Any]) -> dict[str, Any]:
    """JSON turns timm's tuples (``input_size``, ``mean``, ``label_names``, ...) into
    lists; give them back."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
