"""Training and inference images/s of a timm backbone with a linear head against the same
backbone with the ML-AGCN head, and the head's overhead in percent.

Heads (``--layers``): ``linear`` is ``timm.create_model(model, num_classes=N)``; ``1`` and ``2``
are ``agcn_pyg.create_model(model, N, adj, num_layers=1|2)``, with ``adj`` a random
co-occurrence-like ``[N, N]`` matrix (``P(j | i)`` of random multi-hot labels, ones on the
diagonal). ``--compile-head`` adds rows in which only the head's classifier computation
(``model.head.classifiers``) runs under ``torch.compile``; the backbone stays eager.

* **train**: forward under autocast, ASL (:func:`agcn_pyg.asymmetric_loss`), backward, Adam step,
  ``zero_grad`` (with a ``GradScaler`` for fp16).
* **infer**: ``model.eval()`` under ``torch.inference_mode()`` and autocast. The head's classifiers
  come from its eval cache, computed once before the timed runs, so the ML-AGCN head costs one
  ``[B, D] x [D, N]`` matmul per batch, like a linear head; the ``recomputes`` column counts the
  ``classifiers()`` calls during the timed runs and must be 0.
* **head** rows (``--head-only`` runs only these): the head alone on random ``[B, D]`` features,
  for each ``--head-dims`` D and the backbone's: ``classifiers()`` forward and forward+backward;
  the head's share of a training step (``head(x)`` forward+backward with a gradient for ``x``,
  plus Adam on the head's parameters) and of inference; and from them the overhead predicted for
  the full model (``pred %`` in the model table).

The cases of a mode run interleaved: each of ``--repeats`` rounds times one step of every head
in turn, so a load change on a shared machine hits all heads alike. Medians are reported.
Peak memory (:func:`common.peak_memory`) is one extra step of each, plus the parameters,
optimiser state and inputs alive before it.

Quick CPU check (well under a minute)::

    python benchmarks/model.py --quick

The issue's GPU run (tresnet_m, 448 px, batch 64, bf16, channels_last)::

    python benchmarks/model.py --device cuda --compile-head
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import timm
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_run_arguments,
    finish_results,
    free_memory,
    int_list,
    markdown_table,
    parse_with_quick,
    peak_memory,
    start_results,
    str_list,
    time_fn,
    write_csv,
)

from agcn_pyg import (  # noqa: E402
    MultiLabelHead,
    asymmetric_loss,
    conditional_probability,
    cooccurrence_counts,
    count_parameters,
    create_model,
)
from agcn_pyg.train import LoopConfig, resolve_amp  # noqa: E402

MiB = 2**20
DTYPES = ("bf16", "fp16", "fp32")  # agcn_pyg.train.resolve_amp maps them, as --amp does

MODEL_COLUMNS = [
    "mode", "head", "layers", "compiled", "status", "ms", "ms_min", "images_per_s",
    "vs_linear_pct", "time_overhead_pct", "pred_overhead_pct", "recomputes", "mem_mib",
    "params", "head_params", "first_call_s", "model", "img_size", "batch_size", "num_labels",
    "dtype", "channels_last", "device", "threads", "repeats", "warmup",
]  # fmt: skip
HEAD_COLUMNS = [
    "head", "layers", "compiled", "in_features", "num_labels", "batch_size", "dtype",
    "classifiers_fwd_ms", "classifiers_fwd_bwd_ms", "head_fwd_bwd_ms", "adam_ms",
    "train_ms", "infer_ms", "head_params", "device", "repeats",
]  # fmt: skip

# (column, header) of the markdown tables
MODEL_TABLE = [
    ("mode", "mode"), ("head", "head"), ("ms", "ms/step"), ("images_per_s", "images/s"),
    ("vs_linear_pct", "vs linear %"), ("time_overhead_pct", "overhead %"),
    ("pred_overhead_pct", "pred %"), ("recomputes", "recomputes"), ("mem_mib", "MiB"),
    ("head_params", "head params"),
]  # fmt: skip
HEAD_TABLE = [
    ("head", "head"), ("in_features", "D"), ("classifiers_fwd_ms", "classifiers fwd ms"),
    ("classifiers_fwd_bwd_ms", "classifiers fwd+bwd ms"), ("head_fwd_bwd_ms", "head fwd+bwd ms"),
    ("adam_ms", "Adam ms"), ("train_ms", "train ms"), ("infer_ms", "infer ms"),
    ("head_params", "params"),
]  # fmt: skip

# --quick: a CPU smoke test in seconds; one thread (on a busy 2-core machine a descheduled
# second OpenMP thread stalls every op, see README).
QUICK = dict(
    device="cpu", model="resnet10t", img_size=64, batch_size=8, dtype="fp32",
    channels_last=False, repeats=5, warmup=2, head_repeats=10, threads=1,
)  # fmt: skip


class Head(NamedTuple):
    """One head configuration: ``layers`` 0 is timm's linear classifier."""

    layers: int
    compiled: bool

    @property
    def name(self) -> str:
        if self.layers == 0:
            return "linear"
        return f"ml-agcn-{self.layers}" + ("+compile" if self.compiled else "")


