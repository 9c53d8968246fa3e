"""The adaptive graph convolution of ML-AGCN (Section 3.2, equations 3-7)."""

from __future__ import annotations

import warnings
import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter
from torch.nn.parameter import UninitializedParameter
from torch_geometric import is_compiling
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import glorot, zeros
from torch_geometric.typing import Adj, OptTensor, SparseTensor
from torch_geometric.utils import (
    add_remaining_self_loops,
    is_sparse,
    is_torch_sparse_tensor,
    scatter,
    softmax,
    to_edge_index,
)


class AdaptiveGraphs(NamedTuple):
    r"""The three graphs an :class:`AdaptiveGCNConv` layer aggregates with (eq. 3).

    For a dense adjacency, :obj:`A`, :obj:`B` and :obj:`C` are :obj:`[N, N]` matrices
    (``B[i, j]`` = weight of the edge :math:`j \to i`) and :obj:`edge_index` is :obj:`None`.
    For sparse input they are :obj:`[E]` vectors aligned with :obj:`edge_index` (after
    self-loops were added). A graph that is switched off is :obj:`None`.
    """

    edge_index: Tensor | None
    A: Tensor
    B: Tensor | None
    C: Tensor | None


class AdaptiveGCNConv(MessagePassing):
    r"""The adaptive graph convolution from the `"ML-AGCN: Multi-Label Image
    Classification with Adaptive Graph Convolutional Networks"` paper (eq. 3):

    .. math::
        \mathbf{x}^{\prime}_i = \sum_{j \in \mathcal{N}(i)}
        \left(a_{i,j} + b_{i,j} + c_{i,j}\right) \mathbf{\Theta} \mathbf{x}_j
        + \mathbf{b},

    the non-linearity :math:`h` of eq. 3 being left to the caller, as for
    :class:`~torch_geometric.nn.conv.GCNConv`. The three graphs are:

    * :math:`a_{i,j}`, the fixed graph (the label co-occurrence :math:`P(j \mid i)` in
      ML-AGCN, with no threshold), given as :obj:`edge_weight` (default :obj:`1`) or as the
      values of a sparse or dense adjacency;
    * :math:`b_{i,j}`, the attention graph (eq. 4-6):

      .. math::
          e_{i,j} &= \mathrm{LeakyReLU}\left(\mathbf{a}_{d}^{\top}\mathbf{\Theta}_{d}
          \mathbf{x}_i + \mathbf{a}_{s}^{\top}\mathbf{\Theta}_{s}\mathbf{x}_j\right)

          \alpha_{i,j} &= \mathrm{softmax}_{j \in \mathcal{N}(i)}\left(e_{i,j}\right)

          b_{i,j} &= \alpha_{i,j} + [i = j] \max_{k \in \mathcal{N}(i)} \alpha_{i,k}

      (eq. 4 is :math:`\mathbf{a}^{\top}[\mathbf{W}\mathbf{f}_i \,\|\, \mathbf{W}\mathbf{f}_j]`;
      the concatenation splits into a target and a source half);
    * :math:`c_{i,j} = \cos(\mathbf{x}_i, \mathbf{x}_j)`, the similarity graph of the layer's
      input features (eq. 7), with :math:`0` for a zero vector.

    Paper symbols and attributes: :math:`\mathbf{W}_l` (eq. 3) is :obj:`lin`; :math:`\mathbf{W}`
    (eq. 4) is :obj:`lin_dst` for the target node :math:`i` and :obj:`lin_src` for the source
    :math:`j` (one module when :obj:`share_weights=True`); :math:`\mathbf{a}` is
    :obj:`att_dst` (first half) and :obj:`att_src` (second half); :obj:`bias` is
    :math:`\mathbf{b}`. With the default three matrices a layer has
    :math:`3 \cdot d_l d_{l+1} + 3 d_{l+1}` parameters, which reproduces the paper's
    published parameter counts. Only :math:`\mathbf{a}_{s}^{\top}\mathbf{\Theta}_{s}` and
    :math:`\mathbf{a}_{d}^{\top}\mathbf{\Theta}_{d}` enter the scores, so the attention costs
    two matrix-vector products, not two extra matrix products.

    Two execution paths give the same result:

    * a **dense** :obj:`[N, N]` floating-point adjacency (``adj[i, j]`` = weight of
      :math:`j \to i`) is read as the *complete* graph with self-loops — every pair is an edge,
      zero-weight pairs included, as ML-AGCN's "no threshold" label graph requires. Scores
      are an :obj:`[N, N]` matrix built from two :obj:`[N]` vectors; :math:`\mathbf{A} +
      \mathbf{B} + \mathbf{C}` is formed once and applied with one matrix product; for
      :math:`N > 2 d_{l+1}` the cosine term is applied as
      :math:`\hat{\mathbf{X}}(\hat{\mathbf{X}}^{\top}\mathbf{H})` without an :obj:`[N, N]`
      matrix. No :obj:`[E, F]` or :obj:`[N, N, F]` intermediate is built.
    * an :obj:`edge_index` (with optional :obj:`edge_weight`), a :obj:`torch.sparse` matrix
      or a :class:`torch_sparse.SparseTensor` (transposed layout, ``adj_t[i, j]`` = weight of
      :math:`j \to i`, as for :class:`~torch_geometric.nn.conv.GCNConv`) takes the
      message-passing path. Only the stored entries are edges.

    Args:
        in_channels (int): Size of each input sample, or :obj:`-1` to derive it from the
            first input.
        out_channels (int): Size of each output sample.
        attention (bool, optional): If set to :obj:`False`, leaves out :math:`\mathbf{B}`
            (the paper's Table 3 ablation) and its parameters. (default: :obj:`True`)
        similarity (bool, optional): If set to :obj:`False`, leaves out :math:`\mathbf{C}`.
            (default: :obj:`True`)
        share_weights (bool, optional): If set to :obj:`True`, one attention matrix
            :math:`\mathbf{W}` serves source and target, as written in eq. 4.
            (default: :obj:`False`)
        negative_slope (float, optional): LeakyReLU angle of the negative slope in eq. 4.
            (default: :obj:`0.2`)
        dropout (float, optional): Dropout probability of the attention coefficients
            :math:`b_{i,j}` during training. (default: :obj:`0.0`)
        add_self_loops (bool, optional): If set to :obj:`False`, will not add self-loops to
            a sparse input graph. Added self-loops get the fixed weight :obj:`fill_value`;
            the self term of eq. 6 needs them, so without them nodes whose self-loop is
            missing get no :math:`\max_k \alpha_{i,k}` term. As with PyG's
            :func:`~torch_geometric.utils.add_remaining_self_loops`, a node with several
            self-loops keeps one of them: coalesce such graphs first. Ignored for dense input, which
            already contains every self-loop. (default: :obj:`True`)
        fill_value (float, optional): The :math:`a_{i,i}` of an added self-loop; :obj:`1`
            matches a co-occurrence graph, where :math:`P(i \mid i) = 1`. Existing
            self-loops keep their weight. (default: :obj:`1.0`)
        cached (bool, optional): If set to :obj:`True`, the dense path computes
            :math:`\mathbf{C}` once and reuses it while :obj:`x` is the same tensor, unchanged
            and without gradient — for fixed inputs such as the node features of a first
            layer (like :class:`~torch_geometric.nn.conv.GCNConv`'s :obj:`cached`). With
            one-hot features this saves an :math:`N^3` product per call. Under
            :obj:`torch.compile` it is ignored. (default: :obj:`False`)
        bias (bool, optional): If set to :obj:`False`, the layer will not learn an additive
            bias. (default: :obj:`True`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:**
          node features :math:`(|\mathcal{V}|, F_{in})`,
          edge indices :math:`(2, |\mathcal{E}|)`, or a sparse or dense adjacency
          :math:`(|\mathcal{V}|, |\mathcal{V}|)`,
          edge weights :math:`(|\mathcal{E}|)` *(optional, edge indices only)*
        - **output:** node features :math:`(|\mathcal{V}|, F_{out})` or
          :math:`((|\mathcal{V}|, F_{out}), ((2, |\mathcal{E}|), (|\mathcal{E}|)))` if
          :obj:`return_attention_weights=True`; the second element is a sparse matrix for
          sparse input and an :obj:`[N, N]` matrix for dense input, holding the combined
          coefficient :math:`a_{i,j} + b_{i,j} + c_{i,j}` of every edge.

    An empty graph or an isolated node is well defined: with self-loops added, node
    :math:`i` gets :math:`(a_{i,i} + 2 + c_{i,i})\mathbf{\Theta}\mathbf{x}_i + \mathbf{b}`
    (:math:`\alpha_{i,i} = 1` is also the row maximum); without self-loops it gets
    :math:`\mathbf{b}`. Use :meth:`graphs` to get :math:`\mathbf{A}`, :math:`\mathbf{B}`
    and :math:`\mathbf{C}` separately.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        attention: bool = True,
        similarity: bool = True,
        share_weights: bool = False,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        fill_value: float = 1.0,
        cached: bool = False,
        bias: bool = True,
        **kwargs,
    ):
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.attention = attention
        self.similarity = similarity
        self.share_weights = share_weights
        self.negative_slope = negative_slope
        self.dropout = dropout
        self.add_self_loops = add_self_loops
        self.fill_value = fill_value
        self.cached = cached
        self._cached_similarity: tuple[weakref.ref, int, Tensor] | None = None

        self.lin = Linear(in_channels, out_channels, bias=False, weight_initializer="glorot")
        if attention:
            self.lin_src = Linear(
                in_channels, out_channels, bias=False, weight_initializer="glorot"
            )
            if share_weights:
                self.lin_dst = self.lin_src
            else:
                self.lin_dst = Linear(
                    in_channels, out_channels, bias=False, weight_initializer="glorot"
                )
            self.att_src = Parameter(torch.empty(1, out_channels))
            self.att_dst = Parameter(torch.empty(1, out_channels))
        else:
            self.lin_src = self.lin_dst = None
            self.register_parameter("att_src", None)
            self.register_parameter("att_dst", None)

        if bias:
            self.bias = Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)

        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        self._cached_similarity = None
        self.lin.reset_parameters()
        if self.attention:
            self.lin_src.reset_parameters()
            self.lin_dst.reset_parameters()
            glorot(self.att_src)
            glorot(self.att_dst)
        zeros(self.bias)

    def forward(
        self,
        x: Tensor,
        edge_index: Adj,
        edge_weight: OptTensor = None,
        return_attention_weights: bool | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]] | tuple[Tensor, Tensor]:
        r"""Runs the layer.

        Args:
            x (torch.Tensor): The node features :obj:`[N, in_channels]`.
            edge_index (torch.Tensor or SparseTensor): The graph: :obj:`[2, E]` edge indices,
                a sparse adjacency or a dense floating-point :obj:`[N, N]` adjacency.
            edge_weight (torch.Tensor, optional): The fixed weights :math:`a_{j \to i}` of
                :obj:`edge_index`, :obj:`[E]`. (default: :obj:`None`, all ones)
            return_attention_weights (bool, optional): If set to :obj:`True`, also returns
                the combined coefficient :math:`a + b + c` of every edge.
                (default: :obj:`None`)
        """
        self._check_x(x)
        self._initialize_lazy(x)
        h = self.lin(x)

        if _is_dense_adjacency(edge_index):
            if edge_weight is not None:
                raise ValueError(
                    "'edge_weight' must be None when 'edge_index' is a dense adjacency "
                    "(its entries are the weights)"
                )
            return self._dense_forward(x, edge_index, h, return_attention_weights)

        edge_index, edge_weight, layout = self._edge_index_and_weight(x, edge_index, edge_weight)
        a, b, c = self._edge_terms(x, edge_index, edge_weight)
        alpha = a
        if b is not None:
            alpha = alpha + b
        if c is not None:
            alpha = alpha + c

        out = self.propagate(edge_index, x=h, alpha=alpha)
        if self.bias is not None:
            out = out + self.bias

        if return_attention_weights:
            return out, _as_layout(edge_index, alpha, layout, x.size(0))
        return out

    @torch.no_grad()
    def graphs(self, x: Tensor, edge_index: Adj, edge_weight: OptTensor = None) -> AdaptiveGraphs:
        r"""Returns :math:`\mathbf{A}`, :math:`\mathbf{B}` and :math:`\mathbf{C}` (eq. 3)
        separately, for inspection and plots; see :class:`AdaptiveGraphs`. Dropout is not
        applied."""
        self._check_x(x)
        self._initialize_lazy(x)
        if _is_dense_adjacency(edge_index):
            self._check_dense(x, edge_index)
            A = edge_index.to(x.dtype)
            B = C = None
            if self.attention:
                B = self._dense_attention(*self._attention_scores(x), dropout=False)
            if self.similarity:
                x_hat = self._unit_features(x)
                C = x_hat @ x_hat.t()
            return AdaptiveGraphs(None, A, B, C)

        edge_index, edge_weight, _ = self._edge_index_and_weight(x, edge_index, edge_weight)
        training, self.training = self.training, False  # no dropout on B
        try:
            a, b, c = self._edge_terms(x, edge_index, edge_weight)
        finally:
            self.training = training
        return AdaptiveGraphs(edge_index, a, b, c)

    # Message passing ---------------------------------------------------------------------

    def _edge_terms(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor):
        """(a, b, c) of every edge: eq. 3's three graphs on the message-passing path."""
        return self.edge_updater(
            edge_index,
            s=self._attention_scores(x),
            c=self._edge_similarity(x, edge_index) if self.similarity else None,
            edge_weight=edge_weight,
            is_loop=edge_index[0] == edge_index[1],
        )

    def _edge_similarity(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """c_ij = cos(x_i, x_j) of every edge j -> i (eq. 7)."""
        x_hat = self._unit_features(x)
        src, dst = edge_index[0], edge_index[1]
        if is_compiling() or x_hat.dtype not in (torch.float32, torch.float64):
            return (x_hat.index_select(0, dst) * x_hat.index_select(0, src)).sum(dim=-1)
        # The dot products sampled on the graph's pattern (SDDMM): no [E, F_in] gathers of
        # x_hat_i and x_hat_j, and about 3-4x less time on a sparse graph (benchmarks/NOTES.md).
        n = x.size(0)
        perm = (dst * n + src).argsort()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            crow = F.pad(torch.bincount(dst, minlength=n).cumsum(0), (1, 0))
            pattern = torch.sparse_csr_tensor(
                crow, src[perm], x_hat.new_ones(perm.numel()), (n, n), check_invariants=False
            )
        values = torch.sparse.sampled_addmm(pattern, x_hat, x_hat.t(), beta=0.0).values()
        return torch.empty_like(values).index_copy(0, perm, values)

    def edge_update(
        self,
        s_j: OptTensor,
        s_i: OptTensor,
        c: OptTensor,
        edge_weight: Tensor,
        is_loop: Tensor,
        index: Tensor,
        ptr: OptTensor,
        dim_size: int | None,
    ) -> tuple[Tensor, OptTensor, OptTensor]:
        b = None
        if self.attention:
            e = F.leaky_relu(s_i + s_j, self.negative_slope)  # eq. 4
            if index.numel() == 0:
                b = e
            else:
                alpha = softmax(e, index, ptr, dim_size)  # eq. 5
                row_max = scatter(alpha, index, dim=0, dim_size=dim_size, reduce="max")
                b = alpha + is_loop.to(alpha.dtype) * row_max[index]  # eq. 6
                b = F.dropout(b, p=self.dropout, training=self.training)
        return edge_weight, b, c

    def message(self, x_j: Tensor, alpha: Tensor) -> Tensor:
        # `alpha` is the combined a + b + c; PyG's AttentionExplainer reads it by name.
        return alpha.unsqueeze(-1).to(x_j.dtype) * x_j

    # Dense path --------------------------------------------------------------------------

    def _dense_forward(self, x: Tensor, adj: Tensor, h: Tensor, return_attention_weights):
        self._check_dense(x, adj)
        n = x.size(0)
        if n == 0:  # no nodes, as the sparse path: an empty output (an empty amax is an error)
            out = h if self.bias is None else h + self.bias
            return (out, adj.to(x.dtype)) if return_attention_weights else out
        coef = adj.to(x.dtype)
        if self.attention:
            s_src, s_dst = self._attention_scores(x)
            if self.dropout > 0.0 and self.training:
                coef = coef + self._dense_attention(s_src, s_dst, dropout=True)
            else:
                # A + B with eq. 6's diagonal added in place: one N x N buffer, not three.
                alpha = self._softmax_scores(s_src, s_dst)
                coef = coef + alpha
                coef.diagonal().add_(alpha.amax(dim=-1))

        factored = None
        if self.similarity:
            # The cache lives outside the graph torch.compile traces: compiled, C is formed.
            if self.cached and not x.requires_grad and not is_compiling():
                coef = coef + self._similarity_matrix(x)
            # C = x_hat x_hat^T costs N^2 F_in; applying it as x_hat (x_hat^T H) costs
            # 2 N F_in F_out, the cheaper one for large label sets.
            elif return_attention_weights or n <= 2 * self.out_channels:
                x_hat = self._unit_features(x)
                coef = torch.addmm(coef, x_hat, x_hat.t())  # eq. 7, fused with the sum
            else:
                factored = self._unit_features(x)

        out = coef @ h
        if factored is not None:
            out = out + factored @ (factored.t() @ h)
        if self.bias is not None:
            out = out + self.bias

        if return_attention_weights:
            return out, coef
        return out

    def _similarity_matrix(self, x: Tensor) -> Tensor:
        """C of eq. 7 for a fixed input, computed on the first call (:obj:`cached`)."""
        # The same tensor object (a weak reference: a new tensor at a freed address is not
        # mistaken for it), unchanged since (its version counter).
        cache = self._cached_similarity
        if cache is None or cache[0]() is not x or cache[1] != x._version:
            x_hat = self._unit_features(x)
            cache = self._cached_similarity = (weakref.ref(x), x._version, x_hat @ x_hat.t())
        return cache[2]

    def _softmax_scores(self, s_src: Tensor, s_dst: Tensor) -> Tensor:
        e = F.leaky_relu(s_dst.unsqueeze(-1) + s_src.unsqueeze(0), self.negative_slope)  # eq. 4
        return torch.softmax(e, dim=-1)  # eq. 5 over the complete graph

    def _dense_attention(self, s_src: Tensor, s_dst: Tensor, dropout: bool) -> Tensor:
        alpha = self._softmax_scores(s_src, s_dst)
        b = alpha + torch.diag_embed(alpha.amax(dim=-1))  # eq. 6
        if dropout:
            b = F.dropout(b, p=self.dropout, training=self.training)
        return b

    # Shared pieces -----------------------------------------------------------------------

    def _attention_scores(self, x: Tensor) -> tuple[OptTensor, OptTensor]:
        """The source and target halves of eq. 4's score, as x (W^T a): two [N] vectors."""
        if not self.attention:
            return None, None
        s_src = x @ (self.att_src @ self.lin_src.weight).squeeze(0)
        s_dst = x @ (self.att_dst @ self.lin_dst.weight).squeeze(0)
        return s_src, s_dst

    def _unit_features(self, x: Tensor) -> OptTensor:
        # F.normalize divides by max(||x||, eps): a zero vector stays zero, so cos = 0.
        return F.normalize(x, p=2.0, dim=-1) if self.similarity else None

    def _initialize_lazy(self, x: Tensor):
        for lin in (self.lin, self.lin_src, self.lin_dst):
            if lin is not None and isinstance(lin.weight, UninitializedParameter):
                lin(x[:1])

    def _check_x(self, x: Tensor):
        if not isinstance(x, Tensor):
            raise TypeError(f"'x' must be a torch.Tensor of node features (got {type(x)})")
        if x.dim() != 2:
            raise ValueError(
                f"'x' must be 2-dimensional [num_nodes, in_channels] (got shape {list(x.shape)})"
            )
        if not x.is_floating_point():
            raise TypeError(f"'x' must be a floating-point tensor (got {x.dtype})")
        in_channels = self.lin.in_channels
        if in_channels > 0 and x.size(-1) != in_channels:
            raise ValueError(
                f"'x' has {x.size(-1)} features per node but {self} was built for "
                f"{in_channels}"
            )
        weight = self.lin.weight
        if (not isinstance(weight, UninitializedParameter) and x.dtype != weight.dtype
                and not torch.is_autocast_enabled(x.device.type)):
            # No silent cast: convert one side, or let autocast choose per operation.
            raise TypeError(
                f"'x' is {x.dtype} but the weights of {self} are {weight.dtype}: convert "
                f"one to the other (x.to(...) or conv.to(...)) or run under torch.autocast"
            )
        _check_finite("x", x)

    def _check_dense(self, x: Tensor, adj: Tensor):
        n = x.size(0)
        if adj.dim() != 2 or adj.size(0) != n or adj.size(1) != n:
            raise ValueError(
                f"dense adjacency 'edge_index' must be [N, N] with N = x.size(0) = {n} "
                f"(got shape {list(adj.shape)})"
            )
        _check_finite("edge_index", adj)

    def _edge_index_and_weight(
        self, x: Tensor, edge_index: Adj, edge_weight: OptTensor
    ) -> tuple[Tensor, Tensor, Adj | None]:
        """Brings every sparse input form to (edge_index [2, E], edge_weight [E]), self-loops
        appended last; also returns the sparse input itself to restore its layout."""
        n = x.size(0)
        layout = None
        if isinstance(edge_index, SparseTensor) or is_torch_sparse_tensor(edge_index):
            if edge_weight is not None:
                raise ValueError(
                    "'edge_weight' must be None when 'edge_index' is a sparse adjacency "
                    "(its values are the weights)"
                )
            if tuple(edge_index.size()) != (n, n):
                raise ValueError(
                    f"sparse adjacency 'edge_index' must be [N, N] with N = x.size(0) = {n} "
                    f"(got shape {list(edge_index.size())})"
                )
            layout = edge_index
            if isinstance(edge_index, Tensor) and edge_index.layout == torch.sparse_coo:
                # PyG's to_edge_index would flag an uncoalesced input as coalesced in place.
                edge_index = edge_index.coalesce()
            index, edge_weight = to_edge_index(edge_index)
            edge_index = index.flip(0)  # adj_t[i, j] is the edge j -> i
        else:
            _check_edge_index(edge_index, edge_weight, n)
            edge_index = edge_index.long()

        if edge_weight is None:
            edge_weight = x.new_ones(edge_index.size(1))
        else:
            _check_finite("edge_weight", edge_weight)  # or the sparse adjacency's values
            edge_weight = edge_weight.to(x.dtype)

        if self.add_self_loops:
            edge_index, edge_weight = add_remaining_self_loops(
                edge_index, edge_weight, self.fill_value, n
            )
        return edge_index, edge_weight, layout

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}=False" for name in ("attention", "similarity") if not getattr(self, name)
        )
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}{extra})"


