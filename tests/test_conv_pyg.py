"""AdaptiveGCNConv where PyG puts GATConv and DenseGATConv: bipartite and heterogeneous graphs,
edge features, dense batches, SparseTensor. Values are checked against a float64 loop over the
paper's equations 3-7 written here, independently of the layer."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData
from torch_geometric.nn import GATConv, HeteroConv, to_hetero
from torch_geometric.typing import WITH_TORCH_SPARSE

from agcn_pyg import AdaptiveGCNConv

# ---------------------------------------------------------------------------------------
# The reference: eq. 3-7 with loops over targets and their sources.
# ---------------------------------------------------------------------------------------


def leaky(v, slope=0.2):
    return v if v >= 0 else slope * v


def cosine(u, v):
    nu, nv = float(u.norm()), float(v.norm())
    return float(u @ v) / (nu * nv) if nu > 0 and nv > 0 else 0.0


def reference(conv, x_src, x_dst, edges, bipartite, attrs=None):
    """`edges` maps (j, i) -> a_ij for each edge from source j to target i; `attrs` maps
    (j, i) -> edge feature vector. Returns (out [N_dst, C], {(j, i): (a, b, c)})."""
    x_src, x_dst = x_src.double(), x_dst.double()
    h = x_src @ conv.lin.weight.double().t()
    terms = {}
    for i in range(x_dst.size(0)):
        nbrs = [j for (j, t) in edges if t == i]
        b = dict.fromkeys(nbrs, 0.0)
        if conv.attention and nbrs:
            w_dst = conv.lin_dst.weight.double() @ x_dst[i]
            s_dst = float(conv.att_dst.double().view(-1) @ w_dst)
            e = {}
            for j in nbrs:
                score = s_dst + float(
                    conv.att_src.double().view(-1) @ (conv.lin_src.weight.double() @ x_src[j]))
                if attrs is not None:
                    w_e = conv.lin_edge.weight.double() @ attrs[(j, i)].double().view(-1)
                    score += float(conv.att_edge.double().view(-1) @ w_e)
                e[j] = leaky(score)  # eq. 4
            z = sum(math.exp(v) for v in e.values())
            alpha = {j: math.exp(v) / z for j, v in e.items()}  # eq. 5
            for j in nbrs:  # eq. 6: the self term exists only where i is its own neighbour
                b[j] = alpha[j] + (max(alpha.values()) if j == i and not bipartite else 0.0)
        for j in nbrs:
            c = cosine(x_dst[i], x_src[j]) if conv.similarity else 0.0  # eq. 7
            terms[(j, i)] = (edges[(j, i)], b[j], c)
    out = torch.zeros(x_dst.size(0), h.size(1), dtype=torch.float64)
    for (j, i), (a, b, c) in terms.items():
        out[i] += (a + b + c) * h[j]  # eq. 3
    if conv.bias is not None:
        out += conv.bias.double()
    return out, terms


def random_edges(n_src, n_dst, p, g):
    """Duplicate-free edges j -> i with weights in [0.1, 1.1); the last target has none."""
    edges = {}
    for i in range(n_dst - 1):
        for j in range(n_src):
            if torch.rand(1, generator=g) < p:
                edges[(j, i)] = float(torch.rand(1, generator=g)) + 0.1
    return edges


def as_edge_index(edges):
    keys = list(edges)
    edge_index = torch.tensor(keys, dtype=torch.long).t().reshape(2, -1)
    return edge_index, torch.tensor([edges[k] for k in keys], dtype=torch.float64)


def make_conv(*args, **kwargs):
    torch.manual_seed(0)
    conv = AdaptiveGCNConv(*args, **kwargs).double()
    with torch.no_grad():
        if conv.bias is not None:
            conv.bias.normal_()
    return conv


def require_torch_sparse():
    """Skips without torch-sparse; CI's sparse step turns that skip into a failure
    (tests/conftest.py)."""
    if not WITH_TORCH_SPARSE:
        pytest.skip("needs torch-sparse: pip install --no-build-isolation -e '.[sparse]'")


# Bipartite ---------------------------------------------------------------------------------


BIPARTITE_CASES = [
    dict(in_channels=(5, 3), similarity=False),
    dict(in_channels=(4, 4)),
    dict(in_channels=(4, 4), share_weights=True),
    dict(in_channels=(4, 4), attention=False),
    dict(in_channels=4),
]


@pytest.mark.parametrize("case", BIPARTITE_CASES, ids=str)
def test_bipartite_matches_reference(case):
    g = torch.Generator().manual_seed(1)
    in_src, in_dst = case["in_channels"] if isinstance(case["in_channels"], tuple) else (4, 4)
    x_src = torch.randn(7, in_src, dtype=torch.float64, generator=g)
    x_dst = torch.randn(5, in_dst, dtype=torch.float64, generator=g)
    x_src[2] = 0.0  # a zero feature vector: cosine 0
    edges = random_edges(7, 5, 0.5, g)
    edges[(1, 1)] = 0.7  # source 1 -> target 1 is an ordinary edge: no eq. 6 self term
    conv = make_conv(out_channels=3, add_self_loops=False, **case)
    edge_index, edge_weight = as_edge_index(edges)

    expected, terms = reference(conv, x_src, x_dst, edges, bipartite=True)
    out, (ei, coef) = conv((x_src, x_dst), edge_index, edge_weight, return_attention_weights=True)
    assert out.shape == (5, 3)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    for k in range(ei.size(1)):
        assert abs(float(coef[k]) - sum(terms[(int(ei[0, k]), int(ei[1, k]))])) < 1e-9

    # The sparse forms take PyG's [N_dst, N_src] shape (adj_t[i, j] = weight of j -> i).
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), edge_weight, (5, 7))
    for form in (adj_t, adj_t.coalesce().to_sparse_csr(), adj_t.coalesce().to_sparse_csc()):
        torch.testing.assert_close(conv((x_src, x_dst), form), expected, rtol=1e-9, atol=1e-9)
    _, (sparse_coef, values) = conv((x_src, x_dst), adj_t.coalesce().to_sparse_csr(),
                                    return_attention_weights=True)  # GATConv's (adj, alpha)
    assert sparse_coef.shape == (5, 7) and sparse_coef.layout == torch.sparse_csr
    torch.testing.assert_close(values, sparse_coef.values())

    graphs = conv.graphs((x_src, x_dst), edge_index, edge_weight)
    for k in range(graphs.edge_index.size(1)):
        a, b, c = terms[(int(graphs.edge_index[0, k]), int(graphs.edge_index[1, k]))]
        assert abs(float(graphs.A[k]) - a) < 1e-12
        assert graphs.B is None or abs(float(graphs.B[k]) - b) < 1e-9
        assert graphs.C is None or abs(float(graphs.C[k]) - c) < 1e-9


def test_bipartite_dense_matches_reference():
    g = torch.Generator().manual_seed(2)
    x_src = torch.randn(6, 4, dtype=torch.float64, generator=g)
    x_dst = torch.randn(3, 4, dtype=torch.float64, generator=g)
    adj = torch.rand(3, 6, dtype=torch.float64, generator=g)  # [N_dst, N_src], complete
    edges = {(j, i): float(adj[i, j]) for i in range(3) for j in range(6)}
    for out_channels in (8, 1):  # 1: the cosine term is applied factored
        conv = make_conv((4, 4), out_channels, add_self_loops=False)
        expected, _ = reference(conv, x_src, x_dst, edges, bipartite=True)
        torch.testing.assert_close(conv((x_src, x_dst), adj), expected, rtol=1e-9, atol=1e-9)


def test_bipartite_lazy_and_repr():
    conv = AdaptiveGCNConv((-1, -1), 8, add_self_loops=False, similarity=False)
    out = conv((torch.randn(5, 3), torch.randn(2, 6)), torch.tensor([[0, 4], [1, 1]]))
    assert out.shape == (2, 8)
    assert conv.lin.weight.shape == conv.lin_src.weight.shape == (8, 3)
    assert conv.lin_dst.weight.shape == (8, 6)
    assert str(conv) == "AdaptiveGCNConv((-1, -1), 8, heads=1, similarity=False)"
    assert str(AdaptiveGCNConv((8, 16), 32, similarity=False)) == (
        "AdaptiveGCNConv((8, 16), 32, heads=1, similarity=False)")
    # The paper's parameter count is unchanged by a pair of equal sizes.
    pair = AdaptiveGCNConv((80, 80), 2048)
    assert sum(p.numel() for p in pair.parameters()) == 3 * 80 * 2048 + 3 * 2048


# Heterogeneous graphs ----------------------------------------------------------------------


def hetero_data(g):
    data = HeteroData()
    data["paper"].x = torch.randn(6, 5, generator=g)
    data["author"].x = torch.randn(4, 3, generator=g)
    data["paper", "cites", "paper"].edge_index = torch.tensor(
        [[0, 1, 2, 3, 4, 0, 2], [1, 2, 3, 4, 5, 2, 5]])
    writes = torch.tensor([[0, 1, 1, 2, 3], [0, 0, 2, 3, 5]])
    data["author", "writes", "paper"].edge_index = writes
    data["paper", "rev_writes", "author"].edge_index = writes.flip(0)
    for edge_type in data.edge_types:
        data[edge_type].edge_attr = torch.randn(data[edge_type].num_edges, 2, generator=g)
    return data


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        # Node types have 5 and 3 features: the first layer cannot compare them (eq. 7).
        self.conv1 = AdaptiveGCNConv((-1, -1), 16, similarity=False, add_self_loops=False)
        self.conv2 = AdaptiveGCNConv((-1, -1), 8, add_self_loops=False)

    def forward(self, x, edge_index):
        return self.conv2(F.leaky_relu(self.conv1(x, edge_index), 0.2), edge_index)


def target_scores_cancel(conv, x, edge_index) -> bool:
    """Whether eq. 4's target half s_i drops out of every alpha_ij (so W_d and a_d get no
    gradient): softmax_j LeakyReLU(s_i + t_j) moves with s_i only where row i has two edges
    whose s_i + t_j lie on both sides of 0 (LeakyReLU is linear on each side, and a shift
    of the whole row leaves a softmax unchanged). Float64, from the parameters; one head."""
    x_src, x_dst = x if isinstance(x, tuple) else (x, x)
    with torch.no_grad():
        s = x_dst.double() @ conv.lin_dst.weight.double().t() @ conv.att_dst[0, 0].double()
        t = x_src.double() @ conv.lin_src.weight.double().t() @ conv.att_src[0, 0].double()
        e = s[edge_index[1]] + t[edge_index[0]]
        return not any(bool((e[edge_index[1] == i] > 0).any() and (e[edge_index[1] == i] < 0)
                            .any()) for i in range(x_dst.size(0)))


def test_to_hetero_forward_backward():
    g = torch.Generator().manual_seed(3)
    data = hetero_data(g)
    torch.manual_seed(0)
    model = to_hetero(TwoLayers(), data.metadata(), aggr="sum")
    inputs = {}  # each edge type's conv: its (x, edge_index), for the check below
    hooks = [module.register_forward_pre_hook(lambda m, args, key=key: inputs.setdefault(key, args))
             for key, module in model.named_modules() if isinstance(module, AdaptiveGCNConv)]
    out = model(data.x_dict, data.edge_index_dict)
    for hook in hooks:
        hook.remove()
    assert out["paper"].shape == (6, 8) and out["author"].shape == (4, 8)
    assert all(torch.isfinite(v).all() for v in out.values())
    (out["paper"].square().sum() + out["author"].square().sum()).backward()
    scale = max(p.grad.abs().max() for p in model.parameters())
    vanishing = 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        key, param = name.split(".", 2)[:2], name.split(".", 2)[2]
        conv = model.get_submodule(".".join(key))
        if param not in ("att_dst", "lin_dst.weight"):
            assert p.grad.abs().sum() > 0, name
        elif target_scores_cancel(conv, *inputs[".".join(key)]):
            # W_d and a_d enter only s_i, and eq. 5's softmax is blind to s_i there: the
            # gradient is 0 (the kernels give 0.0, the PyTorch softmax backward ~1e-9 of scale).
            assert p.grad.abs().max() <= 1e-5 * scale, name
            vanishing += 1
        else:
            assert p.grad.abs().max() > 1e-5 * scale, name
    assert 0 < vanishing < 2 * len(inputs)  # both cases met

    # Each edge type got its own lazily built copy: the authors' one reads 5 -> 3 features.
    conv = model.conv1["paper__rev_writes__author"]
    assert conv.lin_src.weight.shape == (16, 5) and conv.lin_dst.weight.shape == (16, 3)
    # 'author' has one incoming edge type: its copy is called bipartite, (x_paper, x_author).
    seen = []
    handle = conv.register_forward_hook(lambda module, args, output: seen.append(output))
    model(data.x_dict, data.edge_index_dict)
    handle.remove()
    edge_index = data["paper", "rev_writes", "author"].edge_index
    torch.testing.assert_close(seen[0], conv((data["paper"].x, data["author"].x), edge_index))


def test_hetero_conv_with_edge_features():
    g = torch.Generator().manual_seed(4)
    data = hetero_data(g)
    torch.manual_seed(0)
    conv = HeteroConv({
        edge_type: AdaptiveGCNConv((-1, -1), 8, similarity=False, add_self_loops=False,
                                   edge_dim=2)
        for edge_type in data.edge_types
    }, aggr="sum")
    out = conv(data.x_dict, data.edge_index_dict, edge_attr_dict=data.edge_attr_dict)
    assert out["paper"].shape == (6, 8) and out["author"].shape == (4, 8)
    sum(v.square().sum() for v in out.values()).backward()
    for name, p in conv.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if "edge" in name:  # eq. 4's edge term is trained
            assert p.grad.abs().sum() > 0, name


# Edge features -----------------------------------------------------------------------------


@pytest.mark.parametrize("edge_fill_value", ["mean", 0.5, "tensor"])
def test_edge_features_match_reference(edge_fill_value):
    g = torch.Generator().manual_seed(5)
    n = 6
    x = torch.randn(n, 4, dtype=torch.float64, generator=g)
    edges = random_edges(n, n, 0.4, g)
    edges = {k: v for k, v in edges.items() if k[0] != k[1]}
    edges[(2, 2)] = 0.3  # an existing self-loop keeps its weight and its features
    edge_index, edge_weight = as_edge_index(edges)
    edge_attr = torch.randn(edge_index.size(1), 3, dtype=torch.float64, generator=g)
    fill = torch.tensor([0.2, -1.0, 0.5], dtype=torch.float64)
    conv = make_conv(4, 3, edge_dim=3,
                     edge_fill_value=fill if edge_fill_value == "tensor" else edge_fill_value)

    attrs = {k: edge_attr[m] for m, k in enumerate(edges)}
    given = dict(attrs)
    for i in range(n):  # the added self-loops: weight fill_value, features edge_fill_value
        if (i, i) in edges:
            continue
        edges[(i, i)] = 1.0
        incoming = [attr for (_, t), attr in given.items() if t == i]
        if edge_fill_value == "mean":
            attrs[(i, i)] = (torch.stack(incoming).mean(0) if incoming
                             else torch.zeros(3, dtype=torch.float64))
        elif edge_fill_value == "tensor":
            attrs[(i, i)] = fill
        else:
            attrs[(i, i)] = torch.full((3,), 0.5, dtype=torch.float64)
    expected, terms = reference(conv, x, x, edges, bipartite=False, attrs=attrs)
    out = conv(x, edge_index, edge_weight, edge_attr=edge_attr)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)

    graphs = conv.graphs(x, edge_index, edge_weight, edge_attr=edge_attr)
    for k in range(graphs.edge_index.size(1)):
        a, b, _ = terms[(int(graphs.edge_index[0, k]), int(graphs.edge_index[1, k]))]
        assert abs(float(graphs.A[k]) - a) < 1e-12 and abs(float(graphs.B[k]) - b) < 1e-9


def test_edge_features_bipartite_match_reference():
    g = torch.Generator().manual_seed(6)
    x_src = torch.randn(5, 4, dtype=torch.float64, generator=g)
    x_dst = torch.randn(4, 2, dtype=torch.float64, generator=g)
    edges = random_edges(5, 4, 0.6, g)
    edge_index, edge_weight = as_edge_index(edges)
    edge_attr = torch.randn(edge_index.size(1), dtype=torch.float64, generator=g)  # [E]
    conv = make_conv((4, 2), 3, similarity=False, add_self_loops=False, edge_dim=1)
    attrs = {k: edge_attr[m].view(1) for m, k in enumerate(edges)}
    expected, _ = reference(conv, x_src, x_dst, edges, bipartite=True, attrs=attrs)
    out = conv((x_src, x_dst), edge_index, edge_weight, edge_attr=edge_attr)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_edge_scores_as_gatconv():
    """With one shared W, eq. 5's alpha is GATConv's attention (edge features included)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(7, 4, generator=g)
    edges = {k: v for k, v in random_edges(7, 7, 0.4, g).items() if k[0] != k[1]}
    edge_index, _ = as_edge_index(edges)
    edge_attr = torch.randn(edge_index.size(1), 3, generator=g)
    conv = AdaptiveGCNConv(4, 5, share_weights=True, edge_dim=3, edge_fill_value="mean")
    gat = GATConv(4, 5, edge_dim=3, fill_value="mean")
    with torch.no_grad():
        gat.lin.weight.copy_(conv.lin_src.weight)
        gat.lin_edge.weight.copy_(conv.lin_edge.weight)
        for name in ("att_src", "att_dst", "att_edge"):
            getattr(gat, name).copy_(getattr(conv, name).view(1, 1, -1))
    _, (gat_index, gat_alpha) = gat(x, edge_index, edge_attr, return_attention_weights=True)
    graphs = conv.graphs(x, edge_index, edge_attr=edge_attr)
    ours = {(int(j), int(i)): float(b)
            for (j, i), b in zip(graphs.edge_index.t(), graphs.B, strict=True)}
    gat_edges = list(zip(gat_index.t().tolist(), gat_alpha.view(-1).tolist(), strict=True))
    assert len(gat_edges) == len(ours)
    row_max = {}
    for (_, i), a in gat_edges:
        row_max[i] = max(row_max.get(i, 0.0), a)
    for (j, i), a in gat_edges:
        expected = a + (row_max[i] if i == j else 0.0)  # eq. 6's self term
        assert abs(ours[(j, i)] - expected) < 1e-5


