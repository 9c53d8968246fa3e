"""AdaptiveGCNConv against a plain float64 computation of the paper's equations 3-7."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GCNConv
from torch_geometric.typing import WITH_TORCH_SPARSE

from agcn_pyg import AdaptiveGCNConv

# ---------------------------------------------------------------------------------------
# The reference: equations 3-7 written out with loops over nodes, independent of the layer.
# ---------------------------------------------------------------------------------------


def leaky(v, slope=0.2):
    return v if v >= 0 else slope * v


def reference(conv, x, edges, attention=True, similarity=True):
    """`edges` maps (j, i) -> a_ij for every edge j -> i. Returns (out, {(j, i): (a, b, c)})."""
    x = x.double()
    n = x.size(0)
    W = conv.lin.weight.double()
    h = x @ W.t()
    terms = {}
    for i in range(n):
        nbrs = [j for (j, t) in edges if t == i]
        b = {j: 0.0 for j in nbrs}
        if attention and nbrs:
            wd, ws = conv.lin_dst.weight.double(), conv.lin_src.weight.double()
            ad, as_ = conv.att_dst.double().view(-1), conv.att_src.double().view(-1)
            e = {j: leaky(float(ad @ (wd @ x[i]) + as_ @ (ws @ x[j]))) for j in nbrs}  # eq. 4
            z = sum(math.exp(v) for v in e.values())
            alpha = {j: math.exp(v) / z for j, v in e.items()}  # eq. 5
            for j in nbrs:  # eq. 6
                b[j] = alpha[j] + (max(alpha.values()) if j == i else 0.0)
        for j in nbrs:
            c = 0.0
            if similarity:  # eq. 7
                ni, nj = float(x[i].norm()), float(x[j].norm())
                c = float(x[i] @ x[j]) / (ni * nj) if ni > 0 and nj > 0 else 0.0
            terms[(j, i)] = (edges[(j, i)], b[j], c)
    out = torch.zeros(n, W.size(0), dtype=torch.float64)
    for (j, i), (a, b, c) in terms.items():
        out[i] += (a + b + c) * h[j]  # eq. 3
    if conv.bias is not None:
        out += conv.bias.double()
    return out, terms


def random_graph(n, p, self_loops, generator):
    """A random directed graph with duplicate-free edges, random weights, isolated nodes."""
    edges = {}
    for i in range(n):
        for j in range(n):
            if (i == j and not self_loops) or (i != j and torch.rand(1, generator=generator) > p):
                continue
            edges[(j, i)] = float(torch.rand(1, generator=generator)) + 0.1
    isolated = n - 1  # no edges in or out of the last node
    return {k: v for k, v in edges.items() if isolated not in k}


def to_edge_index(edges):
    keys = sorted(edges, key=lambda k: (k[1], k[0]))
    edge_index = torch.tensor(keys, dtype=torch.long).t().reshape(2, -1)
    return edge_index, torch.tensor([edges[k] for k in keys], dtype=torch.float64)


def with_self_loops(edges, n, fill=1.0):
    out = dict(edges)
    for i in range(n):
        out.setdefault((i, i), fill)
    return out


def complete(adj):
    n = adj.size(0)
    return {(j, i): float(adj[i, j]) for i in range(n) for j in range(n)}


def make_conv(in_c, out_c, **kw):
    torch.manual_seed(0)
    conv = AdaptiveGCNConv(in_c, out_c, **kw).double()
    with torch.no_grad():  # non-zero bias and attention so that every term is exercised
        if conv.bias is not None:
            conv.bias.normal_()
    return conv


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_self_loops", [False, True])
@pytest.mark.parametrize("add_self_loops", [False, True])
@pytest.mark.parametrize("attention,similarity", [(True, True), (True, False), (False, True)])
def test_edge_index_matches_reference(input_self_loops, add_self_loops, attention, similarity):
    g = torch.Generator().manual_seed(1)
    n = 7
    x = torch.randn(n, 5, dtype=torch.float64, generator=g)
    x[2] = 0.0  # a zero feature vector: cosine 0, not NaN
    edges = random_graph(n, 0.4, input_self_loops, g)
    conv = make_conv(5, 4, attention=attention, similarity=similarity,
                     add_self_loops=add_self_loops)
    edge_index, edge_weight = to_edge_index(edges)
    out = conv(x, edge_index, edge_weight)

    ref_edges = with_self_loops(edges, n) if add_self_loops else edges
    expected, _ = reference(conv, x, ref_edges, attention, similarity)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("attention,similarity", [(True, True), (True, False), (False, True),
                                                  (False, False)])
@pytest.mark.parametrize("out_channels", [6, 2])  # 2: N > 2 * out takes the factored C path
def test_dense_matches_reference(attention, similarity, out_channels):
    g = torch.Generator().manual_seed(2)
    n = 8
    x = torch.randn(n, 5, dtype=torch.float64, generator=g)
    x[3] = 0.0
    adj = torch.rand(n, n, dtype=torch.float64, generator=g)
    adj[0, 5] = 0.0  # a zero-weight pair is still an edge of the complete graph
    conv = make_conv(5, out_channels, attention=attention, similarity=similarity)
    out = conv(x, adj)
    expected, _ = reference(conv, x, complete(adj), attention, similarity)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_all_input_forms_agree_float32():
    g = torch.Generator().manual_seed(3)
    n = 10
    x = torch.randn(n, 16, generator=g)
    adj = torch.rand(n, n, generator=g) + 0.05  # complete graph, all weights non-zero
    conv = AdaptiveGCNConv(16, 12)
    dense = conv(x, adj)

    rows, cols = adj.nonzero().t()  # adj[i, j] = weight of j -> i
    edge_index = torch.stack([cols, rows])
    perm = torch.randperm(edge_index.size(1), generator=g)  # edge order must not matter
    forms = {
        "edge_index": conv(x, edge_index[:, perm], adj[rows, cols][perm]),
        "coo": conv(x, adj.to_sparse()),
        "csr": conv(x, adj.to_sparse_csr()),
        "csc": conv(x, adj.to_sparse_csc()),
    }
    if WITH_TORCH_SPARSE:
        from torch_sparse import SparseTensor

        forms["SparseTensor"] = conv(x, SparseTensor.from_dense(adj))
    for name, out in forms.items():
        torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5, msg=name)


def test_sparse_forms_match_edge_index_on_sparse_graph():
    g = torch.Generator().manual_seed(4)
    n = 9
    edges = random_graph(n, 0.3, False, g)
    edge_index, edge_weight = to_edge_index(edges)
    x = torch.randn(n, 6, generator=g)
    conv = AdaptiveGCNConv(6, 4)
    expected = conv(x, edge_index, edge_weight.float())
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), edge_weight.float(), (n, n))
    torch.testing.assert_close(conv(x, adj_t), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv(x, adj_t.to_sparse_csr()), expected, rtol=1e-5, atol=1e-5)


def test_return_attention_weights_and_graphs():
    g = torch.Generator().manual_seed(5)
    n = 6
    x = torch.randn(n, 4, dtype=torch.float64, generator=g)
    edges = random_graph(n, 0.5, False, g)
    conv = make_conv(4, 3)
    edge_index, edge_weight = to_edge_index(edges)
    _, terms = reference(conv, x, with_self_loops(edges, n))

    out, (ei, alpha) = conv(x, edge_index, edge_weight, return_attention_weights=True)
    assert ei.size(1) == len(terms) == alpha.numel()
    for k in range(ei.size(1)):
        a, b, c = terms[(int(ei[0, k]), int(ei[1, k]))]
        assert abs(float(alpha[k]) - (a + b + c)) < 1e-10
    assert (ei[0, -n + 1:] == ei[1, -n + 1:]).all()  # added self-loops come last

    graphs = conv.graphs(x, edge_index, edge_weight)
    for k in range(graphs.edge_index.size(1)):
        a, b, c = terms[(int(graphs.edge_index[0, k]), int(graphs.edge_index[1, k]))]
        assert abs(float(graphs.A[k]) - a) < 1e-10
        assert abs(float(graphs.B[k]) - b) < 1e-10
        assert abs(float(graphs.C[k]) - c) < 1e-10
    # B without its eq. 6 self term is a softmax: in [0, 1].
    assert graphs.B.min() >= 0 and graphs.B.max() <= 2

    # The sparse input gets a sparse matrix back, in its layout.
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), edge_weight, (n, n))
    _, (sp, values) = conv(x, adj_t.to_sparse_csr(), return_attention_weights=True)
    assert sp.layout == torch.sparse_csr  # GATConv's pair (adj, alpha)
    torch.testing.assert_close(values, sp.values())
    dense_alpha = sp.to_dense()
    for (j, i), (a, b, c) in terms.items():
        assert abs(float(dense_alpha[i, j]) - (a + b + c)) < 1e-10


def test_dense_attention_weights_and_graphs():
    g = torch.Generator().manual_seed(6)
    n = 5
    x = torch.randn(n, 4, dtype=torch.float64, generator=g)
    adj = torch.rand(n, n, dtype=torch.float64, generator=g)
    conv = make_conv(4, 1)  # out=1: forward alone would take the factored C path
    _, terms = reference(conv, x, complete(adj))
    _, coef = conv(x, adj, return_attention_weights=True)
    graphs = conv.graphs(x, adj)
    for (j, i), (a, b, c) in terms.items():
        assert abs(float(coef[i, j]) - (a + b + c)) < 1e-10
        assert abs(float(graphs.A[i, j]) - a) < 1e-12
        assert abs(float(graphs.B[i, j]) - b) < 1e-10
        assert abs(float(graphs.C[i, j]) - c) < 1e-10
    assert graphs.edge_index is None


def test_gradcheck():
    g = torch.Generator().manual_seed(7)
    n = 5
    conv = make_conv(3, 2)
    x = torch.randn(n, 3, dtype=torch.float64, generator=g, requires_grad=True)
    adj = torch.rand(n, n, dtype=torch.float64, generator=g, requires_grad=True)
    edge_index, edge_weight = to_edge_index(random_graph(n, 0.6, False, g))
    edge_weight.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, a: conv(x, a), (x, adj))
    assert torch.autograd.gradcheck(lambda x, w: conv(x, edge_index, w), (x, edge_weight))
    # and through every parameter
    out = conv(x, adj).sum() + conv(x, edge_index, edge_weight).sum()
    out.backward()
    for name, p in conv.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_permutation_equivariance():
    g = torch.Generator().manual_seed(8)
    n = 7
    x = torch.randn(n, 4, generator=g)
    adj = torch.rand(n, n, generator=g)
    perm = torch.randperm(n, generator=g)
    conv = AdaptiveGCNConv(4, 3)
    torch.testing.assert_close(conv(x[perm], adj[perm][:, perm]), conv(x, adj)[perm])
    edge_index, edge_weight = to_edge_index(random_graph(n, 0.4, False, g))
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    torch.testing.assert_close(
        conv(x[perm], inv[edge_index], edge_weight.float()),
        conv(x, edge_index, edge_weight.float())[perm],
    )


def test_ablation_without_attention_and_similarity_is_weighted_gcn():
    g = torch.Generator().manual_seed(9)
    n = 8
    x = torch.randn(n, 5, generator=g)
    edge_index, edge_weight = to_edge_index(random_graph(n, 0.5, True, g))
    edge_weight = edge_weight.float()
    conv = AdaptiveGCNConv(5, 3, attention=False, similarity=False, add_self_loops=False)
    gcn = GCNConv(5, 3, normalize=False, add_self_loops=False)
    with torch.no_grad():
        conv.bias.normal_()
        gcn.lin.weight.copy_(conv.lin.weight)
        gcn.bias.copy_(conv.bias)
    torch.testing.assert_close(conv(x, edge_index, edge_weight), gcn(x, edge_index, edge_weight))
    assert str(conv) == "AdaptiveGCNConv(5, 3, heads=1, attention=False, similarity=False)"


def test_parameters_reproduce_paper_counts():
    # Three in x out matrices, two attention vectors and a bias (REFERENCES.md).
    conv = AdaptiveGCNConv(80, 2048)
    assert sum(p.numel() for p in conv.parameters()) == 3 * 80 * 2048 + 3 * 2048
    shared = AdaptiveGCNConv(80, 2048, share_weights=True)
    assert shared.lin_src is shared.lin_dst
    assert sum(p.numel() for p in shared.parameters()) == 2 * 80 * 2048 + 3 * 2048
    no_att = AdaptiveGCNConv(80, 2048, attention=False, bias=False)
    assert sum(p.numel() for p in no_att.parameters()) == 80 * 2048
    assert str(conv) == "AdaptiveGCNConv(80, 2048, heads=1)"


def test_cached_similarity_matches_and_follows_its_input():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(6, 4, generator=g)
    adj = torch.rand(6, 6, generator=g)
    conv = AdaptiveGCNConv(4, 8, cached=True)  # N <= 2 * out: the uncached path forms C too
    plain = AdaptiveGCNConv(4, 8)
    plain.load_state_dict(conv.state_dict())
    torch.testing.assert_close(conv(x, adj), plain(x, adj))
    assert conv._cached_similarity is not None
    x.mul_(-1.0).add_(0.5)  # changed in place: the cache must not be reused
    torch.testing.assert_close(conv(x, adj), plain(x, adj))
    x2 = x.clone().requires_grad_()  # gradients flow through C: no cache
    conv(x2, adj).sum().backward()
    assert x2.grad is not None and x2.grad.abs().sum() > 0
    for _ in range(20):  # fresh inputs, often at the address a freed one had
        x3 = torch.randn(6, 4)
        torch.testing.assert_close(conv(x3, adj), plain(x3, adj))
    wide = AdaptiveGCNConv(4, 2, cached=True)  # N > 2 * out: uncached takes the factored path
    wide_plain = AdaptiveGCNConv(4, 2)
    wide_plain.load_state_dict(wide.state_dict())
    torch.testing.assert_close(wide(x, adj), wide_plain(x, adj))


def test_share_weights_matches_reference():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(6, 4, dtype=torch.float64, generator=g)
    adj = torch.rand(6, 6, dtype=torch.float64, generator=g)
    conv = make_conv(4, 3, share_weights=True)
    expected, _ = reference(conv, x, complete(adj))
    torch.testing.assert_close(conv(x, adj), expected)


def test_lazy_init_and_reset_parameters():
    conv = AdaptiveGCNConv(-1, 8)
    x = torch.randn(5, 3)
    out = conv(x, torch.rand(5, 5))
    assert out.shape == (5, 8)
    assert conv.lin_src.weight.shape == conv.lin_dst.weight.shape == (8, 3)
    with torch.no_grad():
        conv.bias.fill_(1.0)
    before = {name: p.detach().clone() for name, p in conv.named_parameters()}
    conv.reset_parameters()
    for name, p in conv.named_parameters():
        assert not torch.equal(before[name], p), name
    assert conv.bias.abs().sum() == 0
    with pytest.raises(ValueError, match="3"):
        conv(torch.randn(5, 4), torch.rand(5, 5))


def test_empty_graph_and_isolated_nodes():
    x = torch.randn(4, 3, dtype=torch.float64)
    x[1] = 0.0
    empty = torch.empty(2, 0, dtype=torch.long)
    conv = make_conv(3, 2)
    h = x @ conv.lin.weight.t()
    # With self-loops: (a_ii + alpha_ii + max_k alpha_ik + c_ii) h_i + bias = (1 + 2 + c_ii) h_i.
    c = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    expected = (3.0 + c).unsqueeze(-1) * h + conv.bias
    torch.testing.assert_close(conv(x, empty), expected)
    no_loops = make_conv(3, 2, add_self_loops=False)
    torch.testing.assert_close(no_loops(x, empty), no_loops.bias.expand(4, 2))


def test_autocast_bf16_is_finite():
    x, adj = torch.randn(20, 16), torch.rand(20, 20)
    edge_index = adj.nonzero().t()
    conv = AdaptiveGCNConv(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(conv(x, adj)).all()
        assert torch.isfinite(conv(x, edge_index)).all()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_matches_cpu_and_autocast(dtype):
    x, adj = torch.randn(50, 16), torch.rand(50, 50)
    conv = AdaptiveGCNConv(16, 8)
    expected = conv(x, adj)
    edge_index = adj.nonzero().t().flip(0)  # the complete graph, adj[i, j] = w(j -> i)
    expected_edges = conv(x, edge_index, adj[edge_index[1], edge_index[0]])
    conv_cuda = conv.cuda()
    torch.testing.assert_close(conv_cuda(x.cuda(), adj.cuda()).cpu(), expected,
                               rtol=1e-4, atol=1e-4)
    out = conv_cuda(x.cuda(), edge_index.cuda(), adj[edge_index[1], edge_index[0]].cuda())
    torch.testing.assert_close(out.cpu(), expected_edges, rtol=1e-4, atol=1e-4)
    with torch.autocast("cuda", dtype=dtype):
        assert torch.isfinite(conv_cuda(x.cuda(), adj.cuda())).all()
        assert torch.isfinite(conv_cuda(x.cuda(), adj.nonzero().t().cuda())).all()


def test_dropout_only_in_training():
    x, adj = torch.randn(6, 4), torch.rand(6, 6)
    conv = AdaptiveGCNConv(4, 3, dropout=0.5)
    conv.eval()
    torch.testing.assert_close(conv(x, adj), conv(x, adj))
    conv.train()
    torch.manual_seed(0)
    a = conv(x, adj)
    torch.manual_seed(1)
    assert not torch.allclose(a, conv(x, adj))
    assert conv(x, adj.nonzero().t()).shape == (6, 3)


# Bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda x: (x[0], torch.rand(5, 5)), ValueError, r"'x' must be \[num_nodes, in_channels\]"),
        (lambda x: (x, torch.zeros(3, 4, dtype=torch.long)), ValueError, r"\[2, E\]"),
        (lambda x: (x, torch.zeros(2, 4, dtype=torch.bool)), TypeError, "integer"),
        (lambda x: (x, torch.tensor([[0, -1], [1, 2]])), ValueError, "outside"),
        (lambda x: (x, torch.tensor([[0, 5], [1, 2]])), ValueError, "outside"),
        (lambda x: (x, torch.tensor([[0, 1], [1, 2]]), torch.ones(3)), ValueError, "edge_weight"),
        (lambda x: (x, torch.rand(4, 4)), ValueError, r"\[N, N\] with N = x.size\(-2\) = 5"),
        (lambda x: (x, torch.rand(5, 5), torch.ones(25)), ValueError, "edge_weight"),
        (lambda x: (x, torch.rand(4, 4).to_sparse()), ValueError, "sparse adjacency"),
        (lambda x: (x.long(), torch.rand(5, 5)), TypeError, "floating-point"),
        (lambda x: (x[:, :2], torch.rand(5, 5)), ValueError, "built for 3"),
        (lambda x: (x, [[0, 1], [1, 0]]), TypeError, "edge_index"),
    ],
)
def test_bad_input(make, error, match):
    conv = AdaptiveGCNConv(3, 2)
    with pytest.raises(error, match=match):
        conv(*make(torch.randn(5, 3)))


# PyG integration ---------------------------------------------------------------------------


def test_attention_explainer():
    from torch_geometric.explain import AttentionExplainer, Explainer

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = AdaptiveGCNConv(4, 8)
            self.conv2 = AdaptiveGCNConv(8, 3)

        def forward(self, x, edge_index):
            return self.conv2(F.relu(self.conv1(x, edge_index)), edge_index)

    g = torch.Generator().manual_seed(11)
    x = torch.randn(8, 4, generator=g)
    edge_index, _ = to_edge_index(random_graph(8, 0.4, False, g))
    explainer = Explainer(
        Net(), algorithm=AttentionExplainer(), explanation_type="model",
        edge_mask_type="object",
        model_config=dict(mode="multiclass_classification", task_level="node",
                          return_type="raw"),
    )
    explanation = explainer(x, edge_index)
    mask = explanation.edge_mask
    assert mask.shape == (edge_index.size(1),)
    assert torch.isfinite(mask).all() and mask.abs().sum() > 0


@pytest.mark.slow
def test_compile_no_graph_breaks_and_matches_eager():
    import torch._dynamo

    x, adj = torch.randn(12, 8), torch.rand(12, 12)
    edge_index = adj.nonzero().t()
    conv = AdaptiveGCNConv(8, 4, add_self_loops=False)
    for args in [(x, adj), (x, edge_index)]:
        explanation = torch._dynamo.explain(conv)(*args)
        assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(conv)
    torch.testing.assert_close(compiled(x, adj), conv(x, adj), rtol=1e-5, atol=1e-5)
    # Compiled, the cosine term takes the gather fallback instead of eager's SDDMM.
    torch.testing.assert_close(compiled(x, edge_index), conv(x, edge_index), rtol=1e-5,
                               atol=1e-5)
