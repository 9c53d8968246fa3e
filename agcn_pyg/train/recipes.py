r"""The paper's four systems as recipes of one harness: ``--recipe`` of
``examples/coco_train.py`` (Tables 1-3 of the ML-AGCN paper).

A recipe is a set of flag defaults: the backbone, the head, the reading of :math:`A`, the node
features and which of the three graphs of eq. 3 (:math:`A`, :math:`B^{(l)}`,
:math:`C^{(l)}`) the layers use. Every flag given on the command line (or in a ``--config``
file) overrides the recipe's value (:func:`apply_recipe`). The training recipe itself (ASL's
loss, Adam, OneCycle, EMA, augmentation, image size, epochs) is the same for all four, so that
only the model differs: that is what makes the comparison fair.

======== ============ ======= ============== ========== ================ ================
recipe   backbone     head    graphs (eq. 3) A          node features    sources
======== ============ ======= ============== ========== ================ ================
ml-agcn  tresnet_m    graph   A+B+C          normalized one-hot (N-dim)  the paper, §3
iml-gcn  tresnet_m    graph   A              mlgcn      one-hot (N-dim)  paper §2, [7]
ml-gcn   resnet101    graph   A, no bias,    mlgcn      gaussian:300     ML-GCN's code
                              max pooling
asl      tresnet_m    linear  (none)         (none)     (none)           ASL's code
======== ============ ======= ============== ========== ================ ================

What each recipe assumes where its source is silent (``examples/README.md``, "Paper recipes"):

* **ml-agcn** — eq. 3-7 with :math:`A` un-thresholded and normalised as ML-GCN's ``gen_adj``
  (footnote 1; :data:`~agcn_pyg.data.label_graph.DEFAULT_ADJACENCY`). The paper's node
  features are IML-GCN's *image-based embeddings*; they need a trained model
  (:func:`~agcn_pyg.data.node_features.image_embeddings`, ``--node-features FILE``), so the
  default is the one-hot identity, which has the same :math:`N` dimensions and hence the
  same parameter count (29.9M / 35.9M on COCO).
* **iml-gcn** — no public code. TResNet-M, ASL and image-based :math:`N`-dimensional node
  features (its counts 29.5M / 31.5M pin :math:`d = N` and hidden 1024); a plain GCN over
  ML-GCN's thresholded, re-weighted :math:`A` (eq. 1-2: the paper's Section 2 describes
  ML-GCN and IML-GCN together) and ML-GCN's bias-free layers — both assumed.
* **ml-gcn** — megvii-research/ML-GCN: ResNet-101, global *max* pooling, GCN 300 → 1024 →
  2048 without bias, LeakyReLU(0.2) between layers, :math:`A` = ``gen_A`` (τ = 0.4, p =
  0.25) then ``gen_adj``. Its inputs are 300-d GloVe vectors, which this machine cannot
  download: the default ``gaussian:300`` is a fixed random 300-d vector per label (same
  shapes and parameter count, no semantic prior); pass ``--node-features glove.npy`` for
  the real thing. ML-GCN trains with SGD and a soft-margin loss; here it gets the shared
  ASL recipe (as the paper's own re-runs, marked †, presumably did).
* **asl** — Alibaba-MIIL/ASL: timm's TResNet-M with its own linear classifier (bias
  included), trained with ASL (γ− = 4, γ+ = 0, clip 0.05): the shared recipe *is* ASL's.

``graph`` also takes Table 3's variants (``A``, ``A+B``, ``A+B+C``, and ``A+C``);
``--no-attention`` / ``--no-similarity`` still remove :math:`B` / :math:`C` from it.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from agcn_pyg.data.label_graph import LabelGraph
from agcn_pyg.data.node_features import load_node_features
from agcn_pyg.models.backbone import create_backbone, pooled_feature_size
from agcn_pyg.models.head import MultiLabelHead
from agcn_pyg.train.checkpoint import ModelSpec, model_config

__all__ = ["GRAPHS", "HEADS", "RECIPES", "Recipe", "apply_recipe", "describe", "graph_switches",
           "model_spec", "node_features", "recipe_parameters"]

#: Table 3's graph variants (and A+C): which of eq. 3's matrices the layers add to A.
GRAPHS = ("A", "A+B", "A+C", "A+B+C")
#: ``graph``: AdaptiveGCNConv layers (eq. 3); ``linear``: timm's own classifier.
HEADS = ("graph", "linear")


@dataclass(frozen=True)
class Recipe:
    """One system of the paper's tables: its display name and the flag values it sets
    (argparse destinations of ``examples/coco_train.py``)."""

    name: str
    system: str
    defaults: Mapping[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("ml-agcn", "ML-AGCN", dict(model="tresnet_m", head="graph", graph="A+B+C",
                                      adj_variant="normalized", node_features="onehot",
                                      bias=True, global_pool=None)),
    Recipe("iml-gcn", "IML-GCN", dict(model="tresnet_m", head="graph", graph="A",
                                      adj_variant="mlgcn", node_features="onehot",
                                      bias=False, global_pool=None)),
    Recipe("ml-gcn", "ML-GCN", dict(model="resnet101", head="graph", graph="A",
                                    adj_variant="mlgcn", node_features="gaussian:300",
                                    bias=False, global_pool="max")),
    Recipe("asl", "ASL", dict(model="tresnet_m", head="linear", graph=None, adj_variant=None,
                              node_features=None, bias=None, global_pool=None)),
)}


def apply_recipe(args: argparse.Namespace, explicit: Collection[str]) -> Recipe:
    """Sets ``args.recipe``'s values on every flag that ``explicit`` (the flags the command
    line or ``--config`` file gave) does not hold; returns the recipe."""
    if args.recipe not in RECIPES:
        raise ValueError(f"'--recipe' must be one of {sorted(RECIPES)} (got {args.recipe!r})")
    recipe = RECIPES[args.recipe]
    for key, value in recipe.defaults.items():
        if key not in explicit:
            setattr(args, key, value)
    if args.head == "graph":  # `--recipe asl --head graph`: the graph options ML-AGCN's
        for key, value in RECIPES["ml-agcn"].defaults.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    return recipe


def graph_switches(graph: str, no_attention: bool = False, no_similarity: bool = False
                   ) -> dict[str, bool]:
    """The :class:`~agcn_pyg.AdaptiveGCNConv` switches of a ``graph`` variant (``"A+B"``: B
    of eq. 4-6 on, C of eq. 7 off), less what the ablation flags remove. Only the switched-off
    ones are returned (the layer's defaults are on)."""
    if graph not in GRAPHS:
        raise ValueError(f"'graph' must be one of {GRAPHS} (got {graph!r})")
    on = {"attention": "B" in graph and not no_attention,
          "similarity": "C" in graph and not no_similarity}
    return {k: False for k, v in on.items() if not v}


def node_features(spec: str | None, num_labels: int) -> Tensor | None:
    """The node features :math:`F^{(0)}` a ``--node-features`` value names: ``None`` or
    ``"onehot"`` (the identity, built by the head), ``"gaussian:D"`` (a fixed standard-normal
    ``[N, D]`` matrix drawn from seed 0, the same for every run: a stand-in for ML-GCN's
    300-d GloVe vectors), or a ``.npy`` / ``.pt`` file of ``[N, d]`` features."""
    if spec is None or spec == "onehot":
        return None
    if spec.startswith("gaussian:"):
        try:
            dim = int(spec.partition(":")[2])
        except ValueError:
            dim = 0
        if dim < 1:
            raise ValueError(f"'--node-features' gaussian:D needs a positive integer D "
                             f"(got {spec!r})")
        return torch.randn(num_labels, dim, generator=torch.Generator().manual_seed(0))
    return load_node_features(spec, num_labels)


def _head_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = graph_switches(args.graph, args.no_attention, args.no_similarity)
    if args.bias is False:
        kwargs["bias"] = False
    return kwargs


def _timm_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"drop_path_rate": args.drop_path} if args.drop_path else {}
    if args.global_pool:
        kwargs["global_pool"] = args.global_pool
    return kwargs


