"""Fault injection (issue 12): damaged files for every tool, a disk that fills, odd images
and annotations, bad inputs to the layer and head, kill -9 during training.

Each test checks what the user sees (exit status, one clear line, no traceback) and what is
left on disk (the previous files intact, no temporary files)."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import make_checkpoint

from agcn_pyg import AdaptiveGCNConv, CocoMultiLabel, ListFileMultiLabel, MultiLabelHead
from agcn_pyg.data.datasets import read_rgb
from agcn_pyg.data.label_graph import label_graph_from_coco
from agcn_pyg.tools.predict import predict
from agcn_pyg.train.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"faults_{name}", ROOT / "examples" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


predict_py, plot_graph_py, export_py, coco_train_py = (
    _script(n) for n in ("predict.py", "plot_graph.py", "export.py", "coco_train.py"))


def assert_one_error_line(err: str, *fragments: str) -> str:
    """stderr holds exactly one line, ``<prog>: error: ...`` naming every fragment."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert re.match(r"^\S+: error: \S", lines[0]), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def temp_files(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob(".tmp-*"))


def snapshot(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture(scope="module")
def damaged(ckpt, tmp_path_factory):
    """Checkpoints as a crash, a copy or a wrong argument leave them."""
    root = tmp_path_factory.mktemp("damaged")
    data = Path(ckpt).read_bytes()
    files = {"empty": b"", "truncated": data[: len(data) // 2], "text": b"epoch 3 mAP 71.2\n"}
    for name, content in files.items():
        (root / f"{name}.pth").write_bytes(content)
    return root


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "a.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


# --- damaged checkpoints: one line, exit 2, nothing written ---------------------------


@pytest.mark.parametrize("kind", ["empty", "truncated", "text"])
@pytest.mark.parametrize("tool", ["predict", "plot_graph", "export", "evaluate", "resume"])
def test_damaged_checkpoint_is_one_line(tool, kind, damaged, image, tmp_path, capsys):
    bad = str(damaged / f"{kind}.pth")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt2").write_bytes(b"the previous export")
    before = snapshot(out)
    train = ["--output", str(out), "--workers", "0", "--no-progress"]
    argv = {"predict": (predict_py, [bad, str(image), "--json", str(out / "p.json")]),
            "plot_graph": (plot_graph_py, [bad, "--out", str(out)]),
            "export": (export_py, [bad, str(out / "model.pt2")]),
            "evaluate": (coco_train_py, ["--evaluate", bad, *train]),
            "resume": (coco_train_py, ["--resume", bad, *train])}
    module, args = argv[tool]
    assert module.main(args) == 2
    line = assert_one_error_line(capsys.readouterr().err, bad)
    assert {"empty": "empty", "truncated": "truncated", "text": "not a PyTorch"}[kind] in line
    assert snapshot(out) == before


# --- predict checks its arguments before it reads anything ------------------------------


@pytest.mark.parametrize("flags,fragment", [
    (["--threshold", "1.5"], "'threshold'"),
    (["--top-k", "0"], "'top_k'"),
    (["--batch-size", "0"], "'batch_size'"),
    (["--json", "{out}"], "'--json'"),
    (["--csv", "{file}/sub/p.csv"], "'--csv'"),
    (["{out}/missing.jpg"], "missing.jpg"),
])
def test_predict_checks_arguments_up_front(flags, fragment, image, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    flags = [f.format(out=tmp_path, file=tmp_path / "file") for f in flags]
    # The checkpoint does not exist: the error names the argument, so it came first.
    assert predict_py.main([str(tmp_path / "never-read.pth"), str(image), *flags]) == 2
    line = assert_one_error_line(capsys.readouterr().err, fragment)
    assert "never-read" not in line
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_plot_graph_and_export_check_outputs_up_front(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert plot_graph_py.main([str(tmp_path / "never-read.pth"), "--out",
                               str(tmp_path / "file")]) == 2
    assert_one_error_line(capsys.readouterr().err, "'--out'", "is a file")
    assert export_py.main([str(tmp_path / "never-read.pth"), str(tmp_path)]) == 2
    assert_one_error_line(capsys.readouterr().err, "'output'", "is a folder")


# --- a disk that fills: the previous file stays, one line, no temporary file -------------


class _FillingFile:
    """A file whose writes fail with ENOSPC once ``budget`` bytes are written."""

    def __init__(self, f, budget: int):
        self._f, self._budget = f, budget

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if n > self._budget:
            self._f.write(bytes(memoryview(data).cast("B")[: self._budget]))
            self._budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget -= n
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.fixture
def disk_full(monkeypatch):
    """Makes every temporary file of :func:`~agcn_pyg.io.atomic_write` (and only
    those, ending in ``disk_full.suffix``) fail with ENOSPC after ``disk_full.budget``
    bytes."""
    real_fdopen = os.fdopen

    class Control:
        budget = 10**12  # tests lower it
        suffix = ""  # only temporary files ending so, e.g. ".pth"
        hits = 0

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".tmp-") and name.endswith(Control.suffix):
            Control.hits += 1
            return _FillingFile(f, Control.budget)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    return Control


def test_save_checkpoint_on_a_full_disk_keeps_the_old_one(tmp_path, disk_full):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1, "w": torch.zeros(10)}, path)
    disk_full.budget, disk_full.hits = 100, 0
    with pytest.raises((OSError, RuntimeError)):
        save_checkpoint({"epoch": 2, "w": torch.ones(100_000)}, path)
    assert disk_full.hits == 1
    assert load_checkpoint(path)["epoch"] == 1
    assert temp_files(tmp_path) == []


def test_export_on_a_full_disk_or_interrupted_keeps_the_previous_file(
        ckpt, tmp_path, disk_full, monkeypatch, capsys):
    out = tmp_path / "model.pt2"
    out.write_bytes(b"the previous export")
    disk_full.budget = 4096
    assert export_py.main([str(ckpt), str(out)]) == 1
    assert_one_error_line(capsys.readouterr().err, "No space left on device")
    assert disk_full.hits == 1
    assert out.read_bytes() == b"the previous export"
    assert temp_files(tmp_path) == []

    disk_full.budget = 10**12  # room again, but Ctrl-C arrives during the write
    real_write = _FillingFile.write

    def interrupted(self, data):
        real_write(self, bytes(memoryview(data).cast("B")[:100]))
        raise KeyboardInterrupt

    monkeypatch.setattr(_FillingFile, "write", interrupted)
    assert export_py.main([str(ckpt), str(out)]) == 130
    assert out.read_bytes() == b"the previous export"
    assert temp_files(tmp_path) == []


def test_predict_outputs_on_a_full_disk_keep_the_previous_files(
        ckpt, image, tmp_path, disk_full, capsys):
    (tmp_path / "p.json").write_text("previous json")
    disk_full.budget = 10
    rc = predict_py.main([str(ckpt), str(image), "--json", str(tmp_path / "p.json"),
                          "--quiet"])
    assert rc == 1
    assert_one_error_line(capsys.readouterr().err, "No space left on device")
    assert (tmp_path / "p.json").read_text() == "previous json"
    assert temp_files(tmp_path) == []


# --- odd images: 16-bit and float grayscale read by their range ---------------------------


@pytest.fixture(scope="module")
def gray_versions(tmp_path_factory):
    """One grayscale image as 8-bit PNG and as 16-bit PNG/TIFF/PGM and float TIFF."""
    root = tmp_path_factory.mktemp("gray")
    rng = np.random.default_rng(1)
    g8 = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    g16 = g8.astype(np.uint16) * 257  # the 16-bit value of an 8-bit one
    Image.fromarray(g8).save(root / "g8.png")
    Image.fromarray(g16).save(root / "g16.png")  # mode I;16
    Image.frombytes("I;16B", (30, 40), g16.astype(">u2").tobytes()).save(root / "g16b.tif")
    Image.fromarray(g16).save(root / "g16.pgm")  # Pillow reads it back as mode I
    Image.fromarray(g8.astype(np.float32) / 255).save(root / "gf.tif")  # mode F in [0, 1]
    nan = (g8.astype(np.float32) / 255)
    nan[3, 4] = np.nan
    Image.fromarray(nan).save(root / "nan.tif")
    return root, g8


def test_wide_grayscale_reads_as_its_8bit_version(gray_versions):
    root, g8 = gray_versions
    expected = np.repeat(g8[..., None], 3, axis=-1)
    modes = {}
    for name in ("g16.png", "g16b.tif", "g16.pgm", "gf.tif"):
        with Image.open(root / name) as img:
            modes[name] = img.mode
        np.testing.assert_array_equal(np.asarray(read_rgb(root / name)), expected, err_msg=name)
    assert modes == {"g16.png": "I;16", "g16b.tif": "I;16B", "g16.pgm": "I", "gf.tif": "F"}
    with pytest.raises(ValueError, match="NaN"):
        read_rgb(root / "nan.tif")


def test_16bit_png_scores_like_its_8bit_version(ckpt, gray_versions, tmp_path):
    root, g8 = gray_versions
    Image.new("L", (30, 40), 255).save(tmp_path / "white.png")  # what clipping gave
    files = [str(root / n) for n in ("g8.png", "g16.png", "g16.pgm", "gf.tif")]
    with pytest.warns(UserWarning, match="nan.tif"):
        records = predict(ckpt, [*files, str(root / "nan.tif"), str(tmp_path / "white.png")],
                          progress=False)
    probs = [torch.tensor(r["probabilities"]) for r in records[:4]]
    for p in probs[1:]:
        torch.testing.assert_close(p, probs[0], rtol=0, atol=1e-6)
    assert not torch.allclose(torch.tensor(records[5]["probabilities"]), probs[0], atol=1e-3)
    assert "NaN" in records[4]["error"]


def test_datasets_read_16bit_like_8bit(gray_versions, tmp_path):
    root, _ = gray_versions
    (tmp_path / "list.txt").write_text("g8.png 0\ng16.png 0\ng16b.tif 1\n")
    (tmp_path / "names.txt").write_text("a\nb\n")
    data = ListFileMultiLabel(tmp_path / "list.txt", root, tmp_path / "names.txt",
                              transform=lambda img: torch.from_numpy(np.asarray(img).copy()))
    assert torch.equal(data[0][0], data[1][0]) and torch.equal(data[0][0], data[2][0])


# --- annotations: clear errors naming the file and the id; orphans counted ---------------


def _coco(path, annotations, images=3):
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8}
                   for i in range(1, images + 1)],
        "categories": [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}],
        "annotations": [{"id": k, "image_id": i, "category_id": c}
                        for k, (i, c) in enumerate(annotations, start=1)],
    }))
    return path


