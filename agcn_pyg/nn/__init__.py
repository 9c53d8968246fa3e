"""The layer: :class:`AdaptiveGCNConv` (eq. 3-7), its input checks and the complete-graph path.

Imports nothing of agcn_pyg above :mod:`agcn_pyg.io` (a PyG user needs only this folder).
"""

from agcn_pyg.nn.conv import AdaptiveGCNConv, AdaptiveGraphs

__all__ = ["AdaptiveGCNConv", "AdaptiveGraphs"]