def _is_dense_adjacency(edge_index: Adj) -> bool:
    return (
        isinstance(edge_index, Tensor)
        and not is_sparse(edge_index)
        and edge_index.is_floating_point()
    )


def _check_edge_index(edge_index: Tensor, edge_weight: OptTensor, num_nodes: int):
    if not isinstance(edge_index, Tensor):
        raise TypeError(
            "'edge_index' must be a [2, E] integer tensor, a sparse adjacency or a dense "
            f"[N, N] floating-point adjacency (got {type(edge_index)})"
        )
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(
            f"'edge_index' must have shape [2, E] (got {list(edge_index.shape)}); a dense "
            "adjacency must be a floating-point [N, N] tensor"
        )
    if edge_index.dtype not in (torch.long, torch.int):
        raise TypeError(f"'edge_index' must be an integer tensor (got {edge_index.dtype})")
    if edge_weight is not None:
        if edge_weight.dim() != 1 or edge_weight.numel() != edge_index.size(1):
            raise ValueError(
                f"'edge_weight' must have shape [E] = [{edge_index.size(1)}] to match "
                f"'edge_index' (got {list(edge_weight.shape)})"
            )
    # Reading values synchronises the device: skipped while compiling (a graph break), and on
    # a GPU done once per graph tensor (and node count), not at every step.
    if is_compiling() or edge_index.numel() == 0 or _validated(edge_index, num_nodes):
        return
    low, high = int(edge_index.min()), int(edge_index.max())
    if low < 0 or high >= num_nodes:
        raise ValueError(
            f"'edge_index' holds node indices in [{low}, {high}], outside [0, {num_nodes - 1}] "
            f"for x with {num_nodes} nodes"
        )
    _remember_valid(edge_index, num_nodes)


