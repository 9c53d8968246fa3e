import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

from agcn_pyg.train.metrics import (
    MultiLabelMetrics,
    deduplicate_predictions,
    format_table,
    gather_predictions,
    multilabel_metrics,
    threshold_rows,
    tune_threshold,
)

NO_POSITIVES, NO_PREDICTIONS, TIED = 3, 5, 6


def _data(num_images=200, num_labels=8, seed=0):
    rng = np.random.default_rng(seed)
    targets = (rng.random((num_images, num_labels)) < 0.35).astype(np.int64)
    # scores correlated with the targets so that the metrics are not trivial
    scores = np.clip(0.35 * targets + 0.75 * rng.random((num_images, num_labels)), 0, 1)
    targets[:, NO_POSITIVES] = 0
    scores[:, NO_PREDICTIONS] *= 0.45  # never reaches 0.5
    scores[:, TIED] = np.round(scores[:, TIED] * 4) / 4  # many tied scores
    return scores.astype(np.float32), targets


def _sklearn_threshold_metrics(y, pred):
    p, r, f, _ = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    op, o_r, of1, _ = precision_recall_fscore_support(y, pred, average="micro", zero_division=0)
    cp, cr = p.mean(), r.mean()
    return {
        "CP": cp,
        "CR": cr,
        "CF1": f.mean(),
        "CF1_mlgcn": 2 * cp * cr / (cp + cr),
        "OP": op,
        "OR": o_r,
        "OF1": of1,
    }


def _numpy_top_k(scores, k, threshold):
    pred = np.zeros(scores.shape, dtype=bool)
    for n, row in enumerate(scores):
        for c in np.argsort(-row, kind="stable")[:k]:
            pred[n, c] = row[c] >= threshold
    return pred


def test_metrics_against_sklearn_and_numpy():
    scores, y = _data()
    out = multilabel_metrics(torch.from_numpy(scores), torch.from_numpy(y))
    assert all(isinstance(v, float) for v in out.values())

    aps = [average_precision_score(y[:, c], scores[:, c]) for c in range(8) if c != NO_POSITIVES]
    assert out["mAP"] == pytest.approx(100 * np.mean(aps), abs=1e-4)

    pred = scores >= 0.5
    assert pred[:, NO_PREDICTIONS].sum() == 0
    for key, value in _sklearn_threshold_metrics(y, pred).items():
        assert out[key] == pytest.approx(100 * value, abs=1e-4), key

    pred3 = _numpy_top_k(scores, 3, 0.5)
    assert (pred3 != pred).any()  # top-3 is a real restriction on this data
    for key, value in _sklearn_threshold_metrics(y, pred3).items():
        assert out[f"{key}_top3"] == pytest.approx(100 * value, abs=1e-4), key
    assert "mAP_top3" not in out


def test_counting_conventions_by_hand():
    scores, y = _data()
    out = multilabel_metrics(torch.from_numpy(scores), torch.from_numpy(y))
    pred = scores >= 0.5
    tp = (pred & (y == 1)).sum(0)
    n_pred, n_pos = pred.sum(0), y.sum(0)
    # ML-GCN: zero denominators count as 1
    cp = np.mean(tp / np.maximum(n_pred, 1))
    cr = np.mean(tp / np.maximum(n_pos, 1))
    f1 = [
        2 * p * r / (p + r) if p + r else 0.0
        for p, r in zip(tp / np.maximum(n_pred, 1), tp / np.maximum(n_pos, 1), strict=True)
    ]
    assert out["CP"] == pytest.approx(100 * cp, abs=1e-4)
    assert out["CR"] == pytest.approx(100 * cr, abs=1e-4)
    assert out["CF1"] == pytest.approx(100 * np.mean(f1), abs=1e-4)
    assert out["CF1_mlgcn"] == pytest.approx(200 * cp * cr / (cp + cr), abs=1e-4)
    assert abs(out["CF1"] - out["CF1_mlgcn"]) > 0.1  # the two conventions really differ
    op, o_r = tp.sum() / n_pred.sum(), tp.sum() / n_pos.sum()
    assert out["OP"] == pytest.approx(100 * op, abs=1e-4)
    assert out["OR"] == pytest.approx(100 * o_r, abs=1e-4)
    assert out["OF1"] == pytest.approx(200 * op * o_r / (op + o_r), abs=1e-4)


