import json

import numpy as np
import pytest
import torch
from torch import nn

from agcn_pyg.data.label_graph import (
    ADJACENCY_KINDS,
    DEFAULT_ADJACENCY,
    LabelGraph,
    conditional_probability,
    cooccurrence_counts,
    infer_adjacency_kind,
    label_graph_from_coco,
    mlgcn_adjacency,
    mlgcn_normalize,
    probability_from_adjacency,
    row_normalize,
)
from agcn_pyg.data.node_features import identity_features, image_embeddings, load_node_features

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
    adj = graph.adjacency("cooccurrence")
    # Every image with label 2 has label 0: P(0 | 2) = 1, but P(2 | 0) = 2/3.
    assert adj[2, 0].item() == pytest.approx(1.0)
    assert adj[0, 2].item() == pytest.approx(2 / 3)
    # out = adj @ x: node 2 receives node 0's one-hot feature with weight P(0 | 2).
    x = torch.eye(4)
    assert (adj @ x)[2, 0].item() == pytest.approx(1.0)


# Row sums of P_EXPECTED: r = (1 + 2/3 + 2/3, 2/3 + 1 + 1/3, 1 + 1/2 + 1, 0) = (7/3, 2, 5/2, 0).
R = [7 / 3, 2, 5 / 2]
# "normalized": adj[i, j] = P[j, i] / sqrt(r_i r_j) (D P^T D), written out entry by entry.
NORMALIZED_EXPECTED = [
    [1 / R[0], (2 / 3) / (R[0] * R[1]) ** 0.5, 1 / (R[0] * R[2]) ** 0.5, 0],
    [(2 / 3) / (R[1] * R[0]) ** 0.5, 1 / R[1], (1 / 2) / (R[1] * R[2]) ** 0.5, 0],
    [(2 / 3) / (R[2] * R[0]) ** 0.5, (1 / 3) / (R[2] * R[1]) ** 0.5, 1 / R[2], 0],
    [0, 0, 0, 0],
]
# "row_normalized": adj[i, j] = P[i, j] / r_i.
ROW_NORMALIZED_EXPECTED = [
    [3 / 7, 2 / 7, 2 / 7, 0],
    [1 / 3, 1 / 2, 1 / 6, 0],
    [2 / 5, 1 / 5, 2 / 5, 0],
    [0, 0, 0, 0],
]


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("cooccurrence", P_EXPECTED),
        ("normalized", NORMALIZED_EXPECTED),
        ("row_normalized", ROW_NORMALIZED_EXPECTED),
    ],
)
def test_adjacency_variants_by_hand(kind, expected):
    graph = LabelGraph.from_labels(torch.tensor(LABELS))
    adj = graph.adjacency(kind)
    assert adj.dtype == torch.get_default_dtype()
    torch.testing.assert_close(adj.double(), torch.tensor(expected, dtype=torch.float64))


def test_adjacency_variant_orientation():
    # Every image with label 2 has label 0: P(0 | 2) = 1 > P(2 | 0) = 2/3.
    graph = LabelGraph.from_labels(torch.tensor(LABELS))
    x = torch.eye(4)
    # "normalized" (ML-GCN's orientation): node 0 receives node 2 in proportion to P(0 | 2).
    out = graph.adjacency("normalized") @ x
    assert out[0, 2].item() == pytest.approx(1 / (R[0] * R[2]) ** 0.5)
    assert out[2, 0].item() == pytest.approx((2 / 3) / (R[0] * R[2]) ** 0.5)
    # "row_normalized" (the raw orientation): node 2 receives node 0 by P(0 | 2) / r_2.
    out = graph.adjacency("row_normalized") @ x
    assert out[2, 0].item() == pytest.approx(1 / R[2])
    assert out[0, 2].item() == pytest.approx((2 / 3) / R[0])
    assert DEFAULT_ADJACENCY in ADJACENCY_KINDS
    torch.testing.assert_close(graph.adjacency(), graph.adjacency(DEFAULT_ADJACENCY))


