"""Unit tests of agcn_pyg.engine: seeded data order/augmentation, NaN stop, RNG capture."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from agcn_pyg.engine import (
    EpochSampler,
    NonFiniteLossError,
    SeededDataset,
    build_train_loader,
    capture_rng_state,
    restore_rng_state,
    train_one_epoch,
)


class RandomItems(Dataset):
    """Each item draws from all three global RNGs, like an augmentation pipeline."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        x = torch.tensor([random.random(), np.random.rand(), torch.rand(()).item()])
        return x, torch.zeros(2), i


def test_epoch_sampler_partitions_and_skips():
    a = [i for i, _ in EpochSampler(10, num_replicas=2, rank=0, seed=3)]
    b = [i for i, _ in EpochSampler(10, num_replicas=2, rank=1, seed=3)]
    assert sorted(a + b) == list(range(10))
    s = EpochSampler(10, seed=3)
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, skip=4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_epoch(2)
    assert [i for i, _ in s] != [i for i, _ in full]  # a new order each epoch


def test_augmentation_depends_on_seed_only():
    ds = SeededDataset(RandomItems())
    state = capture_rng_state()
    x1 = ds[(3, 42)][0]
    random.random(), np.random.rand(), torch.rand(())  # move the global RNGs
    assert torch.equal(ds[(3, 42)][0], x1)
    assert not torch.equal(ds[(3, 43)][0], x1)
    # and the global RNGs are left as they were
    state = capture_rng_state()
    ds[(3, 42)]
    after = (random.random(), np.random.rand(), torch.rand(()))
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(())) == after


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_is_function_of_seed_and_epoch(workers):
    def epoch_items(epoch, workers):
        loader = build_train_loader(RandomItems(), 4, seed=7, workers=workers,
                                    persistent_workers=False, drop_last=False)
        loader.sampler.set_epoch(epoch)
        return torch.cat([x for x, _, _ in loader])

    ref = epoch_items(1, 0)
    assert torch.equal(epoch_items(1, workers), ref)
    assert not torch.equal(epoch_items(2, workers), ref)


def test_rng_state_roundtrip():
    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_non_finite_loss_names_the_step():
    model = nn.Linear(3, 2)
    calls = {"n": 0}

    def criterion(logits, targets):
        calls["n"] += 1
        loss = (logits - targets).pow(2).sum()
        return loss * float("nan") if calls["n"] == 2 else loss

    loader = build_train_loader(RandomItems(), 2, seed=0, drop_last=False)
    loader.sampler.set_epoch(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2/5 .*lower --lr"):
        train_one_epoch(model, loader, criterion, opt, sched, torch.device("cpu"), 1,
                        log_interval=3)
