"""The complete graph in O(N log N): the sorted attention (agcn_pyg.nn.complete) and
AdaptiveGCNConv(complete=...) against eq. 3-7 written as dense [N, N] matrices in float64."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor

from agcn_pyg import AdaptiveGCNConv, MultiLabelHead, create_model
from agcn_pyg.nn.complete import complete_attention


def dense_attention(h, s_dst, s_src, slope=0.2, has_loop=None):
    """B h over the complete graph, eq. 4-6 as matrices: B[i, j] = alpha_ij + [i = j] max_k
    alpha_ik, the softmax over j != i where node i has no self-loop."""
    n = h.size(0)
    e = F.leaky_relu(s_dst[:, None] + s_src[None, :], slope)  # eq. 4
    eye = torch.eye(n, dtype=torch.bool)
    if has_loop is not None:
        e = e.masked_fill(eye & ~has_loop[:, None], float("-inf"))
    alpha = torch.softmax(e, dim=-1)  # eq. 5
    top = alpha.amax(dim=-1)  # eq. 6
    if has_loop is not None:
        top = top * has_loop
    return alpha @ h + top[:, None] * h


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def inputs(n, f, scale=1.0, ties=False, zeros=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    if ties:  # duplicate feature rows, the largest score among them
        top = (x @ torch.ones(6, dtype=torch.float64)).argmax()
        x[::3] = x[top]
    if zeros:
        x[1::5] = 0.0
    h = x @ torch.randn(6, f, generator=g, dtype=torch.float64)
    s_dst = scale * x @ torch.randn(6, generator=g, dtype=torch.float64)
    s_src = scale * x @ torch.ones(6, dtype=torch.float64) / 2
    return [v.requires_grad_() for v in (h, s_dst, s_src)]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("loops", ["all", "some", "none"])
@pytest.mark.parametrize("slope", [0.2, 1.0])
def test_matches_dense_softmax(ties, zeros, loops, slope):
    h, s_dst, s_src = inputs(41, 5, ties=ties, zeros=zeros)
    has_loop = None
    if loops != "all":
        g = torch.Generator().manual_seed(1)
        has_loop = (
            torch.rand(41, generator=g) > 0.5
            if loops == "some"
            else torch.zeros(41, dtype=torch.bool)
        )
        has_loop[s_src.argmax()] = False  # the row that loses its maximum without the loop
    out = complete_attention(h, s_dst, s_src, slope, has_loop)
    ref = dense_attention(h, s_dst, s_src, slope, has_loop)
    assert out.dtype == torch.float64
    assert rel(out, ref) < 1e-12
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, (h, s_dst, s_src), grad)
    want = torch.autograd.grad(ref, (h, s_dst, s_src), grad)
    # Each gradient to 1e-9 of its norm, or of the whole gradient's where the true value is 0
    # (slope 1: every score is linear, so the gradient of s vanishes; the dense path's is noise).
    scale = torch.cat([b.flatten() for b in want]).norm()
    for a, b in zip(got, want, strict=True):
        assert (a - b).norm() <= 1e-9 * max(b.norm(), 1e-3 * scale)


@pytest.mark.parametrize("loops", [False, True])
def test_scores_of_100(loops):
    """Scores of +-100: exp(e) spans 1e-87..1e87 in a row. The output matches; the gradients
    of s and t are ~1e-40 here (every row is one-hot), so they are compared with the
    gradient of h, as one gradient vector."""
    h, s_dst, s_src = inputs(40, 4, scale=60.0, seed=2)
    assert s_dst.abs().max() > 100 and s_src.abs().max() > 100
    has_loop = torch.arange(40) % 3 > 0 if loops else None
    out = complete_attention(h, s_dst, s_src, 0.2, has_loop)
    ref = dense_attention(h, s_dst, s_src, 0.2, has_loop)
    assert torch.isfinite(out).all() and rel(out, ref) < 1e-12
    grad = torch.randn_like(ref)
    got = torch.cat([g.flatten() for g in torch.autograd.grad(out, (h, s_dst, s_src), grad)])
    want = torch.cat([g.flatten() for g in torch.autograd.grad(ref, (h, s_dst, s_src), grad)])
    assert rel(got, want) < 1e-12


def test_column_blocks_and_recomputed_backward(monkeypatch):
    """Large h is summed in column blocks, its backward recomputes the forward's parts instead
    of keeping them, and on a GPU the scans run in blocks of rows: the same numbers (here
    forced at a small size on the CPU)."""
    import agcn_pyg.nn.complete as complete

    monkeypatch.setattr(complete, "_BLOCK_ENTRIES", 41 * 2)  # blocks of 2 columns
    monkeypatch.setattr(complete, "_RECOMPUTE_ENTRIES", 10)
    # and the GPU's blocked scan over rows (blocks of 8 of the 42 rows)
    monkeypatch.setattr(complete, "_scan_block", lambda rows, device: 8)
    for has_loop in (None, torch.arange(41) % 3 > 0):
        h, s_dst, s_src = inputs(41, 5, ties=True, zeros=True)
        out = complete_attention(h, s_dst, s_src, 0.2, has_loop)
        ref = dense_attention(h, s_dst, s_src, 0.2, has_loop)
        assert rel(out, ref) < 1e-12
        grad = torch.randn_like(ref)
        got = torch.autograd.grad(out, (h, s_dst, s_src), grad)
        want = torch.autograd.grad(ref, (h, s_dst, s_src), grad)
        for a, b in zip(got, want, strict=True):
            assert rel(a, b) < 1e-9


def test_unit_rows_equal_normalize():
    from agcn_pyg.nn.complete import unit_rows

    x = torch.randn(20, 5, dtype=torch.float64)
    x[3], x[7] = 0.0, 1e-14  # a zero row and one below eps: cos = 0, as F.normalize does
    x.requires_grad_()
    grad = torch.randn(20, 5, dtype=torch.float64)
    out, want = unit_rows(x), F.normalize(x, dim=-1)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    got = torch.autograd.grad(out, x, grad)[0]
    torch.testing.assert_close(got, torch.autograd.grad(want, x, grad)[0], rtol=1e-12, atol=1e-12)


def test_gradcheck():
    h, s_dst, s_src = inputs(9, 3, seed=3)
    has_loop = torch.tensor([True, False] * 4 + [False])
    assert torch.autograd.gradcheck(
        lambda h, s, t: complete_attention(h, s, t, 0.3, has_loop), (h, s_dst, s_src)
    )
    assert torch.autograd.gradcheck(
        lambda h, s, t: complete_attention(h, s, t, 0.3), (h, s_dst, s_src)
    )


def test_small_graphs():
    h, s_dst, s_src = inputs(1, 3)
    # One node with its self-loop: alpha = 1 and the self term doubles it.
    torch.testing.assert_close(complete_attention(h, s_dst, s_src), 2 * h)
    # Without it, the node has no neighbour at all.
    out = complete_attention(h, s_dst, s_src, has_loop=torch.tensor([False]))
    assert torch.equal(out, torch.zeros_like(h))
    h0 = torch.zeros(0, 3)
    assert complete_attention(h0, torch.zeros(0), torch.zeros(0)).shape == (0, 3)


def test_float32_and_autocast():
    h, s_dst, s_src = (v.detach() for v in inputs(300, 8, scale=3.0, ties=True))
    ref = dense_attention(h, s_dst, s_src)
    out = complete_attention(h.float(), s_dst.float(), s_src.float())
    assert out.dtype == torch.float32 and rel(out.double(), ref) < 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = complete_attention(h.bfloat16(), s_dst.float(), s_src.float())
    assert out.dtype == torch.float32  # the attention runs in float32


def test_large_graph_float32_error():
    """N = 100 000 in float32 against float64 (seconds on the CPU): the cumulative sums keep
    the relative error far below 1e-5, values and gradients."""
    n, f = 100_000, 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, f, generator=g)
    h, s, t = x @ torch.randn(f, f, generator=g) / 4, x @ torch.randn(f, generator=g), x[:, 0] * 3
    grad = torch.randn(n, f, generator=g)
    results = []
    for dtype in (torch.float64, torch.float32):
        args = [v.to(dtype).requires_grad_() for v in (h, s, t)]
        out = complete_attention(*args)
        out.backward(grad.to(dtype))
        results.append([out.detach().double()] + [a.grad.double() for a in args])
    for a, b in zip(results[1], results[0], strict=True):
        assert rel(a, b) < 1e-5


def test_bad_input():
    h, s, t = torch.randn(4, 2), torch.randn(4), torch.randn(4)
    with pytest.raises(ValueError, match="'negative_slope' must be in"):
        complete_attention(h, s, t, negative_slope=-0.2)
    with pytest.raises(ValueError, match="'s_src' must be"):
        complete_attention(h, s, t[:3])
    with pytest.raises(ValueError, match="'has_loop' must be a bool"):
        complete_attention(h, s, t, has_loop=torch.ones(4))


# ---------------------------------------------------------------------------------------
# AdaptiveGCNConv(complete=...): eq. 3-7 over every pair of nodes, written as dense matrices.
# ---------------------------------------------------------------------------------------


def complete_reference(conv, x, A, has_loop):
    """Eq. 3-7 over the complete graph in float64: every pair j -> i is an edge, (i, i) only
    where has_loop[i]; A is the dense fixed graph, zero where nothing is stored."""
    n = x.size(0)
    eye = torch.eye(n, dtype=torch.bool)
    edge = ~eye | (eye & has_loop[:, None])
    h = x @ conv.lin.weight.t()
    out = (A * edge) @ h  # eq. 3's A
    if conv.attention:
        s_dst = x @ (conv.lin_dst.weight.t() @ conv.att_dst.view(-1))  # eq. 4, target half
        s_src = x @ (conv.lin_src.weight.t() @ conv.att_src.view(-1))
        e = F.leaky_relu(s_dst[:, None] + s_src[None, :], conv.negative_slope)
        alpha = torch.softmax(e.masked_fill(~edge, float("-inf")), dim=-1)  # eq. 5
        b = alpha + torch.diag(alpha.amax(dim=-1) * has_loop)  # eq. 6
        out = out + b @ h
    if conv.similarity:
        # eq. 7, cos = 0 with a zero vector: x / max(|x|, 1e-12), as F.normalize defines it
        x_hat = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        out = out + (x_hat @ x_hat.t()).masked_fill(~edge, 0.0) @ h
    return out + conv.bias


def make_complete_conv(attention=True, similarity=True, add_self_loops=True, scale=1.0, **kw):
    torch.manual_seed(0)
    conv = AdaptiveGCNConv(
        6, 5, attention=attention, similarity=similarity, add_self_loops=add_self_loops,
        complete=True, **kw,
    ).double()  # fmt: skip
    conv.dense_max_ratio = 0.0  # the sorted path at every size (a small graph goes dense)
    with torch.no_grad():
        conv.bias.normal_()
        if attention:
            conv.att_src.mul_(scale)
            conv.att_dst.mul_(scale)
    return conv


def label_graph(n=40, seed=0, ties=True, zeros=True):
    """Node features with duplicate rows and zero rows; a sparse A with isolated nodes, some
    stored self-loops (one of weight 0) and no others."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    if ties:
        x[10:14] = x[3]
    if zeros:
        x[20] = x[21] = 0.0
    A = torch.rand(n, n, generator=g, dtype=torch.float64)
    A = A * (torch.rand(n, n, generator=g) < 0.15)
    A[:, 30:33] = A[30:33] = 0.0  # isolated in A
    A.fill_diagonal_(0.0)
    stored_loops = torch.tensor([2, 5, 7])
    A[stored_loops, stored_loops] = torch.tensor([0.7, 0.0, 1.3], dtype=torch.float64)
    target, source = A.nonzero(as_tuple=True)
    edge_index = torch.cat([torch.stack([source, target]), torch.tensor([[5], [5]])], dim=1)
    edge_weight = torch.cat([A[target, source], torch.zeros(1, dtype=torch.float64)])
    return x, A, edge_index, edge_weight, stored_loops


