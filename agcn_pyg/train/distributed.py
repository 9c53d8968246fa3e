"""Process-group setup from ``torchrun``'s environment and small rank helpers.

``torchrun --nproc_per_node=G`` (and its multi-node form) exports ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and
starts the default process group (NCCL on CUDA, gloo on CPU) — also for a single process
(``--nproc_per_node=1``), so a one-GPU ``torchrun`` exercises DDP and NCCL as a larger job
would. Without them everything runs as a single process and every helper below degrades
to the obvious single-rank answer, so a script can call them unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_gather_object",
    "all_gather_rows",
    "all_reduce_max",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main",
    "on_main",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: global ``rank``, ``local_rank`` on its node,
    ``world_size`` and the ``device`` it computes on."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    launched: bool = False  # started by torchrun: a process group exists, even of one

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.launched


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(device: str | None = None) -> DistInfo:
    """Starts the process group when launched by ``torchrun`` and picks the device.

    Args:
        device (str, optional): ``"cuda"``, ``"cpu"`` or ``None`` (CUDA when available).
            Under ``torchrun`` on CUDA, each process takes GPU ``LOCAL_RANK``.

    Returns:
        DistInfo: this process's rank, local rank, world size and device.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev_type = torch.device(device).type
    if dev_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("'--device cuda' was requested but CUDA is not available")

    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)

    if dev_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} has no GPU: this node has "
                f"{torch.cuda.device_count()}; is --nproc_per_node larger than the GPU count?"
            )
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device(dev_type)

    # torchrun sets RANK and WORLD_SIZE; a process group of one is still a real one (DDP, NCCL).
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if launched and not dist.is_initialized():
        backend = "nccl" if dev_type == "cuda" else "gloo"
        kwargs = {"device_id": torch_device} if dev_type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(rank, local_rank, world_size, torch_device, launched)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that prints and writes files (global rank 0)."""
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sums a few Python floats over all ranks (float64, one collective)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: float) -> float:
    """The largest ``value`` over all ranks (e.g. a "stop now" flag one rank received)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``x`` (``[n_rank, ...]``, ``n_rank`` may differ between ranks)
    concatenated in rank order, on the CPU; ``x`` itself without a process group."""
    if not is_distributed():
        return x.cpu()
    device = _collective_device()
    x = x.to(device)
    # all_gather needs equal shapes: pad every rank's rows to the largest count, then trim.
    n = torch.tensor([x.size(0)], device=device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    max_n = int(max(s.item() for s in sizes))
    padded = x.new_zeros((max_n, *x.shape[1:]))
    padded[: x.size(0)] = x
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes, strict=True)]).cpu()


def all_gather_object(obj):
    """Every rank's ``obj`` in rank order (a one-element list without a process group)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn, *args, **kwargs):
    """Runs ``fn(*args, **kwargs)`` on rank 0 only (a file write, a check of the output
    folder) and returns its result there (``None`` elsewhere). A :class:`ValueError` or
    :class:`OSError` it raises is raised on every rank, with the same message, so that
    all ranks stop together instead of waiting for rank 0 in the next collective."""
    result, error = None, None
    if get_rank() == 0:
        try:
            result = fn(*args, **kwargs)
        except (ValueError, OSError) as e:
            error = e
    if is_distributed():
        failed = all_gather_object(None if error is None else (type(error), str(error)))[0]
        if failed is not None and error is None:
            kind, message = failed
            error = kind(message)
    if error is not None:
        raise error
    return result


def cleanup() -> None:
    """Destroys the process group, if any (call once at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
