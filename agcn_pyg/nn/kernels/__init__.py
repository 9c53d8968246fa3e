"""Fused Triton kernels for the three paths of :class:`~agcn_pyg.nn.AdaptiveGCNConv`.

One module a path (``edge``, ``dense``, ``complete``), each a ``torch.library`` custom op
with autograd and fake implementations, so ``torch.compile`` traces it without a break and
CUDA graphs capture it. The PyTorch code in :mod:`agcn_pyg.nn.conv` stays the reference and
the CPU path; :func:`use_triton` decides which one a call takes.
"""

from __future__ import annotations

import os

import torch

BACKEND_ENV = "AGCN_KERNELS"
BACKENDS = ("torch", "triton")


def _triton_imports() -> bool:
    try:
        import triton  # noqa: F401  (PyG imports it too: no extra import time)
    except ImportError:
        return False
    return True


# Decided once, at import: a module constant torch.compile reads as one (a cached function
# would be a call it warns about and may break the graph at).
_TRITON_AVAILABLE = _triton_imports()


def triton_available() -> bool:
    """Whether Triton imports (it ships with torch's CUDA builds); checked at import."""
    return _TRITON_AVAILABLE


def interpreting() -> bool:
    """``TRITON_INTERPRET=1``: Triton runs its kernels on CPU tensors (slow; how CI tests them)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def forced_backend() -> str | None:
    """``AGCN_KERNELS=torch|triton`` forces a backend; unset lets :func:`use_triton` choose."""
    value = os.environ.get(BACKEND_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {BACKENDS} or unset, got {value!r}")
    return value


def use_triton(x: torch.Tensor) -> bool:
    """True when a call on ``x`` should take the Triton kernels: CUDA tensors with Triton
    importable, or any tensor with ``AGCN_KERNELS=triton`` (on CPU tensors that needs
    ``TRITON_INTERPRET=1``). ``AGCN_KERNELS=torch`` always takes the PyTorch path."""
    backend = forced_backend()
    if backend == "torch":
        return False
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(f"{BACKEND_ENV}=triton but Triton does not import")
        if not x.is_cuda and not interpreting():
            raise RuntimeError(f"{BACKEND_ENV}=triton on {x.device} tensors needs "
                               "TRITON_INTERPRET=1 (Triton's interpreter runs on the CPU)")
        return True
    return x.is_cuda and triton_available()
