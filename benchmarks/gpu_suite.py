"""The whole GPU check in one command: the Triton kernels' checks first (issue 21), layer and
model benchmarks on both backends, CUDA tests, a short real training (AMP, channels_last, EMA,
the head as CUDA graphs, torchrun + NCCL, resume, predict, export), and a PASS/MISS summary of
the project's GPU targets.

GPU time comes in short slices, so every step runs under its own time limit inside one overall
``--budget-s``; the steps run most-important first, and whatever a step wrote before it was cut
off stays in the results folder. After every step ``summary.md`` / ``summary.json`` are rewritten,
so a run killed from outside still leaves a summary of what finished.

On a GPU machine (see ``benchmarks/gpu_suite.sh`` for the bare-machine set-up)::

    python benchmarks/gpu_suite.py --archive $OUT/gpu-suite.tar.gz

On the CPU, the same steps at toy sizes (the test suite runs this)::

    python benchmarks/gpu_suite.py --quick --out /tmp/gpu-suite-quick
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, start_results  # noqa: E402
from gpu_targets import check_targets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass
class Step:
    """One command of the suite. ``limit_s`` caps it; ``needs`` names a step that must pass."""

    name: str
    argv: list[str]
    limit_s: float
    needs: str | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class StepResult:
    name: str
    status: str  # ok | failed (rc N) | timeout | skipped (...)
    seconds: float
    log: str
    command: str


# Steps ---------------------------------------------------------------------------------------


def kernel_steps(a: argparse.Namespace, out: Path) -> list[Step]:
    """Issue 21's kernels first: their tests on CUDA tensors (``pytest -m triton``: against
    float64 eq. 3-7, op counts, torch.compile), then each path's kernels against its PyTorch
    path (fwd+bwd, fp32 and bf16) and training steps under sync-debug mode "error"
    (``kernel_checks.py``). --quick: the checks alone, tiny, under Triton's interpreter (the
    tests run in CI)."""
    checks = [PY, "benchmarks/kernel_checks.py", "--device", a.device,
              "--out", str(out / "kernels")]
    if a.quick:
        return [Step("kernel-checks", [*checks, "--quick"], 90, env={"TRITON_INTERPRET": "1"})]
    junit = out / "tests" / "junit-kernels.xml"
    tests = [PY, "-m", "pytest", "-q", "-m", "triton", "-p", "no:cacheprovider",
             f"--junitxml={junit}", "tests"]
    return [Step("kernel-tests", tests, 90), Step("kernel-checks", checks, 60)]


def backend_steps(a: argparse.Namespace, out: Path) -> list[Step]:
    """The same layers with AGCN_KERNELS=torch (the PyTorch path) next to the default run's
    Triton kernels, and the dense path's two ways to B on the kernels (the [N, N] fused kernel
    against the sorted one): the GPU crossover for ``sorted_min_nodes``."""
    if a.quick:
        return []
    short = ["--repeats", "10", "--warmup", "3"]  # (the later flags win)
    torch_run = [*_layers_base(a), *short, "--dtype", "fp32", "--no-compile", "--shapes",
                 "hidden,sparse", "--out", str(out / "layers-fp32-torch")]
    crossover = [*_layers_base(a), *short, "--dtype", "fp32", "--no-compile", "--shapes", "hidden",
                 "--sizes", "2000,10000,20000", "--layers",
                 "agcn_dense_softmax,agcn_dense_sorted,dense_gat",
                 "--out", str(out / "layers-crossover")]
    return [Step("layers-fp32-torch", torch_run, 90, env={"AGCN_KERNELS": "torch"}),
            Step("layers-crossover", crossover, 90)]


def test_steps(a: argparse.Namespace, out: Path) -> list[Step]:
    junit = out / "tests" / "junit.xml"
    return [Step("cuda-tests", [PY, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                                f"--junitxml={junit}", "tests"], a.limit("tests", 90, 120))]


def layer_steps(a: argparse.Namespace, out: Path) -> list[Step]:
    """fp32, every layer and case: the README's table (on a GPU the Triton kernels: the default
    backend on CUDA); then bf16 of the dense and edge cases (issue 21's bar)."""
    fp32 = Step("layers-fp32", [*_layers_base(a), "--dtype", "fp32", "--no-compile",
                                "--out", str(out / "layers-fp32")], a.limit("layers", 90, 120))
    if a.quick:
        return [fp32]
    bf16 = Step("layers-bf16", [*_layers_base(a), "--dtype", "bf16", "--no-compile", "--shapes",
                                "hidden,sparse", "--out", str(out / "layers-bf16")], 90)
    # The complete path's bar: N = 10^4 against DenseGATConv, N = 10^6 time and memory.
    scale_bar = Step("layers-scale-bar", [*_layers_base(a), "--dtype", "fp32", "--no-compile",
                                          "--shapes", "scale", "--scale-sizes", "10000,1000000",
                                          "--layers", "agcn_complete,dense_gat",
                                          "--out", str(out / "layers-scale-bar")], 90)
    return [fp32, bf16, scale_bar]


def scale_steps(a: argparse.Namespace, out: Path) -> list[Step]:
    """The complete-graph ``scale`` sweep, N = 80 ... 10^6 with a sparse A (fp32); issue 9's bar
    measured on the GPU (``complete_bar.py``: float32 against float64 with CUDA's float64 sums);
    the complete path compiled and as CUDA graphs where it is launch-bound (N = 10 000)."""
    if a.quick:  # layers.py --quick already covers its plumbing
        return []
    base = [*_layers_base(a), "--dtype", "fp32", "--shapes", "scale"]
    graphs = "agcn_complete,agcn_complete_compile,agcn_complete_cudagraph,dense_gat"
    bar = [PY, "benchmarks/complete_bar.py", "--device", a.device,
           "--out", str(out / "complete-bar")]
    return [Step("layers-scale", [*base, "--out", str(out / "layers-scale")], 180),
            Step("complete-bar", bar, 120),
            # N = 10 000 only: each compiled case compiles afresh (about a minute each).
            Step("layers-scale-graphs", [*base, "--compile", "--scale-sizes", "10000",
                                         "--layers", graphs,
                                         "--out", str(out / "layers-scale-graphs")], 180)]


def layer_extra_steps(a: argparse.Namespace, out: Path) -> list[Step]:
    """The compiled dense layer (the launch-bound N = 80 target), then bf16 and tf32."""
    if a.quick:  # compiling and more dtypes cost CPU minutes and prove no more plumbing
        return []
    steps = [Step("layers-compile", [*_layers_base(a), "--dtype", "fp32", "--compile",
                                     "--shapes", "hidden", "--layers",
                                     "agcn_dense,agcn_dense_compile,dense_gat",
                                     "--out", str(out / "layers-compile")], 150)]
    for dtype in ("tf32",):  # (bf16: in the layers part)
        steps.append(Step(f"layers-{dtype}", [*_layers_base(a), "--dtype", dtype, "--no-compile",
                                              "--out", str(out / f"layers-{dtype}")], 90))
    return steps


def _layers_base(a: argparse.Namespace) -> list[str]:
    base = [PY, "benchmarks/layers.py", "--device", a.device, "--repeats", str(a.repeats),
            "--warmup", str(a.warmup)]
    return [*base, "--quick", "--threads", "1"] if a.quick else base


def model_steps(a: argparse.Namespace, out: Path) -> list[Step]:
    argv = [PY, "benchmarks/model.py", "--device", a.device, "--out", str(out / "model")]
    if a.quick:  # the training step below compiles the head once; that proves the flag
        argv += ["--quick", "--repeats", "2", "--warmup", "1", "--head-repeats", "3",
                 "--no-memory"]
    else:
        # The compiled rows as coco_train.py trains by default on a GPU: CUDA graphs.
        argv += ["--compile-head", "--compile-mode", "reduce-overhead", "--repeats", "15",
                 "--warmup", "5"]
    return [Step("model", argv, a.limit("model", 120, 180))]


def cudagraph_steps(a: argparse.Namespace, out: Path) -> list[Step]:
    """CUDA graphs (torch.compile mode "reduce-overhead") where launches dominate: the head's
    classifiers in a training step, and the dense layer at small N."""
    if a.quick:  # CUDA graphs need a GPU; on the CPU this mode only compiles
        return []
    model = [PY, "benchmarks/model.py", "--device", a.device, "--compile-head", "--compile-mode",
             "reduce-overhead", "--layers", "linear,1,2", "--repeats", "10", "--warmup", "3",
             "--out", str(out / "model-cudagraphs")]
    layers = [*_layers_base(a), "--dtype", "fp32", "--compile", "--shapes", "hidden", "--sizes",
              "80,500,2000", "--layers", "agcn_dense,agcn_dense_cudagraph,dense_gat",
              "--out", str(out / "layers-cudagraphs")]
    return [Step("model-cudagraphs", model, 150), Step("layers-cudagraphs", layers, 120)]


def profile_steps(a: argparse.Namespace, out: Path) -> list[Step]:
    """Kernel counts and top kernels of one forward+backward (for the analysis of misses)."""
    sizes = "16" if a.quick else "80,500,10000"
    argv = [PY, "benchmarks/profile_layers.py", "--device", a.device, "--sizes", sizes,
            "--out", str(out / "profile")]
    quick = ["--hidden", "8,8", "--sparse-sizes", "200", "--sparse-channels", "8,8"]
    return [Step("profile", [*argv, *(quick if a.quick else [])], 90)]


def train_steps(a: argparse.Namespace, out: Path) -> list[Step]:
    """A short real run, then torchrun (NCCL on CUDA, gloo on the CPU) for one epoch, its
    resume, and predict + export of the result. Run folders live in ``a.scratch`` (checkpoints
    are large); their logs and plots are copied into the results folder afterwards."""
    s = a.scratch
    train = [PY, "examples/coco_train.py", "--device", a.device, "--no-progress", "--seed", "0"]
    if a.quick:
        size = ["--demo-train", "24", "--demo-val", "8", "--demo-labels", "4", "--model",
                "resnet10t", "--img-size", "32", "--batch-size", "8", "--workers", "0",
                "--amp", "off", "--hidden", "16", "--log-interval", "1"]
    else:
        size = ["--demo-train", "1536", "--demo-val", "256", "--demo-labels", "20", "--model",
                "tresnet_m", "--img-size", "224", "--batch-size", "64", "--workers", "8",
                "--amp", "bf16", "--channels-last", "--log-interval", "8"]
    # On a GPU coco_train.py captures the head as CUDA graphs by default (one process); the
    # CPU run leaves it eager (the default there too).
    single = [*train, *size, "--epochs", "2", "--ema-decay", "0.99",
              "--output", str(s / "single")]
    torchrun = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                "examples/coco_train.py", "--device", a.device, "--no-progress", "--seed", "0"]
    ddp = [*torchrun, *size, "--epochs", "1", "--sched-epochs", "2", "--ema-decay", "0.99",
           "--output", str(s / "ddp")]
    resume = [*torchrun, "--resume", str(s / "ddp" / "last.pth"), "--epochs", "2",
              "--workers", size[size.index("--workers") + 1]]
    val_images = s / "ddp" / "data" / "val2017"
    predict = [PY, "examples/predict.py", str(s / "ddp" / "best.pth"), str(val_images),
               "--device", a.device, "--quiet", "--json", str(out / "train" / "predict.json")]
    export = [PY, "examples/export.py", str(s / "ddp" / "best.pth"), str(s / "model.pt2")]
    lim = a.limit("train", 60, 120)
    return [Step("train-amp-ema-compile", single, lim),
            Step("train-torchrun", ddp, lim),
            Step("train-resume", resume, lim, needs="train-torchrun"),
            Step("predict", predict, 60, needs="train-resume"),
            Step("export", export, 90, needs="train-resume")]


