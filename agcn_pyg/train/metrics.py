r"""Evaluation metrics of Tables 1-3: mAP, CP, CR, CF1, OP, OR, OF1 (and top-3 variants).

All values are returned **in percent** (like the paper's tables) as Python floats.

Conventions (``scores`` are probabilities, i.e. after the sigmoid; a label is predicted when
``score >= threshold``, default 0.5, as in ML-GCN):

* **mAP** — mean over classes with at least one positive of the non-interpolated average
  precision (precision averaged at the rank of each positive; tied scores are handled like
  :func:`sklearn.metrics.average_precision_score`). Computed with torchmetrics, which
  returns 0 (and warns) for a class without positives: those classes are left out of the
  mean. (ML-GCN's ``AveragePrecisionMeter`` breaks ties by sort order instead, so it can
  differ slightly when scores tie.)
* **CP / CR** — means over *all* classes of :math:`TP_c / \text{predicted}_c` and
  :math:`TP_c / \text{positives}_c`; a zero denominator counts as 1, giving 0. This is
  ML-GCN's convention for both, and sklearn's with ``zero_division=0``. On COCO val2014
  every class has positives, so the CR choice does not matter there.
* **CF1** — mean over classes of the per-class F1 :math:`2 TP_c / (\text{predicted}_c +
  \text{positives}_c)` (0 when both are 0). This is ASL's and IML-GCN's CF1, and the one the
  ML-AGCN table matches (CP 86.2, CR 78.3, CF1 81.7). **CF1_mlgcn** is ML-GCN's
  :math:`2 \cdot CP \cdot CR / (CP + CR)`.
* **OP / OR / OF1** — the counts pooled over classes: :math:`\sum TP / \sum
  \text{predicted}`, :math:`\sum TP / \sum \text{positives}`, and their harmonic mean.
* ``*_top3`` — the same threshold metrics when each image keeps only its 3 highest scores
  that also pass the threshold (there is no ``mAP_top3``).
* ``*_tuned`` (with ``tune="CF1"``) — the threshold metrics again, at the one threshold
  ``threshold_tuned`` that maximises CF1 **on the scores being evaluated**
  (:func:`tune_threshold`). That is an optimistic number, fit on the validation set itself:
  it tells how balanced precision and recall *can* be (ASL's scores sit high, so 0.5 is
  recall-heavy; ASL's own validation script uses 0.8), and it is never used to pick a model
  (model selection uses mAP, which needs no threshold).

**Which threshold.** The configured one (``threshold``, default 0.5 as in ML-GCN) is the
row to compare with published tables; the paper does not state its threshold.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import multilabel_average_precision

from agcn_pyg.train.distributed import all_gather_rows, is_distributed

__all__ = [
    "MultiLabelMetrics",
    "average_precision",
    "deduplicate_predictions",
    "format_table",
    "gather_predictions",
    "multilabel_metrics",
    "threshold_rows",
    "tune_threshold",
]

THRESHOLD_METRICS = ("CP", "CR", "CF1", "CF1_mlgcn", "OP", "OR", "OF1")
TABLE_COLUMNS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")


def _check_inputs(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    scores, targets = torch.as_tensor(scores), torch.as_tensor(targets)
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise ValueError(
            "`scores` and `targets` must both have shape [num_images, num_labels], got "
            f"{tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    # float32 at least, never lower: a float64 0.49999999999 must not round up to 0.5.
    scores = scores.detach().cpu()
    scores = scores.double() if scores.dtype == torch.float64 else scores.float()
    if scores.numel() and (torch.isnan(scores).any() or scores.min() < 0 or scores.max() > 1):
        raise ValueError(
            "`scores` must be probabilities in [0, 1] (apply torch.sigmoid to logits), got "
            f"values in [{scores.min().item()}, {scores.max().item()}]"
        )
    return scores, targets.detach().cpu() > 0


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Per-class non-interpolated AP, ``[N]``; NaN for classes without positives."""
    scores, positives = _check_inputs(scores, targets)
    with warnings.catch_warnings():
        # "No positive samples found in target": those classes are masked out below.
        warnings.filterwarnings("ignore", message="No positive samples")
        ap = multilabel_average_precision(
            scores,
            positives.long(),
            num_labels=scores.size(1),
            average="none",
            thresholds=None,  # exact: every distinct score is a threshold, like sklearn
            validate_args=False,
        )
    return torch.where(positives.any(0), ap.double(), torch.nan)


