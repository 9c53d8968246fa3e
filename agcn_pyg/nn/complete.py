r"""ML-AGCN on the complete graph in :math:`O(N \log N)`: eq. 3-7 over every pair of nodes,
exactly, without an :obj:`[N, N]` matrix.

ML-AGCN's attention graph :math:`\mathbf{B}` (eq. 4-6) and similarity graph :math:`\mathbf{C}`
(eq. 7) range over all label pairs. Written as matrices they cost :math:`O(N^2)` time and memory,
which rules out label sets of :math:`10^5` or :math:`10^6` labels. Neither needs the matrix:

* **B (eq. 4-6), sorted.** The score of source :math:`j` at target :math:`i` is
  :math:`e_{ij} = \mathrm{LeakyReLU}(s_i + t_j)` with :math:`s = \mathbf{X}\mathbf{\Theta}_d^\top
  \mathbf{a}_d` and :math:`t = \mathbf{X}\mathbf{\Theta}_s^\top\mathbf{a}_s` (eq. 4 split in its
  target and source halves). LeakyReLU is monotone, so once the sources are sorted by
  :math:`t`, the sources with :math:`s_i + t_j > 0` are a suffix of that order (found by
  :func:`torch.searchsorted`) and have :math:`\exp(e_{ij}) = \exp(s_i)\exp(t_j)`; the others
  are a prefix with :math:`\exp(e_{ij}) = \exp(\lambda s_i)\exp(\lambda t_j)`
  (:math:`\lambda` the negative slope). So :math:`\sum_j \exp(e_{ij})\mathbf{h}_j` and the
  normaliser :math:`Z_i` (eq. 5) are a suffix sum and a prefix sum of per-source terms, each
  scaled by a per-target factor. Everything is scaled by the row maximum
  :math:`m_i = \mathrm{LeakyReLU}(s_i + \max_j t_j)`, so no factor exceeds 1: nothing
  overflows, and what underflows is negligible in its row. Eq. 6's
  :math:`\max_k \alpha_{ik}` is the weight of the source with the largest :math:`t`, i.e.
  :math:`1 / Z_i` after that scaling. One sort, two cumulative sums over :obj:`[N, F]` and
  gathers: :math:`O(N \log N + N F)` time, :math:`O(N F)` memory.
* **C (eq. 7), factored.** :math:`\mathbf{C}\mathbf{H} = \hat{\mathbf{X}}(\hat{\mathbf{X}}^\top
  \mathbf{H})` costs :math:`O(N d F)` (in :class:`~agcn_pyg.AdaptiveGCNConv`).
* **A**, the co-occurrence graph, is sparse for large label sets and is applied as a sparse
  product, :math:`O(\mathrm{nnz} \cdot F)`: :func:`adjacency_matmul`.

The cumulative sums accumulate in float64 (float32 sums over :math:`10^6` rows would lose
digits; see :func:`_accumulate_dtype` and ``benchmarks/NOTES.md`` for the measured errors), and
the attention runs in at least float32 under autocast. The backward pass is written out
(:class:`_SortedAttention`): it keeps :math:`\mathbf{H}` and, up to :math:`N F = 2^{25}`, the
forward's two :obj:`[N, F]` parts (beyond, it recomputes them); its formulas avoid
cancellation (a gradient that vanishes is an exact zero; eq. 6's ties share the gradient as
:func:`torch.amax` does). Against the same algorithm left to autograd it takes 3x less peak
memory at :math:`N = 10^6` and 1.4-1.9x less time (``benchmarks/NOTES.md``).

:func:`complete_attention` is the entry point; :class:`CompleteGraphParts` holds what defines
the three graphs at any size and builds rows of them on demand.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch_geometric import is_compiling

from agcn_pyg.nn.kernels import use_triton

__all__ = [
    "CompleteGraphParts", "SparseAdjacency", "adjacency_matmul", "complete_attention",
    "complete_attention_heads",
]


def _accumulate_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype of the cumulative sums' buffers.

    A float32 cumulative sum over 10^6 rows that accumulates in float32 loses up to ~3 of 7
    digits. CPU's :func:`torch.cumsum` accumulates float32 in float64 and rounds each stored
    prefix once (``at::acc_type<float, false>`` is ``double``), so float32 buffers are exact
    to ~1e-7 there and 3x faster than float64 ones (``benchmarks/NOTES.md``); CUDA's
    accumulates in float32, and a compiled scan may too: float64 buffers there.
    """
    if dtype == torch.float64:
        return torch.float64
    if device.type == "cpu" and not is_compiling():
        return torch.float32
    return torch.float64