def test_edge_features_change_scores_and_get_gradients():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 4, generator=g)
    edge_index, edge_weight = as_edge_index(random_edges(6, 6, 0.5, g))
    edge_weight = edge_weight.float()
    edge_attr = torch.randn(edge_index.size(1), 3, generator=g)
    conv = AdaptiveGCNConv(4, 5, edge_dim=3)
    one = conv.graphs(x, edge_index, edge_weight, edge_attr=edge_attr)
    two = conv.graphs(x, edge_index, edge_weight, edge_attr=edge_attr.flip(0))
    assert not torch.allclose(one.B, two.B)  # the scores of eq. 4 moved ...
    torch.testing.assert_close(one.A, two.A)  # ... the fixed graph did not
    out = conv(x, edge_index, edge_weight, edge_attr=edge_attr)
    out.square().sum().backward()
    for name in ("lin_edge.weight", "att_edge"):
        grad = conv.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # Edge features add D * out + out parameters, nothing else.
    assert sum(p.numel() for p in conv.parameters()) == 3 * 4 * 5 + 3 * 5 + 3 * 5 + 5


def test_edge_features_lazy():
    conv = AdaptiveGCNConv(-1, 4, edge_dim=-1)
    x = torch.randn(5, 3)
    out = conv(x, torch.tensor([[0, 1, 2], [1, 2, 3]]), edge_attr=torch.randn(3, 7))
    assert out.shape == (5, 4) and conv.lin_edge.weight.shape == (4, 7)