@pytest.fixture
def images3(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(1, 4):
        Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
    return folder


def test_annotation_file_not_json_names_the_file(images3, tmp_path, capsys):
    bad = tmp_path / "instances.json"
    bad.write_text('{"images": [], oops}')
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        CocoMultiLabel(bad, images3)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        label_graph_from_coco(bad)
    ok = _coco(tmp_path / "val.json", [(1, 1)])
    rc = coco_train_py.main(["--train-ann", str(bad), "--train-images", str(images3),
                             "--val-ann", str(ok), "--val-images", str(images3),
                             "--output", str(tmp_path / "run"), "--workers", "0"])
    assert rc == 2
    assert_one_error_line(capsys.readouterr().err, str(bad), "not a JSON file")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="'images', 'annotations' and 'categories'"):
        CocoMultiLabel(tmp_path / "list.json", images3)


def test_unknown_category_id_names_the_id_and_the_file(images3, tmp_path):
    path = _coco(tmp_path / "instances.json", [(1, 1), (2, 777), (3, 777), (3, 5)])
    with pytest.raises(ValueError, match=r"2 annotation\(s\) in '.*instances\.json' have "
                                         r"category_id 777, .*ids 1, 5\)"):
        CocoMultiLabel(path, images3)
    no_image_id = tmp_path / "broken.json"
    no_image_id.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.png"}],
                                       "categories": [{"id": 1, "name": "cat"}],
                                       "annotations": [{"id": 1, "category_id": 1}]}))
    with pytest.raises(ValueError, match=r"annotations\[0\] in '.*broken\.json'.*'image_id'"):
        CocoMultiLabel(no_image_id, images3)