def graph_forms(edge_index, edge_weight, n, sparse_tensor=False):
    """The graph as (graph, edge_weight) in every form; SparseTensor alone with
    ``sparse_tensor`` (the ``sparse`` tests, which CI's second step runs with torch-sparse)."""
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), edge_weight, (n, n)).coalesce()
    if sparse_tensor:
        return {"SparseTensor": (SparseTensor.from_torch_sparse_coo_tensor(adj_t), None)}
    return {
        "edge_index": (edge_index, edge_weight),
        "coo": (adj_t, None),
        "csr": (adj_t.to_sparse_csr(), None),
        "csc": (adj_t.to_sparse_csc(), None),
    }


def grads(out, tensors, grad):
    return torch.autograd.grad(out, tensors, grad, allow_unused=True)


def assert_grads_equal(got, want):
    scale = torch.cat([w.flatten() for w in want if w is not None]).norm()
    for a, b in zip(got, want, strict=True):
        if b is None:
            assert a is None or a.abs().max() == 0
            continue
        assert (a - b).norm() <= 1e-9 * max(b.norm(), 1e-3 * scale)


@pytest.mark.parametrize("add_self_loops", [True, False])
@pytest.mark.parametrize("scale", [1.0, 60.0])
def test_complete_conv_matches_reference_every_form(add_self_loops, scale):
    check_every_form(add_self_loops, scale)


