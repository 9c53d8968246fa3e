r"""Node features :math:`F^{(0)}` of the label graph: one ``[d]`` vector per label.

Three sources:

* :func:`identity_features` — one-hot identity (``[N, N]``), needs no data;
* :func:`image_embeddings` — IML-GCN/ML-AGCN's image-based embeddings (Section 3.1: "the same
  image-based embeddings as node features"), the average over the training images that
  contain a label of a trained model's scores (``[N, N]``, the 80-dimensional inputs the
  published parameter counts imply) or of its pooled features (``[N, D]``);
* :func:`load_node_features` — any user tensor saved as ``.npy`` or ``.pt`` (e.g. GloVe
  word vectors as ML-GCN uses: convert its pickle with ``numpy.save`` first).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["identity_features", "image_embeddings", "load_node_features"]


def identity_features(num_labels: int, dtype: torch.dtype | None = None) -> Tensor:
    """One-hot node features: the ``[N, N]`` identity matrix (label :math:`i` is ``e_i``)."""
    if num_labels < 1:
        raise ValueError(f"`num_labels` must be positive, got {num_labels}")
    return torch.eye(num_labels, dtype=dtype)


def load_node_features(path: str | os.PathLike, num_labels: int | None = None) -> Tensor:
    """Loads a ``[N, d]`` node-feature matrix from a ``.npy`` or ``.pt`` file.

    Args:
        path (str or os.PathLike): ``.npy`` (loaded without pickle) or ``.pt`` (a tensor or
            array saved with :func:`torch.save`, loaded with ``weights_only=True``).
        num_labels (int, optional): If given, the expected :math:`N`. (default: :obj:`None`)

    Returns:
        A float32 tensor of shape ``[N, d]``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"node-feature file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        x = torch.from_numpy(np.load(path, allow_pickle=False))
    elif ext in (".pt", ".pth"):
        x = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, Tensor):
            raise TypeError(f"{path} must hold a single tensor, got {type(x).__name__}")
    else:
        raise ValueError(f"`path` must end in .npy, .pt or .pth, got {path!r}")

    if x.dim() != 2:
        raise ValueError(f"node features in {path} must have shape [N, d], got {tuple(x.shape)}")
    if num_labels is not None and x.size(0) != num_labels:
        raise ValueError(
            f"node features in {path} must have one row per label: expected "
            f"[{num_labels}, d], got {tuple(x.shape)}"
        )
    return x.float()


@torch.no_grad()
def image_embeddings(
    model: nn.Module,
    loader: Iterable,
    num_labels: int,
    kind: str = "scores",
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Image-based label embeddings: per label, the mean model output over the images
    containing it,

    .. math::
        f_i = \frac{1}{|\{n : y_{n i} = 1\}|} \sum_{n : y_{n i} = 1} g(I_n).

    Args:
        model (nn.Module): A trained classifier. Run in eval mode under
            :func:`torch.no_grad`; its train/eval mode is restored afterwards.
        loader (Iterable): Yields ``(images, targets, ...)`` with multi-hot ``targets`` of
            shape ``[B, N]`` (values ``> 0`` count as present; extra items are ignored).
        num_labels (int): :math:`N`.
        kind (str, optional): :obj:`"scores"`: :math:`g = \sigma(\text{model}(I))` gives
            ``[N, N]`` (IML-GCN's 80-dimensional COCO inputs); :obj:`"features"`:
            :math:`g` = pooled pre-logit features
            ``model.forward_head(model.forward_features(I), pre_logits=True)`` (timm API)
            gives ``[N, D]``. (default: :obj:`"scores"`)
        device (torch.device or str, optional): Where to run; defaults to the device of the
            model's first parameter (CPU if it has none).

    Returns:
        float32 ``[N, D]`` tensor on the CPU. Labels that no image contains get a zero row.
    """
    if kind not in ("scores", "features"):
        raise ValueError(f"`kind` must be 'scores' or 'features', got {kind!r}")
    if kind == "features" and not (
        hasattr(model, "forward_features") and hasattr(model, "forward_head")
    ):
        raise TypeError(
            "kind='features' needs a timm-style model with `forward_features` and "
            f"`forward_head`, got {type(model).__name__}"
        )
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)

    was_training = model.training
    model.eval()
    sums: Tensor | None = None
    nums = torch.zeros(num_labels, dtype=torch.float64, device=device)
    try:
        for batch in loader:
            images, targets = batch[0], batch[1]
            images = images.to(device, non_blocking=True)
            y = (targets.to(device) > 0).to(torch.float64)
            if y.dim() != 2 or y.size(1) != num_labels:
                raise ValueError(
                    f"`targets` must have shape [B, {num_labels}], got {tuple(targets.shape)}"
                )
            if kind == "scores":
                g = torch.sigmoid(model(images).float())
                if g.shape != y.shape:
                    raise ValueError(
                        f"kind='scores' needs logits of shape {tuple(y.shape)}, "
                        f"the model returned {tuple(g.shape)}"
                    )
            else:
                g = model.forward_head(model.forward_features(images), pre_logits=True)
            g = g.flatten(1).to(torch.float64)  # float64 sums: no drift over 100k images
            if sums is None:
                sums = torch.zeros(num_labels, g.size(1), dtype=torch.float64, device=device)
            sums += y.t() @ g
            nums += y.sum(0)
    finally:
        model.train(was_training)

    if sums is None:
        raise ValueError("`loader` yielded no batches")
    # Labels without images keep their zero sum; clamp avoids 0/0.
    return (sums / nums.clamp(min=1).unsqueeze(1)).float().cpu()