# GPU tensors already checked, by id: (weak reference, version, what was checked). A fixed input
# (the label graph, node features, a graph reused every epoch) is read once, not at every step.
_VALID_ON_DEVICE: dict[int, tuple[weakref.ref, int, object]] = {}


def _validated(t: Tensor, check: object) -> bool:
    seen = _VALID_ON_DEVICE.get(id(t))
    return bool(t.is_cuda and seen and seen[0]() is t and seen[1:] == (t._version, check))


def _remember_valid(t: Tensor, check: object):
    if not t.is_cuda:  # on the CPU a check costs no synchronisation: always check
        return
    if len(_VALID_ON_DEVICE) > 1024:  # forget tensors that no longer exist
        for key in [k for k, v in _VALID_ON_DEVICE.items() if v[0]() is None]:
            del _VALID_ON_DEVICE[key]
    _VALID_ON_DEVICE[id(t)] = (weakref.ref(t), t._version, check)


def _check_finite(name: str, t: Tensor):
    # One reduction, but on a GPU reading it synchronises the device. So on a GPU only inputs
    # are checked (no autograd history: data, buffers; an activation of the model is not), each
    # tensor once per version; and nothing while compiling (a graph break) or capturing a CUDA
    # graph (where reading values is an error).
    if is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    if t.is_cuda and (t.grad_fn is not None or _validated(t, "finite")):
        return
    if not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"'{name}' must hold finite values (got {int(t.isnan().sum())} NaN and "
            f"{int(t.isinf().sum())} infinite entries in shape {list(t.shape)})"
        )
    _remember_valid(t, "finite")


def _as_layout(edge_index: Tensor, alpha: Tensor, layout: Adj | None, n: int):
    """Returns per-edge coefficients in the layout the graph came in."""
    if layout is None:
        return edge_index, alpha
    row, col = edge_index[1], edge_index[0]  # back to adj_t[target, source]
    if isinstance(layout, SparseTensor):
        return SparseTensor(row=row, col=col, value=alpha, sparse_sizes=(n, n))
    out = torch.sparse_coo_tensor(torch.stack([row, col]), alpha, (n, n)).coalesce()
    if layout.layout == torch.sparse_csr:
        return out.to_sparse_csr()
    if layout.layout == torch.sparse_csc:
        return out.to_sparse_csc()
    return out
