r"""Triton kernels of the dense path: :math:`\mathbf{A} + \mathbf{B} + \mathbf{C}` (eq. 3-7) as
one kernel a pass, per head.

At the dense path's sizes (a label graph of 80 ... 10 000 nodes) the PyTorch path spends its time
launching a dozen kernels over :obj:`[N, N]` (scores, LeakyReLU, softmax, eq. 6's maximum and
diagonal, :math:`\hat{\mathbf{X}}\hat{\mathbf{X}}^\top`, the sums). Here one kernel writes
:math:`\mathbf{A} + \mathbf{B} + \mathbf{C}` once, the product with :math:`\mathbf{H}` staying a
cuBLAS matrix product:

* eq. 4-5: :math:`e_{ij} = \mathrm{LeakyReLU}(s_i + t_j)`; the row maximum is known without a
  pass, :math:`m_i = \mathrm{LeakyReLU}(s_i + \max_j t_j)` (LeakyReLU is increasing), so a row
  block takes one pass for :math:`Z_i = \sum_j e^{e_{ij} - m_i}` and one that writes;
* eq. 6: :math:`\max_k \alpha_{ik} = e^{m_i - m_i} / Z_i = 1 / Z_i`, added on the diagonal;
* eq. 7: :math:`c_{ij} = \hat{\mathbf{x}}_i^\top\hat{\mathbf{x}}_j` as a tile product in the same
  loop (IEEE float32, not TF32: the float32 bar is 1e-5 against float64).

The backward kernel recomputes :math:`\alpha` from the saved :math:`Z` (``[N, H]``) and forms
the softmax backward :math:`\partial L / \partial e_{ij} = \alpha_{ij}(\gamma_{ij} -
\sum_k \alpha_{ik}\gamma_{ik})` with :math:`\gamma_{ij} = G_{ij} + [t_j = \max t]\,G_{ii} / |T|`
(eq. 6's maximum splits its gradient evenly between tied maxima, as :func:`torch.amax` does);
row sums give :math:`\partial L / \partial s`, per-row-block column sums
:math:`\partial L / \partial t` (summed by one :func:`torch.sum`, deterministic).
:math:`\partial L / \partial \hat{\mathbf{X}} = (\mathbf{G} + \mathbf{G}^\top)\hat{\mathbf{X}}`
and :math:`\partial L / \partial \mathbf{A} = \mathbf{G}` are matrix products and sums.

Registered as ``torch.ops.agcn.dense_coefficients`` with fake and autograd implementations.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from agcn_pyg.nn.kernels import interpreting

__all__ = ["dense_coefficients"]


@triton.jit
def _leaky(x, slope):
    return tl.where(x > 0, x, x * slope)


@triton.jit
def _top_and_ties(t_ptr, head, N, H, BLOCK_N: tl.constexpr):
    """max_j t_j of one head and how many sources reach it."""
    top = tl.full([BLOCK_N], float("-inf"), tl.float32)
    for c0 in range(0, N, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        t = tl.load(t_ptr + cols * H + head, mask=cols < N, other=float("-inf")).to(tl.float32)
        top = tl.maximum(top, t)
    top_all = tl.max(top, axis=0)
    ties = tl.zeros([BLOCK_N], tl.float32)
    for c0 in range(0, N, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        t = tl.load(t_ptr + cols * H + head, mask=cols < N, other=float("-inf")).to(tl.float32)
        ties += (t == top_all).to(tl.float32)
    return top_all, tl.sum(ties, axis=0)


@triton.jit
def _weights_tile(s, m, t_ptr, cols, cmask, head, H, slope):
    """exp(e_ij - m_i) of one tile (0 off the graph), and LeakyReLU'(s_i + t_j)."""
    t = tl.load(t_ptr + cols * H + head, mask=cmask, other=0.0).to(tl.float32)
    pre = s[:, None] + t[None, :]
    w = tl.exp(_leaky(pre, slope) - m[:, None])
    w = tl.where(cmask[None, :], w, 0.0)
    return w, tl.where(pre > 0, 1.0, slope), t


