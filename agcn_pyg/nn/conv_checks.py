"""The input checks of :class:`~agcn_pyg.AdaptiveGCNConv`: every wrong input gets one
error that names the argument, what it got and what to pass instead.

Checks that read tensor values (NaN/Inf, ``edge_index`` ranges) synchronise a GPU, so they run
once per input tensor and version (on every device, so that a CPU run makes the same host reads
as a GPU run and the op counts of :mod:`agcn_pyg.nn.kernels.counting` carry over); on a GPU never
on activations; never while compiling or capturing a CUDA graph. A repeated call on the same
graph and features therefore reads nothing back. They are not ``torch._assert_async``: a failed
device assertion leaves the CUDA context unusable and cannot name what arrived.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor
from torch.nn.parameter import UninitializedParameter
from torch_geometric import is_compiling
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.typing import OptTensor, SparseTensor


def describe(value) -> str:
    if isinstance(value, Tensor):
        return f"a {value.layout} tensor of shape {list(value.shape)} and dtype {value.dtype}"
    return str(type(value))


def check_in_channels(in_channels, similarity: bool, share_weights: bool) -> tuple[int, int]:
    """(in_src, in_dst) from an int or a (src, dst) pair; -1 means lazy."""
    if isinstance(in_channels, int):
        return in_channels, in_channels
    if not (isinstance(in_channels, (tuple, list)) and len(in_channels) == 2
            and all(isinstance(c, int) for c in in_channels)):
        raise TypeError(
            f"'in_channels' must be an int or a (src, dst) pair of ints, -1 for lazy "
            f"(got {in_channels!r})"
        )
    in_src, in_dst = in_channels
    if in_src > 0 and in_dst > 0 and in_src != in_dst:
        if similarity:
            raise ValueError(
                f"similarity=True compares target with source features (eq. 7) and needs "
                f"equal sizes (got in_channels={tuple(in_channels)}); pass similarity=False"
            )
        if share_weights:
            raise ValueError(
                f"share_weights=True applies one matrix to source and target features and "
                f"needs equal sizes (got in_channels={tuple(in_channels)})"
            )
    return in_src, in_dst


def check_heads(heads) -> int:
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"'heads' must be a positive int, the number of attention heads (got "
                         f"{heads!r})")
    return heads


def check_call_flags(return_attention_weights, add_loop):
    """The 4th positional argument is return_attention_weights: a GATConv-style positional
    ``size`` or a DenseGATConv-style positional ``add_loop`` would land there."""
    if return_attention_weights is not None and not isinstance(return_attention_weights, bool):
        raise TypeError(
            f"'return_attention_weights' (the 4th positional argument) must be a bool or None "
            f"(got {describe(return_attention_weights)}); pass 'size' and 'add_loop' by keyword"
        )
    if add_loop is not None and not isinstance(add_loop, bool):
        raise TypeError(f"'add_loop' must be a bool or None (got {describe(add_loop)})")


def check_size(size, n_src: int, n_dst: int):
    """GATConv's ``size = (N_src, N_dst)``: here the node features fix it, so it is checked."""
    if size is None:
        return
    if not (isinstance(size, (tuple, list)) and len(size) == 2
            and all(s is None or isinstance(s, int) for s in size)):
        raise TypeError(f"'size' must be a pair (N_src, N_dst) of ints (got {size!r})")
    if any(s is not None and s != n for s, n in zip(size, (n_src, n_dst), strict=True)):
        raise ValueError(
            f"'size' = {tuple(size)} does not match the node features: (N_src, N_dst) = "
            f"({n_src}, {n_dst}); the adjacency's shape is (N_src, N_dst) of x (or of "
            f"(x_src, x_dst) for bipartite input)"
        )


def check_edge_attr_given(edge_dim, edge_attr, edge_weight):
    """A layer built with edge_dim needs edge_attr: without it eq. 4's score would silently
    lose its edge term, and GATConv's positional edge_attr would be read as A."""
    if edge_dim is None or edge_attr is not None:
        return
    hint = (" A third positional argument is 'edge_weight', the fixed weights a_ij (A of "
            "eq. 3, as in GCNConv), not GATConv's edge_attr." if edge_weight is not None else "")
    raise ValueError(
        f"the layer was built with edge_dim={edge_dim}, so eq. 4's score needs edge features, "
        f"but no 'edge_attr' arrived.{hint} Pass them by keyword: conv(x, edge_index, "
        f"edge_attr=edge_attr) with edge_attr [E, {edge_dim}] (edge features need an "
        f"edge_index), or build the layer with edge_dim=None"
    )


