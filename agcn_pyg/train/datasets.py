"""The training and validation sets of a run and its label graph.

:class:`DataConfig` names the data as the command line does: a COCO root (``data``), four
COCO-format paths, or list files (e.g. VG-500). :func:`build_datasets` turns it into the two
datasets with clear errors; :func:`label_graph` computes ML-AGCN's :math:`A` from the
training labels, cached in the run folder and keyed on the labels' content.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, fields
from typing import Any

import torch

from agcn_pyg.data.datasets import CocoMultiLabel, ListFileMultiLabel
from agcn_pyg.data.label_graph import LabelGraph
from agcn_pyg.io import atomic_write, load_tensors
from agcn_pyg.train.checkpoint import data_record

__all__ = ["DataConfig", "build_datasets", "demo_banner", "describe_data", "label_graph",
           "make_demo_data"]


@dataclass
class DataConfig:
    """Where the data is (the command line's data flags). ``year``: ``auto``, ``2014`` or
    ``2017`` under ``data``; ``keep_empty``: keep training images without labels."""

    data: str | None = None
    year: str = "auto"
    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    keep_empty: bool = False
    train_list: str | None = None
    val_list: str | None = None
    image_root: str | None = None
    val_image_root: str | None = None
    label_names: str | None = None
    image_labels: str | None = None
    num_labels: int | None = None

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> DataConfig:
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def coco_paths(cfg: DataConfig) -> tuple[str, str, str, str]:
    """``(train_ann, train_images, val_ann, val_images)`` from the four paths or the root."""
    explicit = [cfg.train_ann, cfg.train_images, cfg.val_ann, cfg.val_images]
    if cfg.data is None:
        if not all(explicit):
            names = ("--train-ann", "--train-images", "--val-ann", "--val-images")
            missing = [n for n, v in zip(names, explicit, strict=True) if not v]
            raise ValueError(f"COCO-format data needs all four of --train-ann --train-images "
                             f"--val-ann --val-images (missing {' '.join(missing)}), or --data")
        return tuple(explicit)
    if not os.path.isdir(cfg.data):
        raise FileNotFoundError(f"--data: folder '{cfg.data}' does not exist")
    for y in ("2014", "2017") if cfg.year == "auto" else (cfg.year,):
        cand = (os.path.join(cfg.data, "annotations", f"instances_train{y}.json"),
                os.path.join(cfg.data, f"train{y}"),
                os.path.join(cfg.data, "annotations", f"instances_val{y}.json"),
                os.path.join(cfg.data, f"val{y}"))
        if os.path.isfile(cand[0]) or os.path.isdir(cand[1]):
            return tuple(e or c for e, c in zip(explicit, cand, strict=True))
    raise ValueError(
        f"--data: '{cfg.data}' holds neither COCO 2014 nor 2017: expected "
        f"annotations/instances_train{{2014,2017}}.json and train{{2014,2017}}/ (and val); "
        f"use --train-ann/--train-images/--val-ann/--val-images for other layouts")


def build_datasets(cfg: DataConfig):
    """The ``(train, val)`` datasets; validation keeps every image (all count in mAP)."""
    if cfg.train_list or cfg.val_list:
        missing = [f for f, v in (("--train-list", cfg.train_list),
                                  ("--val-list", cfg.val_list),
                                  ("--image-root", cfg.image_root),
                                  ("--label-names or --image-labels",
                                   cfg.label_names or cfg.image_labels)) if not v]
        if missing:
            raise ValueError(f"list-file data needs {' '.join(missing)} too")
        labels = dict(label_names_file=cfg.label_names, image_labels_file=cfg.image_labels,
                      num_labels=cfg.num_labels)
        train = ListFileMultiLabel(cfg.train_list, cfg.image_root, **labels)
        val = ListFileMultiLabel(cfg.val_list, cfg.val_image_root or cfg.image_root, **labels)
    else:
        train_ann, train_img, val_ann, val_img = coco_paths(cfg)
        train = CocoMultiLabel(train_ann, train_img, keep_empty=cfg.keep_empty)
        val = CocoMultiLabel(val_ann, val_img, keep_empty=True)
    if train.label_names != val.label_names:
        raise ValueError("training and validation label names differ: "
                         f"{train.label_names[:5]}... vs {val.label_names[:5]}...")
    return train, val


def make_demo_data(root: str, spec: dict[str, Any], write: bool = True) -> DataConfig:
    """The synthetic demo set (:func:`~agcn_pyg.make_synthetic_coco` with ``spec``) under
    ``root``, reused when ``root/demo.json`` records the same spec; ``write=False`` (ranks
    other than 0) only returns the paths."""
    from agcn_pyg.data.synthetic import make_synthetic_coco

    marker = os.path.join(root, "demo.json")
    if write:
        try:
            with open(marker) as f:
                same = json.load(f) == spec
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(root, ignore_errors=True)
            make_synthetic_coco(root, **spec)
            with atomic_write(marker, "w") as f:
                json.dump(spec, f)
    return DataConfig(train_ann=os.path.join(root, "annotations", "instances_train2017.json"),
                      train_images=os.path.join(root, "train2017"),
                      val_ann=os.path.join(root, "annotations", "instances_val2017.json"),
                      val_images=os.path.join(root, "val2017"))


def demo_banner(model: str, image_size: int, device_type: str) -> str:
    """What a demo run says first: its data is synthetic and its numbers mean nothing."""
    rule = "=" * 78
    return (f"{rule}\nDEMO on a small SYNTHETIC dataset (coloured shapes), {model} at "
            f"{image_size}px on {device_type}; its numbers say nothing about COCO.\n"
            f"Pass --data (or --train-ann ...) to train on real data.\n{rule}")


def sparse_labels(train_set) -> torch.Tensor:
    """The ``[num_images, N]`` training labels as a sparse COO matrix: the datasets' stored
    form (:meth:`~agcn_pyg.data.datasets.CocoMultiLabel.label_matrix`), never an [images, N]
    array."""
    if hasattr(train_set, "label_matrix"):
        return train_set.label_matrix()
    return train_set.labels.to(torch.bool).to_sparse()


def labels_digest(train_set) -> str:
    """SHA-256 of the training labels (which labels each image carries, and the names):
    what :math:`A` depends on."""
    h = hashlib.sha256(json.dumps(list(train_set.label_names)).encode())
    labels = sparse_labels(train_set).coalesce()
    h.update(str(tuple(labels.shape)).encode())
    h.update(labels.indices().to(torch.long).contiguous().numpy().tobytes())
    return h.hexdigest()


def describe_data(train_set, val_set, updates_per_epoch: int, world_size: int = 1
                  ) -> dict[str, Any]:
    """What identifies a run's data, as its training checkpoint records it
    (:func:`~agcn_pyg.train.checkpoint.data_record`)."""
    return data_record(len(train_set), len(val_set), labels_digest(train_set),
                       updates_per_epoch, world_size)


#: From this many labels on a run's label graph is sparse by default (:func:`label_graph`):
#: one [N, N] float32 matrix is then 256 MiB or more, and the layers' complete path (sparse
#: A, sorted B, factored C) is the faster one (README "Label graphs of any size").
SPARSE_GRAPH_MIN_LABELS = 8192


def label_graph(train_set, folder: str, write: bool = True, say=print,
                adjacency_kind: str | None = None, sparse: bool | None = None) -> LabelGraph:
    """ML-AGCN's label graph of ``train_set``, cached as ``folder/label_graph.pt`` together
    with :func:`labels_digest`: the cache is reused only for the same training labels,
    never for other data that happens to have the same label names. ``adjacency_kind``
    (the :meth:`~agcn_pyg.LabelGraph.adjacency` reading the run builds :math:`A` with) is
    recorded in the cache and on the returned graph; the counts do not depend on it.
    ``sparse``: counts and :math:`A` as sparse matrices (:math:`Y^\top Y`, no [N, N]
    array), so the model's layers take the complete path; ``None``: from
    :data:`SPARSE_GRAPH_MIN_LABELS` labels on."""
    if sparse is None:
        sparse = len(train_set.label_names) >= SPARSE_GRAPH_MIN_LABELS
    path = os.path.join(folder, "label_graph.pt")
    digest = labels_digest(train_set)
    graph = None
    if os.path.isfile(path):
        try:
            cached = load_tensors(path)
            if cached.get("labels_sha256") == digest:
                say(f"Label graph: reusing {path}")
                counts = cached["counts"]
                other_form = counts.is_sparse != sparse
                if other_form:  # the same counts, converted (and saved again below)
                    counts = counts.to_sparse().coalesce() if sparse else counts.to_dense()
                graph = LabelGraph(counts, cached["nums"], cached["label_names"],
                                   adjacency_kind)
                if cached.get("adjacency_kind") == adjacency_kind and not other_form:
                    return graph
            else:
                say(f"Label graph: {path} was computed from other training labels; "
                    f"recomputing")
        except Exception as e:  # a damaged cache is only a cache
            say(f"Label graph: cannot read {path} ({type(e).__name__}); recomputing")
    if graph is None:
        names = list(train_set.label_names)
        counted = LabelGraph.from_labels(sparse_labels(train_set), names)  # sparse Y^T Y
        counts = counted.counts if sparse else counted.counts.to_dense()
        graph = LabelGraph(counts, counted.nums, names, adjacency_kind)
    if write:
        with atomic_write(path) as f:
            torch.save({"labels_sha256": digest, "counts": graph.counts, "nums": graph.nums,
                        "label_names": graph.label_names, "adjacency_kind": adjacency_kind}, f)
    return graph
