"""Batched prediction over folders, with unreadable files (agcn_pyg.tools.predict)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import DATA_CONFIG, NAMES, make_checkpoint

from agcn_pyg import build_transforms
from agcn_pyg.tools.predict import find_images, predict, write_csv, write_json
from agcn_pyg.train.checkpoint import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", ema=True)


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
        with pytest.raises(ValueError, match="CUDA"):
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
    assert "torch.jit.script" not in result.stderr  # PyG's FutureWarning, hidden by the tool
    assert "broken.jpg" in result.stderr and "warning" in result.stderr
    assert "5 images predicted, 1 unreadable" in result.stderr
    lines = [line for line in result.stdout.splitlines() if "\t" in line]
    assert len(lines) == 6 and "ERROR" in next(x for x in lines if "broken.jpg" in x)
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["label_names"] == NAMES
    assert all(len(d["labels"]) == 3 for d in data["predictions"] if not d["error"])
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 7
