import json

import numpy as np
import pytest
import torch
from torch import nn

from agcn_pyg.label_graph import (
    LabelGraph,
    conditional_probability,
    cooccurrence_counts,
    label_graph_from_coco,
    mlgcn_adjacency,
)
from agcn_pyg.node_features import identity_features, image_embeddings, load_node_features

# 5 samples x 4 labels; sample 4 has no label, label 3 never occurs.
LABELS = [
    [1, 1, 0, 0],
    [1, 0, 1, 0],
    [1, 1, 1, 0],
    [0, 1, 0, 0],
    [0, 0, 0, 0],
]
# Counted by hand from LABELS.
COUNTS = [
    [3, 2, 2, 0],
    [2, 3, 1, 0],
    [2, 1, 2, 0],
    [0, 0, 0, 0],
]
NUMS = [3, 3, 2, 0]
# P[i, j] = P(j | i) = COUNTS[i][j] / NUMS[i]; zero row for the absent label.
P_EXPECTED = [
    [1, 2 / 3, 2 / 3, 0],
    [2 / 3, 1, 1 / 3, 0],
    [1, 1 / 2, 1, 0],
    [0, 0, 0, 0],
]


@pytest.mark.parametrize("as_type", ["tensor", "bool", "numpy"])
def test_cooccurrence_counts(as_type):
    labels = {
        "tensor": torch.tensor(LABELS),
        "bool": torch.tensor(LABELS, dtype=torch.bool),
        "numpy": np.array(LABELS, dtype=np.float32),
    }[as_type]
    counts, nums = cooccurrence_counts(labels)
    assert counts.tolist() == COUNTS
    assert nums.tolist() == NUMS


def test_conditional_probability_no_threshold_no_nan():
    P = conditional_probability(torch.tensor(COUNTS), torch.tensor(NUMS))
    assert not torch.isnan(P).any()
    torch.testing.assert_close(P, torch.tensor(P_EXPECTED, dtype=P.dtype))
    # diagonal is 1 exactly for the labels that occur
    assert P.diagonal().tolist() == [1, 1, 1, 0]


def test_orientation_row_i_aggregates_j_by_p_j_given_i():
    graph = LabelGraph.from_labels(torch.tensor(LABELS))
    adj = graph.adjacency()
    # Every image with label 2 has label 0: P(0 | 2) = 1, but P(2 | 0) = 2/3.
    assert adj[2, 0].item() == pytest.approx(1.0)
    assert adj[0, 2].item() == pytest.approx(2 / 3)
    # out = adj @ x: node 2 receives node 0's one-hot feature with weight P(0 | 2).
    x = torch.eye(4)
    assert (adj @ x)[2, 0].item() == pytest.approx(1.0)


def _mlgcn_reference(counts, nums, t, p):
    """Plain numpy version of ML-GCN's util.gen_A + gen_adj (from its description)."""
    adj = counts.astype(np.float64).copy()
    np.fill_diagonal(adj, 0)  # ML-GCN's stored co-occurrence has a zero diagonal
    adj = adj / nums[:, np.newaxis]
    adj[adj < t] = 0
    adj[adj >= t] = 1
    adj = adj * p / (adj.sum(0, keepdims=True) + 1e-6)
    A = adj + np.identity(len(nums))
    D = np.diag(np.power(A.sum(1), -0.5))
    return (A @ D).T @ D, A


@pytest.mark.parametrize("t,p", [(0.4, 0.25), (0.2, 0.2)])
def test_mlgcn_adjacency_matches_reference(t, p):
    rng = np.random.default_rng(0)
    rates = rng.uniform(0.1, 0.6, size=8)
    labels = rng.random((300, 8)) < rates
    # Correlate some labels so that the thresholded graph has edges.
    labels[:, 1] |= labels[:, 0]
    labels[:, 5] |= labels[:, 2] & labels[:, 3]
    counts, nums = cooccurrence_counts(labels)
    expected, A = _mlgcn_reference(counts.numpy(), nums.numpy(), t, p)
    assert (A - np.eye(8)).astype(bool).sum() > 0  # the test graph is not empty

    got = mlgcn_adjacency(counts, nums, threshold=t, p=p)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-7)
    got_raw = mlgcn_adjacency(counts, nums, threshold=t, p=p, normalize=False)
    np.testing.assert_allclose(got_raw.double().numpy(), A.T, rtol=1e-5, atol=1e-7)


def test_mlgcn_adjacency_absent_label_no_nan():
    adj = mlgcn_adjacency(torch.tensor(COUNTS), torch.tensor(NUMS))
    assert torch.isfinite(adj).all()
    # the absent label keeps only its (normalised) self-loop
    assert adj[3].tolist() == [0, 0, 0, 1]
    assert adj[:, 3].tolist() == [0, 0, 0, 1]


