"""Multi-head AdaptiveGCNConv on the Triton kernels (AGCN_KERNELS=triton) against the float64
loop over heads, nodes and edges of tests/test_heads.py (eq. 3-7 per head), on the edge,
complete and dense paths, forward and backward, heads=3 with concat True and False.

On a CPU the kernels run under Triton's interpreter (tests/conftest.py switches it on before
Triton's import), so the graphs are tiny.
"""

from __future__ import annotations

import os

import pytest
import torch
from test_heads import dense_pairs, edge_tensors, oracle, random_graph, with_loops

from agcn_pyg import AdaptiveGCNConv
from agcn_pyg.nn.kernels import complete as complete_kernels
from agcn_pyg.nn.kernels import edge as edge_kernels

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 2e-5  # float32 kernels against float64, relative to the largest entry


@pytest.fixture
def kernels(monkeypatch):
    """AGCN_KERNELS=triton, and a count of the calls each path's Triton op gets."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 from before Triton's import (tests/conftest.py)")
    monkeypatch.setenv("AGCN_KERNELS", "triton")
    from agcn_pyg.nn.kernels import dense as dense_kernels

    calls = {}

    def counted(fn, name):
        def call(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)

        return call

    for module, name in ((edge_kernels, "edge_attention"),
                         (complete_kernels, "complete_attention"),
                         (dense_kernels, "dense_coefficients")):
        monkeypatch.setattr(module, name, counted(getattr(module, name), name))
    return calls


def layer(concat: bool, **kw) -> AdaptiveGCNConv:
    torch.manual_seed(1)
    conv = AdaptiveGCNConv(5, 3, heads=3, concat=concat, residual=True, **kw).to(DEVICE)
    with torch.no_grad():
        conv.bias.normal_()
        conv.att_src.mul_(3.0)  # scores of order 1: softmaxes far from uniform
        conv.att_dst.mul_(3.0)
    return conv


def assert_matches_oracle(conv, x, graph, pairs):
    """Output and the gradients of x and every parameter against the float64 loop."""
    x = x.to(DEVICE).requires_grad_()
    out = conv(x, *(t.to(DEVICE) for t in graph))
    x64 = x.detach().cpu().double().requires_grad_()
    want = oracle(conv.cpu(), x64, x64, pairs)
    conv.to(DEVICE)
    assert (out.detach().cpu().double() - want).abs().max() <= TOL * want.abs().max()
    grad = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params = list(conv.parameters())
    got = torch.autograd.grad(out, [x, *params], grad.to(out))
    (want * grad).sum().backward()
    names = ["x"] + [name for name, _ in conv.named_parameters()]
    wants = [x64.grad] + [p.grad for p in params]  # the oracle's, through .to(float64)
    scale = max(w.abs().max() for w in wants)
    for name, g, w in zip(names, got, wants, strict=True):
        assert (g.cpu().double() - w.double()).abs().max() <= TOL * scale, name


def features(n: int) -> torch.Tensor:
    # No zero row: cos (eq. 7) has no gradient there (test_heads covers its value).
    return torch.randn(n, 5, generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize("concat", [True, False])
def test_edge_path_heads(kernels, concat):
    n = 6
    edges = random_graph(n)
    index, weight = edge_tensors(edges)
    conv = layer(concat)
    assert_matches_oracle(conv, features(n), (index, weight.float()), with_loops(edges, n))
    assert kernels == {"edge_attention": 1}  # every head in one call


@pytest.mark.parametrize("concat", [True, False])
def test_complete_path_heads(kernels, concat):
    n = 7
    edges = random_graph(n, p=0.3)
    index, weight = edge_tensors(edges)
    conv = layer(concat, complete=True)
    conv.dense_max_ratio = 0.0  # the sorted path, not the small-graph dense one
    pairs = {(j, i): edges.get((j, i), 0.0) for i in range(n) for j in range(n)}
    pairs.update({k: v for k, v in with_loops(edges, n).items() if k[0] == k[1]})
    assert_matches_oracle(conv, features(n), (index, weight.float()), pairs)
    assert kernels == {"complete_attention": 1}  # every head in one call, no loop


@pytest.mark.parametrize("concat", [True, False])
def test_dense_path_heads(kernels, concat):
    n = 5
    gen = torch.Generator().manual_seed(5)
    adj = torch.rand(n, n, generator=gen) * (torch.rand(n, n, generator=gen) < 0.5)
    conv = layer(concat)
    assert_matches_oracle(conv, features(n), (adj,), dense_pairs(adj.double()))
    assert kernels == {"dense_coefficients": 1}  # [H, N, N] from one call


def test_dense_batch_falls_back_to_pytorch(kernels):
    """A batch [B, N, N] with a mask is not the kernel's case: the PyTorch path, same result."""
    n = 4
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, n, 5, generator=gen).to(DEVICE)
    adj = torch.rand(2, n, n, generator=gen).to(DEVICE)
    mask = torch.tensor([[True] * n, [True] * (n - 1) + [False]], device=DEVICE)
    conv = layer(False)
    out = conv(x, adj, mask)
    assert kernels == {}
    for b in range(2):
        nodes = [i for i in range(n) if mask[b, i]]
        want = oracle(conv.cpu(), x[b].cpu().double(), x[b].cpu().double(),
                      dense_pairs(adj[b].cpu().double(), nodes))
        conv.to(DEVICE)
        assert (out[b, nodes].cpu().double() - want[nodes]).abs().max() <= TOL * want.abs().max()


def test_fill_value_reduction_falls_back_to_pytorch(kernels, monkeypatch):
    """fill_value='mean' (PyG's reduction of a node's incoming weights for its added loop) is
    not the edge kernels' case: the PyTorch path, the same result as AGCN_KERNELS=torch."""
    n = 5
    index, weight = edge_tensors(random_graph(n))
    conv = layer(True, fill_value="mean")
    x, graph = features(n).to(DEVICE), (index.to(DEVICE), weight.float().to(DEVICE))
    out = conv(x, *graph)
    assert kernels == {}
    monkeypatch.setenv("AGCN_KERNELS", "torch")
    torch.testing.assert_close(out, conv(x, *graph), rtol=0, atol=0)
