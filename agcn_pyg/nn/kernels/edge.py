r"""The edge (message-passing) path of :class:`~agcn_pyg.nn.AdaptiveGCNConv` as fused Triton
kernels: eq. 3-7 over a target-sorted (CSR) edge pattern without an :obj:`[E, F]` tensor.

For every target row :math:`i` and head, one program walks the row's edges once:

.. math::
    \mathbf{o}_i = \sum_{j \in \mathcal{N}(i)} \left(a_{ij} + c_{ij} + \alpha_{ij}\right)
    \mathbf{h}_j + L_i \max_k \alpha_{ik} \, \mathbf{h}_i,

with :math:`\alpha_{ij} = \mathrm{softmax}_j \mathrm{LeakyReLU}(s_i + t_j [+ s^e_{ij}])`
(eq. 4-5) computed as an online softmax (running maximum :math:`m_i` and sum :math:`Z_i`, as
FlashAttention does), eq. 6's self term :math:`\max_k \alpha_{ik} = 1 / Z_i` added once for
each of the :math:`L_i` self-loops of row :math:`i`, and :math:`c_{ij} = \hat{\mathbf{x}}_i
\cdot \hat{\mathbf{x}}_j` (eq. 7) from the unit rows. The forward saves :math:`m_i, Z_i`
per row and head; the backward recomputes every coefficient from them (two kernels: one over
the rows, one over the columns of the source-sorted pattern, so no atomics and a
deterministic result) and never stores an :obj:`[E, F]` buffer — only per-edge scalars.

Layout for several attention heads: :obj:`h [N_src, H, C]`, scores :obj:`s_dst [N_dst, H]`,
:obj:`s_src [N_src, H]`, :obj:`s_edge [E, H]`; the unit features :obj:`[N, D]` and the fixed
weights :obj:`[E]` are shared by the heads; the output is :obj:`[N_dst, H, C]`.

The op is a ``torch.library`` custom op (``agcn::edge_attention`` and its backward
``agcn::edge_attention_backward``) with fake implementations and autograd, so
``torch.compile`` traces it without a graph break. :func:`edge_pattern` builds the CSR and CSC
patterns with static shapes (self-loops appended, stored ones moved past the rows' end) and
caches them per graph tensor.

The kernels are plain functions decorated on their first launch (:func:`_compiled`), so this
module imports without Triton. Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors) must be
switched on before Triton is imported — its standard library (``tl.sum``, ``tl.max``) is
decorated then, and PyG imports Triton — i.e. before ``agcn_pyg`` or ``torch_geometric``;
``tests/conftest.py`` does so on machines without CUDA.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary
from torch_geometric import is_compiling
from torch_geometric.utils.loop import compute_loop_attr

from agcn_pyg.nn.conv_checks import tensor_version
from agcn_pyg.nn.kernels.counting import record_launch

try:
    import triton
    import triton.language as tl
except ImportError:  # the PyTorch path needs no Triton
    triton = tl = None

__all__ = ["EdgePattern", "edge_attention", "edge_pattern"]

_INDEX_LIMIT = 2**31 - 1  # the patterns are int32


# Patterns --------------------------------------------------------------------------------


class EdgePattern(NamedTuple):
    r"""A graph's edges sorted by target (CSR) and by source (CSC), int32.

    The edges are the stored ones followed, with :obj:`add_self_loops`, by one self-loop per
    node; stored self-loops are then moved past the last row (``rowptr[-1]``, ``colptr[-1]``)
    so that no kernel visits them, as :func:`~torch_geometric.utils.add_remaining_self_loops`
    drops them. :obj:`loop_edge` is, per node, the last stored self-loop whose weight and
    features the appended loop takes (:obj:`-1`: none stored).
    """

    rowptr: Tensor  # [N_dst + 1]
    col: Tensor  # [E'] source of each CSR edge
    eid: Tensor  # [E'] its index in the edge list (stored edges, then loops)
    colptr: Tensor  # [N_src + 1]
    row: Tensor  # [E'] target of each CSC edge
    eid_csc: Tensor  # [E']
    loop_edge: Tensor | None  # [N] with add_self_loops, else None
    default_weight: Tensor  # [E'] a_ij of an edge_weight=None call

    @property
    def num_edges(self) -> int:
        return self.col.numel()

    def weights(self, edge_weight: Tensor | None, fill_value: float, dtype) -> Tensor:
        """a_ij of every pattern edge (the appended loops: the stored loop's weight, else
        :obj:`fill_value`), in stored-edge order."""
        if edge_weight is None:
            w = self.default_weight
            return w if w.dtype == dtype else w.to(dtype)
        edge_weight = edge_weight.to(dtype)
        if self.loop_edge is None:
            return edge_weight
        stored = edge_weight.index_select(0, self.loop_edge.clamp(min=0))
        loops = torch.where(self.loop_edge >= 0, stored, fill_value)
        return torch.cat([edge_weight, loops])

    def edge_attr(self, edge_attr: Tensor | None, edge_index: Tensor, fill) -> Tensor | None:
        """Edge features of every pattern edge: the appended loops take the stored loop's,
        else :obj:`fill` as :func:`~torch_geometric.utils.add_remaining_self_loops` does."""
        if edge_attr is None or self.loop_edge is None:
            return edge_attr
        n = self.loop_edge.numel()
        loops = compute_loop_attr(edge_index, edge_attr, n, False, fill)
        stored = edge_attr.index_select(0, self.loop_edge.clamp(min=0))
        has = (self.loop_edge >= 0).view(-1, *[1] * (edge_attr.dim() - 1))
        return torch.cat([edge_attr, torch.where(has, stored, loops)])


def _sorted(key: Tensor, other: Tensor, limit: int, n: int):
    """(pointers [n + 1], other sorted, permutation) of the edges sorted by key, ties by other;
    static shapes: searchsorted, not bincount (which reads its maximum back to the host)."""
    perm = torch.argsort(key * (limit + 1) + other, stable=True)
    ptr = torch.searchsorted(key.index_select(0, perm),
                             torch.arange(n + 1, device=key.device))
    return ptr.int(), other.index_select(0, perm).int(), perm.int()


def build_pattern(edge_index: Tensor, n_src: int, n_dst: int, add_self_loops: bool,
                  fill_value: float = 1.0, dtype: torch.dtype = torch.float32) -> EdgePattern:
    """The CSR and CSC patterns of :obj:`edge_index` (:class:`EdgePattern`), shapes fixed by
    the input's (no host read: this traces under ``torch.compile`` without a break)."""
    src, dst = edge_index[0].long(), edge_index[1].long()
    loop_edge = None
    weight = torch.ones(src.numel(), dtype=dtype, device=src.device)
    if add_self_loops:
        is_loop = src == dst
        ids = torch.arange(src.numel(), device=src.device)
        loop_edge = torch.full((n_src,), -1, dtype=torch.long, device=src.device).scatter_reduce(
            0, src, torch.where(is_loop, ids, -1), "amax")
        nodes = torch.arange(n_src, device=src.device)
        keep = torch.cat([~is_loop, torch.ones_like(nodes, dtype=torch.bool)])
        src, dst = torch.cat([src, nodes]), torch.cat([dst, nodes])
        # With edge_weight=None the stored weights are 1: an appended loop weighs 1 where a
        # loop was stored, else fill_value.
        loops = torch.where(loop_edge >= 0, 1.0, float(fill_value)).to(dtype)
        weight = torch.cat([weight, loops])
        dst_key = torch.where(keep, dst, n_dst)  # stored loops past the last row
        src_key = torch.where(keep, src, n_src)
    else:
        dst_key, src_key = dst, src
    rowptr, col, eid = _sorted(dst_key, src, n_src, n_dst)
    colptr, row, eid_csc = _sorted(src_key, dst, n_dst, n_src)
    return EdgePattern(rowptr, col, eid, colptr, row, eid_csc, loop_edge, weight)


