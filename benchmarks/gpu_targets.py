"""The project's GPU targets, checked against the CSVs a ``gpu_suite.py`` run wrote.

Each target is a ratio or a percentage measured in ONE run (the same process times our layer and
PyG's), so it does not depend on which card ran it. The bars are issue #21's (issue #13's, made
stricter for the Triton kernels):

* dense ``AdaptiveGCNConv`` forward+backward <= 1.0x ``DenseGATConv`` at N = 80, 500, 2000,
  10 000 (complete graph, 1024 -> 2048), fp32 and bf16;
* the complete-graph path with a sparse A <= 0.2x ``DenseGATConv`` at N = 10 000, and
  N = 10^6 (256 -> 256) within 0.5 s and 10 GiB (the ``scale`` sweep);
* the ``edge_index`` path <= 1.0x ``GATConv`` (heads=1) at 10^4 and 10^5 nodes, fp32 and bf16;
* the ML-AGCN head <= 2 % of a training step and <= 0.5 % of inference against the linear head;
* the kernels: each path's Triton kernels equal to its PyTorch path (``kernel_checks.py``), no
  host sync in a repeated training step, and no slower than the PyTorch path
  (``layers-fp32`` against ``layers-fp32-torch``);
* for information: the dense path's fused ``[N, N]`` kernel against its sorted B
  (``layers-crossover``), the GPU crossover behind ``sorted_min_nodes``.

A missing CSV or row gives ``n/a`` (the step did not run or was cut off), never a PASS.
"""

from __future__ import annotations

import csv
from pathlib import Path

DENSE_BARS = {80: 1.0, 500: 1.0, 2000: 1.0, 10_000: 1.0}
EDGE_BAR = 1.0
SCALE_BAR, SCALE_N, HUGE_N, HUGE_GIB, HUGE_S = 0.2, 10_000, 1_000_000, 10.0, 0.5
BACKEND_BAR = 1.0  # Triton kernels / PyTorch path
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
    rows = []
    for run in ("layers-fp32", "layers-bf16"):
        data = read_rows(out / run / "layers.csv")
        if not data and run != "layers-fp32":
            continue
        ns = sorted({int(r["n"]) for r in data if r["graph"] == "sparse"})
        case = "sparse" if run == "layers-fp32" else f"{run}, sparse"
        rows += [_row("edge_index vs GATConv, fwd+bwd", f"{case} N={n}",
                      _ratio(_ms(data, "agcn_edge", "sparse", "sparse", n),
                             _ms(data, "gat", "sparse", "sparse", n)), EDGE_BAR) for n in ns]
    return rows


def scale_targets(out: Path) -> list[dict]:
    runs = {run: read_rows(out / run / "layers.csv")
            for run in ("layers-scale-bar", "layers-scale", "layers-scale-graphs")}
    rows = []
    for run, layer in (("layers-scale-bar", "agcn_complete"), ("layers-scale", "agcn_complete"),
                       ("layers-scale-graphs", "agcn_complete_compile"),
                       ("layers-scale-graphs", "agcn_complete_cudagraph")):
        data = runs[run]
        if data or run == "layers-scale":
            ratio = _ratio(_ms(data, layer, "scale", "scale", SCALE_N),
                           _ms(data, "dense_gat", "scale", "scale", SCALE_N))
            rows.append(_row("complete path (sparse A) vs DenseGATConv",
                             f"{run}, {layer}, N={SCALE_N}", ratio, SCALE_BAR))
    huge = next((r for run in ("layers-scale-bar", "layers-scale") for r in runs[run]
                 if r["layer"] == "agcn_complete" and int(r["n"]) == HUGE_N
                 and r["status"] == "ok" and r["fwd_bwd_mem_mib"]), None)  # fmt: skip
    gib = float(huge["fwd_bwd_mem_mib"]) / 1024 if huge else None
    rows.append(_row("complete path (sparse A) peak memory", f"N={HUGE_N}", gib, HUGE_GIB,
                     " GiB"))
    if huge is not None and huge.get("fwd_bwd_ms"):
        rows.append(_row("complete path (sparse A) time", f"N={HUGE_N}",
                         float(huge["fwd_bwd_ms"]) / 1e3, HUGE_S, " s"))
    return rows


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


def kernel_targets(out: Path) -> list[dict]:
    """kernel_checks.py's rows, the worst of each path and dtype; then Triton against the
    PyTorch path in time; then the dense path's crossover (information, no bar)."""
    rows, worst = [], {}
    for r in read_rows(out / "kernels" / "kernels.csv"):
        if r["check"].startswith("no host sync"):
            rows.append(dict(target="no host sync, repeated step", case=r["path"],
                             value=r["value"], bar=r["bar"], result=r["result"]))
            continue
        key = (r["check"], r["path"], r["dtype"])
        if key not in worst or float(r["value"]) > float(worst[key]["value"]):
            worst[key] = r
    for (check, path, dtype), r in worst.items():
        rows.append(dict(target=f"kernels: {check}, worst of output and gradients",
                         case=f"{path} {dtype} N={r['n']}", value=r["value"], bar=r["bar"],
                         result=r["result"]))  # fmt: skip
    triton, torch_ = (read_rows(out / run / "layers.csv")
                      for run in ("layers-fp32", "layers-fp32-torch"))
    if torch_:
        for layer, graph, shape in (("agcn_dense", "complete", "hidden"),
                                    ("agcn_edge", "sparse", "sparse")):
            for n in sorted({int(r["n"]) for r in torch_ if r["layer"] == layer
                             and r["graph"] == graph and r["shape"] == shape}):
                rows.append(_row("Triton kernels / PyTorch path, fwd+bwd", f"{layer} N={n}",
                                 _ratio(_ms(triton, layer, graph, shape, n),
                                        _ms(torch_, layer, graph, shape, n)), BACKEND_BAR))
    cross = read_rows(out / "layers-crossover" / "layers.csv")
    for n in sorted({int(r["n"]) for r in cross}):
        ratio = _ratio(_ms(cross, "agcn_dense_softmax", "complete", "hidden", n),
                       _ms(cross, "agcn_dense_sorted", "complete", "hidden", n))
        rows.append(dict(target="dense path: fused [N, N] kernel / sorted B (crossover)",
                         case=f"N={n}", value="n/a" if ratio is None else f"{ratio:.3g}x",
                         bar="(information)", result="info"))
    return rows


def check_targets(out: Path) -> list[dict]:
    """Every target row for the results folder ``out`` of a ``gpu_suite.py`` run."""
    return [*kernel_targets(out), *dense_targets(out), *scale_targets(out), *edge_targets(out),
            *head_targets(out)]