def _threshold_metrics(pred: Tensor, positives: Tensor) -> dict[str, float]:
    tp = (pred & positives).sum(0).double()
    n_pred = pred.sum(0).double()
    n_pos = positives.sum(0).double()

    # Zero denominators count as 1 (ML-GCN; sklearn zero_division=0).
    cp = (tp / n_pred.clamp(min=1)).mean().item()
    cr = (tp / n_pos.clamp(min=1)).mean().item()
    cf1 = (2 * tp / (n_pred + n_pos).clamp(min=1)).mean().item()
    op = (tp.sum() / n_pred.sum().clamp(min=1)).item()
    o_r = (tp.sum() / n_pos.sum().clamp(min=1)).item()

    def harmonic(a: float, b: float) -> float:
        return 2 * a * b / (a + b) if a + b > 0 else 0.0

    values = {
        "CP": cp,
        "CR": cr,
        "CF1": cf1,
        "CF1_mlgcn": harmonic(cp, cr),
        "OP": op,
        "OR": o_r,
        "OF1": harmonic(op, o_r),
    }
    return {k: 100.0 * v for k, v in values.items()}


def tune_threshold(scores: Tensor, targets: Tensor, metric: str = "CF1") -> tuple[float, float]:
    r"""The one threshold (shared by all classes) that maximises ``metric`` on these scores.

    Predicting ``score >= t`` gives the same predictions for every :math:`t` between two
    consecutive distinct scores, so the candidates are the distinct score values; all are
    tried, exactly, in :math:`O(MN \log MN)` for :math:`M` images and :math:`N` labels:
    sorted by score, each entry changes only its own class's F1, so CF1 at every candidate is
    a cumulative sum of per-entry changes. Ties between thresholds go to the highest one.

    Args:
        scores (Tensor): ``[num_images, N]`` probabilities.
        targets (Tensor): ``[num_images, N]`` multi-hot ground truth.
        metric (str, optional): :obj:`"CF1"` (mean per-class F1, as in
            :func:`multilabel_metrics`) or :obj:`"OF1"`. (default: :obj:`"CF1"`)

    Returns:
        ``(threshold, value)``: a score value :math:`t` (predict ``score >= t``) and the
        metric there, in percent. With no scores at all, ``(nan, nan)``.
    """
    if metric not in ("CF1", "OF1"):
        raise ValueError(f"`metric` must be 'CF1' or 'OF1', got {metric!r}")
    scores, positives = _check_inputs(scores, targets)
    M, N = scores.shape
    if scores.numel() == 0:
        return math.nan, math.nan
    n_pos = positives.sum(0).double()
    # Per class, by decreasing score: TP and predicted counts once the r-th entry is in.
    col_scores, order = scores.sort(dim=0, descending=True, stable=True)
    tp = positives.gather(0, order).double().cumsum(0)
    if metric == "CF1":
        n_pred = torch.arange(1, M + 1, dtype=torch.float64).unsqueeze(1)
        f1 = 2 * tp / (n_pred + n_pos)  # n_pred >= 1: never 0 / 0
        gain = torch.diff(f1, dim=0, prepend=torch.zeros(1, N, dtype=torch.float64)) / N
    else:
        gain = positives.gather(0, order).double()  # TP gained, over all classes
    flat_scores, flat = col_scores.flatten().sort(descending=True, stable=True)
    running = gain.flatten()[flat].cumsum(0)
    if metric == "OF1":
        n_pred = torch.arange(1, running.numel() + 1, dtype=torch.float64)
        running = 2 * running / (n_pred + n_pos.sum())
    # Only the last entry of a run of equal scores is a threshold: every tie is in by then.
    last = torch.ones_like(flat_scores, dtype=torch.bool)
    last[:-1] = flat_scores[1:] != flat_scores[:-1]
    candidates = running[last]
    # First maximum = highest threshold; rounding keeps cumulative-sum noise out of ties.
    best = int(torch.argmax(torch.round(candidates * 1e12)))
    return flat_scores[last][best].item(), 100.0 * candidates[best].item()


