"""The timm backbone of ML-AGCN: built without a classifier, weights only from local files
(checked key by key), and the size of the pooled feature it hands to the label classifiers."""

from __future__ import annotations

import os
import sys
from typing import Any

import timm
import torch
from torch import nn

from agcn_pyg.models.pretrained import is_pretrained_folder

__all__ = ["create_backbone", "load_backbone_weights", "pooled_feature_size"]

# Model names and weight sources that make timm reach the network.
_REMOTE_PREFIXES = ("hf-hub:", "hf_hub:", "timm/", "http://", "https://")
# Files timm's hub layout puts in a weights folder, in the order timm prefers them.
_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.pth", "pytorch_model.pth")
_SHOWN = 5  # keys listed in an error message


def pooled_feature_size(backbone: nn.Module) -> int:
    """The size :math:`D` of what ``backbone.forward_head(x, pre_logits=True)`` returns,
    i.e. the input of its classifier: ``head_hidden_size`` where timm defines it (it exceeds
    ``num_features`` when a head layer follows the pooling, as in MobileNetV3, GhostNet,
    HGNetV2 or LCNet), else ``num_features``."""
    size = getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features", None)
    if not size:
        raise ValueError(
            f"'backbone': a timm model with 'head_hidden_size' or 'num_features' is needed "
            f"(got {type(backbone).__name__} with neither)"
        )
    return int(size)


def create_backbone(
    model_name: str, pretrained: Any = None, **timm_kwargs
) -> nn.Module:
    """``timm.create_model(model_name, num_classes=0, **timm_kwargs)`` with its own global
    pooling, and with the weights of the local file ``pretrained`` when given (see
    :func:`load_backbone_weights`). Nothing is ever downloaded: ``pretrained=True``, hub
    names (``"hf-hub:..."``, ``"timm/..."``), URLs and tags are refused with a message that
    says so."""
    if not isinstance(model_name, str) or not model_name:
        raise TypeError(f"'model_name' must be a timm model name (got {model_name!r})")
    if model_name.startswith(_REMOTE_PREFIXES):
        raise ValueError(
            f"'model_name' {model_name!r} would be fetched from the Hugging Face hub; agcn_pyg "
            f"downloads nothing: pass the architecture name (e.g. 'resnet50') and the weights "
            f"as pretrained='path/to/model.safetensors'"
        )
    for key in ("pretrained_cfg_overlay", "pretrained_cfg"):
        source = timm_kwargs.get(key)
        if isinstance(source, dict) and any(
            source.get(k) for k in ("file", "url", "hf_hub_id", "state_dict")
        ):
            raise ValueError(
                f"'{key}' names a weight source ({sorted(k for k in source if source[k])}); "
                f"pass local weights as pretrained='path' so that their keys are checked"
            )
    if timm_kwargs.get("features_only"):
        raise ValueError(
            "'features_only=True' makes timm build a feature-map extractor, not a backbone "
            "that pools; for feature maps use model.forward_intermediates(x, "
            "intermediates_only=True), or timm.create_model(name, features_only=True) alone"
        )
    path = _weights_path(pretrained)
    backbone = timm.create_model(model_name, pretrained=False, num_classes=0, **timm_kwargs)
    if path is not None:
        load_backbone_weights(backbone, path)
    return backbone


