"""Smoke test of ``benchmarks/model.py --quick``: it runs end to end and writes every output.

No timing is asserted; the numbers depend on the machine.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "model.py"
HEADS = {"linear", "ml-agcn-1", "ml-agcn-2"}


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_model_quick(tmp_path):
    out = tmp_path / "model"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for name in ("model.csv", "head.csv", "model.md", "env.json"):
        assert (out / name).is_file(), name

    rows = _read_csv(out / "model.csv")
    assert {(r["mode"], r["head"]) for r in rows} == {
        (mode, head) for mode in ("train", "infer") for head in HEADS
    }
    for r in rows:
        assert r["status"] == "ok", r
        assert float(r["images_per_s"]) > 0 and float(r["mem_mib"]) > 0
        assert r["model"] == "resnet10t" and r["batch_size"] == "8"
        if r["head"] == "linear":  # the reference of its own overhead
            assert float(r["vs_linear_pct"]) == 0.0
        else:
            assert r["vs_linear_pct"] != "" and r["pred_overhead_pct"] != ""
        if r["mode"] == "infer" and r["head"] != "linear":
            # The eval cache served every timed batch: no classifiers() call while timing.
            assert r["recomputes"] == "0", r
    params = {r["head"]: int(r["head_params"]) for r in rows if r["mode"] == "train"}
    assert params["linear"] == 512 * 80 + 80  # resnet10t's 512 features, with a bias

    head_rows = _read_csv(out / "head.csv")
    # --head-dims 2048 (the default) and the backbone's 512, for every head.
    assert {(r["head"], r["in_features"]) for r in head_rows} == {
        (head, d) for head in HEADS for d in ("2048", "512")
    }
    for r in head_rows:
        assert float(r["train_ms"]) > 0 and float(r["infer_ms"]) > 0
        assert (r["classifiers_fwd_bwd_ms"] == "") == (r["head"] == "linear")

    md = (out / "model.md").read_text()
    assert "| mode | head |" in md and "The head alone" in md
    env = json.loads((out / "env.json").read_text())
    assert env["command"].startswith("python benchmarks/model.py --quick")
