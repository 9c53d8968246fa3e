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
