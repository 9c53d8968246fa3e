"""PyG's own GATConv and DenseGATConv tests (test/nn/conv/test_gat_conv.py,
test/nn/dense/test_dense_gat_conv.py) with AdaptiveGCNConv swapped in.

Changed beyond the class name, each marked ``# DIFFERENCE``:
- TorchScript blocks removed (``torch.jit.script`` is deprecated; the layer refuses it with one
  line, tests/test_heads.py), as are GATConv's ``normalize``/``gat_norm`` cases: that option is
  not in the PyG version this project pins (2.8.1).
- (1) A dense adjacency is the complete label graph (ML-AGCN's "no threshold" graph):
  DenseGATConv's meaning, the non-zero entries as edges, is ``complete=False``.
- (2) Eq. 6-7 need the target features and equal feature sizes: bipartite input needs
  ``x_dst`` (no ``(x_src, None)``), ``similarity=False`` for different sizes, and
  ``add_self_loops=False`` (two node sets have no self-loops).
- Forced by eq. 3 as well: ``return_attention_weights`` returns eq. 3's combined coefficient
  a + b_h + c (A, B and C are what the layer aggregates with), not GATConv's softmax in
  [0, 1]; the softmax part is ``graphs().B``, in [0, 2] with eq. 6's self term.
- The third positional argument is ``edge_weight`` (A, as in GCNConv), not GATConv's
  ``edge_attr``: edge features go by keyword, and a layer with ``edge_dim`` refuses a call
  without them. GATConv's ``fill_value`` (edge features of self-loops) is ``edge_fill_value``;
  ``fill_value`` is a_ii, as in GCNConv.
"""

import pytest
import torch
import torch_geometric.typing
from torch_geometric.typing import SparseTensor
from torch_geometric.utils import to_torch_csc_tensor

from agcn_pyg import AdaptiveGCNConv


@pytest.mark.parametrize('residual', [False, True])
def test_gat_conv(residual):
    x1 = torch.randn(4, 8)
    x2 = torch.randn(2, 16)
    edge_index = torch.tensor([[0, 1, 2, 3], [0, 0, 1, 1]])
    adj1 = to_torch_csc_tensor(edge_index, size=(4, 4))

    conv = AdaptiveGCNConv(8, 32, heads=2, residual=residual)
    assert str(conv) == 'AdaptiveGCNConv(8, 32, heads=2)'
    out = conv(x1, edge_index)
    assert out.size() == (4, 64)
    assert torch.allclose(conv(x1, edge_index, size=(4, 4)), out)
    assert torch.allclose(conv(x1, adj1.t()), out, atol=1e-6)

    if torch_geometric.typing.WITH_TORCH_SPARSE:
        adj2 = SparseTensor.from_edge_index(edge_index, sparse_sizes=(4, 4))
        assert torch.allclose(conv(x1, adj2.t()), out, atol=1e-6)

    # Test `return_attention_weights`.
    result = conv(x1, edge_index, return_attention_weights=True)
    # DIFFERENCE: atol as for the sparse inputs above: with the fused edge kernels (CUDA, or
    # AGCN_KERNELS=triton) `out` came from them and this call from the PyTorch path that
    # forms the per-edge coefficients; the two sum in different orders.
    assert torch.allclose(result[0], out, atol=1e-6)
    assert result[1][0].size() == (2, 7)
    assert result[1][1].size() == (7, 2)
    # DIFFERENCE (eq. 3): the coefficient is a + b_h + c; its attention part B is in [0, 2].
    graphs = conv.graphs(x1, edge_index)
    assert torch.allclose(result[1][1], (graphs.A + graphs.C).unsqueeze(-1) + graphs.B)
    assert graphs.B.min() >= 0 and graphs.B.max() <= 2

    result = conv(x1, adj1.t(), return_attention_weights=True)
    assert torch.allclose(result[0], out, atol=1e-6)
    assert result[1][0].size() == torch.Size([4, 4, 2])
    assert result[1][0]._nnz() == 7

    if torch_geometric.typing.WITH_TORCH_SPARSE:
        result = conv(x1, adj2.t(), return_attention_weights=True)
        assert torch.allclose(result[0], out, atol=1e-6)
        assert result[1].sizes() == [4, 4, 2] and result[1].nnz() == 7

    # Test bipartite message passing:
    adj1 = to_torch_csc_tensor(edge_index, size=(4, 2))

    # DIFFERENCE (2): different feature sizes need similarity=False; no self-loops.
    conv = AdaptiveGCNConv((8, 16), 32, heads=2, residual=residual, similarity=False,
                           add_self_loops=False)
    assert str(conv) == 'AdaptiveGCNConv((8, 16), 32, heads=2, similarity=False)'

    out1 = conv((x1, x2), edge_index)
    assert out1.size() == (2, 64)
    assert torch.allclose(conv((x1, x2), edge_index, size=(4, 2)), out1)
    assert torch.allclose(conv((x1, x2), adj1.t()), out1, atol=1e-6)

    # DIFFERENCE (2): W_dst (eq. 4) and eq. 7 need x_dst.
    with pytest.raises(ValueError, match="need the target features x_dst"):
        conv((x1, None), edge_index, size=(4, 2))

    if torch_geometric.typing.WITH_TORCH_SPARSE:
        adj2 = SparseTensor.from_edge_index(edge_index, sparse_sizes=(4, 2))
        assert torch.allclose(conv((x1, x2), adj2.t()), out1, atol=1e-6)