# Arguments -----------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="tresnet_m", help="timm backbone (default: tresnet_m)")
    p.add_argument("--img-size", type=int, default=448)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-labels", type=int, default=80)
    p.add_argument(
        "--layers",
        type=str_list,
        default=["linear", "1", "2"],
        help="heads to run: 'linear' and ML-AGCN layer counts (default: linear,1,2)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="bf16",
        help="bf16/fp16: forward under torch.autocast (fp16 with a GradScaler); fp32: no "
        "autocast (default: bf16)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last model and images (default: on for CUDA, off on the CPU)",
    )
    p.add_argument(
        "--compile-head",
        action="store_true",
        help="add rows with torch.compile on the head's classifiers() (backbone eager)",
    )
    p.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode of the --compile-head rows, e.g. reduce-overhead (CUDA graphs) "
        "(default: torch's default mode)",
    )
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of each head first")
    p.add_argument(
        "--head-only",
        action="store_true",
        help="only the head rows: the head alone on random features, no backbone",
    )
    p.add_argument(
        "--head-dims",
        type=int_list,
        default=[2048],
        help="feature sizes D of the head rows; the backbone's is added (default: 2048)",
    )
    p.add_argument("--head-repeats", type=int, default=50)
    add_run_arguments(
        p,
        "CPU smoke test: resnet10t, 64 px, batch 8, fp32, 5 rounds, 1 thread",
        "benchmarks/results/<date>-<device>-model[-quick]/",
    )
    args = parse_with_quick(p, argv, QUICK)
    if args.channels_last is None:
        args.channels_last = args.device.startswith("cuda")
    heads = []
    for name in args.layers:
        if name == "linear":
            heads.append(Head(0, False))
        elif name.isdigit() and int(name) >= 1:
            heads.append(Head(int(name), False))
            if args.compile_head:
                heads.append(Head(int(name), True))
        else:
            p.error(f"--layers: expected 'linear' or a layer count >= 1 (got {name!r})")
    args.heads = heads
    return args


# Inputs and models ---------------------------------------------------------------------------


def random_label_graph(num_labels: int, seed: int) -> Tensor:
    """``P(j | i)`` of 10 000 random multi-hot samples (label frequencies 1-10 %, every label
    present at least once): dense, positive, no threshold, ones on the diagonal."""
    gen = torch.Generator().manual_seed(seed)
    freq = 0.01 + 0.09 * torch.rand(num_labels, generator=gen)
    labels = torch.rand(10_000, num_labels, generator=gen) < freq
    labels[torch.arange(num_labels), torch.arange(num_labels)] = True
    return conditional_probability(*cooccurrence_counts(labels))


def build_model(head: Head, args, adj: Tensor, device: torch.device) -> nn.Module:
    torch.manual_seed(args.seed)
    if head.layers == 0:
        model = timm.create_model(args.model, num_classes=args.num_labels)
    else:
        model = create_model(args.model, args.num_labels, adj, num_layers=head.layers)
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if head.compiled:
        compile_classifiers(head_of(model), args.compile_mode)
    return model


def compile_classifiers(head: MultiLabelHead, mode: str | None = None) -> None:
    head.compile_classifiers(dynamic=False, mode=mode)