def check_pair(x, add_self_loops: bool):
    if len(x) != 2:
        raise ValueError(f"bipartite 'x' must be a pair (x_src, x_dst) (got {len(x)} items)")
    if x[1] is None:
        raise ValueError(
            "'x' = (x_src, None) is not supported: W_dst (eq. 4) and the cosine term (eq. 7) "
            "need the target features x_dst"
        )
    if add_self_loops:
        raise ValueError(
            "bipartite input x = (x_src, x_dst) needs add_self_loops=False: sources and "
            "targets are different node sets, so no node is its own neighbour (got "
            "add_self_loops=True)"
        )


def check_features(name: str, x, in_channels: int):
    if not isinstance(x, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor of node features (got {type(x)})")
    if x.dim() not in (2, 3):
        raise ValueError(
            f"'{name}' must be [num_nodes, in_channels], or [batch, num_nodes, in_channels] "
            f"with a dense adjacency (got shape {list(x.shape)})"
        )
    if not x.is_floating_point():
        raise TypeError(f"'{name}' must be a floating-point tensor (got {x.dtype})")
    if in_channels > 0 and x.size(-1) != in_channels:
        raise ValueError(
            f"'{name}' has {x.size(-1)} features per node but the layer was built for "
            f"{in_channels}"
        )
    check_finite(name, x)


def check_dtype(name: str, x: Tensor, weight: Tensor, conv):
    if (not isinstance(weight, UninitializedParameter) and x.dtype != weight.dtype
            and not torch.is_autocast_enabled(x.device.type)):
        # No silent cast: convert one side, or let autocast choose per operation.
        raise TypeError(
            f"'{name}' is {x.dtype} but the weights of {conv} are {weight.dtype}: convert "
            f"one to the other ({name}.to(...) or conv.to(...)) or run under torch.autocast"
        )


def check_pair_sizes(x_src: Tensor, x_dst: Tensor, in_channels, similarity: bool):
    if x_src.dtype != x_dst.dtype or x_src.device != x_dst.device:
        raise TypeError(
            f"'x_src' and 'x_dst' must share dtype and device (got {x_src.dtype} on "
            f"{x_src.device} and {x_dst.dtype} on {x_dst.device})"
        )
    f_src, f_dst = x_src.size(-1), x_dst.size(-1)
    if f_src == f_dst:
        return
    if isinstance(in_channels, int):
        raise ValueError(
            f"'x_src' has {f_src} features and 'x_dst' {f_dst}, but in_channels="
            f"{in_channels} is one size: pass in_channels=(src, dst), e.g. (-1, -1)"
        )
    if similarity:
        raise ValueError(
            f"similarity=True compares x_dst[i] with x_src[j] (eq. 7) and needs equal feature "
            f"sizes (got {f_src} and {f_dst}); pass similarity=False"
        )


def check_node_dims(x_src: Tensor, x_dst: Tensor):
    if x_src.dim() != 2 or x_dst.dim() != 2:
        shapes = [list(x_src.shape)] if x_src is x_dst else [list(x_src.shape),
                                                             list(x_dst.shape)]
        raise ValueError(
            f"node features must be 2-dimensional [num_nodes, in_channels] with an edge_index "
            f"or sparse adjacency; batches [B, N, F] need a dense adjacency (got {shapes})"
        )


def check_complete(bipartite: bool, edge_attr: OptTensor):
    if bipartite:
        raise ValueError(
            "complete=True reads the graph as the complete graph of one node set; bipartite "
            "'x' = (x_src, x_dst) is not supported there (use complete=None)"
        )
    if edge_attr is not None:
        raise ValueError(
            "'edge_attr' is not supported with complete=True: edge features exist on stored "
            "edges only, and the complete path's scores are s_i + t_j for every pair"
        )


def check_complete_loops(add_loop):
    if add_loop is False:
        raise ValueError(
            "add_loop=False: a dense adjacency is read as the complete graph, which has every "
            "self-loop (a_ii = adj[i, i]); for DenseGATConv's meaning (the non-zero entries "
            "are the edges, self-loops optional) build the layer with complete=False"
        )


def check_sparse_call(edge_index, mask: OptTensor, add_loop):
    if mask is not None:
        raise ValueError(
            "'mask' marks the padded nodes of a dense batch and needs a dense adjacency "
            f"'edge_index' (got {describe(edge_index)})"
        )
    if add_loop is not None:
        raise ValueError(
            "'add_loop' is DenseGATConv's switch for a dense adjacency; for an edge_index or "
            "sparse adjacency self-loops follow the layer's add_self_loops (got "
            f"add_loop={add_loop} with {describe(edge_index)})"
        )


def check_dense_extras(edge_weight: OptTensor, edge_attr: OptTensor):
    for name, value in (("edge_weight", edge_weight), ("edge_attr", edge_attr)):
        if value is not None:
            raise ValueError(
                f"'{name}' must be None when 'edge_index' is a dense adjacency (its entries "
                f"are the weights; edge features need an edge_index)"
            )


def check_dense(x_src: Tensor, x_dst: Tensor, adj: Tensor, mask: OptTensor,
                 bipartite: bool) -> OptTensor:
    """Checks a dense (batched) input; returns the mask as bool (or None)."""
    n_src, n_dst = x_src.size(-2), x_dst.size(-2)
    expected = f"[{n_dst}, {n_src}]" if bipartite else f"[N, N] with N = x.size(-2) = {n_src}"
    if adj.dim() not in (2, 3) or adj.shape[-2:] != (n_dst, n_src):
        raise ValueError(
            f"dense adjacency 'edge_index' must be {expected} or [B, {n_dst}, {n_src}] to match "
            f"the node features (got shape {list(adj.shape)})"
        )
    check_finite("edge_index", adj)
    batches = {t.size(0) for t in (x_src, x_dst, adj) if t.dim() == 3}
    if len(batches) > 1 or (bipartite and x_src.dim() != x_dst.dim()):
        raise ValueError(
            f"dense batch sizes differ: x {[list(t.shape) for t in (x_src, x_dst)]}, "
            f"adjacency {list(adj.shape)}"
        )
    if mask is None:
        return None
    if bipartite:
        raise ValueError("'mask' needs homogeneous input (one node set), not (x_src, x_dst)")
    shape = [*batches, n_src] if batches else [n_src]
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or (
        list(mask.shape) not in (shape, [n_src])  # [N] is shared by the batch (DenseGATConv)
    ):
        raise ValueError(
            f"'mask' must be a bool tensor of shape {shape} (as to_dense_batch returns it) "
            f"or [{n_src}] for every graph of a batch (got {describe(mask)})"
        )
    return mask


def check_sparse(adj, edge_weight, edge_attr, n_src: int, n_dst: int, homogeneous: bool):
    for name, value in (("edge_weight", edge_weight), ("edge_attr", edge_attr)):
        if value is not None:
            raise ValueError(
                f"'{name}' must be None when 'edge_index' is a sparse adjacency (its values "
                f"are the weights; edge features need an edge_index)"
            )
    size = tuple(adj.sparse_sizes()) if isinstance(adj, SparseTensor) else tuple(adj.shape)
    if size != (n_dst, n_src):
        expected = f"[N, N] with N = x.size(0) = {n_src}" if homogeneous else (
            f"[N_dst, N_src] = [{n_dst}, {n_src}]")
        raise ValueError(
            f"sparse adjacency 'edge_index' must be {expected} (got shape {list(size)})"
        )


def check_edge_index(edge_index, edge_weight: OptTensor, edge_attr: OptTensor,
                      n_src: int, n_dst: int, homogeneous: bool):
    if not isinstance(edge_index, Tensor):
        raise TypeError(
            "'edge_index' must be a [2, E] integer tensor, a sparse adjacency or a dense "
            f"[N, N] floating-point adjacency (got {type(edge_index)})"
        )
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(
            f"'edge_index' must have shape [2, E] (got {list(edge_index.shape)}); a dense "
            "adjacency must be a floating-point [N, N] tensor"
        )
    if edge_index.dtype not in (torch.long, torch.int):
        raise TypeError(f"'edge_index' must be an integer tensor (got {edge_index.dtype})")
    num_edges = edge_index.size(1)
    if edge_weight is not None:
        if edge_weight.dim() != 1 or edge_weight.numel() != num_edges:
            raise ValueError(
                f"'edge_weight' must have shape [E] = [{num_edges}] to match "
                f"'edge_index' (got {list(edge_weight.shape)})"
            )
    if edge_attr is not None and edge_attr.size(0) != num_edges:
        raise ValueError(
            f"'edge_attr' must have one row per edge, [{num_edges}, edge_dim] to match "
            f"'edge_index' (got {list(edge_attr.shape)})"
        )
    # Reading values synchronises the device: skipped while compiling (a graph break), and
    # done once per graph tensor (and node counts), not at every step.
    sizes = (n_src, n_dst)
    if is_compiling() or num_edges == 0 or _validated(edge_index, sizes):
        return
    low, high = edge_index.amin(dim=1).tolist(), edge_index.amax(dim=1).tolist()
    if homogeneous and (min(low) < 0 or max(high) >= n_src):
        raise ValueError(
            f"'edge_index' holds node indices in [{min(low)}, {max(high)}], outside "
            f"[0, {n_src - 1}] for x with {n_src} nodes"
        )
    for k, (row, name, n) in enumerate((("source", "x_src", n_src), ("target", "x_dst", n_dst))):
        if low[k] < 0 or high[k] >= n:
            raise ValueError(
                f"'edge_index' holds {row} indices in [{low[k]}, {high[k]}], outside "
                f"[0, {n - 1}] for {name} with {n} nodes"
            )
    _remember_valid(edge_index, sizes)


# Tensors already checked, by id: (weak reference, version, what was checked). A fixed input
# (the label graph, node features, a graph reused every epoch) is read once, not at every step.
_VALID_ON_DEVICE: dict[int, tuple[weakref.ref, int, object]] = {}


def is_inference(t) -> bool:
    """A tensor made under ``torch.inference_mode``: it has no version counter, so the
    layer's per-tensor caches (checks, patterns, A, C) skip it and read it each call. Not
    asked while compiling: Dynamo cannot trace ``is_inference`` (a graph break)."""
    return not is_compiling() and isinstance(t, Tensor) and t.is_inference()


def tensor_version(t) -> int | None:
    """The version counter every per-tensor cache of the layer keys on (None where there is
    none: an inference tensor, a SparseTensor)."""
    return None if is_inference(t) else getattr(t, "_version", None)


def _validated(t: Tensor, check: object) -> bool:
    seen = _VALID_ON_DEVICE.get((id(t), check))
    version = tensor_version(t)
    return bool(seen and version is not None and seen[0]() is t and seen[1] == version)


def _remember_valid(t: Tensor, check: object):
    if tensor_version(t) is None:
        return
    if len(_VALID_ON_DEVICE) > 1024:  # forget tensors that no longer exist
        for key in [k for k, v in _VALID_ON_DEVICE.items() if v[0]() is None]:
            del _VALID_ON_DEVICE[key]
    _VALID_ON_DEVICE[(id(t), check)] = (weakref.ref(t), tensor_version(t))


def check_finite(name: str, t: Tensor):
    # One reduction, but on a GPU reading it synchronises the device. So each input is checked
    # once per version; on a GPU only inputs (no autograd history: data, buffers; an activation
    # of the model is not), on the CPU activations at every call (a new tensor each step, never
    # remembered); nothing while compiling (a graph break) or capturing a CUDA graph (where
    # reading values is an error).
    if is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    if (t.is_cuda and t.grad_fn is not None) or _validated(t, "finite"):
        return
    if not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"'{name}' must hold finite values (got {int(t.isnan().sum())} NaN and "
            f"{int(t.isinf().sum())} infinite entries in shape {list(t.shape)})"
        )
    if t.grad_fn is None:
        _remember_valid(t, "finite")


def check_edge_attr(edge_attr, lin_edge: Linear | None):
    if lin_edge is None:
        raise ValueError(
            "'edge_attr' was given but the layer was built without edge features "
            "(edge_dim=None): pass edge_dim to use them in eq. 4's score; the fixed "
            "weights a_ij are 'edge_weight'"
        )
    edge_dim = lin_edge.in_channels
    if not isinstance(edge_attr, Tensor) or not edge_attr.is_floating_point():
        raise TypeError(
            f"'edge_attr' must be a floating-point tensor [E, edge_dim] (got "
            f"{describe(edge_attr)})"
        )
    if edge_attr.dim() not in (1, 2):
        raise ValueError(
            f"'edge_attr' must be [E, edge_dim] or [E] (got shape {list(edge_attr.shape)})"
        )
    size = edge_attr.size(-1) if edge_attr.dim() == 2 else 1
    if edge_dim > 0 and size != edge_dim:
        raise ValueError(
            f"'edge_attr' has {size} features per edge but the layer was built with "
            f"edge_dim={edge_dim}"
        )
    check_finite("edge_attr", edge_attr)
