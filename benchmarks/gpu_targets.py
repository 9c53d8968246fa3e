"""The project's GPU targets, checked against the CSVs a ``gpu_suite.py`` run wrote.

Each target is a ratio or a percentage measured in ONE run (the same process times our layer and
PyG's), so it does not depend on which card ran it. The bars are issue #13's:

* dense ``AdaptiveGCNConv`` forward+backward <= 1.0x ``DenseGATConv`` at N = 500, 2000, 10 000
  and <= 1.25x at N = 80 (complete graph, 1024 -> 2048);
* the complete-graph path with a sparse A <= 0.2x ``DenseGATConv`` at N = 10 000, and
  N = 10^6 within 10 GiB (the ``scale`` sweep; also compiled and as CUDA graphs at N = 10 000);
* the ``edge_index`` path <= 1.3x ``GATConv`` (heads=1) on the sparse graphs;
* the ML-AGCN head <= 2 % of a training step and <= 0.5 % of inference against the linear head.

A missing CSV or row gives ``n/a`` (the step did not run or was cut off), never a PASS.
"""

from __future__ import annotations

import csv
from pathlib import Path

DENSE_BARS = {80: 1.25, 500: 1.0, 2000: 1.0, 10_000: 1.0}
EDGE_BAR = 1.3
SCALE_BAR, SCALE_N, HUGE_N, HUGE_GIB = 0.2, 10_000, 1_000_000, 10.0
HEAD_BARS = {"train": 2.0, "infer": 0.5}


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _ms(rows: list[dict], layer: str, graph: str, shape: str, n: int) -> float | None:
    for r in rows:
        if (r["layer"], r["graph"], r["shape"], int(r["n"])) == (layer, graph, shape, n):
            return float(r["fwd_bwd_ms"]) if r["status"] == "ok" and r["fwd_bwd_ms"] else None
    return None


def _row(target: str, case: str, value: float | None, bar: float, unit: str = "x") -> dict:
    if value is None:
        return dict(target=target, case=case, value="n/a", bar=f"<= {bar:g}{unit}", result="n/a")
    result = "PASS" if value <= bar else "MISS"
    return dict(target=target, case=case, value=f"{value:.3g}{unit}", bar=f"<= {bar:g}{unit}",
                result=result)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def dense_targets(out: Path) -> list[dict]:
    rows = []
    for run, layer in (("layers-fp32", "agcn_dense"), ("layers-tf32", "agcn_dense"),
                       ("layers-bf16", "agcn_dense"), ("layers-compile", "agcn_dense_compile"),
                       ("layers-cudagraphs", "agcn_dense_cudagraph")):
        data = read_rows(out / run / "layers.csv")
        if not data:
            continue
        for n, bar in DENSE_BARS.items():
            ours = _ms(data, layer, "complete", "hidden", n)
            ref = _ms(data, "dense_gat", "complete", "hidden", n)
            rows.append(_row("dense vs DenseGATConv, fwd+bwd", f"{run}, N={n}",
                             _ratio(ours, ref), bar))
    return rows


def edge_targets(out: Path) -> list[dict]:
    data = read_rows(out / "layers-fp32" / "layers.csv")
    ns = sorted({int(r["n"]) for r in data if r["graph"] == "sparse"})
    return [_row("edge_index vs GATConv, fwd+bwd", f"sparse N={n}",
                 _ratio(_ms(data, "agcn_edge", "sparse", "sparse", n),
                        _ms(data, "gat", "sparse", "sparse", n)), EDGE_BAR) for n in ns]


def scale_targets(out: Path) -> list[dict]:
    runs = {run: read_rows(out / run / "layers.csv")
            for run in ("layers-scale", "layers-scale-graphs")}
    rows = []
    for run, layer in (("layers-scale", "agcn_complete"),
                       ("layers-scale-graphs", "agcn_complete_compile"),
                       ("layers-scale-graphs", "agcn_complete_cudagraph")):
        data = runs[run]
        if data or run == "layers-scale":
            ratio = _ratio(_ms(data, layer, "scale", "scale", SCALE_N),
                           _ms(data, "dense_gat", "scale", "scale", SCALE_N))
            rows.append(_row("complete path (sparse A) vs DenseGATConv",
                             f"{run}, {layer}, N={SCALE_N}", ratio, SCALE_BAR))
    huge = next((r for r in runs["layers-scale"] if r["layer"] == "agcn_complete"
                 and int(r["n"]) == HUGE_N and r["status"] == "ok" and r["fwd_bwd_mem_mib"]), None)
    gib = float(huge["fwd_bwd_mem_mib"]) / 1024 if huge else None
    return [*rows, _row("complete path (sparse A) peak memory", f"N={HUGE_N}", gib, HUGE_GIB,
                        " GiB")]


def head_targets(out: Path) -> list[dict]:
    rows = []
    for run in ("model", "model-cudagraphs"):
        rows += _head_rows(read_rows(out / run / "model.csv"), run)
    return rows or [_row("head overhead", "model.csv missing", None, HEAD_BARS["train"], " %")]


def _head_rows(data: list[dict], run: str) -> list[dict]:
    rows = []
    for r in data:
        if r["head"] == "linear":
            continue
        value = float(r["time_overhead_pct"]) if r["status"] == "ok" else None
        compiled = " compiled" if r["compiled"] == "True" else ""
        rows.append(_row(f"head overhead, {r['mode']}",
                         f"{run}: {r['layers']} layer(s){compiled}, {r['model']} {r['img_size']} "
                         f"b{r['batch_size']} {r['dtype']}", value, HEAD_BARS[r["mode"]], " %"))
    return rows


def check_targets(out: Path) -> list[dict]:
    """Every target row for the results folder ``out`` of a ``gpu_suite.py`` run."""
    return [*dense_targets(out), *scale_targets(out), *edge_targets(out), *head_targets(out)]
