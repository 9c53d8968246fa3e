"""Multi-label image datasets: COCO-format annotations and plain list files.

Both datasets expose the same attributes, so the label graph can be built from
the labels without decoding a single image:

* ``label_names`` -- list of the ``N`` label names, in label-index order;
* ``label_ptr``, ``label_index`` -- the labels in CSR form: image ``i`` carries labels
  ``label_index[label_ptr[i]:label_ptr[i + 1]]`` (memory grows with the number of labels
  carried, not with ``N``: Open Images' 1.7M images x 9605 labels would be 16 GB dense);
  :meth:`label_matrix` returns them as a sparse ``[num_images, N]`` matrix (COO);
* ``labels`` -- the ``[num_images, N]`` boolean multi-hot tensor, made dense on access;
* ``image_paths`` -- list of the image file paths, row-aligned with the labels.

``dataset[i]`` returns ``(image, target, i)``: the transformed image, the
float multi-hot target ``[N]`` and the index ``i`` itself (used to drop the
duplicates that :class:`~torch.utils.data.DistributedSampler` pads with).
A corrupt or truncated image yields ``None`` with a warning instead of
crashing a long run; batch with :func:`collate_skip_corrupt`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

__all__ = ["CocoMultiLabel", "ListFileMultiLabel", "collate_skip_corrupt"]

# How many offending names a warning spells out before summarising.
_MAX_NAMED = 5


def _require_path(path: str | os.PathLike, arg: str, is_dir: bool) -> str:
    path = os.fspath(path)
    ok = os.path.isdir(path) if is_dir else os.path.isfile(path)
    if not ok:
        kind = "directory" if is_dir else "file"
        raise FileNotFoundError(f"'{arg}': {kind} '{path}' does not exist")
    return path


def _first_few(items: Sequence[str]) -> str:
    shown = ", ".join(repr(s) for s in items[:_MAX_NAMED])
    return shown + (", ..." if len(items) > _MAX_NAMED else "")


def _few_ids(ids) -> str:
    """The first few of a set of ids, sorted (numbers before strings), unquoted."""
    ordered = sorted(ids, key=lambda i: (not isinstance(i, (int, float)), str(i) if
                                         not isinstance(i, (int, float)) else i))
    shown = ", ".join(str(i) for i in ordered[:_MAX_NAMED])
    return shown + (", ..." if len(ordered) > _MAX_NAMED else "")


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Decodes a whole image file as RGB (grayscale, RGBA, palette, CMYK alike). The full
    decode makes a truncated file fail here, not later in a transform.

    A file PIL refuses as a decompression bomb (more than twice
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels) or that is not a regular file raises
    :class:`ValueError`, like any other unreadable image.

    16-bit and 32-bit grayscale (Pillow modes ``I;16``, ``I;16B``, ``I``, ``F``) are scaled
    to 8 bits by their range rather than clipped, which would turn nearly every pixel of a
    16-bit PNG white: see :func:`_wide_to_8bit`."""
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block for ever
        raise ValueError(f"'{os.fspath(path)}' is not a regular file")
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as e:  # a header claiming billions of pixels
        raise ValueError(f"image '{os.fspath(path)}' is too large to decode ({e})") from None
    with img:
        img.load()
        if img.mode.startswith("I") or img.mode == "F":
            img = _wide_to_8bit(img, path)
        return img.convert("RGB")


# The value ranges of 8- and 16-bit samples, tried in this order for modes that do not
# declare one ("F" also tries [0, 1], the usual range of float images).
_STANDARD_RANGES = ((0.0, 1.0), (0.0, 255.0), (0.0, 65535.0))


def _wide_to_8bit(img: Image.Image, path: str | os.PathLike) -> Image.Image:
    """An ``L`` image from a 16/32-bit integer or float grayscale one.

    ``I;16*`` modes declare 16-bit samples: ``0..65535`` maps to ``0..255`` (``v * 257``
    back to ``v``, so a 16-bit copy of an 8-bit image reads as that image). ``I`` and ``F``
    declare nothing (Pillow opens 16-bit PGMs as ``I``): their values are read in the
    smallest of ``[0, 1]`` (``F`` only), ``[0, 255]`` and ``[0, 65535]`` that holds them,
    and stretched from their own minimum to maximum when none does."""
    values = np.asarray(img, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"image '{os.fspath(path)}' (mode {img.mode}) has NaN or infinite pixels")
    if img.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        ranges = _STANDARD_RANGES if img.mode == "F" else _STANDARD_RANGES[1:]
        low, high = next(((a, b) for a, b in ranges if a <= lo and hi <= b), (lo, hi))
    scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0.0
    return Image.fromarray(np.rint(scaled).clip(0, 255).astype(np.uint8))  # mode L


