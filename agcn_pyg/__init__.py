"""agcn_pyg: ML-AGCN (Multi-Label Adaptive Graph Convolutional Network) for PyG and timm."""

__version__ = "0.1.0"

from agcn_pyg.conv import AdaptiveGCNConv, AdaptiveGraphs

__all__ = [
    "AdaptiveGCNConv",
    "AdaptiveGraphs",
    "__version__",
]
