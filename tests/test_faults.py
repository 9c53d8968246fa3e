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


# === Issue 24: one run per folder, resume that checks its data, odd files =================


def _demo_args(out, *extra):
    return ["--output", str(out), "--epochs", "1", "--demo-train", "16", "--demo-val", "8",
            "--demo-labels", "4", "--img-size", "32", "--batch-size", "8", "--workers", "0",
            "--no-progress", "--hidden", "16", *extra]


def _ready(read_fd) -> list[int]:
    """The pids a forked helper writes once it holds what it should."""
    with os.fdopen(read_fd) as pipe:
        return [int(p) for p in pipe.readline().split()]


def test_a_second_run_on_a_folder_in_use_is_refused_before_touching_it(tmp_path, capsys):
    from agcn_pyg.train import RunFolder

    out = tmp_path / "run"
    first = RunFolder(out)
    first.lock()  # a run in progress (this process holds it)
    (out / "data").mkdir()
    (out / "data" / "demo.json").write_text("{}")  # the first run's demo data
    before = snapshot(out)
    try:
        assert coco_train_py.main(_demo_args(out)) == 2
        line = assert_one_error_line(capsys.readouterr().err, str(out), "in use by another run",
                                     f"process {os.getpid()}")
        assert "--output" in line
        assert snapshot(out) == before  # demo data, lock file and all: untouched
    finally:
        first.unlock()
    assert not (out / ".lock").exists() and (out / "data" / "demo.json").exists()


def test_the_lock_dies_with_its_process_not_with_its_workers(tmp_path):
    """kill -9 of the run frees the folder at once, even while a forked DataLoader worker of
    it still lives (the worker closes its copy of the lock at fork)."""
    from agcn_pyg.train import RunFolder, RunFolderError

    out = tmp_path / "run"
    read_fd, write_fd = os.pipe()
    run = os.fork()
    if run == 0:  # the "run": takes the folder, forks a "worker", both sleep
        try:
            os.close(read_fd)
            RunFolder(out).lock()
            worker = os.fork()
            if worker == 0:
                time.sleep(60)
                os._exit(0)
            os.write(write_fd, f"{worker}\n".encode())
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(write_fd)
    (worker,) = _ready(read_fd)
    try:
        with pytest.raises(RunFolderError, match=f"in use by another run .process {run} "):
            RunFolder(out).lock()
        os.kill(run, signal.SIGKILL)
        os.waitpid(run, 0)
        os.kill(worker, 0)  # the worker is still alive...
        again = RunFolder(out)
        again.lock()  # ...and the folder is free: no stale lock
        again.unlock()
    finally:
        for pid in (run, worker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_run_that_stops_at_a_bad_flag_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default --output is runs/<timestamp> under the cwd
    assert coco_train_py.main(["--data", str(tmp_path / "nothing"), "--workers", "0"]) == 2
    assert_one_error_line(capsys.readouterr().err, "--data")
    assert sorted(os.listdir(tmp_path)) == []
    out = tmp_path / "new" / "run"
    assert coco_train_py.main(["--data", str(tmp_path / "nothing"), "--output", str(out)]) == 2
    assert sorted(os.listdir(tmp_path)) == []


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A folder that cannot be written: a read-only tmpfs where mounting is allowed (root,
    whom permission bits do not stop), else permission bits; as a last resort (root without
    mount) ``os.access`` says so."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
        capture_output=True).returncode == 0
    if not mounted:
        if os.geteuid() == 0:
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(
                p).startswith(str(folder)) and mode & os.W_OK else real(p, mode, **kw))
        folder.chmod(0o555)
    yield folder
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o755)


@pytest.mark.parametrize("case", ["file", "under_file", "read_only", "evaluate_file"])
def test_output_that_cannot_be_a_folder_is_one_line(case, tmp_path, read_only_dir, capsys):
    (tmp_path / "file").write_text("not a folder")
    out = {"file": tmp_path / "file", "under_file": tmp_path / "file" / "run",
           "read_only": read_only_dir / "run", "evaluate_file": tmp_path / "file"}[case]
    before = snapshot(tmp_path)
    argv = (["--evaluate", str(tmp_path / "never-read.pth"), "--output", str(out)]
            if case == "evaluate_file" else _demo_args(out))
    assert coco_train_py.main(argv) == 2
    line = assert_one_error_line(capsys.readouterr().err, "--output", str(out))
    assert {"read_only": "is not writable"}.get(case, "is a file") in line
    assert "never-read" not in line  # the output was checked first
    assert snapshot(tmp_path) == before


# --- --resume checks the data it continues on ---------------------------------------------