def _takes_kernels(h: Tensor, has_loop: Tensor | None, accumulate_dtype) -> bool:
    """Whether the complete path's B h runs as the Triton kernels of
    :mod:`agcn_pyg.nn.kernels.complete`: every node with its self-loop, float32 or lower,
    the default accumulation, and :func:`~agcn_pyg.nn.kernels.use_triton`."""
    return (has_loop is None and accumulate_dtype is None and h.dtype != torch.float64
            and h.size(0) > 0 and use_triton(h))


def _fused_heads(h: Tensor, s_dst: Tensor, s_src: Tensor, negative_slope: float) -> Tensor:
    """The Triton op on h [N, H, C], scores [N, H]: every head in one call."""
    from agcn_pyg.nn.kernels.complete import complete_attention as fused

    with torch.autocast(h.device.type, enabled=False):
        return fused(h, s_dst.float(), s_src.float(), negative_slope)


def complete_attention_heads(
    h: Tensor, s_dst: Tensor, s_src: Tensor, negative_slope: float = 0.2,
    has_loop: Tensor | None = None,
) -> Tensor:  # fmt: skip
    r""":func:`complete_attention` per head (eq. 4-6, each head its own softmax): :obj:`h`
    :obj:`[N, H, C]`, scores :obj:`[N, H]` -> :obj:`[N, H, C]`. The Triton kernels take all
    heads in one call where they apply; otherwise one sorted pass per head."""
    if h.dim() != 3 or s_dst.shape != h.shape[:2] or s_src.shape != h.shape[:2]:
        raise ValueError(f"'h' must be [N, H, C] and 's_dst', 's_src' [N, H] (got "
                         f"{list(h.shape)}, {list(s_dst.shape)}, {list(s_src.shape)})")
    if _takes_kernels(h, has_loop, None) and 0.0 < negative_slope <= 1.0:
        return _fused_heads(h, s_dst, s_src, negative_slope)
    return torch.stack([
        complete_attention(h[:, k], s_dst[:, k], s_src[:, k], negative_slope, has_loop)
        for k in range(h.size(1))
    ], dim=1)  # fmt: skip


