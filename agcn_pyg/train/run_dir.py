"""The run folder (``--output``) and what it guarantees: nothing of a run is lost or
silently wrong.

* one run at a time: a run holds an OS lock on the folder (:meth:`RunFolder.lock`, an
  ``fcntl.flock`` on ``.lock`` that dies with its process, so a killed run leaves no stale
  lock); a second run on the same folder stops before it touches anything. Under
  ``torchrun`` rank 0 takes it (the only rank that writes) and its refusal stops every
  rank (:func:`~agcn_pyg.train.distributed.on_main`);
* an ``--output`` that is a file, lies under a file or on a read-only disk is one line
  (:meth:`RunFolder.check_writable`);
* a folder that holds a run is never overwritten by a plain re-run (:meth:`RunFolder.claim`:
  resume it, choose another folder, or say ``overwrite``);
* temporary files that a killed write left behind are removed (:meth:`~RunFolder.
  remove_stale_temps`);
* ``best.pth`` agrees with the best epoch recorded in ``last.pth``, or is rebuilt
  (:meth:`~RunFolder.repair_best`);
* there is room for the checkpoints before the first epoch (:meth:`~RunFolder.
  check_free_space`);
* the resolved configuration is kept as ``config.yaml`` (:meth:`~RunFolder.save_config`),
  a checkpoint's evaluation as ``eval.json`` (:meth:`~RunFolder.save_eval`).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import socket
from collections.abc import Callable, Mapping
from typing import Any

from agcn_pyg.io import TEMP_PREFIX, atomic_write
from agcn_pyg.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    weights_checkpoint,
)

try:
    import fcntl
except ImportError:  # Windows: run folders are not locked there
    fcntl = None

__all__ = ["RunFolder", "RunFolderError"]

#: What a run writes besides ``checkpoint-<epoch>.pth``, ``tensorboard/`` and ``data/``.
RUN_FILES = ("last.pth", "best.pth", "log.jsonl", "summary.csv", "config.yaml", "loss.png",
             "map.png")


#: The lock file of a run folder (:meth:`RunFolder.lock`).
LOCK_NAME = ".lock"

# Lock descriptors this process holds: a forked child (a DataLoader worker) closes its
# copies, so that the lock dies with the process that took it and not with its last worker.
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        try:
            os.close(fd)  # the child's copy only: the parent keeps its lock
        except OSError:
            pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class RunFolderError(ValueError):
    """The run folder cannot be used as asked; the message says what to do instead."""


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its id yet"


def _why_not_writable(folder: str) -> str:
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "a read-only file system"
    except OSError:
        pass
    return "no write permission"


class RunFolder:
    """A run's output folder; ``last``, ``best``, ``log`` are the paths of its files."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.last = os.path.join(self.path, "last.pth")
        self.best = os.path.join(self.path, "best.pth")
        self.log = os.path.join(self.path, "log.jsonl")
        self.lock_path = os.path.join(self.path, LOCK_NAME)
        self._lock_fd: int | None = None
        self._created: str | None = None  # the outermost folder lock() created

    def check_writable(self) -> None:
        """Raises a one-line :class:`RunFolderError` when the folder is a file, would lie
        under a file, or cannot be written (no permission, a read-only disk), before any
        work is done."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunFolderError(f"--output '{self.path}' is a file; choose a folder")
        existing = os.path.abspath(self.path)
        while not os.path.exists(existing):  # the nearest existing ancestor decides
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise RunFolderError(f"--output '{self.path}' cannot be created: '{existing}' "
                                 f"is a file; choose another --output")
        if not os.access(existing, os.W_OK | os.X_OK):  # EROFS counts, even for root
            raise RunFolderError(f"--output '{self.path}': folder '{existing}' is not "
                                 f"writable ({_why_not_writable(existing)}); choose "
                                 f"another --output")

    def lock(self) -> None:
        """Takes the folder for this process: creates it (when missing) and holds an
        exclusive ``fcntl.flock`` on its ``.lock`` file until :meth:`unlock` or the end of
        the process (a ``kill -9`` included: the kernel drops the lock, so none is ever
        stale). Call it before anything is read from or written to the folder.

        Raises:
            RunFolderError: another process holds the folder (the message names it), or
                the folder cannot be created or written (:meth:`check_writable`).
        """
        self.check_writable()
        created, parent = None, os.path.abspath(self.path)
        while not os.path.exists(parent):
            created, parent = parent, os.path.dirname(parent)
        for _ in range(10):  # again only if the holder removed the file as we opened it
            fd = self._open_locked()
            try:
                if os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        else:
            raise RunFolderError(f"--output '{self.path}': cannot lock '{self.lock_path}'")
        self._lock_fd, self._created = fd, created
        _HELD_LOCKS.add(fd)
        try:  # who holds it, for the message a second run prints
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError as e:  # a full disk
            self.unlock()
            raise RunFolderError(f"--output '{self.path}': cannot write '{self.lock_path}' "
                                 f"({e.strerror or e}); free some space or choose another "
                                 f"--output") from None

    def _open_locked(self) -> int:
        """Creates the folder and the lock file; returns the file's descriptor, locked."""
        try:
            os.makedirs(self.path, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RunFolderError(f"--output '{self.path}': cannot create '{self.lock_path}' "
                                 f"({e.strerror or e}); choose another --output") from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise RunFolderError(f"--output '{self.path}': cannot lock '{self.lock_path}' "
                                     f"({e.strerror}); choose an --output on a file system "
                                     f"with locks") from None
            raise RunFolderError(f"--output '{self.path}' is in use by another run "
                                 f"({holder}); wait for it to end, or choose another "
                                 f"--output") from None

    def unlock(self) -> None:
        """Releases :meth:`lock` (a no-op when not held); removes the lock file, and the
        folders :meth:`lock` created when nothing else was written there (a run that
        stopped at a bad flag leaves no empty ``runs/<timestamp>``)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        _HELD_LOCKS.discard(fd)
        try:
            os.remove(self.lock_path)  # while still held: a waiter re-checks the inode
        except OSError:
            pass
        os.close(fd)
        folder, top = os.path.abspath(self.path), self._created
        while top is not None and folder.startswith(top):
            try:
                os.rmdir(folder)  # only if empty
            except OSError:
                break
            folder = os.path.dirname(folder)

    def hist_path(self, epoch: int) -> str:
        """Where ``--checkpoint-hist`` keeps the weights of epoch ``epoch``."""
        return os.path.join(self.path, f"checkpoint-{epoch}.pth")

    def describe_run(self) -> str | None:
        """What run the folder holds (``None``: no started run)."""
        found = [f for f in ("last.pth", "best.pth") if os.path.isfile(os.path.join(
            self.path, f))]
        if os.path.isfile(self.log) and os.path.getsize(self.log) > 0:
            found.append("log.jsonl")
        if not found:
            return None
        try:
            state = load_checkpoint(self.last)
            return (f"{', '.join(found)}; {state['epoch']} epoch(s) done, best mAP "
                    f"{state['best']['mAP']:.2f}")
        except (OSError, CheckpointError, KeyError, TypeError, ValueError):
            return ", ".join(found)

    def claim(self, resume: bool, overwrite: bool) -> None:
        """Makes the folder ready for a run: refuses one that holds a run unless resuming
        it or ``overwrite`` (which removes the old run's files first)."""
        held = self.describe_run()
        if held is not None and not resume:
            if not overwrite:
                raise RunFolderError(
                    f"--output '{self.path}' already holds a run ({held}); continue it with "
                    f"--resume auto, start a new one with another --output, or replace it "
                    f"with --overwrite")
            self.clear()
        os.makedirs(self.path, exist_ok=True)
        self.remove_stale_temps()

    def clear(self) -> None:
        """Removes a previous run's files (not the demo data nor the label-graph cache)."""
        for name in RUN_FILES:
            path = os.path.join(self.path, name)
            if os.path.isfile(path):
                os.remove(path)
        for path in glob.glob(os.path.join(self.path, "checkpoint-*.pth")):
            os.remove(path)
        shutil.rmtree(os.path.join(self.path, "tensorboard"), ignore_errors=True)

    def remove_stale_temps(self) -> list[str]:
        """Removes the temporary files of interrupted atomic writes; returns their names."""
        stale = glob.glob(os.path.join(self.path, glob.escape(TEMP_PREFIX) + "*"))
        for path in stale:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        return stale

    def check_free_space(self, nbytes: int) -> None:
        """Raises when the folder's file system has less than ``nbytes`` (plus 10 %) free."""
        free = shutil.disk_usage(self.path).free
        if free < 1.1 * nbytes:
            raise RunFolderError(
                f"--output '{self.path}': {free / 2**20:.0f} MiB free, but the checkpoints "
                f"need about {nbytes / 2**20:.0f} MiB; free some space or choose another "
                f"--output")

    def save_config(self, config: Mapping[str, Any]) -> str:
        """Writes ``config.yaml`` (a file ``--config`` reads back)."""
        import yaml

        path = os.path.join(self.path, "config.yaml")
        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
        with atomic_write(path, "w") as f:
            yaml.safe_dump(plain, f, sort_keys=False)
        return path

    def save_eval(self, checkpoint: str, params: Mapping[str, int],
                  metrics: Mapping[str, Any]) -> str:
        """Writes ``eval.json``: the checkpoint evaluated, parameter counts and metrics per
        model (non-finite metrics as ``null``)."""
        from agcn_pyg.train.logs import json_safe

        path = os.path.join(self.path, "eval.json")
        record = {"checkpoint": checkpoint, "params": params, "metrics": metrics}
        with atomic_write(path, "w") as f:
            json.dump(json_safe(record), f, indent=1)
        return path

    def repair_best(self, last: Mapping[str, Any], say: Callable[[str], Any] = print
                    ) -> dict[str, Any]:
        """Checks that ``best.pth`` holds the best epoch that ``last`` (the resumed training
        checkpoint) records. A kill during its write leaves it stale or missing: it is then
        rebuilt from ``last`` when ``last`` is that epoch's end, and otherwise the best
        record restarts from what ``best.pth`` holds. Returns the best record to go on
        with."""
        best = dict(last["best"])
        if best.get("epoch") is None:
            return best
        try:
            on_disk = load_checkpoint(self.best)
        except (FileNotFoundError, CheckpointError):
            on_disk = None
        if on_disk is not None and on_disk.get("epoch") == best["epoch"]:
            return best
        found = "missing" if on_disk is None else f"from epoch {on_disk.get('epoch')}"
        if last["epoch"] == best["epoch"] and last.get("step", 0) == 0:
            save_checkpoint(weights_checkpoint(last), self.best)
            say(f"Repaired {self.best}: it was {found}, the best epoch is {best['epoch']}; "
                f"rebuilt from {self.last}")
            return best
        best = dict(on_disk["best"]) if on_disk is not None else {
            "mAP": float("-inf"), "epoch": None, "source": None}
        say(f"Warning: {self.best} is {found} but the best epoch was {last['best']['epoch']}, "
            f"which cannot be rebuilt; best.pth will be replaced by the next epoch that beats "
            f"mAP {best['mAP']:.2f}")
        return best