def test_annotations_of_unknown_images_are_counted_and_ignored(images3, tmp_path):
    anns = [(1, 1), (2, 5), (3, 1), (3, 5), (998, 5), (999, 1), (999, 5)]
    path = _coco(tmp_path / "instances.json", anns)
    with pytest.warns(UserWarning, match=r"3 of 7 annotations in '.*instances\.json' point "
                                         r"to image ids .* ignored: 998, 999"):
        data = CocoMultiLabel(path, images3)
    assert data.image_ids == [1, 2, 3]
    assert data.labels.tolist() == [[True, False], [False, True], [True, True]]
    with pytest.warns(UserWarning, match="3 of 7"):
        graph = label_graph_from_coco(path)
    assert graph.nums.tolist() == [2, 2]  # the orphans' labels are not counted
    assert graph.counts.tolist() == [[2, 1], [1, 2]]


# --- the layer and the head refuse NaN, wrong dtypes and empty label sets ----------------


def test_conv_refuses_non_finite_inputs_and_other_dtypes():
    conv = AdaptiveGCNConv(4, 3)
    x, adj = torch.randn(3, 4), torch.rand(3, 3)
    bad_x = x.clone()
    bad_x[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"'x' must hold finite values \(got 1 NaN"):
        conv(bad_x, adj)
    bad_adj = adj.clone()
    bad_adj[0, 1] = float("inf")
    with pytest.raises(ValueError, match=r"'edge_index' .* 0 NaN and 1 infinite"):
        conv(x, bad_adj)
    edge_index = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="'edge_weight' must hold finite"):
        conv(x, edge_index, torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError, match="'x' is torch.float16 but the weights .*float32"):
        conv(x.half(), adj)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast picks the dtypes itself
        assert conv(x.bfloat16(), adj).shape == (3, 3)
    # No nodes: an empty output, as for an edge_index graph (no amax of an empty row).
    empty = conv(x[:0], adj[:0, :0])
    assert empty.shape == (0, 3)
    assert conv(x[:0], edge_index[:, :0]).shape == (0, 3)