@triton.jit
def _dense_forward(
    adj_ptr, s_ptr, t_ptr, xh_ptr, coef_ptr, z_ptr,
    N, H, D, stride_a0, stride_a1, slope,
    HAS_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    head = tl.program_id(1)
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rmask = rows < N
    top, _ties = _top_and_ties(t_ptr, head, N, H, BLOCK_N)
    s = tl.load(s_ptr + rows * H + head, mask=rmask, other=0.0).to(tl.float32)
    m = _leaky(s + top, slope)  # the row maximum of e_ij (eq. 4)
    z = tl.zeros([BLOCK_M], tl.float32)
    for c0 in range(0, N, BLOCK_N):  # eq. 5's normaliser
        cols = c0 + tl.arange(0, BLOCK_N)
        w, _slopes, _t = _weights_tile(s, m, t_ptr, cols, cols < N, head, H, slope)
        z += tl.sum(w, axis=1)
    z = tl.where(rmask, z, 1.0)
    inv_z = 1.0 / z
    for c0 in range(0, N, BLOCK_N):
        cols = (c0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        cmask = cols < N
        mask = rmask[:, None] & cmask[None, :]
        w, _slopes, _t = _weights_tile(s, m, t_ptr, cols, cmask, head, H, slope)
        diagonal = rows[:, None] == cols[None, :]
        coef = (w + diagonal.to(tl.float32)) * inv_z[:, None]  # alpha (eq. 5) + eq. 6
        coef += tl.load(adj_ptr + rows[:, None] * stride_a0 + cols[None, :] * stride_a1,
                        mask=mask, other=0.0).to(tl.float32)  # A  # fmt: skip
        if HAS_C:  # eq. 7: x_hat_i . x_hat_j
            acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                dims = d0 + tl.arange(0, BLOCK_D)
                dmask = dims < D
                xi = tl.load(xh_ptr + rows[:, None] * D + dims[None, :],
                             mask=rmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
                xj = tl.load(xh_ptr + cols[None, :] * D + dims[:, None],
                             mask=cmask[None, :] & dmask[:, None], other=0.0).to(tl.float32)
                acc += tl.dot(xi, xj, input_precision="ieee")
            coef += acc
        tl.store(coef_ptr + (head * N + rows[:, None]) * N + cols[None, :], coef, mask=mask)
    tl.store(z_ptr + rows * H + head, z, mask=rmask)


@triton.jit
def _dense_backward(
    g_ptr, s_ptr, t_ptr, z_ptr, gs_ptr, gt_part_ptr,
    N, H, slope,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dL/ds_i (rows) and this row block's share of dL/dt_j, from G = dL/d(A + B + C)."""
    head = tl.program_id(1)
    block = tl.program_id(0)
    rows = (block * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rmask = rows < N
    top, ties = _top_and_ties(t_ptr, head, N, H, BLOCK_N)
    s = tl.load(s_ptr + rows * H + head, mask=rmask, other=0.0).to(tl.float32)
    m = _leaky(s + top, slope)
    inv_z = 1.0 / tl.load(z_ptr + rows * H + head, mask=rmask, other=1.0)
    g_base = g_ptr + head.to(tl.int64) * N * N
    # dL/d max_k alpha_ik = G_ii, shared by the tied maxima.
    g_top = tl.load(g_base + rows * N + rows, mask=rmask, other=0.0).to(tl.float32) / ties
    row_term = tl.zeros([BLOCK_M], tl.float32)  # sum_k alpha_ik gamma_ik
    for c0 in range(0, N, BLOCK_N):
        cols = (c0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        cmask = cols < N
        w, _slopes, t = _weights_tile(s, m, t_ptr, cols, cmask, head, H, slope)
        g = tl.load(g_base + rows[:, None] * N + cols[None, :],
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        gamma = g + tl.where((t == top)[None, :], g_top[:, None], 0.0)
        row_term += tl.sum(w * inv_z[:, None] * gamma, axis=1)
    gs = tl.zeros([BLOCK_M], tl.float32)
    for c0 in range(0, N, BLOCK_N):
        cols = (c0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        cmask = cols < N
        w, slope_ij, t = _weights_tile(s, m, t_ptr, cols, cmask, head, H, slope)
        g = tl.load(g_base + rows[:, None] * N + cols[None, :],
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        gamma = g + tl.where((t == top)[None, :], g_top[:, None], 0.0)
        d_e = w * inv_z[:, None] * (gamma - row_term[:, None])  # softmax backward
        d_e = tl.where(rmask[:, None], d_e * slope_ij, 0.0)  # through LeakyReLU
        gs += tl.sum(d_e, axis=1)
        tl.store(gt_part_ptr + (block * N + cols) * H + head, tl.sum(d_e, axis=0), mask=cmask)
    tl.store(gs_ptr + rows * H + head, gs, mask=rmask)


def _blocks(n: int) -> dict:
    """Tiles: 32 x 64 on a GPU, one row block for N <= 128 (the backward then writes dL/dt
    without a sum over row blocks); under the interpreter one tile a graph of the tests' size."""
    size = min(128, max(16, triton.next_power_of_2(n)))
    if interpreting():
        return dict(BLOCK_M=size, BLOCK_N=size, BLOCK_D=32)
    return dict(BLOCK_M=size if n <= 128 else 32, BLOCK_N=64, BLOCK_D=32)


@torch.library.custom_op("agcn::dense_coefficients", mutates_args=())
def _dense_coefficients_op(
    adj: Tensor, s: Tensor, t: Tensor, x_hat: Tensor | None, negative_slope: float,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    n, heads = s.shape
    coef = torch.empty(heads, n, n, dtype=dtype, device=s.device)
    z = torch.empty(n, heads, dtype=torch.float32, device=s.device)
    bs = _blocks(n)
    d = 0 if x_hat is None else x_hat.size(1)
    _dense_forward[(triton.cdiv(n, bs["BLOCK_M"]), heads)](
        adj, s, t, adj if x_hat is None else x_hat, coef, z, n, heads, d,
        adj.stride(0), adj.stride(1), negative_slope, HAS_C=x_hat is not None, **bs,
    )  # fmt: skip
    return coef, z


@_dense_coefficients_op.register_fake
def _(adj, s, t, x_hat, negative_slope, dtype):
    n, heads = s.shape
    return s.new_empty(heads, n, n, dtype=dtype), s.new_empty(n, heads, dtype=torch.float32)


@torch.library.custom_op("agcn::dense_coefficients_backward", mutates_args=())
def _dense_backward_op(
    grad: Tensor, s: Tensor, t: Tensor, z: Tensor, negative_slope: float
) -> tuple[Tensor, Tensor]:
    n, heads = s.shape
    bs = _blocks(n)
    blocks = triton.cdiv(n, bs["BLOCK_M"])
    grad_s = torch.empty_like(s)
    grad_t_parts = s.new_empty(blocks, n, heads, dtype=torch.float32)
    _dense_backward[(blocks, heads)](
        grad, s, t, z, grad_s, grad_t_parts, n, heads, negative_slope,
        BLOCK_M=bs["BLOCK_M"], BLOCK_N=bs["BLOCK_N"],
    )  # fmt: skip
    grad_t = grad_t_parts[0] if blocks == 1 else grad_t_parts.sum(0)
    return grad_s, grad_t.to(t.dtype)


@_dense_backward_op.register_fake
def _(grad, s, t, z, negative_slope):
    return torch.empty_like(s), torch.empty_like(t)


def _setup_context(ctx, inputs, output):
    adj, s, t, x_hat, slope, _ = inputs
    ctx.save_for_backward(s, t, x_hat, output[1])
    ctx.slope = slope
    ctx.adj_dtype = adj.dtype
    ctx.set_materialize_grads(False)  # no zero gradient made for Z


def _backward(ctx, grad, _grad_z):
    s, t, x_hat, z = ctx.saved_tensors
    if grad is None:
        return None, None, None, None, None, None
    grad = grad.contiguous()
    grad_s, grad_t = torch.ops.agcn.dense_coefficients_backward(grad, s, t, z, ctx.slope)
    needs_adj, needs_x = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
    g = grad.sum(0) if (needs_adj or needs_x) and grad.size(0) > 1 else grad[0]
    grad_adj = g.to(ctx.adj_dtype) if needs_adj else None
    grad_x = None
    if needs_x:  # C = x_hat x_hat^T
        g = g.to(x_hat.dtype)
        grad_x = torch.addmm(g @ x_hat, g.t(), x_hat)
    return grad_adj, grad_s, grad_t, grad_x, None, None


_dense_coefficients_op.register_autograd(_backward, setup_context=_setup_context)


def dense_coefficients(
    adj: Tensor, s_dst: Tensor, s_src: Tensor, x_hat: Tensor | None = None,
    negative_slope: float = 0.2, dtype: torch.dtype | None = None,
) -> Tensor:  # fmt: skip
    r""":math:`\mathbf{A} + \mathbf{B} + \mathbf{C}` of a dense adjacency read as the complete
    graph with every self-loop (eq. 3-7), per head, in one kernel:

    .. math::
        a_{ij} + \mathrm{softmax}_j\,\mathrm{LeakyReLU}(s_i + t_j)
        + [i = j]\max_k \alpha_{ik} + \hat{\mathbf{x}}_i^\top \hat{\mathbf{x}}_j.

    Args:
        adj (torch.Tensor): :math:`\mathbf{A}`, :obj:`[N, N]` (``adj[i, j]``: :math:`j \to i`).
        s_dst (torch.Tensor): Target halves :math:`s_i` of eq. 4's score, :obj:`[N, H]`.
        s_src (torch.Tensor): Source halves :math:`t_j`, :obj:`[N, H]`.
        x_hat (torch.Tensor, optional): Unit rows of eq. 7, :obj:`[N, d]`; :obj:`None` leaves
            :math:`\mathbf{C}` out. (default: :obj:`None`)
        negative_slope (float, optional): LeakyReLU's slope, :math:`> 0` (so that the row
            maximum is at :math:`\max_j t_j`). (default: :obj:`0.2`)
        dtype (torch.dtype, optional): The result's dtype. (default: :obj:`adj`'s)

    Returns:
        :obj:`[H, N, N]`; the attention is computed in float32 whatever the dtype.
    """
    n = adj.size(0)
    if adj.shape != (n, n):
        raise ValueError(f"'adj' must be [N, N] (got shape {list(adj.shape)})")
    if s_dst.dim() != 2 or s_dst.size(0) != n or s_src.shape != s_dst.shape:
        raise ValueError(f"'s_dst' and 's_src' must be [N, H] with N = {n} (got "
                         f"{list(s_dst.shape)} and {list(s_src.shape)})")  # fmt: skip
    if x_hat is not None and (x_hat.dim() != 2 or x_hat.size(0) != n):
        raise ValueError(f"'x_hat' must be [N, d] with N = {n} (got {list(x_hat.shape)})")
    if not negative_slope > 0.0:
        raise ValueError(f"'negative_slope' must be > 0 (got {negative_slope})")
    dtype = dtype or adj.dtype
    if n == 0:
        return adj.new_zeros(s_dst.size(1), 0, 0, dtype=dtype)
    coef, _ = torch.ops.agcn.dense_coefficients(
        adj, s_dst.contiguous(), s_src.contiguous(),
        None if x_hat is None else x_hat.contiguous(), float(negative_slope), dtype,
    )  # fmt: skip
    return coef