# Running ------------------------------------------------------------------------------------


def run_step(step: Step, out: Path, deadline: float, done: dict[str, StepResult]) -> StepResult:
    log = out / "logs" / f"{step.name}.log"
    command = " ".join("python" if arg == PY else arg for arg in step.argv)  # no machine path
    left = deadline - time.monotonic()
    if step.needs and done.get(step.needs, None) and done[step.needs].status != "ok":
        return StepResult(step.name, f"skipped ({step.needs} did not pass)", 0.0, "", command)
    if left < 5:
        return StepResult(step.name, "skipped (suite budget spent)", 0.0, "", command)
    limit = min(step.limit_s, left)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}
    start = time.monotonic()
    with open(log, "w") as f:
        f.write(f"$ {command}\n")
        f.flush()
        # A new session so that a timeout kills the step's children too (torchrun, workers).
        proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
            status = "ok" if rc == 0 else f"failed (rc {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            status = f"timeout ({limit:.0f} s)"
    return StepResult(step.name, status, time.monotonic() - start, str(log.relative_to(out)),
                      command)


class _Parsed(Exception):
    pass


def check_arguments(step: Step) -> str:
    """Parses ``step``'s command line with its script's own argparse parser, without running
    the script: ``ok`` or the parser's error. (``--dry-run``: proves the GPU plan's flags still
    exist after a refactor, in seconds.)"""
    argv = list(step.argv[1:])
    if argv[:2] == ["-m", "torch.distributed.run"]:
        argv = [a for a in argv[2:] if not a.startswith("--standalone")
                and not a.startswith("--nproc_per_node")]
    if argv[:1] == ["-m"]:
        return "ok (module, not checked)"
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop
    saved = list(sys.argv)
    sys.argv = [str(ROOT / argv[0]), *argv[1:]]
    try:
        runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
        return "error: the script ran past its argument parsing"
    except _Parsed:
        return "ok"
    except SystemExit as e:
        return f"error: argument parsing exited with {e.code}"
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = saved