class _MultiLabelImageDataset(Dataset):
    """Shared storage, filtering and image loading of the multi-label datasets.

    Subclasses parse their annotation format and call :meth:`_set_samples`.
    """

    label_names: list[str]
    label_ptr: torch.Tensor  # [num_images + 1] int64
    label_index: torch.Tensor  # [sum of labels per image] int64, sorted within each image
    image_paths: list[str]

    def __init__(self, transform: Callable | None = None):
        self.transform = transform

    def _set_samples(
        self,
        image_paths: Sequence[str],
        rows: Sequence[Sequence[int]],
        label_names: Sequence[str],
        source: str,
    ) -> torch.Tensor:
        """Drops samples whose image file is missing, checks what is left. ``rows[i]``: the
        label indices of image ``i`` (any order, repeats allowed).

        Returns the boolean mask of the kept samples, so subclasses can filter
        their own per-image metadata the same way.
        """
        exists = torch.tensor([os.path.isfile(p) for p in image_paths], dtype=torch.bool)
        missing = [p for p, ok in zip(image_paths, exists.tolist(), strict=True) if not ok]
        if missing:
            warnings.warn(
                f"{len(missing)} of {len(image_paths)} images listed in "
                f"{source} do not exist and were dropped: "
                f"{_first_few(missing)}",
                stacklevel=3,
            )
        self.image_paths = [p for p, ok in zip(image_paths, exists.tolist(), strict=True) if ok]
        kept = [sorted(set(r)) for r, ok in zip(rows, exists.tolist(), strict=True) if ok]
        counts = torch.tensor([len(r) for r in kept], dtype=torch.long)
        self.label_ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        self.label_index = torch.tensor([k for r in kept for k in r], dtype=torch.long)
        self.label_names = list(label_names)
        if len(self.image_paths) == 0:
            why = (
                f"all {len(image_paths)} listed image files are missing"
                if image_paths
                else "it lists no usable images"
            )
            raise ValueError(f"Dataset from {source} is empty: {why}")

        # Kept as an all-zero column so label indices stay stable across
        # splits; its graph node simply has no co-occurrence statistics.
        per_label = torch.bincount(self.label_index, minlength=len(self.label_names))
        unused = [n for n, c in zip(self.label_names, per_label.tolist(), strict=True) if c == 0]
        if unused:
            warnings.warn(
                f"{len(unused)} label(s) have no positive image in {source} "
                f"and are kept as all-zero columns: {_first_few(unused)}",
                stacklevel=3,
            )
        return exists

    @property
    def num_labels(self) -> int:
        """The number of labels ``N``."""
        return len(self.label_names)

    def label_matrix(self) -> torch.Tensor:
        """The labels as a sparse ``[num_images, N]`` (coalesced COO) matrix of ones."""
        rows = torch.repeat_interleave(torch.arange(len(self)), self.label_ptr.diff())
        values = torch.ones(self.label_index.numel(), dtype=torch.bool)
        return torch.sparse_coo_tensor(torch.stack([rows, self.label_index]), values,
                                       (len(self), self.num_labels), is_coalesced=True,
                                       check_invariants=False)  # sorted and unique as built

    @property
    def labels(self) -> torch.Tensor:
        """The ``[num_images, N]`` boolean multi-hot matrix (dense: made on access)."""
        return self.label_matrix().to_dense()

    def target(self, index: int) -> torch.Tensor:
        """The float multi-hot target ``[N]`` of image ``index``."""
        target = torch.zeros(self.num_labels)
        target[self.label_index[self.label_ptr[index]:self.label_ptr[index + 1]]] = 1.0
        return target

    def __len__(self) -> int:
        return len(self.image_paths)

    def load_image(self, index: int) -> Image.Image | None:
        """Opens image ``index`` as RGB, or returns ``None`` if it is unreadable."""
        path = self.image_paths[index]
        try:
            return read_rgb(path)
        except (OSError, ValueError, SyntaxError) as e:
            warnings.warn(f"Skipping unreadable image '{path}': {e}", stacklevel=2)
            return None

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor, int] | None:
        img = self.load_image(index)
        if img is None:
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, self.target(index), index

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self)}, num_labels={self.num_labels})"