def test_gat_conv_with_edge_attr():
    x = torch.randn(4, 8)
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 0, 1, 1]])
    edge_weight = torch.randn(edge_index.size(1))
    edge_attr = torch.randn(edge_index.size(1), 4)

    conv = AdaptiveGCNConv(8, 32, heads=2, edge_dim=1, fill_value=0.5)
    # DIFFERENCE: the third positional argument is edge_weight (A); edge features by keyword.
    with pytest.raises(ValueError, match="no 'edge_attr' arrived"):
        conv(x, edge_index, edge_weight)
    out = conv(x, edge_index, edge_attr=edge_weight)
    assert out.size() == (4, 64)
    if torch_geometric.typing.WITH_TORCH_SPARSE:
        adj1 = SparseTensor.from_edge_index(edge_index, edge_weight, (4, 4))
        with pytest.raises(ValueError):  # (GATConv: NotImplementedError)
            assert torch.allclose(conv(x, adj1.t()), out)

    conv = AdaptiveGCNConv(8, 32, heads=2, edge_dim=1, fill_value='mean')
    out = conv(x, edge_index, edge_attr=edge_weight)
    assert out.size() == (4, 64)
    if torch_geometric.typing.WITH_TORCH_SPARSE:
        with pytest.raises(ValueError):
            assert torch.allclose(conv(x, adj1.t()), out)

    conv = AdaptiveGCNConv(8, 32, heads=2, edge_dim=4, fill_value=0.5)
    out = conv(x, edge_index, edge_attr=edge_attr)
    assert out.size() == (4, 64)
    if torch_geometric.typing.WITH_TORCH_SPARSE:
        adj2 = SparseTensor.from_edge_index(edge_index, edge_attr, (4, 4))
        with pytest.raises(ValueError):
            assert torch.allclose(conv(x, adj2.t()), out)

    conv = AdaptiveGCNConv(8, 32, heads=2, edge_dim=4, fill_value='mean')
    out = conv(x, edge_index, edge_attr=edge_attr)
    assert out.size() == (4, 64)
    if torch_geometric.typing.WITH_TORCH_SPARSE:
        with pytest.raises(ValueError):
            assert torch.allclose(conv(x, adj2.t()), out)


def test_gat_conv_empty_edge_index():
    x = torch.randn(0, 8)
    edge_index = torch.empty(2, 0, dtype=torch.long)

    conv = AdaptiveGCNConv(8, 32, heads=2)
    out = conv(x, edge_index)
    assert out.size() == (0, 64)


@pytest.mark.parametrize('heads', [1, 4])
@pytest.mark.parametrize('concat', [True, False])
def test_dense_gat_conv(heads, concat):
    channels = 16
    sparse_conv = AdaptiveGCNConv(channels, channels, heads=heads, concat=concat)
    # DIFFERENCE (1): the non-zero entries as the edges is complete=False.
    dense_conv = AdaptiveGCNConv(channels, channels, heads=heads, concat=concat, complete=False)
    assert str(dense_conv) == f'AdaptiveGCNConv(16, 16, heads={heads})'

    # Ensure same weights and bias (one class: its state dict):
    dense_conv.load_state_dict(sparse_conv.state_dict())

    x = torch.randn((5, channels))
    edge_index = torch.tensor([[0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3]])

    sparse_out = sparse_conv(x, edge_index)

    x = torch.cat([x, x.new_zeros(1, channels)], dim=0).view(2, 3, channels)
    adj = torch.Tensor([
        [
            [0, 1, 0],
            [1, 0, 1],
            [0, 1, 0],
        ],
        [
            [0, 1, 0],
            [1, 0, 0],
            [0, 0, 0],
        ],
    ])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)

    dense_out = dense_conv(x, adj, mask)

    assert dense_out[1, 2].abs().sum() == 0
    dense_out = dense_out.view(6, dense_out.size(-1))[:-1]
    assert torch.allclose(sparse_out, dense_out, atol=1e-4)

    # DIFFERENCE (1), shown: the default reads the same adjacency as the complete graph.
    sparse_conv.complete = None
    complete_out = sparse_conv(x, adj, mask).view(6, -1)[:-1]
    assert not torch.allclose(complete_out, dense_out, atol=1e-4)


def test_dense_gat_conv_with_broadcasting():
    batch_size, num_nodes, channels = 8, 3, 16
    conv = AdaptiveGCNConv(channels, channels, heads=4)

    x = torch.randn(batch_size, num_nodes, channels)
    adj = torch.Tensor([
        [0, 1, 1],
        [1, 0, 1],
        [1, 1, 0],
    ])

    assert conv(x, adj).size() == (batch_size, num_nodes, 64)
    mask = torch.tensor([1, 1, 1], dtype=torch.bool)
    assert conv(x, adj, mask).size() == (batch_size, num_nodes, 64)
