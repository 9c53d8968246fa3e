"""The Triton kernels of the complete and dense paths (issue 21) against float64 computations
of eq. 3-7 written here, forward and backward.

On a CPU they run under Triton's interpreter (``TRITON_INTERPRET=1``, set below before the
kernels are decorated; ~13 ms a program instance, so the graphs are small); on a GPU (the
suite's ``pytest -m "cuda or triton"``) the same tests run the compiled kernels on CUDA tensors.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel modules are imported

import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes  # noqa: E402

pytest.importorskip("triton")

from agcn_pyg import AdaptiveGCNConv  # noqa: E402
from agcn_pyg.nn import conv_checks  # noqa: E402
from agcn_pyg.nn.kernels import complete as complete_kernels  # noqa: E402
from agcn_pyg.nn.kernels import dense as dense_kernels  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-5  # float32 against float64, relative to the largest entry


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    monkeypatch.setenv("AGCN_KERNELS", "triton")


# Float64 references of eq. 4-7 -----------------------------------------------------------------


def attention_graph(s: torch.Tensor, t: torch.Tensor, slope: float) -> torch.Tensor:
    """B of eq. 4-6 over the complete graph with every self-loop, per head: [H, N, N]."""
    e = F.leaky_relu(s.t()[:, :, None] + t.t()[:, None, :], slope)  # eq. 4, e[h, i, j]
    alpha = torch.softmax(e, dim=-1)  # eq. 5
    return alpha + torch.diag_embed(alpha.amax(dim=-1))  # eq. 6


def rel_err(got: torch.Tensor, want: torch.Tensor, scale: float | None = None) -> float:
    scale = scale if scale is not None else want.abs().max().item()
    return (got.double() - want).abs().max().item() / max(scale, 1e-30)


def scores(n: int, heads: int, case: str, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    s = torch.randn(n, heads, generator=gen) * 2
    t = torch.randn(n, heads, generator=gen) * 2
    if case == "ties":  # tied scores, tied maxima, and pairs exactly at LeakyReLU's kink
        t[1::3] = t[::3][: t[1::3].size(0)]
        t[5] = t[7] = t.max(dim=0).values
        s[:4] = -t[10:14]
    if case == "large":  # scores of +-100: exp(+-100) in the unscaled softmax
        s, t = s.sign() * 100 + s, t.sign() * 100 + t
    return s, t


CASES = [("plain", 1, torch.float32), ("heads", 3, torch.float32), ("ties", 2, torch.float32),
         ("large", 1, torch.float32), ("bf16", 2, torch.bfloat16)]  # fmt: skip


@pytest.mark.parametrize("case,heads,dtype", CASES, ids=[c[0] for c in CASES])
def test_complete_kernel_matches_float64(case, heads, dtype):
    gen = torch.Generator().manual_seed(1)
    n, c = 61, 7
    s, t = scores(n, heads, case, gen)
    h = torch.randn(n, heads, c, generator=gen).to(dtype)  # bf16: the values as rounded
    grad = torch.randn(n, heads, c, generator=gen)
    leaves = [v.clone().to(DEVICE).requires_grad_() for v in (h, s, t)]
    out = complete_kernels.complete_attention(*leaves, negative_slope=0.2)
    out.backward(grad.to(DEVICE))

    h64, s64, t64 = (v.double().requires_grad_() for v in (h, s, t))
    want = torch.einsum("hij,jhc->ihc", attention_graph(s64, t64, 0.2), h64)
    want.backward(grad.double())
    assert out.dtype == torch.float32
    assert rel_err(out.cpu(), want) < TOL
    h_tol = TOL if dtype == torch.float32 else 1e-2  # dL/dh is returned in h's dtype
    assert rel_err(leaves[0].grad.cpu(), h64.grad) < h_tol
    assert rel_err(leaves[1].grad.cpu(), s64.grad) < TOL
    assert rel_err(leaves[2].grad.cpu(), t64.grad) < TOL


@pytest.mark.parametrize("case,heads,dtype", CASES, ids=[c[0] for c in CASES])
def test_dense_kernel_matches_float64(case, heads, dtype):
    gen = torch.Generator().manual_seed(2)
    n, d = 45, 9
    s, t = scores(n, heads, case, gen)
    adj = torch.rand(n, n, generator=gen).to(dtype)
    x_hat = F.normalize(torch.randn(n, d, generator=gen), dim=-1).to(dtype)
    x_hat[3] = 0.0  # a zero feature row: c_ij = 0
    grad = torch.randn(heads, n, n, generator=gen)
    leaves = [v.clone().to(DEVICE).requires_grad_() for v in (adj, s, t, x_hat)]
    out = dense_kernels.dense_coefficients(*leaves, negative_slope=0.2, dtype=torch.float32)
    out.backward(grad.to(DEVICE))

    a64, s64, t64, x64 = (v.double().requires_grad_() for v in (adj, s, t, x_hat))
    want = a64 + attention_graph(s64, t64, 0.2) + x64 @ x64.t()  # eq. 3's A + B + C (eq. 7)
    want.backward(grad.double())
    assert rel_err(out.cpu(), want) < TOL
    for got, ref in zip(leaves, (a64, s64, t64, x64), strict=True):
        assert rel_err(got.grad.cpu(), ref.grad) < (TOL if dtype == torch.float32 else 1e-2)


# The layer on both paths against eq. 3-7 ------------------------------------------------------


def _reference_layer(conv, x, adj):
    """Eq. 3 with float64 copies of conv's parameters: (A + B + C) x W^T + b."""
    params = {k: v.detach().double().requires_grad_() for k, v in conv.named_parameters()}
    x = x.double().requires_grad_()
    s = x @ (params["att_dst"][0] @ params["lin_dst.weight"]).t()  # att [1, H=1, C]: [N, 1]
    t = x @ (params["att_src"][0] @ params["lin_src.weight"]).t()
    x_hat = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    coef = adj.double() + attention_graph(s, t, conv.negative_slope)[0] + x_hat @ x_hat.t()
    out = coef @ (x @ params["lin.weight"].t()) + params["bias"]
    return out, x, params