def _weights_path(pretrained: Any) -> str | None:
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        raise ValueError(
            "'pretrained=True' asks for weights from the internet; agcn_pyg downloads "
            "nothing: download the backbone's weights yourself and pass the local file, e.g. "
            "pretrained='tresnet_m.safetensors'"
        )
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(
            f"'pretrained' must be a local file path, None or False (got "
            f"{type(pretrained).__name__})"
        )
    path = os.fspath(pretrained)
    if path.startswith(_REMOTE_PREFIXES):
        raise ValueError(
            f"'pretrained' {path!r} is a remote location; agcn_pyg downloads nothing: "
            f"download the file yourself and pass its local path"
        )
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(
            os.path.join(path, "model.safetensors")
        ):
            if is_pretrained_folder(path):
                raise ValueError(
                    f"'pretrained' {path!r} holds a whole ML-AGCN model (save_pretrained); "
                    f"load it with agcn_pyg.from_pretrained({path!r})"
                )
        for name in _FOLDER_WEIGHTS:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(
            f"'pretrained': the folder {path!r} has none of {list(_FOLDER_WEIGHTS)}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"'pretrained' must be a local weights file (.safetensors, .pth, .pt, .bin); "
            f"{path!r} does not exist (hub names and tags are not looked up: agcn_pyg "
            f"downloads nothing)"
        )
    return path


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> None:
    """Loads the local file ``path`` into ``backbone`` (a timm model with
    ``num_classes=0``), refusing any file whose tensors do not all fit.

    The file is read by timm (:func:`timm.models.load_state_dict`, ``weights_only=True``):
    ``.safetensors`` or a torch file holding a state dict, or a training checkpoint with
    one under ``state_dict_ema``/``model_ema``/``state_dict``/``model``; DDP ``module.``
    and ``torch.compile`` ``_orig_mod.`` prefixes are removed. The model family's own
    converter (``checkpoint_filter_fn`` of its timm module, e.g. TResNet's from the original
    MIIL/ASL layout, or a ViT's position-embedding resize) then runs as in timm, and the
    classifier named in ``pretrained_cfg["classifier"]`` is dropped. Every remaining key
    must match the backbone's keys and shapes, and every backbone key must be present
    except those PyTorch's own strict load fills in (the BatchNorm ``num_batches_tracked``
    counters that many converted checkpoints lack, see :func:`_filled_on_load`);
    otherwise :class:`ValueError` reports how many keys matched, were missing and were
    unexpected, so weights cannot silently stay random.
    """
    from timm.models import load_state_dict

    path = os.fspath(path)
    if path.lower().endswith((".npz", ".npy")):
        raise ValueError(
            f"'pretrained' {path!r} is a NumPy archive (original JAX/Flax weights); convert "
            f"it to a timm .safetensors or .pth file first"
        )
    try:
        state = load_state_dict(path, use_ema=True, weights_only=True)
    except Exception as e:  # unreadable, pickled objects, not a dict ...
        raise ValueError(
            f"'pretrained' {path!r} could not be read as a weights file with "
            f"weights_only=True: {type(e).__name__}: {e}"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"'pretrained' {path!r} does not hold a state dict")

    filter_fn = getattr(sys.modules.get(type(backbone).__module__), "checkpoint_filter_fn", None)
    if callable(filter_fn):
        try:
            state = filter_fn(state, backbone)
        except Exception:  # the converter expects another layout: check the keys as they are
            pass

    classifiers = backbone.pretrained_cfg.get("classifier") or ()
    if isinstance(classifiers, str):
        classifiers = (classifiers,)
    for name in classifiers:  # num_classes=0: the backbone has no classifier to fill
        state.pop(f"{name}.weight", None)
        state.pop(f"{name}.bias", None)

    expected = backbone.state_dict()
    absent = [k for k in expected if k not in state]
    filled = _filled_on_load(backbone, state)
    missing = [k for k in absent if k not in filled]  # what refuses the file
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {_shape(state[k])}, model {list(v.shape)}"
        for k, v in expected.items()
        if k in state and _shape(state[k]) != list(v.shape)
    ]
    if missing or unexpected or mismatched:
        matched = len(expected) - len(absent) - len(mismatched)
        counters = len(absent) - len(missing)
        lines = [
            f"'pretrained' {path!r} does not fit the backbone {_arch(backbone)!r}: "
            f"{matched} of {len(expected)} keys match, {len(absent)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} with another shape; nothing "
            f"was loaded"
        ]
        if counters:
            lines.append(f"({counters} of the missing keys are BatchNorm num_batches_tracked "
                         f"counters, which alone would be accepted, as PyTorch does)")
        if missing:
            lines.append(f"missing: {_head(missing + [k for k in absent if k in filled])}")
        if unexpected:
            lines.append(f"unexpected: {_head(unexpected)}")
        if mismatched:
            lines.append(f"shapes: {_head(mismatched)}")
        prefix = _common_prefix(unexpected, expected)
        if prefix:
            lines.append(
                f"every unexpected key starts with {prefix!r}: strip it (an ML-AGCN model's "
                f"weights load with agcn_pyg.from_pretrained or model_from_checkpoint)"
            )
        raise ValueError("\n  ".join(lines))
    backbone.load_state_dict(state, strict=True)


# The norm layers whose loading supplies a missing ``num_batches_tracked`` (PyTorch's
# _NormBase._load_from_state_dict; these public classes are all its subclasses but the lazy
# ones).
_COUNTING_NORMS = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
)


def _filled_on_load(backbone: nn.Module, state: dict) -> set[str]:
    """The keys ``backbone.load_state_dict(state, strict=True)`` accepts as missing because
    PyTorch fills them in: the ``num_batches_tracked`` counter of a norm layer that tracks
    running statistics, when ``state`` records no version 2 or later for that layer (the
    counter came with version 2; a ``.safetensors`` file or a converted checkpoint records
    none). With the version recorded, PyTorch refuses a missing counter, and so do we."""
    metadata = getattr(state, "_metadata", None) or {}
    filled = set()
    for name, module in backbone.named_modules():
        if isinstance(module, _COUNTING_NORMS) and module.track_running_stats:
            version = metadata.get(name, {}).get("version")
            if version is None or version < 2:
                filled.add(f"{name}.num_batches_tracked" if name else "num_batches_tracked")
    return filled


def _shape(value: Any) -> Any:
    return list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _arch(backbone: nn.Module) -> str:
    return backbone.pretrained_cfg.get("architecture") or type(backbone).__name__


def _head(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _SHOWN})" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _common_prefix(unexpected: list[str], expected) -> str | None:
    """A ``"something."`` prefix whose removal would turn the unexpected keys into the
    backbone's (a wrapper's state dict), or :obj:`None`."""
    if not unexpected or "." not in unexpected[0]:
        return None
    prefix = unexpected[0].split(".", 1)[0] + "."
    if all(k.startswith(prefix) for k in unexpected) and any(
        k[len(prefix):] in expected for k in unexpected
    ):
        return prefix
    return None