def count_classifier_calls(head: nn.Module) -> list[int]:
    """Wraps ``head.classifiers`` (compiled or not) with a call counter; returns the counter."""
    calls = [0]
    if not isinstance(head, MultiLabelHead):
        return calls
    inner = head.classifiers

    def counted():
        calls[0] += 1
        return inner()

    head.classifiers = counted
    return calls


def head_of(model: nn.Module) -> nn.Module:
    head = getattr(model, "head", None)
    return head if isinstance(head, MultiLabelHead) else model.get_classifier()


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_bytes(opt: torch.optim.Optimizer) -> int:
    return tensor_bytes(
        v for state in opt.state.values() for v in state.values() if isinstance(v, Tensor)
    )


class Case:
    """A model with its optimiser and the two steps that are timed."""

    def __init__(self, head: Head, args, adj, images, targets, device):
        self.head = head
        self.model = build_model(head, args, adj, device)
        self.calls = count_classifier_calls(head_of(self.model))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)  # ASL's optimiser
        self.loss_fn = asymmetric_loss()
        amp_dtype, use_scaler = resolve_amp(args.dtype, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.autocast = LoopConfig(device, amp_dtype).autocast
        self.images, self.targets = images, targets

    def train_step(self) -> None:
        with self.autocast():
            logits = self.model(self.images)
        loss = self.loss_fn(logits, self.targets)  # float32 inside, whatever the autocast
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)

    def infer_step(self) -> None:
        # After model.eval() and one untimed call, MultiLabelHead returns its cached [N, D]
        # classifiers (no graph layer runs): the head costs one [B, D] x [D, N] matmul, the
        # same as timm's linear head (which adds a bias). `recomputes` checks this.
        with torch.inference_mode(), self.autocast():
            self.model(self.images)

    def base_bytes(self, mode: str) -> int:
        """What is alive before a step: parameters, Adam state (train) and inputs."""
        live = tensor_bytes(self.model.parameters()) + tensor_bytes(self.model.buffers())
        live += tensor_bytes([self.images, self.targets])
        return live + (optimizer_bytes(self.opt) if mode == "train" else 0)


# Full-model rows -----------------------------------------------------------------------------


