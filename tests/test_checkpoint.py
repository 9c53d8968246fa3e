"""Atomic checkpoints and rebuilding a model from one."""

import os

import pytest
import torch

from agcn_pyg import create_model
from agcn_pyg.checkpoint import (
    load_checkpoint,
    model_config,
    model_from_checkpoint,
    save_checkpoint,
)


def test_model_round_trip_needs_only_the_checkpoint(tmp_path):
    n = 4
    adj, feats = torch.rand(n, n), torch.randn(n, 6)
    model = create_model("resnet18", n, adj, num_layers=2, node_features=feats,
                         head_kwargs={"similarity": False}).eval()
    path = tmp_path / "ckpt.pth"
    save_checkpoint(dict(
        config=model_config("resnet18", n, 2, head_kwargs={"similarity": False}),
        adj=adj, node_features=feats, label_names=list("abcd"),
        model=model.state_dict(), ema=None,
    ), path)
    rebuilt, state = model_from_checkpoint(path)
    assert state["label_names"] == list("abcd")
    assert not rebuilt.head.convs[0].similarity
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


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


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an agcn_pyg checkpoint"):
        load_checkpoint(tmp_path / "other.pth")


def test_checkpoint_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint({"epoch": 1}, tmp_path / "last.pth")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "last.pth").st_mode & 0o777) == 0o644
