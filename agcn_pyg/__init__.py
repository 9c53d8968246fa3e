"""agcn_pyg: ML-AGCN (Multi-Label Adaptive Graph Convolutional Network) for PyG and timm."""

from agcn_pyg.data.datasets import CocoMultiLabel, ListFileMultiLabel, collate_skip_corrupt
from agcn_pyg.data.label_graph import (
    ADJACENCY_KINDS,
    DEFAULT_ADJACENCY,
    LabelGraph,
    conditional_probability,
    cooccurrence_counts,
    label_graph_from_coco,
    mlgcn_adjacency,
    mlgcn_normalize,
    row_normalize,
)
from agcn_pyg.data.node_features import identity_features, image_embeddings, load_node_features
from agcn_pyg.data.synthetic import make_synthetic_coco
from agcn_pyg.data.transforms import build_transforms, squash_data_config
from agcn_pyg.models.head import MultiLabelHead
from agcn_pyg.models.mlagcn import (
    MLAGCN,
    count_parameters,
    create_model,
    from_pretrained,
    save_pretrained,
)

# Lowest layer first: nn and data, then models, train, tools (see the README's layout).
from agcn_pyg.nn.conv import AdaptiveGCNConv, AdaptiveGraphs
from agcn_pyg.tools.export import export_model, load_exported
from agcn_pyg.tools.predict import predict
from agcn_pyg.tools.visualize import plot_learned_graphs, strongest_edges
from agcn_pyg.train.loss import asymmetric_loss
from agcn_pyg.train.metrics import MultiLabelMetrics, format_table, multilabel_metrics
from agcn_pyg.version import __version__

__all__ = [
    "ADJACENCY_KINDS",
    "DEFAULT_ADJACENCY",
    "AdaptiveGCNConv",
    "AdaptiveGraphs",
    "CocoMultiLabel",
    "LabelGraph",
    "ListFileMultiLabel",
    "MLAGCN",
    "MultiLabelHead",
    "MultiLabelMetrics",
    "__version__",
    "asymmetric_loss",
    "build_transforms",
    "collate_skip_corrupt",
    "conditional_probability",
    "cooccurrence_counts",
    "export_model",
    "load_exported",
    "plot_learned_graphs",
    "predict",
    "save_pretrained",
    "squash_data_config",
    "strongest_edges",
    "count_parameters",
    "create_model",
    "identity_features",
    "image_embeddings",
    "label_graph_from_coco",
    "load_node_features",
    "make_synthetic_coco",
    "format_table",
    "from_pretrained",
    "multilabel_metrics",
    "mlgcn_adjacency",
    "mlgcn_normalize",
    "row_normalize",
]