@pytest.mark.sparse
@pytest.mark.parametrize("add_self_loops", [True, False])
def test_complete_conv_matches_reference_sparse_tensor(add_self_loops):
    if not WITH_TORCH_SPARSE:
        pytest.skip("needs torch-sparse: pip install --no-build-isolation -e '.[sparse]'")
    check_every_form(add_self_loops, 60.0, sparse_tensor=True)


def check_every_form(add_self_loops, scale, sparse_tensor=False):
    """complete=True equals eq. 3-7 over every pair (float64, values and gradients) for each
    form of the graph, and for the dense adjacency by both ways to B."""
    x, A, edge_index, edge_weight, stored = label_graph()
    n = x.size(0)
    conv = make_complete_conv(add_self_loops=add_self_loops, scale=scale)
    A_ref = A.clone()
    has_loop = torch.zeros(n, dtype=torch.bool)
    has_loop[stored] = True
    if add_self_loops:  # the missing self-loops get fill_value, the stored keep their weight
        missing = torch.ones(n, dtype=torch.bool)
        missing[stored] = False
        A_ref[missing, missing] = conv.fill_value
        has_loop[:] = True
    x = x.requires_grad_()
    ref = complete_reference(conv, x, A_ref, has_loop)
    if scale > 1:
        s = x @ (conv.lin_src.weight.t() @ conv.att_src.view(-1))
        assert s.abs().max() > 100  # scores of +-100 and more
    grad = torch.randn_like(ref)
    params = [x, *conv.parameters()]
    want = grads(ref, params, grad)
    for name, (graph, weight) in graph_forms(edge_index, edge_weight, n, sparse_tensor).items():
        out = conv(x, graph, weight)
        assert rel(out, ref) < 1e-9, name
        assert_grads_equal(grads(out, params, grad), want)
    if add_self_loops and not sparse_tensor:  # a dense adjacency has every self-loop
        for min_nodes in (0, 10**9):  # the sorted B and the dense softmax
            conv.sorted_min_nodes, conv.sorted_min_ratio = min_nodes, 0.0
            out = conv(x, A_ref)
            assert rel(out, ref) < 1e-9
            assert_grads_equal(grads(out, params, grad), want)


