"""A tiny trained ML-AGCN checkpoint shared by the inference tests (plot, predict, export)."""

import torch

from agcn_pyg import create_model
from agcn_pyg.checkpoint import model_config, save_checkpoint

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
    for _ in range(3):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(torch.randn(4, 3, 32, 32)), torch.randint(0, 2, (4, n)).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    ema_state = None
    if ema:
        ema_state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                     for k, v in model.state_dict().items()}
    save_checkpoint(dict(
        config=model_config("resnet10t", n, hidden_channels=[16], head_kwargs=head_kwargs,
                            data_config=DATA_CONFIG),
        adj=adj, node_features=torch.eye(n), label_names=NAMES,
        model=model.state_dict(), ema=ema_state,
    ), path)
    return path