# Dense batches -----------------------------------------------------------------------------


@pytest.mark.parametrize("out_channels", [8, 2])  # 2: N > 2 * out, the factored cosine term
@pytest.mark.parametrize("attention,similarity,cached",
                         [(True, True, False), (True, False, False), (False, True, False),
                          (True, True, True)])
def test_dense_batch_with_mask_equals_per_graph(out_channels, attention, similarity, cached):
    g = torch.Generator().manual_seed(9)
    sizes, n = [6, 4, 1], 6
    x = torch.randn(3, n, 5, dtype=torch.float64, generator=g)  # padding holds garbage
    adj = torch.rand(3, n, n, dtype=torch.float64, generator=g)
    mask = torch.arange(n) < torch.tensor(sizes).unsqueeze(-1)
    conv = make_conv(5, out_channels, attention=attention, similarity=similarity,
                     cached=cached)
    x.requires_grad_(not cached)

    out, coef = conv(x, adj, mask=mask, return_attention_weights=True)
    assert out.shape == (3, n, out_channels)
    out_plain = conv(x, adj, mask=mask)  # without return_attention_weights: other C path
    torch.testing.assert_close(out_plain, out, rtol=1e-10, atol=1e-10)
    graphs = conv.graphs(x, adj, mask=mask)
    for b, size in enumerate(sizes):
        xb, adjb = x[b, :size].detach(), adj[b, :size, :size]
        expected, expected_coef = conv(xb, adjb, return_attention_weights=True)
        torch.testing.assert_close(out[b, :size], expected, rtol=1e-10, atol=1e-10)
        assert (out[b, size:] == 0).all()  # padded nodes output zeros ...
        torch.testing.assert_close(coef[b, :size, :size], expected_coef, rtol=1e-10, atol=1e-10)
        assert (coef[b, size:] == 0).all() and (coef[b, :, size:] == 0).all()  # ... and no edges
        per_graph = conv.graphs(xb, adjb)
        for name in ("A", "B", "C"):
            batched, single = getattr(graphs, name), getattr(per_graph, name)
            if single is None:
                assert batched is None
                continue
            torch.testing.assert_close(batched[b, :size, :size], single)
            assert (batched[b, size:] == 0).all() and (batched[b, :, size:] == 0).all()
    if not cached:
        out.sum().backward()
        assert (x.grad[~mask] == 0).all()  # padded nodes send nothing
        assert x.grad[mask].abs().sum() > 0