class CocoMultiLabel(_MultiLabelImageDataset):
    r"""Multi-label dataset from a COCO-format instances file.

    The label of an image is the set of categories of its annotations (crowd
    annotations included). Label ``k`` is the ``k``-th category in increasing
    category-id order -- COCO's ids run 1..90 with gaps, so ids need not be
    contiguous nor start at 1; :attr:`category_ids` maps back.  This is ASL's
    order, not ML-GCN's alphabetical one.

    Images without any annotation are dropped unless :obj:`keep_empty` is set,
    in which case they are kept as all-negative samples.  Annotated images
    whose file is missing are dropped with one warning.  A category with no
    remaining image stays a label (an all-zero column) with a warning.

    Args:
        ann_file (str): Path to the instances JSON, e.g.
            ``annotations/instances_train2017.json``.
        image_dir (str): Folder holding the images named by ``file_name``.
        transform (callable, optional): Applied to the RGB PIL image.
            (default: :obj:`None`)
        keep_empty (bool, optional): Keep images without annotations as
            all-negative samples. (default: :obj:`False`)

    Attributes:
        label_names (list[str]): Category names in label order.
        category_ids (list[int]): COCO category id of each label.
        labels (torch.Tensor): ``[num_images, N]`` boolean multi-hot matrix (made on
            access; stored as ``label_ptr``/``label_index``, see :meth:`label_matrix`).
        image_paths (list[str]): Image file of each row.
        image_ids (list[int]): COCO image id of each row.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        transform: Callable | None = None,
        keep_empty: bool = False,
    ):
        super().__init__(transform)
        ann_file = _require_path(ann_file, "ann_file", is_dir=False)
        image_dir = _require_path(image_dir, "image_dir", is_dir=True)
        coco = read_coco(ann_file)

        self.category_ids = sorted(coco.getCatIds())
        col = {cid: k for k, cid in enumerate(self.category_ids)}
        names = [coco.cats[cid]["name"] for cid in self.category_ids]

        image_ids = sorted(coco.getImgIds())
        if not keep_empty:
            num_listed = len(image_ids)
            image_ids = [i for i in image_ids if coco.imgToAnns[i]]
            if num_listed and not image_ids:
                raise ValueError(
                    f"Dataset from '{ann_file}' is empty: none of its {num_listed} images has "
                    f"an annotation (pass keep_empty=True to keep them as all-negative)"
                )
        rows = [[col[a["category_id"]] for a in coco.imgToAnns[i]] for i in image_ids]
        paths = [os.path.join(image_dir, coco.imgs[i]["file_name"]) for i in image_ids]

        keep = self._set_samples(paths, rows, names, f"'{ann_file}'")
        self.image_ids = [i for i, ok in zip(image_ids, keep.tolist(), strict=True) if ok]


def _read_json(path: str, arg: str) -> Any:
    """``json.load`` of ``path``, its errors naming the file (json's own name a line only)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"'{arg}': '{path}' is not a JSON file ({e})") from None


def _read_lines(path: str, arg: str) -> list[str]:
    """The lines of a UTF-8 text file; a binary or otherwise encoded one is named."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"'{arg}': '{path}' is not a UTF-8 text file ({e})") from None


# The fields of a COCO record this package reads: integer ids, non-empty strings.
_COCO_FIELDS = {"images": {"id": int, "file_name": str},
                "categories": {"id": int, "name": str},
                "annotations": {"id": int, "image_id": int, "category_id": int}}
# Fields no two records of a list may share.
_COCO_UNIQUE = {"images": ("id",), "categories": ("id", "name"), "annotations": ()}


def _check_coco_records(data: dict[str, Any], source: str, arg: str) -> None:
    """Raises a :class:`ValueError` naming the file and the first bad entry: a list that is
    missing, a record without a field it needs or with a wrong type (a ``null``
    ``file_name``, a string id), or an image id, category id or category name used twice
    (pycocotools would keep one image of two and merge their labels, or name two labels
    alike)."""
    for key, fields in _COCO_FIELDS.items():
        if key not in data and key == "annotations":  # e.g. COCO's image_info_test files
            continue
        records = data.get(key)
        if not isinstance(records, list):
            raise ValueError(
                f"'{arg}': {source} must have a list '{key}' (got "
                f"{'nothing' if records is None else type(records).__name__})"
            )
        first: dict[tuple[str, Any], int] = {}
        for i, r in enumerate(records):
            if not isinstance(r, dict) or any(k not in r for k in fields):
                raise ValueError(
                    f"'{arg}': {key}[{i}] in {source} must be an object with "
                    f"{' and '.join(map(repr, fields))} (got {str(r)[:80]})"
                )
            for k, kind in fields.items():
                value = r[k]
                if isinstance(value, bool) or not isinstance(value, kind) or value == "":
                    expected = "an integer" if kind is int else "a non-empty string"
                    raise ValueError(f"'{arg}': {key}[{i}] in {source} has {k} {value!r}; "
                                     f"expected {expected}")
            for k in _COCO_UNIQUE[key]:
                j = first.setdefault((k, r[k]), i)
                if j != i:
                    raise ValueError(f"'{arg}': {key}[{i}] in {source} repeats the {k} "
                                     f"{r[k]!r} of {key}[{j}]; each must be unique")


def read_coco(ann_file: str | os.PathLike | dict[str, Any], arg: str = "ann_file") -> Any:
    """Loads a COCO-format instances file (or its parsed dict) into a
    :class:`pycocotools.coco.COCO`, with clear errors instead of pycocotools' ``KeyError``.

    A file that is not JSON, a missing ``images``/``categories`` list, a record without its
    ids (or with a string id, a ``null`` file name), a repeated image id, category id or
    category name raise :class:`ValueError` naming the file and the entry; so does an
    annotation whose ``category_id`` is not among the ``categories`` (which label would it
    be?). Annotations
    pointing to an image id that is not among the ``images`` are dropped, counted and
    warned about, so that neither the dataset nor the label graph sees them.
    """
    from pycocotools.coco import COCO

    if isinstance(ann_file, dict):
        data, source = ann_file, f"'{arg}'"
    else:
        path = _require_path(ann_file, arg, is_dir=False)
        source = f"'{path}'"
        data = _read_json(path, arg)
    if not isinstance(data, dict):
        raise ValueError(
            f"'{arg}': {source} must hold a COCO JSON object with 'images', 'annotations' "
            f"and 'categories' (got a JSON {type(data).__name__})"
        )
    _check_coco_records(data, source, arg)
    annotations = data.get("annotations", [])
    category_ids = {c["id"] for c in data["categories"]}
    unknown = {a["category_id"] for a in annotations} - category_ids
    if unknown:
        count = sum(a["category_id"] not in category_ids for a in annotations)
        raise ValueError(
            f"'{arg}': {count} annotation(s) in {source} have category_id "
            f"{_few_ids(unknown)}, which is not among its 'categories' (ids "
            f"{_few_ids(category_ids)})"
        )
    image_ids = {img["id"] for img in data["images"]}
    orphans = [a for a in annotations if a["image_id"] not in image_ids]
    if orphans:
        missing = {a["image_id"] for a in orphans}
        warnings.warn(
            f"{len(orphans)} of {len(annotations)} annotations in {source} point to image "
            f"ids that are not among its 'images' and were ignored: {_few_ids(missing)}",
            stacklevel=2,
        )
        data = {**data, "annotations": [a for a in annotations if a["image_id"] in image_ids]}

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def _read_label_names(path: str) -> list[str]:
    """Reads label names from a ``.json`` (list or name->index dict) or text file."""
    if path.lower().endswith(".json"):
        data = _read_json(path, "label_names_file")
        if isinstance(data, list):
            return [str(n) for n in data]
        if isinstance(data, dict):
            if any(isinstance(v, list) for v in data.values()):
                raise ValueError(
                    f"'label_names_file': '{path}' maps images to label lists (SSGRL's "
                    "vg_category_500_labels_index.json): pass it as 'image_labels_file' "
                    "(--image-labels) instead"
                )
            indices = sorted(data.values())
            if indices != list(range(len(data))):
                raise ValueError(
                    f"'label_names_file': the name->index dict in '{path}' "
                    f"must map to 0..{len(data) - 1} exactly once each"
                )
            return sorted(data, key=data.__getitem__)
        raise ValueError(
            f"'label_names_file': expected a JSON list or dict "
            f"in '{path}', got {type(data).__name__}"
        )
    return [line.strip() for line in _read_lines(path, "label_names_file") if line.strip()]


class ListFileMultiLabel(_MultiLabelImageDataset):
    r"""Multi-label dataset from a plain list file (VG-500, your own data).

    Each non-empty line of :obj:`list_file` is an image path relative to
    :obj:`image_root` followed by its labels, separated by whitespace::

        VG_100K/2354786.jpg 3 17 240
        VG_100K/2368334.jpg 17

    Labels are either 0-based integer indices or label names; the file is read
    as indices if *every* label token in it parses as an integer, and as names
    otherwise.  A line with a path and no label is an all-negative image.
    Lines starting with ``#`` are comments.  Paths may not contain spaces.

    The label names file is either a text file with one name per line (line
    ``k`` is label ``k``) or a ``.json`` file holding a list of names or a
    ``{name: index}`` dict, such as SSGRL's
    ``vg_category_500_labels_index.json``.

    VG-500 as SSGRL and C-Tran ship it has bare image names in its lists
    (``train_list_500.txt``, ``test_list_500.txt``) and the labels of every image
    in a JSON ``{image name: [label indices]}`` (``vg_category_500_labels_index.json``):
    pass that file as :obj:`image_labels_file`, the ``VG_100K`` folder as
    :obj:`image_root`, and :obj:`num_labels=500` (names then default to
    ``"0"`` .. ``"499"`` unless a names file is given)::

        ListFileMultiLabel("train_list_500.txt", "VG_100K",
                           image_labels_file="vg_category_500_labels_index.json",
                           num_labels=500)

    Missing image files are dropped with one warning; labels no image carries
    are kept as all-zero columns with a warning.

    Args:
        list_file (str): The list file described above.
        image_root (str): Folder the image paths are relative to.
        label_names_file (str, optional): Label names, ``.txt`` or ``.json``;
            required unless :obj:`image_labels_file` is given.
        transform (callable, optional): Applied to the RGB PIL image.
            (default: :obj:`None`)
        image_labels_file (str, optional): JSON ``{image name: [label indices]}``
            adding labels to the lines' own. (default: :obj:`None`)
        num_labels (int, optional): Number of labels when there is no names file
            (default: the largest index + 1).

    Attributes:
        label_names (list[str]): Names in label order.
        labels (torch.Tensor): ``[num_images, N]`` boolean multi-hot matrix (made on
            access; stored as ``label_ptr``/``label_index``, see :meth:`label_matrix`).
        image_paths (list[str]): Image file of each row.
    """

    def __init__(
        self,
        list_file: str | os.PathLike,
        image_root: str | os.PathLike,
        label_names_file: str | os.PathLike | None = None,
        transform: Callable | None = None,
        image_labels_file: str | os.PathLike | None = None,
        num_labels: int | None = None,
    ):
        super().__init__(transform)
        list_file = _require_path(list_file, "list_file", is_dir=False)
        image_root = _require_path(image_root, "image_root", is_dir=True)
        if label_names_file is None and image_labels_file is None:
            raise ValueError("pass 'label_names_file', 'image_labels_file' or both")

        entries: list[tuple[int, str, list[str]]] = []
        for lineno, line in enumerate(_read_lines(list_file, "list_file"), start=1):
            tokens = line.split()
            if tokens and not tokens[0].startswith("#"):
                entries.append((lineno, tokens[0], tokens[1:]))

        if image_labels_file is not None:
            labels_path = _require_path(image_labels_file, "image_labels_file", is_dir=False)
            per_image = _read_json(labels_path, "image_labels_file")
            if not isinstance(per_image, dict):
                raise ValueError(
                    f"'image_labels_file': '{labels_path}' must hold a JSON "
                    f"{{image name: [label indices]}} dict"
                )
            # Each image's JSON labels join its line's own (as integer tokens).
            entries = [
                (lineno, path, tokens + [str(k) for k in per_image.get(path, [])])
                for lineno, path, tokens in entries
            ]
        if label_names_file is not None:
            names_file = _require_path(label_names_file, "label_names_file", is_dir=False)
            names = _read_label_names(names_file)
        else:
            names_file = image_labels_file
            if num_labels is None:
                num_labels = 1 + max((int(t) for _, _, ts in entries for t in ts), default=-1)
            names = [str(k) for k in range(num_labels)]
        if len(set(names)) != len(names):
            raise ValueError(f"'label_names_file': '{names_file}' repeats label names")

        as_int = all(_is_int(t) for _, _, toks in entries for t in toks)
        index = {n: k for k, n in enumerate(names)}
        rows: list[list[int]] = []
        for lineno, _, tokens in entries:
            rows.append([])
            for t in tokens:
                if as_int:
                    k = int(t)
                    if not 0 <= k < len(names):
                        raise ValueError(
                            f"'{list_file}' line {lineno}: label index {k} "
                            f"is outside 0..{len(names) - 1} (from "
                            f"'{names_file}')"
                        )
                else:
                    if t not in index:
                        raise ValueError(
                            f"'{list_file}' line {lineno}: unknown label name "
                            f"'{t}' (not in '{names_file}'; labels are read "
                            f"as names because not all tokens are integers)"
                        )
                    k = index[t]
                rows[-1].append(k)
        paths = [os.path.join(image_root, p) for _, p, _ in entries]
        self._set_samples(paths, rows, names, f"'{list_file}'")


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def collate_skip_corrupt(batch: list[Any]) -> Any | None:
    """:func:`~torch.utils.data.default_collate` that drops ``None`` samples.

    Returns ``None`` when every sample of the batch was unreadable, so the
    training loop must skip ``None`` batches::

        for batch in loader:
            if batch is None:
                continue
    """
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return default_collate(batch)
