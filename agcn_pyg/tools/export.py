"""Export a trained ML-AGCN for serving with :func:`torch.export`.

Once training is over the classifiers :math:`\\mathbf{F}^{(L)}` do not depend on the image,
so the graph layers are folded into one bias-free linear layer
(:meth:`~agcn_pyg.MultiLabelHead.to_linear`): the exported program is the backbone and one
matrix product, and needs neither PyG nor agcn_pyg to run.
"""

from __future__ import annotations

import copy
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from agcn_pyg.io import atomic_write
from agcn_pyg.models.mlagcn import MLAGCN

__all__ = ["METADATA_FILE", "ServingModel", "export_model", "load_exported"]

#: Name of the JSON entry ``export_model`` stores in the ``.pt2`` archive (label names,
#: data config, source checkpoint format).
METADATA_FILE = "agcn_pyg.json"


class ServingModel(nn.Module):
    """The backbone followed by the precomputed classifiers: images :obj:`[B, 3, H, W]` to
    logits :obj:`[B, N]` (apply :func:`torch.sigmoid` for probabilities)."""

    def __init__(self, backbone: nn.Module, classifier: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    @classmethod
    def from_model(cls, model: MLAGCN) -> ServingModel:
        """A copy of ``model`` in eval mode, its graph head replaced by
        ``model.head.to_linear()``; ``model`` itself is left untouched."""
        was_training = model.head.training
        model.head.eval()  # no dropout on B while the classifiers are computed
        try:
            classifier = model.head.to_linear()
        finally:
            model.head.train(was_training)
        return cls(copy.deepcopy(model.backbone), classifier).eval()

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.backbone(images))


def export_model(
    checkpoint: str | os.PathLike | Mapping[str, Any] | MLAGCN,
    example_input_size: Sequence[int] | None = None,
    path: str | os.PathLike | None = None,
    use_ema: bool = True,
    max_batch: int = 4096,
) -> torch.export.ExportedProgram:
    """Exports a trained model with :func:`torch.export.export`, the batch dimension dynamic
    (1 to ``max_batch``), and saves it with :func:`torch.export.save` when ``path`` is given.

    The archive also holds :data:`METADATA_FILE`, JSON with ``label_names`` and
    ``data_config`` (input size, mean, std, interpolation), i.e. what a server needs to
    preprocess images and name the outputs; read it back with :func:`load_exported`. The
    file is written atomically (:func:`~agcn_pyg.io.atomic_write`): interrupted or
    out of disk space, the previous file at ``path`` stays as it was.

    Args:
        checkpoint: A checkpoint path or dict (see :mod:`agcn_pyg.train.checkpoint`), a folder
            written by :func:`~agcn_pyg.save_pretrained`, or an
            :class:`~agcn_pyg.MLAGCN`.
        example_input_size (Sequence[int], optional): ``(3, H, W)`` or ``(B, 3, H, W)`` of
            the example input; only ``H`` and ``W`` are fixed in the exported program.
            (default: :obj:`None`, the checkpoint's ``data_config["input_size"]``)
        path (str or os.PathLike, optional): Where to save the program (``.pt2``).
        use_ema (bool, optional): Use the checkpoint's EMA weights when present.
        max_batch (int, optional): Largest batch the program accepts. (default: :obj:`4096`)

    Returns:
        torch.export.ExportedProgram: call ``.module()`` on it for an :class:`nn.Module`.
    """
    from agcn_pyg.train.checkpoint import load_model

    model, label_names, data_config = load_model(checkpoint, use_ema=use_ema)
    if example_input_size is None:
        example_input_size = data_config.get("input_size")
        if example_input_size is None:
            raise ValueError(
                "'example_input_size' is needed: the checkpoint's data_config has no "
                "'input_size'"
            )
    size = tuple(int(s) for s in example_input_size)
    if len(size) == 4:
        size = size[1:]
    if len(size) != 3:
        raise ValueError(
            f"'example_input_size' must be (C, H, W) or (B, C, H, W) (got {tuple(size)})"
        )

    serving = ServingModel.from_model(model)
    param = next(serving.parameters())
    # A batch of 2: an example batch of 1 would be specialised to the constant 1.
    example = torch.randn(2, *size, device=param.device, dtype=param.dtype)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with torch.no_grad():
        program = torch.export.export(
            serving, (example,), dynamic_shapes={"images": {0: batch}}
        )

    if path is not None:
        metadata = dict(
            label_names=list(label_names),
            data_config=data_config,
            input_size=list(size),
            outputs="logits",
        )
        # Serialised in memory first: torch's archive writer aborts the process when its
        # file fails mid-write (a full disk), so only Python writes the file, atomically.
        buffer = io.BytesIO()
        torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(metadata)})
        with atomic_write(path) as f:
            f.write(buffer.getbuffer())
    return program


def load_exported(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Loads a program saved by :func:`export_model`: returns ``(module, metadata)``, the
    module mapping images to logits and ``metadata`` the stored JSON (``label_names``,
    ``data_config``, ...; empty for a program saved by other code)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported program '{path}' does not exist")
    extra = {METADATA_FILE: ""}
    program = torch.export.load(path, extra_files=extra)
    metadata = json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}
    return program.module(), metadata