def _changed_coco(d, folder, change: str) -> str:
    """The training annotations of ``d`` with 4 images more (copies), 4 fewer, or the same
    images with other labels (every annotation of the first 4 images moved to the next
    category)."""
    data = json.loads(Path(d.train_ann_file).read_text())
    if change == "larger":
        for k, img in enumerate(data["images"][:4]):
            new_id = 1000 + k
            src = Path(d.train_image_dir) / img["file_name"]
            shutil.copy(src, Path(folder) / f"copy{k}{src.suffix}")
            data["images"].append({**img, "id": new_id, "file_name": f"copy{k}{src.suffix}"})
            data["annotations"] += [{**a, "id": 10_000 + 10 * k + j, "image_id": new_id}
                                    for j, a in enumerate(data["annotations"])
                                    if a["image_id"] == img["id"]]
    elif change == "relabelled":
        cats = sorted(c["id"] for c in data["categories"])
        first = {img["id"] for img in data["images"][:4]}
        for a in data["annotations"]:
            if a["image_id"] in first:
                a["category_id"] = cats[(cats.index(a["category_id"]) + 1) % len(cats)]
    else:
        gone = {img["id"] for img in data["images"][:4]}
        data["images"] = data["images"][4:]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in gone]
    path = Path(folder) / f"{change}.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("change", ["larger", "smaller", "relabelled"])
def test_resume_on_other_training_data_is_refused(change, one_epoch_run, tiny_coco, tmp_path,
                                                  capsys):
    out = tmp_path / "run"
    shutil.copytree(one_epoch_run, out)
    images = tmp_path / "images"
    shutil.copytree(tiny_coco.train_image_dir, images)
    ann = _changed_coco(tiny_coco, images, change)
    recorded = load_checkpoint(out / "last.pth")["data"]
    assert recorded["train_images"] == 16 and recorded["val_images"] == 8
    before = snapshot(out)
    capsys.readouterr()
    argv = _train_args(tiny_coco, out, "--resume", "auto", "--epochs", "2")
    argv[argv.index("--train-ann") + 1] = ann
    argv[argv.index("--train-images") + 1] = str(images)
    assert coco_train_py.main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, "--resume", {
        "larger": "16 training images then, 20 now", "smaller": "16 training images then, 12 now",
        "relabelled": "training labels differ from the checkpoint's (the same 16 images"}[change])
    assert snapshot(out) == before


def test_a_demo_run_resumed_with_data_flags_is_refused(one_epoch_run, tiny_coco, tmp_path,
                                                       capsys):
    out = tmp_path / "run"
    shutil.copytree(one_epoch_run, out)
    state = load_checkpoint(out / "last.pth")
    state["run_config"].update(demo=True, demo_train=16, demo_val=8, demo_labels=4)
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, out / "last.pth")
    before = snapshot(out)
    capsys.readouterr()
    assert coco_train_py.main(_train_args(tiny_coco, out, "--resume", "auto",
                                          "--epochs", "2")) == 2
    assert_one_error_line(capsys.readouterr().err, "demo run", "--train-ann", "--val-images")
    assert snapshot(out) == before  # no demo data made under it


# --- odd files in the data -----------------------------------------------------------------


