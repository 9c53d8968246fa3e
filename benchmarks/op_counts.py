"""Kernel ops and host syncs of one forward+backward (the second call on the same graph), counted
with :class:`agcn_pyg.nn.kernels.counting.OpCounter`: the edge_index path of AdaptiveGCNConv on
PyTorch and on the Triton kernels, against GATConv and GCNConv (random graphs, degree 16).

    python benchmarks/op_counts.py --sizes 10000 --dry-kernels       # CPU
    python benchmarks/op_counts.py --device cuda --sizes 10000,100000

The counts are properties of the code path, the same on every device. On the CPU the Triton
path needs ``TRITON_INTERPRET=1`` before the import (set here); ``--dry-kernels`` counts the
Triton kernels as launched without running them (the interpreter takes ~10 ms per program
instance, minutes at 10 000 nodes), so the values are garbage but the counts are not.
"""

from __future__ import annotations

import argparse
import os

import torch

if not torch.cuda.is_available():  # before Triton is imported (by PyG)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from torch_geometric.nn import GATConv, GCNConv  # noqa: E402

from agcn_pyg import AdaptiveGCNConv  # noqa: E402
from agcn_pyg.nn.kernels import edge  # noqa: E402
from agcn_pyg.nn.kernels.counting import OpCounter  # noqa: E402

LAYERS = {
    "agcn_edge (torch)": ("torch", AdaptiveGCNConv),
    "agcn_edge (triton)": ("triton", AdaptiveGCNConv),
    "gat": ("torch", GATConv),
    "gcn": ("torch", GCNConv),
}


def count(make, backend: str, n: int, channels: int, degree: int, device) -> OpCounter:
    os.environ["AGCN_KERNELS"] = backend
    torch.manual_seed(0)
    conv = make(channels, channels).to(device)
    x = torch.randn(n, channels, device=device, requires_grad=True)
    edge_index = torch.randint(0, n, (2, degree * n), device=device)
    for _ in range(2):  # the first call builds the pattern and checks the inputs
        with OpCounter() as ops:
            conv(x, edge_index).sum().backward()
    return ops


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="10000")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--degree", type=int, default=16)
    p.add_argument("--dry-kernels", action="store_true",
                   help="count the Triton kernels without running them (CPU)")
    args = p.parse_args(argv)
    if args.dry_kernels:
        edge._compiled = lambda fn: _NotRun()
    print("| layer | nodes | kernel ops | host syncs | syncing ops |\n|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        for name, (backend, make) in LAYERS.items():
            ops = count(make, backend, n, args.channels, args.degree, torch.device(args.device))
            syncing = ", ".join(f"{k} x{v}" for k, v in sorted(ops.sync_ops.items()))
            print(f"| {name} | {n} | {ops.kernels} | {ops.syncs} | {syncing} |", flush=True)


class _NotRun:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


if __name__ == "__main__":
    main()
