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
from torch_geometric.typing import Adj, OptTensor, PairTensor, SparseTensor
from torch_geometric.utils import (
    add_remaining_self_loops,
    is_sparse,
    is_torch_sparse_tensor,
    scatter,
    softmax,
    to_edge_index,
)

from agcn_pyg.nn.complete import (
    CompleteGraphParts,
    SparseAdjacency,
    adjacency_matmul,
    complete_attention_heads,
    unit_rows,
)
from agcn_pyg.nn.conv_checks import (
    check_call_flags,
    check_complete,
    check_complete_loops,
    check_dense,
    check_dense_extras,
    check_dtype,
    check_edge_attr,
    check_edge_attr_given,
    check_edge_index,
    check_features,
    check_finite,
    check_heads,
    check_in_channels,
    check_node_dims,
    check_pair,
    check_pair_sizes,
    check_size,
    check_sparse,
    check_sparse_call,
    is_inference,
    tensor_version,
)
from agcn_pyg.nn.kernels import edge as edge_kernels
from agcn_pyg.nn.kernels import use_triton


class AdaptiveGraphs(NamedTuple):
    r"""The three graphs an :class:`AdaptiveGCNConv` layer aggregates with (eq. 3).

    For a dense adjacency, :obj:`A`, :obj:`B` and :obj:`C` are :obj:`[N, N]` matrices
    (``B[i, j]`` = weight of the edge :math:`j \to i`; :obj:`[B, N, N]` for a dense batch,
    :obj:`[N_dst, N_src]` for bipartite input) and :obj:`edge_index` is :obj:`None`.
    For sparse input they are :obj:`[E]` vectors aligned with :obj:`edge_index` (after
    self-loops were added). A graph that is switched off is :obj:`None`. With
    :obj:`heads > 1`, :obj:`B` has one more dimension, the last (:obj:`[E, H]`,
    :obj:`[N, N, H]`); :obj:`A` and :obj:`C` are shared by the heads.
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
    :class:`~torch_geometric.nn.conv.GCNConv`. With :obj:`heads` :math:`H > 1` (ours: the
    paper has one head; nothing in eq. 3-7 forbids several) each head :math:`k` has its own
    :math:`\mathbf{\Theta}^{k}` and attention graph :math:`\mathbf{B}^{k}`, while
    :math:`\mathbf{A}` and :math:`\mathbf{C}` are shared, and the heads are concatenated as
    in :class:`~torch_geometric.nn.conv.GATConv`,

    .. math::
        \mathbf{X}^{\prime} = \big\Vert_{k=1}^{H} \left(\mathbf{A} + \mathbf{B}^{k}
        + \mathbf{C}\right) \mathbf{X} \mathbf{\Theta}^{k\top},

    or averaged with :obj:`concat=False`. The three graphs are:

    * :math:`a_{i,j}`, the fixed graph (in ML-AGCN the label co-occurrence, with no
      threshold, normalised as in ML-GCN: :meth:`agcn_pyg.LabelGraph.adjacency`), given as
      :obj:`edge_weight` (default :obj:`1`) or as the values of a sparse or dense adjacency;
    * :math:`b_{i,j}`, the attention graph (eq. 4-6):

      .. math::
          e_{i,j} &= \mathrm{LeakyReLU}\left(\mathbf{a}_{d}^{\top}\mathbf{\Theta}_{d}
          \mathbf{x}_i + \mathbf{a}_{s}^{\top}\mathbf{\Theta}_{s}\mathbf{x}_j
          \left[ + \mathbf{a}_{e}^{\top}\mathbf{\Theta}_{e}\mathbf{e}_{i,j} \right]\right)

          \alpha_{i,j} &= \mathrm{softmax}_{j \in \mathcal{N}(i)}\left(e_{i,j}\right)

          b_{i,j} &= \alpha_{i,j} + [i = j] \max_{k \in \mathcal{N}(i)} \alpha_{i,k}

      (eq. 4 is :math:`\mathbf{a}^{\top}[\mathbf{W}\mathbf{f}_i \,\|\, \mathbf{W}\mathbf{f}_j]`;
      the concatenation splits into a target and a source half; the bracketed edge-feature
      term exists only with :obj:`edge_dim`, as in :class:`~torch_geometric.nn.conv.GATConv`);
    * :math:`c_{i,j} = \cos(\mathbf{x}_i, \mathbf{x}_j)`, the similarity graph of the layer's
      input features (eq. 7), with :math:`0` for a zero vector.

    Paper symbols and attributes: :math:`\mathbf{W}_l` (eq. 3) is :obj:`lin`; :math:`\mathbf{W}`
    (eq. 4) is :obj:`lin_dst` for the target node :math:`i` and :obj:`lin_src` for the source
    :math:`j` (one module when :obj:`share_weights=True`); :math:`\mathbf{a}` is
    :obj:`att_dst` (first half) and :obj:`att_src` (second half); :obj:`bias` is
    :math:`\mathbf{b}`. With the default three matrices and one head a layer has
    :math:`3 \cdot d_l d_{l+1} + 3 d_{l+1}` parameters, which reproduces the paper's
    published parameter counts. Heads are stacked as in GATConv: rows :math:`k C` to
    :math:`(k + 1) C` of :obj:`lin`, :obj:`lin_src`, :obj:`lin_dst` (and :obj:`lin_edge`)
    and :obj:`att_src[0, k]`, :obj:`att_dst[0, k]` (each :obj:`[1, H, C]`) belong to head
    :math:`k`; every path computes with per-head messages :obj:`[N, H, C]` and scores
    :obj:`[N, H]`. Only :math:`\mathbf{a}_{s}^{\top}\mathbf{\Theta}_{s}` and
    :math:`\mathbf{a}_{d}^{\top}\mathbf{\Theta}_{d}` enter the scores, so the attention costs
    two matrix-vector products, not two extra matrix products (the same holds for the edge
    features: :math:`\mathbf{a}_{e}^{\top}\mathbf{\Theta}_{e}` is one vector).

    Two execution paths give the same result:

    * a **dense** :obj:`[N, N]` floating-point adjacency (``adj[i, j]`` = weight of
      :math:`j \to i`) is read as the *complete* graph with self-loops — every pair is an edge,
      zero-weight pairs included, as ML-AGCN's "no threshold" label graph requires. Scores
      are an :obj:`[N, N]` matrix per head built from two :obj:`[N]` vectors;
      :math:`\mathbf{A} + \mathbf{B}^{k} + \mathbf{C}` is formed once per head and applied
      with one (batched) matrix product; for
      :math:`N > 2 d_{l+1}` the cosine term is applied as
      :math:`\hat{\mathbf{X}}(\hat{\mathbf{X}}^{\top}\mathbf{H})` without an :obj:`[N, N]`
      matrix. No :obj:`[E, F]` or :obj:`[N, N, F]` intermediate is built. A batch of graphs
      padded to :obj:`N` nodes, :obj:`x [B, N, F]` with :obj:`adj [B, N, N]` and a node
      :obj:`mask [B, N]` as :class:`~torch_geometric.nn.dense.DenseGATConv` takes them
      (``conv(x, adj, mask)``: with a dense adjacency a bool third argument is the mask; a
      2-D :obj:`adj` and an :obj:`[N]` mask are shared by the batch), runs on the same path
      with batched products; padded nodes neither send nor receive and their outputs are
      zero.
    * an :obj:`edge_index` (with optional :obj:`edge_weight` and :obj:`edge_attr`), a
      :obj:`torch.sparse` matrix or a :class:`torch_sparse.SparseTensor` (transposed layout,
      ``adj_t[i, j]`` = weight of :math:`j \to i`, as for
      :class:`~torch_geometric.nn.conv.GCNConv`) takes the message-passing path. Only the
      stored entries are edges. On CUDA an :obj:`edge_index` runs as fused Triton kernels
      (:mod:`agcn_pyg.nn.kernels.edge`; no :obj:`[E, F]` tensor, the graph's pattern built
      once per tensor, no host sync on a repeated call) except with
      :obj:`return_attention_weights`, attention dropout in training, float64 or PyG's
      explain hooks; :obj:`AGCN_KERNELS=torch|triton` forces a backend.

    **Label graphs of any size.** With :obj:`complete=True` a sparse graph is read as the
    complete graph: :math:`\mathbf{B}` and :math:`\mathbf{C}` range over every pair of nodes
    and pairs missing from :math:`\mathbf{A}` have :math:`a_{i,j} = 0`, as ML-AGCN's label
    graph requires. That path never forms an :obj:`[N, N]` matrix: :math:`\mathbf{A}` is
    applied as a sparse product, :math:`\mathbf{B}` by sorting the scores
    (:func:`~agcn_pyg.nn.complete.complete_attention`: :math:`O(N \log N + N F)` time,
    :math:`O(N F)` memory, exact) and :math:`\mathbf{C}` as
    :math:`\hat{\mathbf{X}}(\hat{\mathbf{X}}^{\top}\mathbf{H})`. A dense adjacency uses the
    sorted :math:`\mathbf{B}` too where that is faster (:attr:`sorted_min_nodes`; the same
    result), and a small sparse graph the dense path (:attr:`dense_max_ratio`). Which pairs
    are edges:

    +-----------------+---------------------------------+-----------------------------------+
    | :obj:`complete` | dense :obj:`[N, N]` adjacency   | :obj:`edge_index`, sparse         |
    |                 |                                 | adjacency                         |
    +=================+=================================+===================================+
    | :obj:`None`     | every pair (the complete graph) | the stored entries                |
    +-----------------+---------------------------------+-----------------------------------+
    | :obj:`True`     | every pair                      | every pair, :math:`a_{i,j} = 0`   |
    |                 |                                 | where nothing is stored (the      |
    |                 |                                 | complete path)                    |
    +-----------------+---------------------------------+-----------------------------------+
    | :obj:`False`    | the non-zero entries (a masked  | the stored entries                |
    |                 | softmax, as in DenseGATConv):   |                                   |
    |                 | the same as the edge_index of   |                                   |
    |                 | those entries                   |                                   |
    +-----------------+---------------------------------+-----------------------------------+

    Self-loops: a dense adjacency read as the complete graph has every one, with
    :math:`a_{i,i}` = ``adj[i, i]``; otherwise the stored ones (non-zero ones for a dense
    adjacency with :obj:`complete=False`) are kept and :obj:`add_self_loops` adds the missing
    ones with weight :obj:`fill_value`. On the complete graph a node without a self-loop is not
    its own neighbour in :math:`\mathbf{B}` (no eq. 6 term) nor in :math:`\mathbf{C}`.
    Duplicate stored entries add up in :math:`\mathbf{A}` on the complete path.

    On the complete path of a sparse graph, :obj:`return_attention_weights` and :meth:`graphs`
    return :obj:`[N, N]` matrices while :math:`N^2` is at most :attr:`max_dense_entries`
    (:math:`2^{26}`, i.e. :math:`N \le 8192`: 256 MiB per float32 matrix) and raise an
    error beyond; :meth:`complete_parts` gives what defines the three graphs at any size.
    Attention dropout drops entries of the :obj:`[N, N]` matrix :math:`\mathbf{B}`, which
    that path never forms: it raises an error there in training (use :obj:`dropout=0`, or a
    dense adjacency). Bipartite input and edge features need stored edges and are refused
    there. Under autocast the complete path computes in float32.

    **Bipartite input** ``x = (x_src, x_dst)`` follows
    :class:`~torch_geometric.nn.conv.GATConv`: messages :math:`\mathbf{\Theta}\mathbf{x}_j`
    and :math:`\mathbf{\Theta}_{s}` read :obj:`x_src`, :math:`\mathbf{\Theta}_{d}` reads
    :obj:`x_dst`, and :math:`c_{i,j}` compares :obj:`x_dst[i]` with :obj:`x_src[j]` (so it
    needs equal feature sizes). Source and target nodes are different sets, so no node is its
    own neighbour: there are no self-loops to add and eq. 6's self term is absent
    (:obj:`add_self_loops=False` is required). A pair is always read as bipartite; a
    homogeneous graph is passed as one tensor. This is what
    :func:`~torch_geometric.nn.to_hetero` and :class:`~torch_geometric.nn.conv.HeteroConv`
    call for edges between two node types.

    Args:
        in_channels (int or tuple): Size of each input sample, or :obj:`-1` to derive it from
            the first input. A tuple :obj:`(src, dst)` gives the sizes of source and target
            features of bipartite input (each may be :obj:`-1`).
        out_channels (int): Size of each output sample (per head).
        heads (int, optional): Number of heads :math:`H`, each with its own
            :math:`\mathbf{\Theta}`, attention weights and :math:`\mathbf{B}`;
            :math:`\mathbf{A}` and :math:`\mathbf{C}` are shared. (default: :obj:`1`)
        concat (bool, optional): If set to :obj:`False`, the heads' outputs are averaged
            instead of concatenated. (default: :obj:`True`)
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
            self-loops keeps one of them (on the complete path, where duplicate edges add
            up, they add up too): coalesce such graphs first. Ignored for dense input, which
            already contains every self-loop. Must be :obj:`False` for bipartite input.
            (default: :obj:`True`)
        fill_value (float, optional): The :math:`a_{i,i}` of an added self-loop; :obj:`1`
            matches a co-occurrence graph, where :math:`P(i \mid i) = 1`. Existing
            self-loops keep their weight. As for :class:`~torch_geometric.nn.conv.GCNConv`,
            it names the weight; the edge features of added self-loops are
            :obj:`edge_fill_value`. (default: :obj:`1.0`)
        edge_dim (int, optional): Edge feature dimensionality :math:`D` (:obj:`-1` to derive
            it from the first :obj:`edge_attr`). Edge features enter eq. 4's score through
            :obj:`lin_edge` (:math:`\mathbf{\Theta}_{e}`) and :obj:`att_edge`
            (:math:`\mathbf{a}_{e}`), as in :class:`~torch_geometric.nn.conv.GATConv`; they
            never change :math:`a_{i,j}`. Needs :obj:`attention=True`. (default: :obj:`None`)
        edge_fill_value (float or torch.Tensor or str, optional): The edge features of added
            self-loops (:class:`~torch_geometric.nn.conv.GATConv`'s :obj:`fill_value`): a
            value, a :obj:`[D]` tensor, or a reduction (:obj:`"mean"`, :obj:`"add"`,
            :obj:`"max"`, ...) of each node's incoming edge features.
            (default: :obj:`"mean"`)
        cached (bool, optional): If set to :obj:`True`, the dense path computes
            :math:`\mathbf{C}` once and reuses it while :obj:`x` is the same tensor, unchanged
            and without gradient — for fixed inputs such as the node features of a first
            layer (like :class:`~torch_geometric.nn.conv.GCNConv`'s :obj:`cached`). With
            one-hot features this saves an :math:`N^3` product per call. Under
            :obj:`torch.compile` it is ignored. (default: :obj:`False`)
        complete (bool, optional): Which pairs of nodes are edges (see the table above):
            :obj:`True` every pair whatever form the graph comes in, :obj:`False` only the
            stored or non-zero entries, :obj:`None` every pair of a dense adjacency and the
            stored entries of a sparse one. (default: :obj:`None`)
        bias (bool, optional): If set to :obj:`False`, the layer will not learn an additive
            bias. (default: :obj:`True`)
        residual (bool, optional): If set to :obj:`True`, adds a learnable skip connection
            :obj:`res` from the target features, as in
            :class:`~torch_geometric.nn.conv.GATConv`. (default: :obj:`False`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:**
          node features :math:`(|\mathcal{V}|, F_{in})`, or
          :math:`((|\mathcal{V}_s|, F_{s}), (|\mathcal{V}_t|, F_{t}))` if bipartite, or
          :math:`(B, N, F_{in})` for a dense batch;
          edge indices :math:`(2, |\mathcal{E}|)`, or a sparse adjacency
          :math:`(|\mathcal{V}_t|, |\mathcal{V}_s|)`, or a dense adjacency
          :math:`(|\mathcal{V}_t|, |\mathcal{V}_s|)` or :math:`(B, N, N)`;
          edge weights :math:`(|\mathcal{E}|)` and edge features :math:`(|\mathcal{E}|, D)`
          *(optional, edge indices only)*;
          node mask :math:`(B, N)` or :math:`(N)` *(optional, dense adjacency only)*
        - **output:** node features :math:`(|\mathcal{V}_t|, H \cdot F_{out})`
          (:math:`F_{out}` with :obj:`concat=False`), or :math:`(B, N, H \cdot F_{out})` for
          a dense batch; with :obj:`return_attention_weights=True` also the combined
          coefficient :math:`a_{i,j} + b^{k}_{i,j} + c_{i,j}` of every edge and head (eq. 3's,
          not only the softmax: that is :meth:`graphs`' :math:`\mathbf{B}`):
          :math:`((2, |\mathcal{E}|), (|\mathcal{E}|, H))` for edge indices,
          :class:`~torch_geometric.nn.conv.GATConv`'s pair :obj:`(adj, alpha)` for a
          torch.sparse input (:obj:`adj` in the input's layout, :math:`(N_t, N_s, H)`;
          :obj:`alpha` its values), a :class:`SparseTensor` :math:`(N_t, N_s, H)` for one,
          and the dense matrix :math:`(N_t, N_s, H)` (:math:`(B, N, N, H)` for a batch) for
          dense input. The head dimension comes last, as in GATConv; with :obj:`heads=1` it
          is left out (:math:`(|\mathcal{E}|)`, :math:`(N_t, N_s)`).

    An empty graph or an isolated node is well defined: with self-loops added, node
    :math:`i` gets :math:`(a_{i,i} + 2 + c_{i,i})\mathbf{\Theta}\mathbf{x}_i + \mathbf{b}`
    (:math:`\alpha_{i,i} = 1` is also the row maximum); without self-loops it gets
    :math:`\mathbf{b}`. Use :meth:`graphs` to get :math:`\mathbf{A}`, :math:`\mathbf{B}`
    and :math:`\mathbf{C}` separately.
    """

    #: A dense adjacency gets the sorted :math:`\mathbf{B}` (no :obj:`[N, N]` softmax) where
    #: it is faster: from :attr:`sorted_min_nodes` nodes on and for
    #: :math:`N >` :attr:`sorted_min_ratio` :math:`\cdot F_{out}` (its passes over
    #: :obj:`[N, F]` buffers against the softmax's over :obj:`[N, N]`). :obj:`None`: 2048 on
    #: the CPU (measured, ``benchmarks/NOTES.md``), 16384 elsewhere (GPU crossover not yet
    #: measured; the sorted path keeps float64 sums there).
    sorted_min_nodes: int | None = None
    sorted_min_ratio: float = 2.0
    #: A sparse graph on the complete path takes the dense path instead (its adjacency made
    #: dense, the same result) while :math:`N \le` :attr:`dense_max_ratio` :math:`\cdot
    #: F_{out}` and every node has a self-loop: the dense path's passes over :obj:`[N, N]`
    #: against the sorted path's over :obj:`[N, F]` (CPU crossover, ``benchmarks/NOTES.md``);
    #: :obj:`0` keeps the sorted path at every size.
    dense_max_ratio: float = 2.0
    #: The largest :math:`N^2` for which the complete path of a sparse graph returns
    #: :obj:`[N, N]` matrices (:obj:`return_attention_weights`, :meth:`graphs`).
    max_dense_entries: int = 2**26

    def __init__(
        self,
        in_channels: int | tuple[int, int],
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        attention: bool = True,
        similarity: bool = True,
        share_weights: bool = False,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        fill_value: float = 1.0,
        edge_dim: int | None = None,
        edge_fill_value: float | Tensor | str = "mean",
        cached: bool = False,
        complete: bool | None = None,
        bias: bool = True,
        residual: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)
        in_src, in_dst = check_in_channels(in_channels, similarity, share_weights)
        if edge_dim is not None and not attention:
            raise ValueError(
                f"'edge_dim' needs attention=True: edge features enter eq. 4's attention "
                f"score (got edge_dim={edge_dim}, attention=False)"
            )

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = check_heads(heads)
        self.concat = concat
        self.attention = attention
        self.similarity = similarity
        self.share_weights = share_weights
        self.negative_slope = negative_slope
        self.dropout = dropout
        self.add_self_loops = add_self_loops
        self.fill_value = fill_value
        self.edge_dim = edge_dim
        self.edge_fill_value = edge_fill_value
        self.cached = cached
        self.complete = complete
        self.residual = residual
        self._cached_similarity: tuple | None = None
        self._cached_adjacency: tuple | None = None

        # One W_h, W_src,h, W_dst,h (and a_h) per head, stacked as GATConv stacks them:
        # rows h * C to (h + 1) * C of each weight belong to head h.
        width = heads * out_channels
        self.lin = Linear(in_src, width, bias=False, weight_initializer="glorot")
        self.lin_src = self.lin_dst = self.lin_edge = None
        if attention:
            self.lin_src = Linear(in_src, width, bias=False, weight_initializer="glorot")
            self.lin_dst = self.lin_src
            if not share_weights:
                self.lin_dst = Linear(in_dst, width, bias=False, weight_initializer="glorot")
            self.att_src = Parameter(torch.empty(1, heads, out_channels))
            self.att_dst = Parameter(torch.empty(1, heads, out_channels))
        else:
            self.register_parameter("att_src", None)
            self.register_parameter("att_dst", None)

        if edge_dim is not None:
            self.lin_edge = Linear(edge_dim, width, bias=False, weight_initializer="glorot")
            self.att_edge = Parameter(torch.empty(1, heads, out_channels))
        else:
            self.register_parameter("att_edge", None)

        total_out_channels = width if concat else out_channels
        self.res = None
        if residual:  # GATConv's learnable skip connection, from the target features
            self.res = Linear(in_dst, total_out_channels, bias=False, weight_initializer="glorot")

        if bias:
            self.bias = Parameter(torch.empty(total_out_channels))
        else:
            self.register_parameter("bias", None)

        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        self._cached_similarity = None
        self._cached_adjacency = None
        for lin in (self.lin, self.lin_src, self.lin_dst, self.lin_edge, self.res):
            if lin is not None:
                lin.reset_parameters()
        glorot(self.att_src)
        glorot(self.att_dst)
        glorot(self.att_edge)
        zeros(self.bias)

    def forward(
        self,
        x: Tensor | PairTensor,
        edge_index: Adj,
        edge_weight: OptTensor = None,
        return_attention_weights: bool | None = None,
        edge_attr: OptTensor = None,
        mask: OptTensor = None,
        size: tuple[int, int] | None = None,
        add_loop: bool | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]] | tuple[Tensor, Tensor]:
        r"""Runs the layer.

        Args:
            x (torch.Tensor or (torch.Tensor, torch.Tensor)): The node features
                :obj:`[N, in_channels]`, a pair :obj:`(x_src, x_dst)` for bipartite input, or
                :obj:`[B, N, in_channels]` for a batch of dense graphs.
            edge_index (torch.Tensor or SparseTensor): The graph: :obj:`[2, E]` edge indices,
                a sparse adjacency :obj:`[N_dst, N_src]`, or a dense floating-point adjacency
                :obj:`[N_dst, N_src]` or :obj:`[B, N, N]`.
            edge_weight (torch.Tensor, optional): The fixed weights :math:`a_{j \to i}` of
                :obj:`edge_index`, :obj:`[E]` (as in :class:`~torch_geometric.nn.conv.GCNConv`;
                not :class:`~torch_geometric.nn.conv.GATConv`'s :obj:`edge_attr`). With a
                dense adjacency a bool tensor here is the node :obj:`mask`, so that
                :class:`~torch_geometric.nn.dense.DenseGATConv`'s ``conv(x, adj, mask)``
                works. (default: :obj:`None`, all ones)
            return_attention_weights (bool, optional): If set to :obj:`True`, also returns
                the combined coefficient :math:`a + b_h + c` of every edge and head (see
                *Shapes*). (default: :obj:`None`)
            edge_attr (torch.Tensor, optional): Edge features :obj:`[E, edge_dim]` of
                :obj:`edge_index` for eq. 4's score; required when the layer has
                :obj:`edge_dim`. (default: :obj:`None`)
            mask (torch.Tensor, optional): Boolean node mask :obj:`[B, N]` of a dense batch
                (as :func:`~torch_geometric.utils.to_dense_batch` returns it), or :obj:`[N]`
                for every graph of the batch; masked nodes neither send nor receive, and
                their outputs are zero. (default: :obj:`None`)
            size ((int, int), optional): :class:`~torch_geometric.nn.conv.GATConv`'s shape
                :obj:`(N_src, N_dst)` of the adjacency; the node features fix it, so it is
                only checked against them. (default: :obj:`None`)
            add_loop (bool, optional): :class:`~torch_geometric.nn.dense.DenseGATConv`'s
                switch for a dense adjacency: with :obj:`complete=False`, whether the missing
                self-loops are added (weight :obj:`fill_value`) for this call; :obj:`None`
                follows :obj:`add_self_loops`. The complete graph of a dense adjacency has
                every self-loop, so there :obj:`False` is refused. (default: :obj:`None`)
        """
        check_call_flags(return_attention_weights, add_loop)
        x_src, x_dst, bipartite = self._node_features(x, edge_attr)
        check_size(size, x_src.size(-2), x_dst.size(-2))
        if _is_dense_adjacency(edge_index):
            edge_weight, mask = _mask_from_third_argument(edge_weight, mask)
            check_dense_extras(edge_weight, edge_attr)
            check_edge_attr_given(self.edge_dim, edge_attr, edge_weight)
            if self.complete is False:  # the non-zero entries are the edges (DenseGATConv)
                return self._masked_dense_forward(
                    x_src, x_dst, edge_index, mask, bipartite, return_attention_weights, add_loop
                )
            check_complete_loops(add_loop)
            return self._dense_forward(
                x_src, x_dst, edge_index, mask, bipartite, return_attention_weights
            )
        check_sparse_call(edge_index, mask, add_loop)
        check_edge_attr_given(self.edge_dim, edge_attr, edge_weight)
        if self.complete:
            check_complete(bipartite, edge_attr)
            return self._complete_forward(x_src, edge_index, edge_weight, return_attention_weights)
        return self._sparse_forward(
            x_src, x_dst, edge_index, edge_weight, edge_attr, bipartite, return_attention_weights
        )

    @torch.no_grad()
    def graphs(
        self,
        x: Tensor | PairTensor,
        edge_index: Adj,
        edge_weight: OptTensor = None,
        edge_attr: OptTensor = None,
        mask: OptTensor = None,
    ) -> AdaptiveGraphs:
        r"""Returns :math:`\mathbf{A}`, :math:`\mathbf{B}` and :math:`\mathbf{C}` (eq. 3)
        separately, for inspection and plots; see :class:`AdaptiveGraphs` (:math:`\mathbf{B}`
        per head, the head dimension last, when :obj:`heads > 1`). Takes the inputs of
        :meth:`forward`. Dropout is not applied."""
        x_src, x_dst, bipartite = self._node_features(x, edge_attr)
        training, self.training = self.training, False  # no dropout on B
        try:
            if _is_dense_adjacency(edge_index):
                edge_weight, mask = _mask_from_third_argument(edge_weight, mask)
                check_dense_extras(edge_weight, edge_attr)
                check_edge_attr_given(self.edge_dim, edge_attr, edge_weight)
                if self.complete is False:
                    A, B, C = self._masked_dense_terms(x_src, x_dst, edge_index, mask, bipartite)
                    return AdaptiveGraphs(None, A, self._public(B, -3), C)
                return self._dense_graphs(x_src, x_dst, edge_index, mask, bipartite)
            check_edge_attr_given(self.edge_dim, edge_attr, edge_weight)
            if self.complete:
                check_complete(bipartite, edge_attr)
                adj = self._sparse_adjacency(x_src, edge_index, edge_weight)
                return AdaptiveGraphs(None, *self._complete_matrices(x_src, adj))
            graph = self._sparse_graph(x_src, x_dst, edge_index, edge_weight, edge_attr)
            a, b, c = self._edge_terms(x_src, x_dst, graph, bipartite)
            return AdaptiveGraphs(graph.edge_index, a, self._public(b, -1), c)
        finally:
            self.training = training

    # Heads -------------------------------------------------------------------------------

    def _split_heads(self, h: Tensor) -> Tensor:
        """[..., N, H * C] -> [..., N, H, C]: the per-head messages W_h x_j."""
        return h.unflatten(-1, (self.heads, self.out_channels))

    def _finish(self, out: Tensor, x_dst: Tensor, mask: OptTensor = None) -> Tensor:
        """[..., N, H, C] per head -> the layer's output: heads concatenated (or averaged,
        :obj:`concat=False`), GATConv's residual, the bias, and zeros for masked nodes."""
        out = out.flatten(-2) if self.concat else out.mean(dim=-2)
        if self.res is not None:
            out = out + self.res(x_dst)
        if self.bias is not None:
            out = out + self.bias
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)  # padded nodes output zeros
        return out

    def _public(self, b: OptTensor, head_dim: int) -> OptTensor:
        """A per-head tensor as returned to the user: the head dimension last, as GATConv's
        [E, H] attention; left out when heads=1 (the single-head shapes [E], [N, N])."""
        if b is None:
            return None
        if self.heads == 1:
            return b.squeeze(head_dim)
        return b.movedim(head_dim, -1)

    # Message passing ---------------------------------------------------------------------

    def _sparse_forward(
        self, x_src, x_dst, edge_index, edge_weight, edge_attr, bipartite,
        return_attention_weights,
    ):
        if self._edge_kernel_applies(x_src, edge_index, return_attention_weights):
            return self._edge_kernel_forward(x_src, x_dst, edge_index, edge_weight, edge_attr,
                                             bipartite)
        graph = self._sparse_graph(x_src, x_dst, edge_index, edge_weight, edge_attr)
        a, b, c = self._edge_terms(x_src, x_dst, graph, bipartite)
        # alpha [E, H] = a + b_h + c per head (A and C are shared: [E, 1] without attention)
        alpha = a.unsqueeze(-1)
        if b is not None:
            alpha = alpha + b
        if c is not None:
            alpha = alpha + c.unsqueeze(-1)

        size = (x_src.size(0), x_dst.size(0))
        h = self._split_heads(self.lin(x_src))  # [N_src, H, C]
        out = self.propagate(graph.edge_index, x=h, alpha=alpha, size=size)  # [N_dst, H, C]
        out = self._finish(out, x_dst)

        if return_attention_weights:
            alpha = self._public(alpha.expand(-1, self.heads), -1)
            return out, _as_layout(graph.edge_index, alpha, graph.layout, size)
        return out

    def _edge_kernel_applies(self, x: Tensor, edge_index: Adj, return_attention_weights) -> bool:
        """Whether the fused Triton kernels take this call (:func:`~agcn_pyg.nn.kernels.
        use_triton`): an :obj:`edge_index` (not a sparse matrix), no per-edge coefficients
        asked for, no attention dropout in training (it drops entries of the per-edge B, which
        the kernels never form), no float64 (the kernels accumulate in float32), and nobody
        watching the message passing (PyG's explain mode, message/propagate hooks such as
        :class:`~torch_geometric.explain.algorithm.AttentionExplainer`'s, which read the
        per-edge alpha), and a number as fill_value (PyG's reductions such as 'mean' need
        the incoming weights; the pattern stores one weight per added loop); otherwise the
        PyTorch path runs."""
        return (
            isinstance(edge_index, Tensor) and not is_sparse(edge_index)
            and x.dtype != torch.float64
            and isinstance(self.fill_value, (int, float))
            and not self.explain
            and not any(getattr(self, f"_{stage}_forward{kind}_hooks")
                        for stage in ("propagate", "message", "aggregate",
                                      "message_and_aggregate", "edge_update")
                        for kind in ("_pre", ""))
            and not return_attention_weights
            and not (self.attention and self.dropout > 0.0 and self.training)
            and use_triton(x)
            and edge_kernels.fits(edge_index.size(-1), x.size(0))
        )

    def _edge_kernel_forward(self, x_src, x_dst, edge_index, edge_weight, edge_attr, bipartite):
        """Eq. 3-7 on the message-passing path in fused Triton kernels
        (:mod:`agcn_pyg.nn.kernels.edge`): the same result, no [E, F] tensor, and the graph's
        pattern (self-loops, CSR) built once per edge_index tensor."""
        check_node_dims(x_src, x_dst)
        n_src, n_dst = x_src.size(0), x_dst.size(0)
        check_edge_index(edge_index, edge_weight, edge_attr, n_src, n_dst, not bipartite)
        if edge_weight is not None:
            check_finite("edge_weight", edge_weight)
        dtype = x_src.dtype
        pattern = edge_kernels.edge_pattern(edge_index, n_src, n_dst, self.add_self_loops,
                                            self.fill_value, dtype)
        s_src, s_dst = self._attention_scores(x_src, x_dst)
        s_edge = self._edge_scores(
            pattern.edge_attr(edge_attr, edge_index, self.edge_fill_value), dtype)
        u_src, u_dst = self._unit_features(x_src, x_dst) if self.similarity else (None, None)
        out = edge_kernels.edge_attention(  # every head at once: h [N, H, C], scores [N, H]
            self._split_heads(self.lin(x_src)), pattern,
            pattern.weights(edge_weight, self.fill_value, dtype), s_dst, s_src, s_edge,
            u_dst, u_src, self.negative_slope, loops=not bipartite,
        )
        return self._finish(out, x_dst)  # [N_dst, H, C] -> concat/mean, residual, bias

    def _edge_terms(self, x_src: Tensor, x_dst: Tensor, graph: _EdgeGraph, bipartite: bool):
        """(a, b, c) of every edge: eq. 3's three graphs on the message-passing path."""
        edge_index = graph.edge_index
        return self.edge_updater(
            edge_index,
            s=self._attention_scores(x_src, x_dst),
            s_edge=self._edge_scores(graph.edge_attr, x_src.dtype),
            c=self._edge_similarity(x_src, x_dst, edge_index) if self.similarity else None,
            edge_weight=graph.edge_weight,
            # Bipartite: source j and target i are different nodes even when j == i.
            is_loop=None if bipartite else edge_index[0] == edge_index[1],
            size=(x_src.size(0), x_dst.size(0)),
        )

    def _edge_similarity(self, x_src: Tensor, x_dst: Tensor, edge_index: Tensor) -> Tensor:
        """c_ij = cos(x_dst_i, x_src_j) of every edge j -> i (eq. 7)."""
        x_hat_src, x_hat_dst = self._unit_features(x_src, x_dst)
        src, dst = edge_index[0], edge_index[1]
        if is_compiling() or x_hat_src.dtype not in (torch.float32, torch.float64):
            return (x_hat_dst.index_select(0, dst) * x_hat_src.index_select(0, src)).sum(dim=-1)
        # The dot products sampled on the graph's pattern (SDDMM): no [E, F_in] gathers of
        # x_hat_i and x_hat_j, and about 3-4x less time on a sparse graph (benchmarks/NOTES.md).
        n_dst, n_src = x_dst.size(0), x_src.size(0)
        key = dst * n_src + src
        perm = key.argsort()
        # Row pointers by searching the sorted keys for each row's first one: unlike bincount,
        # no read of the maximum back to the host.
        rows = torch.arange(n_dst + 1, device=dst.device) * n_src
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            crow = torch.searchsorted(key[perm], rows)
            pattern = torch.sparse_csr_tensor(
                crow, src[perm], x_hat_src.new_ones(perm.numel()), (n_dst, n_src),
                check_invariants=False,
            )
        values = torch.sparse.sampled_addmm(pattern, x_hat_dst, x_hat_src.t(), beta=0.0).values()
        return torch.empty_like(values).index_copy(0, perm, values)

    def edge_update(
        self,
        s_j: OptTensor,
        s_i: OptTensor,
        s_edge: OptTensor,
        c: OptTensor,
        edge_weight: Tensor,
        is_loop: OptTensor,
        index: Tensor,
        ptr: OptTensor,
        dim_size: int | None,
    ) -> tuple[Tensor, OptTensor, OptTensor]:
        b = None
        if self.attention:  # scores [E, H]: each head's softmax is its own (eq. 4-6)
            e = s_i + s_j if s_edge is None else s_i + s_j + s_edge
            e = F.leaky_relu(e, self.negative_slope)  # eq. 4
            if index.numel() == 0:
                b = e
            else:
                alpha = softmax(e, index, ptr, dim_size)  # eq. 5
                b = self._attention_graph(alpha, index, is_loop, dim_size)  # eq. 6
        return edge_weight, b, c

    def message(self, x_j: Tensor, alpha: Tensor) -> Tensor:
        # `alpha` [E, H] is the combined a + b_h + c; PyG's AttentionExplainer reads it by
        # name. x_j [E, H, C] holds each head's W_h x_j.
        return alpha.unsqueeze(-1).to(x_j.dtype) * x_j

    # Dense path --------------------------------------------------------------------------

    def _dense_forward(self, x_src, x_dst, adj, mask, bipartite, return_attention_weights):
        mask = check_dense(x_src, x_dst, adj, mask, bipartite)
        h = self.lin(x_src)  # [..., N, H * C]
        if mask is not None:
            h = h * mask.unsqueeze(-1).to(h.dtype)  # padded nodes send nothing
        shared = adj.to(x_src.dtype)  # A, then A + C: one matrix for every head
        attention, attended = None, None
        similarity = self.similarity
        if self.attention:
            if self._sorted_attention(x_src, adj, mask, bipartite, return_attention_weights):
                # B h by sorting the scores: the same numbers without an [N, N] softmax.
                attended = self._complete_attention(x_src, self._split_heads(h), None)
            elif self._fused_dense(x_src, adj, mask, bipartite):  # A + B_h (+ C): one kernel
                attention, similarity = self._fused_coefficients(shared, x_src,
                                                                 return_attention_weights)
                shared = None  # A is inside the kernel's [H, N, N] coefficients
            else:
                attention = self._dense_attention(x_src, x_dst, mask, bipartite)
        factored = None
        if similarity:  # C joins the shared matrix, or the fused per-head ones
            if shared is None:
                attention, factored = self._add_dense_similarity(attention, x_src, x_dst,
                                                                 return_attention_weights)
            else:
                shared, factored = self._add_dense_similarity(shared, x_src, x_dst,
                                                              return_attention_weights)
        out, coef = self._dense_aggregate(shared, attention, h)
        if attended is not None:
            out = out + attended
        if factored is not None:
            x_hat_src, x_hat_dst = factored
            out = out + self._split_heads(x_hat_dst @ (x_hat_src.transpose(-1, -2) @ h))
        out = self._finish(out, x_dst, mask)

        if return_attention_weights:
            per_head = attention is not None
            return out, self._public_matrix(_mask_pairs(coef, mask, per_head), per_head)
        return out

    def _dense_aggregate(self, shared: OptTensor, attention: OptTensor, h: Tensor):
        """Eq. 3 per head, (A + B_h + C) W_h X: [..., N, H, C], and the coefficient matrices
        (shared [..., N, N] without attention, else [..., H, N, N])."""
        if attention is None:  # one matrix for all heads: one product over H * C columns
            return self._split_heads(shared @ h), shared
        # [..., H, N_dst, N_src]; shared is None when the kernel's coefficients hold A already
        coef = attention if shared is None else shared.unsqueeze(-3) + attention
        if self.heads == 1:  # one matrix product, no batched one
            return (coef.squeeze(-3) @ h).unsqueeze(-2), coef
        out = coef @ self._split_heads(h).movedim(-2, -3)  # [..., H, N_dst, C]
        return out.movedim(-3, -2), coef

    def _public_matrix(self, coef: Tensor, per_head: bool) -> Tensor:
        """Dense coefficients as returned: [..., N, N], or [..., N, N, H] when heads > 1."""
        if per_head:
            return self._public(coef, -3)
        if self.heads == 1:
            return coef
        return coef.unsqueeze(-1).expand(*coef.shape, self.heads)

    def _sorted_attention(self, x, adj, mask, bipartite, return_attention_weights) -> bool:
        """Whether a dense adjacency's B goes the sorted way (see sorted_min_nodes)."""
        n = adj.size(-1)
        return (
            adj.dim() == 2
            and x.dim() == 2
            and mask is None
            and not bipartite
            and not return_attention_weights
            and not (self.dropout > 0.0 and self.training)
            and n >= _sorted_min_nodes(self.sorted_min_nodes, adj.device)
            and n > self.sorted_min_ratio * self.out_channels
            and 0.0 < self.negative_slope <= 1.0
        )

    def _fused_dense(self, x, adj, mask, bipartite) -> bool:
        """Whether A + B_h (+ C) of a dense adjacency come from the Triton kernel of
        :mod:`agcn_pyg.nn.kernels.dense` (see :func:`~agcn_pyg.nn.kernels.use_triton`): one
        [N, N] graph and [N, F] features, every head at once ([H, N, N]). A batch
        ([B, N, N], or x [B, N, F] on a shared adj), a node mask, bipartite input, attention
        dropout in training, negative_slope <= 0 and float64 keep the PyTorch path."""
        return (
            adj.dim() == 2
            and x.dim() == 2
            and mask is None
            and not bipartite
            and not (self.dropout > 0.0 and self.training)
            and self.negative_slope > 0.0
            and x.dtype != torch.float64  # float64 stays on the reference path
            and use_triton(x)
        )

    def _fused_coefficients(self, adj: Tensor, x: Tensor, return_attention_weights):
        """(A + B_h [+ C] of eq. 3-7 per head, [H, N, N]; whether C is still to add) by one
        kernel; C is left out where it is cached or cheaper applied factored (the rule of
        _add_dense_similarity, C being shared by the H * C output columns)."""
        from agcn_pyg.nn.kernels.dense import dense_coefficients

        n = x.size(0)
        cached = self.cached and not x.requires_grad and not is_compiling()
        width = self.heads * self.out_channels
        with_c = self.similarity and not cached and (
            return_attention_weights or n * n <= width * 2 * n
        )
        s_src, s_dst = self._attention_scores(x, x)  # [N, H]
        x_hat = unit_rows(x) if with_c else None  # F.normalize with a leaner backward
        coef = dense_coefficients(adj, s_dst, s_src, x_hat, self.negative_slope, x.dtype)
        return coef, self.similarity and not with_c

    def _masked_dense_forward(
        self, x_src, x_dst, adj, mask, bipartite, return_attention_weights, add_loop=None
    ):
        """complete=False: eq. 3-7 over the non-zero entries of a dense adjacency only."""
        A, B, C = self._masked_dense_terms(x_src, x_dst, adj, mask, bipartite, add_loop)
        shared = A if C is None else A + C
        out, coef = self._dense_aggregate(shared, B, self.lin(x_src))
        out = self._finish(out, x_dst, mask)
        if return_attention_weights:
            return out, self._public_matrix(coef, B is not None)
        return out

    def _masked_dense_terms(self, x_src, x_dst, adj, mask, bipartite, add_loop=None):
        """A, B, C over the pattern of adj's non-zero entries (plus the added self-loops),
        as dense matrices, zero off the pattern: the edge_index path in matrix form. B per
        head, [..., H, N, N]."""
        mask = check_dense(x_src, x_dst, adj, mask, bipartite)
        adj = adj.to(x_src.dtype)
        edge = adj != 0
        add_loops = self.add_self_loops if add_loop is None else add_loop
        if add_loops and not bipartite:  # the missing ones, weight fill_value
            missing = ~edge.diagonal(dim1=-2, dim2=-1)
            adj = adj.clone()
            adj.diagonal(dim1=-2, dim2=-1).masked_fill_(missing, self.fill_value)
            edge = edge.clone()
            edge.diagonal(dim1=-2, dim2=-1).fill_(True)
        if mask is not None:
            edge = edge & mask.unsqueeze(-1) & mask.unsqueeze(-2)
        A = adj * edge
        B = C = None
        if self.attention:
            e = self._dense_scores(x_src, x_dst)  # [..., H, N_dst, N_src]
            # The most negative finite score, not -inf: a row without edges stays finite.
            e = e.masked_fill(~edge.unsqueeze(-3), torch.finfo(e.dtype).min)
            alpha = torch.softmax(e, dim=-1) * edge.unsqueeze(-3)  # eq. 5 over each row's edges
            B = alpha
            if not bipartite and alpha.size(-1) > 0:  # eq. 6 where the self-loop is an edge
                B = alpha.clone()
                loop = edge.diagonal(dim1=-2, dim2=-1).unsqueeze(-2)
                B.diagonal(dim1=-2, dim2=-1).add_(alpha.amax(dim=-1) * loop)
            B = F.dropout(B, p=self.dropout, training=self.training)
        if self.similarity:
            x_hat_src, x_hat_dst = self._unit_features(x_src, x_dst)
            C = (x_hat_dst @ x_hat_src.transpose(-1, -2)) * edge
        return A, B, C

    def _add_dense_similarity(self, coef, x_src, x_dst, return_attention_weights):
        """coef + C (eq. 7); or coef and the unit features, for applying C factored."""
        # The cache lives outside the graph torch.compile traces: compiled, C is formed.
        if self.cached and not _requires_grad(x_src, x_dst) and not is_compiling():
            return coef + self._similarity_matrix(x_src, x_dst), None
        x_hat = self._unit_features(x_src, x_dst)
        # C = x_hat x_hat^T costs N^2 F_in; applying it as x_hat (x_hat^T H) costs
        # 2 N F_in F_out, the cheaper one for large label sets.
        n_dst, n_src = coef.size(-2), coef.size(-1)
        width = self.heads * self.out_channels  # C is shared: applied to all heads at once
        if return_attention_weights or n_dst * n_src <= width * (n_dst + n_src):
            return _add_product(coef, x_hat[1], x_hat[0]), None  # fused with the sum
        return coef, x_hat

    def _dense_graphs(self, x_src, x_dst, adj, mask, bipartite) -> AdaptiveGraphs:
        mask = check_dense(x_src, x_dst, adj, mask, bipartite)
        A = _mask_pairs(adj.to(x_src.dtype), mask)
        B = C = None
        if self.attention:
            B = _mask_pairs(self._dense_attention(x_src, x_dst, mask, bipartite), mask, True)
        if self.similarity:
            x_hat_src, x_hat_dst = self._unit_features(x_src, x_dst)
            C = _mask_pairs(x_hat_dst @ x_hat_src.transpose(-1, -2), mask)
        return AdaptiveGraphs(None, A, self._public(B, -3), C)

    def _dense_scores(self, x_src: Tensor, x_dst: Tensor) -> Tensor:
        """Eq. 4 per head as dense matrices, LeakyReLU(s_i + t_j): [..., H, N_dst, N_src]."""
        s_src, s_dst = self._attention_scores(x_src, x_dst)  # [..., N, H]
        e = s_dst.transpose(-1, -2).unsqueeze(-1) + s_src.transpose(-1, -2).unsqueeze(-2)
        return F.leaky_relu(e, self.negative_slope)

    def _dense_attention(self, x_src, x_dst, mask: OptTensor, bipartite: bool) -> Tensor:
        """B of eq. 4-6 per head as dense [..., H, N_dst, N_src] matrices; masked nodes get
        no attention."""
        e = self._dense_scores(x_src, x_dst)  # eq. 4
        if mask is not None:
            # The most negative finite score, not -inf: a fully masked row stays finite.
            e = e.masked_fill(~mask.unsqueeze(-2).unsqueeze(-3), torch.finfo(e.dtype).min)
        alpha = torch.softmax(e, dim=-1)  # eq. 5 over the complete graph
        return self._attention_graph(alpha, diagonal=not bipartite)  # eq. 6

    def _similarity_matrix(self, x_src: Tensor, x_dst: Tensor) -> Tensor:
        """C of eq. 7 for fixed inputs, computed on the first call (:obj:`cached`)."""
        # The same tensor objects (weak references: a new tensor at a freed address is not
        # mistaken for one), unchanged since (their version counters).
        key = (tensor_version(x_src), tensor_version(x_dst))
        if None in key:  # inference_mode tensors: no version to key on, computed each call
            x_hat_src, x_hat_dst = self._unit_features(x_src, x_dst)
            return x_hat_dst @ x_hat_src.transpose(-1, -2)
        cache = self._cached_similarity
        if cache is None or cache[0]() is not x_src or cache[1]() is not x_dst or cache[2] != key:
            x_hat_src, x_hat_dst = self._unit_features(x_src, x_dst)
            C = x_hat_dst @ x_hat_src.transpose(-1, -2)
            cache = self._cached_similarity = (weakref.ref(x_src), weakref.ref(x_dst), key, C)
        return cache[3]

    # Complete path ------------------------------------------------------------------------

    def _complete_forward(self, x: Tensor, edge_index: Adj, edge_weight: OptTensor,
                          return_attention_weights):
        """Eq. 3 over every pair of nodes with a sparse A: A h + B h + C h + b, no [N, N]."""
        if self.attention and self.dropout > 0.0 and self.training:
            raise ValueError(
                f"attention dropout (dropout={self.dropout}) is not defined on the complete "
                "graph of a sparse adjacency (complete=True): it drops entries of the [N, N] "
                "matrix B, which this path never forms. Set dropout=0.0, or pass a dense "
                "[N, N] adjacency"
            )
        adj = self._sparse_adjacency(x, edge_index, edge_weight)
        n = x.size(0)
        if adj.has_loop is None and n <= self.dense_max_ratio * self.out_channels and (
            n * n <= self.max_dense_entries
        ):  # a small graph: [N, N] products beat the sorted path's many passes
            return self._dense_forward(x, x, adj.to_dense(), None, False, return_attention_weights)
        matrices = self._complete_matrices(x, adj) if return_attention_weights else None
        x_in = x
        h = self.lin(x)  # [N, H * C]: A and C act on all heads at once
        with torch.autocast(x.device.type, enabled=False):  # in at least float32
            dtype = torch.promote_types(h.dtype, torch.float32)
            x, h = x.to(dtype), h.to(dtype)
            # The terms are summed in place into A h (a fresh tensor no backward needs): one
            # [N, F] buffer less per term at N = 10^6.
            out = adjacency_matmul(adj, h)  # A (eq. 3), a sparse product
            if self.attention:  # eq. 4-6, per head
                out.add_(self._complete_attention(x, self._split_heads(h), adj.has_loop)
                         .flatten(-2))
            if self.similarity:
                x_hat = unit_rows(x)  # F.normalize, with a leaner backward
                out.addmm_(x_hat, x_hat.t() @ h)  # eq. 7, as x_hat (x_hat^T H)
                if adj.has_loop is not None:  # c_ii only for nodes with a self-loop
                    c_ii = x_hat.pow(2).sum(dim=-1) * ~adj.has_loop
                    out.sub_(c_ii.unsqueeze(-1) * h)
        out = self._finish(self._split_heads(out), x_in)
        if return_attention_weights:
            return out, self._combined_heads_last(*matrices)
        return out

    def _combined_heads_last(self, a: Tensor, b: OptTensor, c: OptTensor) -> Tensor:
        """a + b + c with a, c shared and b per head (its head dimension last when heads > 1)."""
        if self.heads > 1:
            a = a.unsqueeze(-1)
            c = None if c is None else c.unsqueeze(-1)
        out = a if b is None else a + b
        out = out if c is None else out + c
        return out.expand(*out.shape[:-1], self.heads) if self.heads > 1 else out

    def _complete_attention(self, x: Tensor, h: Tensor, has_loop: OptTensor) -> Tensor:
        """B_h h_h over the complete graph by sorted scores, in at least float32: h [N, H, C]
        -> [N, H, C]; every head in one Triton call where the kernels apply, else one sort
        per head (:func:`~agcn_pyg.nn.complete.complete_attention_heads`)."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(torch.promote_types(x.dtype, torch.float32))
            s_src, s_dst = self._attention_scores(x, x)  # [N, H]
            return complete_attention_heads(h, s_dst, s_src, self.negative_slope, has_loop)

    def _sparse_adjacency(self, x: Tensor, edge_index: Adj, edge_weight: OptTensor):
        """A of the complete path with its self-loops, in CSR form; cached while the graph
        tensors are the same objects, unchanged (like the C cache of the dense path)."""
        n = x.size(0)
        inputs = (edge_index, edge_weight)
        key = (n, x.device, self.add_self_loops, self.fill_value)
        cacheable = not is_compiling() and not (
            edge_weight is not None and edge_weight.requires_grad
        ) and not any(is_inference(t) for t in inputs)
        cache = self._cached_adjacency
        if cacheable and cache is not None and cache[0] == key and all(
            (ref is None and t is None) or (ref is not None and ref() is t
                                            and version == tensor_version(t))
            for (ref, version), t in zip(cache[1], inputs, strict=True)
        ):
            return cache[2]
        graph = self._sparse_graph(x, x, edge_index, edge_weight, None, self_loops=False)
        edge_index, weight = graph.edge_index, graph.edge_weight
        is_loop = (edge_index[0] == edge_index[1]).long()
        has_loop = torch.zeros(n, dtype=torch.long, device=x.device)
        has_loop = has_loop.scatter_add_(0, edge_index[0], is_loop) > 0
        if self.add_self_loops:
            # Every node's self-loop appended, fill_value where none is stored and 0 on top of
            # a stored one (duplicate edges add up here): add_remaining_self_loops' A with
            # shapes that do not depend on the data, so torch.compile does not break the graph.
            nodes = torch.arange(n, device=x.device)
            edge_index = torch.cat([edge_index, nodes.expand(2, n)], dim=1)
            fill = torch.full_like(has_loop, self.fill_value, dtype=weight.dtype)
            weight = torch.cat([weight, fill.masked_fill(has_loop, 0.0)])
            has_loop = None  # every node has one now
        adj = SparseAdjacency.from_edges(edge_index, weight, n, has_loop)
        if cacheable:
            refs = tuple(
                (None, None) if t is None else (weakref.ref(t), tensor_version(t))
                for t in inputs
            )
            self._cached_adjacency = (key, refs, adj)
        return adj

    def _complete_matrices(self, x: Tensor, adj: SparseAdjacency):
        """A, B and C of the complete path as [N, N] matrices, within max_dense_entries."""
        n = x.size(0)
        if n * n > self.max_dense_entries:
            raise ValueError(
                f"the complete graph's [N, N] matrices do not fit: N = {n} gives {n * n:,} "
                f"entries each, over AdaptiveGCNConv.max_dense_entries = "
                f"{self.max_dense_entries:,}. conv.complete_parts(x, edge_index, edge_weight) "
                "returns what defines them at any size (A as a sparse matrix, the scores "
                "s_src and s_dst, the unit features x_hat) and builds any rows with "
                ".rows(index); or raise conv.max_dense_entries"
            )
        return self._complete_parts(x, adj).rows(torch.arange(n, device=x.device))

    def _complete_parts(self, x: Tensor, adj: SparseAdjacency) -> CompleteGraphParts:
        s_src = s_dst = None
        if self.attention:
            with torch.autocast(x.device.type, enabled=False):
                x32 = x.to(torch.promote_types(x.dtype, torch.float32))
                s_src, s_dst = self._attention_scores(x32, x32)  # [N, H]
            if self.heads == 1:  # the single-head shapes, [N]
                s_src, s_dst = s_src.squeeze(-1), s_dst.squeeze(-1)
        x_hat = self._unit_features(x, x)[0] if self.similarity else None
        return CompleteGraphParts(
            adj.to_torch(), s_src, s_dst, x_hat, adj.has_loop, self.negative_slope
        )

    @torch.no_grad()
    def complete_parts(
        self, x: Tensor, edge_index: Adj, edge_weight: OptTensor = None
    ) -> CompleteGraphParts:
        r"""What defines :math:`\mathbf{A}`, :math:`\mathbf{B}` and :math:`\mathbf{C}` on the
        complete graph, at any size: :math:`\mathbf{A}` as a sparse CSR matrix (self-loops
        included), the two halves of eq. 4's scores and the unit features of eq. 7
        (:class:`~agcn_pyg.nn.complete.CompleteGraphParts`; its :meth:`rows` builds any rows of
        the three matrices). Accepts every graph form of one node set; a dense adjacency is
        made sparse (every self-loop present, as the complete graph of a dense adjacency
        has)."""
        x, _, bipartite = self._node_features(x, None)
        check_complete(bipartite, None)
        if _is_dense_adjacency(edge_index):
            check_dense(x, x, edge_index, None, False)
            adj = edge_index
            target, source = adj.nonzero(as_tuple=True)  # adj[i, j] is the edge j -> i
            off = source != target
            loops = torch.arange(x.size(0), device=x.device)
            edge_weight = torch.cat([adj[target[off], source[off]], adj.diagonal()])
            edge_index = torch.cat([torch.stack([source[off], target[off]]), loops.repeat(2, 1)],
                                   dim=1)  # fmt: skip
        adj = self._sparse_adjacency(x, edge_index, edge_weight)
        return self._complete_parts(x, adj)

    # Shared pieces -----------------------------------------------------------------------

    def _attention_graph(
        self,
        alpha: Tensor,
        index: OptTensor = None,
        is_loop: OptTensor = None,
        dim_size: int | None = None,
        diagonal: bool = False,
    ) -> Tensor:
        r"""Eq. 6, :math:`b_{i,j} = \alpha_{i,j} + [i = j] \max_k \alpha_{i,k}`, then attention
        dropout, per head. :obj:`alpha` is either per edge (:obj:`[E, H]`, with each edge's
        target :obj:`index` and :obj:`is_loop`; no self term when :obj:`is_loop` is
        :obj:`None`) or dense :obj:`[..., H, N, N]` matrices whose diagonals hold the
        self-loops when :obj:`diagonal` is set."""
        if index is not None and is_loop is not None:
            row_max = scatter(alpha, index, dim=0, dim_size=dim_size, reduce="max")
            alpha = alpha + is_loop.to(alpha.dtype).unsqueeze(-1) * row_max[index]
        elif diagonal and alpha.size(-1) > 0:  # (an empty graph has no row maximum)
            b = alpha.clone()  # the softmax keeps alpha for its backward: add to a copy
            b.diagonal(dim1=-2, dim2=-1).add_(alpha.amax(dim=-1))
            alpha = b
        return F.dropout(alpha, p=self.dropout, training=self.training)

    def _attention_scores(self, x_src: Tensor, x_dst: Tensor) -> tuple[OptTensor, OptTensor]:
        """The source and target halves of eq. 4's score per head, x (W_h^T a_h): [..., N, H]
        (t_j and s_i)."""
        if not self.attention:
            return None, None
        s_src = x_src @ _score_vectors(self.att_src, self.lin_src.weight).t()
        s_dst = x_dst @ _score_vectors(self.att_dst, self.lin_dst.weight).t()
        return s_src, s_dst

    def _edge_scores(self, edge_attr: OptTensor, dtype: torch.dtype) -> OptTensor:
        """The edge-feature term of eq. 4's score per head, e_ij (W_e,h^T a_e,h): [E, H]."""
        if edge_attr is None:
            return None
        edge_attr = edge_attr.to(dtype)
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.unsqueeze(-1)
        return edge_attr @ _score_vectors(self.att_edge, self.lin_edge.weight).t()

    def _unit_features(self, x_src: Tensor, x_dst: Tensor) -> tuple[Tensor, Tensor]:
        # F.normalize divides by max(||x||, eps): a zero vector stays zero, so cos = 0.
        x_hat_src = F.normalize(x_src, p=2.0, dim=-1)
        x_hat_dst = x_hat_src if x_dst is x_src else F.normalize(x_dst, p=2.0, dim=-1)
        return x_hat_src, x_hat_dst

    def _node_features(self, x, edge_attr: OptTensor) -> tuple[Tensor, Tensor, bool]:
        """(x_src, x_dst, bipartite) from either input form, checked; lazy modules built."""
        bipartite = isinstance(x, (tuple, list))
        if bipartite:
            check_pair(x, self.add_self_loops)
            x_src, x_dst = x
        else:
            x_src = x_dst = x
        check_features("x_src" if bipartite else "x", x_src, self.lin.in_channels)
        check_dtype("x_src" if bipartite else "x", x_src, self.lin.weight, self)
        if bipartite:
            check_features("x_dst", x_dst, self._in_dst())
            check_pair_sizes(x_src, x_dst, self.in_channels, self.similarity)
        if edge_attr is not None:
            check_edge_attr(edge_attr, self.lin_edge)
        self._initialize_lazy(x_src, x_dst, edge_attr)
        return x_src, x_dst, bipartite

    def _initialize_lazy(self, x_src: Tensor, x_dst: Tensor, edge_attr: OptTensor):
        for lin, inputs in ((self.lin, x_src), (self.lin_src, x_src), (self.lin_dst, x_dst),
                            (self.lin_edge, edge_attr), (self.res, x_dst)):
            if lin is not None and isinstance(lin.weight, UninitializedParameter):
                lin(inputs.reshape(-1, inputs.size(-1) if inputs.dim() > 1 else 1)[:1])

    def _in_dst(self) -> int:
        if self.lin_dst is not None:
            return self.lin_dst.in_channels
        return self.lin.in_channels if isinstance(self.in_channels, int) else self.in_channels[1]

    def _sparse_graph(
        self, x_src, x_dst, edge_index, edge_weight, edge_attr, self_loops: bool | None = None
    ) -> _EdgeGraph:
        """Brings every sparse input form to edge_index [2, E] with edge_weight [E] (and
        edge_attr), self-loops appended last (``self_loops``, default add_self_loops); keeps
        the sparse input to restore its layout."""
        check_node_dims(x_src, x_dst)
        n_src, n_dst = x_src.size(0), x_dst.size(0)
        layout = None
        if isinstance(edge_index, SparseTensor) or is_torch_sparse_tensor(edge_index):
            check_sparse(edge_index, edge_weight, edge_attr, n_src, n_dst, x_src is x_dst)
            layout = edge_index
            if isinstance(edge_index, Tensor) and edge_index.layout == torch.sparse_coo:
                # PyG's to_edge_index would flag an uncoalesced input as coalesced in place.
                edge_index = edge_index.coalesce()
            index, edge_weight = to_edge_index(edge_index)
            if edge_weight.dim() != 1:
                raise ValueError(
                    f"sparse adjacency 'edge_index' must hold one weight per entry (got values "
                    f"of shape {list(edge_weight.shape)})"
                )
            edge_index = index.flip(0)  # adj_t[i, j] is the edge j -> i
        else:
            check_edge_index(edge_index, edge_weight, edge_attr, n_src, n_dst, x_src is x_dst)
            edge_index = edge_index.long()

        if edge_weight is None:
            edge_weight = x_src.new_ones(edge_index.size(1))
        else:
            check_finite("edge_weight", edge_weight)  # or the sparse adjacency's values
            edge_weight = edge_weight.to(x_src.dtype)

        if self.add_self_loops if self_loops is None else self_loops:  # (not bipartite here)
            loops, edge_weight = add_remaining_self_loops(
                edge_index, edge_weight, self.fill_value, n_src
            )
            if edge_attr is not None:
                _, edge_attr = add_remaining_self_loops(
                    edge_index, edge_attr, self.edge_fill_value, n_src
                )
            edge_index = loops
        return _EdgeGraph(edge_index, edge_weight, edge_attr, layout)

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}=False" for name in ("attention", "similarity") if not getattr(self, name)
        )
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"heads={self.heads}{extra})")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Files written before heads existed hold att_* as [1, C]: the same numbers as [1, 1, C].
        for name in ("att_src", "att_dst", "att_edge"):
            value, param = state_dict.get(prefix + name), getattr(self, name)
            if (value is not None and param is not None and value.dim() == 2
                    and param.dim() == 3 and param.size(1) == 1):
                state_dict[prefix + name] = value.unsqueeze(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this first, on every submodule: one clear line, not pages of
        # TorchScript errors about Python control flow.
        raise RuntimeError(_NO_TORCHSCRIPT.format(name=self.__class__.__name__))

    def jittable(self, *args, **kwargs):
        raise RuntimeError(_NO_TORCHSCRIPT.format(name=self.__class__.__name__))


_NO_TORCHSCRIPT = (
    "{name} does not support TorchScript (torch.jit.script is deprecated in PyTorch): use "
    "torch.compile(model) to compile it, or torch.export.export(model, args) to export it"
)


class _EdgeGraph(NamedTuple):
    """A sparse input graph in edge-list form (self-loops added); `layout` is the sparse
    matrix it came as, if any."""

    edge_index: Tensor
    edge_weight: Tensor
    edge_attr: OptTensor
    layout: Adj | None


# Dense helpers -----------------------------------------------------------------------------


def _is_dense_adjacency(edge_index: Adj) -> bool:
    return (
        isinstance(edge_index, Tensor)
        and not is_sparse(edge_index)
        and edge_index.is_floating_point()
    )


def _score_vectors(att: Tensor, weight: Tensor) -> Tensor:
    """W_h^T a_h of every head, [H, F]: from att [1, H, C] and weight [H * C, F] (eq. 4's
    score needs only this vector, never the [N, H * C] product W x)."""
    heads, channels = att.shape[-2:]
    if heads == 1:  # one matrix product, no batched one
        return att.view(1, channels) @ weight
    # torch.bmm, not @: matmul would add a reshape (a kernel) around the batched product
    return torch.bmm(att.view(heads, 1, channels), weight.view(heads, channels, -1)).squeeze(1)


def _mask_from_third_argument(edge_weight: OptTensor, mask: OptTensor):
    """DenseGATConv's ``conv(x, adj, mask)``: with a dense adjacency (whose entries are the
    weights, so no edge_weight exists) a bool third positional argument is the node mask."""
    if isinstance(edge_weight, Tensor) and edge_weight.dtype == torch.bool:
        if mask is not None:
            raise ValueError(
                "a bool third argument is the node mask with a dense adjacency, and 'mask' was "
                "given too: pass the mask once"
            )
        return None, edge_weight
    return edge_weight, mask


def _add_product(coef: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """coef + a b^T, fused into one buffer where the shapes allow it."""
    if coef.dim() == a.dim() == 2:
        return torch.addmm(coef, a, b.t())
    if coef.dim() == a.dim() == 3 and coef.size(0) == a.size(0):
        return torch.baddbmm(coef, a, b.transpose(-1, -2))
    return coef + a @ b.transpose(-1, -2)


def _mask_pairs(coef: Tensor, mask: OptTensor, per_head: bool = False) -> Tensor:
    """Zeroes every pair that involves a masked node (coef [..., H, N, N] when per_head)."""
    if mask is None:
        return coef
    pairs = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    return coef * (pairs.unsqueeze(-3) if per_head else pairs).to(coef.dtype)


def _requires_grad(*tensors: Tensor) -> bool:
    return any(t.requires_grad for t in tensors)


def _sorted_min_nodes(setting: int | None, device: torch.device) -> int:
    if setting is not None:
        return setting
    return 2048 if device.type == "cpu" else 16384


def _as_layout(edge_index: Tensor, alpha: Tensor, layout: Adj | None, size: tuple[int, int]):
    """Returns per-edge coefficients ([E] or [E, H]) in the layout the graph came in:
    ``(edge_index, alpha)``, a SparseTensor, or GATConv's pair ``(adj, alpha)`` for a
    torch.sparse input (``adj`` in its layout, [N_dst, N_src] or [N_dst, N_src, H], and
    ``alpha`` its values in the order it stores them)."""
    if layout is None:
        return edge_index, alpha
    row, col = edge_index[1], edge_index[0]  # back to adj_t[target, source]
    shape = (size[1], size[0])
    if isinstance(layout, SparseTensor):
        return SparseTensor(row=row, col=col, value=alpha, sparse_sizes=shape)
    if layout.layout in (torch.sparse_csr, torch.sparse_csc):
        adj = _compressed(row, col, alpha, shape, layout.layout)
    else:
        adj = torch.sparse_coo_tensor(torch.stack([row, col]), alpha,
                                      shape + alpha.shape[1:]).coalesce()
    return adj, adj.values()


def _compressed(row: Tensor, col: Tensor, value: Tensor, shape: tuple[int, int], layout):
    """A CSR or CSC matrix from (row, col, value) without duplicates; value may be [E, H]
    (a hybrid matrix, which torch cannot convert to from COO)."""
    if layout == torch.sparse_csc:
        row, col, shape = col, row, (shape[1], shape[0])
    perm = (row * shape[1] + col).argsort()
    crow = F.pad(torch.bincount(row, minlength=shape[0]).cumsum(0), (1, 0))
    args = (crow, col[perm], value[perm])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        if layout == torch.sparse_csc:
            return torch.sparse_csc_tensor(*args, (shape[1], shape[0]) + value.shape[1:])
        return torch.sparse_csr_tensor(*args, shape + value.shape[1:])