def test_small_sparse_graph_takes_the_dense_path(monkeypatch):
    """N <= dense_max_ratio * F_out with every self-loop: the dense path, equal to the sorted
    path in values and in the gradients of x, the parameters and the edge weights."""
    x, _, edge_index, edge_weight, _ = label_graph()
    n = x.size(0)
    sorted_conv = make_complete_conv()
    small = copy.deepcopy(sorted_conv)
    small.dense_max_ratio = n / small.out_channels
    edge_weight = edge_weight.clone().requires_grad_()
    x = x.requires_grad_()
    grad = torch.randn(n, small.out_channels, dtype=torch.float64)
    want, got = (
        (conv(x, edge_index, edge_weight), [x, edge_weight, *conv.parameters()])
        for conv in (sorted_conv, small)
    )
    assert rel(got[0], want[0]) < 1e-9
    assert_grads_equal(grads(*got, grad), grads(*want, grad))

    def refuse(*args, **kwargs):
        raise AssertionError("the sorted path ran")

    monkeypatch.setattr(torch.Tensor, "sort", refuse)  # the sorted path sorts the scores
    small(x, edge_index, edge_weight)
    with pytest.raises(AssertionError, match="sorted path"):
        sorted_conv(x, edge_index, edge_weight)


@pytest.mark.parametrize("attention,similarity", [(True, False), (False, True)])
def test_complete_conv_ablations(attention, similarity):
    x, A, edge_index, edge_weight, _ = label_graph(ties=False)
    conv = make_complete_conv(attention=attention, similarity=similarity)
    A_ref = A.clone()
    A_ref.diagonal()[A_ref.diagonal() == 0] = 1.0
    A_ref[5, 5] = 0.0  # stored with weight 0: kept
    ref = complete_reference(conv, x, A_ref, torch.ones(x.size(0), dtype=torch.bool))
    assert rel(conv(x, edge_index, edge_weight), ref) < 1e-12