def collect_train_outputs(scratch: Path, out: Path) -> None:
    """Copies the small files of the training runs (logs, plots, summaries) into ``out``."""
    for run in ("single", "ddp"):
        src = scratch / run
        if not src.is_dir():
            continue
        dst = out / "train" / run
        dst.mkdir(parents=True, exist_ok=True)
        for p in src.iterdir():
            if p.is_file() and p.suffix in {".jsonl", ".csv", ".png", ".yaml", ".json", ".md"}:
                shutil.copy2(p, dst / p.name)
    exported = scratch / "model.pt2"
    if exported.exists():
        (out / "train").mkdir(exist_ok=True)
        (out / "train" / "export.txt").write_text(f"model.pt2: {exported.stat().st_size} bytes\n")


def write_summary(out: Path, env: dict, results: list[StepResult], targets: list[dict]) -> str:
    """``summary.md`` (steps, targets) and ``summary.json``; returns the markdown."""
    md = [f"# GPU suite: {env.get('gpu_name') or env['device']}", "",
          f"{env['date']}; torch {env['torch']}, CUDA {env['cuda']}, PyG "
          f"{env['torch_geometric']}, timm {env['timm']}; commit {env['git_commit']}; "
          f"set-up {env.get('setup_seconds', '?')} s.", "", "## Steps", "",
          markdown_table([asdict(r) for r in results], ["name", "status", "seconds", "log"]),
          "## Targets", "",
          markdown_table(targets, ["target", "case", "value", "bar", "result"])]
    text = "\n".join(md)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(
        {"env": env, "steps": [asdict(r) for r in results], "targets": targets}, indent=2))
    return text


