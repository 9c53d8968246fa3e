"""Seeds and RNG states: a run is a deterministic function of ``(seed, epoch)``.

* the process RNGs (dropout, drop-path) are reseeded at the start of each epoch from
  ``derive_seed(seed, epoch, rank, skip)``;
* the augmentation of each image is seeded on its own (:mod:`agcn_pyg.train.loaders`).

:func:`capture_rng_state` returns plain data (tensors, ints, floats, strings), so that the
states travel in a checkpoint that ``torch.load(..., weights_only=True)`` reads.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "derive_seed", "restore_rng_state", "seed_everything"]


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from a tuple of non-negative integers (NumPy's
    :class:`~numpy.random.SeedSequence`): nearby keys give unrelated streams."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's (CPU and every CUDA device) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of Python, NumPy, torch and CUDA (``None`` without CUDA), as
    plain data: Python's as a list, NumPy's as its dict form with the key as a tensor."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restores what :func:`capture_rng_state` captured. CUDA states are restored only when
    the device count matches (a checkpoint moved to another machine keeps going)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"], "gauss": n["gauss"],
    })
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.as_tensor(s).cpu() for s in cuda])
        else:
            warnings.warn(
                f"checkpoint holds CUDA RNG states of {len(cuda)} devices, this machine has "
                f"{torch.cuda.device_count()}: CUDA RNGs not restored",
                stacklevel=2,
            )