def multilabel_metrics(
    scores: Tensor,
    targets: Tensor,
    threshold: float = 0.5,
    top_k: int = 3,
    tune: str | None = None,
) -> dict[str, float]:
    r"""All metrics of Table 1, in percent.

    Args:
        scores (Tensor): ``[num_images, N]`` probabilities (after the sigmoid).
        targets (Tensor): ``[num_images, N]`` multi-hot ground truth (``> 0`` is positive).
        threshold (float, optional): A label is predicted when ``score >= threshold``.
            (default: :obj:`0.5`)
        top_k (int, optional): How many top scores the ``*_top3`` metrics keep per image.
            (default: :obj:`3`)
        tune (str, optional): :obj:`"CF1"` or :obj:`"OF1"` also reports the threshold
            metrics at the threshold that maximises that metric on these scores
            (:func:`tune_threshold`), suffixed ``_tuned``, and the threshold as
            ``threshold_tuned``. Optimistic: see the module docstring.
            (default: :obj:`None`)

    Returns:
        ``{"mAP", "threshold", "CP", "CR", "CF1", "CF1_mlgcn", "OP", "OR", "OF1"}`` and the
        same threshold metrics with a ``_top3`` suffix (and ``_tuned`` with ``tune``), as
        floats in percent (``threshold`` as given). ``mAP`` is NaN when no class has a
        positive. See the module docstring for the conventions.
    """
    scores, positives = _check_inputs(scores, targets)
    ap = average_precision(scores, positives)
    has_pos = ~torch.isnan(ap)
    out = {"mAP": 100.0 * ap[has_pos].mean().item() if has_pos.any() else math.nan,
           "threshold": float(threshold)}

    pred = scores >= threshold
    out.update(_threshold_metrics(pred, positives))
    if tune is not None:
        best, _ = tune_threshold(scores, positives, tune)
        out["threshold_tuned"] = best
        tuned = _threshold_metrics(scores >= best, positives) if not math.isnan(best) else {}
        out.update({f"{k}_tuned": v for k, v in tuned.items()})

    k = min(top_k, scores.size(1))
    top = torch.zeros_like(pred)
    if scores.size(0):
        top.scatter_(1, scores.topk(k, dim=1).indices, True)
    out.update({f"{k_}_top3": v for k_, v in _threshold_metrics(pred & top, positives).items()})
    return out


