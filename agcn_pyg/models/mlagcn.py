"""ML-AGCN on any timm backbone: ``create_model`` and the model it returns (Fig. 2), a timm
citizen (``pretrained_cfg``, ``forward_features``/``forward_head``, ``get_classifier``,
``reset_classifier``, ...)."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from agcn_pyg.models.backbone import create_backbone, pooled_feature_size
from agcn_pyg.models.head import MultiLabelHead
from agcn_pyg.models.pretrained import read_pretrained, write_pretrained

#: The data-config keys :meth:`MLAGCN.set_data_config` accepts (timm's).
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


class MLAGCN(nn.Module):
    """A timm backbone that pools an image into a :math:`D`-dimensional feature, and a
    :class:`~agcn_pyg.MultiLabelHead` whose :math:`N` classifiers score it (Fig. 2).

    ``forward`` maps images :obj:`[B, 3, H, W]` to logits :obj:`[B, N]`. The model follows
    timm's model API, so timm's helpers work with it unchanged
    (:func:`timm.data.resolve_data_config`, :func:`timm.data.create_transform`,
    :func:`timm.optim.create_optimizer_v2` with weight or layer decay, EMA, schedulers):

    * ``pretrained_cfg`` (alias ``default_cfg``): the backbone's, with ``num_classes`` =
      :math:`N`, ``label_names``, ``classifier="head"``, and the input size, mean, std,
      interpolation and crop the model is evaluated with (:meth:`set_data_config`);
    * ``num_classes`` (:math:`N`), ``num_features`` (the backbone's, channels of
      :meth:`forward_features`), ``head_hidden_size`` (:math:`D`, the pooled feature);
    * :meth:`forward_features`, :meth:`forward_head` (``pre_logits=True`` gives the pooled
      feature), :meth:`get_classifier` (the graph head), :meth:`reset_classifier`,
      :meth:`set_grad_checkpointing`, :meth:`no_weight_decay`, :meth:`group_matcher`;
    * feature extraction: :attr:`feature_info`, :meth:`forward_intermediates`,
      :meth:`prune_intermediate_layers` (the backbone's), and :mod:`torch.fx` through timm's
      tracer, for which the graph head is a leaf module;
    * without a head (``create_model(name, num_classes=0)`` or ``reset_classifier(0)``),
      ``forward`` returns the pooled features, unpooled with ``global_pool=""``;
    * :meth:`save_pretrained` / :meth:`from_pretrained`: ``model.safetensors`` +
      ``config.json``, no pickle (:mod:`agcn_pyg.models.pretrained`).

    Args:
        backbone (torch.nn.Module): A timm model built with ``num_classes=0``.
        head (MultiLabelHead): The graph head; its ``in_features`` must be the backbone's
            pooled-feature size (:class:`torch.nn.Identity` for a model without one).
        label_names (Sequence[str], optional): The :math:`N` label names.
        config (dict, optional): The :func:`create_model` arguments that rebuild the model
            (set by :func:`create_model`; needed by :meth:`save_pretrained`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: MultiLabelHead,
        label_names: Sequence[str] | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        pooled = pooled_feature_size(backbone)
        if isinstance(head, MultiLabelHead) and head.in_features != pooled:
            raise ValueError(
                f"'head' takes {head.in_features} features, but the backbone pools to "
                f"{pooled} (its head_hidden_size / num_features)"
            )
        self.backbone = backbone
        self.head = head
        self.config = dict(config) if config is not None else None
        self.pretrained_cfg = _model_pretrained_cfg(backbone, self.num_classes, label_names)

    # -- timm's model API -----------------------------------------------------------------

    @property
    def default_cfg(self) -> dict[str, Any]:
        """Alias of ``pretrained_cfg`` (timm's older name)."""
        return self.pretrained_cfg

    @property
    def num_classes(self) -> int:
        """Number of labels :math:`N` (0 after ``reset_classifier(0)``)."""
        return self.head.num_labels if isinstance(self.head, MultiLabelHead) else 0

    @property
    def num_features(self) -> int:
        """Channels of :meth:`forward_features`' output (the backbone's ``num_features``)."""
        return int(self.backbone.num_features)

    @property
    def head_hidden_size(self) -> int:
        """Size :math:`D` of the pooled feature the classifiers apply to."""
        return pooled_feature_size(self.backbone)

    @property
    def label_names(self) -> list[str] | None:
        names = self.pretrained_cfg.get("label_names")
        return list(names) if names is not None else None

    def forward_features(self, images: Tensor) -> Tensor:
        """The backbone's unpooled features (``backbone.forward_features``)."""
        return self.backbone.forward_features(images)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Pools ``features`` as the backbone does before its classifier
        (``backbone.forward_head(features, pre_logits=True)``, :obj:`[B, D]`) and, unless
        ``pre_logits``, applies the :math:`N` label classifiers (:obj:`[B, N]`)."""
        pooled = self.backbone.forward_head(features, pre_logits=True)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))

    def get_classifier(self) -> nn.Module:
        """The graph head (:class:`~agcn_pyg.MultiLabelHead`)."""
        return self.head

    def reset_classifier(
        self,
        num_classes: int,
        global_pool: str | None = None,
        *,
        adj: Tensor | None = None,
        node_features: Tensor | None = None,
        label_names: Sequence[str] | None = None,
    ) -> None:
        """Replaces the graph head by a new, freshly initialised one for ``num_classes``
        labels over the label graph ``adj`` (:obj:`[N, N]`), with the layer sizes, heads and
        options the model was created with. As in timm, ``num_classes=0`` removes the head
        (the model then returns pooled features) and ``global_pool`` (timm's second
        positional argument) sets the backbone's pooling: ``reset_classifier(0, "")`` gives
        unpooled features. ``adj`` may be left out when ``num_classes`` is unchanged: the
        current graph and node features are kept. ``adj``, ``node_features`` and
        ``label_names`` are keyword-only, after timm's arguments."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(
                f"'num_classes' must be an integer of at least 0 (got {num_classes!r})")
        if global_pool is not None and not isinstance(global_pool, str):
            raise TypeError(
                f"'global_pool' (timm's second positional argument) must be a pooling type "
                f"such as 'avg' or '' (got {type(global_pool).__name__}); pass the label "
                f"graph as adj=..."
            )
        if num_classes > 0 and global_pool == "":
            raise ValueError(
                f"reset_classifier({num_classes}, global_pool=''): the graph head scores pooled "
                "features; pass num_classes=0 for unpooled features, or a pooling type"
            )
        same = isinstance(self.head, MultiLabelHead) and num_classes == self.num_classes
        if num_classes > 0 and adj is None:
            if not same:
                raise ValueError(
                    f"'adj' (the [N, N] label graph, N = {num_classes}) is needed to "
                    f"reset the classifier from {self.num_classes} to {num_classes} labels"
                )
            adj = self.head.adjacency().detach().clone()
            if node_features is None:
                node_features = self.head.node_features.detach().clone()
        if label_names is None and same:
            label_names = self.label_names
        names = _checked_names(label_names, num_classes) if label_names is not None else None
        if global_pool is not None:
            self.backbone.reset_classifier(0, global_pool=global_pool)
            if self.config is not None:
                self.config["timm_kwargs"]["global_pool"] = global_pool
        self.head = nn.Identity() if num_classes == 0 else self._new_head(
            num_classes, adj, node_features)
        self._record_labels(num_classes, names)

    def _new_head(self, num_classes: int, adj: Tensor, node_features: Tensor | None):
        head = MultiLabelHead(pooled_feature_size(self.backbone), num_classes, adj,
                              node_features=node_features, **self._head_options())
        ref = next(self.backbone.parameters(), None)
        if ref is not None:
            head.to(device=ref.device, dtype=ref.dtype)
        return head

    def _record_labels(self, num_classes: int, label_names: tuple[str, ...] | None) -> None:
        """``num_classes`` and the label names in ``config`` and ``pretrained_cfg``."""
        if self.config is not None:
            self.config["num_labels"] = num_classes
        cfg = self.pretrained_cfg
        cfg["num_classes"] = num_classes
        cfg.pop("label_names", None)
        if label_names is not None:
            cfg["label_names"] = label_names

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """The backbone's ``feature_info`` (channels ``num_chs``, ``reduction`` and
        ``module`` of each feature level) with this model's module names
        (``backbone.layer1``), as timm's feature extraction expects them."""
        info = getattr(self.backbone, "feature_info", None)
        if info is None:
            raise AttributeError(f"the backbone {_arch(self.backbone)!r} has no feature_info")
        out = [dict(level) for level in info]
        for level in out:
            if level.get("module"):
                level["module"] = f"backbone.{level['module']}"
        return out

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        **kwargs,
    ):
        """The backbone's ``forward_intermediates`` (timm's signature and meaning): the
        feature maps of the levels ``indices`` (the last ``n`` for an int, all for
        :obj:`None`) and, unless ``intermediates_only``, the final
        :meth:`forward_features` output first: ``(final, [intermediates])``. Further
        keyword arguments (e.g. a ViT's ``return_prefix_tokens``) go to the backbone."""
        self._backbone_method("forward_intermediates")
        return self.backbone.forward_intermediates(
            x, indices=indices, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
            intermediates_only=intermediates_only, **kwargs)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """The backbone's ``prune_intermediate_layers``: removes the layers after the last
        of ``indices`` (and, with ``prune_norm``, the final norm) and returns the indices
        kept. With ``prune_head``, the graph head goes too, as timm's classifier does
        (``num_classes`` becomes 0)."""
        self._backbone_method("prune_intermediate_layers")
        kept = self.backbone.prune_intermediate_layers(
            indices, prune_norm=prune_norm, prune_head=prune_head)
        if prune_head:
            self.head = nn.Identity()
            self._record_labels(0, None)
        return kept

    def _backbone_method(self, name: str) -> None:
        if not callable(getattr(self.backbone, name, None)):
            raise NotImplementedError(
                f"the backbone {_arch(self.backbone)!r} has no {name}() (timm added it "
                f"model family by model family); use forward_features or timm's "
                f"features_only=True on the backbone"
            )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in the backbone (its ``set_grad_checkpointing``)."""
        self.backbone.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        """What the backbone exempts from weight decay (e.g. a ViT's ``pos_embed``), with
        this model's parameter names; timm's optimizer factory reads it."""
        skip = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{n}" for n in skip}

    def group_matcher(self, coarse: bool = False):
        """Parameter groups for layer-wise learning-rate decay: the backbone's groups
        (its ``group_matcher``), then the graph head as the last group."""
        from timm.models import group_parameters

        groups = group_parameters(self.backbone, self.backbone.group_matcher(coarse=coarse))
        ordinal = {f"backbone.{n}": i for i, names in groups.items() for n in names}
        last = max(groups, default=-1) + 1
        return lambda name: ordinal.get(name, last)

    def set_data_config(self, data_config: Mapping[str, Any]) -> None:
        """Records in ``pretrained_cfg`` the preprocessing the model is trained and
        evaluated with (timm's keys :data:`DATA_CONFIG_KEYS`, e.g. the ASL recipe's squash
        resize: ``crop_mode="squash"``, ``crop_pct=1.0``,
        :func:`~agcn_pyg.data.transforms.squash_data_config`), so that
        ``timm.data.resolve_data_config({}, model=model)`` returns it. The backbone's
        test-time recommendations (``test_input_size``, ``test_crop_pct``) are dropped."""
        unknown = sorted(set(data_config) - set(DATA_CONFIG_KEYS))
        if unknown:
            raise ValueError(
                f"'data_config' has unknown keys {unknown}; expected some of "
                f"{list(DATA_CONFIG_KEYS)}"
            )
        cfg = self.pretrained_cfg
        for key, value in data_config.items():
            cfg[key] = tuple(value) if isinstance(value, (list, tuple)) else value
        for key in ("test_input_size", "test_crop_pct", "test_pool_size"):
            cfg.pop(key, None)

    def _head_options(self) -> dict[str, Any]:
        """``MultiLabelHead`` options of the current head, for :meth:`reset_classifier`."""
        if self.config is not None:
            return dict(
                hidden_channels=self.config["hidden_channels"],
                learn_node_features=self.config["learn_node_features"],
                **self.config["head_kwargs"],
            )
        if isinstance(self.head, MultiLabelHead):
            return dict(
                hidden_channels=list(self.head.hidden_channels),
                learn_node_features=isinstance(self.head.node_features, nn.Parameter),
                heads=self.head.heads,
                concat=self.head.concat,
            )
        return {}

    # -- sharing -----------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Writes ``model.safetensors`` and ``config.json`` to ``folder``
        (:func:`save_pretrained`)."""
        save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: Any = "cpu") -> MLAGCN:
        """Rebuilds a model written by :meth:`save_pretrained`
        (:func:`from_pretrained`)."""
        return from_pretrained(folder, device=device)

    # -- training helpers ----------------------------------------------------------------

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups with no weight decay on biases, norms and other 1-D
        parameters, nor on :meth:`no_weight_decay` (timm's rule, reused through
        :func:`timm.optim.param_groups_weight_decay`)."""
        from timm.optim import param_groups_weight_decay

        return param_groups_weight_decay(
            self, weight_decay, no_weight_decay_list=self.no_weight_decay()
        )


def _arch(backbone: nn.Module) -> str:
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(backbone).__name__


def _checked_names(label_names: Sequence[str], num_labels: int) -> tuple[str, ...]:
    if isinstance(label_names, str) or len(label_names) != num_labels:
        raise ValueError(
            f"'label_names' must be {num_labels} names, one per label (got "
            f"{label_names if isinstance(label_names, str) else len(label_names)})"
        )
    return tuple(str(n) for n in label_names)


def _backbone_data_config(backbone: nn.Module) -> dict[str, Any]:
    """The input config of the backbone as built: timm's ``resolve_input_data_config``
    where it exists (it knows that a ViT built with ``img_size=384`` takes 384 px)."""
    try:
        from timm.data import resolve_input_data_config
    except ImportError:  # timm < 1.0.20: the pretrained config alone
        from timm.data import resolve_data_config

        return dict(resolve_data_config({}, model=backbone))
    return dict(resolve_input_data_config(backbone))


def _model_pretrained_cfg(
    backbone: nn.Module, num_classes: int, label_names: Sequence[str] | None
) -> dict[str, Any]:
    """The backbone's ``pretrained_cfg`` made the model's: no weight source (the model's
    weights are not the backbone's checkpoint), the input the backbone as built takes,
    ``num_classes`` = :math:`N`, the label names, and the module names with this model's
    prefixes (``first_conv``, ``classifier="head"``) as timm's tools expect them."""
    from timm.models import filter_pretrained_cfg

    source = dict(getattr(backbone, "pretrained_cfg", None) or {})
    source.pop("state_dict", None)
    cfg = filter_pretrained_cfg(copy.deepcopy(source), remove_source=True)
    data = _backbone_data_config(backbone)
    if tuple(data["input_size"]) != tuple(source.get("input_size") or ()):
        for key in ("test_input_size", "test_pool_size"):
            cfg.pop(key, None)
        cfg["pool_size"] = None
    cfg.update(data)
    first_conv = cfg.get("first_conv")
    if isinstance(first_conv, str):
        cfg["first_conv"] = f"backbone.{first_conv}"
    elif first_conv:
        cfg["first_conv"] = tuple(f"backbone.{c}" for c in first_conv)
    cfg.update(classifier="head", num_classes=num_classes, custom_load=False)
    for key in ("label_names", "label_descriptions", "label_offset"):
        cfg.pop(key, None)
    if label_names is not None:
        cfg["label_names"] = _checked_names(label_names, num_classes)
    return cfg


def create_model(
    model_name: str,
    num_labels: int | None = None,
    adj: Tensor | None = None,
    num_layers: int = 2,
    hidden_channels: Sequence[int] | None = None,
    node_features: Tensor | None = None,
    pretrained: str | os.PathLike | None = None,
    learn_node_features: bool = False,
    head_kwargs: dict | None = None,
    label_names: Sequence[str] | None = None,
    heads: int | None = None,
    **timm_kwargs,
) -> MLAGCN:
    """Builds ML-AGCN on the timm model ``model_name`` (Section 3.1).

    The backbone is ``timm.create_model(model_name, num_classes=0, **timm_kwargs)``, with its
    own global pooling, so any timm CNN or ViT works (``img_size=...`` for a ViT goes in
    ``timm_kwargs``). The classifiers apply to what the backbone returns before its own
    classifier (``forward_head(x, pre_logits=True)``: ``head_hidden_size`` features, which
    for MobileNetV3, GhostNet, HGNetV2 or LCNet exceeds ``num_features``).

    ``num_labels=0`` (or timm's ``num_classes=0``) builds the model without its graph head,
    as timm does: ``forward`` returns the pooled features (:obj:`[B, D]`; unpooled with
    ``global_pool=""``), and no ``adj`` is needed. The head options given are kept, so
    ``model.reset_classifier(N, adj=A)`` adds the head they describe later.

    Args:
        model_name (str): A timm model name, e.g. ``"tresnet_m"`` (the paper's backbone).
        num_labels (int): Number of labels :math:`N`; ``num_classes`` (timm's name) is the
            same argument. ``0`` builds no head.
        adj (torch.Tensor): The label graph :math:`\\mathbf{A}`, :obj:`[N, N]`, dense or
            sparse (:obj:`torch.sparse`: the layers then take the complete path, exact in
            :math:`O(N \\log N)`, for label sets of any size; see
            :class:`~agcn_pyg.MultiLabelHead`). Required unless ``num_labels=0``.
        num_layers (int, optional): Number of graph layers; hidden layers have 1024 channels,
            as in the paper. (default: :obj:`2`)
        hidden_channels (Sequence[int], optional): Overrides ``num_layers``: the output sizes
            of all graph layers but the last. (default: :obj:`None`)
        node_features (torch.Tensor, optional): :obj:`[N, d]` label node features
            (default: :obj:`None`, one-hot).
        pretrained (str or os.PathLike, optional): A **local** weights file of the backbone
            (``.safetensors``/``.pth``/``.pt``/``.bin``, or a folder holding
            ``model.safetensors`` or ``pytorch_model.bin``), read with ``weights_only=True``;
            its classifier is dropped and every other key must fit the backbone (see
            :func:`agcn_pyg.models.backbone.load_backbone_weights`). Nothing is downloaded:
            ``True`` and hub names are refused. (default: :obj:`None`, random init)
        learn_node_features (bool, optional): Make the node features trainable.
        head_kwargs (dict, optional): More :class:`~agcn_pyg.MultiLabelHead` /
            :class:`~agcn_pyg.AdaptiveGCNConv` options, e.g. ``{"similarity": False}`` or
            ``{"heads": 4, "concat": False}``.
        label_names (Sequence[str], optional): The :math:`N` label names, kept in
            ``model.pretrained_cfg["label_names"]``.
        heads (int, optional): Attention heads of every graph layer (the head's multi-head
            layout: :class:`~agcn_pyg.MultiLabelHead`); kept in ``head_kwargs["heads"]``, so
            it travels with the model's config. (default: :obj:`None`, i.e. 1, the paper's)
        **timm_kwargs: Passed to :func:`timm.create_model`.
    """
    num_labels = _num_labels(num_labels, timm_kwargs.pop("num_classes", None))
    if num_layers < 1:
        raise ValueError(f"'num_layers' must be at least 1 (got {num_layers})")
    if hidden_channels is None:
        hidden_channels = (1024,) * (num_layers - 1)
    head_kwargs = _with_heads(dict(head_kwargs or {}), heads)
    if num_labels == 0:
        _check_headless(adj, node_features, label_names)
    elif adj is None:
        raise ValueError(
            f"'adj' (the [N, N] label graph, N = {num_labels}) is required; pass "
            f"num_labels=0 (timm's num_classes=0) for the model without its graph head"
        )
    elif timm_kwargs.get("global_pool") == "":
        raise ValueError(
            "global_pool='' leaves the features unpooled, but the graph head scores pooled "
            "features; pass num_labels=0 (num_classes=0) for unpooled features"
        )

    backbone = create_backbone(model_name, pretrained=pretrained, **timm_kwargs)
    head = nn.Identity() if num_labels == 0 else MultiLabelHead(
        pooled_feature_size(backbone),
        num_labels,
        adj,
        node_features=node_features,
        hidden_channels=hidden_channels,
        learn_node_features=learn_node_features,
        **head_kwargs,
    )
    config = dict(
        model_name=model_name,
        num_labels=num_labels,
        hidden_channels=[int(c) for c in hidden_channels],
        learn_node_features=bool(learn_node_features),
        head_kwargs=head_kwargs,
        timm_kwargs=dict(timm_kwargs),
    )
    names = label_names if num_labels > 0 else None
    return MLAGCN(backbone, head, label_names=names, config=config)


def _num_labels(num_labels: int | None, num_classes: int | None) -> int:
    """``num_labels``, or timm's name for it, ``num_classes``: one of them, or both equal."""
    if num_labels is None and num_classes is None:
        raise TypeError(
            "create_model() needs 'num_labels' (timm's 'num_classes'): the number of labels "
            "N, or 0 for the model without its graph head"
        )
    if num_labels is not None and num_classes is not None and num_labels != num_classes:
        raise ValueError(
            f"'num_labels' ({num_labels}) and 'num_classes' ({num_classes}) are the same "
            f"argument and disagree; pass one of them"
        )
    n = num_labels if num_labels is not None else num_classes
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"'num_labels' must be an integer of at least 0 (got {n!r})")
    return n