def test_paper_table_cf1_is_mean_of_per_class_f1():
    # Table 1, ML-AGCN (2 layers): CP 86.2, CR 78.3 give 82.1 with ML-GCN's formula, the
    # table says 81.7 -- so the paper's CF1 is not CF1_mlgcn.
    assert 2 * 86.2 * 78.3 / (86.2 + 78.3) == pytest.approx(82.06, abs=0.01)


def test_threshold_and_input_checks():
    scores, y = _data()
    s, t = torch.from_numpy(scores), torch.from_numpy(y)
    out = multilabel_metrics(s, t, threshold=0.7)
    expected = _sklearn_threshold_metrics(y, scores >= 0.7)
    assert out["OP"] == pytest.approx(100 * expected["OP"], abs=1e-4)
    with pytest.raises(ValueError, match="sigmoid"):
        multilabel_metrics(s * 4 - 2, t)
    with pytest.raises(ValueError, match="shape"):
        multilabel_metrics(s, t[:, :3])
    assert math.isnan(multilabel_metrics(s, torch.zeros_like(t))["mAP"])


def test_accumulator_matches_one_shot():
    scores, y = _data()
    s, t = torch.from_numpy(scores), torch.from_numpy(y)
    metrics = MultiLabelMetrics()
    with pytest.raises(RuntimeError):
        metrics.compute()
    for start in range(0, 200, 64):
        metrics.update(s[start : start + 64], t[start : start + 64])
    assert metrics.compute() == pytest.approx(multilabel_metrics(s, t))
    with pytest.raises(ValueError, match="indices"):
        metrics.update(s[:2], t[:2], torch.arange(2))
    metrics.reset()
    metrics.update(s[:10], t[:10], torch.arange(10))
    assert metrics.predictions()[0].shape == (10, 8)


def _sampler_shards(num_samples, world_size):
    """What DistributedSampler(shuffle=False) gives each rank: padded by repetition."""
    total = math.ceil(num_samples / world_size) * world_size
    indices = list(range(num_samples))
    indices += indices[: total - num_samples]
    return [indices[r:total:world_size] for r in range(world_size)]


def test_deduplicate_predictions_covers_every_image_once():
    scores, y = _data(num_images=10)
    shards = _sampler_shards(10, 4)  # 12 slots: images 0 and 1 appear twice
    idx = torch.tensor([i for shard in shards for i in shard])
    assert len(idx) == 12
    s, t, i = deduplicate_predictions(torch.from_numpy(scores)[idx], torch.from_numpy(y)[idx], idx)
    assert i.tolist() == list(range(10))
    assert torch.equal(s, torch.from_numpy(scores))
    assert torch.equal(t, torch.from_numpy(y))

    # no process group: gather_predictions only de-duplicates
    s2, _, i2 = gather_predictions(torch.from_numpy(scores)[idx], torch.from_numpy(y)[idx], idx)
    assert i2.tolist() == list(range(10)) and torch.equal(s2, s)


def _gather_worker(rank, world_size, init_file, result_file):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    scores, y = _data(num_images=11)
    # DistributedSampler's shards (rank 1 repeats image 0), plus one more duplicate on
    # rank 1 so that the sizes differ (6 and 7) and the pad-then-trim path runs.
    shard = _sampler_shards(11, world_size)[rank] + ([3] if rank == 1 else [])
    idx = torch.tensor(shard)
    metrics = MultiLabelMetrics()
    metrics.update(torch.from_numpy(scores)[idx], torch.from_numpy(y)[idx], idx)
    s, t = metrics.predictions()
    if rank == 0:
        torch.save({"scores": s, "targets": t}, result_file)
    dist.destroy_process_group()


@pytest.mark.slow
def test_gather_predictions_two_processes(tmp_path):
    world_size = 2
    mp.spawn(
        _gather_worker,
        args=(world_size, str(tmp_path / "init"), str(tmp_path / "out.pt")),
        nprocs=world_size,
    )
    result = torch.load(tmp_path / "out.pt", weights_only=True)
    scores, y = _data(num_images=11)
    # rank 0: [0, 2, 4, 6, 8, 10], rank 1: [1, 3, 5, 7, 9, 0, 3] -> each image once
    assert torch.equal(result["scores"], torch.from_numpy(scores))
    assert torch.equal(result["targets"], torch.from_numpy(y) > 0)


