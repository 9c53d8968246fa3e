"""Data order and loaders: the image order and augmentations are functions of
``(seed, epoch)``, whatever the workers, their persistence or the world size.

* the image order of an epoch is :class:`~torch.utils.data.DistributedSampler`'s permutation
  seeded with ``seed + epoch`` (one process is the one-replica case), so every rank agrees;
* the augmentation of image ``i`` in epoch ``e`` draws from Python, NumPy and torch RNGs
  seeded with ``(seed, e, i)`` just for that image (:class:`SeededDataset`).

A run resumed from a mid-epoch checkpoint therefore skips the images already seen in that
epoch (``set_epoch(epoch, skip=k)``) and sees the same augmented images as the
uninterrupted run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from agcn_pyg.data.datasets import collate_skip_corrupt
from agcn_pyg.train.seeding import derive_seed, seed_everything

__all__ = ["EpochSampler", "SeededDataset", "build_eval_loader", "build_train_loader",
           "first_readable"]


class SeededDataset(Dataset):
    """Wraps a dataset so that ``dataset[(index, seed)]`` transforms image ``index`` with
    every global RNG seeded by ``seed``, then puts the RNGs back as they were. A plain
    integer key reads the item untouched. See :class:`EpochSampler`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                seed_everything(seed)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def __getattr__(self, name: str):
        # Forward dataset attributes (labels, label_names, image_paths, ...).
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class EpochSampler(Sampler):
    """This rank's share of a :class:`~torch.utils.data.DistributedSampler` permutation
    (seeded with ``seed + epoch``), yielding ``(index, seed(seed, epoch, index))`` keys for
    :class:`SeededDataset`.

    ``set_epoch(epoch, skip=k)`` also drops the first ``k`` samples of the rank's share, to
    resume in the middle of an epoch.
    """

    def __init__(self, dataset_len: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 drop_last: bool = False):
        class _Sized:
            def __len__(self):
                return dataset_len

        self.base = DistributedSampler(_Sized(), num_replicas=num_replicas, rank=rank,
                                       shuffle=True, seed=seed, drop_last=drop_last)
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in list(self.base)[self.skip:]:
            yield i, derive_seed(self.seed, self.epoch, i)


def _loader_kwargs(workers: int, pin_memory: bool, persistent_workers: bool,
                   prefetch_factor: int | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(num_workers=workers, pin_memory=pin_memory,
                                  collate_fn=collate_skip_corrupt)
    if workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return kwargs


def build_train_loader(dataset: Dataset, batch_size: int, seed: int, rank: int = 0,
                       world_size: int = 1, workers: int = 0, pin_memory: bool = False,
                       persistent_workers: bool = True, prefetch_factor: int | None = None,
                       drop_last: bool = True) -> DataLoader:
    """A training loader whose order and augmentations are functions of ``(seed, epoch)``.
    Call ``loader.sampler.set_epoch(epoch)`` before each epoch. ``drop_last`` is ignored
    when a rank's share is smaller than one batch."""
    sampler = EpochSampler(len(dataset), world_size, rank, seed)
    drop_last = drop_last and len(sampler) >= batch_size
    return DataLoader(SeededDataset(dataset), batch_size=batch_size, sampler=sampler,
                      drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed),  # keeps global RNG out
                      **_loader_kwargs(workers, pin_memory, persistent_workers, prefetch_factor))


def build_eval_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                      workers: int = 0, pin_memory: bool = False,
                      persistent_workers: bool = True,
                      prefetch_factor: int | None = None) -> DataLoader:
    """An evaluation loader; under DDP each rank reads a shard (the sampler pads the last
    round with repeats, which :func:`~agcn_pyg.train.evaluate` removes by dataset index)."""
    sampler = (DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
               if world_size > 1 else None)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      **_loader_kwargs(workers, pin_memory, persistent_workers, prefetch_factor))


def first_readable(dataset: Dataset, name: str) -> int:
    """The index of the first item of ``dataset`` that reads and transforms (not ``None``),
    so that a run whose training or validation images are all unreadable fails before its
    first step instead of after an epoch. The global RNGs are left untouched.

    Raises:
        ValueError: naming ``name`` when the dataset is empty or no item can be read.
    """
    seeded = dataset if isinstance(dataset, SeededDataset) else SeededDataset(dataset)
    for i in range(len(seeded)):
        if seeded[(i, 0)] is not None:
            return i
    if len(seeded) == 0:
        raise ValueError(f"the {name} set is empty")
    raise ValueError(f"none of the {len(seeded)} {name} images can be read (see the "
                     f"warnings above): check the image folder")