def test_label_graph_api_and_save_load(tmp_path):
    names = ["a", "b", "c", "d"]
    graph = LabelGraph.from_labels(np.array(LABELS, dtype=bool), names)
    assert graph.num_labels == 4
    torch.testing.assert_close(
        graph.probability(), torch.tensor(P_EXPECTED, dtype=torch.get_default_dtype())
    )
    torch.testing.assert_close(
        graph.adjacency("mlgcn", threshold=0.5), mlgcn_adjacency(graph.counts, graph.nums, 0.5)
    )
    with pytest.raises(ValueError, match="kind"):
        graph.adjacency("glove")
    with pytest.raises(ValueError, match="label_names"):
        LabelGraph(graph.counts, graph.nums, ["a"])

    path = tmp_path / "graph.pt"
    graph.save(path)
    loaded = LabelGraph.load(path)
    assert loaded.counts.tolist() == COUNTS
    assert loaded.nums.tolist() == NUMS
    assert loaded.label_names == names


def test_label_graph_from_coco(tmp_path):
    # Category ids are neither contiguous nor listed in order.
    categories = [
        {"id": 10, "name": "ten"},
        {"id": 3, "name": "three"},
        {"id": 1, "name": "one"},
        {"id": 5, "name": "five"},
    ]
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 8, "height": 8} for i in range(1, 6)]
    anns = [  # (image, category); image 5 has no annotation
        (1, 1), (1, 1), (1, 3),  # two instances of one category count once
        (2, 3), (2, 10),
        (3, 1), (3, 3), (3, 10),
        (4, 5),
    ]  # fmt: skip
    annotations = [
        {"id": k, "image_id": i, "category_id": c, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}
        for k, (i, c) in enumerate(anns, start=1)
    ]
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )

    graph = label_graph_from_coco(path)
    # index = categories sorted by id: 1, 3, 5, 10
    assert graph.label_names == ["one", "three", "five", "ten"]
    assert graph.nums.tolist() == [2, 3, 1, 2]
    assert graph.counts.tolist() == [
        [2, 2, 0, 1],
        [2, 3, 0, 2],
        [0, 0, 1, 0],
        [1, 2, 0, 2],
    ]

    from pycocotools.coco import COCO

    graph2 = label_graph_from_coco(COCO(str(path)))
    assert graph2.counts.tolist() == graph.counts.tolist()
    with pytest.raises(FileNotFoundError):
        label_graph_from_coco(tmp_path / "missing.json")


# --- node features -------------------------------------------------------------------


def test_identity_features():
    x = identity_features(3)
    assert x.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_load_node_features(tmp_path):
    feats = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "f.npy", feats)
    torch.save(torch.from_numpy(feats), tmp_path / "f.pt")
    for name in ["f.npy", "f.pt"]:
        x = load_node_features(tmp_path / name, num_labels=4)
        assert x.dtype == torch.float32
        assert x.tolist() == feats.tolist()

    with pytest.raises(ValueError, match=r"expected \[5, d\], got \(4, 3\)"):
        load_node_features(tmp_path / "f.npy", num_labels=5)
    np.save(tmp_path / "v.npy", np.zeros(4))
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        load_node_features(tmp_path / "v.npy")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_node_features(tmp_path / "missing.npy")


class _TinyModel(nn.Module):
    """Features = the 2-d input itself; logits = a fixed linear map to 3 labels."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))

    def forward_features(self, x):
        return x.reshape(x.size(0), 2, 1, 1)  # a [B, C, H, W] map like a CNN

    def forward_head(self, x, pre_logits=False):
        x = x.flatten(1)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_image_embeddings():
    images = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 4.0]])
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0]])  # label 2: no image
    loader = [(images[:2], targets[:2]), (images[2:], targets[2:], torch.tensor([2]))]
    model = _TinyModel().train()

    feats = image_embeddings(model, loader, num_labels=3, kind="features")
    expected = [
        [(1 + 3) / 2, (2 - 1) / 2],  # label 0: images 0, 1
        [(3 + 0) / 2, (-1 + 4) / 2],  # label 1: images 1, 2
        [0.0, 0.0],  # label 2: no image -> zeros
    ]
    torch.testing.assert_close(feats, torch.tensor(expected))
    assert model.training  # mode restored

    scores = image_embeddings(model, loader, num_labels=3, kind="scores")
    s = torch.sigmoid(images @ model.head.weight.t()).double()
    expected = torch.stack([(s[0] + s[1]) / 2, (s[1] + s[2]) / 2, torch.zeros(3)]).float()
    torch.testing.assert_close(scores, expected)

    with pytest.raises(TypeError, match="forward_features"):
        image_embeddings(nn.Linear(2, 3), loader, num_labels=3, kind="features")
