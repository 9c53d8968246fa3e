"""CUDA-only end-to-end checks (skipped without a GPU; ``benchmarks/gpu_suite.py`` runs them).

fp16 autocast with a GradScaler and channels_last in a real training run, and predictions on
the GPU against the same checkpoint's predictions on the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from agcn_pyg import make_synthetic_coco
from agcn_pyg.tools.predict import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "coco_train.py")


@pytest.mark.cuda
@pytest.mark.slow
def test_fp16_channels_last_training_then_predict_matches_cpu(tmp_path):
    data = make_synthetic_coco(tmp_path / "coco", num_train=32, num_val=8, num_labels=4,
                               image_size=64, seed=0)
    out = tmp_path / "run"
    cmd = [sys.executable, SCRIPT, "--train-ann", data.train_ann_file, "--train-images",
           data.train_image_dir, "--val-ann", data.val_ann_file, "--val-images",
           data.val_image_dir, "--model", "resnet18", "--img-size", "64", "--batch-size", "8",
           "--epochs", "1", "--amp", "fp16", "--channels-last", "--device", "cuda",
           "--workers", "0", "--no-progress", "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ckpt = out / "best.pth"
    images = sorted(os.path.join(data.val_image_dir, f) for f in os.listdir(data.val_image_dir))
    cpu = predict(ckpt, images, device="cpu", progress=False)
    gpu = predict(ckpt, images, device="cuda", progress=False)
    # cuDNN may use TF32 convolutions: agreement to ~1e-2 in probability, not bit-equality.
    for c, g in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(torch.tensor(g["probabilities"]),
                                   torch.tensor(c["probabilities"]), atol=2e-2, rtol=0)


@pytest.mark.cuda
def test_head_training_step_does_not_synchronise():
    # Input checks (finite values) read a GPU value once per fixed tensor, not every step: a
    # host-device sync per step would stall the backbone's queued kernels.
    from agcn_pyg import MultiLabelHead

    head = MultiLabelHead(64, 10, torch.rand(10, 10), hidden_channels=(32,)).cuda()
    x = torch.randn(4, 64, device="cuda", requires_grad=True)
    head(x).sum().backward()  # the first step checks the label graph and node features
    torch.cuda.set_sync_debug_mode("error")
    try:
        head(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.cuda
@pytest.mark.slow
def test_captured_classifiers_train_like_eager():
    # CUDA graphs (capture_classifiers, coco_train.py's default on one GPU) replay the
    # classifiers' forward and backward: the same updates as the eager head, step after step.
    import copy

    from agcn_pyg import MultiLabelHead

    torch.manual_seed(0)
    head = MultiLabelHead(32, 12, torch.rand(12, 12), hidden_channels=(16,)).cuda()
    eager = copy.deepcopy(head)
    head.capture_classifiers()
    assert head.classifiers != eager.classifiers  # compiled
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (head, eager)]
    for _ in range(4):
        features = torch.randn(8, 32, device="cuda")
        for model, optimizer in zip((head, eager), optimizers, strict=True):
            optimizer.zero_grad(set_to_none=True)
            model(features).sigmoid().mean().backward()
            optimizer.step()
    for p, q in zip(head.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_kernel_paths_make_no_host_sync_on_a_repeated_call(monkeypatch):
    # The complete and dense paths on the Triton kernels: a repeated call on the same graph
    # neither reads a GPU value nor synchronises (issue 21).
    from agcn_pyg import AdaptiveGCNConv

    monkeypatch.setenv("AGCN_KERNELS", "triton")
    n = 300
    x = torch.randn(n, 32, device="cuda", requires_grad=True)
    dense = AdaptiveGCNConv(32, 32).cuda()
    adj = torch.rand(n, n, device="cuda")
    complete = AdaptiveGCNConv(32, 32, complete=True).cuda()
    complete.dense_max_ratio = 0.0
    edge_index = torch.randint(0, n, (2, 8 * n), device="cuda")
    for _ in range(2):
        if _ == 1:
            torch.cuda.set_sync_debug_mode("error")
        try:
            (dense(x, adj).sum() + complete(x, edge_index).sum()).backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)
