"""Measures the sorted O(N log N) attention of ``agcn_pyg.nn.complete`` on its own.

Two questions, for N up to 10^6 (see ``benchmarks/NOTES.md``, "Label graphs of any size"):

* **Accuracy.** Float32 inputs against a float64 run on the same (float32-representable)
  inputs: the relative error of the output and of the gradients of h, s and t, with the
  cumulative sums in float32 buffers and in float64 buffers. Two measures: the norm-wise
  ``|a - b| / |b|`` and ``max |a - b| / max |b|``.
* **Memory and time.** The written-out backward (``_SortedAttention``, what the library uses)
  against the same algorithm left to autograd (``autograd_attention`` below): peak memory of
  forward+backward and median times.

Run from the repository root::

    python benchmarks/complete_attention.py --threads 1                  # CPU, N = 1e5, 1e6
    python benchmarks/complete_attention.py --device cuda                # a GPU
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    finish_results,
    free_memory,
    int_list,
    markdown_table,
    peak_memory,
    start_results,
    time_fn,
    write_csv,
)

from agcn_pyg.nn.complete import complete_attention  # noqa: E402

MiB = 2**20


def autograd_attention(h, s_dst, s_src, negative_slope=0.2):
    """The same sorted algorithm (every node with its self-loop) left to autograd: the
    reference for the memory the written-out backward saves. The row maxima only shift the
    exponents (the result does not depend on them), so they carry no gradient."""
    n, f = h.shape
    top = s_src.max().detach()
    m = F.leaky_relu(s_dst + top, negative_slope).detach()
    t_sorted, order = s_src.sort()
    split = torch.searchsorted(t_sorted.detach(), -s_dst.detach(), right=True)
    values = torch.cat([h, h.new_ones(n, 1)], dim=1).index_select(0, order)
    above = (values * torch.exp(t_sorted - top).unsqueeze(-1)).flip(0).cumsum(0)
    below = (values * torch.exp(negative_slope * (t_sorted - top)).unsqueeze(-1)).cumsum(0)
    zero = values.new_zeros(1, f + 1)
    above = torch.cat([zero, above]).index_select(0, n - split)
    below = torch.cat([zero, below]).index_select(0, split)
    below = below * torch.exp(negative_slope * (s_dst + top) - m).unsqueeze(-1)
    z = above[:, f] + below[:, f]
    return (above[:, :f] + below[:, :f] + h) / z.unsqueeze(-1)


def inputs(n, f, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=g)
    h = x @ (torch.randn(f, f, generator=g) / f**0.5)
    s_dst = 3 * x @ (torch.randn(f, generator=g) / f**0.5)  # scores spread over about +-15
    s_src = 3 * x @ (torch.randn(f, generator=g) / f**0.5)
    grad = torch.randn(n, f, generator=g)
    return [v.to(device) for v in (h, s_dst, s_src, grad)]


def run(fn, tensors, grad, dtype):
    args = [t.to(dtype).clone().requires_grad_() for t in tensors]
    out = fn(*args)
    out.backward(grad.to(dtype))
    return [out.detach().double()] + [a.grad.double() for a in args]


def accuracy_rows(n, f, device):
    h, s, t, grad = inputs(n, f, device)
    ref = run(lambda *a: complete_attention(*a), (h, s, t), grad, torch.float64)
    rows = []
    for acc in (torch.float32, torch.float64):
        fn = functools.partial(complete_attention, accumulate_dtype=acc)
        got = run(fn, (h, s, t), grad, torch.float32)
        row = {"n": n, "f": f, "accumulate": str(acc).replace("torch.", "")}
        for name, a, b in zip(("out", "grad_h", "grad_s", "grad_t"), got, ref, strict=True):
            row[f"{name}_rel"] = ((a - b).norm() / b.norm()).item()
            row[f"{name}_maxrel"] = ((a - b).abs().max() / b.abs().max()).item()
        rows.append(row)
        print(row, flush=True)
    del ref
    free_memory(device)
    return rows


def memory_rows(n, f, device, repeats, warmup):
    h, s, t, grad = inputs(n, f, device)
    rows = []
    for name, fn in (
        ("written-out backward", complete_attention),
        ("autograd", autograd_attention),
    ):
        args = [v.clone().requires_grad_() for v in (h, s, t)]

        def step(fn=fn, args=args):
            for a in args:
                a.grad = None
            fn(*args).backward(grad)

        def forward(fn=fn, args=args):
            with torch.no_grad():
                fn(*args)

        inputs_mib = sum(v.numel() * v.element_size() for v in (*args, grad)) / MiB
        row = {"n": n, "f": f, "backward": name, "inputs_mib": inputs_mib}
        row["fwd_ms"] = time_fn(forward, repeats, warmup, device).median * 1e3
        row["fwd_bwd_ms"] = time_fn(step, repeats, warmup, device).median * 1e3
        for a in args:
            a.grad = None
        row["fwd_bwd_peak_mib"] = peak_memory(step, device) / MiB
        rows.append(row)
        print(row, flush=True)
        free_memory(device)
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", type=int_list, default=[100_000, 1_000_000])
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out, env = start_results(args.out, device, "complete_attention.py", argv, "-complete")

    accuracy, memory = [], []
    for n in args.sizes:
        accuracy += accuracy_rows(n, args.channels, device)
        memory += memory_rows(n, args.channels, device, args.repeats, args.warmup)
    finish_results(out, env)
    write_csv(accuracy, out / "accuracy.csv", list(accuracy[0]))
    write_csv(memory, out / "memory.csv", list(memory[0]))
    text = [
        "# Sorted attention (agcn_pyg.nn.complete)\n",
        f"{env['date']} on {env['device']} ({env['cpu_model']}, {env['torch_num_threads']} "
        f"threads), torch {env['torch']}. Command: `{env['command']}`\n",
        "## Float32 against float64 (relative errors)\n",
        markdown_table(accuracy, list(accuracy[0])),
        "## Written-out backward against autograd (peak = allocated during forward+backward, "
        "inputs not included)\n",
        markdown_table(memory, list(memory[0])),
    ]
    (out / "complete.md").write_text("\n".join(text))
    print(f"results in {out}")
    return out


if __name__ == "__main__":
    main()