def test_dense_batch_against_reference_and_broadcast():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 5, 4, dtype=torch.float64, generator=g)
    adj = torch.rand(5, 5, dtype=torch.float64, generator=g)  # one adjacency for the batch
    conv = make_conv(4, 3)
    out = conv(x, adj)
    assert out.shape == (2, 5, 3)
    edges = {(j, i): float(adj[i, j]) for i in range(5) for j in range(5)}
    for b in range(2):
        expected, _ = reference(conv, x[b], x[b], edges, bipartite=False)
        torch.testing.assert_close(out[b], expected, rtol=1e-9, atol=1e-9)
    # A batch of adjacencies with shared features broadcasts the same way.
    adjs = torch.stack([adj, adj.t()])
    out2 = conv(x[0], adjs)
    torch.testing.assert_close(out2[1], conv(x[0], adj.t()))
    # A bipartite batch: x_src [B, 5, 4], x_dst [B, 3, 4], adj [B, 3, 5].
    bipartite = make_conv((4, 4), 3, add_self_loops=False)
    x_dst = torch.randn(2, 3, 4, dtype=torch.float64, generator=g)
    adj_b = torch.rand(2, 3, 5, dtype=torch.float64, generator=g)
    out3 = bipartite((x, x_dst), adj_b)
    for b in range(2):
        torch.testing.assert_close(out3[b], bipartite((x[b], x_dst[b]), adj_b[b]))


