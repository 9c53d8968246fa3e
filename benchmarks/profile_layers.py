"""Where the time of one forward+backward goes: kernel count, kernel time and the top kernels of
the dense ``AdaptiveGCNConv`` and ``DenseGATConv`` (``torch.profiler``), for the misses that
``benchmarks/NOTES.md`` analyses; plus the kernel ops and host syncs that
:class:`agcn_pyg.nn.kernels.counting.OpCounter` counts (the same on every device).

    python benchmarks/profile_layers.py --device cuda --sizes 80,10000 --out results/X/profile
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import int_list, markdown_table, start_results, str_list, write_csv  # noqa: E402
from layers import LAYERS  # noqa: E402

from agcn_pyg.nn.kernels.counting import OpCounter  # noqa: E402


def profile_case(name: str, n: int, channels: tuple[int, int], device: torch.device,
                 degree: int = 16) -> tuple:
    """Profiles one forward+backward after warm-up; returns (summary row, top-kernel rows).
    Dense layers get a complete graph's ``[N, N]`` adjacency, the others a random graph of
    average in-degree ``degree`` as ``edge_index``."""
    torch.manual_seed(0)
    module = LAYERS[name].make(*channels).to(device)
    x = torch.randn(n, channels[0], device=device, requires_grad=True)
    if LAYERS[name].dense:
        graph = (torch.rand(n, n, device=device),)
    else:
        graph = (torch.randint(0, n, (2, degree * n), device=device),)

    def step():
        module(x, *graph).sum().backward()
        x.grad = None

    for _ in range(3):
        step()
    with OpCounter() as ops:  # the aten ops that launch a kernel, and the host syncs
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                            else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type.name == "CUDA"]
    kernels = [e for e in events if "memcpy" not in e.name.lower()
               and "memset" not in e.name.lower()]
    stats = prof.key_averages()
    syncs = sum(s.count for s in stats if "synchronize" in s.key.lower()
                or s.key in ("aten::item", "aten::_local_scalar_dense"))
    summary = dict(layer=name, n=n, kernels=len(kernels),
                   kernel_ms=sum(e.device_time for e in kernels) / 1e3,
                   cpu_ops=sum(s.count for s in stats if s.key.startswith("aten::")),
                   host_syncs=syncs, kernel_ops=ops.kernels, syncing_ops=ops.syncs)
    top = sorted(stats, key=lambda s: s.device_time_total, reverse=True)[:8]
    top_rows = [dict(layer=name, n=n, op=s.key[:70], calls=s.count,
                     device_ms=s.device_time_total / 1e3) for s in top]
    return summary, top_rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", type=int_list, default=[80, 10000])
    p.add_argument("--layers", type=str_list, default=["agcn_dense", "dense_gat"])
    p.add_argument("--hidden", type=int_list, default=[1024, 2048], metavar="IN,OUT")
    p.add_argument("--sparse-sizes", type=int_list, default=[10000])
    p.add_argument("--sparse-layers", type=str_list, default=["agcn_edge", "gat"])
    p.add_argument("--sparse-channels", type=int_list, default=[64, 64], metavar="IN,OUT")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    out, env = start_results(args.out, device, "profile_layers.py", argv or sys.argv[1:],
                             suffix="-profile")
    summary, top = [], []
    cases = [(name, n, tuple(args.hidden)) for n in args.sizes for name in args.layers]
    cases += [(name, n, tuple(args.sparse_channels)) for n in args.sparse_sizes
              for name in args.sparse_layers]
    for name, n, channels in cases:
        s, t = profile_case(name, n, channels, device)
        summary.append(s)
        top += t
        print(f"{name:16s} N={n:<6d} kernels {s['kernels']:4d}  kernel time "
              f"{s['kernel_ms']:8.3f} ms  aten ops {s['cpu_ops']:4d}  syncs {s['host_syncs']}  "
              f"(OpCounter: {s['kernel_ops']} kernel ops, {s['syncing_ops']} syncs)",
              flush=True)
    write_csv(summary, out / "profile.csv", list(summary[0]))
    write_csv(top, out / "top_kernels.csv", list(top[0]))
    cols = ["layer", "n", "kernels", "kernel_ms", "cpu_ops", "host_syncs", "kernel_ops",
            "syncing_ops"]
    (out / "profile.md").write_text(
        f"# One forward+backward (torch.profiler): complete graphs {args.hidden[0]} -> "
        f"{args.hidden[1]}, sparse graphs {args.sparse_channels[0]} -> "
        f"{args.sparse_channels[1]}\n\n"
        + markdown_table(summary, cols) + "\n## Top ops by device time\n\n"
        + markdown_table(top, ["layer", "n", "op", "calls", "device_ms"]))
    print(f"results in {out}")


if __name__ == "__main__":
    main()
