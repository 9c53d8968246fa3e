"""Timing, memory and environment helpers shared by the benchmark scripts.

The whole API, for ``benchmarks/layers.py`` and ``benchmarks/model.py``:

* :func:`time_fn` — median wall time of a callable over ``repeats`` runs after ``warmup``
  runs; CUDA events on a GPU, :func:`time.perf_counter` on the CPU.
* :func:`peak_memory` — peak bytes a callable allocates on top of what was already live
  (``torch.cuda.max_memory_allocated`` on a GPU, the profiler's allocator events on the CPU).
* :func:`is_oom`, :func:`free_memory` — recognise an out-of-memory error and clean up, so that
  a benchmark can record "OOM" and go on.
* :func:`memory_budget` — bytes a case may plan to use (for skipping by estimate).
* :func:`env_info`, :func:`device_tag`, :func:`default_out_dir` — what ran where;
  :func:`start_results` / :func:`finish_results` — the results folder and its ``env.json``.
* :func:`write_csv`, :func:`markdown_table` — result tables from a list of dicts.
* :func:`int_list`, :func:`str_list` — argparse types for comma-separated flags;
  :func:`add_run_arguments` — the flags every benchmark takes (``--memory``, ``--quick``,
  ``--threads``, ``--out``, ``--seed``); :func:`parse_with_quick` — ``--quick``'s defaults.

Import it from a script in ``benchmarks/`` as ``from common import ...`` (the script's folder is
on ``sys.path``) or from the repository root as ``from benchmarks.common import ...``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class Timing(NamedTuple):
    """Per-run wall times in seconds, with their median (the number to report)."""

    median: float
    times: list[float]

    @property
    def min(self) -> float:
        return min(self.times)


def time_fn(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> Timing:
    """Runs ``fn`` ``warmup`` times untimed, then ``repeats`` times timed, one run at a time.

    On CUDA each run sits between two CUDA events and the stream is synchronised once at the end,
    so the time is the GPU's, not the launch time. On the CPU it is :func:`time.perf_counter`.

    ``torch.utils.benchmark.Timer`` is not used because its ``timeit(n)`` adds its own warm-up
    runs and returns one mean per call, and ``blocked_autorange`` picks its own run counts; a
    median of exactly ``repeats`` runs (a few runs of a multi-second CPU case) needs neither.
    """
    if repeats < 1:
        raise ValueError(f"'repeats' must be at least 1 (got {repeats})")
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = []
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), times)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Returns the peak number of bytes ``fn`` held allocated at once, over what was live before.

    Tensors alive before the call (inputs, parameters, optimiser state) are not counted; add
    their size yourself for a total. Gradients that ``fn`` creates are counted.

    * CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
      ``memory_allocated`` before the call (the caching allocator's reserve is not counted).
    * CPU: PyTorch keeps no allocator statistics for the CPU, so ``fn`` runs once under
      ``torch.profiler`` with ``profile_memory=True`` and the allocation and free events
      (``[memory]``, signed byte counts) are summed in time order; the answer is the highest
      running sum. It counts every tensor allocated through PyTorch's CPU allocator, including
      compiled kernels' buffers, and nothing else (no Python objects, no library workspaces).
      The profiler slows ``fn``, so call this apart from :func:`time_fn`.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cpu = torch.autograd.DeviceType.CPU
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == cpu
    ]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


_CPU_OOM = ("can't allocate memory", "not enough memory", "out of memory")


def is_oom(exc: BaseException) -> bool:
    """True for ``torch.OutOfMemoryError`` and for a CPU allocator failure (a ``RuntimeError``
    such as "DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in _CPU_OOM)


def free_memory(device: torch.device) -> None:
    """Collects garbage and, on CUDA, returns cached blocks, so the next case starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def memory_budget(device: torch.device, fraction: float = 0.8) -> int:
    """Bytes a case may plan to use: ``fraction`` of the GPU's total memory, or of the memory
    the operating system reports available (``MemAvailable``) on the CPU."""
    if device.type == "cuda":
        return int(fraction * torch.cuda.get_device_properties(device).total_memory)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(fraction * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return int(fraction * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info(device: torch.device) -> dict[str, Any]:
    """Machine and software versions for an ``env.json`` next to the results."""
    import timm
    import torch_geometric

    import agcn_pyg

    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        # Other processes on the machine distort CPU timings: 1, 5, 15-minute load averages.
        "load_average": os.getloadavg(),
        "gpu_name": None,
        "gpu_memory_gib": None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "torch_geometric": torch_geometric.__version__,
        "timm": timm.__version__,
        "agcn_pyg": agcn_pyg.__version__,
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_name"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def _git_commit() -> str | None:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it; on a copy
    without ``.git`` (the GPU machine) the ``AGCN_GIT_COMMIT`` variable, if set."""
    if os.environ.get("AGCN_GIT_COMMIT"):
        return os.environ["AGCN_GIT_COMMIT"]
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "agcn_pyg", "benchmarks"], cwd=root
        ).returncode
    except OSError:
        return None
    return (sha + ("+dirty" if dirty else "")) if sha else None