def _sparse_graph(n: int, gen: torch.Generator):
    """Random edges on the first n - 5 nodes (5 isolated nodes), a duplicate edge and one
    stored self-loop; A dense as the complete path reads it (duplicates add up, a missing
    self-loop gets weight 1)."""
    src = torch.randint(0, n - 5, (3 * n,), generator=gen)
    dst = torch.randint(0, n - 5, (3 * n,), generator=gen)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    src, dst = torch.cat([src, src[:1], torch.tensor([2])]), torch.cat([dst, dst[:1],
                                                                        torch.tensor([2])])
    weight = torch.rand(src.numel(), generator=gen) + 0.5
    adj = torch.zeros(n, n, dtype=torch.float64).index_put((dst, src), weight.double(),
                                                           accumulate=True)  # fmt: skip
    has_loop = torch.zeros(n, dtype=torch.bool)
    has_loop[2] = True
    adj += torch.diag((~has_loop).double())
    return torch.stack([src, dst]), weight, adj


@pytest.mark.parametrize("path", ["dense", "complete"])
def test_layer_matches_eq3_float64(path):
    gen = torch.Generator().manual_seed(3)
    n = 40
    conv = AdaptiveGCNConv(12, 6, complete=True if path == "complete" else None)
    conv.dense_max_ratio = 0.0  # keep the sorted path at this size
    with torch.no_grad():
        conv.bias.normal_(generator=gen)
    x = torch.randn(n, 12, generator=gen)
    if path == "dense":
        adj = torch.rand(n, n, generator=gen)
        graph, ref_adj = (adj.to(DEVICE),), adj
    else:
        edge_index, weight, ref_adj = _sparse_graph(n, gen)
        graph = (edge_index.to(DEVICE), weight.to(DEVICE))
    grad = torch.randn(n, 6, generator=gen)
    conv = conv.to(DEVICE)
    xs = x.clone().to(DEVICE).requires_grad_()
    conv(xs, *graph).backward(grad.to(DEVICE))

    want, x64, params = _reference_layer(conv, x, ref_adj)
    want.backward(grad.double())
    assert rel_err(conv(xs, *graph).detach().cpu(), want) < TOL
    assert rel_err(xs.grad.cpu(), x64.grad) < TOL
    # Every weight's gradient at the scale of all weight gradients (the attention vectors'
    # gradients are small against lin's).
    scale = max(p.grad.abs().max().item() for p in params.values())
    for name, p in conv.named_parameters():
        assert rel_err(p.grad.cpu(), params[name].grad, scale) < TOL, name


# Kernel launches per forward + backward ---------------------------------------------------------


class _CountKernels(TorchDispatchMode):
    """Counts the aten ops that launch a kernel plus the Triton launches, one forward+backward.
    A minimal private counter (issue 21's definition); what runs inside our custom ops is
    counted op by op, not as one op."""

    NOT_KERNELS = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided",
                   "detach", "lift_fresh", "is_same_size", "promote_types", "sym_size",
                   "sym_stride", "sym_numel", "sym_storage_offset"}  # fmt: skip

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "agcn":  # run its implementation under the count
            from torch._library.custom_ops import OPDEFS

            with self:
                return OPDEFS[func._schema.name]._init_fn(*args, **kwargs)
        name = func.overloadpacket.__name__
        if not func.is_view and name not in self.NOT_KERNELS:
            self.ops.append(name)
        return func(*args, **kwargs)


class _CountedLaunch:
    def __init__(self, kernel, counter: _CountKernels):
        self.kernel, self.counter = kernel, counter

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.counter.ops.append("triton")
            with _disable_current_modes():  # the interpreter's own tensor copies launch nothing
                return launch(*args, **kwargs)

        return run


