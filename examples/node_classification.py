"""AdaptiveGCNConv as a drop-in for GATConv in an ordinary two-layer PyG model.

Trains on Zachary's karate club (shipped with PyG, no download) with one labelled node per
community, as in the GCN paper's semi-supervised setting, and prints test accuracy.

    python examples/node_classification.py [--layer agcn|gat] [--epochs 200]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch_geometric.datasets import KarateClub
from torch_geometric.nn import GATConv

from agcn_pyg import AdaptiveGCNConv


class Net(torch.nn.Module):
    def __init__(self, conv, in_channels: int, hidden: int, out_channels: int):
        super().__init__()
        self.conv1 = conv(in_channels, hidden)
        self.conv2 = conv(hidden, out_channels)

    def forward(self, x, edge_index):
        x = F.elu(self.conv1(x, edge_index))
        x = F.dropout(x, p=0.5, training=self.training)
        return self.conv2(x, edge_index)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", choices=["agcn", "gat"], default="agcn")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    data = KarateClub()[0]
    conv = AdaptiveGCNConv if args.layer == "agcn" else GATConv
    model = Net(conv, data.num_features, args.hidden, int(data.y.max()) + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)

    for epoch in range(1, args.epochs + 1):
        model.train()
        optimizer.zero_grad()
        out = model(data.x, data.edge_index)
        loss = F.cross_entropy(out[data.train_mask], data.y[data.train_mask])
        loss.backward()
        optimizer.step()
        if epoch % 50 == 0:
            print(f"epoch {epoch:3d}  loss {loss.item():.4f}")

    model.eval()
    with torch.no_grad():
        pred = model(data.x, data.edge_index).argmax(dim=-1)
    test_mask = ~data.train_mask
    accuracy = (pred[test_mask] == data.y[test_mask]).float().mean().item()
    print(f"{model.conv1}: test accuracy {accuracy:.3f} on {int(test_mask.sum())} nodes")
    return accuracy


if __name__ == "__main__":
    main()