def run_model(args, device: torch.device, adj: Tensor) -> tuple[list[dict], int]:
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.batch_size, 3, args.img_size, args.img_size, generator=gen)
    targets = (torch.rand(args.batch_size, args.num_labels, generator=gen) < 0.04).float()
    images, targets = images.to(device), targets.to(device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    cases = [Case(h, args, adj, images, targets, device) for h in args.heads]
    num_features = head_of(cases[0].model).in_features
    rows = []
    for mode in ("train", "infer"):
        step = {c.head: c.train_step if mode == "train" else c.infer_step for c in cases}
        for c in cases:
            c.model.train(mode == "train")
        mode_rows = {}
        for c in cases:  # the first call initialises (and compiles) outside the timings
            t0 = time.perf_counter()
            step[c.head]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first = time.perf_counter() - t0
            time_fn(step[c.head], repeats=1, warmup=max(args.warmup - 1, 0), device=device)
            c.calls[0] = 0
            mode_rows[c.head] = dict(first_call_s=first, times=[])
        for _ in range(args.repeats):  # interleaved rounds: one step of every head in turn
            for c in cases:
                mode_rows[c.head]["times"] += time_fn(step[c.head], 1, 0, device).times
        for c in cases:
            times = mode_rows[c.head].pop("times")
            row = _model_row(c, args, device, mode)
            row.update(mode_rows[c.head])
            row["ms"] = statistics.median(times) * 1e3
            row["ms_min"] = min(times) * 1e3
            row["images_per_s"] = args.batch_size / statistics.median(times)
            if mode == "infer" and c.head.layers:
                row["recomputes"] = c.calls[0]
            if args.memory:
                row["mem_mib"] = (c.base_bytes(mode) + peak_memory(step[c.head], device)) / MiB
            rows.append(row)
            print(
                f"{mode:5s} {c.head.name:18s} {row['ms']:9.2f} ms/step "
                f"{row['images_per_s']:9.1f} images/s  mem {row.get('mem_mib', 0):8.1f} MiB",
                flush=True,
            )
    del cases
    free_memory(device)
    add_overheads(rows)
    return rows, num_features


def _model_row(c: Case, args, device, mode: str) -> dict[str, Any]:
    return {
        "mode": mode, "head": c.head.name, "layers": c.head.layers,
        "compiled": c.head.compiled, "status": "ok", "params": count_parameters(c.model),
        "head_params": count_parameters(head_of(c.model)), "model": args.model,
        "img_size": args.img_size, "batch_size": args.batch_size,
        "num_labels": args.num_labels, "dtype": args.dtype,
        "channels_last": args.channels_last, "device": str(device),
        "threads": torch.get_num_threads(), "repeats": args.repeats, "warmup": args.warmup,
    }  # fmt: skip


def add_overheads(rows: list[dict]) -> None:
    """``vs_linear_pct``: change in images/s against the linear head (the issue's -4.8 %);
    ``time_overhead_pct``: extra step time in percent of the linear head's step."""
    linear = {r["mode"]: r for r in rows if r["layers"] == 0}
    for r in rows:
        ref = linear.get(r["mode"])
        if ref is None:
            continue
        r["vs_linear_pct"] = (r["images_per_s"] / ref["images_per_s"] - 1) * 100
        r["time_overhead_pct"] = (r["ms"] / ref["ms"] - 1) * 100


# Head-only rows ------------------------------------------------------------------------------


def run_heads(args, device: torch.device, adj: Tensor, dims: list[int]) -> list[dict]:
    rows = []
    for d in dims:
        gen = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.batch_size, d, generator=gen).to(device).requires_grad_()
        grad = torch.randn(args.batch_size, args.num_labels, generator=gen).to(device)
        for h in args.heads:
            row = measure_head(h, x, grad, adj, args, device)
            rows.append(row)
            print(
                f"head  {h.name:18s} D={d:<5d} classifiers fwd+bwd "
                f"{row.get('classifiers_fwd_bwd_ms', 0):8.3f} ms  train {row['train_ms']:8.3f} "
                f"ms  infer {row['infer_ms']:7.3f} ms",
                flush=True,
            )
            free_memory(device)
    return rows


def measure_head(h: Head, x: Tensor, grad: Tensor, adj: Tensor, args, device) -> dict:
    """Times one head on features ``x`` ``[B, D]``, with ``grad`` ``[B, N]`` for its output."""
    d = x.size(1)
    torch.manual_seed(args.seed)
    if h.layers == 0:
        head = nn.Linear(d, args.num_labels).to(device)
    else:
        hidden = (1024,) * (h.layers - 1)  # as create_model builds it
        head = MultiLabelHead(d, args.num_labels, adj, hidden_channels=hidden).to(device)
        if h.compiled:
            compile_classifiers(head, args.compile_mode)
    opt = torch.optim.Adam(head.parameters(), lr=1e-4)
    autocast = LoopConfig(device, resolve_amp(args.dtype, device)[0]).autocast
    row: dict[str, Any] = {
        "head": h.name, "layers": h.layers, "compiled": h.compiled, "in_features": d,
        "num_labels": args.num_labels, "batch_size": x.size(0), "dtype": args.dtype,
        "head_params": count_parameters(head), "device": str(device), "repeats": args.head_repeats,
    }  # fmt: skip

    def ms(fn: Callable[[], Any]) -> float:
        return time_fn(fn, args.head_repeats, max(2, args.warmup), device).median * 1e3

    def zero():
        opt.zero_grad(set_to_none=True)
        x.grad = None

    if h.layers:
        clf_grad = torch.randn(args.num_labels, d, device=device)

        def clf_fwd():
            with torch.no_grad(), autocast():
                head.classifiers()

        def clf_fwd_bwd():
            zero()
            with autocast():
                w = head.classifiers()
            w.backward(clf_grad.to(w.dtype))

        row["classifiers_fwd_ms"] = ms(clf_fwd)
        row["classifiers_fwd_bwd_ms"] = ms(clf_fwd_bwd)

    def fwd_bwd():  # the head's part of a training step, up to the optimiser
        zero()
        with autocast():
            logits = head(x)
        logits.backward(grad.to(logits.dtype))

    def infer():
        with torch.inference_mode(), autocast():
            head(x)

    head.train()
    row["head_fwd_bwd_ms"] = ms(fwd_bwd)
    fwd_bwd()  # leaves gradients for the optimiser step
    row["adam_ms"] = ms(opt.step)
    row["train_ms"] = row["head_fwd_bwd_ms"] + row["adam_ms"]
    head.eval()
    row["infer_ms"] = ms(infer)
    return row