# SparseTensor (torch-sparse; CI's second step requires it) ------------------------------------


@pytest.mark.sparse
def test_sparse_tensor_equals_edge_index():
    require_torch_sparse()
    from torch_sparse import SparseTensor

    g = torch.Generator().manual_seed(11)
    n = 8
    x = torch.randn(n, 6, dtype=torch.float64, generator=g)
    edge_index, edge_weight = as_edge_index(random_edges(n, n, 0.4, g))
    conv = make_conv(6, 4)
    expected, (ei, coef) = conv(x, edge_index, edge_weight, return_attention_weights=True)
    adj_t = SparseTensor(row=edge_index[1], col=edge_index[0], value=edge_weight,
                         sparse_sizes=(n, n))
    out, sparse_coef = conv(x, adj_t, return_attention_weights=True)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert isinstance(sparse_coef, SparseTensor) and sparse_coef.sparse_sizes() == (n, n)
    dense_coef = torch.zeros(n, n, dtype=torch.float64)
    dense_coef[ei[1], ei[0]] = coef
    torch.testing.assert_close(sparse_coef.to_dense(), dense_coef)

    # Without values every weight is 1, as for an edge_index without edge_weight.
    pattern = SparseTensor(row=edge_index[1], col=edge_index[0], sparse_sizes=(n, n))
    torch.testing.assert_close(conv(x, pattern), conv(x, edge_index), rtol=1e-10, atol=1e-10)
    # The complete graph as a SparseTensor equals the dense path.
    adj = torch.rand(n, n, dtype=torch.float64, generator=g) + 0.05
    torch.testing.assert_close(conv(x, SparseTensor.from_dense(adj)), conv(x, adj),
                               rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"\[N, N\] with N = x.size\(0\) = 8"):
        conv(x, SparseTensor(row=edge_index[1], col=edge_index[0], sparse_sizes=(n, n + 1)))


