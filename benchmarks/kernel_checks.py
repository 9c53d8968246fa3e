"""The Triton kernels of the three paths against their PyTorch paths on a GPU (issue 21), and
training steps that must not synchronise with the host.

For each path (``edge_index``, dense, complete with a sparse A) and dtype (fp32; bf16 under
autocast), one forward+backward of the same ``AdaptiveGCNConv`` with ``AGCN_KERNELS=torch`` and
with ``AGCN_KERNELS=triton``: the output and every gradient, as the largest difference relative
to the largest entry (the weights' gradients at the scale of all weight gradients). Then a
2-layer ``MultiLabelHead`` training step and a complete-path step, each run once and then again
under ``torch.cuda.set_sync_debug_mode("error")`` (a host sync raises). Writes ``kernels.csv``
(one row a check, PASS/FAIL) and exits non-zero on a FAIL.

    python benchmarks/kernel_checks.py --out benchmarks/results/<date>-cuda-kernels
    TRITON_INTERPRET=1 python benchmarks/kernel_checks.py --quick   # CPU, interpreter, tiny
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, start_results, write_csv  # noqa: E402

from agcn_pyg import AdaptiveGCNConv, MultiLabelHead  # noqa: E402

TOL = {"fp32": 1e-4, "bf16": 3e-2}  # against the PyTorch path, which has its own rounding
COLUMNS = ["check", "path", "dtype", "n", "quantity", "value", "bar", "result"]


def path_cases(quick: bool) -> dict[str, tuple]:
    """(layer kwargs, N, channels, graph kind) of each path, with one head and with three
    (averaged, so the output keeps N x channels; each path's kernels take all heads at once)."""
    if quick:
        cases = {"edge": ({}, 200, 8, "sparse"), "dense": ({}, 40, 8, "dense"),
                 "complete": ({"complete": True}, 100, 8, "sparse")}  # fmt: skip
    else:
        cases = {"edge": ({}, 10_000, 64, "sparse"), "dense": ({}, 500, 256, "dense"),
                 "complete": ({"complete": True}, 20_000, 256, "sparse")}  # fmt: skip
    heads = {"heads": 3, "concat": False}
    return cases | {f"{path}, 3 heads": ({**kwargs, **heads}, *rest)
                    for path, (kwargs, *rest) in cases.items()}


def make_graph(kind: str, n: int, device: torch.device, gen: torch.Generator):
    if kind == "dense":
        return (torch.rand(n, n, generator=gen).to(device),)
    edge_index = torch.randint(0, n, (2, 16 * n), generator=gen).to(device)
    return edge_index, (torch.rand(16 * n, generator=gen) + 0.5).to(device)


def run_once(conv, x, graph, grad, dtype: str, backend: str):
    """Output and gradients (x, then each parameter) of one forward+backward on ``backend``."""
    os.environ["AGCN_KERNELS"] = backend
    conv.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        out = conv(x, *graph)
    out.float().backward(grad)
    return out.detach().float(), x.grad, {k: p.grad for k, p in conv.named_parameters()}


def compare_paths(device: torch.device, quick: bool) -> list[dict]:
    rows = []
    for path, (kwargs, n, ch, kind) in path_cases(quick).items():
        gen = torch.Generator().manual_seed(0)
        conv = AdaptiveGCNConv(ch, ch, **kwargs).to(device)
        conv.dense_max_ratio = 0.0  # the complete path keeps its sorted kernels
        x = torch.randn(n, ch, generator=gen).to(device)
        graph = make_graph(kind, n, device, gen)
        grad = torch.randn(n, ch, generator=gen).to(device)
        for dtype in ("fp32", "bf16"):
            ref = run_once(conv, x, graph, grad, dtype, "torch")
            got = run_once(conv, x, graph, grad, dtype, "triton")
            # A path whose kernel module never loaded ran the PyTorch code twice: say so.
            ran = f"agcn_pyg.nn.kernels.{path.split(',')[0]}" in sys.modules
            check = "triton vs torch" if ran else "triton vs torch (no kernel ran)"
            scale = max(g.abs().max().item() for g in ref[2].values())
            quantities = [("output", got[0], ref[0], None), ("grad x", got[1], ref[1], None)]
            quantities += [(f"grad {k}", got[2][k], ref[2][k], scale) for k in ref[2]]
            for name, a, b, s in quantities:
                s = s if s is not None else b.abs().max().item()
                err = (a.float() - b.float()).abs().max().item() / max(s, 1e-30)
                rows.append(dict(check=check, path=path, dtype=dtype, n=n,
                                 quantity=name, value=f"{err:.2e}", bar=f"<= {TOL[dtype]:g}",
                                 result="PASS" if err <= TOL[dtype] else "FAIL"))  # fmt: skip
    os.environ.pop("AGCN_KERNELS", None)
    return rows


def sync_free_steps(device: torch.device, quick: bool) -> list[dict]:
    """A training step of a 2-layer head (dense path, N = 80) and of a complete-path layer,
    repeated under sync-debug mode "error" (CUDA only)."""
    n_big = 200 if quick else 20_000
    head = MultiLabelHead(64, 80, torch.rand(80, 80), hidden_channels=(32,)).to(device)
    complete = AdaptiveGCNConv(32, 32, complete=True).to(device)
    complete.dense_max_ratio = 0.0
    x = torch.randn(n_big, 32, device=device, requires_grad=True)
    edge_index = torch.randint(0, n_big, (2, 8 * n_big), device=device)
    features = torch.randn(16, 64, device=device)
    steps = {"head, 2 layers, N=80": lambda: head(features).sigmoid().mean().backward(),
             f"complete path, N={n_big}": lambda: complete(x, edge_index).square().mean()
             .backward()}  # fmt: skip
    rows = []
    for name, step in steps.items():
        step()  # the first call checks the inputs and builds the per-graph caches
        if device.type != "cuda":
            value, result = "not run (CPU)", "n/a"
        else:
            torch.cuda.set_sync_debug_mode("error")
            try:
                step()
                value, result = "no sync", "PASS"
            except RuntimeError as e:
                value, result = str(e).splitlines()[0][:120], "FAIL"
            finally:
                torch.cuda.set_sync_debug_mode(0)
        rows.append(dict(check="no host sync (sync_debug_mode error)", path=name, dtype="fp32",
                         n="", quantity="repeated training step", value=value, bar="no sync",
                         result=result))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true",
                   help="tiny graphs (a smoke test; on the CPU needs TRITON_INTERPRET=1)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    out, _ = start_results(args.out, device, "kernel_checks.py", argv, "-kernels")
    rows = compare_paths(device, args.quick) + sync_free_steps(device, args.quick)
    write_csv(rows, out / "kernels.csv", COLUMNS)
    print(markdown_table(rows, COLUMNS), flush=True)
    return 1 if any(r["result"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
