"""torch.export of a trained model with precomputed classifiers (agcn_pyg.tools.export)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import NAMES, make_checkpoint

from agcn_pyg.tools.export import export_model, load_exported
from agcn_pyg.train.checkpoint import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")


def test_exported_matches_eager_for_any_batch(ckpt, tmp_path):
    path = tmp_path / "model.pt2"
    program = export_model(ckpt, (3, 32, 32), path)
    # No graph layer left: the head is one linear map of precomputed classifiers.
    targets = {str(node.target) for node in program.graph.nodes}
    assert not any("softmax" in t or "leaky_relu" in t for t in targets)

    eager, _ = model_from_checkpoint(ckpt)
    loaded = torch.export.load(path).module()
    for batch in (1, 3, 7):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), eager(x), rtol=1e-5, atol=1e-5)

    module, meta = load_exported(path)
    assert meta["label_names"] == NAMES
    assert meta["data_config"]["input_size"] == [3, 32, 32]
    assert meta["outputs"] == "logits"


def test_export_a_model_leaves_it_untouched(ckpt):
    model, _ = model_from_checkpoint(ckpt)
    model.train()
    program = export_model(model, (1, 3, 32, 32))  # no path: nothing saved
    assert model.training and model.head.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="example_input_size"):
        export_model(model, (32, 32))


@pytest.mark.slow
def test_export_script(ckpt, tmp_path):
    out = tmp_path / "m.pt2"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "export.py"), str(ckpt), str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "5 labels" in result.stdout and "(3, 32, 32)" in result.stdout
    x = torch.randn(2, 3, 32, 32)
    eager, _ = model_from_checkpoint(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(out).module()(x), eager(x),
                                   rtol=1e-5, atol=1e-5)
