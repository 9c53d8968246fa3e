"""Files at the byte level, for every other module: atomic writes and weights-only tensor files.

The ground floor of the package: it imports nothing of agcn_pyg, and every format owner (the
checkpoint, the label-graph cache, ``save_pretrained`` folders, logs, plots) writes through
:func:`atomic_write`, so a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from typing import IO, Any

import torch

__all__ = ["TEMP_PREFIX", "atomic_write", "load_tensors", "os_error_behind"]

#: Prefix of :func:`atomic_write`'s temporary files (a crash may leave one behind).
TEMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary file in ``path``'s folder; on a clean exit flushes it to disk and
    renames it over ``path``, so a crash leaves the old file or the new one, never half of
    one. The file gets the mode a plain ``open`` would give it (mkstemp's is 0600)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1], dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def os_error_behind(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (torch.save wraps a failed write in a RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def load_tensors(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(..., weights_only=True)``: no code in the file runs. Sparse tensors (a
    sparse label graph) are checked on the way in; torch's note that it does so is dropped."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Validating sparse tensor invariants")
        return torch.load(path, map_location=map_location, weights_only=True)
