"""Times and measures AdaptiveGCNConv against PyG's GCNConv, GATConv, DenseGCNConv, DenseGATConv.

Cases (see ``benchmarks/README.md`` for the columns of the results):

* complete label graphs with N nodes (every pair an edge, self-loops included), given to the
  dense layers as an ``[N, N]`` adjacency and to the message-passing layers as an
  ``edge_index`` of N² edges with weights; two layer shapes: ``hidden`` (1024 -> 2048, the
  second ML-AGCN layer; ``x`` needs a gradient) and ``first`` (N -> 1024 on one-hot node
  features ``x = I``, which needs no gradient);
* ``sparse`` random graphs (average in-degree 16, 64 -> 64), for the message-passing layers only;
* ``scale``: complete label graphs of N = 80 ... 10⁶ nodes whose fixed graph A is sparse (average
  degree 16), d -> F = 256 -> 256: AdaptiveGCNConv's complete path (``complete=True``, A as
  ``edge_index`` + weights; B and C over every pair in O(N log N)) against the O(N²) layers,
  which get the same graph as a dense ``[N, N]`` adjacency or as N² edges. Not in the default
  ``--shapes``: ``--shapes scale``.

For each case and layer: median forward time (under ``torch.no_grad``), median forward+backward
time (``.grad`` reset to ``None`` each step, as ``zero_grad`` does), and peak memory of each
(see :func:`common.peak_memory`). Out-of-memory is recorded as ``OOM``; a case whose estimated
memory exceeds the budget is recorded as ``skipped (est. X GiB)`` without running.

Quick CPU check (seconds)::

    python benchmarks/layers.py --quick

Full GPU run::

    python benchmarks/layers.py --device cuda --dtype bf16

The ``scale`` sweep on a GPU (N = 80 ... 10⁶)::

    python benchmarks/layers.py --device cuda --shapes scale
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch_geometric.nn import DenseGATConv, DenseGCNConv, GATConv, GCNConv
from torch_geometric.utils import coalesce, remove_self_loops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_run_arguments,
    finish_results,
    free_memory,
    int_list,
    is_oom,
    markdown_table,
    memory_budget,
    parse_with_quick,
    peak_memory,
    start_results,
    str_list,
    time_fn,
    write_csv,
)

from agcn_pyg import AdaptiveGCNConv, count_parameters  # noqa: E402

MiB = 2**20
GiB = 2**30


class Layer(NamedTuple):
    label: str
    dense: bool  # takes the [N, N] adjacency; otherwise edge_index (+ weights)
    make: Callable[[int, int], torch.nn.Module]
    compile: bool | str = False  # True: torch.compile's default mode; a string: that mode
    weighted: bool = True  # passes edge_weight on the edge_index path
    sparse_a: bool = False  # takes the sparse A of a ``scale`` graph (the complete path) only


def _with(module: torch.nn.Module, **attributes) -> torch.nn.Module:
    for name, value in attributes.items():
        setattr(module, name, value)
    return module


LAYERS: dict[str, Layer] = {
    "agcn_dense": Layer("AdaptiveGCNConv (dense)", True, AdaptiveGCNConv),
    # The dense path's two ways to B (the default picks by N and F, sorted_min_nodes): the [N, N]
    # softmax, and the sorted O(N log N) aggregation of agcn_pyg.nn.complete.
    "agcn_dense_softmax": Layer(
        "AdaptiveGCNConv (dense, N×N softmax)",
        True,
        lambda i, o: _with(AdaptiveGCNConv(i, o), sorted_min_nodes=2**62),
    ),
    "agcn_dense_sorted": Layer(
        "AdaptiveGCNConv (dense, sorted B)",
        True,
        lambda i, o: _with(AdaptiveGCNConv(i, o), sorted_min_nodes=0, sorted_min_ratio=0.0),
    ),
    # complete=True with a sparse A (edge_index + weights): no [N, N] anywhere.
    "agcn_complete": Layer(
        "AdaptiveGCNConv (complete, sparse A)",
        False,
        lambda i, o: AdaptiveGCNConv(i, o, complete=True),
        sparse_a=True,
    ),
    # The same, compiled (no graph breaks) and as CUDA graphs: the complete path is ~150 small
    # kernels, launch-bound on a GPU up to N ~ 10^4. Only with --layers.
    "agcn_complete_compile": Layer(
        "AdaptiveGCNConv (complete, sparse A, compiled)",
        False,
        lambda i, o: AdaptiveGCNConv(i, o, complete=True),
        compile=True,
        sparse_a=True,
    ),
    "agcn_complete_cudagraph": Layer(
        "AdaptiveGCNConv (complete, sparse A, CUDA graphs)",
        False,
        lambda i, o: AdaptiveGCNConv(i, o, complete=True),
        compile="reduce-overhead",
        sparse_a=True,
    ),
    "agcn_dense_compile": Layer(
        "AdaptiveGCNConv (dense, compiled)", True, AdaptiveGCNConv, compile=True
    ),
    # CUDA graphs (torch.compile's reduce-overhead mode): launch-bound sizes such as N = 80.
    "agcn_dense_cudagraph": Layer(
        "AdaptiveGCNConv (dense, CUDA graphs)", True, AdaptiveGCNConv, compile="reduce-overhead"
    ),
    # cached=True, as MultiLabelHead's first layer: C of a fixed input is computed once.
    "agcn_dense_cached": Layer(
        "AdaptiveGCNConv (dense, cached C)", True, lambda i, o: AdaptiveGCNConv(i, o, cached=True)
    ),
    "agcn_edge": Layer("AdaptiveGCNConv (edge_index)", False, AdaptiveGCNConv),
    "gcn": Layer("GCNConv", False, GCNConv),
    "gat": Layer("GATConv", False, lambda i, o: GATConv(i, o, heads=1), weighted=False),
    "dense_gcn": Layer("DenseGCNConv", True, DenseGCNConv),
    "dense_gat": Layer("DenseGATConv", True, lambda i, o: DenseGATConv(i, o, heads=1)),
}
# The layer every time of a case is divided by: dense GCN on complete graphs, GCN on sparse ones.
REFERENCE = {"complete": "dense_gcn", "sparse": "gcn", "scale": "dense_gcn"}
# The layers of the ``scale`` shape unless --layers names others.
SCALE_LAYERS = ["agcn_complete", "agcn_dense", "dense_gat", "dense_gcn", "gat", "gcn"]

# Rough upper bounds of live buffers during forward+backward, to skip cases that cannot fit
# (fitted to CPU measurements with some margin): [N, N] buffers of each dense layer; [E, out] and
# [E, in] buffers of each message-passing layer (AdaptiveGCNConv's cosine term gathers [E, in]).
NN_BUFFERS = {
    "agcn_dense": 8,
    "agcn_dense_softmax": 8,
    "agcn_dense_sorted": 6,
    "agcn_dense_compile": 8,
    "agcn_dense_cudagraph": 8,
    "agcn_dense_cached": 8,
    "dense_gcn": 4,
    "dense_gat": 8,
}
EDGE_BUFFERS = {"agcn_edge": (5, 3), "gcn": (3, 0), "gat": (5, 0)}
# The complete path: [N, F + 1] buffers of the cumulative sums (float64 on a GPU, float32 on
# the CPU: agcn_pyg.nn.complete._accumulate_dtype) and bytes per stored entry of A (edge_index,
# weights, CSR of A and its transpose). Fitted to CPU peaks at N = 10^4-10^6 with some margin.
COMPLETE_NF_BUFFERS, COMPLETE_BYTES_PER_NNZ = 8, 64

SHAPE_TITLES = {
    "hidden": "complete graph, hidden layer {i}->{o}",
    "first": "complete graph, first layer N->{o} (one-hot input)",
    "sparse": "random sparse graph (avg. degree {d}), {i}->{o}",
    "scale": "complete label graph, sparse A (avg. degree {d}), {i}->{o}",
}

COLUMNS = [
    "layer", "label", "graph", "shape", "n", "num_edges", "in_channels", "out_channels",
    "dtype", "device", "status", "fwd_ms", "fwd_bwd_ms", "ref", "fwd_x", "fwd_bwd_x",
    "fwd_mem_mib", "fwd_bwd_mem_mib", "est_mib", "params", "first_call_s",
    "fwd_ms_min", "fwd_bwd_ms_min", "repeats", "warmup",
]  # fmt: skip


# --quick: a CPU smoke test of every layer and output in seconds; no torch.compile; one thread
# (on a busy 2-core machine a descheduled second OpenMP thread stalls every op).
QUICK = dict(
    device="cpu", sizes=[16, 48], sparse_sizes=[500], hidden=[32, 64], first_out=32,
    sparse_channels=[16, 16], repeats=3, warmup=1, compile=False, threads=1,
    scale_sizes=[48, 300], scale_channels=[16, 16],
)  # fmt: skip


class Case(NamedTuple):
    graph: str  # "complete", "sparse" or "scale"
    shape: str  # "hidden", "first", "sparse" or "scale"
    n: int
    in_channels: int
    out_channels: int


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype",
        choices=["fp32", "tf32", "bf16"],
        default="fp32",
        help="bf16 runs the forward under torch.autocast; tf32 lets float32 matmuls use "
        "TF32 tensor cores (set_float32_matmul_precision('high')) (default: fp32, full "
        "float32 matmuls)",
    )
    p.add_argument(
        "--sizes",
        type=int_list,
        default=[80, 500, 2000, 10000],
        help="N of the complete graphs (default: 80,500,2000,10000)",
    )
    p.add_argument(
        "--sparse-sizes",
        type=int_list,
        default=[10_000, 100_000],
        help="N of the random sparse graphs (default: 10000,100000)",
    )
    p.add_argument(
        "--scale-sizes",
        type=int_list,
        default=[80, 500, 2000, 10_000, 100_000, 1_000_000],
        help="N of the scale sweep's label graphs (default: 80,500,2000,10000,100000,1000000)",
    )
    p.add_argument(
        "--shapes",
        type=str_list,
        default=["hidden", "first", "sparse"],
        help="any of hidden,first,sparse,scale (default: hidden,first,sparse; scale is the "
        "complete label graph with a sparse A, N up to 10^6: --shapes scale)",
    )
    p.add_argument(
        "--hidden",
        type=int_list,
        default=[1024, 2048],
        metavar="IN,OUT",
        help="channels of the hidden-layer shape (default: 1024,2048)",
    )
    p.add_argument(
        "--first-out",
        type=int,
        default=1024,
        help="output channels of the first-layer shape N->OUT (default: 1024)",
    )
    p.add_argument("--sparse-channels", type=int_list, default=[64, 64], metavar="IN,OUT")
    p.add_argument(
        "--scale-channels",
        type=int_list,
        default=[256, 256],
        metavar="IN,OUT",
        help="channels of the scale shape (default: 256,256)",
    )
    p.add_argument(
        "--degree", type=int, default=16, help="average degree of sparse graphs and of scale's A"
    )
    p.add_argument(
        "--layers",
        type=str_list,
        default=None,
        help=f"any of {','.join(LAYERS)} (default: all that take the case's graph; for the "
        f"scale shape {','.join(SCALE_LAYERS)})",
    )
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the torch.compile row (default: on, off with --quick)",
    )
    p.add_argument(
        "--max-mem-gib",
        type=float,
        default=None,
        help="skip cases estimated above this (default: 80%% of GPU memory or of available RAM)",
    )
    add_run_arguments(
        p,
        "tiny CPU run for a smoke test: N=16,48, 32->64, sparse N=500 16->16",
        "benchmarks/results/<date>-<device>/",
    )
    args = parse_with_quick(p, argv, QUICK)
    if args.compile is None:
        args.compile = True
    for name in args.layers or []:
        if name not in LAYERS:
            p.error(f"--layers: unknown layer {name!r}; choose from {', '.join(LAYERS)}")
    for shape in args.shapes:
        if shape not in SHAPE_TITLES:
            p.error(f"--shapes: unknown shape {shape!r}; choose from {', '.join(SHAPE_TITLES)}")
    for flag in ("hidden", "sparse_channels", "scale_channels"):
        if len(getattr(args, flag)) != 2:
            p.error(f"--{flag.replace('_', '-')} takes IN,OUT (got {getattr(args, flag)})")
    return args


def cases(args) -> list[Case]:
    out = []
    if "hidden" in args.shapes:
        out += [Case("complete", "hidden", n, *args.hidden) for n in args.sizes]
    if "first" in args.shapes:
        out += [Case("complete", "first", n, n, args.first_out) for n in args.sizes]
    if "sparse" in args.shapes:
        out += [Case("sparse", "sparse", n, *args.sparse_channels) for n in args.sparse_sizes]
    if "scale" in args.shapes:
        out += [Case("scale", "scale", n, *args.scale_channels) for n in args.scale_sizes]
    return out


def layers_for(case: Case, args) -> list[str]:
    """The layers that run on a case: --layers (or the shape's default) that take its graph."""
    names = args.layers or (SCALE_LAYERS if case.graph == "scale" else list(LAYERS))
    if not args.compile:
        names = [name for name in names if not LAYERS[name].compile]
    if case.graph == "sparse":
        return [name for name in names if not LAYERS[name].dense and not LAYERS[name].sparse_a]
    if case.graph == "complete":
        return [name for name in names if not LAYERS[name].sparse_a]
    return names


# Graphs --------------------------------------------------------------------------------------


class Graph:
    """One graph in every form a layer takes; the dense adjacency of a ``scale`` graph and the
    edge_index of a complete graph are built only when a layer needs them."""

    def __init__(self, case: Case, degree: int, device: torch.device, seed: int):
        self.n, self.device = case.n, device
        gen = torch.Generator().manual_seed(seed)
        self._adj: Tensor | None = None
        self._edges: tuple[Tensor, Tensor] | None = None
        self.sparse_a: tuple[Tensor, Tensor] | None = None
        self.nnz = 0
        if case.graph == "scale":
            # A sparse co-occurrence graph (weights in (0, 1), no self-loops: the layers add
            # them with weight 1) on the complete graph of N labels.
            edge_index = torch.randint(self.n, (2, self.n * degree), generator=gen)
            edge_index, _ = remove_self_loops(edge_index)
            edge_index = coalesce(edge_index, num_nodes=self.n)
            weight = torch.rand(edge_index.size(1), generator=gen)
            self.sparse_a = (edge_index.to(device), weight.to(device))
            self.nnz = edge_index.size(1)
            self.num_edges = self.n * self.n
        elif case.graph == "complete":
            # adj[i, j] = weight of j -> i, all positive (a co-occurrence graph with no threshold).
            self._adj = torch.rand(self.n, self.n, generator=gen).clamp_min_(1e-3).to(device)
            self.num_edges = self.n * self.n
        else:
            m = self.n * degree
            edge_index = torch.randint(self.n, (2, m), generator=gen)
            edge_index, _ = remove_self_loops(edge_index)
            edge_index = coalesce(edge_index, num_nodes=self.n)
            weight = torch.rand(edge_index.size(1), generator=gen)
            self._edges = (edge_index.to(device), weight.to(device))
            self.num_edges = edge_index.size(1)

    @property
    def adj(self) -> Tensor:
        if self._adj is None:  # a scale graph's A as a dense matrix, self-loops of weight 1
            (source, target), weight = self.sparse_a
            adj = torch.zeros(self.n, self.n, device=self.device)
            self._adj = adj.index_put_((target, source), weight).fill_diagonal_(1.0)
        return self._adj

    def edges(self) -> tuple[Tensor, Tensor]:
        if self._edges is None:
            # Flat index k = i * N + j is the edge j -> i with weight adj[i, j].
            idx = torch.arange(self.n, device=self.device)
            target = idx.repeat_interleave(self.n)
            source = idx.repeat(self.n)
            self._edges = (torch.stack([source, target]), self.adj.flatten())
        return self._edges

    def edge_bytes(self) -> int:
        return self.num_edges * (2 * 8 + 4)  # int64 edge_index + float32 weights


def estimate_bytes(name: str, case: Case, graph: Graph) -> int:
    """A rough upper bound of one forward+backward's memory, inputs included (float32)."""
    n, i, o = case.n, case.in_channels, case.out_channels
    base = 4 * (2 * n * i + 3 * n * o + 6 * i * o)  # x, grad x, h, out, grads; W and grads
    if LAYERS[name].sparse_a:
        per_entry = 4 if graph.device.type == "cpu" else 8
        nf = per_entry * COMPLETE_NF_BUFFERS * n * (o + 1)
        return base + nf + COMPLETE_BYTES_PER_NNZ * graph.nnz
    if LAYERS[name].dense:
        return base + 4 * (NN_BUFFERS[name] + 1) * n * n
    per_out, per_in = EDGE_BUFFERS[name]
    per_edge = 4 * (per_out * o + per_in * i)
    return base + graph.edge_bytes() * 2 + graph.num_edges * per_edge


# One measurement -----------------------------------------------------------------------------


def run_case(name: str, case: Case, graph: Graph, args, device: torch.device) -> dict[str, Any]:
    layer = LAYERS[name]
    row: dict[str, Any] = {
        "layer": name, "label": layer.label, "graph": case.graph, "shape": case.shape,
        "n": case.n, "num_edges": graph.num_edges, "in_channels": case.in_channels,
        "out_channels": case.out_channels, "dtype": args.dtype, "device": str(device),
        "repeats": args.repeats, "warmup": args.warmup,
    }  # fmt: skip
    est = estimate_bytes(name, case, graph)
    row["est_mib"] = est / MiB
    if est > args.budget:
        row["status"] = f"skipped (est. {est / GiB:.3g} GiB)"
        return row

    torch.manual_seed(args.seed)
    try:
        module = layer.make(case.in_channels, case.out_channels).to(device)
        row["params"] = count_parameters(module)
        if layer.compile:
            torch.compiler.reset()  # a fresh cache: no recompile limit across cases
            mode = layer.compile if isinstance(layer.compile, str) else None
            module = torch.compile(module, dynamic=False, mode=mode)

        if case.shape == "first":
            x = torch.eye(case.n, device=device)  # one-hot label features: no gradient
        else:
            x = torch.randn(case.n, case.in_channels, device=device, requires_grad=True)
        if layer.sparse_a:
            inputs = (x, *graph.sparse_a)
        elif layer.dense:
            inputs = (x, graph.adj)
        else:
            edge_index, edge_weight = graph.edges()
            inputs = (x, edge_index, edge_weight) if layer.weighted else (x, edge_index)
        grad = torch.randn(case.n, case.out_channels, device=device)
        params = [p for p in module.parameters() if p.requires_grad]
        base = sum(t.numel() * t.element_size() for t in (*inputs, grad, *params))
        autocast = torch.autocast(device.type, torch.bfloat16, enabled=args.dtype == "bf16")

        def forward():
            with torch.no_grad(), autocast:
                module(*inputs)

        def clear_grads():
            for p in params:
                p.grad = None
            x.grad = None

        def forward_backward():
            clear_grads()
            with autocast:
                out = module(*inputs)
            out.backward(grad.view_as(out).to(out.dtype))

        t0 = time.perf_counter()
        forward_backward()  # the first call initialises (and compiles) outside the timings
        forward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        row["first_call_s"] = time.perf_counter() - t0

        fwd = time_fn(forward, args.repeats, args.warmup, device)
        fwd_bwd = time_fn(forward_backward, args.repeats, args.warmup, device)
        row.update(
            fwd_ms=fwd.median * 1e3, fwd_ms_min=fwd.min * 1e3,
            fwd_bwd_ms=fwd_bwd.median * 1e3, fwd_bwd_ms_min=fwd_bwd.min * 1e3,
        )  # fmt: skip
        if args.memory:
            clear_grads()  # the gradients a step creates count towards its peak
            row["fwd_mem_mib"] = (base + peak_memory(forward, device)) / MiB
            row["fwd_bwd_mem_mib"] = (base + peak_memory(forward_backward, device)) / MiB
        row["status"] = "ok"
    except Exception as exc:
        if not is_oom(exc):
            traceback.print_exc()
            row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        else:
            row["status"] = "OOM"
    return row  # its tensors (and an OOM's traceback) are freed on return: free_memory next


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Divides every time by the reference layer's time on the same case."""
    key = lambda r: (r["graph"], r["shape"], r["n"], r["dtype"])  # noqa: E731
    refs = {key(r): r for r in rows if r["layer"] == REFERENCE[r["graph"]] and r["status"] == "ok"}
    for r in rows:
        ref = refs.get(key(r))
        if ref is None or r["status"] != "ok":
            continue
        r["ref"] = ref["layer"]
        r["fwd_x"] = r["fwd_ms"] / ref["fwd_ms"]
        r["fwd_bwd_x"] = r["fwd_bwd_ms"] / ref["fwd_bwd_ms"]


# Outputs -------------------------------------------------------------------------------------


def blocks(rows, args):
    """(title, rows) per layer shape, in the order the cases ran."""
    for shape in SHAPE_TITLES:
        sub = [r for r in rows if r["shape"] == shape]
        if sub:
            r0 = sub[0]
            title = SHAPE_TITLES[shape].format(
                i=r0["in_channels"], o=r0["out_channels"], d=args.degree
            )
            yield title, sub


def write_markdown(rows, args, env, path: Path) -> None:
    cols = ["n", "label", "fwd_ms", "fwd_bwd_ms", "fwd_x", "fwd_bwd_x",
            "fwd_mem_mib", "fwd_bwd_mem_mib", "status"]  # fmt: skip
    heads = ["N", "layer", "fwd ms", "fwd+bwd ms", "fwd ×ref", "fwd+bwd ×ref",
             "fwd MiB", "fwd+bwd MiB", "status"]  # fmt: skip
    gpu = f", {env['gpu_name']}" if env["gpu_name"] else ""
    text = [
        "# Layer benchmark\n",
        f"{env['date']} on {env['device']}{gpu} ({env['cpu_model']}, {env['cpu_count']} cores, "
        f"{env['torch_num_threads']} threads); torch {env['torch']}, PyG "
        f"{env['torch_geometric']}, timm {env['timm']}; dtype {args.dtype}; median of "
        f"{args.repeats} runs after {args.warmup} warm-up runs.\n",
        f"Command: `{env['command']}`\n",
        "×ref = time / time of the reference layer on the same case (DenseGCNConv on complete "
        "and scale graphs, GCNConv on sparse graphs). Memory = inputs + parameters + peak "
        "allocated during the call ("
        + (
            "CUDA max_memory_allocated"
            if args.device.startswith("cuda")
            else "CPU allocator events from torch.profiler"
        )
        + ").\n",
    ]
    for title, sub in blocks(rows, args):
        text.append(f"## {title[0].upper()}{title[1:]}\n")
        text.append(markdown_table(sub, cols, heads))
    path.write_text("\n".join(text))


def write_plot(rows, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(blocks(rows, args))
    tab20 = plt.get_cmap("tab20").colors
    colors = tab20[::2] + tab20[1::2]  # the strong colours first
    fig, axes = plt.subplots(len(parts), 2, figsize=(11, 3.6 * len(parts)), squeeze=False)
    for (title, sub), (ax_t, ax_m) in zip(parts, axes, strict=True):
        for k, name in enumerate(LAYERS):  # one colour and marker per layer in every panel
            ok = [r for r in sub if r["layer"] == name and r["status"] == "ok"]
            if not ok:
                continue
            n = [r["n"] for r in ok]
            style = dict(color=colors[k % len(colors)], marker="osD^v*xPh"[k % 9],
                         label=LAYERS[name].label)  # fmt: skip
            ax_t.plot(n, [r["fwd_bwd_ms"] for r in ok], **style)
            if all(r.get("fwd_bwd_mem_mib") for r in ok):
                ax_m.plot(n, [r["fwd_bwd_mem_mib"] for r in ok], **style)
        for ax, what in ((ax_t, "forward+backward time (ms)"), (ax_m, "fwd+bwd peak (MiB)")):
            ax.set(xscale="log", yscale="log", xlabel="N (nodes)", ylabel=what, title=title)
            ax.grid(True, which="both", alpha=0.3)
            if sub[0]["shape"] == "scale":
                _slopes(ax)
        if ax_t.lines:
            ax_t.legend(fontsize=7)
    fig.suptitle(f"{args.device}, {args.dtype}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _slopes(ax) -> None:
    """Dashed O(N²) and dotted O(N log N) guides, from the panel's highest and lowest first
    points; the y-range stays that of the data."""
    import numpy as np

    lines = [line for line in ax.lines if len(line.get_xdata())]
    if not lines:
        return
    ys = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in lines])
    n_hi = max(max(line.get_xdata()) for line in lines)
    firsts = [(line.get_xdata()[0], line.get_ydata()[0]) for line in lines]
    for (n0, y0), power, label, style in (
        (max(firsts, key=lambda p: p[1]), 2, "O(N²)", "--"),
        (min(firsts, key=lambda p: p[1]), 1, "O(N log N)", ":"),
    ):
        n = np.geomspace(n0, n_hi, 50)
        curve = n**power * (np.log(n) if power == 1 else 1.0)
        ax.plot(n, y0 * curve / curve[0], color="0.35", linestyle=style, linewidth=1, label=label)
    ax.set_ylim(ys.min() / 2, ys.max() * 2)


def main(argv: list[str] | None = None) -> Path:
    """Runs the benchmark with command-line ``argv``; returns the results folder."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("high" if args.dtype == "tf32" else "highest")
    args.budget = (
        int(args.max_mem_gib * GiB) if args.max_mem_gib is not None else memory_budget(device)
    )
    out, env = start_results(args.out, device, "layers.py", argv, "-quick" if args.quick else "")
    env["memory_budget_gib"] = round(args.budget / GiB, 1)

    rows = []
    width = max(len(layer.label) for layer in LAYERS.values())
    for case in cases(args):
        graph = Graph(case, args.degree, device, args.seed)
        for name in layers_for(case, args):
            row = run_case(name, case, graph, args, device)
            free_memory(device)
            rows.append(row)
            times = (
                f"fwd {row['fwd_ms']:9.3f} ms  fwd+bwd {row['fwd_bwd_ms']:9.3f} ms"
                f"  mem {row.get('fwd_bwd_mem_mib') or math.nan:8.1f} MiB"
                if row["status"] == "ok"
                else row["status"]
            )
            print(f"{case.shape:6s} N={case.n:<7d} {row['label']:{width}s}  {times}", flush=True)
        del graph
        free_memory(device)

    finish_results(out, env)
    add_ratios(rows)
    write_csv(rows, out / "layers.csv", COLUMNS)
    write_markdown(rows, args, env, out / "layers.md")
    write_plot(rows, args, out / "layers.png")
    print(f"results in {out}")
    return out


if __name__ == "__main__":
    main()