def pack(out: Path, archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(out, arcname=out.name)


# Arguments and main --------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda (cpu with --quick)")
    p.add_argument("--quick", action="store_true", help="toy sizes on the CPU: proves the suite")
    p.add_argument("--budget-s", type=float, default=480,
                   help="the whole suite's time limit in seconds (default: 480)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"which parts, in this order (default: {','.join(PARTS)})")
    p.add_argument("--repeats", type=int, default=20, help="layer benchmark timed runs")
    p.add_argument("--warmup", type=int, default=5, help="layer benchmark warm-up runs")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default: benchmarks/results/<date>-<device>-gpu-suite)")
    p.add_argument("--scratch", type=Path, default=None,
                   help="folder for training runs and checkpoints (default: <tmp>/agcn-gpu-suite)")
    p.add_argument("--archive", type=Path, default=None, help="also pack the results as .tar.gz")
    p.add_argument("--dry-run", action="store_true",
                   help="only check every step's command line against its script's parser")
    p.add_argument("--setup-seconds", type=float, default=None,
                   help="time the machine's set-up took (gpu_suite.sh passes it; recorded)")
    a = p.parse_args(argv)
    a.device = a.device or ("cpu" if a.quick else "cuda")
    if a.device.startswith("cuda") and not torch.cuda.is_available() and not a.dry_run:
        p.error("--device cuda but CUDA is not available (use --quick on the CPU)")
    if a.quick:
        a.repeats, a.warmup = min(a.repeats, 3), min(a.warmup, 1)
    a.scratch = a.scratch or Path(os.environ.get("TMPDIR", "/tmp")) / "agcn-gpu-suite"

    def limit(part: str, quick_s: float, gpu_s: float) -> float:
        return quick_s if a.quick else gpu_s

    a.limit = limit
    return a


# The order of a default run: what the README's tables need first, extras last.
PARTS = {"kernels": kernel_steps, "layers": layer_steps, "model": model_steps,
         "backends": backend_steps, "scale": scale_steps, "tests": test_steps,
         "train": train_steps,
         "cudagraphs": cudagraph_steps, "profile": profile_steps,
         "layers-extra": layer_extra_steps}


def dry_run(a: argparse.Namespace) -> int:
    out = a.out or Path(os.environ.get("TMPDIR", "/tmp")) / "agcn-gpu-suite-dry-run"
    bad = 0
    for part in a.parts.split(","):
        for step in PARTS[part](a, out):
            status = check_arguments(step)
            bad += not status.startswith("ok")
            print(f"[gpu-suite] {step.name:24s} {status}\n    {' '.join(step.argv)}", flush=True)
    return 1 if bad else 0


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.dry_run:
        return dry_run(a)
    deadline = time.monotonic() + a.budget_s
    device = torch.device(a.device)
    out, env = start_results(a.out, device, "gpu_suite.py", sys.argv[1:] if argv is None else argv,
                             suffix="-gpu-suite" + ("-quick" if a.quick else ""))
    env["setup_seconds"] = a.setup_seconds
    (out / "logs").mkdir(exist_ok=True)
    (out / "tests").mkdir(exist_ok=True)
    (out / "train").mkdir(exist_ok=True)
    shutil.rmtree(a.scratch, ignore_errors=True)
    a.scratch.mkdir(parents=True)

    # The steps run in ROOT: results under it are named relative to it, so the commands that
    # env.json and the logs record hold no path of the machine that ran them.
    steps_out = out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out
    results: dict[str, StepResult] = {}
    for part in a.parts.split(","):
        for step in PARTS[part](a, steps_out):
            r = run_step(step, out, deadline, results)
            results[r.name] = r
            print(f"[gpu-suite] {r.name:24s} {r.status:28s} {r.seconds:7.1f} s", flush=True)
            if part == "train":
                collect_train_outputs(a.scratch, out)
            write_summary(out, env, list(results.values()), check_targets(out))
    text = write_summary(out, env, list(results.values()), check_targets(out))
    print(text, flush=True)
    if a.archive:
        pack(out, a.archive)
        print(f"[gpu-suite] packed {out} into {a.archive}")
    failed = [r for r in results.values() if r.status != "ok" and not r.status.startswith("skip")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
