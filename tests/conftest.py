"""Shared pytest set-up: tests marked ``cuda`` skip on machines without a GPU, where Triton's
interpreter is switched on for the tests marked ``triton``; tests marked ``sparse`` fail instead
of skipping where AGCN_REQUIRE_TORCH_SPARSE=1 (CI's sparse step)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton's interpreter runs the Triton kernels on CPU tensors (tests marked ``triton``). It
    # must be on before Triton is imported (PyG imports it): Triton decorates its standard
    # library then. Without a GPU nothing else runs Triton, so the whole session may have it.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on a GPU: benchmarks/gpu_suite.py)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A missing torch-sparse must not pass as green where the sparse tests are required."""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and item.get_closest_marker("sparse") is not None
            and os.environ.get("AGCN_REQUIRE_TORCH_SPARSE") == "1"):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} skipped ({report.longrepr}) but AGCN_REQUIRE_TORCH_SPARSE=1 "
            "requires it to run"
        )