def model_spec(args: argparse.Namespace, label_names: Sequence[str], graph: LabelGraph
               ) -> ModelSpec:
    """The :class:`~agcn_pyg.train.checkpoint.ModelSpec` the flags describe: for ``head ==
    "linear"`` a plain timm classifier (``config["head"] = "linear"``; ``adj`` is kept as a
    record only), else the graph head over ``graph.adjacency(args.adj_variant)``."""
    n = len(label_names)
    if args.head == "linear":
        config = model_config(args.model, n, 0, [], {}, _timm_kwargs(args))
        config["head"] = "linear"
        return ModelSpec(config, list(label_names), torch.zeros(0, 0), None)
    config = model_config(args.model, n, args.num_layers, [args.hidden] * (args.num_layers - 1),
                          _head_kwargs(args), _timm_kwargs(args), adjacency=args.adj_variant)
    return ModelSpec(config, list(label_names), graph.adjacency(args.adj_variant),
                     node_features(args.node_features, n))


def describe(args: argparse.Namespace) -> str:
    """One line naming what ``args`` train, e.g. ``ML-GCN recipe: resnet101, graph head A
    (mlgcn), 2 layer(s), node features gaussian:300, no bias``."""
    system = RECIPES[args.recipe].system
    if args.head == "linear":
        return f"{system} recipe: {args.model} with its linear classifier"
    off = _head_kwargs(args)
    graph = "A" + "+B" * ("attention" not in off) + "+C" * ("similarity" not in off)
    return (f"{system} recipe: {args.model}, graph head {graph} ({args.adj_variant}), "
            f"{args.num_layers} layer(s), node features {args.node_features or 'onehot'}"
            + (", no bias" if args.bias is False else "")
            + (f", {args.global_pool} pooling" if args.global_pool else ""))