def device_tag(device: torch.device) -> str:
    """A short folder-friendly name for the device: ``cpu-2c``, ``cuda-nvidia-h100-80gb-hbm3``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{device.type}-{os.cpu_count()}c"


def default_out_dir(device: torch.device, suffix: str = "") -> Path:
    """``benchmarks/results/<YYYY-MM-DD>-<device tag><suffix>/``, or with ``-2``, ``-3``, ...
    appended when that folder exists: a run never overwrites earlier (committed) results."""
    base = RESULTS_DIR / f"{datetime.date.today().isoformat()}-{device_tag(device)}{suffix}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def write_csv(rows: Sequence[dict[str, Any]], path: Path, columns: Sequence[str]) -> None:
    """Writes ``rows`` (dicts) as CSV with the given column order; missing keys are empty."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in columns})


def markdown_table(
    rows: Iterable[dict[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None
) -> str:
    """Returns ``rows`` as a GitHub markdown table (numbers to 3 significant digits)."""
    headers = list(headers or columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k), digits=3) for k in columns) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any, digits: int | None = None) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if digits is None:
            return f"{value:.6g}"
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return str(value)


def int_list(text: str) -> list[int]:
    """``"80,500"`` -> ``[80, 500]``: an argparse type for comma-separated sizes."""
    return [int(v) for v in text.split(",") if v.strip()]


def str_list(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``: an argparse type for comma-separated names."""
    return [v.strip() for v in text.split(",") if v.strip()]


def add_run_arguments(p: argparse.ArgumentParser, quick_help: str, out_help: str) -> None:
    """Adds the flags every benchmark script takes to ``p``."""
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure peak memory (on the CPU through the profiler, one extra run)",
    )
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for CPU runs (default: torch's choice)",
    )
    p.add_argument("--out", type=Path, default=None, help=f"results folder (default: {out_help})")
    p.add_argument("--seed", type=int, default=0)


def parse_with_quick(
    p: argparse.ArgumentParser, argv: Sequence[str] | None, quick: dict[str, Any]
) -> argparse.Namespace:
    """Parses ``argv``; with ``--quick`` the defaults become ``quick`` first (flags given
    explicitly still win)."""
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**quick)
    return p.parse_args(argv)


def start_results(
    out: Path | None, device: torch.device, script: str, argv: Sequence[str], suffix: str = ""
) -> tuple[Path, dict[str, Any]]:
    """Creates the results folder (``out``, or a new :func:`default_out_dir`) and writes its
    ``env.json`` with the command line; returns the folder and the env dict."""
    out = out or default_out_dir(device, suffix)
    out.mkdir(parents=True, exist_ok=True)
    env = env_info(device)
    env["command"] = " ".join(["python", f"benchmarks/{script}", *argv])
    _write_env(out, env)
    return out, env


def finish_results(out: Path, env: dict[str, Any]) -> None:
    """Adds the load average at the end (how busy the machine was) to ``env.json``."""
    env["load_average_end"] = os.getloadavg()
    _write_env(out, env)


def _write_env(out: Path, env: dict[str, Any]) -> None:
    (out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