LAUNCHED = {complete_kernels: ("_block_sums", "_scan", "_forward_out", "_backward_rows",
                               "_backward_grads"),
            dense_kernels: ("_dense_forward", "_dense_backward")}  # fmt: skip


def count_kernels(monkeypatch, layer, x, *graph) -> list[str]:
    """Kernel ops of the second forward+backward on the same graph, gradients set to None
    between (zero_grad(set_to_none=True)). The input checks are left out: on a GPU they run
    once per tensor (conv_checks.check_finite)."""
    x = x.clone().requires_grad_()
    with monkeypatch.context() as m:  # the first call builds the per-graph caches; on the
        m.setenv("AGCN_KERNELS", "torch")  # PyTorch path it spares the interpreter's time
        out = layer(x, *graph)
    grad = torch.ones_like(out)
    out.backward(grad)
    layer.zero_grad(set_to_none=True)
    x.grad = None
    counter = _CountKernels()
    for module, names in LAUNCHED.items():
        for name in names:
            monkeypatch.setattr(module, name, _CountedLaunch(getattr(module, name), counter))
    check = conv_checks.check_finite

    def quiet_check(*args, **kwargs):
        with _disable_current_modes():
            return check(*args, **kwargs)

    monkeypatch.setattr("agcn_pyg.nn.conv.check_finite", quiet_check)
    monkeypatch.setattr("agcn_pyg.nn.conv_checks.check_finite", quiet_check)
    with counter:
        layer(x, *graph).backward(grad)
    return counter.ops


@pytest.mark.parametrize("heads, sizes", [(1, (1000, 8000)), (3, (1000, 2000))])
def test_complete_path_kernel_count(monkeypatch, heads, sizes):
    """<= 60 kernel ops, the same at two sizes (no blocks that grow with N); three heads in
    the same launches (smaller sizes: the interpreter runs a program per head)."""
    counts = {}
    for n in sizes:
        gen = torch.Generator().manual_seed(n)
        conv = AdaptiveGCNConv(16, 16, heads=heads, complete=True).to(DEVICE)
        x = torch.randn(n, 16, generator=gen).to(DEVICE)
        edge_index = torch.randint(0, n, (2, 16 * n), generator=gen).to(DEVICE)
        ops = count_kernels(monkeypatch, conv, x, edge_index)
        assert ops.count("triton") == 9, ops  # 3 forward, 6 backward
        counts[n] = len(ops)
    assert counts[sizes[0]] == counts[sizes[1]] <= 60, counts


def test_dense_path_kernel_count(monkeypatch):
    """At most DenseGATConv's kernel ops at N = 80, 256 -> 256 (counted the same way)."""
    from torch_geometric.nn import DenseGATConv

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(80, 256, generator=gen).to(DEVICE)
    adj = torch.rand(80, 80, generator=gen).to(DEVICE)
    ours = count_kernels(monkeypatch, AdaptiveGCNConv(256, 256).to(DEVICE), x, adj)
    anchor = count_kernels(monkeypatch, DenseGATConv(256, 256).to(DEVICE), x, adj)
    assert ours.count("triton") == 2, ours
    assert len(ours) <= len(anchor), (len(ours), len(anchor), ours)


@pytest.mark.slow
def test_compile_has_no_graph_break():
    """Both paths under torch.compile(fullgraph=True): the custom ops trace through their fake
    implementations and autograd (aot_eager: the tracing, without Inductor's codegen)."""
    gen = torch.Generator().manual_seed(5)
    n = 40
    dense = AdaptiveGCNConv(8, 8).to(DEVICE)
    complete = AdaptiveGCNConv(8, 8, complete=True).to(DEVICE)
    complete.dense_max_ratio = 0.0
    x = torch.randn(n, 8, generator=gen).to(DEVICE)
    adj = torch.rand(n, n, generator=gen).to(DEVICE)
    edge_index = torch.randint(0, n, (2, 4 * n), generator=gen).to(DEVICE)

    def step(x):
        return dense(x, adj) + complete(x, edge_index)

    xs = x.clone().requires_grad_()
    eager = step(xs)
    eager.sum().backward()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    xc = x.clone().requires_grad_()
    out = compiled(xc)
    out.sum().backward()
    assert rel_err(out.detach().cpu(), eager.detach().cpu().double()) < TOL
    assert rel_err(xc.grad.cpu(), xs.grad.cpu().double()) < TOL


@pytest.mark.slow
def test_kernels_compile_for_an_h100(tmp_path):
    """The interpreter runs any Python; Triton's compiler is stricter (loop-carried types,
    block shapes). Compiled here for sm_90 without a GPU, in a process without the
    interpreter."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a real compile, not a cached one
    proc = subprocess.run([sys.executable, str(root / "tests" / "compile_kernels.py")],
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("compiled") == 7, proc.stdout
