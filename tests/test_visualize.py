"""Learned-graph heatmaps and the strongest-edges table (agcn_pyg.tools.visualize)."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import NAMES, make_checkpoint

from agcn_pyg import create_model
from agcn_pyg.tools.visualize import (
    edges_to_csv,
    edges_to_markdown,
    plot_learned_graphs,
    strongest_edges,
)
from agcn_pyg.train.checkpoint import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")


def _image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def test_plot_has_four_heatmaps_per_layer(ckpt, tmp_path):
    png = tmp_path / "g.png"
    fig = plot_learned_graphs(ckpt, path=png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = _image_axes(fig)
    assert len(axes) == 2 * 4  # 2 layers x (A, B, C, A+B+C)
    assert [t.get_text() for t in axes[0].get_yticklabels()] == NAMES

    # The A panel shows the checkpoint's adjacency, rows = targets.
    model, state = model_from_checkpoint(ckpt)
    torch.testing.assert_close(torch.as_tensor(axes[0].images[0].get_array()),
                               state["adj"].float())
    # A+B+C is the sum of the three panels of the same layer.
    a, b, c, total = (torch.as_tensor(ax.images[0].get_array()) for ax in axes[4:8])
    torch.testing.assert_close(total, a + b + c)


def test_plot_subset_and_switched_off_graph(tmp_path):
    ckpt = make_checkpoint(tmp_path / "noc.pth", head_kwargs={"similarity": False})
    fig = plot_learned_graphs(ckpt, labels=["knife", "fork"], diagonal=False)
    axes = _image_axes(fig)
    assert len(axes) == 2 * 3  # C is switched off: an empty panel
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["knife", "fork"]
    shown = torch.as_tensor(axes[0].images[0].get_array().filled(float("nan")))
    adj = torch.load(ckpt, weights_only=False)["adj"]
    assert shown.isnan().diagonal().all()
    assert shown[0, 1] == adj[2, 1] and shown[1, 0] == adj[1, 2]
    with pytest.raises(ValueError, match="spoon"):
        plot_learned_graphs(ckpt, labels=["spoon"])


# 6 images x 3 labels: label 0 in all, label 1 in two, label 2 in one (with label 1).
LABELS = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]]
# P(i | j) for the edge j -> i, by hand: P(0 | 1) = 1, P(1 | 0) = 2/6, P(2 | 0) = 1/6,
# P(0 | 2) = 1, P(2 | 1) = 1/2, P(1 | 2) = 1. Below tau = 0.4: edges 0 -> 1 and 0 -> 2.
DROPPED = {(0, 1), (0, 2)}  # (source j, target i)


@pytest.mark.parametrize("kind", ["normalized", "cooccurrence", "row_normalized"])
def test_tau_marks_use_p_of_target_given_source_in_every_reading(kind):
    from agcn_pyg import LabelGraph

    graph = LabelGraph.from_labels(torch.tensor(LABELS))
    model = create_model("resnet10t", 3, graph.adjacency(kind), hidden_channels=[8])
    # A model records no reading: it is inferred from A, and given explicitly it agrees.
    for given in (None, kind):
        edges = strongest_edges(model, top_k=2, adjacency_kind=given)
        assert len(edges) == 2 * 3 * 2
        for e in edges:
            j, i = int(e.source), int(e.target)
            assert e.below_tau == ((j, i) in DROPPED), (e, given)


def test_many_labels_keep_ticks_readable():
    n = 500
    model = create_model("resnet10t", n, torch.rand(n, n), num_layers=1)
    fig = plot_learned_graphs(model, max_ticks=40)
    for ax in _image_axes(fig):
        assert 20 <= len(ax.get_xticks()) <= 40


def test_strongest_edges_against_argsort(ckpt, tmp_path):
    k = 3
    edges = strongest_edges(ckpt, top_k=k)
    model, state = model_from_checkpoint(ckpt)
    layers = model.head.graphs()
    assert len(edges) == len(layers) * len(NAMES) * k

    for l, g in enumerate(layers, start=1):
        total = (g.A + g.B + g.C).numpy()
        for i, name in enumerate(NAMES):
            others = [j for j in (-total[i]).argsort(kind="stable") if j != i][:k]
            got = [e for e in edges if e.layer == l and e.target == name]
            assert [e.rank for e in got] == [1, 2, 3]
            assert [e.source for e in got] == [NAMES[j] for j in others]
            assert [e.weight for e in got] == pytest.approx([total[i, j] for j in others])
            assert [e.A for e in got] == pytest.approx([float(g.A[i, j]) for j in others])
            # The checkpoint records no reading of A: the raw P(j | i) of old checkpoints,
            # and ML-GCN drops the edge j -> i when P(i | j) = A[j, i] < tau.
            assert [e.below_tau for e in got] == [bool(g.A[j, i] < 0.4) for j in others]
            assert all(e.source != name for e in got)

    only = strongest_edges(ckpt, top_k=2, labels=["fork"])
    assert {e.target for e in only} == {"fork"} and len(only) == 2 * 2

    md = edges_to_markdown(edges)
    first = edges[0]
    mark = "†" if first.below_tau else ""
    assert f"| 1 | {first.target} | {first.source} {first.weight:.2f}{mark} " in md
    assert ("†" in md) == any(e.below_tau for e in edges)

    edges_to_csv(edges, tmp_path / "e.csv")
    with open(tmp_path / "e.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(edges)
    assert rows[0]["target"] == first.target and rows[0]["source"] == first.source
    assert float(rows[0]["weight"]) == pytest.approx(first.weight, rel=1e-5)


@pytest.mark.slow
def test_plot_graph_script(ckpt, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plot_graph.py"), str(ckpt), "--out", str(out),
         "--top-k", "2", "--labels", "fork", "dining table"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "| 1 | fork |" in result.stdout and "| 2 | dining table |" in result.stdout
    assert (out / "graphs.png").stat().st_size > 0
    assert (out / "strongest_edges.md").read_text().startswith("| layer | label |")
    assert len((out / "strongest_edges.csv").read_text().splitlines()) == 1 + 2 * 2 * 2
