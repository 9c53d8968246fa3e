"""benchmarks/gpu_suite.py: the GPU plan's command lines parse, the targets are computed right,
and the suite runs end to end on the CPU (``--quick``)."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


gpu_suite = _load("gpu_suite")
gpu_targets = _load("gpu_targets")


def test_gpu_plan_command_lines_parse(capsys):
    # The real (CUDA) plan, checked against each script's own parser: a renamed flag fails here.
    assert gpu_suite.main(["--dry-run"]) == 0, capsys.readouterr().out


def test_check_arguments_reports_an_unknown_flag():
    step = gpu_suite.Step("bad", [sys.executable, "benchmarks/layers.py", "--no-such-flag"], 1)
    assert gpu_suite.check_arguments(step).startswith("error")


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_targets_from_csvs(tmp_path):
    def layer(name, graph, shape, n, ms, status="ok"):
        return dict(layer=name, graph=graph, shape=shape, n=n, fwd_bwd_ms=ms, status=status,
                    fwd_bwd_mem_mib="")

    _write(tmp_path / "layers-fp32" / "layers.csv", [
        layer("agcn_dense", "complete", "hidden", 80, 1.0),   # 1.0 / 1.0 <= 1.0: PASS
        layer("dense_gat", "complete", "hidden", 80, 1.0),
        layer("agcn_dense", "complete", "hidden", 500, 2.2),  # 1.1 > 1.0: MISS
        layer("dense_gat", "complete", "hidden", 500, 2.0),
        layer("agcn_dense", "complete", "hidden", 2000, ""),  # OOM: n/a, never PASS
        layer("dense_gat", "complete", "hidden", 2000, 5.0),
        layer("agcn_edge", "sparse", "sparse", 10000, 2.0),   # 1.0: PASS (bar inclusive)
        layer("agcn_edge", "sparse", "sparse", 100000, 2.1),  # 1.05 > 1.0: MISS
        layer("gat", "sparse", "sparse", 100000, 2.0),
        layer("gat", "sparse", "sparse", 10000, 2.0),
    ])
    _write(tmp_path / "model" / "model.csv", [
        dict(mode="train", head="linear", layers=0, compiled="False", status="ok",
             time_overhead_pct=0, model="m", img_size=448, batch_size=64, dtype="bf16"),
        dict(mode="train", head="ml-agcn-1", layers=1, compiled="False", status="ok",
             time_overhead_pct=2.5, model="m", img_size=448, batch_size=64, dtype="bf16"),
        dict(mode="infer", head="ml-agcn-1", layers=1, compiled="True", status="ok",
             time_overhead_pct=0.1, model="m", img_size=448, batch_size=64, dtype="bf16"),
    ])
    got = {(r["target"].split(",")[0], r["case"]): r["result"]
           for r in gpu_targets.check_targets(tmp_path)}
    assert got[("dense vs DenseGATConv", "layers-fp32, N=80")] == "PASS"
    assert got[("dense vs DenseGATConv", "layers-fp32, N=500")] == "MISS"
    assert got[("dense vs DenseGATConv", "layers-fp32, N=2000")] == "n/a"
    assert got[("dense vs DenseGATConv", "layers-fp32, N=10000")] == "n/a"
    assert got[("edge_index vs GATConv", "sparse N=10000")] == "PASS"
    assert got[("edge_index vs GATConv", "sparse N=100000")] == "MISS"
    assert got[("head overhead", "model: 1 layer(s), m 448 b64 bf16")] == "MISS"
    assert got[("head overhead", "model: 1 layer(s) compiled, m 448 b64 bf16")] == "PASS"
    assert got[("complete path (sparse A) vs DenseGATConv",
                "layers-scale, agcn_complete, N=10000")] == "n/a"


@pytest.mark.slow
def test_quick_suite_end_to_end(tmp_path):
    out, archive = tmp_path / "suite", tmp_path / "suite.tar.gz"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--quick", "--parts", "tests,train",
         "--out", str(out), "--scratch", str(tmp_path / "scratch"), "--archive", str(archive)],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["ok"] * 6, summary["steps"]
    assert (out / "train" / "ddp" / "log.jsonl").exists()
    assert len(json.loads((out / "train" / "predict.json").read_text())) == 8  # demo-val images
    with tarfile.open(archive) as tar:
        assert f"{out.name}/summary.md" in tar.getnames()


def test_scale_targets_from_csv(tmp_path):
    row = lambda name, n, ms, mib="": dict(layer=name, graph="scale", shape="scale", n=n,  # noqa: E731
                                           fwd_bwd_ms=ms, status="ok", fwd_bwd_mem_mib=mib)
    _write(tmp_path / "layers-scale" / "layers.csv", [
        row("agcn_complete", 10000, 1.0), row("dense_gat", 10000, 10.0),  # 0.1 <= 0.2: PASS
        row("agcn_complete", 1000000, 50.0, 12 * 1024),                   # 12 GiB > 10: MISS
    ])
    _write(tmp_path / "layers-scale-graphs" / "layers.csv", [
        row("agcn_complete_compile", 10000, 3.0), row("dense_gat", 10000, 10.0),  # 0.3: MISS
    ])                                                   # no CUDA-graph row (cut off): n/a
    got = {(r["target"], r["case"]): r["result"] for r in gpu_targets.scale_targets(tmp_path)}
    speed, memory, time = ("complete path (sparse A) " + t for t in
                           ("vs DenseGATConv", "peak memory", "time"))
    assert got == {(speed, "layers-scale, agcn_complete, N=10000"): "PASS",
                   (speed, "layers-scale-graphs, agcn_complete_compile, N=10000"): "MISS",
                   (speed, "layers-scale-graphs, agcn_complete_cudagraph, N=10000"): "n/a",
                   (memory, "N=1000000"): "MISS",
                   (time, "N=1000000"): "PASS"}  # 50 ms <= 0.5 s


def test_kernel_targets_from_csvs(tmp_path):
    rows = [dict(check="triton vs torch", path="dense", dtype="fp32", n=500, quantity=q,
                 value=v, bar="<= 0.0001", result="PASS" if float(v) <= 1e-4 else "FAIL")
            for q, v in (("output", "1e-7"), ("grad x", "3e-4"))]
    rows.append(dict(check="no host sync (sync_debug_mode error)", path="head", dtype="fp32",
                     n="", quantity="step", value="no sync", bar="no sync", result="PASS"))
    _write(tmp_path / "kernels" / "kernels.csv", rows)
    layer = lambda name, n, ms: dict(layer=name, graph="complete", shape="hidden", n=n,  # noqa: E731
                                     fwd_bwd_ms=ms, status="ok", fwd_bwd_mem_mib="")
    _write(tmp_path / "layers-fp32" / "layers.csv", [layer("agcn_dense", 80, 0.5)])
    _write(tmp_path / "layers-fp32-torch" / "layers.csv", [layer("agcn_dense", 80, 1.0)])
    _write(tmp_path / "layers-crossover" / "layers.csv",
           [layer("agcn_dense_softmax", 2000, 3.0), layer("agcn_dense_sorted", 2000, 2.0)])
    got = {(r["target"].split(",")[0], r["case"]): (r["value"], r["result"])
           for r in gpu_targets.kernel_targets(tmp_path)}
    assert got[("kernels: triton vs torch", "dense fp32 N=500")] == ("3e-4", "FAIL")  # worst
    assert got[("no host sync", "head")] == ("no sync", "PASS")
    assert got[("Triton kernels / PyTorch path", "agcn_dense N=80")] == ("0.5x", "PASS")
    assert got[("dense path: fused [N", "N=2000")] == ("1.5x", "info")