def test_format_table():
    rows = {
        "ASL (TResNetM)": {"mAP": 81.8, "CP": 82.1, "CR": 72.6, "CF1": 76.44, "OP": 83.1,
                           "OR": 76.1, "OF1": 79.4},
        "Ours": {"mAP": 86.94, "CP": 86.2},
    }  # fmt: skip
    table = format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[0].split("|")[1:-1] == [
        f" {h.ljust(14) if h == 'Method' else h.rjust(4)} "
        for h in ["Method", "mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"]
    ]
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells == ["ASL (TResNetM)", "81.8", "82.1", "72.6", "76.4", "83.1", "76.1", "79.4"]
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert cells == ["Ours", "86.9", "86.2", "-", "-", "-", "-", "-"]


def test_float64_scores_just_below_threshold_are_not_predicted():
    scores = torch.tensor([[0.49999999999, 0.9], [0.2, 0.8]], dtype=torch.float64)
    targets = torch.tensor([[1, 1], [0, 1]])
    m = multilabel_metrics(scores, targets, threshold=0.5)
    # Class 0 has no prediction (0.49999999999 < 0.5): recall 0 for it, 1 for class 1.
    assert m["CR"] == pytest.approx(50.0)
    assert m["OP"] == pytest.approx(100.0)


def _brute_force_best(scores, y, metric):
    """Tries every distinct score as the threshold (plus one above them all), with sklearn's
    per-class and micro F1; returns the best value and every threshold that reaches it."""
    candidates = sorted(set(scores.ravel().tolist()), reverse=True)
    values = {}
    for t in candidates:
        pred = scores >= t
        if metric == "CF1":
            _, _, f, _ = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
            values[t] = 100 * f.mean()
        else:
            _, _, f, _ = precision_recall_fscore_support(y, pred, average="micro",
                                                         zero_division=0)
            values[t] = 100 * f
    best = max(values.values())
    return best, [t for t, v in values.items() if v >= best - 1e-9]


@pytest.mark.parametrize("metric", ["CF1", "OF1"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tune_threshold_against_brute_force(metric, seed):
    scores, y = _data(num_images=60, seed=seed)
    scores = np.round(scores * 40) / 40  # many ties, within and across classes
    best, argbest = _brute_force_best(scores, y, metric)
    t, value = tune_threshold(torch.from_numpy(scores), torch.from_numpy(y), metric)
    assert value == pytest.approx(best, abs=1e-6)
    assert t == pytest.approx(max(argbest))  # ties go to the highest threshold
    # and the metrics recomputed at that threshold agree
    out = multilabel_metrics(torch.from_numpy(scores), torch.from_numpy(y), threshold=t)
    assert out[metric] == pytest.approx(best, abs=1e-4)


def test_tuned_metrics_in_multilabel_metrics_and_rows():
    scores, y = _data()
    s, t = torch.from_numpy(scores), torch.from_numpy(y)
    out = multilabel_metrics(s, t, threshold=0.5, tune="CF1")
    best, argbest = _brute_force_best(scores, y, "CF1")
    assert out["threshold"] == 0.5
    assert out["threshold_tuned"] == pytest.approx(max(argbest))
    assert out["CF1_tuned"] == pytest.approx(best, abs=1e-4)
    assert out["CF1_tuned"] > out["CF1"]  # 0.5 is not the best threshold on this data
    expected = _sklearn_threshold_metrics(y, scores >= out["threshold_tuned"])
    for key, value in expected.items():
        assert out[f"{key}_tuned"] == pytest.approx(100 * value, abs=1e-4), key
    # the untuned keys are unchanged
    plain = multilabel_metrics(s, t, threshold=0.5)
    assert {k: v for k, v in out.items() if not k.endswith("_tuned")} == pytest.approx(plain)
    acc = MultiLabelMetrics(tune="CF1")
    acc.update(s, t)
    assert acc.compute() == pytest.approx(out)

    rows = threshold_rows("ML-AGCN", {**out, "Params (M)": 29.9})
    (name0, row0), (name1, row1) = rows.items()
    assert name0 == "ML-AGCN @0.5"
    assert name1 == f"ML-AGCN @{out['threshold_tuned']:.2f} (tuned on val, CF1)"
    assert row0["CF1"] == out["CF1"] and row1["CF1"] == out["CF1_tuned"]
    assert row0["mAP"] == row1["mAP"] == out["mAP"] and row1["Params (M)"] == 29.9
    assert list(threshold_rows("m", plain)) == ["m @0.5"]

    with pytest.raises(ValueError, match="metric"):
        tune_threshold(s, t, "mAP")
    assert all(math.isnan(v) for v in tune_threshold(s[:0], t[:0]))
