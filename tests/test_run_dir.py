"""The run folder's guarantees and the run's records: no overwrite of a run, best.pth
repair, stale temporary files, free space, the label-graph cache, summary.csv/TensorBoard,
curves, and --config files."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import types
from collections import namedtuple

import pytest
import torch

from agcn_pyg.train import RunFolder, RunFolderError, RunLogger
from agcn_pyg.train.checkpoint import (
    ModelSpec,
    TrainParts,
    TrainState,
    load_checkpoint,
    model_config,
    save_checkpoint,
    training_checkpoint,
    weights_checkpoint,
)
from agcn_pyg.train.config import config_file_argv, explicit_dests, merge_resumed
from agcn_pyg.train.curves import plot_curves
from agcn_pyg.train.datasets import label_graph

# ---------------------------------------------------------------------------------------
# Run folder
# ---------------------------------------------------------------------------------------


def _training(epoch, best_epoch, step=0, seed=0):
    """A small training checkpoint dict whose weights are told apart by ``seed``."""
    from timm.utils import ModelEmaV3

    from agcn_pyg import create_model

    torch.manual_seed(seed)
    model = create_model("resnet10t", 3, torch.rand(3, 3), hidden_channels=[4])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    parts = TrainParts(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                       ema=ModelEmaV3(model))
    spec = ModelSpec(model_config("resnet10t", 3, 2, [4]), list("abc"), torch.rand(3, 3))
    state = TrainState(epoch=epoch, step=step,
                       best={"mAP": 50.0 + best_epoch, "epoch": best_epoch, "source": "model"})
    return training_checkpoint(spec, parts, state, [], {})


def test_a_folder_with_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    folder = RunFolder(tmp_path)
    folder.claim(resume=False, overwrite=False)  # empty: fine
    save_checkpoint(_training(2, 1), folder.last)
    (tmp_path / "log.jsonl").write_text('{"epoch": 1}\n')
    (tmp_path / "label_graph.pt").write_bytes(b"cache")
    (tmp_path / "data").mkdir()
    with pytest.raises(RunFolderError) as info:
        folder.claim(resume=False, overwrite=False)
    message = str(info.value)
    assert "2 epoch(s) done" in message and "--resume auto" in message
    assert "--overwrite" in message and "\n" not in message
    assert load_checkpoint(folder.last)["epoch"] == 2  # untouched
    folder.claim(resume=True, overwrite=False)
    assert (tmp_path / "log.jsonl").exists()
    folder.claim(resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "label_graph.pt"]


def test_stale_temporary_files_are_removed(tmp_path):
    (tmp_path / ".tmp-abc123.pth").write_bytes(b"half a checkpoint")
    (tmp_path / ".tmp-xyz.jsonl").write_text("{")
    (tmp_path / "keep.txt").write_text("x")
    RunFolder(tmp_path).claim(resume=True, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("best_on_disk", ["missing", "stale", "damaged"])
def test_best_is_rebuilt_from_last_when_it_is_the_best_epoch(tmp_path, best_on_disk):
    folder = RunFolder(tmp_path)
    last = _training(epoch=3, best_epoch=3, seed=1)
    save_checkpoint(last, folder.last)
    if best_on_disk == "stale":
        save_checkpoint(weights_checkpoint(_training(epoch=2, best_epoch=2, seed=2)),
                        folder.best)
    elif best_on_disk == "damaged":
        (tmp_path / "best.pth").write_bytes(b"PK\x03\x04 cut short")
    said = []
    best = folder.repair_best(last, said.append)
    assert best == last["best"] and "Repaired" in said[0]
    repaired = load_checkpoint(folder.best)
    assert repaired["epoch"] == 3 and "optimizer" not in repaired
    for k, v in last["model"].items():
        assert torch.equal(repaired["model"][k], v), k


def test_best_that_cannot_be_rebuilt_restarts_the_record(tmp_path):
    folder = RunFolder(tmp_path)
    old = weights_checkpoint(_training(epoch=1, best_epoch=1, seed=2))
    save_checkpoint(old, folder.best)
    last = _training(epoch=3, best_epoch=2)  # epoch 2's weights are gone
    said = []
    best = folder.repair_best(last, said.append)
    assert best == old["best"] and "cannot be rebuilt" in said[0]
    assert load_checkpoint(folder.best)["epoch"] == 1  # left as it was
    (tmp_path / "best.pth").unlink()
    assert folder.repair_best(last, said.append)["mAP"] == -math.inf
    consistent = _training(epoch=3, best_epoch=1)
    save_checkpoint(old, folder.best)
    said.clear()
    assert folder.repair_best(consistent, said.append) == consistent["best"] and not said


def test_free_space_is_checked(tmp_path, monkeypatch):
    import agcn_pyg.train.run_dir as run_dir

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(run_dir.shutil, "disk_usage", lambda p: usage(10**9, 0, 50 * 2**20))
    folder = RunFolder(tmp_path)
    folder.check_free_space(40 * 2**20)
    with pytest.raises(RunFolderError, match=r"50 MiB free, but the checkpoints need about 60"):
        folder.check_free_space(60 * 2**20)


# ---------------------------------------------------------------------------------------
# Label graph cache, logs, curves
# ---------------------------------------------------------------------------------------


def test_label_graph_cache_is_keyed_on_the_labels(tmp_path):
    names = ["cat", "dog", "bird"]
    a = types.SimpleNamespace(label_names=names, labels=torch.tensor(
        [[1, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=torch.bool))
    b = types.SimpleNamespace(label_names=names, labels=torch.tensor(
        [[1, 0, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.bool))  # same names, other data
    said = []
    ga = label_graph(a, str(tmp_path), say=said.append)
    assert label_graph(a, str(tmp_path), say=said.append).counts.equal(ga.counts)
    assert "reusing" in said[-1]
    gb = label_graph(b, str(tmp_path), say=said.append)
    assert "other training labels" in said[-1]
    # The co-occurrence counts of b, counted by hand: images holding both i and j.
    expected = torch.tensor([[2, 0, 1], [0, 1, 1], [1, 1, 2]], dtype=torch.float64)
    torch.testing.assert_close(gb.counts.double(), expected)


def _record(epoch, mAP, ema=True):
    metrics = {"mAP": mAP, "CP": 1.0, "CR": 2.0, "CF1": 3.0, "OP": 4.0, "OR": 5.0,
               "OF1": 6.0, "loss": 0.5}
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 0.5, "mAP": mAP,
            "val_loss_ema": 0.4 if ema else None, "mAP_ema": mAP + 1 if ema else None,
            "lr": 1e-4, "train_images_per_s": 10.0, "epoch_seconds": 2.0, "best_mAP": mAP,
            "best_epoch": epoch, "model": metrics,
            "ema": {**metrics, "mAP": mAP + 1} if ema else None}


def test_run_logger_writes_summary_log_and_tensorboard(tmp_path, monkeypatch):
    scalars = []

    class FakeWriter:  # TensorBoard is an optional extra: test the calls, not the package
        def __init__(self, log_dir, purge_step=None):
            self.log_dir, self.purge_step = log_dir, purge_step

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=FakeWriter))
    logger = RunLogger(str(tmp_path), start_epoch=0)
    history = [_record(1, 60.0), _record(2, float("nan"))]
    logger.write(history[:1])
    logger.write(history)
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0])[:4] == ["epoch", "train_loss", "eval_loss", "eval_mAP"]
    assert float(rows[0]["eval_ema_mAP"]) == 61.0 and rows[1]["eval_mAP"] == "nan"
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["mAP"] is None  # NaN is not JSON
    assert ("eval/mAP", 60.0, 1) in scalars and ("train/loss", 0.5, 2) in scalars
    assert not any(tag == "eval/mAP" and step == 2 for tag, _, step in scalars)  # NaN skipped
    assert logger.writer.purge_step == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png") == []
    assert [p.split("/")[-1] for p in logger.close()] == ["loss.png", "map.png"]


def test_plot_curves_keeps_the_callers_backend(tmp_path):
    import matplotlib

    (tmp_path / "log.jsonl").write_text(json.dumps(_record(1, 50.0)) + "\n")
    before = matplotlib.get_backend()
    written = plot_curves(tmp_path / "log.jsonl")
    assert matplotlib.get_backend() == before
    for path in written:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------
# --config files and resumed configurations
# ---------------------------------------------------------------------------------------


def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--model", default="tresnet_m")
    p.add_argument("--amp", choices=("auto", "off"), default="auto")
    p.add_argument("--sizes", type=int, nargs="+", default=[1])
    p.add_argument("--keep-empty", action="store_true")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    return p


def test_config_file_values_are_defaults_that_flags_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nepochs: 5\nsizes: [2, 3]\nkeep-empty: true\n"
                    "channels_last: false\nmodel: null\namp: off\n")
    defaults = vars(_parser().parse_args([]))
    argv = [*config_file_argv(path, defaults), "--epochs", "7"]
    args = _parser().parse_args(argv)
    assert (args.lr, args.epochs, args.sizes, args.keep_empty) == (1e-3, 7, [2, 3], True)
    assert args.channels_last is False and args.model == "tresnet_m" and args.amp == "off"
    assert explicit_dests(_parser, argv) == {"lr", "epochs", "sizes", "keep_empty",
                                             "channels_last", "amp"}
    path.write_text("lr: 1e-3\nbatch: 4\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['batch'\]"):
        config_file_argv(path, defaults)
    path.write_text("- lr\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        config_file_argv(path, defaults)


def test_a_resumed_run_keeps_its_recipe():
    args = _parser().parse_args(["--lr", "0.5", "--epochs", "9"])
    saved = {"lr": 0.1, "epochs": 3, "model": "resnet10t", "gone": 1, "output": "x"}
    ignored = merge_resumed(args, saved, {"lr", "epochs"}, data_keys=(),
                            runtime_keys={"epochs"})
    assert ignored == ["--lr"]
    assert (args.lr, args.epochs, args.model) == (0.1, 9, "resnet10t")
    assert not hasattr(args, "gone")
