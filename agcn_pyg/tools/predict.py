"""Batched multi-label prediction over image files and folders, from a checkpoint alone.

Images are preprocessed with the evaluation transform of the model's data config (its
``pretrained_cfg``: for a trained model, the squash resize it was trained with). An
unreadable file does not stop the batch: it is reported with a warning naming it, and its
record carries an ``error``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from agcn_pyg.data.datasets import read_rgb
from agcn_pyg.io import atomic_write
from agcn_pyg.models.mlagcn import MLAGCN
from agcn_pyg.train.checkpoint import LoadedModel, load_model

__all__ = [
    "IMAGE_EXTENSIONS",
    "check_options",
    "eval_transform",
    "find_images",
    "predict",
    "printable",
    "write_csv",
    "write_json",
]

#: File name endings :func:`find_images` collects from folders (case-insensitive).
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
)


def find_images(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> list[str]:
    """Expands files and folders into a list of image files: a folder is searched
    recursively for names ending in ``extensions`` (sorted, hidden entries skipped); a file
    is kept as given whatever its name, so that a bad file named explicitly is reported
    rather than silently dropped. A broken symbolic link is kept too: :func:`predict`
    reports it as unreadable and goes on."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    ends = tuple(e.lower() for e in extensions)
    out = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            found = []
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [os.path.join(root, f) for f in files
                          if f.lower().endswith(ends) and not f.startswith(".")]
            out += sorted(found)
        elif os.path.isfile(path) or os.path.islink(path):  # a broken link: reported later
            out.append(path)
        else:
            raise FileNotFoundError(f"'paths': '{path}' is neither an image file nor a folder")
    return out


def eval_transform(data_config: Mapping[str, Any]):
    """The evaluation transform of a timm data config, built by
    :func:`timm.data.create_transform`: resize (and crop, per ``crop_mode`` and
    ``crop_pct``) to ``input_size``, tensor, normalisation. Without ``crop_mode`` it is
    this project's squash resize (``crop_mode="squash"``, ``crop_pct=1.0``), identical to
    :func:`~agcn_pyg.build_transforms` with ``train=False``."""
    from timm.data import create_transform

    missing = [k for k in ("input_size", "mean", "std") if k not in data_config]
    if missing:
        raise ValueError(
            f"'data_config' lacks {missing} (timm's input_size (3, H, W), mean and std); "
            f"got keys {sorted(data_config)}"
        )
    squash = "crop_mode" not in data_config
    return create_transform(
        input_size=tuple(data_config["input_size"]),
        is_training=False,
        interpolation=data_config.get("interpolation", "bilinear"),
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        crop_pct=1.0 if squash else data_config.get("crop_pct"),
        crop_mode="squash" if squash else data_config["crop_mode"],
    )


class _ImageFiles(Dataset):
    """``(image tensor or None, index, error message or None)`` per file."""

    def __init__(self, paths: Sequence[str], transform):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return self.transform(read_rgb(self.paths[index])), index, None
        except Exception as e:  # any decoding failure is reported per file
            return None, index, f"{type(e).__name__}: {e}"


def _collate(batch):
    good = [b for b in batch if b[0] is not None]
    images = torch.stack([b[0] for b in good]) if good else None
    return images, [b[1] for b in good], [(b[1], b[2]) for b in batch if b[0] is None]


def _select(probs: Tensor, threshold: float, top_k: int | None, fallback_k: int) -> list[int]:
    """Label indices to report, by decreasing score: the ``top_k`` best when given, else
    those at or above ``threshold``, else the ``fallback_k`` best."""
    order = probs.argsort(descending=True, stable=True).tolist()
    if top_k is not None:
        return order[:top_k]
    passing = int((probs >= threshold).sum())  # a prefix of the sorted order
    return order[:passing] if passing else order[:fallback_k]