def test_head_refuses_nan_node_features_and_no_labels():
    with pytest.raises(ValueError, match="'node_features' contains NaN"):
        MultiLabelHead(8, 2, torch.eye(2), node_features=torch.tensor([[1.0, float("nan")],
                                                                       [0.0, 1.0]]))
    with pytest.raises(ValueError, match="'num_labels' must be at least 1"):
        MultiLabelHead(8, 0, torch.zeros(0, 0))
    head = MultiLabelHead(8, 2, torch.eye(2), learn_node_features=True)
    with torch.no_grad():
        head.node_features[0, 0] = float("inf")  # diverged while training
    with pytest.raises(ValueError, match="'x' must hold finite values"):
        head(torch.randn(1, 8))


# --- kill -9 at random moments of a tiny training run ------------------------------------


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    from agcn_pyg import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_train=16, num_val=8,
                               num_labels=4, image_size=32, seed=1)


def _train_cmd(d, out, *extra):
    return [sys.executable, str(ROOT / "examples" / "coco_train.py"),
            "--train-ann", d.train_ann_file, "--train-images", d.train_image_dir,
            "--val-ann", d.val_ann_file, "--val-images", d.val_image_dir,
            "--model", "resnet10t", "--img-size", "32", "--batch-size", "8", "--workers", "0",
            "--no-progress", "--amp", "off", "--hidden", "16", "--output", str(out), *extra]


def _train_args(d, out, *extra):
    return [*_train_cmd(d, out, *extra)[2:]]


@pytest.fixture(scope="module")
def one_epoch_run(tiny_coco, tmp_path_factory):
    """A run that did its first epoch of two (the schedule spans two)."""
    out = tmp_path_factory.mktemp("one_epoch") / "run"
    assert coco_train_py.main(_train_args(tiny_coco, out, "--epochs", "1",
                                          "--sched-epochs", "2")) == 0
    return out


