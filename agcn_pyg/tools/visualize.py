r"""What the label graph learned: heatmaps of :math:`\mathbf{A}`, :math:`\mathbf{B}^{(l)}`,
:math:`\mathbf{C}^{(l)}` and their sum for every layer (eq. 3), and the strongest edges per
label as a table.

Orientation everywhere: ``M[i, j]`` is the weight of the edge :math:`j \to i`, so row
:math:`i` lists what label :math:`i` aggregates. In the heatmaps the rows (y axis) are the
target labels and the columns (x axis) the source labels.

ML-GCN keeps only the edges :math:`j \to i` with :math:`P(i \mid j) \ge \tau = 0.4` (its
``gen_A`` thresholds :math:`P(j \mid i)` at row :math:`i`, and ``gen_adj`` transposes);
ML-AGCN keeps them all and learns :math:`\mathbf{B}` and :math:`\mathbf{C}` on top. The
edge table marks the strong learned edges with :math:`P(i \mid j) < \tau`: the rare
co-occurrences that the thresholded graph would have dropped. :math:`P` is read back from
the model's :math:`\mathbf{A}` (:func:`~agcn_pyg.data.label_graph.probability_from_adjacency`)
in the reading the checkpoint records.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from agcn_pyg.io import atomic_write
from agcn_pyg.models.head import MultiLabelHead
from agcn_pyg.models.mlagcn import MLAGCN

__all__ = [
    "GRAPH_NAMES",
    "Edge",
    "edges_to_csv",
    "edges_to_markdown",
    "graph_matrices",
    "plot_learned_graphs",
    "strongest_edges",
]

#: The panels of every layer, left to right.
GRAPH_NAMES = ("A", "B", "C", "A+B+C")

_TITLES = {
    "A": "A: label graph (fixed)",
    "B": "B: attention (eq. 4-6)",
    "C": "C: similarity (eq. 7)",
    "A+B+C": "A+B+C (eq. 3)",
}

#: The title of A's panel for each reading of the label graph (the one the model records).
_A_TITLES = {
    "normalized": "A: normalized co-occurrence D P^T D (fixed)",
    "cooccurrence": "A: co-occurrence P(j|i) (fixed)",
    "row_normalized": "A: row-normalized co-occurrence (fixed)",
    "mlgcn": "A: ML-GCN's thresholded graph (fixed)",
}

#: ML-GCN's binarisation threshold :math:`\tau` of the co-occurrence graph.
MLGCN_TAU = 0.4


class Edge(NamedTuple):
    """One row of the strongest-edges table: in graph layer ``layer`` (1-based, as in the
    plot titles), label
    ``target`` aggregates from label ``source`` with weight ``weight`` = :math:`a + b + c`,
    ranked ``rank`` (1-based) among ``target``'s incoming edges. ``below_tau`` is
    :obj:`True` when :math:`P(i \\mid j) < \\tau` (ML-GCN would have dropped the edge), and
    :obj:`None` when :math:`P` cannot be read back from :math:`\\mathbf{A}`."""

    layer: int
    target: str
    rank: int
    source: str
    weight: float
    A: float
    B: float | None
    C: float | None
    below_tau: bool | None


def _resolve(
    model: Any, label_names: Sequence[str] | None, use_ema: bool
) -> tuple[MultiLabelHead, list[str], str | None]:
    """The head, the label names and the recorded reading of A (``None`` when not
    recorded) of a checkpoint path/dict, a save_pretrained folder, an MLAGCN or a head."""
    from agcn_pyg.train.checkpoint import LoadedModel, ModelSpec, load_checkpoint, load_model

    kind = None
    if isinstance(model, (str, os.PathLike)) and not os.path.isdir(model):
        model = load_checkpoint(model)
    if isinstance(model, dict) and "config" in model:
        kind = ModelSpec.from_checkpoint(model).adjacency_kind
    if isinstance(model, (str, os.PathLike, dict, MLAGCN, LoadedModel)):
        model, names, _ = load_model(model, use_ema=use_ema)
        if label_names is None and model.label_names is not None:
            label_names = names
    if isinstance(model, MLAGCN):
        kind = kind or model.pretrained_cfg.get("adjacency")  # save_pretrained folders too
        model = model.head
    if not isinstance(model, MultiLabelHead):
        raise TypeError(
            "'model' must be a checkpoint (path or dict), a save_pretrained folder, an MLAGCN "
            "or a MultiLabelHead "
            f"(got {type(model).__name__})"
        )
    n = model.num_labels
    names = [str(i) for i in range(n)] if label_names is None else [str(s) for s in label_names]
    if len(names) != n:
        raise ValueError(f"'label_names' must hold {n} names (got {len(names)})")
    return model, names, kind


def _subset(names: list[str], labels: Sequence[str | int] | None) -> list[int]:
    """Indices of the ``labels`` subset (names or indices), in the order given."""
    if labels is None:
        return list(range(len(names)))
    position = {name: i for i, name in enumerate(names)}
    index, unknown = [], []
    for label in labels:
        if isinstance(label, int) and 0 <= label < len(names):
            index.append(label)
        elif isinstance(label, str) and label in position:
            index.append(position[label])
        else:
            unknown.append(label)
    if unknown:
        raise ValueError(
            f"'labels': {unknown} are not label names (or indices) of this model; it has "
            f"{len(names)} labels, e.g. {names[:5]}"
        )
    if not index:
        raise ValueError("'labels' must name at least one label")
    return index


def graph_matrices(head: MultiLabelHead) -> list[dict[str, Tensor | None]]:
    r"""The dense :math:`[N, N]` graphs of every layer of ``head`` as float CPU tensors,
    keyed ``"A"``, ``"B"``, ``"C"`` and ``"A+B+C"`` (eq. 3); a graph the layer switches off
    is :obj:`None` and counts as zero in the sum."""
    was_training = head.training
    head.eval()
    try:
        layers = head.graphs()
    finally:
        head.train(was_training)
    out = []
    for g in layers:
        mats = {k: None if v is None else v.detach().float().cpu()
                for k, v in (("A", g.A), ("B", g.B), ("C", g.C))}
        total = mats["A"].clone()
        for k in ("B", "C"):
            if mats[k] is not None:
                total += mats[k]
        mats["A+B+C"] = total
        out.append(mats)
    return out


def _ticks(n: int, max_ticks: int) -> list[int]:
    step = max(1, math.ceil(n / max(1, max_ticks)))
    return list(range(0, n, step))


def plot_learned_graphs(
    model: Any,
    label_names: Sequence[str] | None = None,
    labels: Sequence[str | int] | None = None,
    path: str | os.PathLike | None = None,
    max_ticks: int = 40,
    diagonal: bool = True,
    use_ema: bool = True,
    dpi: int = 120,
):
    r"""Draws :math:`\mathbf{A}`, :math:`\mathbf{B}^{(l)}`, :math:`\mathbf{C}^{(l)}` and
    :math:`\mathbf{A} + \mathbf{B}^{(l)} + \mathbf{C}^{(l)}` of every graph layer as labelled
    heatmaps: **one figure with one row per layer and four panels per row** (in the order of
    :data:`GRAPH_NAMES`), each with its own colour bar. Rows are target labels :math:`i`,
    columns source labels :math:`j` (``M[i, j]`` = weight of :math:`j \to i`). A graph the
    layer switches off gets an empty panel saying so.

    Args:
        model: A checkpoint path or dict (label names are read from it), an
            :class:`~agcn_pyg.MLAGCN` or a :class:`~agcn_pyg.MultiLabelHead`.
        label_names (Sequence[str], optional): Names of the :math:`N` labels.
            (default: :obj:`None`, from the checkpoint, else ``"0"`` ... ``"N-1"``)
        labels (Sequence[str or int], optional): Draw only these labels (names or indices)
            as rows and columns. The graphs are still computed on all labels, so a row of
            :math:`\mathbf{B}` no longer sums to 1. (default: :obj:`None`, all)
        path (str or os.PathLike, optional): Write the figure there (PNG for a ``.png``
            name). (default: :obj:`None`)
        max_ticks (int, optional): At most this many tick labels per axis; with more labels
            every :math:`\lceil n / \text{max\_ticks} \rceil`-th one is written, so 80 or
            500 labels stay readable. (default: :obj:`40`)
        diagonal (bool, optional): If :obj:`False`, masks the self-edges, whose weight (1 in
            :math:`\mathbf{A}` and :math:`\mathbf{C}`, :math:`\alpha_{i,i} + \max_k
            \alpha_{i,k}` in :math:`\mathbf{B}`) otherwise sets the colour scale.
            (default: :obj:`True`)
        use_ema (bool, optional): Use the checkpoint's EMA weights when it has them.
        dpi (int, optional): Resolution of the saved image. (default: :obj:`120`)

    Returns:
        matplotlib.figure.Figure: the figure, with ``4 * num_layers`` heatmap axes (plus one
        colour-bar axis per drawn graph). It is not registered with :mod:`matplotlib.pyplot`,
        so it needs no closing.
    """
    # A bare Figure, not pyplot: no backend or display is involved (saving uses Agg), and
    # the caller's pyplot state is left alone.
    from matplotlib.figure import Figure

    from agcn_pyg.data.label_graph import infer_adjacency_kind

    head, names, kind = _resolve(model, label_names, use_ema)
    if kind is None:  # a model that does not record its reading of A
        adj = head.adjacency()
        kind = infer_adjacency_kind(adj.to_dense() if adj.layout != torch.strided else adj)
    titles = {**_TITLES, "A": _A_TITLES.get(kind, _TITLES["A"])}
    index = _subset(names, labels)
    shown = [names[i] for i in index]
    n = len(index)
    layers = graph_matrices(head)
    sel = torch.tensor(index)

    # Panel side grows with the number of labels, within readable bounds.
    side = min(max(3.5, 0.16 * min(n, max_ticks) + 1.5), 10.0)
    fig = Figure(figsize=(side * len(GRAPH_NAMES) * 1.15, side * len(layers)),
                 layout="constrained")
    axes = fig.subplots(len(layers), len(GRAPH_NAMES), squeeze=False)
    ticks = _ticks(n, max_ticks)
    fontsize = 8 if len(ticks) <= 20 else 6
    for l, mats in enumerate(layers, start=1):
        for k, name in enumerate(GRAPH_NAMES):
            ax = axes[l - 1, k]
            title = f"layer {l}: {titles[name]}"
            m = mats[name]
            if m is None:
                ax.set_axis_off()
                ax.set_title(title, fontsize=9)
                ax.text(0.5, 0.5, "switched off", ha="center", va="center",
                        transform=ax.transAxes)
                continue
            m = m[sel][:, sel].clone()
            if not diagonal:
                m.fill_diagonal_(float("nan"))
            finite = m[torch.isfinite(m)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
            if lo < 0:  # C and the sum can be negative: a diverging map centred on 0
                bound = max(-lo, hi)
                kwargs = dict(cmap="RdBu_r", vmin=-bound, vmax=bound)
            else:
                kwargs = dict(cmap="viridis", vmin=lo, vmax=hi)
            image = ax.imshow(m.numpy(), interpolation="nearest", aspect="equal", **kwargs)
            fig.colorbar(image, ax=ax, shrink=0.8)
            ax.set_title(title, fontsize=9)
            ax.set_xticks(ticks, [shown[t] for t in ticks], rotation=90, fontsize=fontsize)
            ax.set_yticks(ticks, [shown[t] for t in ticks], fontsize=fontsize)
            ax.set_xlabel("source label j", fontsize=8)
            if k == 0:
                ax.set_ylabel("target label i (aggregates row i)", fontsize=8)
    if path is not None:
        path = os.fspath(path)
        with atomic_write(path) as f:  # an interrupted write keeps the previous figure
            fig.savefig(f, dpi=dpi, format=os.path.splitext(path)[1][1:] or None)
    return fig


def strongest_edges(
    model: Any,
    label_names: Sequence[str] | None = None,
    top_k: int = 5,
    labels: Sequence[str | int] | None = None,
    tau: float = MLGCN_TAU,
    use_ema: bool = True,
    adjacency_kind: str | None = None,
) -> list[Edge]:
    r"""The ``top_k`` strongest incoming edges :math:`j \to i` of every label :math:`i` in
    every layer, ranked by :math:`a_{i,j} + b_{i,j} + c_{i,j}` (largest first), self-edges
    excluded.

    Args:
        model: A checkpoint path or dict, an :class:`~agcn_pyg.MLAGCN` or a
            :class:`~agcn_pyg.MultiLabelHead` (see :func:`plot_learned_graphs`).
        label_names (Sequence[str], optional): Names of the labels. (default: :obj:`None`)
        top_k (int, optional): Edges kept per label. (default: :obj:`5`)
        labels (Sequence[str or int], optional): Only these target labels; sources are
            still all labels. (default: :obj:`None`, all)
        tau (float, optional): Edges :math:`j \to i` with :math:`P(i \mid j) < \tau`
            get ``below_tau=True``. (default: :obj:`0.4`, ML-GCN's threshold)
        use_ema (bool, optional): Use the checkpoint's EMA weights when it has them.
        adjacency_kind (str, optional): The reading of :math:`\mathbf{A}` the model holds
            (:meth:`~agcn_pyg.LabelGraph.adjacency`'s ``kind``), to read :math:`P` back.
            (default: :obj:`None`: the checkpoint's or model's record
            (``pretrained_cfg["adjacency"]``), ``"cooccurrence"`` for checkpoints written
            before it; else :func:`~agcn_pyg.data.label_graph.infer_adjacency_kind`)

    Returns:
        list[Edge]: ordered by layer, target label (in ``labels`` order) and rank.
    """
    if top_k < 1:
        raise ValueError(f"'top_k' must be at least 1 (got {top_k})")
    if not 0.0 <= tau <= 1.0:  # NaN too: every comparison with it would mark no edge
        raise ValueError(f"'tau' must be a probability in [0, 1] (got {tau})")
    from agcn_pyg.data.label_graph import infer_adjacency_kind, probability_from_adjacency

    head, names, recorded = _resolve(model, label_names, use_ema)
    targets = _subset(names, labels)
    n = len(names)
    k = min(top_k, n - 1)
    adj = head.adjacency()
    adj = adj.to_dense() if adj.layout != torch.strided else adj
    kind = adjacency_kind or recorded or infer_adjacency_kind(adj)
    if kind == "mlgcn":  # ML-GCN's own graph: an edge is there or not
        dropped = adj == 0
    elif kind is not None:
        # P[j, i] = P(i | j): what ML-GCN thresholds for the edge j -> i.
        dropped = probability_from_adjacency(adj, kind).t() < tau
    else:
        dropped = None
    edges = []
    for l, mats in enumerate(graph_matrices(head), start=1):
        total = mats["A+B+C"].clone()
        total.fill_diagonal_(float("-inf"))  # self-edges are not label dependencies
        order = total.argsort(dim=1, descending=True, stable=True)[:, :k]
        for i in targets:
            for rank, j in enumerate(order[i].tolist(), start=1):
                a = float(mats["A"][i, j])
                edges.append(Edge(
                    layer=l,
                    target=names[i],
                    rank=rank,
                    source=names[j],
                    weight=float(mats["A+B+C"][i, j]),
                    A=a,
                    B=None if mats["B"] is None else float(mats["B"][i, j]),
                    C=None if mats["C"] is None else float(mats["C"][i, j]),
                    below_tau=None if dropped is None else bool(dropped[i, j]),
                ))
    return edges


def edges_to_markdown(edges: Sequence[Edge], tau: float = MLGCN_TAU) -> str:
    """A markdown table with one row per layer and target label, listing its strongest
    sources as ``source weight``; a ``†`` marks an edge :math:`j \\to i` with
    :math:`P(i \\mid j)` below ``tau`` (the rare co-occurrences a thresholded graph drops)."""
    rows: dict[tuple[int, str], list[str]] = {}
    for e in edges:
        mark = "†" if e.below_tau else ""
        rows.setdefault((e.layer, e.target), []).append(
            f"{_md(e.source)} {e.weight:.2f}{mark} (A {e.A:.2f})"
        )
    lines = [
        "| layer | label | strongest edges j → i (A+B+C) |",
        "| ---: | --- | --- |",
    ]
    for (layer, target), cells in rows.items():
        lines.append(f"| {layer} | {_md(target)} | {', '.join(cells)} |")
    lines.append("")
    if any(e.below_tau is None for e in edges):
        lines.append("(No † marks where P could not be read back from A.)")
    lines.append(f"† P(label | source) < {tau:g}: dropped by ML-GCN's threshold τ = {tau:g}, "
                 f"kept by ML-AGCN.")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def edges_to_csv(edges: Sequence[Edge], path: str | os.PathLike) -> None:
    """Writes one row per edge: ``layer``, ``target``, ``rank``, ``source``,
    ``weight`` (A+B+C), ``A``, ``B``, ``C`` (empty when switched off), ``below_tau``."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(Edge._fields)
    for e in edges:
        writer.writerow([
            e.layer, e.target, e.rank, e.source, f"{e.weight:.6g}", f"{e.A:.6g}",
            "" if e.B is None else f"{e.B:.6g}", "" if e.C is None else f"{e.C:.6g}",
            "" if e.below_tau is None else int(e.below_tau),
        ])
    with atomic_write(path) as f:  # an interrupted write keeps the previous table
        f.write(text.getvalue().encode("utf-8"))
