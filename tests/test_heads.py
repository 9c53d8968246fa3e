"""Multi-head AdaptiveGCNConv against a float64 loop over heads, nodes and edges.

The oracle computes F' = ||_h (A + B_h + C) F W_h (or the mean over heads) edge by edge, with
each head's own W_h, W_src,h, W_dst,h and a_h read from the layer's parameters by row blocks
(rows h * C to (h + 1) * C, GATConv's layout) - never from the layer's output.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from agcn_pyg import AdaptiveGCNConv

g = torch.Generator().manual_seed(0)
DTYPE = torch.float64


def leaky(z, slope=0.2):
    return z if z > 0 else slope * z


def cosine(u, v):
    nu, nv = u.norm(), v.norm()
    return (u @ v) / (nu * nv) if nu > 0 and nv > 0 else u.new_zeros(())


def oracle(conv, x_src, x_dst, pairs, bipartite=False, edge_attr=None, coefficients=None):
    """Eq. 3-7 per head by loops. pairs: {(j, i): a_ij}, the edges j -> i (self-loops included
    where they are edges); edge_attr: {(j, i): features}. Differentiable (float64 torch ops).
    A dict passed as coefficients gets a_ij + b_ij,h + c_ij under (j, i, h)."""
    heads, c_out = conv.heads, conv.out_channels
    W = conv.lin.weight.to(DTYPE)
    if conv.attention:
        w_src, w_dst = conv.lin_src.weight.to(DTYPE), conv.lin_dst.weight.to(DTYPE)
        a_src, a_dst = conv.att_src[0].to(DTYPE), conv.att_dst[0].to(DTYPE)
    coefficients = {} if coefficients is None else coefficients
    per_head = []
    for hd in range(heads):
        rows = slice(hd * c_out, (hd + 1) * c_out)
        outs = []
        for i in range(x_dst.size(0)):
            nbrs = [j for (j, t) in pairs if t == i]
            coef = {j: torch.as_tensor(pairs[(j, i)], dtype=DTYPE) for j in nbrs}
            if conv.attention and nbrs:
                e = {}
                for j in nbrs:
                    z = (a_dst[hd] @ (w_dst[rows] @ x_dst[i])
                         + a_src[hd] @ (w_src[rows] @ x_src[j]))  # eq. 4
                    if edge_attr is not None:
                        z = z + conv.att_edge[0, hd].to(DTYPE) @ (
                            conv.lin_edge.weight[rows].to(DTYPE) @ edge_attr[(j, i)])
                    e[j] = leaky(z)
                top_e = max(float(v) for v in e.values())
                z_sum = sum(torch.exp(v - top_e) for v in e.values())
                alpha = {j: torch.exp(e[j] - top_e) / z_sum for j in nbrs}  # eq. 5
                top = max(alpha.values(), key=float)
                for j in nbrs:  # eq. 6: the self-loop also gets the row maximum
                    coef[j] = coef[j] + alpha[j] + (top if (j == i and not bipartite) else 0.0)
            if conv.similarity:
                for j in nbrs:
                    coef[j] = coef[j] + cosine(x_dst[i], x_src[j])  # eq. 7
            out = x_src.new_zeros(c_out)
            for j in nbrs:
                out = out + coef[j] * (W[rows] @ x_src[j])
                coefficients[(j, i, hd)] = float(coef[j])
            outs.append(out)
        per_head.append(torch.stack(outs) if outs else x_dst.new_zeros(0, c_out))
    out = torch.stack(per_head, dim=1)  # [N_dst, H, C]
    out = out.flatten(1) if conv.concat else out.mean(dim=1)
    if conv.res is not None:
        out = out + x_dst @ conv.res.weight.to(DTYPE).t()
    if conv.bias is not None:
        out = out + conv.bias.to(DTYPE)
    return out


def make(in_c=5, out_c=3, heads=3, **kw):
    torch.manual_seed(1)
    conv = AdaptiveGCNConv(in_c, out_c, heads=heads, **kw).to(DTYPE)
    with torch.no_grad():
        if conv.bias is not None:
            conv.bias.normal_()
        if conv.att_src is not None:  # scores of order 1: softmaxes far from uniform
            conv.att_src.mul_(3.0)
            conv.att_dst.mul_(3.0)
    return conv


def random_graph(n, p=0.4):
    """Edges j -> i with weights, some self-loops stored; no duplicates."""
    edges = {}
    for i in range(n):
        for j in range(n):
            if torch.rand((), generator=g) < p:
                edges[(j, i)] = float(torch.rand((), generator=g)) + 0.1
    return edges


def edge_tensors(edges):
    keys = sorted(edges)
    index = torch.tensor(keys, dtype=torch.long).t().reshape(2, -1)
    return index, torch.tensor([edges[k] for k in keys], dtype=DTYPE)


def with_loops(edges, n, fill=1.0):
    out = dict(edges)
    for i in range(n):
        out.setdefault((i, i), fill)
    return out


def dense_pairs(adj, nodes=None):
    """The complete graph: every pair of the nodes is an edge j -> i, a_ij = adj[i, j]."""
    nodes = range(adj.size(0)) if nodes is None else nodes
    return {(j, i): float(adj[i, j]) for i in nodes for j in nodes}


def close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def features(n, f=5):
    x = torch.randn(n, f, dtype=DTYPE, generator=g)
    x[-1] = 0.0  # a zero vector: cos = 0 (eq. 7)
    return x


@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("residual", [False, True])
def test_edge_index_and_torch_sparse(concat, residual):
    n = 6
    x, edges = features(n), random_graph(n)
    index, weight = edge_tensors(edges)
    conv = make(concat=concat, residual=residual)
    want = oracle(conv, x, x, with_loops(edges, n))
    close(conv(x, index, weight), want)
    adj_t = torch.sparse_coo_tensor(index.flip(0), weight, (n, n)).coalesce()
    for form in (adj_t, adj_t.to_sparse_csr(), adj_t.to_sparse_csc()):
        close(conv(x, form), want)
    assert want.shape == (n, 3 * 3 if concat else 3)


def test_attention_weights_and_graphs_per_head():
    n = 6
    x, edges = features(n), random_graph(n)
    index, weight = edge_tensors(edges)
    conv = make()
    _, (ei, alpha) = conv(x, index, weight, return_attention_weights=True)
    graphs = conv.graphs(x, index, weight)
    assert alpha.shape == (ei.size(1), 3) and graphs.B.shape == (ei.size(1), 3)
    assert graphs.A.shape == graphs.C.shape == (ei.size(1),)
    coefficients = {}
    oracle(conv, x, x, with_loops(edges, n), coefficients=coefficients)
    want = torch.tensor([[coefficients[(int(j), int(i), hd)] for hd in range(3)]
                         for j, i in ei.t()], dtype=DTYPE)
    close(alpha, want)
    close(alpha, (graphs.A + graphs.C).unsqueeze(-1) + graphs.B)

    # torch.sparse: GATConv's pair (adj, alpha), adj [N, N, H] in the input's layout.
    dense = torch.zeros(n, n, 3, dtype=DTYPE)
    dense[ei[1], ei[0]] = alpha
    adj_t = torch.sparse_coo_tensor(index.flip(0), weight, (n, n)).coalesce()
    for form in (adj_t, adj_t.to_sparse_csr(), adj_t.to_sparse_csc()):
        _, (adj, values) = conv(x, form, return_attention_weights=True)
        assert adj.layout == form.layout and adj.shape == (n, n, 3)
        close(adj.to_dense(), dense)
        close(values, adj.values())


@pytest.mark.parametrize("concat", [True, False])
def test_dense_complete_graph(concat):
    n = 5
    x = features(n)
    adj = torch.rand(n, n, dtype=DTYPE, generator=g) * (torch.rand(n, n, generator=g) < 0.5)
    conv = make(concat=concat, residual=True)
    want = oracle(conv, x, x, dense_pairs(adj))  # zero entries are edges too
    close(conv(x, adj), want)
    out, coef = conv(x, adj, return_attention_weights=True)
    close(out, want)
    graphs = conv.graphs(x, adj)
    assert coef.shape == graphs.B.shape == (n, n, 3) and graphs.A.shape == (n, n)
    close(coef, (graphs.A + graphs.C).unsqueeze(-1) + graphs.B)
    # The sorted B (no [N, N] softmax) of a large dense graph, per head.
    conv.sorted_min_nodes, conv.sorted_min_ratio = 0, 0.0
    close(conv(x, adj), want)


def test_dense_batch_with_mask():
    n, batch = 4, 2
    x = torch.randn(batch, n, 5, dtype=DTYPE, generator=g)
    adj = torch.rand(batch, n, n, dtype=DTYPE, generator=g)
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    conv = make(concat=False)
    out = conv(x, adj, mask)  # DenseGATConv's positional mask
    for b in range(batch):
        nodes = [i for i in range(n) if mask[b, i]]
        want = oracle(conv, x[b], x[b], dense_pairs(adj[b], nodes))
        close(out[b, nodes], want[nodes])
    assert out[1, 3].abs().sum() == 0
    _, coef = conv(x, adj, mask=mask, return_attention_weights=True)
    assert coef.shape == (batch, n, n, 3)
    assert coef[1, 3].abs().sum() == coef[1, :, 3].abs().sum() == 0


@pytest.mark.parametrize("add_self_loops", [True, False])
def test_masked_dense_complete_false(add_self_loops):
    n = 5
    x = features(n)
    adj = torch.rand(n, n, dtype=DTYPE, generator=g) * (torch.rand(n, n, generator=g) < 0.5)
    conv = make(complete=False, add_self_loops=add_self_loops)
    edges = {(j, i): float(adj[i, j]) for i in range(n) for j in range(n) if adj[i, j] != 0}
    want = oracle(conv, x, x, with_loops(edges, n) if add_self_loops else edges)
    close(conv(x, adj), want)
    close(conv(x, adj, add_loop=not add_self_loops),
          oracle(conv, x, x, edges if add_self_loops else with_loops(edges, n)))


@pytest.mark.parametrize("add_self_loops", [True, False])
def test_complete_sorted_path(add_self_loops):
    n = 7
    x, edges = features(n), random_graph(n, p=0.3)
    index, weight = edge_tensors(edges)
    conv = make(complete=True, add_self_loops=add_self_loops, concat=False)
    conv.dense_max_ratio = 0.0  # the sorted path, not the small-graph dense one
    pairs = {(j, i): edges.get((j, i), 0.0) for i in range(n) for j in range(n)}
    if add_self_loops:
        pairs.update({k: v for k, v in with_loops(edges, n).items() if k[0] == k[1]})
    else:  # a node without a stored self-loop is not its own neighbour
        pairs = {k: v for k, v in pairs.items() if k[0] != k[1] or k in edges}
    want = oracle(conv, x, x, pairs)
    close(conv(x, index, weight), want)
    out, coef = conv(x, index, weight, return_attention_weights=True)
    close(out, want)
    parts = conv.complete_parts(x, index, weight)
    assert parts.s_src.shape == (n, 3) and coef.shape == (n, n, 3)


def test_bipartite_and_edge_features():
    x_src, x_dst = features(6), features(4)
    edges = {(j, i): 1.0 + 0.1 * j for i in range(4) for j in range(6) if (i + j) % 2 == 0}
    index, weight = edge_tensors(edges)
    conv = make(add_self_loops=False, residual=True)
    close(conv((x_src, x_dst), index, weight), oracle(conv, x_src, x_dst, edges, bipartite=True))

    x = features(5)
    edges = random_graph(5)
    index, weight = edge_tensors(edges)
    attr = torch.randn(index.size(1), 2, dtype=DTYPE, generator=g)
    conv = make(edge_dim=2, edge_fill_value=0.5)
    attrs = {k: attr[e] for e, k in enumerate(sorted(edges))}
    for i in range(5):
        attrs.setdefault((i, i), torch.full((2,), 0.5, dtype=DTYPE))
    want = oracle(conv, x, x, with_loops(edges, 5), edge_attr=attrs)
    close(conv(x, index, weight, edge_attr=attr), want)


@pytest.mark.parametrize("path", ["edge", "dense", "complete", "masked"])
def test_gradients_match_the_oracle_and_gradcheck(path):
    n = 4
    x = torch.randn(n, 3, dtype=DTYPE, generator=g).requires_grad_()  # (cos is not smooth at 0)
    edges = with_loops({(0, 1): 0.5, (1, 2): 1.0, (3, 2): 2.0, (2, 0): 0.7, (1, 1): 0.3}, n)
    index, weight = edge_tensors(edges)
    adj = torch.zeros(n, n, dtype=DTYPE)
    adj[index[1], index[0]] = weight
    kw = {"complete": {"complete": True, "masked": False}.get(path)}
    conv = make(3, 2, heads=2, concat=path != "dense", residual=True, **kw)
    conv.dense_max_ratio = 0.0
    graph = (index, weight) if path in ("edge", "complete") else (adj,)
    pairs = dense_pairs(adj) if path == "dense" else (
        {(j, i): edges.get((j, i), 0.0) for i in range(n) for j in range(n)}
        if path == "complete" else edges)  # fmt: skip
    params = [x] + [p for p in conv.parameters()]
    got = torch.autograd.grad(conv(x, *graph).square().sum(), params)
    want = torch.autograd.grad(oracle(conv, x, x, pairs).square().sum(), params)
    for a, b in zip(got, want, strict=True):
        close(a, b, 1e-9)
    assert torch.autograd.gradcheck(lambda v: conv(v, *graph), (x,))


def test_heads_one_is_the_single_head_formula():
    # heads=1 is ML-AGCN's layer: the loop above with one head, to 1e-12, on every path.
    n = 6
    x, edges = features(n), random_graph(n)
    index, weight = edge_tensors(edges)
    adj = torch.zeros(n, n, dtype=DTYPE)
    adj[index[1], index[0]] = weight
    conv = make(heads=1)
    close(conv(x, index, weight), oracle(conv, x, x, with_loops(edges, n)), 1e-12)
    close(conv(x, adj), oracle(conv, x, x, dense_pairs(adj)), 1e-12)
    conv.sorted_min_nodes, conv.sorted_min_ratio = 0, 0.0
    close(conv(x, adj), oracle(conv, x, x, dense_pairs(adj)), 1e-12)
    conv.complete, conv.dense_max_ratio = True, 0.0
    complete = {(j, i): edges.get((j, i), 0.0) for i in range(n) for j in range(n)}
    complete.update({k: v for k, v in with_loops(edges, n).items() if k[0] == k[1]})
    close(conv(x, index, weight), oracle(conv, x, x, complete), 1e-12)
    conv.complete = False
    close(conv(x, adj), oracle(conv, x, x, with_loops(edges, n)), 1e-12)
    # ... with the single-head shapes: no head dimension.
    conv.complete = None
    _, (ei, alpha) = conv(x, index, weight, return_attention_weights=True)
    _, coef = conv(x, adj, return_attention_weights=True)
    assert alpha.shape == (ei.size(1),) and coef.shape == (n, n)
    assert conv.graphs(x, index, weight).B.shape == (ei.size(1),)


def test_heads_one_parameters_and_old_state_dict():
    conv = AdaptiveGCNConv(80, 2048)  # the paper's counts (REFERENCES.md)
    assert sum(p.numel() for p in conv.parameters()) == 3 * 80 * 2048 + 3 * 2048
    assert conv.att_src.shape == (1, 1, 2048)
    four = AdaptiveGCNConv(8, 4, heads=4, concat=False, residual=True, edge_dim=2)
    assert four.lin.weight.shape == four.lin_src.weight.shape == (16, 8)
    assert four.lin_edge.weight.shape == (16, 2)
    assert four.att_src.shape == four.att_edge.shape == (1, 4, 4)
    assert four.bias.shape == (4,) and four.res.weight.shape == (4, 8)
    assert str(four) == "AdaptiveGCNConv(8, 4, heads=4)"
    # A file from before heads existed holds att_* as [1, C].
    small = AdaptiveGCNConv(3, 2)
    state = {k: (v.squeeze(1) if k.startswith("att_") else v)
             for k, v in small.state_dict().items()}
    fresh = AdaptiveGCNConv(3, 2)
    fresh.load_state_dict(state)
    close(fresh.att_src.data, small.att_src.data, 0.0)


def test_lazy_heads_and_bad_heads():
    conv = AdaptiveGCNConv(-1, 3, heads=2, residual=True)
    x = torch.randn(4, 6)
    assert conv(x, torch.tensor([[0, 1], [1, 2]])).shape == (4, 6)
    assert conv.lin_dst.weight.shape == (6, 6) and conv.res.weight.shape == (6, 6)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="'heads' must be a positive int"):
            AdaptiveGCNConv(4, 3, heads=bad)


def test_edge_dim_without_edge_attr_is_refused():
    x = torch.randn(4, 8)
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 0, 1, 1]])
    conv = AdaptiveGCNConv(8, 4, heads=2, edge_dim=1)
    with pytest.raises(ValueError, match="edge_dim=1.*no 'edge_attr' arrived.*third positional "
                                         "argument is 'edge_weight'.*edge_attr=edge_attr"):
        conv(x, edge_index, torch.rand(4))
    with pytest.raises(ValueError, match="no 'edge_attr' arrived"):
        conv(x, edge_index)
    assert conv(x, edge_index, edge_attr=torch.rand(4)).shape == (4, 8)


def test_call_conventions_are_checked():
    x, edge_index = torch.randn(4, 8), torch.tensor([[0, 1, 2, 3], [0, 0, 1, 1]])
    conv = AdaptiveGCNConv(8, 4, heads=2)
    with pytest.raises(ValueError, match=r"'size' = \(4, 3\) does not match"):
        conv(x, edge_index, size=(4, 3))
    with pytest.raises(TypeError, match="4th positional.*'size' and 'add_loop' by keyword"):
        conv(x, edge_index, None, (4, 4))
    with pytest.raises(ValueError, match="add_loop=False.*complete=False"):
        conv(torch.randn(3, 8), torch.ones(3, 3), add_loop=False)
    with pytest.raises(ValueError, match="'add_loop' is DenseGATConv's switch"):
        conv(x, edge_index, add_loop=True)
    mask = torch.ones(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="pass the mask once"):
        conv(torch.randn(3, 8), torch.ones(3, 3), mask, mask=mask)


def test_torchscript_is_refused_in_one_line():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = AdaptiveGCNConv(4, 2, heads=2)

        def forward(self, x, edge_index):
            return self.conv(x, edge_index)

    for module in (AdaptiveGCNConv(4, 2), Net()):
        with pytest.raises(RuntimeError, match=r"^AdaptiveGCNConv does not support TorchScript .*"
                                               r"torch\.compile.*torch\.export") as info:
            torch.jit.script(module)
        assert "\n" not in str(info.value)


def test_two_head_layers_train_and_explain():
    # A small GAT-style model: heads concatenated, then one averaged output head.
    from torch_geometric.explain import Explainer
    from torch_geometric.explain.algorithm import AttentionExplainer

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = AdaptiveGCNConv(4, 8, heads=4)
            self.conv2 = AdaptiveGCNConv(32, 3, heads=2, concat=False)

        def forward(self, x, edge_index):
            return self.conv2(F.elu(self.conv1(x, edge_index)), edge_index)

    x = torch.randn(6, 4)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
    model = Net()
    model(x, edge_index).sum().backward()
    for p in model.parameters():
        assert p.grad is not None and math.isfinite(float(p.grad.norm()))
    config = dict(mode="multiclass_classification", task_level="node", return_type="raw")
    explainer = Explainer(model, AttentionExplainer(), explanation_type="model",
                          edge_mask_type="object", model_config=config)
    mask = explainer(x, edge_index, index=1).edge_mask
    assert mask.shape == (6,) and bool((mask >= 0).all())