@pytest.mark.slow
def test_disk_full_during_training_is_one_line_and_keeps_the_checkpoints(
        one_epoch_run, tmp_path, disk_full, capsys):
    out = tmp_path / "run"
    shutil.copytree(one_epoch_run, out)
    before = snapshot(out)
    capsys.readouterr()
    disk_full.budget, disk_full.suffix = 4096, ".pth"  # the epoch-2 checkpoints fail
    rc = coco_train_py.main(["--resume", "auto", "--output", str(out), "--epochs", "2",
                             "--workers", "0", "--no-progress"])
    assert rc == 1
    assert_one_error_line(capsys.readouterr().err, "No space left on device")
    assert disk_full.hits >= 1
    for name in ("last.pth", "best.pth"):
        assert (out / name).read_bytes() == before[name]
    assert temp_files(out) == []


def _kill_at(cmd, moment: str, delay: float, timeout: float = 240) -> str:
    """Runs ``cmd`` and kill -9s it ``delay`` s after ``moment``: "start", or "rewrite" (a
    checkpoint write beginning, its temporary file in the output folder, while ``last.pth``
    already exists: a kill there must leave the previous file whole). Returns how it
    ended."""
    out = Path(cmd[cmd.index("--output") + 1])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                [str(ROOT), os.environ.get("PYTHONPATH", "")])})
    start, armed = time.monotonic(), moment == "start"
    try:
        while proc.poll() is None and time.monotonic() - start < timeout:
            if not armed and (out / "last.pth").exists() and any(
                    p.name.startswith(".tmp-") and p.name.endswith(".pth")
                    for p in out.iterdir()):
                armed, start = True, time.monotonic()
            if armed and time.monotonic() - start >= delay:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return "killed"
            time.sleep(0.002)
        return f"exited {proc.poll()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_leaves_readable_checkpoints(seed, tiny_coco, tmp_path):
    rng = random.Random(seed)
    out = tmp_path / "run"
    # Seed 0 dies at a random time; seed 1 inside a checkpoint write that replaces or adds
    # to the first epoch's files.
    moment, delay = (("start", rng.uniform(4, 20)) if seed == 0
                     else ("rewrite", rng.uniform(0, 0.1)))
    how = _kill_at(_train_cmd(tiny_coco, out, "--epochs", "2"), moment, delay)
    assert how == "killed" or how == "exited 0", how
    if moment == "rewrite":
        assert how == "killed" and (out / "last.pth").exists()
    for name in ("last.pth", "best.pth"):
        if (out / name).exists():  # whatever is there is a whole checkpoint
            state = load_checkpoint(out / name)
            assert list(state["label_names"]) == list(tiny_coco.label_names)
            assert "model" in state
    if (out / "log.jsonl").exists():
        for line in (out / "log.jsonl").read_text().splitlines():
            json.loads(line)
    if moment == "rewrite":  # resumed, the run ends whole: best.pth repaired, no temp file
        assert temp_files(out), "the kill should have interrupted a write"
        assert coco_train_py.main(["--resume", "auto", "--output", str(out), "--epochs", "2",
                                   "--workers", "0", "--no-progress"]) == 0
        assert temp_files(out) == []
        last = load_checkpoint(out / "last.pth")
        assert last["epoch"] == 2
        assert load_checkpoint(out / "best.pth")["epoch"] == last["best"]["epoch"]


def test_list_file_datasets_name_the_file_that_is_not_json_or_text(images3, tmp_path):
    (tmp_path / "list.txt").write_text("1.png 0\n")
    (tmp_path / "labels.json").write_text("{'1.png': [0]}")  # Python, not JSON
    with pytest.raises(ValueError, match=r"'image_labels_file': '.*labels\.json' is not a "
                                         r"JSON file \(Expecting property name"):
        ListFileMultiLabel(tmp_path / "list.txt", images3,
                           image_labels_file=tmp_path / "labels.json")
    (tmp_path / "names.json").write_text("cat, dog")
    with pytest.raises(ValueError, match=r"'label_names_file': '.*names\.json' is not a JSON"):
        ListFileMultiLabel(tmp_path / "list.txt", images3, tmp_path / "names.json")
    (tmp_path / "names.txt").write_text("cat\n")
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match=r"'list_file': '.*binary\.txt' is not a UTF-8 text"):
        ListFileMultiLabel(tmp_path / "binary.txt", images3, tmp_path / "names.txt")