@pytest.mark.sparse
def test_sparse_tensor_bipartite_and_to_hetero():
    require_torch_sparse()
    from torch_sparse import SparseTensor

    g = torch.Generator().manual_seed(12)
    x_src = torch.randn(6, 4, dtype=torch.float64, generator=g)
    x_dst = torch.randn(3, 4, dtype=torch.float64, generator=g)
    edge_index, edge_weight = as_edge_index(random_edges(6, 3, 0.6, g))
    conv = make_conv((4, 4), 5, add_self_loops=False)
    expected = conv((x_src, x_dst), edge_index, edge_weight)
    adj_t = SparseTensor(row=edge_index[1], col=edge_index[0], value=edge_weight,
                         sparse_sizes=(3, 6))
    torch.testing.assert_close(conv((x_src, x_dst), adj_t), expected, rtol=1e-10, atol=1e-10)
    _, coef = conv((x_src, x_dst), adj_t, return_attention_weights=True)
    assert coef.sparse_sizes() == (3, 6)
    with pytest.raises(ValueError, match=r"\[N_dst, N_src\] = \[3, 6\]"):
        conv((x_src, x_dst), adj_t.t())

    # to_hetero with SparseTensor adjacencies (ToSparseTensor's adj_t), as PyG users run it.
    from torch_geometric.transforms import ToSparseTensor

    data = ToSparseTensor()(hetero_data(torch.Generator().manual_seed(3)))
    torch.manual_seed(0)
    model = to_hetero(TwoLayers(), data.metadata(), aggr="sum")
    out = model(data.x_dict, data.adj_t_dict)
    sum(v.sum() for v in out.values()).backward()
    assert out["paper"].shape == (6, 8) and out["author"].shape == (4, 8)


