"""Label graphs of any size: co-occurrence counts and P(j | i) from sparse multi-hot labels,
against counts written out in Python."""

import io

import numpy as np
import pytest
import torch

from agcn_pyg import LabelGraph
from agcn_pyg.data.label_graph import (
    multi_hot_from_lists,
    sparse_conditional_probability,
    sparse_cooccurrence_counts,
)

LISTS = [[0, 2], [2, 3, 0], [1], [], [2, 2, 4], [0, 2, 3]]  # sample 4 lists label 2 twice
N = 6  # label 5 never occurs


def counted():
    """counts[i][j] = number of samples holding both i and j; nums[i] = samples holding i."""
    counts = [[0] * N for _ in range(N)]
    for labels in LISTS:
        for i in set(labels):
            for j in set(labels):
                counts[i][j] += 1
    return counts, [counts[i][i] for i in range(N)]


def forms():
    dense = torch.zeros(len(LISTS), N)
    for r, labels in enumerate(LISTS):
        dense[r, labels] = 1.0
    dense[3, 5] = -1.0  # ML-GCN's -1 = absent
    out = {
        "lists": multi_hot_from_lists(LISTS, N),
        "torch_coo": dense.to_sparse(),
        "torch_csr": dense.to_sparse_csr(),
    }
    scipy_sparse = pytest.importorskip("scipy.sparse")
    out["scipy_csr"] = scipy_sparse.csr_matrix(dense.numpy())
    out["scipy_coo_array"] = scipy_sparse.coo_array(dense.numpy().astype(np.int8))
    return out


@pytest.mark.parametrize(
    "form", ["lists", "torch_coo", "torch_csr", "scipy_csr", "scipy_coo_array"]
)
def test_sparse_counts_and_probability(form):
    labels = forms()[form]
    counts, nums = sparse_cooccurrence_counts(labels)
    want_counts, want_nums = counted()
    assert counts.layout == torch.sparse_coo and counts.dtype == torch.long
    assert counts._nnz() == sum(c > 0 for row in want_counts for c in row)  # only what occurs
    assert counts.to_dense().tolist() == want_counts
    assert nums.tolist() == want_nums
    P = sparse_conditional_probability(counts, nums)
    assert P.layout == torch.sparse_coo
    want_P = [
        [want_counts[i][j] / want_nums[i] if want_nums[i] else 0.0 for j in range(N)]
        for i in range(N)
    ]
    torch.testing.assert_close(P.to_dense(), torch.tensor(want_P))


def test_sparse_label_graph_equals_dense_and_stays_sparse():
    dense_labels = torch.zeros(len(LISTS), N, dtype=torch.bool)
    for r, labels in enumerate(LISTS):
        dense_labels[r, labels] = True
    dense = LabelGraph.from_labels(dense_labels)
    graph = LabelGraph.from_labels(multi_hot_from_lists(LISTS, N), [f"l{i}" for i in range(N)])
    assert graph.is_sparse and not dense.is_sparse
    assert torch.equal(graph.counts.to_dense(), dense.counts)
    assert torch.equal(graph.nums, dense.nums)
    adjacency = graph.adjacency()
    assert adjacency.layout == torch.sparse_coo
    torch.testing.assert_close(adjacency.to_dense(), dense.adjacency())
    buffer = io.BytesIO()
    graph.save(buffer)
    buffer.seek(0)
    loaded = LabelGraph.load(buffer)
    assert loaded.is_sparse and loaded.label_names == graph.label_names
    assert torch.equal(loaded.counts.to_dense(), dense.counts)
    with pytest.raises(ValueError, match="needs dense counts"):
        graph.adjacency("mlgcn")


def test_large_sparse_label_graph():
    """100 000 labels, 50 000 samples of 1-6 labels: no [N, N] array anywhere."""
    g = torch.Generator().manual_seed(0)
    lists = [torch.randint(100_000, (int(k),), generator=g).tolist()
             for k in torch.randint(1, 7, (50_000,), generator=g)]  # fmt: skip
    graph = LabelGraph.from_labels(multi_hot_from_lists(lists, 100_000))
    pairs = sum(len(set(labels)) ** 2 for labels in lists)
    assert graph.counts._nnz() <= pairs and graph.nums.sum() == sum(len(set(s)) for s in lists)
    P = graph.probability()
    rows = P.indices()[0]
    assert torch.all(P.values() > 0) and torch.all(P.values() <= 1)
    diagonal = P.indices()[0] == P.indices()[1]
    assert torch.all(P.values()[diagonal] == 1.0) and int(diagonal.sum()) == int(
        (graph.nums > 0).sum()
    )
    assert rows.numel() == graph.counts._nnz()


def test_bad_label_lists():
    with pytest.raises(ValueError, match="sample 1 has label index 7"):
        multi_hot_from_lists([[0], [7]], 5)
    with pytest.raises(ValueError, match="multi-hot matrix"):
        sparse_cooccurrence_counts(torch.zeros(2, 3, 4).to_sparse())
