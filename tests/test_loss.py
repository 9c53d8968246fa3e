import numpy as np
import pytest
import torch
from timm.loss import AsymmetricLossMultiLabel

from agcn_pyg.train.loss import asymmetric_loss


def _asl_reference(logits, targets, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8):
    """ASL written out in float64 numpy: sum over batch and classes."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    p_m = np.maximum(p - clip, 0.0)  # shifted probability of the negatives
    pos = y * (1 - p) ** gamma_pos * np.log(np.maximum(p, eps))
    neg = (1 - y) * p_m**gamma_neg * np.log(np.maximum(1 - p_m, eps))
    return -(pos + neg).sum()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 10, generator=g) * 3
    targets = (torch.rand(16, 10, generator=g) < 0.3).float()
    return logits, targets


def test_asl_matches_float64_formula(batch):
    logits, targets = batch
    loss_fn = asymmetric_loss()
    assert isinstance(loss_fn, AsymmetricLossMultiLabel)
    loss = loss_fn(logits, targets)
    assert loss.dtype == torch.float32
    expected = _asl_reference(logits.numpy(), targets.numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_asl_other_reductions_and_gammas(batch):
    logits, targets = batch
    expected = _asl_reference(logits.numpy(), targets.numpy(), gamma_neg=2, gamma_pos=1, clip=0)
    loss = asymmetric_loss(gamma_neg=2, gamma_pos=1, clip=0, reduction="mean")(logits, targets)
    assert loss.item() == pytest.approx(expected / logits.numel(), rel=1e-5)


def test_asl_focusing_weights_not_differentiated(batch):
    logits, targets = batch
    logits.requires_grad_(True)
    asymmetric_loss()(logits, targets).backward()
    # With the focusing weight w = p_m^4 held constant (ASL's train.py setting):
    # d/dx[-y log p] = -y (1 - p);
    # d/dx[-(1 - y) w log(1 - p_m)] = (1 - y) w p (1 - p) / (1 - p_m).
    x = logits.detach().double().numpy()
    y = targets.double().numpy()
    p = 1 / (1 + np.exp(-x))
    p_m = np.maximum(p - 0.05, 0)
    w = p_m**4
    # p_m = 1 - (1 - p + clip) is clipped at 0; where p <= clip the gradient is zero.
    grad_neg = np.where(p > 0.05, w * p * (1 - p) / (1 - p_m), 0.0)
    expected = -y * (1 - p) + (1 - y) * grad_neg
    np.testing.assert_allclose(logits.grad.double().numpy(), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_asl_finite_in_low_precision(batch, dtype):
    logits, targets = batch
    logits = (logits * 10).to(dtype)  # saturates sigmoid in low precision
    loss_fn = asymmetric_loss()
    loss = loss_fn(logits, targets.to(dtype))
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    expected = _asl_reference(logits.float().numpy(), targets.numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-4)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = logits.float().requires_grad_(True)
        out = x @ torch.eye(x.size(1))  # autocast runs matmul in bf16
        assert out.dtype == torch.bfloat16
        loss = loss_fn(out, targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("reduction", ["none", "batchmean", "mean", "sum"])
def test_reductions_without_timm_reduction_argument(batch, reduction):
    # timm releases before `reduction` (e.g. 1.0.29, on the GPU machines) always sum: the
    # fallback reduces timm's per-element loss itself. Compare with the float64 formula.
    from agcn_pyg.train.loss import Float32AsymmetricLoss

    logits, targets = batch
    loss_fn = Float32AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, eps=1e-8,
                                    disable_torch_grad_focal_loss=True,
                                    reduction_fallback=reduction)
    if "reduction" in loss_fn.__dict__:
        loss_fn.reduction = "sum"  # what an old timm does, whatever was asked
    element = torch.tensor([[_asl_reference(logits[i, j], targets[i, j]) for j in range(10)]
                            for i in range(16)])
    expected = {"none": element, "sum": element.sum(), "mean": element.mean(),
                "batchmean": element.sum() / 16}[reduction]
    torch.testing.assert_close(loss_fn(logits, targets).double(), expected, rtol=1e-5, atol=1e-5)


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="'reduction'"):
        asymmetric_loss(reduction="avg")