def test_masked_dense_equals_edge_index():
    """complete=False with a dense adjacency: the non-zero entries are the edges
    (DenseGATConv's meaning), the same as the edge_index of those entries."""
    x, A, _, _, _ = label_graph()
    target, source = A.nonzero(as_tuple=True)
    edge_index, edge_weight = torch.stack([source, target]), A[target, source]
    for add_self_loops in (True, False):
        masked = make_complete_conv(add_self_loops=add_self_loops)
        masked.complete = False
        edge = make_complete_conv(add_self_loops=add_self_loops)
        edge.complete = None
        out, coef = masked(x, A, return_attention_weights=True)
        ref, (index, alpha) = edge(x, edge_index, edge_weight, return_attention_weights=True)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        want = torch.zeros_like(A).index_put_((index[1], index[0]), alpha, accumulate=True)
        torch.testing.assert_close(coef, want, rtol=1e-12, atol=1e-12)


def test_complete_weights_graphs_and_parts():
    x, A, edge_index, edge_weight, _ = label_graph()
    conv = make_complete_conv(add_self_loops=False)
    out, coef = conv(x, edge_index, edge_weight, return_attention_weights=True)
    graphs = conv.graphs(x, edge_index, edge_weight)
    assert graphs.edge_index is None and graphs.A.shape == (40, 40)
    torch.testing.assert_close(coef, graphs.A + graphs.B + graphs.C)
    h = x @ conv.lin.weight.t()
    torch.testing.assert_close(out, coef @ h + conv.bias)
    # Rows of the three graphs, at any size, from the parts.
    parts = conv.complete_parts(x, edge_index, edge_weight)
    a, b, c = parts.rows(torch.tensor([2, 30]))
    for got, full in ((a, graphs.A), (b, graphs.B), (c, graphs.C)):
        torch.testing.assert_close(got, full[[2, 30]])
    assert b[1, 30] == 0 and c[1, 30] == 0  # node 30 has no self-loop
    # Over the budget: a clear error that says how to get the parts.
    conv.max_dense_entries = 100
    with pytest.raises(ValueError, match="complete_parts"):
        conv(x, edge_index, edge_weight, return_attention_weights=True)
    with pytest.raises(ValueError, match="max_dense_entries"):
        conv.graphs(x, edge_index, edge_weight)