def _png_header(path, width, height):
    """A PNG that declares ``width`` x ``height`` (what PIL's bomb check reads); no pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_one_unreadable_image(images3, tmp_path):
    _png_header(images3 / "2.png", 20000, 20000)  # 400 M pixels: over PIL's bomb limit
    with pytest.raises(ValueError, match=r"'.*2\.png' is too large to decode"):
        read_rgb(images3 / "2.png")
    data = CocoMultiLabel(_coco(tmp_path / "i.json", [(1, 1), (2, 5), (3, 1)]), images3)
    with pytest.warns(UserWarning, match=r"unreadable image '.*2\.png'.*too large"):
        assert data[1] is None
    assert data[0] is not None and data[2] is not None


def _coco_dict():
    return {"images": [{"id": 1, "file_name": "1.png"}, {"id": 2, "file_name": "2.png"}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1},
                            {"id": 2, "image_id": 2, "category_id": 5}]}


@pytest.mark.parametrize("edit,fragment", [
    (lambda d: d["images"][1].update(file_name=None), r"images\[1\] .* file_name None"),
    (lambda d: d["images"][1].update(file_name=7), r"images\[1\] .* file_name 7"),
    (lambda d: d["images"][0].update(id="1"), r"images\[0\] .* id '1'; expected an integer"),
    (lambda d: d["annotations"][1].pop("id"), r"annotations\[1\] .* 'id'"),
    (lambda d: d["annotations"][0].update(image_id=None), r"annotations\[0\] .* image_id"),
    (lambda d: d["images"][1].update(id=1), r"images\[1\] .* repeats the id 1 of images\[0\]"),
    (lambda d: d["categories"][1].update(name="cat"),
     r"categories\[1\] .* repeats the name 'cat' of categories\[0\]"),
    (lambda d: d["categories"][1].update(id=1), r"categories\[1\] .* repeats the id 1"),
    (lambda d: d["categories"][0].update(name=None), r"categories\[0\] .* name None"),
])
def test_malformed_coco_json_names_the_file_and_the_entry(edit, fragment, images3, tmp_path):
    data = _coco_dict()
    edit(data)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=fragment):
        CocoMultiLabel(path, images3)
    with pytest.raises(ValueError, match=re.escape(f"'{path}'")):
        label_graph_from_coco(path)


def test_malformed_coco_json_in_training_is_one_line(images3, tmp_path, capsys):
    data = _coco_dict()
    data["images"][1]["file_name"] = None
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps(data))
    ok = _coco(tmp_path / "val.json", [(1, 1), (2, 5)])
    rc = coco_train_py.main(["--train-ann", str(bad), "--train-images", str(images3),
                             "--val-ann", str(ok), "--val-images", str(images3),
                             "--output", str(tmp_path / "run"), "--workers", "0"])
    assert rc == 2
    assert_one_error_line(capsys.readouterr().err, str(bad), "images[1]", "file_name None")
    assert not (tmp_path / "run").exists()


# --- predict: odd names and odd entries in folders ------------------------------------------


def test_predict_reports_a_broken_symlink_and_goes_on(ckpt, image, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(image, folder / "a.png")
    (folder / "b.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.warns(UserWarning, match=r"unreadable image '.*b\.jpg'"):
        records = predict(ckpt, folder, progress=False)
    assert [Path(r["path"]).name for r in records] == ["a.png", "b.jpg"]
    assert records[0]["error"] is None and "FileNotFoundError" in records[1]["error"]
    assert predict_py.main([str(ckpt), str(folder), "--quiet"]) == 0
    assert "1 images predicted, 1 unreadable" in capsys.readouterr().err


def test_predict_writes_non_utf8_file_names(ckpt, image, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1, not UTF-8: a lone surrogate in Python
    shutil.copy(image, folder / name)
    out_json, out_csv = tmp_path / "p.json", tmp_path / "p.csv"
    assert predict_py.main([str(ckpt), str(folder), "--json", str(out_json), "--csv",
                            str(out_csv), "--quiet"]) == 0
    out = capsys.readouterr().out
    shown = f"{folder}/caf\\xe9.png"
    assert shown in out
    (record,) = json.loads(out_json.read_text(encoding="utf-8"))
    assert record["path"] == shown and record["error"] is None and record["labels"]
    assert out_csv.read_text(encoding="utf-8").splitlines()[1].startswith(shown + ",")


def test_predict_on_no_image_exits_non_zero(ckpt, tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("no image here")
    assert predict_py.main([str(ckpt), str(folder), "--quiet"]) == 2
    assert_one_error_line(capsys.readouterr().err, "no image file", str(folder))
    # Files named explicitly are read: none is an image.
    assert predict_py.main([str(ckpt), str(folder / "notes.txt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.match(r"^\S+: error: none of the 1 file\(s\) could be read as an image$",
                    err.splitlines()[-1]), err


# --- signals: Ctrl-C during start-up, and once per run ------------------------------------


def test_ctrl_c_during_start_up_is_one_line(tiny_coco, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(coco_train_py.train, "first_readable", interrupted)
    try:
        rc = coco_train_py.main(_train_args(tiny_coco, tmp_path / "run"))
    except KeyboardInterrupt:  # (not re-raised: it would stop the whole test session)
        pytest.fail("KeyboardInterrupt escaped coco_train.main")
    assert rc == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.fullmatch(r"\S+: interrupted", err.strip()), err


def test_ctrl_c_while_the_tool_imports_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "coco_train.py"),
                             "--output", str(tmp_path / "run")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    time.sleep(1.0)  # importing torch and PyG takes seconds
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err and err.strip().endswith("coco_train.py: interrupted"), err
    assert "torch.jit.script" not in err


def test_a_signal_reaches_the_run_once_not_its_forked_workers(capfd):
    from agcn_pyg.train import StopSignal

    with StopSignal() as stop:
        worker = os.fork()
        if worker == 0:  # a DataLoader worker, which a terminal's Ctrl-C reaches too
            os.kill(os.getpid(), signal.SIGINT)
            os._exit(3 if stop.requested else 0)
        _, status = os.waitpid(worker, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # it ignored the signal
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
    assert capfd.readouterr().err.count("Received SIGINT") == 1


# --- plot_graph names the A the model holds and checks --tau --------------------------------


def test_plot_graph_titles_the_recorded_adjacency(ckpt):
    from agcn_pyg.tools.visualize import plot_learned_graphs

    state = load_checkpoint(ckpt)
    titles = {}
    for kind in ("normalized", "cooccurrence"):
        state["config"]["adjacency"] = kind
        fig = plot_learned_graphs(state)
        titles[kind] = fig.axes[0].get_title()
    assert "normalized" in titles["normalized"] and "D P^T D" in titles["normalized"]
    assert "normalized" not in titles["cooccurrence"] and "P(j|i)" in titles["cooccurrence"]


@pytest.mark.parametrize("tau", ["nan", "-0.1", "1.5"])
def test_plot_graph_refuses_a_tau_that_is_not_a_probability(tau, ckpt, tmp_path, capsys):
    assert plot_graph_py.main([str(ckpt), "--tau", tau, "--out", str(tmp_path / "g")]) == 2
    assert_one_error_line(capsys.readouterr().err, "'--tau'", tau)
    assert not (tmp_path / "g").exists()
