"""The edge path's Triton kernels (agcn_pyg/nn/kernels/edge.py) under Triton's interpreter
(TRITON_INTERPRET=1, AGCN_KERNELS=triton, CPU tensors): forward and backward against eq. 3-7
written out here in float64, the per-graph pattern cache, and the op, sync and graph-break
counts of the layer on that path.

TRITON_INTERPRET=1 has to be set before Triton is imported (tests/conftest.py does it on
machines without CUDA; elsewhere these tests skip: the GPU suite tests the compiled kernels);
AGCN_KERNELS=triton is set per test, so the rest of the suite keeps its backend. The
interpreter runs each program instance in Python (about 10 ms): the graphs here have at most a
few dozen nodes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from torch_geometric.nn import GATConv  # noqa: E402

from agcn_pyg import AdaptiveGCNConv  # noqa: E402
from agcn_pyg.nn.kernels import edge as edge_kernels  # noqa: E402
from agcn_pyg.nn.kernels.counting import OpCounter, triton_launches  # noqa: E402

pytestmark = pytest.mark.triton


@pytest.fixture
def interpreted(monkeypatch):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 from before Triton's import (tests/conftest.py "
                    "sets it where there is no CUDA)")
    monkeypatch.setenv("AGCN_KERNELS", "triton")


# The paper's equations in float64, one target node at a time ---------------------------------


def pattern_edges(edges, n, add_loops):
    """The edges eq. 3-7 range over, as (pattern index, source, target): the stored ones and,
    with add_loops, one self-loop per node appended (index E + i) while the stored self-loops
    are dropped (PyG's add_remaining_self_loops)."""
    out = [(k, j, i) for k, (j, i) in enumerate(edges) if not (add_loops and j == i)]
    if add_loops:
        out += [(len(edges) + i, i, i) for i in range(n)]
    return out


def reference(h, weight, s_dst=None, s_src=None, s_edge=None, u_dst=None, u_src=None, *,
              edges, n_dst, add_loops, loops=True, slope=0.2):
    """o_i = sum_j (a_ij + b_ij + c_ij) h_j (eq. 3) with b_ij = alpha_ij + [i = j] max_k alpha_ik
    (eq. 4-6, alpha the softmax of LeakyReLU(s_i + t_j [+ s_e]) over i's edges) and
    c_ij = u_i . u_j (eq. 7). h [N_src, H, C]; weight and s_edge per pattern edge."""
    listed = pattern_edges(edges, h.size(0), add_loops)
    rows = []
    for i in range(n_dst):
        mine = [(k, j) for k, j, t in listed if t == i]
        out = h.new_zeros(h.shape[1:])
        if mine:
            k = torch.tensor([k for k, _ in mine])
            j = torch.tensor([j for _, j in mine])
            coef = weight[k].unsqueeze(-1).expand(-1, h.size(1))  # a_ij
            if s_dst is not None:
                pre = s_dst[i] + s_src[j] + (0 if s_edge is None else s_edge[k])
                alpha = torch.softmax(F.leaky_relu(pre, slope), dim=0)  # eq. 4-5
                is_loop = (j == i).to(h.dtype).unsqueeze(-1) if loops else 0
                coef = coef + alpha + is_loop * alpha.amax(dim=0)  # eq. 6
            if u_dst is not None:
                coef = coef + (u_dst[i] * u_src[j]).sum(-1, keepdim=True)  # eq. 7
            out = (coef.unsqueeze(-1) * h[j]).sum(0)
        rows.append(out)
    return torch.stack(rows)


# A graph with the awkward cases: duplicate edges, stored self-loops (node 0 twice, with
# different weights), an isolated node (7), a node whose only in-edges are loops (5).
EDGES = [(1, 0), (2, 0), (2, 0), (0, 0), (0, 0), (3, 1), (0, 1), (1, 2), (4, 2), (2, 2),
         (6, 3), (0, 4), (1, 4), (2, 4), (3, 4), (5, 5), (4, 6), (0, 6), (8, 6), (6, 8)]
N = 9


def op_inputs(heads, dtype=torch.float64, scale=1.0, edge=True, ties=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    e_total = len(EDGES) + N

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    s_src = rand(N, heads) * scale
    if ties:  # every score of a row equal: the row maximum is shared by all its edges
        s_src = torch.full((N, heads), 0.7, dtype=torch.float64)
    x = rand(N, 5)
    x[3] = 0.0  # a zero vector: its cosine is 0
    inputs = dict(
        h=rand(N, heads, 4), weight=torch.rand(e_total, generator=gen, dtype=torch.float64),
        s_dst=rand(N, heads) * scale, s_src=s_src,
        s_edge=rand(e_total, heads) * scale if edge and not ties else None,
        u_dst=F.normalize(x, dim=-1),
    )
    return {k: None if v is None else v.to(dtype).requires_grad_() for k, v in inputs.items()}


def run_kernel(inputs, pattern, loops=True):
    u = inputs["u_dst"]
    return edge_kernels.edge_attention(
        inputs["h"], pattern, inputs["weight"], inputs["s_dst"], inputs["s_src"],
        inputs["s_edge"], u, u, loops=loops)


def gradients(out, inputs, seed=1):
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)
    tensors = [v for v in inputs.values() if v is not None]
    return torch.autograd.grad((out.double() * grad).sum(), tensors)


def assert_close_to_float64(inputs, pattern, *, tol, loops=True, add_loops=True):
    """The kernel on inputs cast to float32/bf16 against eq. 3-7 in float64 on the same
    (rounded) values; errors relative to the largest output and the largest gradient."""
    exact = {k: None if v is None else v.detach().double().requires_grad_()
             for k, v in inputs.items()}
    expected = reference(**{**exact, "u_src": exact["u_dst"]}, edges=EDGES, n_dst=N,
                         add_loops=add_loops, loops=loops)
    out = run_kernel(inputs, pattern, loops)
    assert out.dtype == inputs["h"].dtype and out.shape == expected.shape
    err = (out.double() - expected).abs().max().item()
    assert err <= tol * expected.abs().max().item(), err
    want, got = gradients(expected, exact), gradients(out, inputs)
    scale = max(g.abs().max().item() for g in want)
    given = [v for v in inputs.values() if v is not None]
    for name, w, g, t in zip([k for k, v in inputs.items() if v is not None], want, got, given,
                             strict=True):
        assert g.dtype == t.dtype and g.shape == t.shape, name
        assert (g.double() - w).abs().max().item() <= tol * scale, name


@pytest.mark.parametrize("heads", [1, 3])
def test_op_float32_within_1e5_of_float64(interpreted, heads):
    """Duplicates, stored and appended self-loops, an isolated node, a zero feature vector,
    edge features; one head and three."""
    pattern = edge_kernels.build_pattern(torch.tensor(EDGES).t(), N, N, True)
    inputs = op_inputs(heads, torch.float32)
    assert_close_to_float64(inputs, pattern, tol=1e-5)


@pytest.mark.parametrize("case", ["ties", "scores_100", "no_loops_added"])
def test_op_hard_cases(interpreted, case):
    """Tied scores (eq. 6's maximum shared by a whole row: its gradient split among the ties,
    as torch.amax splits it), scores of +-100 (exp would overflow without the running
    maximum), and stored self-loops kept as edges (each with eq. 6's term), rows without
    edges (node 7) when no loops are added."""
    add_loops = case != "no_loops_added"
    pattern = edge_kernels.build_pattern(torch.tensor(EDGES).t(), N, N, add_loops)
    inputs = op_inputs(2, torch.float32, scale=100.0 if case == "scores_100" else 1.0,
                       ties=case == "ties")
    if not add_loops:  # the pattern has only the stored edges
        inputs = {k: v if v is None or v.size(0) == N else v[: len(EDGES)].detach()
                  .requires_grad_() for k, v in inputs.items()}
    assert_close_to_float64(inputs, pattern, tol=1e-5, add_loops=add_loops)


def test_op_bfloat16(interpreted):
    """bf16 inputs: float32 accumulation inside, outputs and gradients rounded to bf16 once."""
    pattern = edge_kernels.build_pattern(torch.tensor(EDGES).t(), N, N, True)
    inputs = op_inputs(1, torch.bfloat16)
    assert_close_to_float64(inputs, pattern, tol=1e-2)


# The layer on the kernel path ------------------------------------------------------------------


def layer_reference(conv, x, x_dst, edges, edge_weight, edge_attr, add_loops, fill=1.0):
    """AdaptiveGCNConv's eq. 3-7 from its parameters in float64: W x_j, the score halves
    a_d^T W_d x_i and a_s^T W_s x_j, a_e^T W_e e_ij (an added loop's features: the mean of the
    node's incoming ones, or its stored loop's), unit rows; then reference() plus the bias."""
    p = {k: v.detach().double().requires_grad_() for k, v in conv.named_parameters()}
    x, x_dst = x.double(), x_dst.double()
    h = (x @ p["lin.weight"].t()).unsqueeze(1)
    s_src = x @ p["lin_src.weight"].t() @ p["att_src"][0].t()  # att [1, H=1, C]
    s_dst = x_dst @ p["lin_dst.weight"].t() @ p["att_dst"][0].t()
    weight = edge_weight.double()
    s_edge = None
    if edge_attr is not None:
        attr = edge_attr.double()
        loop_attr = torch.zeros(x_dst.size(0), attr.size(1), dtype=torch.float64)
        for i in range(x_dst.size(0)):
            stored = [k for k, (j, t) in enumerate(edges) if j == t == i]
            incoming = [k for k, (_, t) in enumerate(edges) if t == i]
            if stored:
                loop_attr[i] = attr[stored[-1]]
            elif incoming:
                loop_attr[i] = attr[incoming].mean(0)
        s_edge = torch.cat([attr, loop_attr]) @ p["lin_edge.weight"].t() @ p["att_edge"][0].t()
    if add_loops:
        loop_weight = [weight[[k for k, (j, t) in enumerate(edges) if j == t == i][-1]]
                       if any(j == t == i for j, t in edges) else torch.tensor(fill).double()
                       for i in range(x.size(0))]
        weight = torch.cat([weight, torch.stack(loop_weight)])
    out = reference(h, weight, s_dst, s_src, s_edge, F.normalize(x_dst, dim=-1),
                    F.normalize(x, dim=-1), edges=edges, n_dst=x_dst.size(0),
                    add_loops=add_loops, loops=x is x_dst or add_loops)
    return out.squeeze(1) + p["bias"], p


@pytest.mark.parametrize("edge_dim", [None, 3])
def test_layer_on_kernels_matches_float64(interpreted, edge_dim):
    torch.manual_seed(0)
    conv = AdaptiveGCNConv(5, 4, edge_dim=edge_dim)
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(N, 5, requires_grad=True)
    edge_index = torch.tensor(EDGES).t()
    edge_weight = torch.rand(len(EDGES), requires_grad=True)  # learned weights: gradients too
    edge_attr = torch.randn(len(EDGES), 3) if edge_dim else None
    launched = triton_launches.copy()
    out = conv(x, edge_index, edge_weight, edge_attr=edge_attr)
    grad = torch.randn(out.shape, dtype=torch.float64)
    (out.double() * grad).sum().backward()
    assert triton_launches["_forward_kernel"] == launched["_forward_kernel"] + 1
    x64 = x.detach().double().requires_grad_()
    w64 = edge_weight.detach().double().requires_grad_()
    expected, params = layer_reference(conv, x64, x64, EDGES, w64, edge_attr, True)
    assert (out.double() - expected).abs().max() <= 1e-5 * expected.abs().max()
    (expected * grad).sum().backward()
    # Every weight gradient at the scale of all of them (the attention vectors' are small).
    scale = max(p.grad.abs().max() for p in params.values())
    for name, param in conv.named_parameters():
        assert (param.grad.double() - params[name].grad).abs().max() <= 1e-5 * scale, name
    assert (x.grad.double() - x64.grad).abs().max() <= 1e-5 * x64.grad.abs().max()
    # Node 0's appended loop takes the weight of its last stored loop (edge 4); edge 3 is dropped.
    assert edge_weight.grad[3] == 0 and w64.grad[3] == 0 and w64.grad[4] != 0
    assert (edge_weight.grad.double() - w64.grad).abs().max() <= 1e-5 * w64.grad.abs().max()


def test_layer_default_weights_on_kernels(interpreted):
    """edge_weight=None: stored edges weigh 1, an appended loop 1 where one was stored (node 0,
    node 2, node 5), fill_value elsewhere (cached with the pattern)."""
    torch.manual_seed(2)
    conv = AdaptiveGCNConv(5, 4, fill_value=2.5)
    x = torch.randn(N, 5)
    out = conv(x, torch.tensor(EDGES).t())
    expected, _ = layer_reference(conv, x, x, EDGES, torch.ones(len(EDGES)), None, True,
                                  fill=2.5)
    assert (out.double() - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_layer_bipartite_on_kernels(interpreted):
    """x = (x_src, x_dst): no self-loops, eq. 6's term absent, c_ij from both feature sets."""
    torch.manual_seed(1)
    conv = AdaptiveGCNConv(5, 4, add_self_loops=False)
    x_src, x_dst = torch.randn(N, 5), torch.randn(6, 5)
    edges = [(j, i % 6) for j, i in EDGES]
    edge_weight = torch.rand(len(edges))
    out = conv((x_src, x_dst), torch.tensor(edges).t(), edge_weight)
    expected, _ = layer_reference(conv, x_src, x_dst, edges, edge_weight, None, False)
    assert (out.double() - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_dropout_and_attention_weights_take_the_pytorch_path(interpreted):
    conv = AdaptiveGCNConv(5, 4, dropout=0.5)
    x, edge_index = torch.randn(N, 5), torch.tensor(EDGES).t()
    launched = sum(triton_launches.values())
    conv.train()(x, edge_index)  # attention dropout drops entries of the per-edge B
    conv.eval()(x, edge_index, return_attention_weights=True)  # per-edge coefficients asked
    assert sum(triton_launches.values()) == launched
    conv.eval()(x, edge_index)
    assert sum(triton_launches.values()) == launched + 1
    # PyG's explainers hook the message passing to read the per-edge alpha.
    handle = conv.register_message_forward_hook(lambda module, inputs, output: None)
    conv(x, edge_index)
    handle.remove()
    assert sum(triton_launches.values()) == launched + 1


# Per-graph work once ----------------------------------------------------------------------------


def test_pattern_cached_per_tensor_and_version():
    edge_index = torch.tensor(EDGES).t()
    first = edge_kernels.edge_pattern(edge_index, N, N, True)
    assert edge_kernels.edge_pattern(edge_index, N, N, True) is first
    assert edge_kernels.edge_pattern(edge_index.clone(), N, N, True) is not first  # new tensor
    edge_index[0, 0] = 5  # in place: the version counter moves
    changed = edge_kernels.edge_pattern(edge_index, N, N, True)
    assert changed is not first
    assert edge_kernels.edge_pattern(edge_index, N, N, False) is not changed  # other settings
    # Row 0 now holds the edge from 5 instead of 1.
    row0 = changed.col[changed.rowptr[0]:changed.rowptr[1]].tolist()
    assert 5 in row0 and 1 not in row0
    # CSR and CSC list the same (source, target) pairs: the stored loops dropped, one appended
    # per node; the dropped ones sit past the last row.
    csr = sorted(zip(changed.col.tolist()[: changed.rowptr[-1]],
                     torch.repeat_interleave(torch.arange(N), changed.rowptr.diff()).tolist(),
                     strict=True))
    csc = sorted(zip(torch.repeat_interleave(torch.arange(N), changed.colptr.diff()).tolist(),
                     changed.row.tolist()[: changed.colptr[-1]], strict=True))
    listed = sorted((j, i) for _, j, i in pattern_edges(edge_index.t().tolist(), N, True))
    assert csr == csc == listed


@pytest.mark.parametrize("heads", [1, 3])
def test_counts_below_gatconv_and_no_host_sync(interpreted, monkeypatch, heads):
    """One forward+backward on the second call on the same graph (2048 nodes, degree 16,
    64 -> 64 per head): kernel ops <= GATConv's with as many heads, no host sync. The Triton
    kernels are counted as launched but not run here (the interpreter would take minutes at
    this size; what they compute does not change what is launched)."""
    torch.manual_seed(0)
    n = 2048
    x = torch.randn(n, 64, requires_grad=True)
    edge_index = torch.randint(0, n, (2, 16 * n))

    class NotRun:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    def count(conv):
        for _ in range(2):  # the first call builds the pattern and checks the inputs
            with OpCounter() as ops:
                conv(x, edge_index).sum().backward()
        return ops

    monkeypatch.setenv("AGCN_KERNELS", "torch")
    gat = count(GATConv(64, 64, heads=heads))
    monkeypatch.setenv("AGCN_KERNELS", "triton")
    monkeypatch.setattr(edge_kernels, "_compiled", lambda fn: NotRun())
    ours = count(AdaptiveGCNConv(64, 64, heads=heads))
    assert ours.kernel_ops["agcn::edge_attention"] == 1
    assert ours.kernel_ops["agcn::edge_attention_backward"] == 2
    assert ours.kernels <= gat.kernels, (ours.kernels, gat.kernels)
    assert ours.syncs == 0, ours.sync_ops
    # The pattern (sorts, pointers) was built on the first call only.
    assert not any("sort" in op for op in ours.kernel_ops), ours.kernel_ops
    assert gat.syncs >= 1  # (the counter sees GATConv's boolean-mask self-loop removal)


@pytest.mark.slow
def test_compile_no_graph_breaks(interpreted):
    """fullgraph=True fails on any graph break; aot_eager traces the custom ops' fake and
    autograd implementations, forward and backward, and runs them."""
    torch.manual_seed(0)
    conv = AdaptiveGCNConv(5, 4, edge_dim=3)
    x = torch.randn(N, 5, requires_grad=True)
    edge_index, edge_attr = torch.tensor(EDGES).t(), torch.randn(len(EDGES), 3)
    eager = conv(x, edge_index, edge_attr=edge_attr)
    (eager_grad,) = torch.autograd.grad(eager.pow(2).sum(), x)
    torch._dynamo.reset()
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    out = compiled(x, edge_index, edge_attr=edge_attr)
    (grad,) = torch.autograd.grad(out.pow(2).sum(), x)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(grad, eager_grad)


# The interpreter accepts programs the compiler rejects (types of loop-carried values, scalar
# shapes): compile every kernel for an H100 (sm_90) without a GPU, in a process without the
# interpreter. Triton ships ptxas; this checks code generation, not speed.
_COMPILE = textwrap.dedent("""
    import inspect, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from agcn_pyg.nn.kernels import edge
    INDEX = {"rowptr_ptr", "col_ptr", "eid_ptr", "colptr_ptr", "row_ptr"}
    # Every input present; and the layer's default, no edge features (s_edge is None).
    for edge_features in (True, False):
        for fn in (edge._forward_kernel, edge._backward_rows_kernel,
                   edge._backward_columns_kernel):
            names = inspect.signature(fn).parameters
            consts = dict(ATT=True, EDGE=edge_features, SIM=True, LOOPS=True, BLOCK_E=16,
                          BLOCK_C=64, BLOCK_D=64)
            if not edge_features and "s_edge_ptr" in names:
                consts["s_edge_ptr"] = None
            signature = {
                name: "constexpr" if name in consts else "*i32" if name in INDEX
                else "*fp32" if name.endswith("_ptr") else "fp32" if name == "slope" else "i32"
                for name in names}
            triton.compile(ASTSource(triton.jit(fn), signature, constexprs=consts),
                           target=GPUTarget("cuda", 90, 32))
    print("compiled")
""")



@pytest.mark.slow
def test_kernels_compile_for_sm90():
    triton = pytest.importorskip("triton")
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("Triton's CUDA backend (ptxas) is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernels_match_pytorch_path_without_syncs(monkeypatch, dtype):
    """On a GPU: the compiled kernels against the PyTorch path (forward and backward, 2000
    nodes, degree 16, 64 -> 64, edge features), and a repeated training step that never
    synchronises the host (sync debug mode "error" raises on any sync)."""
    torch.manual_seed(0)
    n, device = 2000, torch.device("cuda")
    conv = AdaptiveGCNConv(64, 64, edge_dim=4).to(device)
    x = torch.randn(n, 64, device=device, requires_grad=True)
    edge_index = torch.randint(0, n, (2, 16 * n), device=device)
    edge_attr = torch.randn(16 * n, 4, device=device)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("AGCN_KERNELS", backend)
        conv.zero_grad()
        x.grad = None
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out = conv(x, edge_index, edge_attr=edge_attr)
        out.float().square().sum().backward()
        results[backend] = [out.float(), x.grad] + [p.grad for p in conv.parameters()]
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for want, got in zip(results["torch"], results["triton"], strict=True):
        assert (got - want).abs().max() <= tol * want.abs().max()
    monkeypatch.setenv("AGCN_KERNELS", "triton")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        conv(x, edge_index, edge_attr=edge_attr).sum().backward()  # the same graph again
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_backend_choice_compiles_quietly(interpreted):
    """use_triton under torch.compile(fullgraph=True): Triton's availability is a module
    constant, not a cached call that Dynamo warns about (and would trace into)."""
    import warnings

    from agcn_pyg.nn.kernels import use_triton

    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(lambda x: x * 2 if use_triton(x) else x + 1, fullgraph=True,
                            backend="eager")(torch.ones(3))
    assert torch.equal(out, torch.full((3,), 2.0))  # AGCN_KERNELS=triton: the kernel branch
    assert not [w for w in caught if "lru_cache" in str(w.message)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_inference_mode_inputs_are_checked_every_call(backend, interpreted, monkeypatch):
    """Tensors made under torch.inference_mode have no version counter: the input checks and
    the edge pattern cannot be remembered for them, so each call checks and builds afresh
    (benchmarks/model.py's inference rows hit this)."""
    monkeypatch.setenv("AGCN_KERNELS", backend)
    torch.manual_seed(0)
    conv = AdaptiveGCNConv(6, 4)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 2]])
    expected = conv(torch.ones(5, 6), edge_index).detach()
    with torch.inference_mode():
        x, index = torch.ones(5, 6), edge_index.clone()
        first, second = conv(x, index), conv(x, index)
        x[0, 0] = float("nan")  # an in-place change is still caught
        with pytest.raises(ValueError, match="'x' must hold finite values"):
            conv(x, index)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)


def test_inference_mode_on_the_cached_paths():
    """The complete path's A cache and the dense path's cached C key on version counters
    too: inference_mode inputs are computed each call there, with the same result."""
    torch.manual_seed(0)
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    for conv, graph in ((AdaptiveGCNConv(6, 4, complete=True), edge_index),
                        (AdaptiveGCNConv(6, 4, cached=True), torch.rand(4, 4))):
        x = torch.randn(4, 6)
        expected = conv(x, graph).detach()
        conv._cached_similarity = None
        conv._cached_adjacency = None
        with torch.inference_mode():
            xi, gi = x.clone(), graph.clone()
            torch.testing.assert_close(conv(xi, gi), expected)
            torch.testing.assert_close(conv(xi, gi), expected)
