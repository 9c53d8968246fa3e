"""A tiny synthetic COCO-format dataset with correlated, learnable labels.

Used by the demo mode of ``examples/coco_train.py`` and by the tests: it
exercises the real COCO code path (pycocotools, JPEG decoding) in seconds,
and its labels co-occur so the label graph has structure to find.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

__all__ = ["SyntheticCoco", "make_synthetic_coco"]

_COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
    "magenta": (200, 40, 200),
    "cyan": (20, 200, 210),
    "orange": (245, 130, 20),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
    "purple": (110, 40, 160),
    "brown": (130, 80, 30),
    "pink": (250, 150, 190),
}
_SHAPES = ("square", "circle", "triangle", "cross")


@dataclass(frozen=True)
class SyntheticCoco:
    """Paths of a dataset written by :func:`make_synthetic_coco`."""

    root: str
    train_image_dir: str
    val_image_dir: str
    train_ann_file: str
    val_ann_file: str
    label_names: tuple[str, ...]


def _category_ids(n: int) -> list[int]:
    # Skip every multiple of 4 (1, 2, 3, 5, ...) to mimic COCO's gapped ids.
    return [i for i in range(1, 2 * n + 2) if i % 4 != 0][:n]


def _label_style(k: int) -> tuple[str, str]:
    colors = list(_COLORS)
    color = colors[k % len(colors)]
    # Shift the shape with each pass over the colours, so (color, shape)
    # pairs stay distinct for the first len(colors) * len(_SHAPES) labels.
    shape = _SHAPES[(k + k // len(colors)) % len(_SHAPES)]
    return color, shape


def _draw(draw: ImageDraw.ImageDraw, shape: str, color, box) -> None:
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)
    else:
        w = max(2, (x1 - x0) // 3)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((cx - w // 2, y0, cx + w // 2, y1), fill=color)
        draw.rectangle((x0, cy - w // 2, x1, cy + w // 2), fill=color)


def _write_split(
    rng: random.Random,
    image_dir: str,
    ann_file: str,
    num_images: int,
    scenes: list[list[int]],
    cat_ids: list[int],
    names: list[str],
    image_size: int,
    first_id: int,
) -> None:
    num_labels = len(names)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    side = max(4, image_size // 4)
    for i in range(num_images):
        img_id = first_id + i
        # A latent scene switches on its group of labels with high
        # probability; any other label appears as rare noise.
        group = set(scenes[rng.randrange(len(scenes))])
        present = [k for k in range(num_labels) if rng.random() < (0.8 if k in group else 0.05)]
        if not present:
            present = [rng.choice(sorted(group))]

        shade = rng.randint(90, 160)
        img = Image.new("RGB", (image_size, image_size), (shade,) * 3)
        draw = ImageDraw.Draw(img)
        for k in present:
            x = rng.randint(0, image_size - side)
            y = rng.randint(0, image_size - side)
            color, shape = _label_style(k)
            _draw(draw, shape, _COLORS[color], (x, y, x + side - 1, y + side - 1))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img_id,
                    "category_id": cat_ids[k],
                    "iscrowd": 0,
                    "bbox": [x, y, side, side],
                    "area": float(side * side),
                    "segmentation": [[x, y, x + side, y, x + side, y + side, x, y + side]],
                }
            )
        file_name = f"{img_id:012d}.jpg"
        img.save(os.path.join(image_dir, file_name), quality=90)
        images.append(
            {"id": img_id, "file_name": file_name, "width": image_size, "height": image_size}
        )

    categories = [
        {"id": c, "name": n, "supercategory": "shape"} for c, n in zip(cat_ids, names, strict=True)
    ]
    with open(ann_file, "w") as f:
        json.dump(
            {
                "info": {"description": "agcn_pyg synthetic COCO"},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": categories,
            },
            f,
        )


def make_synthetic_coco(
    root: str | os.PathLike,
    num_train: int = 64,
    num_val: int = 32,
    num_labels: int = 8,
    image_size: int = 64,
    seed: int = 0,
) -> SyntheticCoco:
    r"""Writes a small COCO-format multi-label dataset under :obj:`root`.

    Layout: ``root/train2017/*.jpg``, ``root/val2017/*.jpg`` and
    ``root/annotations/instances_{train,val}2017.json``.  Each label is a
    coloured shape (e.g. ``red_square``) drawn at a random position, so a
    small CNN can learn it.  Labels are correlated: every image belongs to one
    of ``max(2, num_labels // 3)`` latent scenes, each of which turns on a
    group of labels with probability 0.8, while every other label appears
    with probability 0.05.  Category ids are not contiguous (1, 2, 3, 5, ...).
    Every image has at least one label.  The output is a deterministic
    function of the arguments.

    Args:
        root (str): Output folder (created if needed).
        num_train (int, optional): Training images. (default: :obj:`64`)
        num_val (int, optional): Validation images. (default: :obj:`32`)
        num_labels (int, optional): Number of categories. (default: :obj:`8`)
        image_size (int, optional): Image side in pixels. (default: :obj:`64`)
        seed (int, optional): Random seed. (default: :obj:`0`)

    Returns:
        SyntheticCoco: the written paths and the label names in
        category-id order.
    """
    if num_labels < 1:
        raise ValueError(f"'num_labels' must be at least 1, got {num_labels}")
    if image_size < 8:
        raise ValueError(f"'image_size' must be at least 8, got {image_size}")
    root = os.fspath(root)
    rng = random.Random(seed)

    cat_ids = _category_ids(num_labels)
    names = []
    for k in range(num_labels):
        color, shape = _label_style(k)
        name = f"{color}_{shape}"
        names.append(name if name not in names else f"{name}_{k}")

    # Scenes: a shuffled partition of the labels into groups, each also
    # borrowing the first label of the next group so the groups chain.
    order = list(range(num_labels))
    rng.shuffle(order)
    num_scenes = max(2, num_labels // 3)
    groups = [order[s::num_scenes] or order[:1] for s in range(num_scenes)]
    scenes = [g + groups[(s + 1) % num_scenes][:1] for s, g in enumerate(groups)]

    ann_dir = os.path.join(root, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    out = SyntheticCoco(
        root=root,
        train_image_dir=os.path.join(root, "train2017"),
        val_image_dir=os.path.join(root, "val2017"),
        train_ann_file=os.path.join(ann_dir, "instances_train2017.json"),
        val_ann_file=os.path.join(ann_dir, "instances_val2017.json"),
        label_names=tuple(names),
    )
    _write_split(
        rng,
        out.train_image_dir,
        out.train_ann_file,
        num_train,
        scenes,
        cat_ids,
        names,
        image_size,
        first_id=1,
    )
    _write_split(
        rng,
        out.val_image_dir,
        out.val_ann_file,
        num_val,
        scenes,
        cat_ids,
        names,
        image_size,
        first_id=num_train + 1,
    )
    return out