def _with_heads(head_kwargs: dict, heads: int | None) -> dict:
    if heads is None:
        return head_kwargs
    if head_kwargs.get("heads", heads) != heads:
        raise ValueError(
            f"'heads' ({heads}) and head_kwargs['heads'] ({head_kwargs['heads']}) disagree; "
            f"pass one of them"
        )
    if heads != 1 or "heads" in head_kwargs:
        head_kwargs["heads"] = heads
    return head_kwargs


def _check_headless(adj, node_features, label_names) -> None:
    """With ``num_labels=0`` there is no head: a label graph, node features or names for
    some labels are a mistake (an empty one is accepted)."""
    for name, value in (("adj", adj), ("node_features", node_features),
                        ("label_names", label_names)):
        if value is not None and len(value) > 0:
            raise ValueError(
                f"'{name}' was given for {len(value)} labels, but num_labels=0 builds the "
                f"model without its graph head; add the head with "
                f"model.reset_classifier(N, adj=...)"
            )


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


def save_pretrained(model: MLAGCN, folder: str | os.PathLike) -> None:
    """Writes ``model`` (as it is: call it on the EMA copy to share the EMA weights) to
    ``folder`` in the sharing format of :mod:`agcn_pyg.models.pretrained`: safetensors weights
    and the ``config.json`` :func:`from_pretrained` rebuilds it from."""
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
    param = next(model.parameters())
    config = dict(
        backbone=model.config["model_name"],
        num_classes=model.num_classes,
        num_features=model.num_features,
        head_hidden_size=model.head_hidden_size,
        label_names=model.label_names,
        dtype=str(param.dtype).removeprefix("torch."),
        model_config=model.config,
        pretrained_cfg=model.pretrained_cfg,
    )
    write_pretrained(folder, model.state_dict(), config)


def from_pretrained(folder: str | os.PathLike, device: Any = "cpu") -> MLAGCN:
    """Rebuilds the model :func:`save_pretrained` wrote to ``folder``, in eval mode, on
    ``device``: same weights, label graph, node features, label names and
    ``pretrained_cfg``, hence the same logits. Reads JSON and safetensors only (no pickle);
    nothing is downloaded (the backbone is built without weights, then filled)."""
    config, adj, node_features, state = read_pretrained(folder)
    mc = config["model_config"]
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
    model.to(getattr(torch, config.get("dtype", "float32")))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"the weights in '{folder}' do not fit the model its config.json "
                         f"describes: {e}") from e
    model.pretrained_cfg = config["pretrained_cfg"]
    return model.to(device).eval()