@pytest.mark.parametrize("kind", ["cooccurrence", "normalized", "row_normalized"])
def test_probability_from_adjacency_inverts_each_variant(kind):
    # What a checkpoint stores is A; P (for plots and ML-GCN's tau) comes back from it.
    graph = LabelGraph.from_labels(torch.tensor(LABELS))
    P = probability_from_adjacency(graph.adjacency(kind).double(), kind)
    torch.testing.assert_close(P, torch.tensor(P_EXPECTED, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["cooccurrence", "normalized", "row_normalized"])
def test_variants_from_sparse_labels_equal_dense(kind):
    # The same hand-checked matrices from sparse counts: sparse out, same values, and back.
    graph = LabelGraph.from_labels(torch.tensor(LABELS).to_sparse())
    assert graph.is_sparse
    adj = graph.adjacency(kind)
    assert adj.layout == torch.sparse_coo
    dense = LabelGraph.from_labels(torch.tensor(LABELS)).adjacency(kind)
    torch.testing.assert_close(adj.to_dense(), dense)
    P = probability_from_adjacency(adj, kind)
    assert P.layout == torch.sparse_coo
    torch.testing.assert_close(P.to_dense().double(), torch.tensor(P_EXPECTED, dtype=torch.float64))


def test_infer_adjacency_kind():
    graph = LabelGraph.from_labels(torch.tensor(LABELS))
    for kind in ("cooccurrence", "normalized", "row_normalized"):
        assert infer_adjacency_kind(graph.adjacency(kind)) == kind
    unrelated = 3 * torch.rand(4, 4, generator=torch.Generator().manual_seed(0))
    assert infer_adjacency_kind(unrelated) is None


def test_probability_from_adjacency_rejects_mlgcn():
    with pytest.raises(ValueError, match="cannot be inverted"):
        probability_from_adjacency(torch.eye(3), "mlgcn")


def _gen_a_no_threshold(counts_offdiag, nums):
    """ML-GCN's util.gen_A with its threshold, binarisation and re-weighting left out, as
    ML-AGCN's footnote 1 asks: the stored pair counts (zero diagonal) over the label counts,
    plus the identity."""
    adj = counts_offdiag / nums[:, np.newaxis]
    return adj + np.identity(len(nums))


def _gen_adj(A):
    """ML-GCN's util.gen_adj, then applied as adj @ x: D = diag(A.sum(1) ** -0.5),
    (A D)^T D."""
    D = np.diag(np.power(A.sum(1), -0.5))
    return np.matmul(np.matmul(A, D).T, D)


def test_normalized_matches_mlgcn_functions_on_real_looking_counts():
    # 40 labels with COCO-like skew: a frequent "person" (label 0), long-tailed rates,
    # groups of labels that co-occur (kitchen, street, ...).
    rng = np.random.default_rng(1)
    n_img, n = 5000, 40
    rates = 0.3 / np.arange(1, n + 1) ** 0.8
    labels = rng.random((n_img, n)) < rates
    labels[:, 0] |= rng.random(n_img) < 0.5
    for group in ([3, 7, 11, 20], [5, 6, 30], [2, 9, 13, 25, 31]):
        scene = rng.random(n_img) < 0.08
        labels[:, group] |= scene[:, None] & (rng.random((n_img, len(group))) < 0.6)
    counts, nums = cooccurrence_counts(labels)
    assert (nums > 0).all()
    # ML-GCN stores the pair counts with a zero diagonal (its coco_adj.pkl).
    pair_counts = counts.numpy().astype(np.float64)
    np.fill_diagonal(pair_counts, 0)
    expected = _gen_adj(_gen_a_no_threshold(pair_counts, nums.numpy().astype(np.float64)))

    got = LabelGraph(counts, nums).adjacency("normalized")
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-6, atol=1e-8)
    got64 = mlgcn_normalize(conditional_probability(counts, nums).double())
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), expected, rtol=1e-6, atol=1e-9)
    # Not symmetric: the transpose matters (P(i | j) != P(j | i) for person vs a rare label).
    assert not np.allclose(expected, expected.T)


def test_normalize_rejects_bad_matrices():
    with pytest.raises(ValueError, match=r"square \[N, N\].*\(2, 3\)"):
        mlgcn_normalize(torch.ones(2, 3))
    with pytest.raises(ValueError, match="non-negative"):
        row_normalize(torch.tensor([[1.0, -1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="kind"):
        LabelGraph.from_labels(torch.tensor(LABELS)).adjacency("symmetric")
    with pytest.raises(TypeError, match="threshold"):
        LabelGraph.from_labels(torch.tensor(LABELS)).adjacency("normalized", threshold=0.4)


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
    assert loaded.adjacency_kind is None

    # the A variant a model used is recorded and survives a round trip
    LabelGraph(graph.counts, graph.nums, names, adjacency_kind="row_normalized").save(path)
    assert LabelGraph.load(path).adjacency_kind == "row_normalized"
    # a file from before the record existed loads as "not recorded"
    torch.save({"counts": graph.counts, "nums": graph.nums, "label_names": names}, path)
    assert LabelGraph.load(path).adjacency_kind is None
    with pytest.raises(ValueError, match="adjacency_kind"):
        LabelGraph(graph.counts, graph.nums, adjacency_kind="symmetric")


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
