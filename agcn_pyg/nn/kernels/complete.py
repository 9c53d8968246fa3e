r"""Triton kernels of the complete path's attention (eq. 4-6 over every pair, sorted).

The same algorithm as :mod:`agcn_pyg.nn.complete` (read its docstring first): for every head,
the sources sorted by :math:`t`; target :math:`i`'s softmax is a suffix sum (sources with
:math:`s_i + t_j > 0`) and a prefix sum (the rest) of per-source terms, each scaled by a
per-target factor, everything scaled by the row maximum :math:`m_i = \mathrm{LeakyReLU}(s_i +
\max_j t_j)`. Here the sums and their gathers are fused into three kernels a pass:

1. ``_block_sums``: per block of ``ROWS`` sorted keys, the weighted sums of the values (float64
   accumulators in registers; out: a float64 ``[2, H, N / ROWS, C + 1]`` array, 1/``ROWS`` of
   the data);
2. ``_scan``: per block again, the block's offsets summed from those block sums, then the prefix
   sums (negative side) and suffix sums (positive side) in float64 registers, each rounded once
   into a float32 ``[H, N, C]`` buffer (no cancellation: a prefix is stored, never a
   difference of two);
3. a gather kernel per use, each finding its queries' split points by a binary search over the
   sorted keys: the forward output of eq. 5-6 (``_forward_out``), the backward's
   row dot products (``_backward_rows``) and the gradients of :math:`\mathbf{H}` and :math:`t`
   (``_backward_grads``), each reading the two buffers at each query's split point.

Float32 data, float64 accumulation: each stored sum is its float64 value rounded once, so the
result is within a few float32 ulps of float64 whatever :math:`N` (the bar: 1e-5 at
:math:`N = 10^6`); float64 lives only in registers and in the block sums. Nothing of size
:obj:`[N, C]` is saved for the backward pass: it saves :math:`\mathbf{H}`, the scores and one
:obj:`[H, N]` index vector (the sort of :math:`t`), and recomputes the forward's sums (as
FlashAttention recomputes its coefficients).

Layout for several heads: :obj:`h [N, H, C]`, scores :obj:`[N, H]`, one sort per head. Every
node has its self-loop here (eq. 6's term for every :math:`i`); graphs with nodes that lack it
take the PyTorch path (:func:`agcn_pyg.nn.complete.complete_attention`).

Registered as ``torch.ops.agcn.complete_attention`` (with a fake implementation and autograd),
so :func:`torch.compile` traces it without a graph break and CUDA graphs capture it: no host
sync, all shapes known from the inputs'.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from agcn_pyg.nn.kernels import interpreting

__all__ = ["complete_attention"]


# Kernels -------------------------------------------------------------------------------------


@triton.jit
def _leaky(x, slope):
    return tl.where(x > 0, x, x * slope)


@triton.jit
def _top(t_ptr, order_ptr, head, N, H):
    """max_j t_j of one head: the last source of the sort (no separate reduction)."""
    last = tl.load(order_ptr + head * N + N - 1)
    return tl.load(t_ptr + last * H + head).to(tl.float32)


@triton.jit
def _weights(key_ptr, z_ptr, idx, rmask, head, top, slope, H, TARGET_KEYS: tl.constexpr):
    """Per-key weights (w_pos, w_neg) of the sums, float64, zero for rows past the end.

    Forward (keys = sources j): exp(t_j - top) and exp(slope (t_j - top)).
    Backward (keys = targets i): exp(a_i - m_i) / Z_i and exp(slope a_i - m_i) / Z_i with
    a_i = s_i + top, m_i = LeakyReLU(a_i); all of them <= 1.
    """
    key = tl.load(key_ptr + idx * H + head, mask=rmask, other=0.0).to(tl.float32)
    if TARGET_KEYS:
        z = tl.load(z_ptr + idx * H + head, mask=rmask, other=1.0)
        a = key + top
        m = _leaky(a, slope)
        w_pos = tl.exp(a - m) / z
        w_neg = tl.exp(slope * a - m) / z
    else:
        w_pos = tl.exp(key - top)
        w_neg = tl.exp(slope * (key - top))
    w_pos = tl.where(rmask, w_pos, 0.0).to(tl.float64)
    w_neg = tl.where(rmask, w_neg, 0.0).to(tl.float64)
    return w_pos, w_neg


@triton.jit
def _block_sums(
    key_ptr, t_ptr, order_ptr, top_order_ptr, z_ptr, v_ptr, u_ptr, part_ptr,
    N, H, C, NB, slope,
    ROWS: tl.constexpr, SUB: tl.constexpr, BLOCK_C: tl.constexpr,
    TARGET_KEYS: tl.constexpr, HAS_U: tl.constexpr,
):  # fmt: skip
    """part[side, head, b, :C] = sum over block b's keys of w_side v, part[.., C] the same
    for the scalar values u (1 without them); side 0 = negative, 1 = positive."""
    b = tl.program_id(0)
    head = tl.program_id(1)
    cb = tl.program_id(2)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    top = _top(t_ptr, top_order_ptr, head, N, H)
    acc_neg = tl.zeros([BLOCK_C], tl.float64)
    acc_pos = tl.zeros([BLOCK_C], tl.float64)
    u_neg = tl.zeros([SUB], tl.float64)
    u_pos = tl.zeros([SUB], tl.float64)
    for r0 in range(b * ROWS, b * ROWS + ROWS, SUB):
        rows = (r0 + tl.arange(0, SUB)).to(tl.int64)  # (H N C may pass 2^31)
        rmask = rows < N
        idx = tl.load(order_ptr + head * N + rows, mask=rmask, other=0)
        w_pos, w_neg = _weights(key_ptr, z_ptr, idx, rmask, head, top, slope, H, TARGET_KEYS)
        vmask = rmask[:, None] & cmask[None, :]
        v = tl.load(v_ptr + (idx * H + head)[:, None] * C + cols[None, :], mask=vmask, other=0.0)
        v = v.to(tl.float64)
        acc_neg += tl.sum(w_neg[:, None] * v, axis=0)
        acc_pos += tl.sum(w_pos[:, None] * v, axis=0)
        if HAS_U:
            u = tl.load(u_ptr + idx * H + head, mask=rmask, other=0.0).to(tl.float64)
            u_neg += w_neg * u
            u_pos += w_pos * u
        else:
            u_neg += w_neg
            u_pos += w_pos
    base_neg = (head * NB + b) * (C + 1)
    base_pos = ((H + head) * NB + b) * (C + 1)
    tl.store(part_ptr + base_neg + cols, acc_neg, mask=cmask)
    tl.store(part_ptr + base_pos + cols, acc_pos, mask=cmask)
    if cb == 0:
        tl.store(part_ptr + base_neg + C, tl.sum(u_neg, axis=0))
        tl.store(part_ptr + base_pos + C, tl.sum(u_pos, axis=0))


@triton.jit
def _scan(
    key_ptr, t_ptr, order_ptr, top_order_ptr, z_ptr, v_ptr, u_ptr, part_ptr,
    p_ptr, s_ptr, pu_ptr, su_ptr,
    N, H, C, NB, slope,
    ROWS: tl.constexpr, SUB: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr,
    TARGET_KEYS: tl.constexpr, HAS_U: tl.constexpr,
):  # fmt: skip
    """P[head, r] = sum of w_neg v over sorted keys <= r (inclusive prefix), S[head, r] = sum of
    w_pos v over keys >= r (inclusive suffix); float64 from the block offsets, stored float32."""
    b = tl.program_id(0)
    head = tl.program_id(1)
    cb = tl.program_id(2)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    top = _top(t_ptr, top_order_ptr, head, N, H)
    # The block's offsets from the block sums (N / ROWS rows, read from L2 by every program;
    # no separate scan launch): negative side, the sum of every block before b; positive
    # side, of b and every block after it.
    carry = tl.zeros([BLOCK_C], tl.float64)
    rest = tl.zeros([BLOCK_C], tl.float64)
    carry_u = tl.zeros([1], tl.float64)
    rest_u = tl.zeros([1], tl.float64)
    for b0 in range(0, NB, BLOCK_B):
        blocks = b0 + tl.arange(0, BLOCK_B)
        before = blocks < b
        after = (blocks >= b) & (blocks < NB)
        row_neg = (head * NB + blocks) * (C + 1)
        row_pos = ((H + head) * NB + blocks) * (C + 1)
        carry += tl.sum(tl.load(part_ptr + row_neg[:, None] + cols[None, :],
                                mask=before[:, None] & cmask[None, :], other=0.0), axis=0)
        rest += tl.sum(tl.load(part_ptr + row_pos[:, None] + cols[None, :],
                               mask=after[:, None] & cmask[None, :], other=0.0), axis=0)
        carry_u += tl.sum(tl.load(part_ptr + row_neg + C, mask=before, other=0.0), axis=0)
        rest_u += tl.sum(tl.load(part_ptr + row_pos + C, mask=after, other=0.0), axis=0)
    for r0 in range(b * ROWS, b * ROWS + ROWS, SUB):
        rows = (r0 + tl.arange(0, SUB)).to(tl.int64)  # (H N C may pass 2^31)
        rmask = rows < N
        idx = tl.load(order_ptr + head * N + rows, mask=rmask, other=0)
        w_pos, w_neg = _weights(key_ptr, z_ptr, idx, rmask, head, top, slope, H, TARGET_KEYS)
        vmask = rmask[:, None] & cmask[None, :]
        v = tl.load(v_ptr + (idx * H + head)[:, None] * C + cols[None, :], mask=vmask, other=0.0)
        v = v.to(tl.float64)
        neg = w_neg[:, None] * v
        pos = w_pos[:, None] * v
        prefix = tl.cumsum(neg, axis=0) + carry[None, :]
        suffix = tl.cumsum(pos, axis=0, reverse=True) + (rest - tl.sum(pos, axis=0))[None, :]
        out = (head * N + rows)[:, None] * C + cols[None, :]
        tl.store(p_ptr + out, prefix.to(tl.float32), mask=vmask)
        tl.store(s_ptr + out, suffix.to(tl.float32), mask=vmask)
        carry += tl.sum(neg, axis=0)
        rest -= tl.sum(pos, axis=0)
        if HAS_U:
            u = tl.load(u_ptr + idx * H + head, mask=rmask, other=0.0).to(tl.float64)
            un, up = w_neg * u, w_pos * u
        else:
            un, up = w_neg, w_pos
        prefix_u = tl.cumsum(un, axis=0) + carry_u  # ([SUB] + [1])
        suffix_u = tl.cumsum(up, axis=0, reverse=True) + (rest_u - tl.sum(up, axis=0))
        umask = rmask & (cb == 0)
        tl.store(pu_ptr + head * N + rows, prefix_u.to(tl.float32), mask=umask)
        tl.store(su_ptr + head * N + rows, suffix_u.to(tl.float32), mask=umask)
        carry_u += tl.sum(un, axis=0)
        rest_u -= tl.sum(up, axis=0)


@triton.jit
def _split_parts(pu_ptr, su_ptr, key_ptr, order_ptr, bound, head, qmask, N, H, STEPS,
                 BLOCK_Q: tl.constexpr):  # fmt: skip
    """Each query's split k, the number of sorted keys <= bound (a binary search: STEPS =
    bit length of N), and the scalar sums below (prefix k - 1) and above (suffix k) it."""
    k = tl.zeros([BLOCK_Q], tl.int64)
    hi = k + N
    for _ in range(STEPS):
        active = qmask & (k < hi)
        mid = (k + hi) // 2
        idx = tl.load(order_ptr + head * N + mid, mask=active, other=0)
        key = tl.load(key_ptr + idx * H + head, mask=active, other=0.0).to(tl.float32)
        right = active & (key <= bound)
        k = tl.where(right, mid + 1, k)
        hi = tl.where(active & ~right, mid, hi)
    has_below = qmask & (k > 0)
    has_above = qmask & (k < N)
    below = tl.load(pu_ptr + head * N + k - 1, mask=has_below, other=0.0)
    above = tl.load(su_ptr + head * N + k, mask=has_above, other=0.0)
    return k, has_below, has_above, below, above


@triton.jit
def _row_scaling(s_ptr, q, qmask, head, top, slope, H):
    """s_i, a_i = s_i + top and f_i = exp(slope a_i - m_i), the negative side's per-target
    factor."""
    s = tl.load(s_ptr + q * H + head, mask=qmask, other=0.0).to(tl.float32)
    a = s + top
    return s, a, tl.exp(slope * a - _leaky(a, slope))


@triton.jit
def _forward_out(
    h_ptr, s_ptr, t_ptr, order_ptr, p_ptr, s_sum_ptr, pu_ptr, su_ptr, out_ptr,
    N, H, C, slope, STEPS, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """out_i = (S_i + f_i P_i) / Z_i + h_i / Z_i (eq. 5, and eq. 6's max_k alpha_ik = 1/Z_i)."""
    head = tl.program_id(1)
    q = (tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    qmask = q < N
    top = _top(t_ptr, order_ptr, head, N, H)
    s, a, f = _row_scaling(s_ptr, q, qmask, head, top, slope, H)
    k, has_below, has_above, below_u, above_u = _split_parts(
        pu_ptr, su_ptr, t_ptr, order_ptr, -s, head, qmask, N, H, STEPS, BLOCK_Q)
    inv_z = 1.0 / tl.where(qmask, above_u + f * below_u, 1.0)  # eq. 5's normaliser, >= 1
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols[None, :] < C
        at = (head * N + k)[:, None] * C + cols[None, :]
        below = tl.load(p_ptr + at - C, mask=has_below[:, None] & cmask, other=0.0)
        above = tl.load(s_sum_ptr + at, mask=has_above[:, None] & cmask, other=0.0)
        rows = (q * H + head)[:, None] * C + cols[None, :]
        hv = tl.load(h_ptr + rows, mask=qmask[:, None] & cmask, other=0.0).to(tl.float32)
        out = (above + f[:, None] * below + hv) * inv_z[:, None]
        tl.store(out_ptr + rows, out, mask=qmask[:, None] & cmask)


@triton.jit
def _backward_rows(
    g_ptr, h_ptr, s_ptr, t_ptr, order_ptr, p_ptr, s_sum_ptr, pu_ptr, su_ptr,
    z_ptr, gs_ptr, c_ptr, stats_ptr,
    N, H, C, slope, STEPS, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Per target i: Z_i, dL/ds_i, c_i = sum_k alpha_ik gamma_ik (the softmax backward's row
    term), eq. 6's share g_i.h_i LeakyReLU'(a_i) / Z_i, and whether t_i is the maximum."""
    head = tl.program_id(1)
    q = (tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    qmask = q < N
    top = _top(t_ptr, order_ptr, head, N, H)
    s, a, f = _row_scaling(s_ptr, q, qmask, head, top, slope, H)
    k, has_below, has_above, below_u, above_u = _split_parts(
        pu_ptr, su_ptr, t_ptr, order_ptr, -s, head, qmask, N, H, STEPS, BLOCK_Q)
    z = tl.where(qmask, above_u + f * below_u, 1.0)
    g_above = tl.zeros([BLOCK_Q], tl.float32)
    g_below = tl.zeros([BLOCK_Q], tl.float32)
    g_self = tl.zeros([BLOCK_Q], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols[None, :] < C
        at = (head * N + k)[:, None] * C + cols[None, :]
        below = tl.load(p_ptr + at - C, mask=has_below[:, None] & cmask, other=0.0)
        above = tl.load(s_sum_ptr + at, mask=has_above[:, None] & cmask, other=0.0)
        rows = (q * H + head)[:, None] * C + cols[None, :]
        rmask = qmask[:, None] & cmask
        g = tl.load(g_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        hv = tl.load(h_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        g_above += tl.sum(g * above, axis=1)
        g_below += tl.sum(g * below, axis=1)
        g_self += tl.sum(g * hv, axis=1)
    beta = 1.0 / z  # eq. 6: max_k alpha_ik
    g_p = g_above / z  # g_i . (the positive part of sum_j alpha_ij h_j)
    g_q = f * g_below / z  # ... and of the negative part
    p_z = above_u / z  # the positive side's share of the row's softmax mass
    q_z = f * below_u / z
    top_positive = a > 0
    # dL/ds_i = (1 - slope) x the positive part's share, written without cancellation.
    gs = (1.0 - slope) * (g_p * q_z - g_q * p_z
                          + g_self * beta * tl.where(top_positive, q_z, -p_z))  # fmt: skip
    tl.store(z_ptr + q * H + head, z, mask=qmask)
    tl.store(gs_ptr + q * H + head, gs, mask=qmask)
    tl.store(c_ptr + q * H + head, g_p + g_q + g_self * beta, mask=qmask)
    lr_top = tl.where(top_positive, 1.0, slope)  # LeakyReLU'(s_i + max t)
    tl.store(stats_ptr + q * H + head, g_self * beta * lr_top, mask=qmask)
    t = tl.load(t_ptr + q * H + head, mask=qmask, other=0.0).to(tl.float32)
    tl.store(stats_ptr + (N + q) * H + head, (t == top).to(tl.float32), mask=qmask)


@triton.jit
def _backward_grads(
    g_ptr, h_ptr, s_ptr, t_ptr, order_ptr, order_s_ptr, p_ptr, s_sum_ptr, pu_ptr, su_ptr,
    z_ptr, tie_ptr, gh_ptr, gt_ptr,
    N, H, C, slope, STEPS, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Per source j (queries -t_j over targets sorted by s): dL/dh_j and dL/dt_j."""
    head = tl.program_id(1)
    q = (tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    qmask = q < N
    top = _top(t_ptr, order_ptr, head, N, H)
    t = tl.load(t_ptr + q * H + head, mask=qmask, other=0.0).to(tl.float32)
    b_pos = tl.exp(t - top)  # the per-source factors of the targets' weights
    b_neg = tl.exp(slope * (t - top))
    # The targets i with s_i <= -t_j are those whose weights are on the negative side.
    k, has_below, has_above, below_c, above_c = _split_parts(
        pu_ptr, su_ptr, s_ptr, order_s_ptr, -t, head, qmask, N, H, STEPS, BLOCK_Q)
    share = tl.load(tie_ptr + head) / tl.load(tie_ptr + H + head)  # split evenly between ties
    gt = -(b_pos * above_c + slope * b_neg * below_c) + tl.where(t == top, share, 0.0)
    inv_z = 1.0 / tl.load(z_ptr + q * H + head, mask=qmask, other=1.0)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols[None, :] < C
        at = (head * N + k)[:, None] * C + cols[None, :]
        below = b_neg[:, None] * tl.load(p_ptr + at - C, mask=has_below[:, None] & cmask,
                                         other=0.0)  # fmt: skip
        above = b_pos[:, None] * tl.load(s_sum_ptr + at, mask=has_above[:, None] & cmask,
                                         other=0.0)  # fmt: skip
        rows = (q * H + head)[:, None] * C + cols[None, :]
        rmask = qmask[:, None] & cmask
        g = tl.load(g_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        hv = tl.load(h_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        tl.store(gh_ptr + rows, above + below + g * inv_z[:, None], mask=rmask)
        gt += tl.sum(hv * (above + slope * below), axis=1)
    tl.store(gt_ptr + q * H + head, gt, mask=qmask)


# Launchers -----------------------------------------------------------------------------------


def _blocks(n: int, c: int) -> dict:
    """Block sizes. On a GPU, 1024 keys a scan program (so the block sums stay ~N/1024 rows)
    in chunks of 64, 32 columns a program; under the interpreter (~13 ms a program instance)
    as few programs as the small test graphs allow."""
    if interpreting():
        rows = min(1024, triton.next_power_of_2(max(n, 16)))
        cols = min(128, triton.next_power_of_2(max(c, 16)))
        return dict(ROWS=rows, SUB=rows, BLOCK_C=cols, BLOCK_B=16, BLOCK_Q=rows, BLOCK_QC=cols)
    return dict(ROWS=1024, SUB=64, BLOCK_C=32, BLOCK_B=64, BLOCK_Q=32, BLOCK_QC=64)


def _sorted_sums(key, t, order, top_order, z, v, u, slope, out=None):
    """The two float32 [H, N, C] buffers (prefix of the negative side, suffix of the positive
    side, in sorted key order) and their scalar counterparts [2, H, N] for the values u (or 1).

    ``key``/``t`` [N, H]: the keys (t forward, s backward) and the sources' scores (for max t);
    ``order`` [H, N] the keys' sort, ``top_order`` t's; ``z`` [N, H] the targets' normalisers
    (backward only); ``v`` [N, H, C] the values."""
    n, heads, c = v.shape
    bs = _blocks(n, c)
    nb = triton.cdiv(n, bs["ROWS"])
    part = torch.empty(2, heads, nb, c + 1, dtype=torch.float64, device=v.device)
    backward = z is not None
    z_arg = z if backward else key
    u_arg = u if u is not None else key
    meta = dict(ROWS=bs["ROWS"], SUB=bs["SUB"], BLOCK_C=bs["BLOCK_C"], TARGET_KEYS=backward,
                HAS_U=u is not None)
    grid = (nb, heads, triton.cdiv(c, bs["BLOCK_C"]))
    _block_sums[grid](key, t, order, top_order, z_arg, v, u_arg, part, n, heads, c, nb, slope,
                      **meta)  # fmt: skip
    if out is None:
        out = (v.new_empty(heads, n, c, dtype=torch.float32),
               v.new_empty(heads, n, c, dtype=torch.float32),
               v.new_empty(2, heads, n, dtype=torch.float32))
    p, s, pu_su = out
    _scan[grid](key, t, order, top_order, z_arg, v, u_arg, part, p, s, pu_su[0], pu_su[1],
                n, heads, c, nb, slope, BLOCK_B=bs["BLOCK_B"], **meta)  # fmt: skip
    return out


def _sort(keys: Tensor) -> Tensor:
    """The keys [N, H] sorted per head: indices [H, N]."""
    return keys.t().contiguous().sort(dim=-1).indices  # (a copy only for several heads)


def _launch_rows(kernel, n: int, c: int, heads: int, *args):
    """A gather kernel over blocks of queries, per head."""
    bs = _blocks(n, c)
    kernel[(triton.cdiv(n, bs["BLOCK_Q"]), heads)](
        *args[:-1], n, heads, c, args[-1], n.bit_length(), BLOCK_Q=bs["BLOCK_Q"],
        BLOCK_C=bs["BLOCK_QC"],
    )  # fmt: skip


def _forward(h: Tensor, s: Tensor, t: Tensor, slope: float):
    n, heads, c = h.shape
    order_t = _sort(t)
    p, ssum, pu_su = _sorted_sums(t, t, order_t, order_t, None, h, None, slope)
    out = torch.empty(h.shape, dtype=torch.promote_types(h.dtype, torch.float32),
                      device=h.device)  # fmt: skip
    _launch_rows(_forward_out, n, c, heads,
                 h, s, t, order_t, p, ssum, pu_su[0], pu_su[1], out, slope)  # fmt: skip
    return out, order_t


def _backward(grad, h, s, t, order_t, slope: float):
    n, heads, c = h.shape
    # The forward's sums again (not saved), then the row terms of the softmax backward.
    buffers = _sorted_sums(t, t, order_t, order_t, None, h, None, slope)
    p, ssum, pu_su = buffers
    z = torch.empty_like(s, dtype=torch.float32)
    grad_s = torch.empty_like(s)
    row_c = torch.empty_like(s, dtype=torch.float32)
    stats = s.new_empty(2, n, heads, dtype=torch.float32)  # eq. 6's shares, is-top flags
    _launch_rows(_backward_rows, n, c, heads, grad, h, s, t, order_t, p, ssum, pu_su[0],
                 pu_su[1], z, grad_s, row_c, stats, slope)  # fmt: skip
    tie = stats.sum(1)  # [2, H]: the summed share of eq. 6's maximum, the number of tied tops
    # From targets to sources: targets sorted by s, per-target weights, values grad and c.
    order_s = _sort(s)
    p, ssum, pu_su = _sorted_sums(s, t, order_s, order_t, z, grad, row_c, slope, out=buffers)
    grad_h = torch.empty_like(h)
    grad_t = torch.empty_like(t)
    _launch_rows(_backward_grads, n, c, heads, grad, h, s, t, order_t, order_s, p, ssum,
                 pu_su[0], pu_su[1], z, tie, grad_h, grad_t, slope)  # fmt: skip
    return grad_h, grad_s, grad_t


# Custom ops ----------------------------------------------------------------------------------


@torch.library.custom_op("agcn::complete_attention", mutates_args=())
def _complete_attention_op(
    h: Tensor, s: Tensor, t: Tensor, negative_slope: float
) -> tuple[Tensor, Tensor]:
    return _forward(h, s, t, negative_slope)


@_complete_attention_op.register_fake
def _(h, s, t, negative_slope):
    n, heads, _ = h.shape
    out = h.new_empty(h.shape, dtype=torch.promote_types(h.dtype, torch.float32))
    return out, s.new_empty(heads, n, dtype=torch.long)


@torch.library.custom_op("agcn::complete_attention_backward", mutates_args=())
def _complete_attention_backward_op(
    grad: Tensor, h: Tensor, s: Tensor, t: Tensor, order_t: Tensor, negative_slope: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    return _backward(grad, h, s, t, order_t, negative_slope)


@_complete_attention_backward_op.register_fake
def _(grad, h, s, t, order_t, negative_slope):
    return torch.empty_like(h), torch.empty_like(s), torch.empty_like(t)


def _setup_context(ctx, inputs, output):
    h, s, t, slope = inputs
    ctx.save_for_backward(h, s, t, output[1])
    ctx.slope = slope
    ctx.set_materialize_grads(False)  # no zero gradient made for the index output


def _autograd_backward(ctx, grad_out, _grad_order):
    h, s, t, order_t = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None
    grads = torch.ops.agcn.complete_attention_backward(
        grad_out.contiguous(), h, s, t, order_t, ctx.slope
    )
    return *grads, None


_complete_attention_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def complete_attention(h: Tensor, s_dst: Tensor, s_src: Tensor, negative_slope: float = 0.2
                       ) -> Tensor:  # fmt: skip
    r""":math:`\mathbf{B}\mathbf{H}` over the complete graph, every node with its self-loop
    (eq. 4-6), per head, by the fused sorted sums:

    .. math::
        \mathbf{o}_i = \sum_{j} \alpha_{ij}\mathbf{h}_j + \max_k \alpha_{ik}\,\mathbf{h}_i,
        \qquad \alpha_{ij} = \mathrm{softmax}_j\,\mathrm{LeakyReLU}(s_i + t_j).

    Args:
        h (torch.Tensor): Source features :obj:`[N, H, C]` (float32, bfloat16 or float16).
        s_dst (torch.Tensor): Target halves :math:`s_i` of eq. 4's score, :obj:`[N, H]`.
        s_src (torch.Tensor): Source halves :math:`t_j`, :obj:`[N, H]`.
        negative_slope (float, optional): LeakyReLU's slope, in :math:`(0, 1]`.
            (default: :obj:`0.2`)

    Returns:
        :obj:`[N, H, C]` in float32 (or float64 for float64 input).
    """
    if h.dim() != 3:
        raise ValueError(f"'h' must be [N, H, C] (got shape {list(h.shape)})")
    n, heads, _ = h.shape
    for name, v in (("s_dst", s_dst), ("s_src", s_src)):
        if v.shape != (n, heads):
            raise ValueError(f"'{name}' must be [N, H] = [{n}, {heads}] to match 'h' "
                             f"(got {list(v.shape)})")  # fmt: skip
    if not 0.0 < negative_slope <= 1.0:
        raise ValueError(f"'negative_slope' must be in (0, 1] (got {negative_slope})")
    if n == 0:
        return h.to(torch.promote_types(h.dtype, torch.float32)) * 0.0
    out, _ = torch.ops.agcn.complete_attention(
        h.contiguous(), s_dst.contiguous(), s_src.contiguous(), float(negative_slope)
    )
    return out