# Bad input -----------------------------------------------------------------------------------


def _pair(n_src=5, n_dst=3, f_src=4, f_dst=4):
    return torch.randn(n_src, f_src), torch.randn(n_dst, f_dst)


EDGES = torch.tensor([[0, 4], [1, 2]])


@pytest.mark.parametrize(
    "build,call,error,match",
    [
        (dict(in_channels="4"), None, TypeError, "'in_channels' must be an int or a"),
        (dict(in_channels=(4, 4, 4)), None, TypeError, "'in_channels' must be an int or a"),
        (dict(in_channels=(5, 3)), None, ValueError, "pass similarity=False"),
        (dict(in_channels=(5, 3), similarity=False, share_weights=True), None, ValueError,
         "share_weights=True"),
        (dict(edge_dim=2, attention=False), None, ValueError, "'edge_dim' needs attention=True"),
        (dict(add_self_loops=True), lambda: (_pair(), EDGES), ValueError,
         "needs add_self_loops=False"),
        (dict(), lambda: ((torch.randn(5, 4), None), EDGES), ValueError, r"\(x_src, None\)"),
        (dict(), lambda: ((torch.randn(5, 4),) * 3, EDGES), ValueError, "pair"),
        (dict(in_channels=-1), lambda: (_pair(f_dst=2), EDGES), ValueError,
         r"in_channels=\(src, dst\)"),
        (dict(in_channels=(-1, -1)), lambda: (_pair(f_dst=2), EDGES), ValueError,
         "pass similarity=False"),
        (dict(in_channels=(4, 2), similarity=False), lambda: (_pair(f_dst=3), EDGES), ValueError,
         "'x_dst' has 3 features per node but the layer was built for 2"),
        (dict(), lambda: ((torch.randn(5, 4), torch.randn(3, 4).double()), EDGES), TypeError,
         "share dtype"),
        (dict(), lambda: (_pair(), torch.tensor([[0, 5], [1, 2]])), ValueError,
         r"source indices in \[0, 5\], outside \[0, 4\] for x_src"),
        (dict(), lambda: (_pair(), torch.tensor([[0, 1], [1, 3]])), ValueError,
         r"target indices in \[1, 3\], outside \[0, 2\] for x_dst"),
        (dict(), lambda: (_pair(), torch.rand(5, 3).to_sparse()), ValueError,
         r"\[N_dst, N_src\] = \[3, 5\]"),
        (dict(), lambda: (_pair(), torch.rand(5, 3)), ValueError, r"must be \[3, 5\]"),
        (dict(), lambda: (_pair(), torch.rand(3, 5), None, None, None,
                          torch.ones(3, dtype=torch.bool)), ValueError, "homogeneous"),
    ],
)
def test_bad_bipartite_input(build, call, error, match):
    kwargs = dict(in_channels=4, out_channels=2, add_self_loops=False)
    kwargs.update(build)
    with pytest.raises(error, match=match):
        conv = AdaptiveGCNConv(**kwargs)
        conv(*call())


