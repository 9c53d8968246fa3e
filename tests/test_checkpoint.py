"""The checkpoint format: atomic writes, weights_only reads, clear errors, model rebuild."""

import argparse
import errno
import os
import random

import pytest
import torch

from agcn_pyg import create_model
from agcn_pyg.train import capture_rng_state
from agcn_pyg.train.checkpoint import (
    FORMAT,
    CheckpointError,
    CheckpointWriteError,
    ModelSpec,
    TrainParts,
    TrainState,
    load_checkpoint,
    load_model,
    model_config,
    model_from_checkpoint,
    restore_training,
    save_checkpoint,
    training_checkpoint,
    weights_checkpoint,
)


def _parts(seed=0, n=4):
    from timm.utils import ModelEmaV3

    torch.manual_seed(seed)
    adj, feats = torch.rand(n, n), torch.randn(n, 6)
    model = create_model("resnet10t", n, adj, hidden_channels=[8], node_features=feats,
                         head_kwargs={"similarity": False})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
    spec = ModelSpec(model_config("resnet10t", n, 2, [8], head_kwargs={"similarity": False}),
                     list("abcd"), adj, feats)
    return spec, TrainParts(model, opt, sched, ema=ModelEmaV3(model, decay=0.5))


def _step(parts):
    parts.model.train()
    loss = parts.model(torch.randn(2, 3, 32, 32)).square().sum()
    parts.optimizer.zero_grad()
    loss.backward()
    parts.optimizer.step()
    parts.scheduler.step()
    parts.ema.update(parts.model)


def test_model_round_trip_needs_only_the_checkpoint(tmp_path):
    spec, parts = _parts()
    _step(parts)
    path = tmp_path / "last.pth"
    save_checkpoint(training_checkpoint(spec, parts, TrainState(epoch=1), [], {}), path)
    x = torch.randn(2, 3, 32, 32)
    for use_ema, reference in ((False, parts.model), (True, parts.ema.module)):
        rebuilt, state = model_from_checkpoint(path, use_ema=use_ema)
        assert state["label_names"] == list("abcd")
        assert not rebuilt.head.convs[0].similarity
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), reference.eval()(x))


def test_both_checkpoints_load_with_weights_only(tmp_path):
    spec, parts = _parts()
    _step(parts)
    state = TrainState(epoch=1, global_step=1, history=[{"epoch": 1, "mAP": float("nan")}],
                       best={"mAP": 50.0, "epoch": 1, "source": "ema"})
    last = training_checkpoint(spec, parts, state, [capture_rng_state()],
                               {"model": "resnet10t", "lr": 1e-2, "hidden": [8]})
    save_checkpoint(last, tmp_path / "last.pth")
    save_checkpoint(weights_checkpoint(last), tmp_path / "best.pth")
    full = torch.load(tmp_path / "last.pth", weights_only=True)
    best = torch.load(tmp_path / "best.pth", weights_only=True)
    assert full["format"] == best["format"] == FORMAT
    assert full["optimizer"]["state"] and full["ema"] is not None
    for key in ("optimizer", "scheduler", "scaler", "ema", "rng"):
        assert key not in best, key
    assert best["weights_source"] == "ema" and best["run_config"]["model"] == "resnet10t"
    for k, v in parts.ema.module.state_dict().items():  # best.pth holds the EMA weights
        assert torch.equal(best["model"][k], v), k
    model, names, data_config = load_model(tmp_path / "best.pth")
    assert names == list("abcd")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), parts.ema.module.eval()(x))


def test_restore_training_continues_exactly(tmp_path):
    spec, parts = _parts()
    _step(parts)
    random.seed(5)
    rng = capture_rng_state()
    expected_draws = (random.random(), torch.rand(2))
    save_checkpoint(training_checkpoint(spec, parts, TrainState(epoch=2, step=3), [rng], {}),
                    tmp_path / "last.pth")
    _step(parts)  # the uninterrupted run's next step
    after = {k: v.clone() for k, v in parts.model.state_dict().items()}

    _, fresh = _parts(seed=1)
    state = restore_training(load_checkpoint(tmp_path / "last.pth"), fresh)
    assert (state.epoch, state.step) == (2, 3)
    draws = (random.random(), torch.rand(2))
    assert draws[0] == expected_draws[0] and torch.equal(draws[1], expected_draws[1])
    _step(fresh)
    for k, v in after.items():
        torch.testing.assert_close(fresh.model.state_dict()[k], v, msg=k)
    assert fresh.scheduler.last_epoch == parts.scheduler.last_epoch


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"epoch": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]  # no temporary file left behind


def test_full_disk_is_one_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1}, path)
    real_save = torch.save

    def fill_disk(obj, f, *args, **kwargs):  # a file that accepts 100 bytes, then ENOSPC
        write = f.write
        written = [0]

        def limited(data):
            written[0] += len(data)
            if written[0] > 100:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return write(data)

        f.write = limited
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fill_disk)
    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, path)
    message = str(info.value)
    assert "No space left on device" in message and "last.pth" in message
    assert "\n" not in message and info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]


def _write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("case, match", [
    ("empty", "is empty"),
    ("text", "not a PyTorch checkpoint"),
    ("truncated", "truncated or damaged"),
    ("foreign", "not an agcn_pyg checkpoint"),
    ("pickled", "pickled Python objects"),
    ("newer", "has checkpoint format 'agcn_pyg/99'"),
])
def test_unreadable_checkpoints_give_one_clear_line(tmp_path, case, match):
    good = tmp_path / "good.pth"
    save_checkpoint({"epoch": 1, "w": torch.randn(1000)}, good)
    path = tmp_path / f"{case}.pth"
    if case == "empty":
        _write_bytes(path, b"")
    elif case == "text":
        path.write_text("epoch: 3\n")
    elif case == "truncated":
        _write_bytes(path, good.read_bytes()[: good.stat().st_size // 2])
    elif case == "foreign":
        torch.save({"weights": torch.zeros(2)}, path)
    elif case == "pickled":
        torch.save({"format": FORMAT, "args": argparse.Namespace(lr=1)}, path)
    else:
        torch.save({"format": "agcn_pyg/99"}, path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")


def test_one_loader_for_checkpoints_and_pretrained_folders(tmp_path):
    spec, parts = _parts()
    _step(parts)
    last = training_checkpoint(spec, parts, TrainState(epoch=1), [], {})
    model, names, data_config = load_model(last, use_ema=False)
    folder = tmp_path / "shared"
    model.save_pretrained(folder)
    again, names_again, config_again = load_model(folder)
    assert names_again == names == list("abcd") and config_again == data_config
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), parts.model.eval()(x))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_model(tmp_path / "empty")


def test_checkpoint_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint({"epoch": 1}, tmp_path / "last.pth")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "last.pth").st_mode & 0o777) == 0o644