def check_options(
    threshold: float = 0.5,
    top_k: int | None = None,
    fallback_k: int = 5,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> torch.device:
    """Checks the options of :func:`predict` (a :class:`ValueError` naming the bad one), so
    that a tool can check them before it reads a checkpoint; returns the device."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"'threshold' must be a probability in [0, 1] (got {threshold})")
    for name, value, low in (("top_k", top_k, 1), ("fallback_k", fallback_k, 1),
                             ("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if value is not None and value < low:
            raise ValueError(f"'{name}' must be at least {low} (got {value})")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"'device': {device!r} is not a device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"'device' is {device}, but CUDA is not available here")
    return device


@torch.no_grad()
def predict(
    checkpoint: str | os.PathLike | Mapping[str, Any] | MLAGCN | LoadedModel,
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    threshold: float = 0.5,
    top_k: int | None = None,
    fallback_k: int = 5,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
    num_workers: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    r"""Scores every image of ``paths`` (files and folders, see :func:`find_images`).

    Args:
        checkpoint: A checkpoint path or dict written by
            :func:`~agcn_pyg.train.checkpoint.save_checkpoint`, a folder written by
            :func:`~agcn_pyg.save_pretrained`, or an :class:`~agcn_pyg.MLAGCN`.
        paths: Image files and/or folders (searched recursively).
        threshold (float, optional): Report the labels whose probability
            :math:`\sigma(\text{logit})` is at least this. (default: :obj:`0.5`)
        top_k (int, optional): Report the ``top_k`` most probable labels instead.
            (default: :obj:`None`)
        fallback_k (int, optional): Without ``top_k``, report this many best labels when no
            label passes the threshold. (default: :obj:`5`)
        batch_size (int, optional): Images per forward pass. (default: :obj:`16`)
        device (str or torch.device, optional): ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        use_ema (bool, optional): Use the checkpoint's EMA weights when present.
        num_workers (int, optional): :class:`~torch.utils.data.DataLoader` workers decoding
            images. (default: :obj:`0`)
        progress (bool, optional): Show a tqdm progress bar. (default: :obj:`True`)

    Returns:
        list[dict]: one record per file, in :func:`find_images` order, with keys ``path``,
        ``labels`` and ``scores`` (the reported labels and their probabilities, most
        probable first), ``probabilities`` (all :math:`N`, in label order) and ``error``
        (:obj:`None`, or why the file could not be read; its other fields are then empty
        and :obj:`None`). Each unreadable file also raises a :class:`UserWarning` naming it.
    """
    device = check_options(threshold, top_k, fallback_k, batch_size, num_workers, device)
    files = find_images(paths)
    model, names, data_config = load_model(checkpoint, use_ema=use_ema)
    model = model.to(device).eval()
    loader = DataLoader(
        _ImageFiles(files, eval_transform(data_config)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )

    records: list[dict[str, Any] | None] = [None] * len(files)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), unit="img", desc="predict")
    try:
        for images, indices, failures in loader:
            for i, error in failures:
                warnings.warn(f"skipping unreadable image '{printable(files[i])}': "
                              f"{printable(error)}", stacklevel=2)
                records[i] = dict(path=files[i], labels=[], scores=[], probabilities=None,
                                  error=error)
            if images is not None:
                probs = torch.sigmoid(model(images.to(device, non_blocking=True)).float()).cpu()
                for i, p in zip(indices, probs, strict=True):
                    chosen = _select(p, threshold, top_k, fallback_k)
                    records[i] = dict(
                        path=files[i],
                        labels=[names[j] for j in chosen],
                        scores=[float(p[j]) for j in chosen],
                        probabilities=p.tolist(),
                        error=None,
                    )
            if bar is not None:
                bar.update(len(indices) + len(failures))
    finally:
        if bar is not None:
            bar.close()
    return records


def printable(text: str) -> str:
    r"""``text`` as valid Unicode: the bytes of a file name that are not UTF-8 (which
    Python holds as lone surrogates, ``os.fsdecode``'s ``surrogateescape``) become
    ``\xNN``, so that the name can be printed and written to JSON and CSV; other text is
    unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that no undecodable byte made
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _printable_record(r: Mapping[str, Any]) -> dict[str, Any]:
    return {**r, "path": printable(str(r["path"])),
            "error": None if r.get("error") is None else printable(r["error"])}


def write_json(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    label_names: Sequence[str] | None = None,
    probabilities: bool = False,
) -> None:
    """Writes the records of :func:`predict` as a JSON list. The full ``probabilities`` are
    left out unless ``probabilities=True``; ``label_names``, when given, are stored next to
    them (``{"label_names": [...], "predictions": [...]}``). File names that are not UTF-8
    are written as :func:`printable` text."""
    rows = [{k: v for k, v in _printable_record(r).items()
             if probabilities or k != "probabilities"} for r in records]
    out: Any = rows if label_names is None else dict(label_names=list(label_names),
                                                     predictions=rows)
    text = json.dumps(out, indent=1, ensure_ascii=False) + "\n"
    with atomic_write(path) as f:  # an interrupted write keeps the previous file
        f.write(text.encode("utf-8"))


def write_csv(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Writes one row per image: ``path``, ``labels`` and ``scores`` (``;``-separated, most
    probable first) and ``error`` (empty when the image was read); file names that are not
    UTF-8 as :func:`printable` text."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", "labels", "scores", "error"])
    for r in map(_printable_record, records):
        writer.writerow([
            r["path"],
            ";".join(r["labels"]),
            ";".join(f"{s:.6f}" for s in r["scores"]),
            r["error"] or "",
        ])
    with atomic_write(path) as f:  # an interrupted write keeps the previous file
        f.write(text.getvalue().encode("utf-8"))
