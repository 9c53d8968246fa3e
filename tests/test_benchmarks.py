"""Smoke tests of the benchmark scripts: they run end to end and write every output file.

No timing is asserted; the numbers depend on the machine.
"""

import csv
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(script: str, *args: str) -> None:
    """Runs ``benchmarks/<script>`` in a fresh process; it must exit 0."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

# ---------------------------------------------------------------------------------------
# benchmarks/layers.py
# ---------------------------------------------------------------------------------------

LAYERS = {
    "agcn_dense",
    "agcn_dense_softmax",
    "agcn_dense_sorted",
    "agcn_dense_cached",
    "agcn_edge",
    "gcn",
    "gat",
    "dense_gcn",
    "dense_gat",
}  # fmt: skip  (agcn_dense_compile is off in --quick)


@pytest.mark.slow
def test_layers_quick(tmp_path):
    out = tmp_path / "layers"
    run_script("layers.py", "--quick", "--out", str(out))

    with open(out / "layers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["layer"] for r in rows} == LAYERS
    for r in rows:
        # Tiny cases all fit: an error or a skip here is a bug, not a result.
        assert r["status"] == "ok", r
        assert float(r["fwd_ms"]) > 0 and float(r["fwd_bwd_ms"]) > 0
        assert float(r["fwd_bwd_mem_mib"]) > 0
    shapes = {(r["shape"], r["layer"]) for r in rows}
    for layer in LAYERS:  # every layer on the complete graph, hidden and first-layer shapes
        assert ("hidden", layer) in shapes and ("first", layer) in shapes
    assert {layer for shape, layer in shapes if shape == "sparse"} == {"agcn_edge", "gcn", "gat"}
    for r in rows:  # ratios against the reference layer of the same case
        if r["layer"] in ("dense_gcn", "gcn") and r["ref"] == r["layer"]:
            assert float(r["fwd_x"]) == pytest.approx(1.0)

    md = (out / "layers.md").read_text()
    assert "| N | layer |" in md and "DenseGATConv" in md
    assert (out / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    env = json.loads((out / "env.json").read_text())
    for key in ("cpu_model", "cpu_count", "gpu_name", "torch", "torch_geometric", "timm"):
        assert key in env


@pytest.mark.slow
def test_layers_quick_scale(tmp_path):
    """The scale shape: the complete path with a sparse A against the O(N^2) layers."""
    out = tmp_path / "scale"
    run_script("layers.py", "--quick", "--shapes", "scale", "--out", str(out))
    with open(out / "layers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    want = {"agcn_complete", "agcn_dense", "dense_gat", "dense_gcn", "gat", "gcn"}
    assert {r["layer"] for r in rows} == want
    assert {r["shape"] for r in rows} == {"scale"}
    for r in rows:
        assert r["status"] == "ok", r
        assert float(r["fwd_bwd_ms"]) > 0 and float(r["fwd_bwd_mem_mib"]) > 0
    assert "Complete label graph, sparse A" in (out / "layers.md").read_text()
    assert (out / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_layers_skips_by_estimate(tmp_path, monkeypatch):
    """A case estimated above the memory budget is recorded as skipped, not run."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    layers = importlib.import_module("layers")
    args = ["--quick", "--shapes", "hidden", "--sizes", "48", "--layers", "gcn,dense_gcn"]
    threads = torch.get_num_threads()  # --quick sets one thread
    try:
        out = layers.main([*args, "--max-mem-gib", "0.0001", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    with open(out / "layers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["layer"], r["n"]) for r in rows] == [("gcn", "48"), ("dense_gcn", "48")]
    assert all(r["status"].startswith("skipped (est. ") for r in rows)
    assert (out / "layers.md").exists() and (out / "layers.png").exists()


def test_default_out_dir_never_reuses_a_folder(tmp_path, monkeypatch):
    """Runs without --out get a new folder: committed results are never overwritten."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    common = importlib.import_module("common")
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    first = common.default_out_dir(torch.device("cpu"), "-x")
    first.mkdir()
    second = common.default_out_dir(torch.device("cpu"), "-x")
    second.mkdir()
    third = common.default_out_dir(torch.device("cpu"), "-x")
    assert (second.name, third.name) == (first.name + "-2", first.name + "-3")


# ---------------------------------------------------------------------------------------
# benchmarks/model.py (tests go here)
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_complete_bar_quick(tmp_path):
    """complete_bar.py --quick measures every target of issue 9's bar (no verdicts at these
    sizes); the float64 comparison with the dense path is within the bar at any size."""
    run_script("complete_bar.py", "--quick", "--out", str(tmp_path))
    lines = (tmp_path / "bar.md").read_text().splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line[:2] == "| "]
    rows = rows[1:]  # the header
    assert len(rows) == 11, rows
    verdicts = {row[3] for row in rows}
    assert verdicts == {"n/a (--quick)", "(for reference)"}
    exact = next(row for row in rows if row[0].startswith("exact"))
    assert float(exact[1]) <= 1e-9
    for sub in ("n2000", "n5000"):
        with open(tmp_path / sub / "layers.csv", newline="") as f:
            assert all(r["status"] == "ok" for r in csv.DictReader(f))
