"""Counting what a region of code asks of the device: the aten ops that launch a kernel, the ops
that make the host wait for the device, and the Triton kernels behind our custom ops.

At the sizes of a label graph or a small sparse graph a GPU layer waits on the host: each
launched op costs some 5-40 µs of host time whatever it computes, and a host sync empties the
queue. Both are properties of the code, not of the device, so they are counted on the CPU with
the same code path (``AGCN_KERNELS=triton`` with ``TRITON_INTERPRET=1`` selects the Triton
kernels there) and tested deterministically::

    with OpCounter() as ops:
        conv(x, edge_index).sum().backward()
    ops.kernels, ops.syncs  # ints; ops.kernel_ops, ops.sync_ops by name

What counts:

* **kernel**: every aten op that reaches the backend except views and allocations
  (:data:`NO_KERNEL`); a custom op of ours (namespace ``agcn``) counts as the number of
  Triton kernels it launched (:func:`record_launch`), its own allocations none.
* **host sync** (on CUDA): ``_local_scalar_dense`` (``item()``, ``bool(t)``), ops whose output
  size depends on values (``nonzero``, ``masked_select``, ``unique``, boolean-mask indexing,
  ``bincount``, ``repeat_interleave`` without ``output_size``), ``equal``, and copies from a
  device to the CPU. ``Tensor.tolist()`` of a CPU tensor reaches no aten op and is not seen.
"""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["NO_KERNEL", "OpCounter", "record_launch", "triton_launches"]

#: Triton kernels launched so far, by kernel name; our launchers call :func:`record_launch`.
triton_launches: collections.Counter = collections.Counter()


def record_launch(name: str) -> None:
    triton_launches[name] += 1


#: Ops that reach the backend without launching a kernel: allocations and metadata.
NO_KERNEL = frozenset({
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty",
    "aten::new_empty_strided", "aten::detach", "aten::lift_fresh", "aten::alias",
    "aten::_local_scalar_dense", "aten::sym_size", "aten::sym_stride", "aten::sym_numel",
    "aten::sym_storage_offset", "aten::resize_", "aten::set_", "aten::is_same_size",
    "aten::_has_compatible_shallow_copy_type", "aten::record_stream",
})

_VALUE_SIZED = frozenset({
    "aten::nonzero", "aten::masked_select", "aten::_unique", "aten::_unique2",
    "aten::unique_dim", "aten::unique_consecutive", "aten::unique_dim_consecutive",
    "aten::bincount", "aten::equal", "aten::_local_scalar_dense", "aten::argwhere",
})
_INDEXING = frozenset({"aten::index", "aten::index_put", "aten::index_put_",
                       "aten::_index_put_impl", "aten::_index_put_impl_"})


def _is_sync(name: str, args, kwargs, out) -> bool:
    if name in _VALUE_SIZED:
        return True
    if name == "aten::repeat_interleave":
        return kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None)
    if name in _INDEXING:  # a boolean mask index has as many results as True entries
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
    if name in ("aten::_to_copy", "aten::copy_"):  # device -> host
        source = args[1] if name == "aten::copy_" else args[0]
        target = args[0] if name == "aten::copy_" else out
        return (isinstance(source, torch.Tensor) and isinstance(target, torch.Tensor)
                and source.device.type != "cpu" and target.device.type == "cpu")
    return False


class OpCounter(TorchDispatchMode):
    """A :class:`~torch.utils._python_dispatch.TorchDispatchMode` that counts launched
    kernels and host syncs (see the module docstring) while it is active."""

    def __init__(self):
        super().__init__()
        self.kernel_ops: collections.Counter = collections.Counter()
        self.sync_ops: collections.Counter = collections.Counter()

    @property
    def kernels(self) -> int:
        return sum(self.kernel_ops.values())

    @property
    def syncs(self) -> int:
        return sum(self.sync_ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        launched = sum(triton_launches.values())
        out = func(*args, **kwargs)
        name, packet = func.name(), func._schema.name  # "aten::index.Tensor", "aten::index"
        if func.namespace == "agcn":
            count = sum(triton_launches.values()) - launched
            if count:
                self.kernel_ops[name] += count
        elif not func.is_view and packet not in NO_KERNEL:
            self.kernel_ops[name] += 1
        if _is_sync(packet, args, kwargs, out):
            self.sync_ops[name] += 1
        return out