def add_predictions(model_rows: list[dict], head_rows: list[dict], num_features: int) -> None:
    """The overhead the head-only timings predict: (ML-AGCN head - linear head) / linear step."""
    heads = {(r["head"], r["in_features"]): r for r in head_rows}
    linear_step = {r["mode"]: r["ms"] for r in model_rows if r["layers"] == 0}
    lin = heads.get(("linear", num_features))
    for r in model_rows:
        h = heads.get((r["head"], num_features))
        if lin is None or h is None or r["mode"] not in linear_step:
            continue
        key = "train_ms" if r["mode"] == "train" else "infer_ms"
        r["pred_overhead_pct"] = (h[key] - lin[key]) / linear_step[r["mode"]] * 100


# Outputs -------------------------------------------------------------------------------------


def write_markdown(model_rows, head_rows, args, env, path: Path) -> None:
    gpu = f", {env['gpu_name']}" if env["gpu_name"] else ""
    text = [
        "# Model benchmark\n",
        f"{env['date']} on {env['device']}{gpu} ({env['cpu_model']}, {env['cpu_count']} cores, "
        f"{env['torch_num_threads']} threads); torch {env['torch']}, PyG "
        f"{env['torch_geometric']}, timm {env['timm']}.\n",
        f"Command: `{env['command']}`\n",
    ]
    if model_rows:
        text += [
            f"## {args.model}, {args.img_size} px, batch {args.batch_size}, {args.num_labels} "
            f"labels, {args.dtype}, channels_last {args.channels_last}\n",
            f"Median of {args.repeats} interleaved rounds after {args.warmup} warm-up steps. "
            "vs linear = change in images/s against the linear head; overhead = extra step "
            "time in % of the linear head's step; pred = the overhead the head-only rows "
            "predict; recomputes = classifiers() calls during the timed inference runs (0: "
            "the eval cache served every batch); memory = parameters (+ Adam state for train) "
            "+ inputs + peak allocated during one step.\n",
            markdown_table(model_rows, *zip(*MODEL_TABLE, strict=True)),
        ]
    if head_rows:
        text += [
            f"## The head alone: {args.num_labels} labels, batch {args.batch_size}, {args.dtype}\n",
            f"Median of {args.head_repeats} runs. classifiers = the [N, D] classifiers from the "
            "graph layers (independent of the batch); train = head(x) forward+backward "
            "(gradient for x, as from a backbone) + Adam step on the head's parameters; infer "
            "= head(x) in eval mode under inference_mode (cached classifiers).\n",
            markdown_table(head_rows, *zip(*HEAD_TABLE, strict=True)),
        ]
    path.write_text("\n".join(text))


def main(argv: list[str] | None = None) -> Path:
    """Runs the benchmark with command-line ``argv``; returns the results folder."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as a training script would
    suffix = "-model" + ("-quick" if args.quick else "")
    out, env = start_results(args.out, device, "model.py", argv, suffix)

    adj = random_label_graph(args.num_labels, args.seed)
    model_rows: list[dict] = []
    dims = list(args.head_dims)
    if not args.head_only:
        model_rows, num_features = run_model(args, device, adj)
        if num_features not in dims:
            dims.append(num_features)
    head_rows = run_heads(args, device, adj, dims)
    if model_rows:
        add_predictions(model_rows, head_rows, num_features)

    finish_results(out, env)
    if model_rows:
        write_csv(model_rows, out / "model.csv", MODEL_COLUMNS)
    write_csv(head_rows, out / "head.csv", HEAD_COLUMNS)
    write_markdown(model_rows, head_rows, args, env, out / "model.md")
    print(f"results in {out}")
    return out


if __name__ == "__main__":
    main()
