"""Image transforms of the ASL / ML-AGCN training recipe, built from timm parts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.data import resolve_model_data_config
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import str_to_interp_mode
from torchvision import transforms as T

__all__ = ["build_transforms", "squash_data_config"]


def squash_data_config(
    model_or_data_config: torch.nn.Module | Mapping[str, Any], img_size: int
) -> dict[str, Any]:
    """The timm data config of this recipe's evaluation transform: a squash resize of the
    whole image to :obj:`img_size` :math:`\times` :obj:`img_size` (``crop_mode="squash"``,
    ``crop_pct=1.0``: nothing cropped, so no labelled object is cut away), with the
    backbone's mean, std and interpolation. Record it on the model with
    :meth:`~agcn_pyg.MLAGCN.set_data_config`; then ``timm.data.resolve_data_config({},
    model=model)`` returns it and ``timm.data.create_transform(**config)`` builds the same
    evaluation transform as ``build_transforms(config, img_size, train=False)``."""
    if isinstance(model_or_data_config, torch.nn.Module):
        config = resolve_model_data_config(model_or_data_config)
    else:
        config = model_or_data_config
    if not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"'img_size' must be a positive integer (got {img_size!r})")
    channels = tuple(config.get("input_size", (3,)))[0]
    return dict(
        input_size=(channels, img_size, img_size),
        interpolation=config.get("interpolation", "bilinear"),
        mean=tuple(float(m) for m in config["mean"]),
        std=tuple(float(s) for s in config["std"]),
        crop_pct=1.0,
        crop_mode="squash",
    )


def build_transforms(
    model_or_data_config: torch.nn.Module | Mapping[str, Any],
    img_size: int = 448,
    train: bool = True,
    randaugment: str | None = "rand-m9-mstd0.5",
    cutout: float = 0.5,
) -> T.Compose:
    r"""Builds the training or evaluation transform of a PIL RGB image.

    Training (ASL's recipe, which ML-AGCN follows):

    1. squash resize to :obj:`img_size` :math:`\times` :obj:`img_size` (the
       aspect ratio is not kept and nothing is cropped, so no object is cut
       out of the image and its labels stay valid);
    2. timm RandAugment (:obj:`randaugment` config string);
    3. :class:`~torchvision.transforms.ToTensor` and normalisation with the
       backbone's mean/std;
    4. Cutout as timm's :class:`~timm.data.RandomErasing` with probability
       :obj:`cutout`, filled with 0 (the mean colour after normalisation;
       black for [0, 1] inputs).

    Evaluation: squash resize, ``ToTensor`` and normalisation only.

    The mean, std and interpolation come from the backbone's timm data
    config.  TResNet's config has mean 0 and std 1, i.e. it takes [0, 1]
    inputs without normalisation, as in ASL; ImageNet-style backbones get
    the usual mean/std.

    Differences from ASL's own code: Cutout erases a rectangle of random area
    (2 % to 33 %) and aspect ratio on the normalised tensor, after
    RandAugment, where ASL pastes a random-colour box of half the image side
    onto the PIL image before RandAugment.

    Args:
        model_or_data_config (torch.nn.Module or dict): A timm model, or a
            data config such as returned by
            :func:`timm.data.resolve_model_data_config` (keys ``mean``,
            ``std`` and optionally ``interpolation``).
        img_size (int, optional): Output side in pixels. (default: :obj:`448`)
        train (bool, optional): Build the training transform instead of the
            evaluation one. (default: :obj:`True`)
        randaugment (str, optional): timm RandAugment config string, or
            :obj:`None` to disable it. (default: :obj:`"rand-m9-mstd0.5"`)
        cutout (float, optional): Probability of Cutout; :obj:`0` disables
            it. (default: :obj:`0.5`)

    Returns:
        torchvision.transforms.Compose: maps a PIL image to a float tensor
        ``[3, img_size, img_size]``.
    """
    if isinstance(model_or_data_config, torch.nn.Module):
        config = resolve_model_data_config(model_or_data_config)
    elif isinstance(model_or_data_config, Mapping):
        config = model_or_data_config
        missing = [k for k in ("mean", "std") if k not in config]
        if missing:
            raise ValueError(
                f"'model_or_data_config': data config lacks {missing}; got keys {sorted(config)}"
            )
    else:
        raise TypeError(
            f"'model_or_data_config': expected a timm model or a data-config "
            f"dict, got {type(model_or_data_config).__name__}"
        )
    if not 0.0 <= cutout <= 1.0:
        raise ValueError(f"'cutout' must be a probability in [0, 1], got {cutout}")

    mean = tuple(float(m) for m in config["mean"])
    std = tuple(float(s) for s in config["std"])
    interpolation = str_to_interp_mode(config.get("interpolation", "bilinear"))

    ops: list[Any] = [T.Resize((img_size, img_size), interpolation=interpolation)]
    if train and randaugment:
        # Translations scale with the image as in timm's create_transform; the
        # fill colour stays timm's default grey, since a [0, 1]-input backbone's
        # "mean" of 0 would fill with black.
        ops.append(rand_augment_transform(randaugment, {"translate_const": int(img_size * 0.45)}))
    ops.append(T.ToTensor())
    if mean != (0.0, 0.0, 0.0) or std != (1.0, 1.0, 1.0):  # skip the identity
        ops.append(T.Normalize(mean, std))
    if train and cutout > 0:
        ops.append(RandomErasing(probability=cutout, mode="const", device="cpu"))
    return T.Compose(ops)
