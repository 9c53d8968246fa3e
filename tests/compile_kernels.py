"""Compiles the Triton kernels of the complete and dense paths for an H100 (sm_90) without a GPU:
Triton's compiler and ptxas need no device. Run in a process without TRITON_INTERPRET (the
interpreter replaces the kernels); ``tests/test_kernels_complete_dense.py`` does."""

from __future__ import annotations

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from agcn_pyg.nn.kernels import complete, dense

INDEX = {"order_ptr": "*i64", "top_order_ptr": "*i64", "order_s_ptr": "*i64",
         "part_ptr": "*fp64"}  # fmt: skip


def compile_kernel(fn, constexprs: dict, pointers: dict) -> None:
    types = {n: pointers.get(n, INDEX.get(n, "*fp32")) for n in fn.arg_names
             if n.endswith("_ptr")}  # fmt: skip
    types["slope"] = "fp32"
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in fn.arg_names}
    triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                   target=GPUTarget("cuda", 90, 32))  # fmt: skip
    print(f"{fn.__name__}: compiled", flush=True)


def main() -> None:
    scan = dict(ROWS=1024, SUB=64, BLOCK_C=32, TARGET_KEYS=True, HAS_U=True)
    compile_kernel(complete._block_sums, scan, {"v_ptr": "*bf16"})
    compile_kernel(complete._scan, {**scan, "BLOCK_B": 64}, {})
    for fn in (complete._forward_out, complete._backward_rows, complete._backward_grads):
        compile_kernel(fn, dict(BLOCK_Q=32, BLOCK_C=64), {"h_ptr": "*bf16"})
    compile_kernel(dense._dense_forward, dict(HAS_C=True, BLOCK_M=32, BLOCK_N=64, BLOCK_D=32),
                   {"xh_ptr": "*bf16"})  # fmt: skip
    compile_kernel(dense._dense_backward, dict(BLOCK_M=32, BLOCK_N=64), {})


if __name__ == "__main__":
    main()