@lru_cache(maxsize=8)
def _backbone_size(model_name: str, timm_items: tuple) -> tuple[int, int]:
    """(parameters, pooled feature size) of ``model_name`` without classifier, no weights."""
    backbone = create_backbone(model_name, **dict(timm_items))
    return sum(p.numel() for p in backbone.parameters()), pooled_feature_size(backbone)


def recipe_parameters(recipe: str, num_labels: int, num_layers: int = 2, hidden: int = 1024,
                      model: str | None = None, adjacency_as_parameter: bool = True) -> int:
    """Parameters of ``recipe``'s model for ``num_labels`` labels, as the paper counts them:
    the backbone without classifier (built once per name, no weights) plus the head built
    for real (a :class:`~agcn_pyg.MultiLabelHead` with the recipe's switches and node
    feature size, or timm's ``D x N`` linear layer with bias), plus, for graph heads with
    ``adjacency_as_parameter``, the :math:`N^2` entries of :math:`A`: ML-GCN registers
    :math:`A` as an ``nn.Parameter``, and that convention reproduces the paper's VG-500
    counts (README, "Parameter counts"). Equals the built model's
    :func:`~agcn_pyg.count_parameters` (+ :math:`N^2`), which the tests check."""
    r = RECIPES[recipe].defaults
    timm_kwargs = {"global_pool": r["global_pool"]} if r.get("global_pool") else {}
    backbone, pooled = _backbone_size(model or r["model"], tuple(sorted(timm_kwargs.items())))
    if r["head"] == "linear":
        return backbone + pooled * num_labels + num_labels
    features = node_features(r["node_features"], num_labels)
    kwargs = graph_switches(r["graph"])
    if r["bias"] is False:
        kwargs["bias"] = False
    head = MultiLabelHead(pooled, num_labels, torch.zeros(num_labels, num_labels),
                          node_features=features, hidden_channels=[hidden] * (num_layers - 1),
                          **kwargs)
    extra = num_labels**2 if adjacency_as_parameter else 0
    return backbone + sum(p.numel() for p in head.parameters()) + extra
