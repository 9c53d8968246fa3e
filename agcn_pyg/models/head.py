"""The GCN subnet of ML-AGCN (Section 3.1, Fig. 2): label nodes in, one classifier per label out."""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor, nn

from agcn_pyg.nn.conv import AdaptiveGCNConv, AdaptiveGraphs


@register_notrace_module  # a leaf for timm's torch.fx feature extraction (see forward)
class MultiLabelHead(nn.Module):
    r"""A stack of :class:`~agcn_pyg.AdaptiveGCNConv` layers over the complete label graph that
    turns the :math:`N` label nodes into :math:`N` classifiers of the image feature size
    :math:`D`, and applies them to pooled image features (Fig. 2):

    .. math::
        \mathbf{F}^{(l+1)} = h\left((\mathbf{A} + \mathbf{B}^{(l)} + \mathbf{C}^{(l)})
        \mathbf{F}^{(l)} \mathbf{W}_l\right), \qquad
        \hat{\mathbf{y}} = \mathbf{x} \, \left(\mathbf{F}^{(L)}\right)^{\top}

    (eq. 3), with :math:`h` = LeakyReLU(0.2) between layers and no activation after the last
    one, as in ML-GCN, so the classifiers can take any sign. At initialisation the last layer
    is scaled so that the classifiers start with the spread of a linear head's weights (see
    :meth:`_match_linear_init`).

    In :meth:`eval` mode with gradients disabled the classifiers do not depend on the image:
    they are computed once and reused until the module trains again, moves, or any of its
    parameters or buffers changes (every in-place update bumps a tensor's version counter,
    which the cache key includes), so inference costs one matrix product, like a linear head.

    **Label sets of any size.** With a sparse :math:`\mathbf{A}` (a :obj:`torch.sparse` matrix,
    e.g. :meth:`LabelGraph.adjacency() <agcn_pyg.LabelGraph.adjacency>` of a graph built from
    sparse labels) the layers take the complete path (:obj:`complete=True`): eq. 3-7 over every
    pair of labels, exactly, in :math:`O(N \log N)` time and :math:`O(N F + \mathrm{nnz})`
    memory, no :obj:`[N, N]` matrix. One-hot node features are an :obj:`[N, N]` matrix, so
    beyond :attr:`max_one_hot_labels` labels :obj:`node_features` must be given.

    **Several attention heads** (:obj:`heads` :math:`H > 1`): every layer has :math:`H`
    heads, each with its own :math:`\mathbf{W}`, attention and
    :math:`\mathbf{B}_h, \mathbf{C}_h` (:class:`~agcn_pyg.AdaptiveGCNConv`'s ``heads``),
    laid out as in a GAT: a hidden layer of size :math:`c` concatenates :math:`H` heads of
    :math:`c / H` channels (:obj:`concat=True`; :math:`H` must divide :math:`c`) or averages
    :math:`H` heads of :math:`c` channels (:obj:`concat=False`), and the last layer always
    averages its :math:`H` heads of :math:`D` channels, so the classifiers stay :math:`D`-wide.
    :obj:`heads=1` builds exactly the single-head layers of the paper.

    **torch.fx**: the head is a leaf module for timm's tracer
    (:func:`timm.layers.register_notrace_module`; :func:`timm.models.create_feature_extractor`
    and ``features_only=True, feature_cls="fx"`` use it); with torchvision's
    :func:`~torchvision.models.feature_extraction.create_feature_extractor` pass
    ``tracer_kwargs={"leaf_modules": [MultiLabelHead]}``. Its classifiers come from graph
    layers with data-dependent paths, which fx does not trace; they do not depend on the
    batch, so nothing is lost by calling the head as one module.

    Args:
        in_features (int): Size :math:`D` of the pooled image feature.
        num_labels (int): Number of labels :math:`N`.
        adj (torch.Tensor): The fixed label graph :math:`\mathbf{A}`, :obj:`[N, N]`,
            ``adj[i, j]`` = weight of :math:`j \to i` (see :mod:`agcn_pyg.data.label_graph`),
            dense or sparse (:obj:`torch.sparse` COO, CSR or CSC). Stored as a buffer
            (:obj:`adj`; for a sparse one :obj:`adj_index` and :obj:`adj_weight`, its
            :obj:`edge_index` and weights).
        node_features (torch.Tensor, optional): Label node features :math:`\mathbf{F}^{(0)}`,
            :obj:`[N, d]`: word vectors, image embeddings (:mod:`agcn_pyg.data.node_features`).
            (default: :obj:`None`, the one-hot identity, :math:`d = N`, with which the
            parameter counts match the paper; up to :attr:`max_one_hot_labels` labels)
        hidden_channels (Sequence[int], optional): Output sizes of all layers but the last;
            ``()`` gives the paper's 1-layer model, ``(1024,)`` its 2-layer model.
            (default: :obj:`(1024,)`)
        learn_node_features (bool, optional): Make the node features a parameter.
            (default: :obj:`False`)
        negative_slope (float, optional): LeakyReLU slope between layers. (default: :obj:`0.2`)
        heads (int, optional): Attention heads :math:`H` of every layer. (default: :obj:`1`)
        concat (bool, optional): Whether the hidden layers concatenate their heads (each
            head then has ``hidden_channels[i] / heads`` channels) rather than average them;
            the last layer always averages. Only used with :obj:`heads > 1`.
            (default: :obj:`True`)
        **conv_kwargs (optional): Passed to every :class:`~agcn_pyg.AdaptiveGCNConv`
            (:obj:`attention`, :obj:`similarity`, :obj:`share_weights`, :obj:`dropout`, ...;
            :obj:`complete` defaults to :obj:`True` for a sparse :obj:`adj`).

    Shapes:
        - **input:** image features :math:`(B, D)`
        - **output:** logits :math:`(B, N)`
    """

    #: Default one-hot node features are an [N, N] matrix (1 GiB in float32 at this size).
    max_one_hot_labels: int = 16384

    def __init__(
        self,
        in_features: int,
        num_labels: int,
        adj: Tensor,
        node_features: Tensor | None = None,
        hidden_channels: Sequence[int] = (1024,),
        learn_node_features: bool = False,
        negative_slope: float = 0.2,
        heads: int = 1,
        concat: bool = True,
        **conv_kwargs,
    ):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"'num_labels' must be at least 1 (got {num_labels})")
        hidden_channels = tuple(int(c) for c in hidden_channels)
        _check_heads(heads, concat, hidden_channels)
        adj = torch.as_tensor(adj)
        if tuple(adj.shape) != (num_labels, num_labels):
            raise ValueError(
                f"'adj' must be [num_labels, num_labels] = [{num_labels}, {num_labels}] "
                f"(got {list(adj.shape)})"
            )
        sparse = adj.layout != torch.strided
        if sparse:  # as edge_index (row 0 the source j) and weights: plain buffers
            adj = adj.to_sparse_coo().coalesce()
            target, source = adj.indices()
            adj_index, adj = torch.stack([source, target]), adj.values()
            conv_kwargs.setdefault("complete", True)
        if not torch.isfinite(adj).all():
            raise ValueError("'adj' contains NaN or infinite entries")
        if node_features is None:
            if num_labels > self.max_one_hot_labels:
                raise ValueError(
                    f"'node_features' is required for num_labels = {num_labels} > "
                    f"MultiLabelHead.max_one_hot_labels = {self.max_one_hot_labels}: one-hot "
                    f"features would be an [N, N] matrix ({num_labels**2 * 4 / 2**30:.1f} GiB "
                    "in float32). Pass [N, d] label features (word vectors or image "
                    "embeddings, see agcn_pyg.data.node_features)"
                )
            node_features = torch.eye(num_labels)
        node_features = torch.as_tensor(node_features, dtype=torch.get_default_dtype())
        if node_features.dim() != 2 or node_features.size(0) != num_labels:
            raise ValueError(
                f"'node_features' must be [num_labels, d] with num_labels = {num_labels} "
                f"(got {list(node_features.shape)})"
            )
        if not torch.isfinite(node_features).all():
            raise ValueError("'node_features' contains NaN or infinite entries")

        self.in_features = in_features
        self.num_labels = num_labels
        self.negative_slope = negative_slope
        self.hidden_channels = hidden_channels
        self.heads = int(heads)
        self.concat = bool(concat)
        if sparse:
            self.register_buffer("adj_index", adj_index)
            self.register_buffer("adj_weight", adj.to(torch.get_default_dtype()))
        else:
            self.register_buffer("adj", adj.to(torch.get_default_dtype()))
        if learn_node_features:
            self.node_features = nn.Parameter(node_features.clone())
        else:
            self.register_buffer("node_features", node_features.clone())

        channels = [node_features.size(1), *hidden_channels, in_features]
        # The first layer's input is fixed unless learned: its C (eq. 7) is computed once.
        self.convs = nn.ModuleList(
            self._layer(c_in, c_out, last=(i == len(channels) - 2),
                        cached=(i == 0 and not learn_node_features), **conv_kwargs)
            for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True))
        )
        self._cache: tuple[list, Tensor] | None = None
        self.reset_parameters()

    def _layer(self, c_in: int, c_out: int, last: bool, **conv_kwargs) -> AdaptiveGCNConv:
        """One graph layer with :obj:`c_out` output channels (see the class docstring for
        the multi-head layout)."""
        if self.heads == 1:  # the paper's layer, built as before heads existed
            return AdaptiveGCNConv(c_in, c_out, **conv_kwargs)
        concat = self.concat and not last
        per_head = c_out // self.heads if concat else c_out
        return AdaptiveGCNConv(c_in, per_head, heads=self.heads, concat=concat, **conv_kwargs)

    def reset_parameters(self):
        for conv in self.convs:
            conv.reset_parameters()
        self._match_linear_init()

    @torch.no_grad()
    def _match_linear_init(self):
        r"""Scales the last layer's :math:`\mathbf{W}_l` so that the initial classifiers have
        the spread of a linear head's weights (:class:`torch.nn.Linear`: standard deviation
        :math:`1/\sqrt{3D}`). The rows of :math:`\mathbf{A} + \mathbf{B} + \mathbf{C}` sum to
        up to :math:`N + 2 + \sum_j a_{ij}`, so without this the first logits are tens of
        times a linear head's: the sigmoid saturates and ASL's gradient vanishes. The
        classifiers are linear in that matrix (the bias starts at zero) and the attention has
        its own matrices, so only their scale changes.

        A normalised :math:`\mathbf{A}` does not make it unnecessary: much of the excess
        comes from :math:`\mathbf{C}` in the last layer, whose input features (after a
        LeakyReLU) start far from orthogonal (on COCO's graph the cosines average 0.3, so
        the rows of :math:`\mathbf{C}` sum to 22-27 for :math:`N = 80`). Measured on COCO's
        label graph with 2 layers, the first logits have 30 to 84 times a linear head's RMS
        without this for every variant of :math:`\mathbf{A}`, and 21 times with
        :math:`\mathbf{A} = 0` (README, "Fidelity")."""
        weight = self.convs[-1].lin.weight
        rms = self.classifiers().pow(2).mean().sqrt()
        if rms > 0:
            weight.mul_(1.0 / (math.sqrt(3 * self.in_features) * rms))
        self._cache = None

    def classifiers(self) -> Tensor:
        """The :obj:`[N, in_features]` label classifiers (the last layer's node features)."""
        x = self.node_features
        for i, conv in enumerate(self.convs):
            x = conv(x, *self._graph())
            if i < len(self.convs) - 1:
                x = F.leaky_relu(x, self.negative_slope)
        return x

    def adjacency(self) -> Tensor:
        """The fixed label graph :math:`\\mathbf{A}` as given: the dense :obj:`[N, N]` buffer,
        or a sparse COO matrix rebuilt from :obj:`adj_index` and :obj:`adj_weight`."""
        if hasattr(self, "adj_index"):
            n = self.num_labels
            return torch.sparse_coo_tensor(
                self.adj_index.flip(0), self.adj_weight, (n, n), check_invariants=False
            ).coalesce()
        return self.adj

    def _graph(self) -> tuple[Tensor, ...]:
        """The layers' graph arguments: the dense adjacency, or edge_index and weights."""
        if hasattr(self, "adj_index"):
            return self.adj_index, self.adj_weight
        return (self.adj,)

    def compile_classifiers(self, **compile_kwargs) -> MultiLabelHead:
        """Runs :meth:`classifiers` (the graph layers) through :func:`torch.compile`: fewer,
        fused kernels for a training step, where the head's cost is launch overhead; on CUDA,
        ``mode="reduce-overhead"`` replays the whole computation as CUDA graphs (the head
        does not depend on the batch, so one graph serves every step). Call it on the model
        that trains, after copying it for EMA."""
        self.classifiers = torch.compile(self.classifiers, **compile_kwargs)
        return self

    def capture_classifiers(self) -> MultiLabelHead:
        """On CUDA, :meth:`compile_classifiers` with ``mode="reduce-overhead"``: the
        classifiers' forward and backward replayed as CUDA graphs, one launch each instead of
        dozens (issue 21; the head's cost at N = 80 is launch overhead). Elsewhere nothing:
        the CPU has no CUDA graphs, and compiling there costs more than it saves. Call it on
        the model that trains, after copying it for EMA; ``examples/coco_train.py`` does by
        default on one GPU."""
        if self.convs[0].lin.weight.is_cuda:
            self.compile_classifiers(mode="reduce-overhead", dynamic=False)
        return self

    def forward(self, features: Tensor) -> Tensor:
        if isinstance(features, torch.fx.Proxy):  # traced through rather than as a leaf
            raise TypeError(
                "MultiLabelHead must be a leaf module when traced with torch.fx (its graph "
                "layers are not fx-traceable): timm's create_feature_extractor does this; "
                "with torchvision's, pass tracer_kwargs={'leaf_modules': [MultiLabelHead]}"
            )
        if features.dim() != 2 or features.size(-1) != self.in_features:
            raise ValueError(
                f"image features must be [batch, {self.in_features}] (got "
                f"{list(features.shape)}); is the backbone's num_features {self.in_features}?"
            )
        return features @ self._cached_classifiers().t().to(features.dtype)

    def _cached_classifiers(self) -> Tensor:
        # A cached tensor has no autograd graph: recompute whenever gradients can flow.
        if self.training or (
            torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        ):
            self._cache = None
            return self.classifiers()
        # Valid while every parameter and buffer is the same tensor object (weak references:
        # a replaced tensor is not mistaken for its successor at the same address) with the
        # same version counter (in-place updates such as optimizer steps bump it).
        state = list(self._state_tensors())
        if self._cache is not None:
            key, classifiers = self._cache
            if len(key) == len(state) and all(
                ref() is t and version == t._version
                for (ref, version), t in zip(key, state, strict=True)
            ):
                return classifiers
        # A copy: under CUDA graphs (compile mode "reduce-overhead") the output's memory is
        # reused by the next replay.
        classifiers = self.classifiers().clone()
        self._cache = ([(weakref.ref(t), t._version) for t in state], classifiers)
        return classifiers

    def _state_tensors(self):
        yield from self.parameters()
        yield from self.buffers()

    def train(self, mode: bool = True) -> MultiLabelHead:
        self._cache = None
        return super().train(mode)

    @torch.no_grad()
    def graphs(self) -> list[AdaptiveGraphs]:
        """The dense :math:`(\\mathbf{A}, \\mathbf{B}^{(l)}, \\mathbf{C}^{(l)})` of every
        layer, each :obj:`[N, N]`, for inspection and plots (with a sparse :obj:`adj`, up to
        :attr:`AdaptiveGCNConv.max_dense_entries` entries; beyond, the layers'
        :meth:`~agcn_pyg.AdaptiveGCNConv.complete_parts` give rows of them)."""
        out = []
        x = self.node_features
        for i, conv in enumerate(self.convs):
            out.append(conv.graphs(x, *self._graph()))
            x = conv(x, *self._graph())
            if i < len(self.convs) - 1:
                x = F.leaky_relu(x, self.negative_slope)
        return out

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A bias-free :class:`torch.nn.Linear` holding the current classifiers, for
        serving and export: the graph layers are not needed once training is over."""
        weight = self.classifiers()
        linear = nn.Linear(self.in_features, self.num_labels, bias=False)
        linear = linear.to(device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(weight)
        return linear

    def extra_repr(self) -> str:
        heads = f", heads={self.heads}, concat={self.concat}" if self.heads > 1 else ""
        return f"in_features={self.in_features}, num_labels={self.num_labels}{heads}"


def _check_heads(heads: int, concat: bool, hidden_channels: tuple[int, ...]) -> None:
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"'heads' must be an integer of at least 1 (got {heads!r})")
    if heads > 1 and concat:
        uneven = [c for c in hidden_channels if c % heads]
        if uneven:
            raise ValueError(
                f"'hidden_channels' {list(hidden_channels)} must be multiples of heads={heads}: "
                f"a hidden layer concatenates {heads} heads of c / {heads} channels (got "
                f"{uneven}); or pass concat=False to average {heads} heads of c channels"
            )
