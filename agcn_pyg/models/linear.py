"""The ASL baseline's model: a plain timm classifier (its own linear head, no graph), built
the way :func:`~agcn_pyg.create_model` builds ML-AGCN's backbone, so that the same harness
trains, checkpoints and evaluates both (Table 1's "ASL (TResNetM)" row: TResNet-M with an
80-way linear head, 29.5M parameters)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from agcn_pyg.models.backbone import create_backbone

__all__ = ["create_linear_model", "set_data_config"]


def create_linear_model(
    model_name: str,
    num_labels: int,
    pretrained: str | os.PathLike | None = None,
    label_names: Sequence[str] | None = None,
    **timm_kwargs,
) -> nn.Module:
    """``timm.create_model(model_name)`` with a fresh ``num_labels``-way linear classifier
    (with bias, timm's default init): the backbone (and its local ``pretrained`` weights,
    classifier dropped, as for ML-AGCN) is :func:`~agcn_pyg.models.backbone.create_backbone`'s,
    then ``reset_classifier(num_labels)``. Its ``pretrained_cfg`` carries ``num_classes``,
    the label names and no weight source, as :class:`~agcn_pyg.MLAGCN`'s does."""
    if num_labels < 1:
        raise ValueError(f"'num_labels' must be at least 1 (got {num_labels})")
    model = create_backbone(model_name, pretrained=pretrained, **timm_kwargs)
    model.reset_classifier(num_labels)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    for key in ("url", "hf_hub_id", "file", "state_dict", "label_names", "label_descriptions"):
        cfg.pop(key, None)
    cfg.update(num_classes=num_labels, custom_load=False)
    if label_names is not None:
        if isinstance(label_names, str) or len(label_names) != num_labels:
            got = label_names if isinstance(label_names, str) else len(label_names)
            raise ValueError(f"'label_names' must be {num_labels} names, one per label "
                             f"(got {got})")
        cfg["label_names"] = tuple(str(n) for n in label_names)
    model.pretrained_cfg = cfg
    return model


def set_data_config(model: nn.Module, data_config: Mapping[str, Any]) -> None:
    """Records the preprocessing a plain timm model is trained and evaluated with in its
    ``pretrained_cfg`` (what :meth:`~agcn_pyg.MLAGCN.set_data_config` does for ML-AGCN), so
    that ``timm.data.resolve_data_config({}, model=model)`` returns it."""
    cfg = model.pretrained_cfg
    for key, value in data_config.items():
        cfg[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    for key in ("test_input_size", "test_crop_pct", "test_pool_size"):
        cfg.pop(key, None)
