"""Checks the complete path's bar (issue 9) in one run and writes PASS/MISS for each target.

What it measures, in this order (see ``benchmarks/NOTES.md``, "Label graphs of any size"):

1. **Exactness**: ``AdaptiveGCNConv(complete=True)`` with a sparse A (``edge_index`` +
   ``edge_weight``) against the dense path on the same graph as a dense matrix, float64:
   output and gradients of x and of every parameter, relative to their largest entry.
2. **Speed at N = 10 000**, 256 -> 256, A of degree 16: forward+backward against
   DenseGATConv and DenseGCNConv on the same graph (``layers.py --shapes scale``).
3. **A million labels**, 64 -> 64, A of degree 8: forward+backward time and peak memory
   (``layers.py`` again).
4. **Float32 against float64** for the whole layer at N = 10^5 and 10^6 (64 -> 64, degree 8):
   the same weights and inputs (float32-representable) run in both precisions.

Run from the repository root (the bar is the CPU's, with the machine's threads; on a GPU the
same measurements are checked against the same numbers, for reference)::

    python benchmarks/complete_bar.py --out benchmarks/results/<date>-cpu-2c-complete-bar
    python benchmarks/complete_bar.py --device cuda
    python benchmarks/complete_bar.py --quick          # seconds: small sizes, no verdicts
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import layers  # noqa: E402
from common import finish_results, free_memory, markdown_table, start_results  # noqa: E402

from agcn_pyg import AdaptiveGCNConv  # noqa: E402

GiB = 2**30
# Issue 9's bar on the CPU (the GPU's 10 GiB at N = 10^6 is gpu_targets.py's).
BAR = {"exact": 1e-9, "vs_dense_gat": 0.25, "vs_dense_gcn": 0.5, "big_s": 180.0,
       "big_gib": 8.0, "float32": 1e-5}  # fmt: skip
# The parameters of eq. 4's score a^T [W f_i || W f_j]: their gradients are sums over all N
# targets of terms of both signs, so float32 loses digits there in any implementation.
SCORE_PARAMETERS = ("att_src", "att_dst", "lin_src.weight", "lin_dst.weight")


def graph(n: int, degree: int, seed: int = 0) -> layers.Graph:
    """The scale sweep's A on the CPU: ``sparse_a`` (random edges, weights in (0, 1), no
    self-loops) and ``adj``, the same as a dense matrix with the self-loops (weight 1 =
    fill_value) that the sparse input gets."""
    return layers.Graph(layers.Case("scale", "scale", n, 1, 1), degree, torch.device("cpu"), seed)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def run_layer(conv, x, inputs, grad) -> dict[str, torch.Tensor]:
    """Output and the gradients of x and of every parameter after one forward+backward."""
    x = x.detach().clone().requires_grad_()
    conv.zero_grad(set_to_none=True)
    out = conv(x, *inputs)
    out.backward(grad)
    return {"out": out.detach(), "x": x.grad, **{k: p.grad for k, p in conv.named_parameters()}}


def exactness(n: int, channels: int, degree: int, device: torch.device) -> float:
    """Complete path (sparse A) against the dense path (the same A as a matrix), float64:
    the worst ``max |a - b| / max |b|`` over the output and every gradient."""
    a = graph(n, degree)
    (edge_index, weight), adj = a.sparse_a, a.adj.double()
    weight = weight.double()
    torch.manual_seed(0)
    conv = AdaptiveGCNConv(channels, channels, complete=True).double()
    dense = AdaptiveGCNConv(channels, channels).double()
    dense.load_state_dict(conv.state_dict())
    x = torch.randn(n, channels, dtype=torch.float64)
    grad = torch.randn(n, channels, dtype=torch.float64)
    edge_index, weight, adj, x, grad = (t.to(device) for t in (edge_index, weight, adj, x, grad))
    got = run_layer(conv.to(device), x, (edge_index, weight), grad)
    ref = run_layer(dense.to(device), x, (adj,), grad)
    return max(relative_error(got[k], ref[k]) for k in ref)


def float32_errors(
    n: int, channels: int, degree: int, device: torch.device, dense: bool = False
) -> tuple[float, float]:
    """The layer in float32 against the same layer, weights and inputs in float64: the worst
    relative error of (the output and the gradients of x, ``lin`` and ``bias``) and of (the
    gradients of eq. 4's score parameters). ``dense``: the dense softmax path instead (the
    float32 error any [N, N] implementation has, for comparison)."""
    a = graph(n, degree)
    torch.manual_seed(0)
    conv = AdaptiveGCNConv(channels, channels, complete=None if dense else True)
    conv.sorted_min_nodes = n + 1  # the dense input keeps the [N, N] softmax
    inputs = (a.adj,) if dense else a.sparse_a
    x, grad = torch.randn(n, channels).to(device), torch.randn(n, channels).to(device)
    inputs = [t.to(device) for t in inputs]
    got = run_layer(conv.to(device), x, inputs, grad)
    ref = run_layer(
        conv.double(),
        x.double(),
        [t.double() if t.is_floating_point() else t for t in inputs],
        grad.double(),
    )
    errors = {k: relative_error(got[k].double(), ref[k]) for k in ref}
    score = [errors.pop(k) for k in SCORE_PARAMETERS if k in errors]
    return max(errors.values()), max(score)


def layer_rows(out: Path, argv: list[str]) -> list[dict[str, str]]:
    folder = layers.main([*argv, "--shapes", "scale", "--out", str(out), "--no-compile"])
    with open(folder / "layers.csv") as f:
        return list(csv.DictReader(f))


def time_and_memory(row: dict[str, str]) -> tuple[float, float]:
    return float(row["fwd_bwd_ms"]), float(row["fwd_bwd_mem_mib"])


def verdict(value: float, bar: float | None, quick: bool) -> str:
    if bar is None:
        return "(for reference)"
    return "n/a (--quick)" if quick else ("PASS" if value <= bar else "MISS")


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (the bar's machine) or cuda")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    out, env = start_results(args.out, device, "complete_bar.py", argv, "-complete-bar")
    mid, big, checks = (2000, 5000, [5000]) if args.quick else (10_000, 10**6, [10**5, 10**6])
    ref_n = 500 if args.quick else 4000  # where the dense softmax path fits, for comparison
    timing = ["--device", args.device, "--warmup", "1", "--repeats"]
    results = []

    def record(target: str, value: float, bar: float | None, unit: str = "") -> None:
        results.append({"target": target, "measured": f"{value:.3g}{unit}",
                        "bar": "" if bar is None else f"≤ {bar:g}{unit}",
                        "verdict": verdict(value, bar, args.quick)})  # fmt: skip
        print(results[-1], flush=True)

    record("exact: float64, complete (sparse A) vs dense path, max rel. error",
           exactness(300, 32, 16, device), BAR["exact"])  # fmt: skip

    scale = ["--scale-sizes", str(mid), "--scale-channels", "256,256", "--degree", "16"]
    three = ["--layers", "agcn_complete,dense_gat,dense_gcn"]
    rows = layer_rows(out / f"n{mid}", [*timing, str(args.repeats), *scale, *three])
    by_layer = {row["layer"]: time_and_memory(row)[0] for row in rows if row["status"] == "ok"}
    for ref, key in (("dense_gat", "vs_dense_gat"), ("dense_gcn", "vs_dense_gcn")):
        ratio = by_layer["agcn_complete"] / by_layer[ref]
        record(f"N = {mid}, 256->256, degree 16: fwd+bwd time / {ref}", ratio, BAR[key], "×")
    free_memory(device)

    scale = ["--scale-sizes", str(big), "--scale-channels", "64,64", "--degree", "8"]
    (row,) = layer_rows(out / f"n{big}", [*timing, "2", *scale, "--layers", "agcn_complete"])
    ms, mib = time_and_memory(row)
    record(f"N = {big}, 64->64, degree 8: fwd+bwd time", ms / 1e3, BAR["big_s"], " s")
    record(f"N = {big}, 64->64, degree 8: fwd+bwd peak memory", mib * 2**20 / GiB,
           BAR["big_gib"], " GiB")  # fmt: skip
    free_memory(device)

    # float32 at 10^5 and 10^6; the dense softmax path at a size it fits shows the error any
    # float32 implementation has in the score parameters' gradients (informational rows).
    for n, dense in ((ref_n, True), (ref_n, False), *((n, False) for n in checks)):
        values, score = float32_errors(n, 64, 8, device, dense)
        path = "dense softmax path" if dense else "complete path"
        record(f"N = {n}, {path}, float32 vs float64: output, grads of x, lin, bias",
               values, None if dense else BAR["float32"])  # fmt: skip
        record(f"N = {n}, {path}, float32 vs float64: grads of eq. 4's score parameters",
               score, None)  # fmt: skip
        free_memory(device)

    finish_results(out, env)
    text = [
        "# Complete path: issue 9's CPU bar\n",
        f"{env['date']} on {env['device']} ({env['cpu_model']}, {env['cpu_count']} cores, "
        f"{env['torch_num_threads']} threads), torch {env['torch']}, PyG "
        f"{env['torch_geometric']}. Command: `{env['command']}`\n",
        "Times are medians of forward+backward (`layers.py`, whose tables are in the "
        "sub-folders); memory = inputs + parameters + peak allocated (CPU allocator events).\n",
        markdown_table(results, ["target", "measured", "bar", "verdict"]),
    ]
    (out / "bar.md").write_text("\n".join(text))
    print(f"results in {out}")
    return out


if __name__ == "__main__":
    main()
