"""Batched prediction over folders, with unreadable files (agcn_pyg.predict)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agcn_pyg import build_transforms, create_model
from agcn_pyg.checkpoint import model_config, model_from_checkpoint, save_checkpoint
from agcn_pyg.predict import find_images, predict, write_csv, write_json

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["person", "fork", "knife", "dining table", "cat"]
DATA_CONFIG = {"input_size": (3, 32, 32), "mean": (0.485, 0.456, 0.406),
               "std": (0.229, 0.224, 0.225), "interpolation": "bilinear"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A resnet10t ML-AGCN with 5 labels after a few optimizer steps on random data, with
    EMA weights that differ from the raw ones."""
    torch.manual_seed(0)
    n = len(NAMES)
    adj = torch.rand(n, n)
    adj.fill_diagonal_(1.0)
    model = create_model("resnet10t", n, adj, hidden_channels=[16])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(torch.randn(4, 3, 32, 32)), torch.randint(0, 2, (4, n)).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    ema = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
           for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(dict(
        config=model_config("resnet10t", n, hidden_channels=[16], data_config=DATA_CONFIG),
        adj=adj, node_features=torch.eye(n), label_names=NAMES,
        model=model.state_dict(), ema=ema,
    ), path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Five images of different sizes and modes in nested folders, one corrupt file, one
    file that is not an image by name."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "sub" / "deeper").mkdir(parents=True)
    for name, size, mode in [("a.jpg", (40, 30), "RGB"), ("b.PNG", (32, 32), "RGBA"),
                             ("sub/c.png", (50, 64), "L"), ("sub/deeper/d.jpeg", (33, 47), "RGB"),
                             ("sub/e.webp", (20, 20), "RGB")]:
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(root / name)
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def _direct_probabilities(ckpt, paths, use_ema=True):
    model, _ = model_from_checkpoint(ckpt, use_ema=use_ema)
    transform = build_transforms(DATA_CONFIG, img_size=32, train=False)
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return torch.sigmoid(model(images))


def test_find_images_recursive_sorted(folder):
    files = find_images(folder)
    rel = [Path(f).relative_to(folder).as_posix() for f in files]
    assert rel == ["a.jpg", "b.PNG", "sub/broken.jpg", "sub/c.png", "sub/deeper/d.jpeg",
                   "sub/e.webp"]
    assert find_images([folder / "notes.txt"]) == [str(folder / "notes.txt")]
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        find_images(folder / "missing.jpg")


def test_predict_folder_with_a_corrupt_file(ckpt, folder):
    with pytest.warns(UserWarning, match="broken.jpg"):
        records = predict(ckpt, folder, batch_size=4, progress=False)
    assert len(records) == 6
    bad = [r for r in records if r["error"] is not None]
    assert [Path(r["path"]).name for r in bad] == ["broken.jpg"]
    assert bad[0]["labels"] == [] and bad[0]["probabilities"] is None

    good = [r for r in records if r["error"] is None]
    expected = _direct_probabilities(ckpt, [r["path"] for r in good])
    got = torch.tensor([r["probabilities"] for r in good])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for r, p in zip(good, expected, strict=True):
        order = p.argsort(descending=True).tolist()
        above = [NAMES[j] for j in order if p[j] >= 0.5]
        assert r["labels"] == (above or [NAMES[j] for j in order[:5]])
        assert r["scores"] == pytest.approx([float(p[NAMES.index(n)]) for n in r["labels"]])


def test_threshold_top_k_and_ema(ckpt, folder):
    files = [folder / "a.jpg", folder / "sub" / "c.png"]
    raw = predict(ckpt, files, top_k=2, use_ema=False, progress=False)
    expected = _direct_probabilities(ckpt, files, use_ema=False)
    for r, p in zip(raw, expected, strict=True):
        assert r["labels"] == [NAMES[j] for j in p.argsort(descending=True)[:2].tolist()]
    ema = predict(ckpt, files, threshold=0.0, progress=False)
    assert len(ema[0]["labels"]) == len(NAMES)  # every label passes a zero threshold
    assert not torch.allclose(torch.tensor(ema[0]["probabilities"]),
                              torch.tensor(raw[0]["probabilities"]))
    with pytest.raises(ValueError, match="'threshold'"):
        predict(ckpt, files, threshold=1.5)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            predict(ckpt, files, device="cuda")


def test_write_json_and_csv(ckpt, folder, tmp_path):
    with pytest.warns(UserWarning):
        records = predict(ckpt, folder, progress=False)
    write_json(records, tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert [d["path"] for d in data] == [r["path"] for r in records]
    assert "probabilities" not in data[0]
    assert [Path(d["path"]).name for d in data if d["error"]] == ["broken.jpg"]

    write_csv(records, tmp_path / "p.csv")
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["path"] for row in rows] == [r["path"] for r in records]
    assert rows[0]["labels"].split(";") == records[0]["labels"]
    assert [float(s) for s in rows[0]["scores"].split(";")] == pytest.approx(
        records[0]["scores"], abs=1e-6)
    assert [Path(row["path"]).name for row in rows if row["error"]] == ["broken.jpg"]


@pytest.mark.slow
def test_predict_script(ckpt, folder, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "predict.py"), str(ckpt), str(folder),
         "--batch-size", "2", "--top-k", "3", "--json", str(tmp_path / "p.json"),
         "--all-scores", "--csv", str(tmp_path / "p.csv")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "broken.jpg" in result.stderr and "warning" in result.stderr
    assert "5 images predicted, 1 unreadable" in result.stderr
    lines = [line for line in result.stdout.splitlines() if "\t" in line]
    assert len(lines) == 6 and "ERROR" in next(x for x in lines if "broken.jpg" in x)
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["label_names"] == NAMES
    assert all(len(d["labels"]) == 3 for d in data["predictions"] if not d["error"])
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 7
