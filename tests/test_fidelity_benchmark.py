"""Smoke tests of benchmarks/fidelity.py (the A-variant / head-init measurement): it runs end to
end on tiny settings and writes its files. No number is asserted beyond what is exact."""

import importlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def fidelity(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    threads = torch.get_num_threads()  # the script sets its own thread count
    yield importlib.import_module("fidelity")
    torch.set_num_threads(threads)


def test_digit_collages_labels_match_pasted_scans(fidelity):
    train, val = fidelity.digit_collages(40, 20, seed=0, noise=0.0)
    assert train.images.shape == (40, 1, 64, 64) and val.labels.shape == (20, 10)
    x, y, i = train[3]
    assert x.shape == (3, 64, 64) and y.dtype == torch.float32 and i == 3
    assert (train.labels.sum(1) >= 1).all()
    # Without noise, a collage with k distinct digits has ink in at least k of the 9 cells.
    cells = train.images[:, 0].unfold(1, 20, 20).unfold(2, 20, 20).amax((-1, -2)) > 0.2
    assert (cells.flatten(1).sum(1) >= train.labels.sum(1)).all()


def test_fidelity_tiny_run(fidelity, tmp_path):
    out = tmp_path / "out"
    args = ["--datasets", "digits", "--variants", "normalized,cooccurrence", "--rescale",
            "yes", "--epochs", "1", "--digits-train", "64", "--digits-val", "32",
            "--out", str(out)]
    assert fidelity.main(args) == 0
    records = [json.loads(line) for line in (out / "fidelity.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["rescale"]) for r in records] == [
        ("normalized", True), ("cooccurrence", True)]
    for r in records:
        assert 0 <= r["final_ema"]["mAP"] <= 100 and r["logit_rms_step0"] > 0
        assert 0 < r["final_ema"]["threshold_tuned"] <= 1
    table = (out / "fidelity.md").read_text()
    assert "| digits | normalized | yes | 1 |" in table
    # a second call finds both runs done and trains nothing
    assert fidelity.main(args) == 0
    assert len((out / "fidelity.jsonl").read_text().splitlines()) == 2


def test_init_scale_reads_mlgcn_pickle(fidelity, tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.random((200, 6)) < 0.4
    pair = labels.T.astype(np.int64) @ labels.astype(np.int64)
    nums = np.diag(pair).copy()
    np.fill_diagonal(pair, 0)  # ML-GCN's coco_adj.pkl layout
    path = tmp_path / "adj.pkl"
    with open(path, "wb") as f:
        pickle.dump({"adj": pair, "nums": nums}, f)
    graph = fidelity.load_mlgcn_adj(str(path))
    assert graph.counts.diagonal().tolist() == nums.tolist()
    assert graph.counts.tolist() == (labels.T.astype(int) @ labels.astype(int)).tolist()
    rows = fidelity.init_scale(graph, in_features=32)
    assert len(rows) == 1 + 4 * 2 * 2  # linear head + (variants, A = 0) x layers x rescale

    class Evil:
        def __reduce__(self):
            return (print, ("never",))

    with open(path, "wb") as f:
        pickle.dump({"adj": Evil(), "nums": nums}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        fidelity.load_mlgcn_adj(str(path))
