r"""The training loss: Asymmetric Loss (ASL), as ML-AGCN (Section 3.1) and IML-GCN use.

We reuse :class:`timm.loss.AsymmetricLossMultiLabel`; this module only fixes ASL's COCO
settings and makes the computation float32 under autocast. Per element, with
:math:`p = \sigma(x)` and :math:`p_m = \max(p - m, 0)`,

.. math::
    L = -y \, (1 - p)^{\gamma_+} \log p \;-\; (1 - y) \, p_m^{\gamma_-} \log(1 - p_m).

**Reduction: sum over batch and classes** (ASL's original). ASL's recipe (Adam, lr 1e-4,
weight decay 1e-4 added to the gradient, i.e. L2 rather than decoupled decay) was tuned with
the summed loss. Adam is invariant to the loss scale except through that L2 term, so a mean
would make the decay ``batch * N`` times stronger relative to the data term and change the
recipe. timm's own default (``'batchmean'``) differs, so we always pass the reduction.
"""

from __future__ import annotations

import inspect

import torch
from timm.loss import AsymmetricLossMultiLabel
from torch import Tensor

__all__ = ["Float32AsymmetricLoss", "asymmetric_loss"]

REDUCTIONS = ("sum", "batchmean", "mean", "none")


class Float32AsymmetricLoss(AsymmetricLossMultiLabel):
    """:class:`timm.loss.AsymmetricLossMultiLabel` computed in float32 with autocast off.

    Under fp16, :math:`\\sigma(x)` rounds to 0 or 1 and the ``eps`` clamp no longer protects
    the log, giving NaN; older timm releases do not cast, and autocast may re-lower ops.

    timm releases before the ``reduction`` argument (e.g. 1.0.29) always return the sum; there
    ``reduction`` is applied here to timm's loss of each element (``vmap`` over batch and
    classes), so every timm gives the same numbers.
    """

    def __init__(self, *args, reduction_fallback: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.reduction_fallback = reduction_fallback

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, y = x.float(), y.float()
            if self.reduction_fallback is None:
                return super().forward(x, y)
            loss = torch.func.vmap(torch.func.vmap(self._element_loss))(x, y)  # [B, N]
        if self.reduction_fallback == "none":
            return loss
        if self.reduction_fallback == "batchmean":
            return loss.sum() / x.shape[0]
        return loss.mean() if self.reduction_fallback == "mean" else loss.sum()

    def _element_loss(self, x: Tensor, y: Tensor) -> Tensor:
        return AsymmetricLossMultiLabel.forward(self, x.reshape(1, 1), y.reshape(1, 1))


def asymmetric_loss(
    gamma_neg: float = 4,
    gamma_pos: float = 0,
    clip: float = 0.05,
    eps: float = 1e-8,
    disable_torch_grad_focal_loss: bool = True,
    reduction: str = "sum",
    **kwargs,
) -> Float32AsymmetricLoss:
    r"""ASL with the paper's (ASL's COCO) settings, as a float32 timm module.

    Args:
        gamma_neg (float, optional): :math:`\gamma_-`. (default: :obj:`4`)
        gamma_pos (float, optional): :math:`\gamma_+` (timm's default is 1). (default: :obj:`0`)
        clip (float, optional): Probability margin :math:`m`. (default: :obj:`0.05`)
        eps (float, optional): Clamp before the log. (default: :obj:`1e-8`)
        disable_torch_grad_focal_loss (bool, optional): No gradient through the focusing
            weights, as in ASL's ``train.py``. (default: :obj:`True`)
        reduction (str, optional): ``'sum'`` (ASL's, see the module docstring),
            ``'batchmean'``, ``'mean'`` or ``'none'``. (default: :obj:`'sum'`)
        **kwargs: Passed on to timm (e.g. ``weight``, ``pos_weight``, ``smoothing``).

    Called as ``loss(logits, targets)`` with ``[B, N]`` logits and multi-hot targets.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"'reduction' must be one of {REDUCTIONS}, got {reduction!r}")
    if "reduction" in inspect.signature(AsymmetricLossMultiLabel.__init__).parameters:
        kwargs["reduction"] = reduction
    elif reduction != "sum":  # older timm releases always sum: reduce each element ourselves
        kwargs["reduction_fallback"] = reduction
    return Float32AsymmetricLoss(
        gamma_neg=gamma_neg,
        gamma_pos=gamma_pos,
        clip=clip,
        eps=eps,
        disable_torch_grad_focal_loss=disable_torch_grad_focal_loss,
        **kwargs,
    )
