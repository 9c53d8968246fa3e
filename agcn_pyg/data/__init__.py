"""The data: multi-label datasets (COCO, list files), the label graph :math:`A` (eq. 1-2),
node features, transforms and the synthetic demo set."""

from agcn_pyg.data.datasets import CocoMultiLabel, ListFileMultiLabel, collate_skip_corrupt
from agcn_pyg.data.label_graph import LabelGraph
from agcn_pyg.data.node_features import identity_features, image_embeddings, load_node_features
from agcn_pyg.data.synthetic import make_synthetic_coco
from agcn_pyg.data.transforms import build_transforms, squash_data_config

__all__ = [
    "CocoMultiLabel",
    "LabelGraph",
    "ListFileMultiLabel",
    "build_transforms",
    "collate_skip_corrupt",
    "identity_features",
    "image_embeddings",
    "load_node_features",
    "make_synthetic_coco",
    "squash_data_config",
]
