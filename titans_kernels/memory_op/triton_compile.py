"""Compile the memory kernels for a GPU architecture on a machine without one (ptxas ships with triton).

This catches what the interpreter cannot (types, layouts, unsupported ops) and reports the shared
memory each kernel needs per program, which must fit the architecture's per-block limit.
The constants and launch options are the backend's own (``_Geometry``, ``LAUNCH``).

    TRITON_INTERPRET=0 python -m titans_kernels.memory_op.triton_compile --arch 90 --depth 2 --head-dim 64 --dtype bfloat16
"""

import argparse
import json
import os

import torch

# Opt-in shared memory per block, bytes (CUDA occupancy tables): sm_80 A100, sm_90 H100/H200.
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
_INTS = ("T", "H", "NC", "GROUP", "SAVE_CKPT", "stride_b", "stride_t", "stride_h")
_IO = ("Q", "K", "V", "OUT", "DOUT")
_TYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def _signature(fn, constants, io_dtype):
    sig = {}
    for name in fn.arg_names:
        if name in constants:
            sig[name] = "constexpr"
        elif name in _INTS:
            sig[name] = "i32"
        else:
            sig[name] = "*" + (_TYPE[io_dtype] if name in _IO else "fp32")
    return sig


def compile_kernels(depth, head_dim, expansion=4, chunk=16, dtype=torch.bfloat16, arch=90):
    """{kernel name: {"shared_bytes", "block", "precision", launch options}} for one configuration."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compiling needs TRITON_INTERPRET unset (set before triton is imported)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .triton_backend import LAUNCH, _Geometry
    from .triton_kernels import memory_backward_kernel, memory_forward_kernel

    q = torch.empty(1, chunk, 1, head_dim, dtype=dtype, device="meta")
    widths = [head_dim] + [expansion * head_dim] * (depth - 1) + [head_dim]
    weights = [torch.empty(1, widths[i], widths[i + 1], device="meta") for i in range(depth)]
    geo = _Geometry(q, weights, chunk)
    report = {}
    for fn, constants in ((memory_forward_kernel, geo.forward_constants()),
                          (memory_backward_kernel, geo.backward_constants())):
        src = ASTSource(fn=fn, signature=_signature(fn, constants, dtype), constexprs=constants)
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(LAUNCH))
        report[fn.__name__] = {"shared_bytes": kernel.metadata.shared, "block": geo.block,
                               "precision": geo.precision, **LAUNCH}
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_MEMORY_LIMIT))
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = p.parse_args()
    report = compile_kernels(args.depth, args.head_dim, args.expansion, args.chunk, getattr(torch, args.dtype), args.arch)
    limit = SHARED_MEMORY_LIMIT[args.arch]
    for info in report.values():
        info["fits"] = info["shared_bytes"] <= limit
    print(json.dumps({"arch": args.arch, "shared_memory_limit": limit, "titans_kernels": report}, indent=2))
    raise SystemExit(0 if all(info["fits"] for info in report.values()) else 1)


if __name__ == "__main__":
    main()
