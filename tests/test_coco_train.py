"""End-to-end tests of examples/coco_train.py on tiny synthetic COCO data (CPU)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from agcn_pyg import CocoMultiLabel, LabelGraph, build_transforms, make_synthetic_coco
from agcn_pyg.train import RunFolder
from agcn_pyg.train.checkpoint import (
    load_checkpoint,
    load_tensors,
    model_from_checkpoint,
    save_checkpoint,
)
from agcn_pyg.train.metrics import multilabel_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "coco_train.py")
NUM_TRAIN, NUM_VAL = 24, 9  # odd val count: DDP pads one rank


def _load_script():
    spec = importlib.util.spec_from_file_location("coco_train", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


coco_train = _load_script()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_train=NUM_TRAIN,
                               num_val=NUM_VAL, num_labels=5, image_size=32, seed=1)


def data_flags(d):
    return ["--train-ann", d.train_ann_file, "--train-images", d.train_image_dir,
            "--val-ann", d.val_ann_file, "--val-images", d.val_image_dir]


TINY = ["--model", "resnet10t", "--img-size", "32", "--batch-size", "8", "--workers", "0",
        "--no-progress", "--lr", "3e-4", "--ema-decay", "0.9",
        "--amp", "off", "--hidden", "32", "--log-interval", "1"]


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def two_epochs(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run2"))
    assert coco_train.main([*data_flags(data), *TINY, "--epochs", "2", "--output", out]) == 0
    return out


@pytest.fixture(scope="module")
def eval_one_process(two_epochs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval1"))
    ckpt = os.path.join(two_epochs, "last.pth")
    assert coco_train.main(["--evaluate", ckpt, "--output", out, "--workers", "0",
                            "--no-progress"]) == 0
    with open(os.path.join(out, "eval.json")) as f:
        return json.load(f)


def test_demo_end_to_end(tmp_path, capsys):
    rc = coco_train.main(["--output", str(tmp_path), "--epochs", "1", "--demo-train", "16",
                          "--demo-val", "7", "--demo-labels", "4", "--img-size", "32",
                          "--batch-size", "8", "--workers", "0", "--no-progress",
                          "--hidden", "32"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "DEMO" in out and "SYNTHETIC" in out
    assert "| EMA" in out and "mAP" in out
    for name in ("last.pth", "best.pth", "log.jsonl", "summary.csv", "config.yaml",
                 "loss.png", "map.png", "label_graph.pt"):
        assert os.path.isfile(tmp_path / name), name
    (record,) = read_log(tmp_path / "log.jsonl")
    assert record["epoch"] == 1 and record["model"]["num_images"] == 7
    state = load_checkpoint(tmp_path / "last.pth")
    for key in ("config", "label_names", "adj", "node_features", "model", "ema", "optimizer",
                "scheduler", "scaler", "epoch", "best", "history", "rng", "run_config"):
        assert key in state, key
    assert state["epoch"] == 1 and state["step"] == 0
    assert state["config"]["data_config"]["input_size"] == (3, 32, 32)
    assert len(state["label_names"]) == 4
    # A is the default reading of the training labels' co-occurrence: D P^T D.
    graph = LabelGraph.load(tmp_path / "label_graph.pt")
    P = graph.probability().double()
    assert (P.sum(1) > 0).all()  # every demo label occurs in training
    d = P.sum(1).rsqrt()
    torch.testing.assert_close(state["adj"].double(), d[:, None] * P.t() * d[None, :],
                               rtol=1e-5, atol=1e-6)


def test_resume_reproduces_uninterrupted_run(data, two_epochs, tmp_path):
    out = str(tmp_path)
    # First epoch of the same 2-epoch schedule, then resume for the second one (with
    # worker processes this time: augmentation must not depend on them).
    rc = coco_train.main([*data_flags(data), *TINY, "--epochs", "1", "--sched-epochs", "2",
                          "--output", out])
    assert rc == 0
    rc = coco_train.main(["--resume", os.path.join(out, "last.pth"), "--epochs", "2",
                          "--workers", "2", "--no-progress"])
    assert rc == 0
    full, resumed = read_log(os.path.join(two_epochs, "log.jsonl")), read_log(
        os.path.join(out, "log.jsonl"))
    assert [r["epoch"] for r in resumed] == [1, 2]
    for a, b in zip(full, resumed, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["mAP"] == pytest.approx(a["mAP"], abs=1e-3)
    wa = load_checkpoint(os.path.join(two_epochs, "last.pth"))
    wb = load_checkpoint(os.path.join(out, "last.pth"))
    for k, v in wa["model"].items():
        assert torch.allclose(v.float(), wb["model"][k].float(), atol=1e-5), k
    for k, v in wa["ema"].items():
        assert torch.allclose(v.float(), wb["ema"][k].float(), atol=1e-5), k


def test_evaluate_checkpoint_matches_direct_computation(data, two_epochs, eval_one_process,
                                                        capsys):
    ckpt = os.path.join(two_epochs, "last.pth")
    assert coco_train.main(["--evaluate", ckpt, "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Params (M)" in out and "ML-AGCN EMA" in out

    # Independent: score every val image one by one with the EMA model.
    model, state = model_from_checkpoint(ckpt)
    cfg = state["config"]["data_config"]
    ds = CocoMultiLabel(data.val_ann_file, data.val_image_dir, keep_empty=True,
                        transform=build_transforms(cfg, img_size=32, train=False))
    with torch.no_grad():
        scores = torch.cat([torch.sigmoid(model(ds[i][0][None])) for i in range(len(ds))])
    expected = multilabel_metrics(scores, ds.labels)
    got = eval_one_process["metrics"]["ML-AGCN EMA"]
    assert got["num_images"] == NUM_VAL
    for k in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert got[k] == pytest.approx(expected[k], abs=1e-4), k
    assert eval_one_process["params"]["ML-AGCN"] == sum(p.numel() for p in model.parameters())

    # The second row: the threshold with the best CF1 on these images, found by trying
    # every score as the threshold.
    by_threshold = {t: multilabel_metrics(scores, ds.labels, threshold=t)
                    for t in sorted(set(scores.flatten().tolist()))}
    best_cf1 = max(m["CF1"] for m in by_threshold.values())
    assert got["CF1_tuned"] == pytest.approx(best_cf1, abs=1e-3)
    assert by_threshold[min(by_threshold, key=lambda t: abs(t - got["threshold_tuned"]))][
        "CF1"] == pytest.approx(best_cf1, abs=1e-3)
    assert got["threshold"] == 0.5
    rows = [line for line in out.splitlines() if line.startswith("| ML-AGCN")]
    assert [r.split("|")[1].strip().split(" @")[0] for r in rows] == [
        "ML-AGCN EMA", "ML-AGCN EMA", "ML-AGCN", "ML-AGCN"]
    assert "@0.5 " in rows[0] and "(tuned on val, CF1)" in rows[1]
    assert "label graph normalized" in out


def test_adj_variant_is_recorded_and_old_checkpoints_keep_their_graph(data, tmp_path, capsys):
    out = str(tmp_path / "run")
    rc = coco_train.main([*data_flags(data), *TINY, "--epochs", "1", "--sched-epochs", "2",
                          "--adj-variant", "cooccurrence", "--output", out])
    assert rc == 0
    state = load_checkpoint(os.path.join(out, "last.pth"))
    cache = torch.load(os.path.join(out, "label_graph.pt"), weights_only=True)
    assert state["config"]["adjacency"] == "cooccurrence"
    assert cache["adjacency_kind"] == "cooccurrence"
    P = cache["counts"].double() / cache["nums"].double().clamp(min=1)[:, None]
    torch.testing.assert_close(state["adj"].double(), P, rtol=1e-6, atol=1e-7)

    # A checkpoint from before the record: raw P, and nothing says so.
    del state["config"]["adjacency"], state["run_config"]["adj_variant"]
    old = os.path.join(out, "old.pth")
    save_checkpoint(state, old)
    model, _ = model_from_checkpoint(old)
    torch.testing.assert_close(model.head.adj, state["adj"])
    capsys.readouterr()
    assert coco_train.main(["--evaluate", old, "--workers", "0", "--no-progress"]) == 0
    assert "label graph cooccurrence" in capsys.readouterr().out
    # Resumed (today's default is another reading): the run keeps its A and records it.
    shutil.copy(old, os.path.join(out, "last.pth"))
    assert coco_train.main(["--resume", "auto", "--output", out, "--epochs", "2",
                            "--no-progress", "--workers", "0"]) == 0
    resumed = load_checkpoint(os.path.join(out, "last.pth"))
    assert resumed["epoch"] == 2
    torch.testing.assert_close(resumed["adj"], state["adj"])
    assert resumed["config"]["adjacency"] == "cooccurrence"
    assert resumed["run_config"]["adj_variant"] == "cooccurrence"


def test_sparse_label_graph_trains_like_the_dense_one(data, two_epochs, tmp_path):
    """--label-graph sparse: counts and A stay sparse (cache, checkpoint), the layers take the
    complete path, and the run follows the dense run of the same data (two_epochs)."""
    out = str(tmp_path / "run")
    assert coco_train.main([*data_flags(data), *TINY, "--epochs", "1", "--sched-epochs", "2",
                            "--label-graph", "sparse", "--output", out]) == 0
    state = load_checkpoint(os.path.join(out, "last.pth"))
    dense = load_checkpoint(os.path.join(two_epochs, "last.pth"))
    assert state["adj"].layout == torch.sparse_coo and dense["adj"].layout == torch.strided
    torch.testing.assert_close(state["adj"].to_dense(), dense["adj"], rtol=1e-6, atol=1e-7)
    cache = load_tensors(os.path.join(out, "label_graph.pt"))
    assert cache["counts"].layout == torch.sparse_coo
    model, _ = model_from_checkpoint(state)
    assert all(conv.complete for conv in model.head.convs)
    sparse_loss = read_log(os.path.join(out, "log.jsonl"))[0]["train_loss"]
    dense_loss = read_log(os.path.join(two_epochs, "log.jsonl"))[0]["train_loss"]
    assert sparse_loss == pytest.approx(dense_loss, rel=1e-4)
    # Resumed and evaluated from the checkpoint alone, the graph stays sparse.
    assert coco_train.main(["--resume", "auto", "--output", out, "--epochs", "2",
                            "--no-progress", "--workers", "0"]) == 0
    assert load_checkpoint(os.path.join(out, "last.pth"))["adj"].layout == torch.sparse_coo
    assert coco_train.main(["--evaluate", os.path.join(out, "last.pth"), "--workers", "0",
                            "--no-progress"]) == 0


def _torchrun(args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", SCRIPT, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT)


def test_ddp_two_processes(data, two_epochs, eval_one_process, tmp_path):
    # Evaluation: metrics over both ranks' predictions equal the 1-process ones.
    ckpt = os.path.join(two_epochs, "last.pth")
    out = tmp_path / "eval2"
    r = _torchrun(["--evaluate", ckpt, "--output", str(out), "--workers", "0",
                   "--no-progress"])
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "eval.json") as f:
        two = json.load(f)
    for name, m in eval_one_process["metrics"].items():
        assert two["metrics"][name]["num_images"] == NUM_VAL
        for k, v in m.items():
            assert two["metrics"][name][k] == pytest.approx(v, abs=1e-6), (name, k)

    # Training: one DDP epoch runs, every val image is scored once, rank 0 writes.
    train_out = tmp_path / "train2"
    r = _torchrun([*data_flags(data), *TINY, "--epochs", "1", "--output", str(train_out)])
    assert r.returncode == 0, r.stderr[-3000:]
    (record,) = read_log(train_out / "log.jsonl")
    assert record["model"]["num_images"] == NUM_VAL
    assert load_checkpoint(train_out / "last.pth")["epoch"] == 1
    assert not [f for f in os.listdir(train_out) if f.startswith(".tmp-")]

    # A plain re-run into it is refused by rank 0 and every rank stops (no hang, no
    # traceback): the decision is shared before any rank moves on.
    r = _torchrun([*data_flags(data), *TINY, "--epochs", "1", "--output", str(train_out)],
                  timeout=120)
    assert r.returncode != 0 and "already holds a run" in r.stderr, r.stderr[-3000:]
    # (torchrun itself prints a traceback of its own when a worker exits non-zero)
    assert r.stderr.count("already holds a run") == 1 and 'coco_train.py", line' not in r.stderr

    # A run in progress holds the folder (rank 0's lock): a second job is refused the same
    # way, once, by every rank, before any of them writes.
    held = RunFolder(train_out)
    held.lock()
    try:
        r = _torchrun([*data_flags(data), *TINY, "--resume", "auto", "--epochs", "2",
                       "--output", str(train_out)], timeout=120)
    finally:
        held.unlock()
    assert r.returncode != 0 and "in use by another run" in r.stderr, r.stderr[-3000:]
    assert r.stderr.count("in use by another run") == 1 and 'coco_train.py", line' not in r.stderr
    assert load_checkpoint(train_out / "last.pth")["epoch"] == 1


def test_sigterm_writes_loadable_checkpoint(data, tmp_path):
    cmd = [sys.executable, SCRIPT, *data_flags(data), *TINY, "--epochs", "500",
           "--output", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        for line in proc.stdout:
            if line.startswith("Output:"):
                break
        time.sleep(3)  # well into training
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "SIGTERM" in stderr
    state = load_checkpoint(tmp_path / "last.pth")
    assert 0 <= state["step"] < 3 and 0 <= state["epoch"] < 500
    model, _ = model_from_checkpoint(state)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_missing_annotation_file(data, tmp_path, capsys):
    flags = data_flags(data)
    flags[flags.index("--val-ann") + 1] = str(tmp_path / "nope.json")
    assert coco_train.main([*flags, *TINY, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nope.json" in err and "does not exist" in err


def test_missing_image_folder(data, tmp_path, capsys):
    flags = data_flags(data)
    flags[flags.index("--train-images") + 1] = str(tmp_path / "no_images")
    assert coco_train.main([*flags, *TINY, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no_images" in err and "does not exist" in err


def test_data_root_without_coco_layout(tmp_path, capsys):
    # (with --output: the default, runs/<timestamp>, is under the checkout)
    assert coco_train.main(["--data", str(tmp_path), *TINY, "--output", str(tmp_path / "o")]
                           ) == 2
    assert "neither COCO 2014 nor 2017" in capsys.readouterr().err


def test_corrupt_val_image_is_skipped(data, two_epochs, tmp_path):
    val_dir = tmp_path / "val"
    shutil.copytree(data.val_image_dir, val_dir)
    victim = sorted(os.listdir(val_dir))[4]
    with open(val_dir / victim, "r+b") as f:  # truncate the JPEG mid-stream
        f.truncate(200)
    flags = data_flags(data)
    flags[flags.index("--val-images") + 1] = str(val_dir)
    out = tmp_path / "eval"
    with pytest.warns(UserWarning, match="unreadable"):
        rc = coco_train.main(["--evaluate", os.path.join(two_epochs, "last.pth"), *flags,
                              "--output", str(out), "--workers", "0", "--no-progress"])
    assert rc == 0
    with open(out / "eval.json") as f:
        result = json.load(f)
    assert result["metrics"]["ML-AGCN EMA"]["num_images"] == NUM_VAL - 1


def test_non_finite_loss_stops_without_checkpoint(data, tmp_path, capsys, monkeypatch):
    real = coco_train.asymmetric_loss

    def nan_loss(*args, **kwargs):
        loss = real(*args, **kwargs)
        return lambda logits, targets: loss(logits, targets) * float("nan")

    monkeypatch.setattr(coco_train, "asymmetric_loss", nan_loss)
    assert coco_train.main([*data_flags(data), *TINY, "--output", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "non-finite training loss" in err and "epoch 1, step 1/3" in err
    assert not os.path.exists(tmp_path / "last.pth")


# ---------------------------------------------------------------------------------------
# The command line: defaults, --config, validation, run-folder guarantees
# ---------------------------------------------------------------------------------------


def test_help_shows_the_recipe_and_lists_the_demo_overrides(capsys):
    with pytest.raises(SystemExit) as info:
        coco_train.main(["--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--model MODEL timm backbone (default: tresnet_m)" in out
    assert "--img-size IMG_SIZE square input size (default: 448)" in out
    assert "--lr LR peak lr (default: 0.0001)" in out
    assert "changes these defaults: --model resnet10t --img-size 64" in out


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "argument --epochs: must be >= 1 (got 0)"),
    (["--lr", "-1"], "argument --lr: must be > 0"),
    (["--threshold", "1.5"], "argument --threshold: must be >= 0 and <= 1 (got 1.5)"),
    (["--config", "nope.yaml"], "--config: file 'nope.yaml' does not exist"),
])
def test_bad_arguments_are_refused_up_front(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        coco_train.main([*flags, "--output", str(tmp_path / "o")])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_finished_run_is_not_overwritten(data, two_epochs, capsys):
    before = {f: os.path.getmtime(os.path.join(two_epochs, f)) for f in os.listdir(two_epochs)}
    assert coco_train.main([*data_flags(data), *TINY, "--output", two_epochs]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume auto" in err and "--overwrite" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert {f: os.path.getmtime(os.path.join(two_epochs, f))
            for f in os.listdir(two_epochs)} == before


@pytest.mark.parametrize("mode", ["--evaluate", "--resume"])
def test_damaged_checkpoint_is_one_line(mode, two_epochs, tmp_path, capsys):
    bad = tmp_path / "last.pth"
    data = open(os.path.join(two_epochs, "last.pth"), "rb").read()
    bad.write_bytes(data[: len(data) // 3])
    assert coco_train.main([mode, str(bad), "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "truncated" in err and str(bad) in err


def test_resume_from_weights_only_is_refused(two_epochs, capsys):
    best = os.path.join(two_epochs, "best.pth")
    assert coco_train.main(["--resume", best, "--workers", "0", "--no-progress"]) == 2
    assert "holds weights only; resume from a last.pth" in capsys.readouterr().err


def test_resume_repairs_best_and_removes_stale_temp_files(two_epochs, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(two_epochs, out)
    (out / "best.pth").unlink()  # as a kill -9 during its write can leave it
    (out / ".tmp-k1ll3d.pth").write_bytes(b"PK\x03\x04 half a checkpoint")
    last = load_checkpoint(out / "last.pth")
    assert coco_train.main(["--resume", "auto", "--output", str(out), "--epochs", "2",
                            "--workers", "0", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]
    if last["best"]["epoch"] == last["epoch"]:  # rebuilt from last.pth
        assert "Repaired" in said
        best = load_checkpoint(out / "best.pth")
        assert best["epoch"] == last["epoch"] and "optimizer" not in best
    else:  # that epoch's weights are gone: said so
        assert "cannot be rebuilt" in said


def test_unreadable_validation_set_fails_before_training(data, tmp_path, capsys):
    val_dir = tmp_path / "val"
    shutil.copytree(data.val_image_dir, val_dir)
    for name in os.listdir(val_dir):
        (val_dir / name).write_bytes(b"not an image")
    flags = data_flags(data)
    flags[flags.index("--val-images") + 1] = str(val_dir)
    with pytest.warns(UserWarning):
        rc = coco_train.main([*flags, *TINY, "--output", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"none of the {NUM_VAL} validation images can be read" in err
    assert not os.path.exists(tmp_path / "o" / "log.jsonl")


def test_config_file_and_a_plain_log(data, tmp_path):
    """A run from a --config file with a flag on top, its output piped to a file: no
    carriage returns (no progress-bar redraws), a summary.csv, the resolved config.yaml,
    and --checkpoint-hist 2 keeping the weights of the two best of three epochs."""
    config = tmp_path / "run.yaml"
    config.write_text("model: resnet10t\nimg-size: 32\nbatch_size: 8\nworkers: 0\n"
                      "ema_decay: 0.9\namp: 'off'\nhidden: 32\nepochs: 9\nlr: 2e-4\n"
                      "checkpoint-hist: 2\n")
    out = tmp_path / "run"
    log = tmp_path / "stdout.txt"
    with open(log, "w") as f:  # progress on: off a terminal it is plain lines
        r = subprocess.run([sys.executable, SCRIPT, "--config", str(config), *data_flags(data),
                            "--log-interval", "1", "--epochs", "3", "--output", str(out)],
                           stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, timeout=300,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    text = log.read_text()
    assert r.returncode == 0, text[-3000:]
    assert "\r" not in text and "train 1 [1/3] loss" in text
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    score = {int(r["epoch"]): max(float(r["eval_mAP"]), float(r["eval_ema_mAP"])) for r in rows}
    top2 = sorted(sorted(score, key=lambda e: -score[e])[:2])
    kept = sorted(int(p[11:-4]) for p in os.listdir(out) if p.startswith("checkpoint-"))
    assert kept == top2
    for epoch in kept:
        weights = torch.load(out / f"checkpoint-{epoch}.pth", weights_only=True)
        assert weights["kind"] == "weights" and weights["epoch"] == epoch
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["epochs"], saved["lr"], saved["model"]) == (3, 2e-4, "resnet10t")
    assert "output" not in saved and "resume" not in saved
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["run_config"]["lr"] == 2e-4 and state["run_config"]["hidden"] == 32