X = torch.randn(5, 4)
EI = torch.tensor([[0, 1, 2], [1, 2, 3]])


@pytest.mark.parametrize(
    "build,kwargs,error,match",
    [
        (dict(), dict(edge_attr=torch.randn(3, 2)), ValueError, "edge_dim=None"),
        (dict(edge_dim=2), dict(edge_attr=torch.randn(3, 5)), ValueError,
         "3 features per edge|5 features per edge"),
        (dict(edge_dim=2), dict(edge_attr=torch.randn(4, 2)), ValueError, "one row per edge"),
        (dict(edge_dim=2), dict(edge_attr=torch.randn(3, 2, 1)), ValueError, r"\[E, edge_dim\]"),
        (dict(edge_dim=2), dict(edge_attr=torch.ones(3, 2, dtype=torch.long)), TypeError,
         "floating-point"),
        (dict(edge_dim=2), dict(edge_index=torch.rand(5, 5), edge_attr=torch.randn(3, 2)),
         ValueError, "'edge_attr' must be None when 'edge_index' is a dense"),
        (dict(edge_dim=2), dict(edge_index=torch.rand(5, 5).to_sparse(),
                                edge_attr=torch.randn(25, 2)),
         ValueError, "'edge_attr' must be None when 'edge_index' is a sparse"),
        (dict(), dict(mask=torch.ones(5, dtype=torch.bool)), ValueError, "needs a dense"),
        (dict(), dict(edge_index=torch.rand(5, 5), mask=torch.ones(4, dtype=torch.bool)),
         ValueError, r"shape \[5\]"),
        (dict(), dict(edge_index=torch.rand(5, 5), mask=torch.ones(5)), ValueError, "bool"),
        (dict(), dict(x=torch.randn(2, 5, 4), edge_index=torch.rand(3, 5, 5)), ValueError,
         "batch sizes differ"),
        (dict(), dict(x=torch.randn(2, 5, 4), edge_index=torch.rand(2, 5, 5),
                      mask=torch.ones(3, 5, dtype=torch.bool)), ValueError,
         r"shape \[2, 5\].*or \[5\]"),  # a [5] mask is shared by the batch, as in DenseGATConv
        (dict(), dict(x=torch.randn(2, 5, 4)), ValueError, "need a dense adjacency"),
        (dict(), dict(x=torch.randn(2, 2, 5, 4), edge_index=torch.rand(5, 5)), ValueError,
         r"\[batch, num_nodes, in_channels\]"),
        (dict(), dict(edge_index=torch.rand(2, 2, 5, 5)), ValueError, r"\[B, 5, 5\]"),
    ],
)
def test_bad_edge_feature_and_batch_input(build, kwargs, error, match):
    conv = AdaptiveGCNConv(4, 2, **build)
    args = dict(x=X, edge_index=EI)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        conv(**args)
