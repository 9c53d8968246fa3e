"""agcn_pyg.nn.kernels.counting.OpCounter: which aten ops count as kernel launches and which as
host syncs (the counts the kernel tests compare against GATConv's)."""

import torch

from agcn_pyg.nn.kernels.counting import OpCounter, record_launch


def test_views_and_allocations_launch_nothing():
    x = torch.randn(4, 3)
    with OpCounter() as ops:
        x.view(12).t()
        x[1:].unsqueeze(0).expand(2, 3, 3)
        torch.empty(5)
    assert ops.kernels == 0 and ops.syncs == 0, (ops.kernel_ops, ops.sync_ops)


def test_each_computing_op_is_one_kernel():
    x = torch.randn(4, 3)
    with OpCounter() as ops:
        y = x @ x.t()  # mm
        (y + 1).exp().sum()  # add, exp, sum
    assert ops.kernels == 4 and ops.syncs == 0, ops.kernel_ops


def test_value_dependent_ops_are_syncs():
    x = torch.randn(10)
    mask = x > 0
    with OpCounter() as ops:
        x[mask]  # as many results as True entries
        x.nonzero()
        float(x.sum())  # item
        torch.bincount(torch.tensor([1, 2, 2]), minlength=4)
        torch.repeat_interleave(torch.tensor([1, 2]))
    assert ops.syncs == 5, ops.sync_ops
    with OpCounter() as ops:
        x[torch.tensor([0, 3])]  # integer indices: the result size is known
        torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)
    assert ops.syncs == 0, ops.sync_ops


@torch.library.custom_op("agcn::two_launches_test", mutates_args=())
def _ours(x: torch.Tensor) -> torch.Tensor:
    record_launch("first")
    record_launch("second")
    return x.clone()  # (inside the op: not seen by the counter)


def test_our_custom_ops_count_their_triton_launches():
    x = torch.randn(3)
    with OpCounter() as ops:
        _ours(x)
    assert ops.kernel_ops == {"agcn::two_launches_test": 2}