def complete_attention(
    h: Tensor,
    s_dst: Tensor,
    s_src: Tensor,
    negative_slope: float = 0.2,
    has_loop: Tensor | None = None,
    accumulate_dtype: torch.dtype | None = None,
) -> Tensor:
    r"""Aggregates :obj:`h` with ML-AGCN's attention graph :math:`\mathbf{B}` over the complete
    graph (eq. 4-6), in :math:`O(N \log N + N F)`:

    .. math::
        \mathbf{o}_i = \sum_{j \in \mathcal{N}(i)} \alpha_{ij}\mathbf{h}_j
        + [i \in \mathcal{N}(i)] \max_{k} \alpha_{ik} \, \mathbf{h}_i, \qquad
        \alpha_{ij} = \mathrm{softmax}_{j \in \mathcal{N}(i)}
        \mathrm{LeakyReLU}(s_i + t_j),

    where :math:`\mathcal{N}(i)` holds every node, :math:`i` itself only where
    :obj:`has_loop` is set.

    Args:
        h (torch.Tensor): Source features :math:`\mathbf{\Theta}\mathbf{x}_j`, :obj:`[N, F]`.
        s_dst (torch.Tensor): Target halves :math:`s_i` of eq. 4's score, :obj:`[N]`.
        s_src (torch.Tensor): Source halves :math:`t_j`, :obj:`[N]`.
        negative_slope (float, optional): LeakyReLU's slope :math:`\lambda`, in
            :math:`(0, 1]` (monotone, and at most the identity: what the sorting and the
            scaling need). (default: :obj:`0.2`)
        has_loop (torch.Tensor, optional): :obj:`[N]` booleans, whether node :math:`i` has its
            self-loop (eq. 6's self term needs it). (default: :obj:`None`, every node has it)
        accumulate_dtype (torch.dtype, optional): dtype of the cumulative sums.
            (default: :obj:`None`: float64, or float32 on the CPU in eager mode, whose
            :func:`torch.cumsum` accumulates float32 in float64; see :func:`_accumulate_dtype`)

    Returns:
        :obj:`[N, F]` in :obj:`h`'s dtype, or float32 for float16/bfloat16 input (the
        attention is computed in at least float32, under autocast too).

    Where :func:`~agcn_pyg.nn.kernels.use_triton` says so (CUDA tensors), a graph whose every
    node has its self-loop takes the fused Triton kernels of
    :mod:`agcn_pyg.nn.kernels.complete` (float32 data, float64 accumulation in registers);
    float64 input and :obj:`accumulate_dtype` keep this PyTorch code, the reference.
    """
    _check_inputs(h, s_dst, s_src, negative_slope, has_loop)
    n = h.size(0)
    if _takes_kernels(h, has_loop, accumulate_dtype):  # one head: [N, 1, F]
        return _fused_heads(h.unsqueeze(1), s_dst.unsqueeze(1), s_src.unsqueeze(1),
                            negative_slope).squeeze(1)
    dtype = torch.promote_types(h.dtype, torch.float32)
    with torch.autocast(h.device.type, enabled=False):
        h, s, t = h.to(dtype), s_dst.to(dtype), s_src.to(dtype)
        if n == 0:
            return h * 0.0
        acc = accumulate_dtype or _accumulate_dtype(dtype, h.device)
        if has_loop is None:
            return _SortedAttention.apply(h, s, t, None, float(negative_slope), acc)
        # A node without its self-loop whose t is the unique maximum loses its row maximum:
        # its normaliser cannot be had by subtracting its own term from Z_i = 1 + tiny.
        # Its row (one node: the argmax of t) is computed directly, in O(N F).
        top = t.argmax().view(1)
        loop = has_loop.index_fill(0, top, True)
        out = _SortedAttention.apply(h, s, t, loop, float(negative_slope), acc)
        row = _attention_rows(h, s.index_select(0, top), t, top, has_loop, negative_slope)
        return out.index_copy(0, top, row)


def _check_inputs(h, s_dst, s_src, negative_slope, has_loop):
    if h.dim() != 2:
        raise ValueError(f"'h' must be [N, F] (got shape {list(h.shape)})")
    n = h.size(0)
    for name, v in (("s_dst", s_dst), ("s_src", s_src)):
        if v.shape != (n,):
            raise ValueError(f"'{name}' must be [N] = [{n}] to match 'h' (got {list(v.shape)})")
    if not 0.0 < negative_slope <= 1.0:
        raise ValueError(
            "'negative_slope' must be in (0, 1] on the complete graph's sorted path: the "
            "sources are ordered by score, which needs a strictly increasing LeakyReLU, and "
            f"the row-maximum scaling needs LeakyReLU(z) >= z (got {negative_slope})"
        )
    if has_loop is not None and (has_loop.shape != (n,) or has_loop.dtype != torch.bool):
        raise ValueError(
            f"'has_loop' must be a bool tensor of shape [{n}] (got {has_loop.dtype} "
            f"{list(has_loop.shape)})"
        )


