"""What the command-line tools (``examples/predict.py``, ``plot_graph.py``, ``export.py``)
share: inputs checked before any work starts, and a bad input, a damaged file or a full disk
reported as one line on stderr with a non-zero exit status, never a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from agcn_pyg.models.pretrained import is_pretrained_folder
from agcn_pyg.train.checkpoint import load_checkpoint

__all__ = ["check_output_file", "check_output_folder", "read_checkpoint", "run"]


def run(main: Callable[[], int], prog: str) -> int:
    """Calls ``main()`` and returns its exit status; a :class:`ValueError` (bad input or
    file) becomes ``prog: error: ...`` and status 2, an :class:`OSError` (missing file, full
    disk, no permission) the same line and status 1 (2 for a missing file), Ctrl-C status
    130. Writes go through :func:`~agcn_pyg.io.atomic_write`, so after any of these
    the files that were there before are intact."""
    try:
        return main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except (ValueError, OSError) as e:
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr, flush=True)
        is_input = isinstance(e, (ValueError, FileNotFoundError, IsADirectoryError,
                                  NotADirectoryError))
        return 2 if is_input else 1


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if text else type(e).__name__


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any] | str:
    """A checkpoint file, read by :func:`~agcn_pyg.train.checkpoint.load_checkpoint` (an empty,
    truncated or foreign file is a one-line :class:`~agcn_pyg.train.checkpoint.CheckpointError`),
    or the path of a folder written by :func:`~agcn_pyg.save_pretrained`, which
    predict, plot_graph and export read themselves."""
    if os.path.isdir(path):
        if not is_pretrained_folder(path):
            raise ValueError(
                f"checkpoint '{os.fspath(path)}' is a folder without the config.json and "
                f"model.safetensors that save_pretrained writes"
            )
        return os.fspath(path)
    return load_checkpoint(path)


def check_output_file(path: str | os.PathLike, arg: str) -> str:
    """Checks, before any work, that a file can be written at ``path``: not a folder, and
    its folder either exists and is writable or can be created."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"'{arg}': '{path}' is a folder; expected a file name")
    _check_writable_folder(os.path.dirname(os.path.abspath(path)), arg, path)
    return path


def check_output_folder(path: str | os.PathLike, arg: str) -> str:
    """Checks, before any work, that ``path`` is (or can be created as) a writable folder."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"'{arg}': '{path}' is a file; expected a folder")
    _check_writable_folder(os.path.abspath(path), arg, path)
    return path


def _check_writable_folder(folder: str, arg: str, path: str) -> None:
    # The nearest existing ancestor decides: it must be a writable folder.
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"'{arg}': cannot create '{path}': '{existing}' is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"'{arg}': cannot write '{path}': folder '{existing}' is not writable")
