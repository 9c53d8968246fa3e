"""A tiny trained ML-AGCN checkpoint shared by the inference tests (plot, predict, export),
written through agcn_pyg.train.checkpoint like a training run's last.pth."""

import torch
from timm.utils import ModelEmaV3

from agcn_pyg import create_model
from agcn_pyg.train.checkpoint import (
    ModelSpec,
    TrainParts,
    TrainState,
    model_config,
    save_checkpoint,
    training_checkpoint,
)

NAMES = ["person", "fork", "knife", "dining table", "cat"]
DATA_CONFIG = {"input_size": (3, 32, 32), "mean": (0.485, 0.456, 0.406),
               "std": (0.229, 0.224, 0.225), "interpolation": "bilinear"}


def make_checkpoint(path, head_kwargs=None, ema=False):
    """A resnet10t ML-AGCN with 5 labels after a few optimizer steps on random data; with
    ``ema=True`` it also holds EMA weights that differ from the raw ones."""
    head_kwargs = head_kwargs or {}
    torch.manual_seed(0)
    n = len(NAMES)
    adj = torch.rand(n, n)
    adj.fill_diagonal_(1.0)
    model = create_model("resnet10t", n, adj, hidden_channels=[16], head_kwargs=head_kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    for _ in range(3):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(torch.randn(4, 3, 32, 32)), torch.randint(0, 2, (4, n)).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    ema_model = None
    if ema:
        ema_model = ModelEmaV3(model)
        with torch.no_grad():
            for v in ema_model.module.state_dict().values():
                if v.is_floating_point():
                    v.add_(0.01 * torch.randn_like(v))
    spec = ModelSpec(model_config("resnet10t", n, hidden_channels=[16],
                                  head_kwargs=head_kwargs, data_config=DATA_CONFIG),
                     NAMES, adj, torch.eye(n))
    parts = TrainParts(model, opt, sched, ema=ema_model)
    save_checkpoint(training_checkpoint(spec, parts, TrainState(epoch=1), [], {}), path)
    return path