def _leaky(z: Tensor, slope: float) -> Tensor:
    return torch.where(z > 0, z, slope * z)


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot products of two [N, F] tensors, without an [N, F] product."""
    return torch.einsum("nf,nf->n", a, b)


# Column blocks of the cumulative sums: at most this many entries per [N, C] buffer, so the
# float64 buffers stay small whatever F is (the columns are independent).
_BLOCK_ENTRIES = 2**22
# Above this many entries in h, the backward pass recomputes the forward's two [N, F] parts
# instead of keeping them (memory for time, at the sizes where memory is the limit).
_RECOMPUTE_ENTRIES = 2**25


def _column_blocks(n: int, f: int) -> list[slice]:
    width = max(1, min(f, _BLOCK_ENTRIES // max(n, 1)))
    return [slice(start, min(start + width, f)) for start in range(0, f, width)]


class _SplitSums:
    r"""Sums over the keys above and at most each query, by one sort and cumulative sums:
    :math:`\sum_{r: k_r > q} w^+_r \mathbf{v}_r` and :math:`\sum_{r: k_r \le q} w^-_r
    \mathbf{v}_r` for every query :math:`q`, for any number of value columns."""

    def __init__(self, keys: Tensor, queries: Tensor, w_pos: Tensor, w_neg: Tensor):
        n = keys.numel()
        sorted_keys, order = keys.sort()
        split = torch.searchsorted(sorted_keys, queries, right=True)  # number of keys <= q
        # The largest keys first (sums above q), then the smallest (sums up to q).
        reverse = order.flip(0)
        self.passes = (
            (reverse, w_pos.index_select(0, reverse), n - split),
            (order, w_neg.index_select(0, order), split),
        )
        self.n = n

    def __call__(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """(above, below) of [n] or [n, C] values: [Q] or [Q, C]."""
        if values.dim() == 1:
            return tuple(
                F.pad((values.index_select(0, index) * weight).cumsum(0), (1, 0))[rows]
                for index, weight, rows in self.passes
            )
        # One [n + 1, C] buffer, a zero row first: row r holds the sum of the first r terms
        # (rows padded to whole blocks for the blocked scan; the padding comes last).
        rows_total = self.n + 1
        block = _scan_block(rows_total, values.device)
        padded = -(-rows_total // block) * block
        storage = values.new_zeros(padded, values.size(1))
        buf = storage[:rows_total]
        out = []
        for index, weight, rows in self.passes:
            torch.index_select(values, 0, index, out=buf[1:])
            buf[1:].mul_(weight.unsqueeze(-1))
            _cumsum_rows_(storage, block)
            out.append(buf.index_select(0, rows))
        return out[0], out[1]


def _scan_block(rows: int, device: torch.device) -> int:
    """Rows per block of the cumulative sum over dim 0: all of them on the CPU; about
    sqrt(rows) elsewhere. CUDA scans a non-innermost dimension with one thread per column,
    sequentially over every row (10^6 dependent steps at N = 10^6); in blocks it is two
    scans of about sqrt(N) steps each, with N / block times more threads."""
    if device.type == "cpu" or rows <= 1024:
        return rows
    return 1 << ((rows - 1).bit_length() + 1) // 2  # a power of two >= sqrt(rows)


def _cumsum_rows_(buf: Tensor, block: int) -> None:
    """In-place cumulative sum over dim 0 of [rows, C], rows a multiple of block."""
    if block >= buf.size(0):
        buf.cumsum_(0)
        return
    blocks = buf.view(-1, block, buf.size(1))
    blocks.cumsum_(1)  # within each block
    offsets = blocks[:-1, -1].cumsum(0)  # the sum of every block before the next one
    blocks[1:].add_(offsets.unsqueeze(1))


def _take_self_term(above: Tensor, below: Tensor, w_self: Tensor, positive: Tensor, v: Tensor):
    """Removes the j = i term, w_self * v, from the part (above or below) it is in."""
    if v.dim() == 2:
        w_self, positive = w_self.unsqueeze(-1), positive.unsqueeze(-1)
    above.sub_(w_self * positive * v)
    below.sub_(w_self * ~positive * v)


class _ForwardSums:
    """The forward pass's sums over the sources, for any block of h's columns: the positive
    and negative parts of sum_j exp(e_ij - m_i) v_j (eq. 5's numerator and normaliser)."""

    def __init__(self, s: Tensor, t: Tensor, loop: Tensor | None, slope: float):
        top = t.max()
        m = _leaky(s + top, slope)  # the row maximum of e_ij (eq. 4): LeakyReLU is monotone
        # Positive part (s_i + t_j > 0): exp(e_ij - m_i) = exp(t_j - top), since m_i = s_i + top
        # there. Negative: exp(slope (t_j - top)) * exp(slope (s_i + top) - m_i). All <= 1.
        self.sums = _SplitSums(t, -s, torch.exp(t - top), torch.exp(slope * (t - top)))
        self.f_neg = torch.exp(slope * (s + top) - m)
        self.self_term = None
        if loop is not None:
            e_self = s + t
            self.self_term = (torch.exp(_leaky(e_self, slope) - m) * ~loop, e_self > 0)

    def __call__(self, values: Tensor) -> tuple[Tensor, Tensor]:
        above, below = self.sums(values)
        below.mul_(self.f_neg if values.dim() == 1 else self.f_neg.unsqueeze(-1))
        if self.self_term is not None:
            _take_self_term(above, below, *self.self_term, values)
        return above, below


class _SortedAttention(torch.autograd.Function):
    """out = B h over the complete graph (eq. 4-6); forward and backward by sorted sums, over
    blocks of h's columns.

    The backward pass sorts the targets by s and aggregates the gradient from targets to
    sources in the same way. Saved: h, s, t, three [N] tensors, and the two [N, F] parts of
    the forward's sums unless h is large (then the backward pass recomputes them).
    """

    @staticmethod
    def forward(
        ctx, h: Tensor, s: Tensor, t: Tensor, loop: Tensor | None, slope: float, acc: torch.dtype
    ):
        n, f = h.shape
        s64, t64 = s.to(acc), t.to(acc)
        sums = _ForwardSums(s64, t64, loop, slope)
        above_z, below_z = sums(torch.ones_like(t64))
        z = above_z + below_z  # eq. 5's normaliser, >= 1 (the row maximum's term is 1)
        beta = 1.0 / z if loop is None else loop / z  # eq. 6: max_k alpha_ik = 1 / Z_i
        keep = n * f <= _RECOMPUTE_ENTRIES
        out = torch.empty_like(h)
        p = torch.empty_like(h) if keep else None
        q = torch.empty_like(h) if keep else None
        for cols in _column_blocks(n, f):
            values = h[:, cols].to(acc)
            above, below = sums(values)
            above.div_(z.unsqueeze(-1))  # sum_j alpha_ij h_j over s_i + t_j > 0 ...
            below.div_(z.unsqueeze(-1))  # ... and over the rest
            out[:, cols] = torch.add(above, below).addcmul_(beta.unsqueeze(-1), values)
            if keep:
                p[:, cols], q[:, cols] = above, below

        ctx.slope, ctx.acc, ctx.keep = slope, acc, keep
        ctx.save_for_backward(h, s, t, loop, z, above_z / z, below_z / z, p, q)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        h, s, t, loop, z, p_z, q_z, p, q = ctx.saved_tensors
        slope, acc = ctx.slope, ctx.acc
        n, f = h.shape
        s64, t64 = s.to(acc), t.to(acc)
        beta = 1.0 / z if loop is None else loop / z
        blocks = _column_blocks(n, f)
        # Row dot products with g, in h's dtype (no full-width copy in acc).
        g_self = _rowdot(grad, h).to(acc)  # dL/d beta_i (eq. 6's self term)
        if ctx.keep:
            g_p, g_q = _rowdot(grad, p).to(acc), _rowdot(grad, q).to(acc)
        else:  # the forward's parts again, block by block
            sums = _ForwardSums(s64, t64, loop, slope)
            g_p, g_q = torch.zeros_like(z), torch.zeros_like(z)
            for cols in blocks:
                above, below = sums(h[:, cols].to(acc))
                g_block = grad[:, cols].to(acc)
                g_p += _rowdot(g_block, above) / z
                g_q += _rowdot(g_block, below) / z
            del sums
        del p, q

        # Softmax backward: dL/de_ij = alpha_ij (gamma_ij - sum_k alpha_ik gamma_ik) with
        # gamma_ij = g_i.h_j + [j in T] G_i beta_i / (|T| alpha_ij), T = argmax t: torch.amax
        # splits its gradient evenly between ties, and so does this.
        top = t64.max()
        m = _leaky(s64 + top, slope)
        top_positive = s64 + top > 0

        grad_h = grad_s = grad_t = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # dL/ds_i = sum_j LeakyReLU'_ij dL/de_ij. The dL/de_ij of a row sum to zero, so
            # this is (1 - slope) x the positive part's share, written without cancellation:
            # exactly 0 for a row whose sources all lie on one side of the kink.
            grad_s = (1.0 - slope) * (
                g_p * q_z - g_q * p_z + g_self * beta * torch.where(top_positive, q_z, -p_z)
            )
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
            # From targets to sources: for source j, the targets with s_i + t_j > 0 are those
            # with the largest s. Weights w_ij = exp(e_ij - m_i) split as (per source) x
            # (per target), each <= 1, as in the forward pass; rows [g_i, c_i] / Z_i, the
            # 1 / Z_i in the per-target weights.
            inv_z = 1.0 / z
            sums = _SplitSums(
                s64, -t64, torch.exp(s64 + top - m) * inv_z,
                torch.exp(slope * (s64 + top) - m) * inv_z,
            )  # fmt: skip
            b_pos, b_neg = torch.exp(t64 - top), torch.exp(slope * (t64 - top))
            self_term = None
            if loop is not None:
                e_self = s64 + t64
                w_self = torch.exp(_leaky(e_self, slope) - m) * ~loop * inv_z
                self_term = (w_self, e_self > 0)

            def parts(values: Tensor) -> tuple[Tensor, Tensor]:
                above, below = sums(values)
                wide = values.dim() == 2
                above.mul_(b_pos.unsqueeze(-1) if wide else b_pos)
                below.mul_(b_neg.unsqueeze(-1) if wide else b_neg)
                if self_term is not None:
                    _take_self_term(above, below, *self_term, values)
                return above, below

            c = g_p + g_q + g_self * beta  # sum_k alpha_ik gamma_ik
            above_c, below_c = parts(c)
            grad_t = -(above_c + slope * below_c)
            if ctx.needs_input_grad[0]:
                grad_h = torch.empty_like(h)
            for cols in blocks:
                g_block = grad[:, cols].to(acc)
                above, below = parts(g_block)
                h_block = h[:, cols].to(acc)
                grad_t += _rowdot(h_block, above) + slope * _rowdot(h_block, below)
                if grad_h is not None:
                    grad_h[:, cols] = above.add_(below).addcmul_(beta.unsqueeze(-1), g_block)
            if ctx.needs_input_grad[2]:
                # eq. 6's max_k alpha_ik is alpha_iT for the sources T with the largest t: its
                # gradient reaches t_T directly too, split evenly between ties.
                is_top = t64 == top
                lr_top = slope + (1.0 - slope) * top_positive.to(acc)  # LeakyReLU'(s_i + max t)
                tie_share = (g_self * beta * lr_top).sum()
                grad_t = (grad_t + is_top * (tie_share / is_top.sum())).to(t.dtype)
            else:
                grad_t = None
        grad_s = grad_s.to(s.dtype) if ctx.needs_input_grad[1] else None
        return grad_h, grad_s, grad_t, None, None, None


def _attention_rows(
    h: Tensor | None,
    s_rows: Tensor,
    t: Tensor,
    rows: Tensor,
    has_loop: Tensor | None,
    negative_slope: float,
) -> Tensor:
    r"""Rows :obj:`rows` of :math:`\mathbf{B}` (eq. 4-6) as a dense :obj:`[R, N]` matrix, or,
    with :obj:`h`, those rows of :math:`\mathbf{B}\mathbf{H}` (:obj:`[R, F]`). Plain
    autograd; O(R N) memory."""
    n = t.size(0)
    e = F.leaky_relu(s_rows.unsqueeze(-1) + t.unsqueeze(0), negative_slope)  # eq. 4
    self_pair = rows.unsqueeze(-1) == torch.arange(n, device=t.device)
    loop = None if has_loop is None else has_loop.index_select(0, rows)
    if loop is not None:
        e = e.masked_fill(self_pair & ~loop.unsqueeze(-1), float("-inf"))
    # eq. 5, with a guard for a row that has no entry at all (one node, no self-loop).
    row_max = e.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
    w = torch.exp(e - row_max)
    alpha = w / w.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    top = alpha.amax(dim=-1)  # eq. 6
    if loop is not None:
        top = top * loop
    if h is None:
        return alpha + self_pair * top.unsqueeze(-1)
    return alpha @ h + top.unsqueeze(-1) * h.index_select(0, rows)


class _UnitRows(torch.autograd.Function):
    """x / max(|x|, eps) row-wise, as :func:`torch.nn.functional.normalize`, with a backward
    pass that makes one [N, d] tensor (autograd's division makes three at once, the peak of
    the complete layer at N = 10^6)."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float):
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        denom = norm.clamp_min(eps)
        x_hat = x / denom
        ctx.save_for_backward(x_hat, denom, norm > eps)
        return x_hat

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x_hat, denom, scaled = ctx.saved_tensors
        # d(x / |x|) = (g - x_hat (x_hat . g)) / |x|; below eps the denominator is constant.
        along = _rowdot(x_hat, grad).unsqueeze(-1) * scaled
        return torch.addcmul(grad, x_hat, along, value=-1.0).div_(denom), None


def unit_rows(x: Tensor, eps: float = 1e-12) -> Tensor:
    """The unit features of eq. 7 (zero rows stay zero), memory-lean in backward."""
    if is_compiling() or not x.requires_grad:
        return F.normalize(x, p=2.0, dim=-1, eps=eps)
    return _UnitRows.apply(x, eps)


# The fixed graph A ------------------------------------------------------------------------


class SparseAdjacency(NamedTuple):
    r"""The fixed graph :math:`\mathbf{A}` of a complete-graph layer, self-loops included:
    :obj:`edge_index` (row 0 sources :math:`j`, row 1 targets :math:`i`) and weights, with the
    CSR forms of :math:`\mathbf{A}` (rows = targets) and :math:`\mathbf{A}^\top` for the
    products (:obj:`None` under :func:`torch.compile`, which cannot trace sparse tensors), and
    which nodes have a self-loop (eq. 6's self term; :obj:`None` when all have one)."""

    edge_index: Tensor
    edge_weight: Tensor
    num_nodes: int
    has_loop: Tensor | None
    csr: tuple[Tensor, Tensor, Tensor] | None = None  # crow, col, value
    csr_t: tuple[Tensor, Tensor, Tensor] | None = None

    @classmethod
    def from_edges(
        cls, edge_index: Tensor, edge_weight: Tensor, num_nodes: int, has_loop: Tensor | None
    ) -> SparseAdjacency:
        """Duplicate edges add up."""
        if is_compiling():
            return cls(edge_index, edge_weight, num_nodes, has_loop)
        src, dst = edge_index[0], edge_index[1]
        return cls(
            edge_index, edge_weight, num_nodes, has_loop,
            _csr(dst, src, edge_weight, num_nodes), _csr(src, dst, edge_weight, num_nodes),
        )  # fmt: skip

    def to_dense(self) -> Tensor:
        """The :obj:`[N, N]` matrix (rows = targets; duplicate edges add up), differentiable
        in :obj:`edge_weight`."""
        n = self.num_nodes
        source, target = self.edge_index[0], self.edge_index[1]
        dense = self.edge_weight.new_zeros(n, n)
        return dense.index_put((target, source), self.edge_weight, accumulate=True)

    def to_torch(self) -> Tensor:
        """The :obj:`[N, N]` matrix as a :obj:`torch.sparse_csr` tensor."""
        csr = self.csr or _csr(self.edge_index[1], self.edge_index[0], self.edge_weight,
                               self.num_nodes)  # fmt: skip
        return _csr_tensor(*csr, self.num_nodes)


def _csr(row: Tensor, col: Tensor, value: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    perm = (row * n + col).argsort()
    counts = torch.zeros(n, dtype=torch.long, device=row.device).scatter_add_(
        0, row, torch.ones_like(row)
    )
    crow = F.pad(counts.cumsum(0), (1, 0))
    return crow, col.index_select(0, perm), value.index_select(0, perm)


def _csr_tensor(crow: Tensor, col: Tensor, value: Tensor, n: int) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, value, (n, n), check_invariants=False)


class _CSRMatmul(torch.autograd.Function):
    """A @ h with a fixed CSR A; the backward pass uses the stored transpose."""

    @staticmethod
    def forward(ctx, h: Tensor, adj: SparseAdjacency):
        ctx.adj = adj
        crow, col, value = adj.csr
        return torch.sparse.mm(_csr_tensor(crow, col, value.to(h.dtype), adj.num_nodes), h)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        adj = ctx.adj
        crow, col, value = adj.csr_t
        a_t = _csr_tensor(crow, col, value.to(grad.dtype), adj.num_nodes)
        return torch.sparse.mm(a_t, grad), None


def adjacency_matmul(adj: SparseAdjacency, h: Tensor) -> Tensor:
    r""":math:`\mathbf{A}\mathbf{H}` for a sparse :math:`\mathbf{A}`, :math:`O(\mathrm{nnz}
    \cdot F)`: a CSR product (:func:`torch.sparse.mm`) with no :obj:`[E, F]` intermediate;
    under :func:`torch.compile` a gather and a scatter-add, which Inductor fuses into one
    loop."""
    if adj.csr is None or is_compiling() or adj.edge_weight.requires_grad:
        # Also when A's weights need a gradient: then the [E, F] messages are kept for it.
        src, dst = adj.edge_index[0], adj.edge_index[1]
        messages = h.index_select(0, src) * adj.edge_weight.to(h.dtype).unsqueeze(-1)
        return torch.zeros_like(h).index_add_(0, dst, messages)
    return _CSRMatmul.apply(h, adj)


# The graphs' parts, at any size --------------------------------------------------------------


class CompleteGraphParts(NamedTuple):
    r"""What defines :math:`\mathbf{A}`, :math:`\mathbf{B}` and :math:`\mathbf{C}` of a layer
    on the complete graph, in :math:`O(\mathrm{nnz} + N d)` memory: the sparse fixed graph,
    the two halves of eq. 4's score and the unit features of eq. 7.

    :math:`b_{ij} = \mathrm{softmax}_j\,\mathrm{LeakyReLU}(s^{dst}_i + s^{src}_j)
    + [i = j]\max_k(\cdot)` and :math:`c_{ij} = \hat{\mathbf{x}}_i^\top\hat{\mathbf{x}}_j`;
    pairs :math:`(i, i)` of nodes without a self-loop (:obj:`has_loop`) are not edges.
    :meth:`rows` builds any rows of the three matrices. With several heads the scores are
    :obj:`[N, H]` and :math:`\mathbf{B}`'s rows :obj:`[R, N, H]` (the head dimension last).
    """

    A: Tensor  # torch.sparse_csr [N, N], A[i, j] = weight of j -> i, self-loops included
    s_src: Tensor | None  # [N] ([N, H] for heads > 1), None without attention
    s_dst: Tensor | None  # [N] ([N, H])
    x_hat: Tensor | None  # [N, d], None without similarity
    has_loop: Tensor | None  # [N] bool, None when every node has its self-loop
    negative_slope: float

    def rows(self, index: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Rows :obj:`index` of :math:`\\mathbf{A}`, :math:`\\mathbf{B}`, :math:`\\mathbf{C}`,
        each a dense :obj:`[len(index), N]` matrix (:obj:`None` for a graph switched off)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.A.device).view(-1)
        a = self.A.to_sparse_coo().index_select(0, index).to_dense()
        b = c = None
        if self.s_src is not None:  # per head ([N, H] scores) along the last dimension
            s_dst, s_src = self.s_dst.index_select(0, index), self.s_src
            if s_src.dim() == 1:
                b = _attention_rows(None, s_dst, s_src, index, self.has_loop, self.negative_slope)
            else:
                b = torch.stack([
                    _attention_rows(None, s_dst[:, k], s_src[:, k], index, self.has_loop,
                                    self.negative_slope)
                    for k in range(s_src.size(1))
                ], dim=-1)  # fmt: skip
        if self.x_hat is not None:
            c = self.x_hat.index_select(0, index) @ self.x_hat.t()
            if self.has_loop is not None:
                n = c.size(1)
                self_pair = index.unsqueeze(-1) == torch.arange(n, device=c.device)
                missing = ~self.has_loop.index_select(0, index).unsqueeze(-1)
                c = c.masked_fill(self_pair & missing, 0.0)
        return a, b, c
