"""ML-AGCN on any timm backbone: ``create_model`` and the model it returns (Fig. 2)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import timm
import torch
from torch import Tensor, nn

from agcn_pyg.head import MultiLabelHead


class MLAGCN(nn.Module):
    """A timm backbone that pools an image into a :math:`D`-dimensional feature, and a
    :class:`~agcn_pyg.MultiLabelHead` whose :math:`N` classifiers score it (Fig. 2).

    ``forward`` maps images :obj:`[B, 3, H, W]` to logits :obj:`[B, N]`.
    """

    def __init__(self, backbone: nn.Module, head: MultiLabelHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups with no weight decay on biases, norms and other 1-D
        parameters, nor on what the backbone lists in ``no_weight_decay()`` (timm's rule,
        reused through :func:`timm.optim.param_groups_weight_decay`)."""
        from timm.optim import param_groups_weight_decay

        skip = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return param_groups_weight_decay(
            self, weight_decay, no_weight_decay_list={f"backbone.{n}" for n in skip}
        )


def create_model(
    model_name: str,
    num_labels: int,
    adj: Tensor,
    num_layers: int = 2,
    hidden_channels: Sequence[int] | None = None,
    node_features: Tensor | None = None,
    pretrained: str | os.PathLike | None = None,
    learn_node_features: bool = False,
    head_kwargs: dict | None = None,
    **timm_kwargs,
) -> MLAGCN:
    """Builds ML-AGCN on the timm model ``model_name`` (Section 3.1).

    The backbone is ``timm.create_model(model_name, num_classes=0, **timm_kwargs)``, with its
    own global pooling, so any timm CNN or ViT works (``img_size=...`` for a ViT goes in
    ``timm_kwargs``).

    Args:
        model_name (str): A timm model name, e.g. ``"tresnet_m"`` (the paper's backbone).
        num_labels (int): Number of labels :math:`N`.
        adj (torch.Tensor): The label graph :math:`\\mathbf{A}`, :obj:`[N, N]`.
        num_layers (int, optional): Number of graph layers; hidden layers have 1024 channels,
            as in the paper. (default: :obj:`2`)
        hidden_channels (Sequence[int], optional): Overrides ``num_layers``: the output sizes
            of all graph layers but the last. (default: :obj:`None`)
        node_features (torch.Tensor, optional): :obj:`[N, d]` label node features
            (default: :obj:`None`, one-hot).
        pretrained (str or os.PathLike, optional): A **local** timm checkpoint for the
            backbone (``.pth``/``.pt``/``.bin`` or ``.safetensors``); its classifier is
            dropped. Nothing is downloaded. (default: :obj:`None`, random initialisation)
        learn_node_features (bool, optional): Make the node features trainable.
        head_kwargs (dict, optional): More :class:`~agcn_pyg.MultiLabelHead` /
            :class:`~agcn_pyg.AdaptiveGCNConv` options, e.g. ``{"similarity": False}``.
        **timm_kwargs: Passed to :func:`timm.create_model`.
    """
    if num_layers < 1:
        raise ValueError(f"'num_layers' must be at least 1 (got {num_layers})")
    if hidden_channels is None:
        hidden_channels = (1024,) * (num_layers - 1)

    if pretrained is not None:
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"'pretrained' must be a local timm checkpoint file (.pth or .safetensors); "
                f"'{path}' does not exist"
            )
        # timm's own loader, pointed at the file: it adapts the stem and drops the
        # classifier exactly as for hub weights, and never reaches the network.
        timm_kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=path))
    backbone = timm.create_model(model_name, num_classes=0, **timm_kwargs)

    head = MultiLabelHead(
        backbone.num_features,
        num_labels,
        adj,
        node_features=node_features,
        hidden_channels=hidden_channels,
        learn_node_features=learn_node_features,
        **(head_kwargs or {}),
    )
    return MLAGCN(backbone, head)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (buffers such as the fixed label graph are not counted)."""
    return sum(p.numel() for p in module.parameters())


def paper_parameter_counts(num_labels: int, num_layers: int, backbone: str = "tresnet_m"):
    """(ours, ours + N*N) parameter counts in millions for the paper's models, built without
    weights: the second adds the N x N label graph, as ML-GCN registers A as a parameter —
    the convention that reproduces the paper's VG-500 counts (README)."""
    model = create_model(backbone, num_labels, torch.zeros(num_labels, num_labels),
                         num_layers=num_layers)
    n = count_parameters(model)
    return n / 1e6, (n + num_labels**2) / 1e6
