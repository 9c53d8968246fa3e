"""Unit tests of agcn_pyg.train: seeded data order/augmentation, the epoch loop (NaN stop,
gradient accumulation, clipping), the recipe, progress lines, RNG capture."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from agcn_pyg.train import (
    EpochSampler,
    LoopConfig,
    NonFiniteLossError,
    Progress,
    RecipeConfig,
    SeededDataset,
    build_optimizer,
    build_scheduler,
    build_train_loader,
    capture_rng_state,
    first_readable,
    restore_rng_state,
    train_one_epoch,
)
from agcn_pyg.train.checkpoint import TrainParts


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
    cfg = LoopConfig(torch.device("cpu"), log_interval=3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2/5 .*lower --lr"):
        train_one_epoch(TrainParts(model, opt, sched), loader, criterion, cfg, 1)


def _linear_run(accum, batch_size, clip=None):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loader = build_train_loader(RandomItems(), batch_size, seed=1, drop_last=False)
    loader.sampler.set_epoch(0)
    cfg = LoopConfig(torch.device("cpu"), grad_accum_steps=accum, clip_grad=clip)
    result = train_one_epoch(TrainParts(model, opt, sched), loader,
                             lambda y, t: (y - t).pow(2).sum(), cfg, 1)
    return model, result, sched


def test_gradient_accumulation_equals_the_larger_batch():
    model, result, sched = _linear_run(accum=2, batch_size=2)  # updates of 4, 4 and 2 items
    assert (result.steps, result.global_step, sched.last_epoch) == (5, 3, 3)
    # Independent: plain SGD on the summed squared error of the same groups of items.
    torch.manual_seed(0)
    w = nn.Linear(3, 2).weight.detach().double().clone()
    torch.manual_seed(0)
    b = nn.Linear(3, 2).bias.detach().double().clone()
    s = EpochSampler(10, seed=1)
    s.set_epoch(0)
    keys = list(s)
    data = SeededDataset(RandomItems())
    for group in (keys[0:4], keys[4:8], keys[8:10]):
        x = torch.stack([data[k][0] for k in group]).double()
        err = x @ w.T + b  # targets are zeros
        w, b = w - 0.1 * 2 * err.T @ x, b - 0.1 * 2 * err.sum(0)
    torch.testing.assert_close(model.weight.detach().double(), w)
    torch.testing.assert_close(model.bias.detach().double(), b)


def test_clip_grad_bounds_the_update():
    torch.manual_seed(0)
    before = [p.detach().clone() for p in nn.Linear(3, 2).parameters()]
    model, _, _ = _linear_run(accum=10, batch_size=10, clip=1e-3)  # one update
    delta = torch.cat([(p.detach() - q).flatten() for p, q in
                       zip(model.parameters(), before, strict=True)])
    # The raw gradient is far larger: clipped to norm 1e-3, the step is lr * 1e-3.
    assert delta.norm().item() == pytest.approx(0.1 * 1e-3, rel=1e-4)


def test_default_recipe_is_the_papers_adam_and_onecycle():
    from agcn_pyg import create_model

    model = create_model("resnet10t", 3, torch.rand(3, 3), hidden_channels=[8])
    cfg = RecipeConfig(sched_epochs=4)
    opt = build_optimizer(model, cfg)
    ref = torch.optim.Adam(model.param_groups(1e-4), lr=1e-4)
    assert type(opt) is torch.optim.Adam
    for g, h in zip(opt.param_groups, ref.param_groups, strict=True):
        assert {k: v for k, v in g.items() if k != "params"} == \
               {k: v for k, v in h.items() if k != "params"}
        assert all(p is q for p, q in zip(g["params"], h["params"], strict=True))
    sched = build_scheduler(opt, cfg, updates_per_epoch=5)
    ref_sched = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=1e-4, steps_per_epoch=5,
                                                    epochs=4, pct_start=0.2)
    for _ in range(19):
        opt.step(), ref.step(), sched.step(), ref_sched.step()
        assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]


def test_timm_schedule_warms_up_per_update():
    model = nn.Linear(3, 2)
    cfg = RecipeConfig(sched_epochs=10, opt="sgd", lr=0.1, sched="cosine", warmup_epochs=1,
                       warmup_lr=1e-3)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, updates_per_epoch=4)
    lrs = [opt.param_groups[0]["lr"]]
    for n in range(1, 9):
        sched.step_update(n)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-3)
    # After the warm-up: timm's cosine over all 40 updates (warm-up included), at 4 of 40.
    assert lrs[4] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 4 / 40)), rel=1e-6)
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5], strict=True))
    assert lrs[8] < lrs[4]  # then cosine decay


def test_progress_off_a_terminal_is_plain_lines(capsys):
    bar = Progress(10, "train 1")
    for _ in range(10):
        bar.update()
        if bar.n % 5 == 0:
            bar.report(loss="0.5")
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == "train 1 [5/10] loss 0.5\ntrain 1 [10/10] loss 0.5\n"
    assert "\r" not in captured.err


def test_first_readable_names_the_set():
    class Broken(RandomItems):
        def __getitem__(self, i):
            return None if i < 9 else super().__getitem__(i)

    assert first_readable(Broken(), "training") == 9
    state = capture_rng_state()

    class AllBroken(RandomItems):
        def __getitem__(self, i):
            return None

    with pytest.raises(ValueError, match="none of the 10 validation images"):
        first_readable(AllBroken(), "validation")
    after = capture_rng_state()
    assert torch.equal(state["torch"], after["torch"])