def test_complete_dropout_is_refused_in_training():
    x, _, edge_index, edge_weight, _ = label_graph()
    conv = make_complete_conv(dropout=0.5)
    conv.eval()
    conv(x, edge_index, edge_weight)  # no dropout in eval: fine
    conv.train()
    with pytest.raises(ValueError, match="attention dropout"):
        conv(x, edge_index, edge_weight)


def test_complete_adjacency_cache_follows_the_graph():
    x, _, edge_index, edge_weight, _ = label_graph()
    conv = make_complete_conv()
    first = conv(x, edge_index, edge_weight)
    with torch.no_grad():
        edge_weight.mul_(2.0)  # in place: the cache must notice
    second = conv(x, edge_index, edge_weight)
    reference = make_complete_conv()
    torch.testing.assert_close(second, reference(x, edge_index, edge_weight.clone()))
    assert not torch.allclose(first, second)


def test_complete_conv_autocast_bf16():
    x, _, edge_index, edge_weight, _ = label_graph()
    conv = make_complete_conv().float()
    x, edge_weight = x.float(), edge_weight.float()
    ref = conv(x, edge_index, edge_weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x, edge_index, edge_weight)
    assert out.dtype == torch.float32  # the attention and aggregation run in float32
    assert rel(out, ref) < 2e-2  # only W_l x is bf16


def test_complete_conv_100k_nodes_smoke():
    """N = 100 000 labels, sparse A of degree 8: forward and backward in seconds on a CPU."""
    n = 100_000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g, requires_grad=True)
    edge_index = torch.randint(n, (2, 8 * n), generator=g)
    conv = AdaptiveGCNConv(16, 16, complete=True)
    out = conv(x, edge_index, torch.rand(8 * n, generator=g))
    out.square().mean().backward()
    assert out.shape == (n, 16) and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("add_self_loops", [False, True])
def test_complete_compile_no_graph_breaks(add_self_loops):
    import torch._dynamo

    x, _, edge_index, edge_weight, _ = label_graph()
    conv = make_complete_conv(add_self_loops=add_self_loops).float()
    x, edge_weight = x.float().requires_grad_(), edge_weight.float()
    explanation = torch._dynamo.explain(conv)(x, edge_index, edge_weight)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(conv)
    out = compiled(x, edge_index, edge_weight)
    ref = conv(x, edge_index, edge_weight)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (g_compiled,) = torch.autograd.grad(out.sum(), x)
    (g_eager,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------
# MultiLabelHead / create_model with a sparse A
# ---------------------------------------------------------------------------------------


def test_head_with_sparse_adjacency_equals_dense():
    g = torch.Generator().manual_seed(0)
    A = torch.rand(40, 40, generator=g) * (torch.rand(40, 40, generator=g) < 0.2)
    A.fill_diagonal_(1.0)  # P(i | i) = 1, as a co-occurrence graph has
    heads = []
    for adj in (A, A.to_sparse(), A.to_sparse_csr()):
        torch.manual_seed(1)
        heads.append(MultiLabelHead(16, 40, adj, hidden_channels=(8,)).double())
    dense, *sparse = heads
    assert dense.convs[0].complete is None
    features = torch.randn(3, 16, dtype=torch.float64)
    for head in sparse:
        assert head.convs[0].complete and not hasattr(head, "adj")
        for p, q in zip(dense.parameters(), head.parameters(), strict=True):
            torch.testing.assert_close(p, q)  # the same initial scale (the same graph)
        torch.testing.assert_close(head(features), dense(features), rtol=1e-12, atol=1e-12)
        head.eval()
        with torch.no_grad():
            logits = head(features)
            assert head._cache is not None and torch.equal(head(features), logits)
            torch.testing.assert_close(head.to_linear()(features), logits)
        graphs = head.graphs()
        torch.testing.assert_close(graphs[0].A, A.double())


def test_head_needs_features_beyond_one_hot():
    n = MultiLabelHead.max_one_hot_labels + 1
    adj = torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.ones(2), (n, n))
    with pytest.raises(ValueError, match="'node_features' is required"):
        MultiLabelHead(8, n, adj)
    model = create_model(
        "resnet10t", n, adj, num_layers=1, node_features=torch.randn(n, 4), pretrained=None
    )
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, n)


