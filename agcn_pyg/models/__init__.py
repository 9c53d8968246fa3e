"""The model: :class:`MultiLabelHead` (graph classifiers), :class:`MLAGCN` on a timm backbone
(:func:`create_model`), local pretrained weights and safetensors sharing."""

from agcn_pyg.models.head import MultiLabelHead
from agcn_pyg.models.mlagcn import (
    MLAGCN,
    count_parameters,
    create_model,
    from_pretrained,
    save_pretrained,
)

__all__ = [
    "MLAGCN",
    "MultiLabelHead",
    "count_parameters",
    "create_model",
    "from_pretrained",
    "save_pretrained",
]
