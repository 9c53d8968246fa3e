r"""The label co-occurrence graph: the fixed adjacency :math:`A` of ML-AGCN eq. (3).

Every node is a label. From a training set's multi-hot label matrix we count how often two
labels appear in the same image and turn the counts into the conditional probability of
eq. (1),

.. math::
    P_{ij} = P(j \mid i) = \frac{\text{count}(i, j)}{\text{count}(i)}.

**Orientation.** Every matrix returned here follows PyG's target-row convention, the one the
layer consumes: ``adj[i, j]`` is the weight of the edge :math:`j \to i`, i.e. node :math:`i`
aggregates node :math:`j` with that weight (``out = adj @ x``).

**ML-AGCN's A.** The paper says that :math:`A` is "defined as in [6]" (ML-GCN) but with no
threshold (footnote 1), and that "A is normalized before applying Eq. (2)". Three readings
are offered by :meth:`LabelGraph.adjacency` (``kind``), all without a threshold:

* ``"normalized"`` (the default, :data:`DEFAULT_ADJACENCY`) — ML-GCN's normalisation
  (``gen_adj``) applied to the un-thresholded :math:`P`:
  :math:`\hat{A} = D P^\top D`, :math:`D = \mathrm{diag}(P \mathbf{1})^{-1/2}`, so
  ``adj[i, j]`` :math:`= P(i \mid j) / \sqrt{r_i r_j}` with :math:`r_i = \sum_k P(k \mid i)`.
  Label :math:`i` aggregates label :math:`j` in proportion to how likely :math:`i` is once
  :math:`j` is present — ML-GCN's orientation (see :func:`mlgcn_normalize`). The paper's
  text (A as in ML-GCN, normalised, no threshold) reads most directly this way, and it
  trains as well as or better than the others (README, "Fidelity").
* ``"cooccurrence"`` — the raw :math:`P`: ``adj[i, j]`` :math:`= P(j \mid i)`, not
  transposed, not normalised; rows sum to :math:`1 + \sum_{j \ne i} P(j \mid i)` (1.35 to
  6.72 on COCO's train2014), so it outweighs :math:`B` (rows :math:`\approx 1 +
  \max_k \alpha_{ik}`) several times over. This was the project's :math:`A` before the
  variants existed; checkpoints of that time hold it and keep it.
* ``"row_normalized"`` — :math:`D^{-1} P` with :math:`D = \mathrm{diag}(P \mathbf{1})`:
  ``adj[i, j]`` :math:`= P(j \mid i) / r_i`, rows sum to 1 (a random walk on the label
  graph), the raw orientation.

The diagonal of :math:`P` is 1 for every label that occurs: it plays the part of ML-GCN's
added identity. Labels that never occur have a zero row and column in every variant.

:func:`mlgcn_adjacency` reproduces ML-GCN's thresholded, re-weighted, normalised matrix
exactly, for the ML-GCN baseline and for the ablation "Original graph (A)" in Table 3.

**Label sets of any size.** From a *sparse* multi-hot matrix (:mod:`scipy.sparse` or
:obj:`torch.sparse`, e.g. :func:`multi_hot_from_lists`), :func:`sparse_cooccurrence_counts`
computes :math:`Y^\top Y` and :func:`sparse_conditional_probability` :math:`P` as sparse
matrices, never an :obj:`[N, N]` array; :class:`LabelGraph` keeps them sparse, saved and
loaded too, and :class:`~agcn_pyg.AdaptiveGCNConv` with :obj:`complete=True` takes such an
:math:`A` (:class:`~agcn_pyg.MultiLabelHead` does so by itself).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from agcn_pyg.io import load_tensors

__all__ = [
    "ADJACENCY_KINDS",
    "DEFAULT_ADJACENCY",
    "LabelGraph",
    "conditional_probability",
    "cooccurrence_counts",
    "infer_adjacency_kind",
    "label_graph_from_coco",
    "mlgcn_adjacency",
    "mlgcn_normalize",
    "multi_hot_from_lists",
    "probability_from_adjacency",
    "row_normalize",
    "sparse_conditional_probability",
    "sparse_cooccurrence_counts",
]

#: The ``kind`` values of :meth:`LabelGraph.adjacency`.
ADJACENCY_KINDS = ("normalized", "cooccurrence", "row_normalized", "mlgcn")
#: The :math:`A` that :meth:`LabelGraph.adjacency` and ``examples/coco_train.py`` use by default.
DEFAULT_ADJACENCY = "normalized"


def _as_multi_hot(labels: Any, name: str = "labels") -> Tensor:
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
    if y.dim() != 2:
        raise ValueError(
            f"`{name}` must be a [num_samples, num_labels] multi-hot matrix, "
            f"got shape {tuple(y.shape)}"
        )
    # `> 0` so that ML-GCN's -1/0/1 target encoding (VOC) also reads as absent/present.
    return y > 0


def cooccurrence_counts(labels: Any) -> tuple[Tensor, Tensor]:
    r"""Counts label pairs appearing in the same sample.

    Args:
        labels (Tensor or np.ndarray): Multi-hot matrix of shape ``[num_samples, N]``
            (bool or 0/1; any value ``> 0`` counts as present).

    Returns:
        ``(counts, nums)``: ``counts[i, j]`` (``int64``, ``[N, N]``, symmetric) is the number
        of samples containing both :math:`i` and :math:`j`; the diagonal ``counts[i, i] =
        nums[i]`` is the number of samples containing :math:`i`.
    """
    y = _as_multi_hot(labels)
    # float64 matmul is exact for counts below 2**53 and much faster than integer matmul.
    yf = y.to(torch.float64)
    counts = (yf.t() @ yf).round().to(torch.long)
    return counts, counts.diagonal().clone()


def conditional_probability(counts: Tensor, nums: Tensor) -> Tensor:
    r"""Eq. (1)'s :math:`P_{ij} = P(j \mid i)` = ``counts[i, j] / nums[i]``, no threshold.

    This is the ``"cooccurrence"`` reading of ML-AGCN's :math:`A` (module docstring; the
    other readings normalise it). Labels that never occur (``nums[i] == 0``) get a zero row
    instead of NaN.

    Returns:
        ``[N, N]`` tensor of the default float dtype; diagonal 1 for labels that occur.
    """
    return _probability64(counts, nums).to(torch.get_default_dtype())


def _probability64(counts: Tensor, nums: Tensor) -> Tensor:
    counts, nums = _check_counts(counts, nums)
    denom = nums.to(torch.float64).clamp(min=1).unsqueeze(1)
    return counts.to(torch.float64) / denom  # rows with nums[i] == 0 have zero counts too


def _is_sparse_labels(labels: Any) -> bool:
    """A torch sparse tensor or a scipy.sparse matrix/array (duck-typed: no scipy import)."""
    if isinstance(labels, Tensor):
        return labels.layout != torch.strided
    return hasattr(labels, "tocoo") and hasattr(labels, "nnz")


def _as_sparse_multi_hot(labels: Any, name: str = "labels") -> Tensor:
    """A coalesced float64 torch.sparse_coo [num_samples, N] of ones where labels > 0."""
    if isinstance(labels, Tensor):
        y = labels if labels.layout != torch.strided else labels.to_sparse()
        y = y.to_sparse_coo().coalesce()
        index, value = y.indices(), y.values()
    elif _is_sparse_labels(labels):
        coo = labels.tocoo()
        index = torch.stack(
            [
                torch.as_tensor(np.asarray(coo.row, dtype=np.int64)),
                torch.as_tensor(np.asarray(coo.col, dtype=np.int64)),
            ]
        )
        value = torch.as_tensor(np.asarray(coo.data))
    else:
        return _as_sparse_multi_hot(_as_multi_hot(labels, name).to_sparse(), name)
    shape = tuple(labels.shape)
    if len(shape) != 2:
        raise ValueError(
            f"`{name}` must be a [num_samples, num_labels] multi-hot matrix, got shape {shape}"
        )
    present = value > 0  # as for dense labels: ML-GCN's -1/0/1 encoding reads as 0/0/1
    index = index[:, present]
    ones = torch.ones(index.size(1), dtype=torch.float64)
    y = torch.sparse_coo_tensor(
        index, ones, shape, check_invariants=True
    ).coalesce()  # duplicates add up ...
    return torch.sparse_coo_tensor(
        y.indices(), torch.ones_like(y.values()), shape, check_invariants=False
    ).coalesce()


def multi_hot_from_lists(label_lists: Any, num_labels: int) -> Tensor:
    """A sparse ``[num_samples, num_labels]`` multi-hot matrix (``torch.sparse_coo``, ones)
    from one list of label indices per sample, e.g. read from list files, without any dense
    ``[num_samples, num_labels]`` array."""
    label_lists = list(label_lists)
    rows, cols = [], []
    for r, labels in enumerate(label_lists):
        for c in labels:
            c = int(c)
            if not 0 <= c < num_labels:
                raise ValueError(
                    f"`label_lists` sample {r} has label index {c}, outside [0, {num_labels - 1}]"
                )
            rows.append(r)
            cols.append(c)
    index = torch.tensor([rows, cols], dtype=torch.long).view(2, -1)
    values = torch.ones(index.size(1), dtype=torch.uint8)
    shape = (len(label_lists), num_labels)
    y = torch.sparse_coo_tensor(index, values, shape, check_invariants=False).coalesce()
    return torch.sparse_coo_tensor(
        y.indices(), torch.ones_like(y.values()), shape, check_invariants=False
    ).coalesce()


def sparse_cooccurrence_counts(labels: Any) -> tuple[Tensor, Tensor]:
    r""":func:`cooccurrence_counts` for label sets of any size: ``counts`` = :math:`Y^\top Y`
    as a coalesced ``torch.sparse_coo`` ``int64`` ``[N, N]`` matrix (only pairs that occur
    together are stored) and ``nums`` ``[N]`` dense, from a sparse multi-hot matrix
    (:mod:`scipy.sparse`, :obj:`torch.sparse` or dense; any value ``> 0`` is present). Work
    and memory are :math:`O(\sum_s k_s^2)` for samples with :math:`k_s` labels."""
    y = _as_sparse_multi_hot(labels)
    # float64 products are exact for counts below 2**53. (torch's "CSR support is in beta"
    # warning is about its internal CSR step, not about anything the caller can change.)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        counts = torch.sparse.mm(y.t().coalesce(), y).coalesce()
    counts = torch.sparse_coo_tensor(
        counts.indices(), counts.values().round().long(), counts.shape, check_invariants=False
    ).coalesce()
    nums = torch.zeros(y.size(1), dtype=torch.long).index_add_(
        0, y.indices()[1], torch.ones(y._nnz(), dtype=torch.long)
    )
    return counts, nums


def _sparse_probability64(counts: Tensor, nums: Tensor) -> Tensor:
    counts, nums = _check_counts(counts, nums)
    counts = counts.to_sparse_coo().coalesce()
    denom = nums.to(torch.float64).clamp(min=1).index_select(0, counts.indices()[0])
    return torch.sparse_coo_tensor(counts.indices(), counts.values().to(torch.float64) / denom,
                                   counts.shape, check_invariants=False).coalesce()


def sparse_conditional_probability(counts: Tensor, nums: Tensor) -> Tensor:
    r""":func:`conditional_probability` of sparse ``counts``: :math:`P(j \mid i)` =
    ``counts[i, j] / nums[i]`` as a coalesced ``torch.sparse_coo`` matrix of the default float
    dtype, with the pattern of ``counts`` (no threshold; labels that never occur have an
    empty row)."""
    counts, nums = _check_counts(counts, nums)
    counts = counts.to_sparse_coo().coalesce()
    row = counts.indices()[0]
    denom = nums.to(torch.float64).clamp(min=1).index_select(0, row)
    value = (counts.values().to(torch.float64) / denom).to(torch.get_default_dtype())
    return torch.sparse_coo_tensor(
        counts.indices(), value, counts.shape, check_invariants=False
    ).coalesce()


def mlgcn_adjacency(
    counts: Tensor,
    nums: Tensor,
    threshold: float = 0.4,
    p: float = 0.25,
    normalize: bool = True,
) -> Tensor:
    r"""ML-GCN's adjacency (``gen_A`` followed by ``gen_adj``), in our orientation.

    Steps, with :math:`P` from :func:`conditional_probability`:

    1. eq. (1): :math:`B_{ij} = [P_{ij} \ge \tau]`, with a zero diagonal;
    2. re-weighting by **column** sums, as ML-GCN's code does:
       :math:`A = B \cdot p / (\mathbf{1}^\top B + 10^{-6}) + I`;
    3. symmetric normalisation, as ``gen_adj``: :math:`\hat{A} = D A^\top D` with
       :math:`D = \mathrm{diag}(A \mathbf{1})^{-1/2}` (row sums of :math:`A`).

    ML-GCN then computes ``adj @ x``, so :math:`\hat{A}` is already in our orientation
    (``adj[i, j]`` = weight of :math:`j \to i`): after the transpose, label :math:`i`
    aggregates label :math:`j` when :math:`P(i \mid j) \ge \tau`.

    Args:
        counts (Tensor): ``[N, N]`` co-occurrence counts.
        nums (Tensor): ``[N]`` label counts.
        threshold (float, optional): :math:`\tau` of eq. (1). (default: :obj:`0.4`)
        p (float, optional): weight given to the neighbours. ML-GCN's code uses
            :obj:`0.25` and its author says this equals the paper's :math:`p = 0.2` after
            normalisation. (default: :obj:`0.25`)
        normalize (bool, optional): If :obj:`False`, skip step 3 and return :math:`A^\top`
            (``gen_A``'s matrix transposed into our orientation). (default: :obj:`True`)

    Labels that never occur get only their self-loop (no NaN): ML-GCN's
    ``counts / nums`` would give NaN there.
    """
    P = _probability64(counts, nums)
    N = P.size(0)
    eye = torch.eye(N, dtype=torch.float64)
    B = (P >= threshold).to(torch.float64) * (1 - eye)
    A = B * p / (B.sum(0, keepdim=True) + 1e-6) + eye
    A_hat = mlgcn_normalize(A) if normalize else A.t()
    return A_hat.to(torch.get_default_dtype())


def mlgcn_normalize(adj: Tensor) -> Tensor:
    r"""ML-GCN's normalisation (``gen_adj``) of a matrix in ML-GCN's orientation, returned
    in ours:

    .. math::
        \hat{A} = D M^\top D, \qquad D = \mathrm{diag}(M \mathbf{1})^{-1/2},

    i.e. ``out[i, j] = M[j, i] / sqrt(r[i] * r[j])`` with ``r = M.sum(1)``.

    ML-GCN's matrix :math:`M` has row :math:`i` = :math:`P(\cdot \mid i)`; its layers compute
    ``gen_adj(M) @ x``, so label :math:`i` aggregates label :math:`j` with weight
    :math:`\propto M_{ji} = P(i \mid j)`. Note that :math:`D` comes from the row sums of
    :math:`M`, which are the *column* sums of :math:`M^\top`: for a non-symmetric :math:`M`
    the rows of :math:`\hat{A}` need not sum to 1 (nor its spectrum lie in :math:`[-1, 1]`).
    We reproduce that exactly. Rows of :math:`M` that sum to 0 (labels that never occur)
    get :math:`D_{ii} = 0` instead of ``inf``: a zero row and column.

    Args:
        adj (Tensor): ``[N, N]`` non-negative matrix :math:`M` in ML-GCN's orientation
            (e.g. :func:`conditional_probability`'s :math:`P`), dense or ``torch.sparse``.

    Returns:
        ``[N, N]`` tensor of ``adj``'s floating dtype (float64 inside); a coalesced
        ``torch.sparse_coo`` one, with the transposed pattern, for sparse input.
    """
    M = _check_square_nonnegative(adj)
    if M.layout != torch.strided:  # only the stored entries: O(nnz)
        (row, col), value = M.indices(), M.values()
        d = _inv_sqrt(torch.zeros(M.size(0), dtype=torch.float64).index_add_(0, row, value))
        out = torch.sparse_coo_tensor(torch.stack([col, row]), d[col] * value * d[row],
                                      M.shape, check_invariants=False)
        return out.coalesce().to(_float_dtype(adj))
    d = _inv_sqrt(M.sum(1))
    return (d.unsqueeze(1) * M.t() * d.unsqueeze(0)).to(_float_dtype(adj))


def _inv_sqrt(r: Tensor) -> Tensor:
    return torch.where(r > 0, r.clamp(min=torch.finfo(r.dtype).tiny).rsqrt(), 0.0)


def row_normalize(adj: Tensor) -> Tensor:
    r"""Row-normalises a matrix, keeping its orientation: :math:`D^{-1} M` with
    :math:`D = \mathrm{diag}(M \mathbf{1})`, so every non-zero row sums to 1 (zero rows stay
    zero). On :math:`P` this gives ``adj[i, j]`` :math:`= P(j \mid i) / \sum_k P(k \mid i)`.

    Args:
        adj (Tensor): ``[N, N]`` non-negative matrix, dense or ``torch.sparse`` (then the
            result is a coalesced ``torch.sparse_coo`` matrix with the same pattern).
    """
    M = _check_square_nonnegative(adj)
    if M.layout != torch.strided:
        row, value = M.indices()[0], M.values()
        r = torch.zeros(M.size(0), dtype=torch.float64).index_add_(0, row, value)
        r = r.clamp(min=torch.finfo(r.dtype).tiny)  # a stored 0 in an empty row stays 0
        out = torch.sparse_coo_tensor(M.indices(), value / r[row], M.shape,
                                      check_invariants=False)
        return out.coalesce().to(_float_dtype(adj))
    r = M.sum(1, keepdim=True)
    return torch.where(r > 0, M / r.clamp(min=torch.finfo(r.dtype).tiny), 0.0).to(
        _float_dtype(adj)
    )


def probability_from_adjacency(adj: Tensor, kind: str) -> Tensor:
    r"""Recovers :math:`P_{ij} = P(j \mid i)` from an :math:`A` built by
    :meth:`LabelGraph.adjacency` (e.g. the ``adj`` a checkpoint stores), using
    :math:`P_{ii} = 1`:

    * ``"cooccurrence"``: :math:`P = A`;
    * ``"normalized"``: :math:`A_{ii} = 1 / r_i`, so :math:`P_{ij} = A_{ji} / \sqrt{A_{ii}
      A_{jj}}`;
    * ``"row_normalized"``: :math:`A_{ii} = 1 / r_i`, so :math:`P_{ij} = A_{ij} / A_{ii}`.

    Labels with a zero diagonal (never seen) get a zero row and column. ``"mlgcn"`` is
    thresholded and cannot be inverted.
    """
    if kind not in ("cooccurrence", "normalized", "row_normalized"):
        raise ValueError(f"`kind` must be 'cooccurrence', 'normalized' or 'row_normalized' "
                         f"(the thresholded 'mlgcn' cannot be inverted), got {kind!r}")
    A = _check_square_nonnegative(adj)
    if kind == "cooccurrence":
        return A.to(_float_dtype(adj))
    if A.layout != torch.strided:
        (row, col), value = A.indices(), A.values()
        on_diag = row == col
        diag = torch.zeros(A.size(0), dtype=torch.float64).index_add_(
            0, row[on_diag], value[on_diag])
    else:
        diag = A.diagonal()
    if kind == "normalized":  # P[i, j] = A[j, i] * s_i * s_j with s = diag^-1/2
        s = _inv_sqrt(diag)
        if A.layout != torch.strided:
            P = torch.sparse_coo_tensor(torch.stack([col, row]), value * s[row] * s[col],
                                        A.shape, check_invariants=False).coalesce()
        else:
            P = s.unsqueeze(1) * A.t() * s.unsqueeze(0)
    else:  # P[i, j] = A[i, j] / diag_i
        inv = torch.where(diag > 0, 1 / diag.clamp(min=torch.finfo(diag.dtype).tiny), 0.0)
        if A.layout != torch.strided:
            P = torch.sparse_coo_tensor(A.indices(), value * inv[row], A.shape,
                                        check_invariants=False).coalesce()
        else:
            P = A * inv.unsqueeze(1)
    return P.to(_float_dtype(adj))


def infer_adjacency_kind(adj: Tensor, atol: float = 1e-5) -> str | None:
    r"""Which :meth:`LabelGraph.adjacency` reading a dense :math:`A` is, for matrices that do
    not say (a model built by hand, a ``save_pretrained`` folder), or :obj:`None` if it is
    none of the invertible ones (``"mlgcn"``, a custom graph). Each test follows from
    :math:`P_{ii} = 1`: ``"cooccurrence"`` has a 0/1 diagonal and entries in :math:`[0, 1]`;
    ``"row_normalized"`` has rows summing to 1 (or 0); ``"normalized"`` gives back a
    :math:`P` (:func:`probability_from_adjacency`) in :math:`[0, 1]` whose row sums are
    :math:`1 / A_{ii}`. A graph of isolated labels passes all three, and all three read it
    the same way. ML-GCN's matrix (``"mlgcn"``) is ``gen_adj`` of a unit-diagonal matrix
    too, so it reads as ``"normalized"``: record the kind where it matters (checkpoints do,
    in ``config["adjacency"]``)."""
    A = _check_square_nonnegative(adj)
    if A.layout != torch.strided:
        A = A.to_dense()
    diag, rows = A.diagonal(), A.sum(1)
    if ((diag - diag.round()).abs() <= atol).all() and (diag <= 1 + atol).all() and (
            A <= 1 + atol).all():
        return "cooccurrence"
    if (((rows - 1).abs() <= atol) | (rows.abs() <= atol)).all():
        return "row_normalized"
    P = probability_from_adjacency(A, "normalized")
    present = diag > 0
    if (P <= 1 + atol).all() and torch.allclose(P.sum(1)[present] * diag[present],
                                                torch.ones_like(diag[present]), atol=atol):
        return "normalized"
    return None


def _float_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()


def _check_square_nonnegative(adj: Tensor) -> Tensor:
    """``adj`` in float64: dense, or a coalesced sparse COO matrix (any sparse layout in)."""
    adj = torch.as_tensor(adj)
    if adj.dim() != 2 or adj.size(0) != adj.size(1):
        raise ValueError(f"`adj` must be a square [N, N] matrix, got {tuple(adj.shape)}")
    if adj.layout != torch.strided:
        M = adj.to_sparse_coo().coalesce().to(torch.float64)
        values = M.values()
    else:
        M = values = adj.to(torch.float64)
    if values.numel() and (not torch.isfinite(values).all() or (values < 0).any()):
        raise ValueError("`adj` must hold finite, non-negative weights (a co-occurrence "
                         f"matrix), got values in [{values.min().item()}, "
                         f"{values.max().item()}]")
    return M


def _check_counts(counts: Tensor, nums: Tensor) -> tuple[Tensor, Tensor]:
    counts, nums = torch.as_tensor(counts), torch.as_tensor(nums)
    if counts.dim() != 2 or counts.size(0) != counts.size(1):
        raise ValueError(f"`counts` must be a square [N, N] matrix, got {tuple(counts.shape)}")
    if nums.shape != (counts.size(0),):
        raise ValueError(
            f"`nums` must have shape [{counts.size(0)}] to match `counts`, got {tuple(nums.shape)}"
        )
    return counts, nums


@dataclass(eq=False)  # tensors have no single truth value for ==
class LabelGraph:
    r"""Co-occurrence statistics of a training set: everything needed to build :math:`A`.

    Args:
        counts (Tensor): ``[N, N]`` pair counts (see :func:`cooccurrence_counts`).
        nums (Tensor): ``[N]`` per-label counts.
        label_names (list[str], optional): Name of each label index.
        adjacency_kind (str, optional): A record of which :meth:`adjacency` ``kind`` a
            model was built with (the training script's cache writes it); saved and loaded
            with the graph, never used to pick a default. (default: :obj:`None`, not
            recorded)

    Example::

        graph = label_graph_from_coco("annotations/instances_train2014.json")
        A = graph.adjacency()                 # ML-AGCN: D P^T D, no threshold
        A_raw = graph.adjacency("cooccurrence")  # P(j | i), not normalised
        A_gcn = graph.adjacency("mlgcn")      # ML-GCN's thresholded matrix
        graph.save("coco_graph.pt"); graph = LabelGraph.load("coco_graph.pt")
    """

    counts: Tensor
    nums: Tensor
    label_names: list[str] | None = None
    adjacency_kind: str | None = None

    def __post_init__(self) -> None:
        self.counts, self.nums = _check_counts(self.counts, self.nums)
        if self.adjacency_kind is not None and self.adjacency_kind not in ADJACENCY_KINDS:
            raise ValueError(f"`adjacency_kind` must be one of {ADJACENCY_KINDS} or None, "
                             f"got {self.adjacency_kind!r}")
        if self.label_names is not None:
            self.label_names = [str(n) for n in self.label_names]
            if len(self.label_names) != self.num_labels:
                raise ValueError(
                    f"`label_names` must have {self.num_labels} entries, "
                    f"got {len(self.label_names)}"
                )

    @property
    def num_labels(self) -> int:
        return self.counts.size(0)

    @property
    def is_sparse(self) -> bool:
        """Whether :attr:`counts` is a sparse matrix (built from sparse labels)."""
        return self.counts.layout != torch.strided

    @classmethod
    def from_labels(cls, multi_hot: Any, label_names: list[str] | None = None) -> LabelGraph:
        """Builds the graph from a ``[num_samples, N]`` multi-hot matrix; a sparse one
        (:mod:`scipy.sparse`, :obj:`torch.sparse`) gives sparse counts
        (:func:`sparse_cooccurrence_counts`)."""
        if _is_sparse_labels(multi_hot):
            counts, nums = sparse_cooccurrence_counts(multi_hot)
        else:
            counts, nums = cooccurrence_counts(multi_hot)
        return cls(counts, nums, label_names)

    def probability(self) -> Tensor:
        r""":math:`P_{ij} = P(j \mid i)` of eq. (1), see :func:`conditional_probability`;
        sparse for sparse counts (:func:`sparse_conditional_probability`)."""
        if self.is_sparse:
            return sparse_conditional_probability(self.counts, self.nums)
        return conditional_probability(self.counts, self.nums)

    def adjacency(self, kind: str = DEFAULT_ADJACENCY, **kwargs: Any) -> Tensor:
        r"""The fixed adjacency :math:`A`, ``adj[i, j]`` = weight of edge :math:`j \to i`.

        Args:
            kind (str, optional): Which reading of ML-AGCN's :math:`A` (module docstring):

                * :obj:`"normalized"`: :math:`D P^\top D`, :math:`D = \mathrm{diag}(P
                  \mathbf{1})^{-1/2}` (:func:`mlgcn_normalize` of :meth:`probability`):
                  ``adj[i, j]`` :math:`\propto P(i \mid j)`, ML-GCN's orientation;
                * :obj:`"cooccurrence"`: :math:`P` itself, ``adj[i, j]`` :math:`= P(j \mid
                  i)`;
                * :obj:`"row_normalized"`: :math:`D^{-1} P` (:func:`row_normalize`),
                  ``adj[i, j]`` :math:`= P(j \mid i) / \sum_k P(k \mid i)`;
                * :obj:`"mlgcn"`: ML-GCN's thresholded matrix (:func:`mlgcn_adjacency`,
                  which takes ``threshold``, ``p``, ``normalize`` as keyword arguments).

                (default: :obj:`"normalized"`, :data:`DEFAULT_ADJACENCY`)
        """
        if kind == "mlgcn" and self.is_sparse:
            raise ValueError(
                f"kind='mlgcn' needs dense counts, and this graph's are sparse "
                f"({self.num_labels} labels); use another kind, or make them dense "
                "with LabelGraph(graph.counts.to_dense(), graph.nums) if N x N fits"
            )
        if kind == "mlgcn":
            return mlgcn_adjacency(self.counts, self.nums, **kwargs)
        if kind not in ADJACENCY_KINDS:
            raise ValueError(f"`kind` must be one of {ADJACENCY_KINDS}, got {kind!r}")
        if kwargs:
            raise TypeError(f"kind={kind!r} takes no options, got {sorted(kwargs)}")
        if kind == "cooccurrence":
            return self.probability()
        P = (_sparse_probability64(self.counts, self.nums) if self.is_sparse
             else _probability64(self.counts, self.nums))
        adj = mlgcn_normalize(P) if kind == "normalized" else row_normalize(P)
        return adj.to(torch.get_default_dtype())

    def save(self, path: str | os.PathLike | IO[bytes]) -> None:
        """Saves plain tensors and a list of names with :func:`torch.save` (to a path or an
        open binary file)."""
        torch.save(
            {"counts": self.counts, "nums": self.nums, "label_names": self.label_names,
             "adjacency_kind": self.adjacency_kind},
            path,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> LabelGraph:
        """Loads a file written by :meth:`save` (``weights_only=True``: no code runs). Files
        written before ``adjacency_kind`` existed load with ``adjacency_kind=None``."""
        data = load_tensors(path)
        return cls(data["counts"], data["nums"], data.get("label_names"),
                   data.get("adjacency_kind"))


def label_graph_from_coco(ann_file_or_coco: Any) -> LabelGraph:
    r"""Counts label co-occurrences in a COCO-format annotation file.

    Label index :math:`k` is the :math:`k`-th category in increasing category id (ASL's
    order; ids need not be contiguous — COCO's 80 ids run from 1 to 90). An image counts once
    per category however many instances it holds (crowd annotations included, as in ASL and
    ML-GCN); images without annotations are not counted.

    Args:
        ann_file_or_coco (str, os.PathLike, dict or pycocotools.coco.COCO): Path of the
            ``instances_*.json`` file, its parsed dictionary, or a loaded ``COCO`` object.

    Returns:
        A :class:`LabelGraph` whose ``label_names`` are the category names.
    """
    from pycocotools.coco import COCO

    from agcn_pyg.data.datasets import read_coco

    if isinstance(ann_file_or_coco, COCO):
        coco = ann_file_or_coco
    else:  # the datasets' reader: clear errors, annotations of unknown images dropped
        coco = read_coco(ann_file_or_coco, "ann_file_or_coco")

    cat_ids = sorted(coco.getCatIds())
    index = {cat_id: k for k, cat_id in enumerate(cat_ids)}
    names = [coco.cats[c]["name"] for c in cat_ids]

    rows = [{index[a["category_id"]] for a in anns} for anns in coco.imgToAnns.values() if anns]
    multi_hot = torch.zeros(len(rows), len(cat_ids), dtype=torch.bool)
    for r, labels in enumerate(rows):
        multi_hot[r, list(labels)] = True
    return LabelGraph.from_labels(multi_hot, names)