# Per graph tensor: (version, configuration, pattern). Keyed by identity (weakly, so an entry
# goes with its tensor, and a new tensor at a freed address is never mistaken for it).
_PATTERNS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def edge_pattern(edge_index: Tensor, n_src: int, n_dst: int, add_self_loops: bool,
                 fill_value: float = 1.0, dtype: torch.dtype = torch.float32) -> EdgePattern:
    """:func:`build_pattern`, computed on the first call and cached while :obj:`edge_index` is
    the same tensor, unchanged (its version counter); under ``torch.compile``, and for a tensor
    made under ``torch.inference_mode`` (which has no version counter), built each call."""
    config = (n_src, n_dst, add_self_loops, float(fill_value), dtype)
    version = tensor_version(edge_index)
    cache = not is_compiling() and version is not None
    if cache:
        cached = _PATTERNS.get(edge_index)
        if cached is not None and cached[:2] == (version, config):
            return cached[2]
    pattern = build_pattern(edge_index, n_src, n_dst, add_self_loops, fill_value, dtype)
    if cache:
        _PATTERNS[edge_index] = (version, config, pattern)
    return pattern


def fits(num_edges: int, num_nodes: int) -> bool:
    """Whether a graph fits the kernels' int32 patterns (edges plus appended loops)."""
    return num_edges + num_nodes < _INDEX_LIMIT