def deduplicate_predictions(
    scores: Tensor, targets: Tensor, indices: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Keeps one row per dataset index, sorted by index.

    :class:`~torch.utils.data.DistributedSampler` pads the last round with repeated samples
    so that every rank gets the same number; without this, those images would count twice.
    """
    indices = torch.as_tensor(indices).reshape(-1).long()
    if not (scores.size(0) == targets.size(0) == indices.numel()):
        raise ValueError(
            "`scores`, `targets` and `indices` must have the same length, got "
            f"{scores.size(0)}, {targets.size(0)} and {indices.numel()}"
        )
    order = torch.argsort(indices, stable=True)
    sorted_idx = indices[order]
    keep = torch.ones_like(sorted_idx, dtype=torch.bool)
    keep[1:] = sorted_idx[1:] != sorted_idx[:-1]
    order = order[keep]
    return scores[order], targets[order], indices[order]


def gather_predictions(
    scores: Tensor, targets: Tensor, indices: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """All-gathers every rank's predictions and removes the sampler's duplicates.

    Works without :mod:`torch.distributed` (or with one process): then it only
    de-duplicates. Every rank receives the full result. With ``indices=None`` nothing is
    de-duplicated.

    Returns:
        ``(scores, targets, indices)`` on the CPU.
    """
    if is_distributed():
        scores = all_gather_rows(scores.float())
        # bool is not supported by every backend's all_gather.
        targets = all_gather_rows(targets.to(torch.uint8)).to(targets.dtype)
        if indices is not None:
            indices = all_gather_rows(torch.as_tensor(indices).reshape(-1).long())
    if indices is not None:
        scores, targets, indices = deduplicate_predictions(scores, targets, indices)
    return scores, targets, indices


class MultiLabelMetrics:
    """Accumulates predictions over an evaluation loop, then computes
    :func:`multilabel_metrics`.

    Example::

        metrics = MultiLabelMetrics()
        for images, targets, idx in loader:
            metrics.update(torch.sigmoid(model(images)), targets, idx)
        results = metrics.compute()   # gathers across DDP ranks when initialised

    Args:
        threshold (float, optional): See :func:`multilabel_metrics`. (default: :obj:`0.5`)
        top_k (int, optional): See :func:`multilabel_metrics`. (default: :obj:`3`)
        tune (str, optional): See :func:`multilabel_metrics`. (default: :obj:`None`)
    """

    def __init__(self, threshold: float = 0.5, top_k: int = 3, tune: str | None = None) -> None:
        self.threshold = threshold
        self.top_k = top_k
        self.tune = tune
        self.reset()

    def reset(self) -> None:
        self._scores: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._indices: list[Tensor] = []

    def update(self, scores: Tensor, targets: Tensor, indices: Tensor | None = None) -> None:
        """Stores a batch: ``[B, N]`` probabilities, ``[B, N]`` multi-hot targets and,
        for DDP de-duplication, the ``[B]`` dataset indices (give them always or never)."""
        if scores.shape != targets.shape or scores.dim() != 2:
            raise ValueError(
                "`scores` and `targets` must both have shape [B, num_labels], got "
                f"{tuple(scores.shape)} and {tuple(targets.shape)}"
            )
        if (indices is None) != (not self._indices) and self._scores:
            raise ValueError("`indices` must be given for every update or for none")
        self._scores.append(scores.detach().float().cpu())
        self._targets.append((targets.detach() > 0).cpu())
        if indices is not None:
            self._indices.append(torch.as_tensor(indices).detach().reshape(-1).long().cpu())

    def predictions(self) -> tuple[Tensor, Tensor]:
        """The accumulated ``(scores, targets)``, gathered across ranks and de-duplicated."""
        if not self._scores:
            raise RuntimeError("MultiLabelMetrics.compute() called before any update()")
        scores, targets, _ = gather_predictions(
            torch.cat(self._scores),
            torch.cat(self._targets),
            torch.cat(self._indices) if self._indices else None,
        )
        return scores, targets

    def compute(self) -> dict[str, float]:
        """:func:`multilabel_metrics` over everything seen since the last :meth:`reset`."""
        scores, targets = self.predictions()
        return multilabel_metrics(scores, targets, self.threshold, self.top_k, self.tune)


def threshold_rows(
    name: str, metrics: Mapping[str, float], tuned_on: str = "CF1"
) -> dict[str, dict[str, float]]:
    """Table rows for one model: at the configured threshold and, when ``metrics`` has them
    (``multilabel_metrics(..., tune=tuned_on)``), at the tuned one, each row named with its
    threshold — e.g. ``"ML-AGCN @0.5"`` and ``"ML-AGCN @0.82 (tuned on val, CF1)"``. Other
    entries (``mAP``, parameter counts, ...) are copied into both rows."""
    base = {k: v for k, v in metrics.items() if not k.endswith(("_tuned", "_top3"))}
    rows = {f"{name} @{metrics['threshold']:g}" if "threshold" in metrics else name: base}
    if "threshold_tuned" in metrics:
        tuned = dict(base)
        tuned.update({k[: -len("_tuned")]: v for k, v in metrics.items()
                      if k.endswith("_tuned") and k != "threshold_tuned"})
        tuned["threshold"] = metrics["threshold_tuned"]
        rows[f"{name} @{metrics['threshold_tuned']:.2f} (tuned on val, {tuned_on})"] = tuned
    return rows


def format_table(
    rows: Mapping[str, Mapping[str, float]],
    columns: Sequence[str] = TABLE_COLUMNS,
) -> str:
    """Formats results like the paper's Table 1, as a markdown table (one decimal).

    Args:
        rows (Mapping[str, Mapping[str, float]]): Method name to a metrics dict (e.g. from
            :func:`multilabel_metrics`); missing entries print as ``-``.
        columns (Sequence[str], optional): Which metrics, in order.
            (default: ``mAP CP CR CF1 OP OR OF1``)
    """
    header = ["Method", *columns]
    body = [
        [name, *(f"{m[c]:.1f}" if c in m and m[c] is not None else "-" for c in columns)]
        for name, m in rows.items()
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "| " + " | ".join([first, *rest]) + " |"

    sep = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in body)])
