"""The sorted O(N log N) attention (agcn_pyg.complete) against eq. 4-6 written as dense
[N, N] matrices in float64."""

import pytest
import torch
import torch.nn.functional as F

from agcn_pyg.complete import complete_attention


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