# Kernels -----------------------------------------------------------------------------------
# Plain functions, decorated on first launch (see _compiled). Each program is one target row
# (or source column) and one head; the edges come in blocks of BLOCK_E, the channels C and the
# unit-feature size D as whole (padded) tiles.


def _forward_kernel(
    h_ptr, s_dst_ptr, s_src_ptr, s_edge_ptr, u_dst_ptr, u_src_ptr, w_ptr,
    rowptr_ptr, col_ptr, eid_ptr, out_ptr, m_ptr, z_ptr,
    H, C, D, slope,
    ATT: tl.constexpr, EDGE: tl.constexpr, SIM: tl.constexpr, LOOPS: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    hd = tl.program_id(1).to(tl.int64)
    start = tl.load(rowptr_ptr + i)
    end = tl.load(rowptr_ptr + i + 1)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    fixed = tl.zeros([BLOCK_C], dtype=tl.float32)  # sum_j (a_ij + c_ij) h_j
    attended = tl.zeros([BLOCK_C], dtype=tl.float32)  # sum_j exp(e_ij - m) h_j
    m = tl.max(tl.full([BLOCK_E], float("-inf"), tl.float32), axis=0)  # running max (eq. 5)
    z = tl.sum(tl.zeros([BLOCK_E], dtype=tl.float32), axis=0)  # running sum
    loops = tl.sum(tl.zeros([BLOCK_E], dtype=tl.float32), axis=0)  # L_i
    s_i = 0.0
    if ATT:
        s_i = tl.load(s_dst_ptr + i * H + hd).to(tl.float32)
    u_i = tl.zeros([BLOCK_D], dtype=tl.float32)
    if SIM:
        u_i = tl.load(u_dst_ptr + i * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < end
        j = tl.load(col_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
        eid = tl.load(eid_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
        h_j = tl.load(h_ptr + (j[:, None] * H + hd) * C + offs_c[None, :],
                      mask=mask_e[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
        coef = tl.load(w_ptr + eid, mask=mask_e, other=0.0).to(tl.float32)  # a_ij (eq. 3)
        if SIM:  # c_ij (eq. 7)
            u_j = tl.load(u_src_ptr + j[:, None] * D + offs_d[None, :],
                          mask=mask_e[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
            coef += tl.sum(u_j * u_i[None, :], axis=1)
        fixed += tl.sum(coef[:, None] * h_j, axis=0)
        if ATT:
            pre = s_i + tl.load(s_src_ptr + j * H + hd, mask=mask_e, other=0.0).to(tl.float32)
            if EDGE:
                pre += tl.load(s_edge_ptr + eid * H + hd, mask=mask_e, other=0.0).to(tl.float32)
            e = tl.where(pre > 0, pre, pre * slope)  # eq. 4
            e = tl.where(mask_e, e, float("-inf"))
            m_new = tl.maximum(m, tl.max(e, axis=0))
            scale = tl.exp(m - m_new)
            p = tl.exp(e - m_new)
            z = z * scale + tl.sum(p, axis=0)
            attended = attended * scale + tl.sum(p[:, None] * h_j, axis=0)
            m = m_new
            if LOOPS:
                loops += tl.sum(tl.where(mask_e & (j == i), 1.0, 0.0), axis=0)
    out = fixed
    if ATT:
        inv_z = 1.0 / tl.where(z > 0, z, 1.0)
        out += attended * inv_z  # sum_j alpha_ij h_j (eq. 5)
        if LOOPS:  # eq. 6: max_k alpha_ik = exp(m - m) / Z_i on every self-loop
            h_i = tl.load(h_ptr + (i * H + hd) * C + offs_c, mask=mask_c, other=0.0)
            out += (loops * inv_z) * h_i.to(tl.float32)
        tl.store(m_ptr + i * H + hd, m)
        tl.store(z_ptr + i * H + hd, z)
    tl.store(out_ptr + (i * H + hd) * C + offs_c, out.to(out_ptr.dtype.element_ty), mask=mask_c)


def _backward_rows_kernel(
    g_ptr, h_ptr, s_dst_ptr, s_src_ptr, s_edge_ptr, u_src_ptr, m_ptr, z_ptr,
    rowptr_ptr, col_ptr, eid_ptr, n_dst, num_edges,
    dpre_ptr, dot_ptr, ds_dst_ptr, du_dst_ptr,
    H, C, D, slope,
    ATT: tl.constexpr, EDGE: tl.constexpr, SIM: tl.constexpr, LOOPS: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Per target row i and head: G_ij = <g_i, h_j> of every edge (the gradient of a_ij and,
    summed over heads, of c_ij), d pre_ij (the score gradient before LeakyReLU), their row
    sums into ds_dst and du_dst. The program after the last row zeroes the dropped loops."""
    i = tl.program_id(0).to(tl.int64)
    hd = tl.program_id(1).to(tl.int64)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    if i < n_dst:
        start = tl.load(rowptr_ptr + i)
        end = tl.load(rowptr_ptr + i + 1)
        g_i = tl.load(g_ptr + (i * H + hd) * C + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        s_i = 0.0
        m_i = 0.0
        inv_z = 0.0
        if ATT:
            s_i = tl.load(s_dst_ptr + i * H + hd).to(tl.float32)
            m_i = tl.load(m_ptr + i * H + hd)
            z_i = tl.load(z_ptr + i * H + hd)
            inv_z = 1.0 / tl.where(z_i > 0, z_i, 1.0)
        # Pass 1 (attention only): D_i = sum_j alpha_ij G_ij, the ties T_i of the row
        # maximum (eq. 6's max shares its gradient among them, as torch.amax does), L_i.
        dsum = tl.sum(tl.zeros([BLOCK_E], dtype=tl.float32), axis=0)
        ties = tl.sum(tl.zeros([BLOCK_E], dtype=tl.float32), axis=0)
        loops = tl.sum(tl.zeros([BLOCK_E], dtype=tl.float32), axis=0)
        if ATT:
            for e0 in range(start, end, BLOCK_E):
                offs_e = e0 + tl.arange(0, BLOCK_E)
                mask_e = offs_e < end
                j = tl.load(col_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
                eid = tl.load(eid_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
                h_j = tl.load(h_ptr + (j[:, None] * H + hd) * C + offs_c[None, :],
                              mask=mask_e[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
                dot = tl.sum(h_j * g_i[None, :], axis=1)
                pre = s_i + tl.load(s_src_ptr + j * H + hd, mask=mask_e, other=0.0).to(tl.float32)
                if EDGE:
                    pre += tl.load(s_edge_ptr + eid * H + hd, mask=mask_e,
                                   other=0.0).to(tl.float32)
                e = tl.where(pre > 0, pre, pre * slope)
                alpha = tl.where(mask_e, tl.exp(e - m_i) * inv_z, 0.0)
                dsum += tl.sum(alpha * dot, axis=0)
                ties += tl.sum(tl.where(mask_e & (e >= m_i), 1.0, 0.0), axis=0)
                if LOOPS:
                    loops += tl.sum(tl.where(mask_e & (j == i), 1.0, 0.0), axis=0)
        q = 0.0  # the gradient of max_k alpha_ik: L_i <g_i, h_i>
        if ATT and LOOPS:
            h_i = tl.load(h_ptr + (i * H + hd) * C + offs_c, mask=mask_c, other=0.0)
            q = loops * tl.sum(h_i.to(tl.float32) * g_i, axis=0)
        tie_share = q * inv_z / tl.where(ties > 0, ties, 1.0)
        ds_i = tl.sum(tl.zeros([BLOCK_E], dtype=tl.float32), axis=0)
        du_i = tl.zeros([BLOCK_D], dtype=tl.float32)
        # Pass 2: per edge G_ij and d pre_ij, stored at the edge's index.
        for e0 in range(start, end, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            mask_e = offs_e < end
            j = tl.load(col_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
            eid = tl.load(eid_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
            h_j = tl.load(h_ptr + (j[:, None] * H + hd) * C + offs_c[None, :],
                          mask=mask_e[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
            dot = tl.sum(h_j * g_i[None, :], axis=1)
            tl.store(dot_ptr + eid * H + hd, dot, mask=mask_e)
            if SIM:
                u_j = tl.load(u_src_ptr + j[:, None] * D + offs_d[None, :],
                              mask=mask_e[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                du_i += tl.sum(dot[:, None] * u_j, axis=0)
            if ATT:
                pre = s_i + tl.load(s_src_ptr + j * H + hd, mask=mask_e, other=0.0).to(tl.float32)
                if EDGE:
                    pre += tl.load(s_edge_ptr + eid * H + hd, mask=mask_e,
                                   other=0.0).to(tl.float32)
                e = tl.where(pre > 0, pre, pre * slope)
                alpha = tl.where(mask_e, tl.exp(e - m_i) * inv_z, 0.0)
                # softmax backward with eq. 6's term: alpha (G + [tie] q/(T alpha) - D - q/Z)
                de = alpha * (dot - dsum - q * inv_z) + tl.where(mask_e & (e >= m_i),
                                                                 tie_share, 0.0)
                dpre = de * tl.where(pre > 0, 1.0, slope)
                tl.store(dpre_ptr + eid * H + hd, dpre, mask=mask_e)
                ds_i += tl.sum(dpre, axis=0)
        if ATT:
            tl.store(ds_dst_ptr + i * H + hd, ds_i)
        if SIM:
            tl.store(du_dst_ptr + (i * H + hd) * D + offs_d, du_i, mask=mask_d)
    else:  # the dropped stored self-loops get no gradient
        start = tl.load(rowptr_ptr + n_dst)
        for e0 in range(start, num_edges, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            mask_e = offs_e < num_edges
            eid = tl.load(eid_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
            zero = tl.zeros([BLOCK_E], dtype=tl.float32)
            tl.store(dot_ptr + eid * H + hd, zero, mask=mask_e)
            if ATT:
                tl.store(dpre_ptr + eid * H + hd, zero, mask=mask_e)


def _backward_columns_kernel(
    g_ptr, s_dst_ptr, s_src_ptr, s_edge_ptr, u_dst_ptr, u_src_ptr, w_ptr, m_ptr, z_ptr,
    colptr_ptr, row_ptr, eid_ptr, dpre_ptr, dot_ptr,
    dh_ptr, ds_src_ptr, du_src_ptr,
    H, C, D, slope,
    ATT: tl.constexpr, EDGE: tl.constexpr, SIM: tl.constexpr, LOOPS: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Per source j and head, over the source-sorted pattern: dh_j = sum_i (a + b + c)_ij g_i
    with the coefficients recomputed from the saved m_i, Z_i; ds_src_j; du_src_j."""
    j = tl.program_id(0).to(tl.int64)
    hd = tl.program_id(1).to(tl.int64)
    start = tl.load(colptr_ptr + j)
    end = tl.load(colptr_ptr + j + 1)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    t_j = 0.0
    if ATT:
        t_j = tl.load(s_src_ptr + j * H + hd).to(tl.float32)
    u_j = tl.zeros([BLOCK_D], dtype=tl.float32)
    if SIM:
        u_j = tl.load(u_src_ptr + j * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dh = tl.zeros([BLOCK_C], dtype=tl.float32)
    du = tl.zeros([BLOCK_D], dtype=tl.float32)
    ds = tl.sum(tl.zeros([BLOCK_E], dtype=tl.float32), axis=0)
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < end
        i = tl.load(row_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
        eid = tl.load(eid_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
        g_i = tl.load(g_ptr + (i[:, None] * H + hd) * C + offs_c[None, :],
                      mask=mask_e[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
        coef = tl.load(w_ptr + eid, mask=mask_e, other=0.0).to(tl.float32)
        if SIM:
            u_i = tl.load(u_dst_ptr + i[:, None] * D + offs_d[None, :],
                          mask=mask_e[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
            coef += tl.sum(u_i * u_j[None, :], axis=1)
            dot = tl.load(dot_ptr + eid * H + hd, mask=mask_e, other=0.0)
            du += tl.sum(dot[:, None] * u_i, axis=0)
        if ATT:
            pre = tl.load(s_dst_ptr + i * H + hd, mask=mask_e, other=0.0).to(tl.float32) + t_j
            if EDGE:
                pre += tl.load(s_edge_ptr + eid * H + hd, mask=mask_e, other=0.0).to(tl.float32)
            e = tl.where(pre > 0, pre, pre * slope)
            m_i = tl.load(m_ptr + i * H + hd, mask=mask_e, other=0.0)
            z_i = tl.load(z_ptr + i * H + hd, mask=mask_e, other=1.0)
            inv_z = 1.0 / tl.where(z_i > 0, z_i, 1.0)
            coef += tl.where(mask_e, tl.exp(e - m_i) * inv_z, 0.0)
            if LOOPS:
                coef += tl.where(mask_e & (i == j), inv_z, 0.0)  # eq. 6
            ds += tl.sum(tl.load(dpre_ptr + eid * H + hd, mask=mask_e, other=0.0), axis=0)
        dh += tl.sum(coef[:, None] * g_i, axis=0)
    tl.store(dh_ptr + (j * H + hd) * C + offs_c, dh.to(dh_ptr.dtype.element_ty), mask=mask_c)
    if ATT:
        tl.store(ds_src_ptr + j * H + hd, ds)
    if SIM:
        tl.store(du_src_ptr + (j * H + hd) * D + offs_d, du, mask=mask_d)


@functools.cache
def _compiled(fn):
    """``triton.jit(fn)``, once a kernel (compiled, or interpreted under TRITON_INTERPRET=1)."""
    return triton.jit(fn)


def _launch(fn, grid, *args, **meta):
    record_launch(fn.__name__)  # what agcn_pyg.nn.kernels.counting counts for the op
    _compiled(fn)[grid](*args, **meta)


def _blocks(c: int, d: int) -> dict:
    block_c = triton.next_power_of_2(max(c, 1))
    block_d = triton.next_power_of_2(max(d, 1))
    # Edge blocks of 16 (the typical degree), fewer where a tile would exceed 8192 floats.
    block_e = max(1, min(16, 8192 // max(block_c, block_d)))
    return dict(BLOCK_E=block_e, BLOCK_C=block_c, BLOCK_D=block_d)


# The custom ops ---------------------------------------------------------------------------


def _flags(s_dst, s_edge, u_dst, loops) -> dict:
    return dict(ATT=s_dst is not None, EDGE=s_edge is not None, SIM=u_dst is not None,
                LOOPS=bool(loops) and s_dst is not None)


@torch.library.custom_op("agcn::edge_attention", mutates_args=())
def _edge_attention(
    h: Tensor, s_dst: Tensor | None, s_src: Tensor | None, s_edge: Tensor | None,
    u_dst: Tensor | None, u_src: Tensor | None, weight: Tensor,
    rowptr: Tensor, col: Tensor, eid: Tensor, colptr: Tensor, row: Tensor, eid_csc: Tensor,
    negative_slope: float, loops: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(out [N_dst, H, C], m, Z [N_dst, H]); the CSC pattern is for the backward only."""
    n_dst, (_, heads, c) = rowptr.numel() - 1, h.shape
    d = u_dst.size(1) if u_dst is not None else 1
    out = h.new_empty(n_dst, heads, c)
    m = h.new_empty(n_dst, heads, dtype=torch.float32)
    z = torch.empty_like(m)
    if n_dst > 0 and heads > 0:
        _launch(_forward_kernel, (n_dst, heads), h, s_dst, s_src, s_edge, u_dst, u_src, weight,
                rowptr, col, eid, out, m, z, heads, c, d, float(negative_slope),
                **_flags(s_dst, s_edge, u_dst, loops), **_blocks(c, d))
    return out, m, z


@_edge_attention.register_fake
def _(h, s_dst, s_src, s_edge, u_dst, u_src, weight, rowptr, col, eid, colptr, row, eid_csc,
      negative_slope, loops):
    n_dst, heads = rowptr.size(0) - 1, h.size(1)
    m = h.new_empty(n_dst, heads, dtype=torch.float32)
    return h.new_empty(n_dst, heads, h.size(2)), m, torch.empty_like(m)


@torch.library.custom_op("agcn::edge_attention_backward", mutates_args=())
def _edge_attention_backward(
    grad: Tensor, h: Tensor, s_dst: Tensor | None, s_src: Tensor | None,
    s_edge: Tensor | None, u_dst: Tensor | None, u_src: Tensor | None, weight: Tensor,
    m: Tensor, z: Tensor, rowptr: Tensor, col: Tensor, eid: Tensor, colptr: Tensor,
    row: Tensor, eid_csc: Tensor, negative_slope: float, loops: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dh, ds_dst, ds_src, dpre [E', H], dot [E', H], du_dst [N_dst, H, D],
    du_src [N_src, H, D]); the last four in float32, summed over heads by the caller."""
    grad = grad.contiguous()
    n_dst, n_src, (_, heads, c) = rowptr.numel() - 1, colptr.numel() - 1, h.shape
    num_edges = col.numel()
    d = u_dst.size(1) if u_dst is not None else 1
    f32 = dict(dtype=torch.float32, device=h.device)
    dh = torch.empty_like(h)
    ds_dst = torch.empty(n_dst, heads, **f32)
    ds_src = torch.empty(n_src, heads, **f32)
    dpre = torch.empty(num_edges, heads, **f32)
    dot = torch.empty(num_edges, heads, **f32)
    du_dst = torch.empty(n_dst, heads, d, **f32)
    du_src = torch.empty(n_src, heads, d, **f32)
    flags, blocks, slope = _flags(s_dst, s_edge, u_dst, loops), _blocks(c, d), float(negative_slope)
    if heads > 0:
        _launch(_backward_rows_kernel, (n_dst + 1, heads), grad, h, s_dst, s_src, s_edge,
                u_src, m, z, rowptr, col, eid, n_dst, num_edges, dpre, dot, ds_dst, du_dst,
                heads, c, d, slope, **flags, **blocks)
    if heads > 0 and n_src > 0:
        _launch(_backward_columns_kernel, (n_src, heads), grad, s_dst, s_src, s_edge, u_dst,
                u_src, weight, m, z, colptr, row, eid_csc, dpre, dot, dh, ds_src, du_src,
                heads, c, d, slope, **flags, **blocks)
    return dh, ds_dst, ds_src, dpre, dot, du_dst, du_src


@_edge_attention_backward.register_fake
def _(grad, h, s_dst, s_src, s_edge, u_dst, u_src, weight, m, z, rowptr, col, eid, colptr,
      row, eid_csc, negative_slope, loops):
    n_dst, n_src, heads, num_edges = rowptr.size(0) - 1, colptr.size(0) - 1, h.size(1), col.size(0)
    d = u_dst.size(1) if u_dst is not None else 1
    f32 = dict(dtype=torch.float32, device=h.device)
    return (torch.empty_like(h), torch.empty(n_dst, heads, **f32),
            torch.empty(n_src, heads, **f32), torch.empty(num_edges, heads, **f32),
            torch.empty(num_edges, heads, **f32), torch.empty(n_dst, heads, d, **f32),
            torch.empty(n_src, heads, d, **f32))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:13], output[1], output[2])
    ctx.negative_slope, ctx.loops = inputs[13], inputs[14]
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad, _grad_m, _grad_z):
    h, s_dst, s_src, s_edge, u_dst, u_src, weight, *pattern, m, z = ctx.saved_tensors
    dh, ds_dst, ds_src, dpre, dot, du_dst, du_src = _edge_attention_backward(
        grad, h, s_dst, s_src, s_edge, u_dst, u_src, weight, m, z, *pattern,
        ctx.negative_slope, ctx.loops)
    needs = ctx.needs_input_grad

    def grad_of(k, like, t):
        """t for input k in like's dtype; per-head partials [.., H, ..] of a head-shared
        input (unit features, weights) summed over the heads (a view for one head)."""
        if like is None or not needs[k]:
            return None
        if k >= 4:
            t = t.select(1, 0) if t.size(1) == 1 else t.sum(1)
        return t if t.dtype == like.dtype else t.to(like.dtype)

    return (dh if needs[0] else None, grad_of(1, s_dst, ds_dst), grad_of(2, s_src, ds_src),
            grad_of(3, s_edge, dpre), grad_of(4, u_dst, du_dst), grad_of(5, u_src, du_src),
            grad_of(6, weight, dot), *[None] * 8)


_edge_attention.register_autograd(_backward, setup_context=_setup_context)


def edge_attention(
    h: Tensor, pattern: EdgePattern, weight: Tensor, s_dst: Tensor | None = None,
    s_src: Tensor | None = None, s_edge: Tensor | None = None, u_dst: Tensor | None = None,
    u_src: Tensor | None = None, negative_slope: float = 0.2, loops: bool = True,
) -> Tensor:
    r"""Eq. 3-7 over :obj:`pattern`'s edges (see the module docstring), fused:
    :math:`\mathbf{o}_i = \sum_j (a_{ij} + b_{ij} + c_{ij}) \mathbf{h}_j`.

    Args:
        h (torch.Tensor): Messages :math:`\mathbf{\Theta}\mathbf{x}_j`, :obj:`[N_src, H, C]`.
        pattern (EdgePattern): The graph (:func:`edge_pattern`).
        weight (torch.Tensor): :math:`a_{ij}` of every pattern edge, :obj:`[E']`
            (:meth:`EdgePattern.weights`).
        s_dst, s_src (torch.Tensor, optional): Eq. 4's target and source score halves,
            :obj:`[N_dst, H]` and :obj:`[N_src, H]`; :obj:`None`: no attention graph.
        s_edge (torch.Tensor, optional): The edge-feature score, :obj:`[E', H]`.
        u_dst, u_src (torch.Tensor, optional): Unit rows of eq. 7, :obj:`[N_dst, D]` and
            :obj:`[N_src, D]` (the same tensor twice for one node set); :obj:`None`: no
            similarity graph.
        negative_slope (float): LeakyReLU's slope in eq. 4.
        loops (bool): Whether an edge :math:`i \to i` is a self-loop with eq. 6's term
            (:obj:`False` for bipartite graphs).

    Returns:
        :obj:`[N_dst, H, C]` in :obj:`h`'s dtype (accumulated in float32).
    """
    if s_dst is not None:
        s_dst, s_src = s_dst.contiguous(), s_src.contiguous()
    if s_edge is not None:
        s_edge = s_edge.contiguous()
    return _edge_attention(
        h.contiguous(), s_dst, s_src, s_edge, u_dst, u_src, weight.contiguous(),
        pattern.rowptr, pattern.col, pattern.eid, pattern.colptr, pattern.row,
        pattern.eid_csc, float(negative_slope), bool(loops))[0]
