"""Evaluation: Table 1's metrics of one or more models on one pass over a loader, with the
predictions of every DDP rank gathered and de-duplicated."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from agcn_pyg.train.checkpoint import model_from_checkpoint
from agcn_pyg.train.loaders import build_eval_loader
from agcn_pyg.train.logs import Progress
from agcn_pyg.train.loop import LoopConfig
from agcn_pyg.train.metrics import gather_predictions, multilabel_metrics

__all__ = ["checkpoint_models", "evaluate", "evaluate_checkpoint"]


def _cat(parts: list[Tensor], shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    return torch.cat(parts) if parts else torch.zeros(shape, dtype=dtype)


@torch.no_grad()
def _predict(models: Mapping[str, nn.Module], loader: DataLoader, cfg: LoopConfig,
             criterion: Callable | None, desc: str) -> tuple[list[Tensor], list, list]:
    """Per batch: one ``[B, K * (N + 1)]`` row block (each model's probabilities, then its
    per-image loss or NaN), the targets and the dataset indices."""
    rows, targets_all, indices_all = [], [], []
    bar = Progress(len(loader), desc, enabled=cfg.show_progress)
    try:
        for batch in loader:
            bar.update(1)
            if batch is None:
                continue
            images, targets, idx = batch
            images = cfg.images_to_device(images)
            block = []
            for m in models.values():
                with cfg.autocast():
                    logits = m(images).float()
                loss = (criterion(logits, targets.to(cfg.device)).sum(1) if criterion
                        else torch.full((logits.size(0),), torch.nan, device=logits.device))
                block += [torch.sigmoid(logits).cpu(), loss[:, None].float().cpu()]
            rows.append(torch.cat(block, 1))
            targets_all.append(targets.bool().cpu())
            indices_all.append(torch.as_tensor(idx).long().cpu())
    finally:
        bar.close()
    return rows, targets_all, indices_all


def evaluate(models: Mapping[str, nn.Module], loader: DataLoader, cfg: LoopConfig, *,
             num_labels: int, threshold: float = 0.5,
             criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
             desc: str = "eval", tune: str | None = None) -> dict[str, dict[str, float]]:
    """Scores every model in ``models`` on one pass over ``loader`` and returns, per model,
    :func:`~agcn_pyg.multilabel_metrics` plus ``num_images`` and, with a ``criterion`` whose
    reduction is ``'none'``, ``loss`` (mean per-image ASL loss). ``tune="CF1"`` adds the
    metrics at the CF1-best threshold on these images (``*_tuned``; reported, never used
    to choose).

    Under DDP the predictions (and losses) of all ranks are gathered in one call and
    de-duplicated by dataset index (:func:`~agcn_pyg.train.metrics.gather_predictions`), so every
    validation image counts once; every rank gets the result. Unreadable images are left
    out, with a warning; none readable at all is a :class:`ValueError`.
    """
    for m in models.values():
        m.eval()
    rows, targets, indices = _predict(models, loader, cfg, criterion, desc)
    width = len(models) * (num_labels + 1)
    rows, targets, _ = gather_predictions(
        _cat(rows, (0, width), torch.float32), _cat(targets, (0, num_labels), torch.bool),
        _cat(indices, (0,), torch.long))
    total = len(loader.dataset)
    if rows.size(0) == 0:
        raise ValueError(f"{desc}: none of the {total} images could be read")
    results: dict[str, dict[str, float]] = {}
    for k, name in enumerate(models):
        block = rows[:, k * (num_labels + 1):(k + 1) * (num_labels + 1)]
        res = multilabel_metrics(block[:, :num_labels], targets, threshold, tune=tune)
        res["num_images"] = int(rows.size(0))
        if criterion is not None:
            res["loss"] = block[:, num_labels].double().mean().item()
        results[name] = res
    if rows.size(0) < total:
        warnings.warn(f"{desc}: {total - rows.size(0)} of {total} images were unreadable and "
                      f"are left out of the metrics", stacklevel=2)
    return results


def checkpoint_models(state: Mapping, cfg: LoopConfig) -> dict[str, nn.Module]:
    """The models of a checkpoint to score, on ``cfg.device``: ``"ML-AGCN EMA"`` and
    ``"ML-AGCN"`` for a training checkpoint with EMA weights, else its one set of weights
    (named after where they came from)."""
    if state.get("ema") is not None:
        variants = [("ML-AGCN EMA", True), ("ML-AGCN", False)]
    else:
        variants = [("ML-AGCN EMA" if state.get("weights_source") == "ema" else "ML-AGCN",
                     False)]
    models = {}
    for name, use_ema in variants:
        model = model_from_checkpoint(state, use_ema=use_ema)[0].to(cfg.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        models[name] = model
    return models


def evaluate_checkpoint(state: Mapping, val_set, cfg: LoopConfig, batch_size: int,
                        threshold: float = 0.5, tune: str | None = "CF1", **loader_kwargs
                        ) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Scores the models of a checkpoint (:func:`checkpoint_models`) on ``val_set`` with
    the checkpoint's evaluation transform; returns the metrics (at ``threshold`` and, with
    ``tune``, at the threshold that maximises that metric on ``val_set``: ``*_tuned``) and
    the parameter counts per model. ``loader_kwargs`` go to
    :func:`~agcn_pyg.train.build_eval_loader`."""
    from agcn_pyg.data.transforms import build_transforms
    from agcn_pyg.models.mlagcn import count_parameters

    names = list(state["label_names"])
    if list(val_set.label_names) != names:
        raise ValueError(f"the validation labels differ from the checkpoint's {len(names)} "
                         f"labels: {list(val_set.label_names)[:5]}... vs {names[:5]}...")
    data_config = state["config"]["data_config"]
    val_set.transform = build_transforms(data_config, data_config["input_size"][-1],
                                         train=False)
    models = checkpoint_models(state, cfg)
    loader = build_eval_loader(val_set, batch_size, **loader_kwargs)
    results = evaluate(models, loader, cfg, num_labels=len(names), threshold=threshold,
                       tune=tune)
    return results, {name: count_parameters(m) for name, m in models.items()}
