"""Shared pytest set-up: tests marked ``cuda`` skip on machines without a GPU."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on a GPU: benchmarks/gpu_suite.py)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