def test_sparse_head_save_pretrained_and_reset_classifier(tmp_path):
    from agcn_pyg import from_pretrained, save_pretrained

    n = 30
    g = torch.Generator().manual_seed(0)
    A = (torch.rand(n, n, generator=g) * (torch.rand(n, n, generator=g) < 0.2)).to_sparse()
    model = create_model("resnet10t", n, A, num_layers=1).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(images)
    save_pretrained(model, tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.head.convs[0].complete
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), logits)
    model.reset_classifier(n)  # the same labels: the sparse graph is kept
    assert hasattr(model.head, "adj_index")
    torch.testing.assert_close(model.head.adjacency().to_dense(), A.to_dense())


# ---------------------------------------------------------------------------------------
# CUDA (skipped without a GPU; benchmarks/gpu_suite.py runs `pytest -m cuda`)
# ---------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_complete_conv_cuda_matches_cpu():
    x, A, edge_index, edge_weight, stored = label_graph()
    for add_self_loops in (True, False):
        conv = make_complete_conv(add_self_loops=add_self_loops)
        x_cpu = x.clone().requires_grad_()
        out = conv(x_cpu, edge_index, edge_weight)
        grad = torch.randn_like(out)
        want = grads(out, [x_cpu, *conv.parameters()], grad)
        conv_gpu = make_complete_conv(add_self_loops=add_self_loops).cuda()
        x_gpu = x.cuda().requires_grad_()
        adj_t = torch.sparse_coo_tensor(edge_index.flip(0), edge_weight, (40, 40)).coalesce()
        for graph, weight in ((edge_index.cuda(), edge_weight.cuda()), (adj_t.cuda(), None)):
            out_gpu = conv_gpu(x_gpu, graph, weight)
            assert rel(out_gpu.cpu(), out) < 1e-12
            got = grads(out_gpu, [x_gpu, *conv_gpu.parameters()], grad.cuda())
            assert_grads_equal([g.cpu() for g in got], want)


@pytest.mark.cuda
def test_complete_attention_cuda_float32_error():
    """N = 10^6 in float32 on the GPU against float64: CUDA's cumsum accumulates float32 in
    float32, so the cumulative sums run in float64 there; relative error below 1e-5."""
    n, f = 1_000_000, 64
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, f, generator=g)
    h, s, t = x @ torch.randn(f, f, generator=g) / 8, x @ torch.randn(f, generator=g), x[:, 0] * 3
    grad = torch.randn(n, f, generator=g).cuda()
    results = []
    for dtype in (torch.float64, torch.float32):
        args = [v.cuda().to(dtype).requires_grad_() for v in (h, s, t)]
        out = complete_attention(*args)
        out.backward(grad.to(dtype))
        results.append([out.detach().double()] + [a.grad.double() for a in args])
    for a, b in zip(results[1], results[0], strict=True):
        assert rel(a, b) < 1e-5


@pytest.mark.cuda
@pytest.mark.slow
def test_complete_compile_cuda_no_graph_breaks():
    import torch._dynamo

    x, _, edge_index, edge_weight, _ = label_graph()
    conv = make_complete_conv(add_self_loops=False).float().cuda()
    x, edge_index = x.float().cuda().requires_grad_(), edge_index.cuda()
    edge_weight = edge_weight.float().cuda()
    explanation = torch._dynamo.explain(conv)(x, edge_index, edge_weight)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    out = torch.compile(conv)(x, edge_index, edge_weight)
    torch.testing.assert_close(out, conv(x, edge_index, edge_weight), rtol=1e-5, atol=1e-5)
