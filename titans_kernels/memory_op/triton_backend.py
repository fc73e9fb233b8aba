"""``backend="triton"``: the chunked dual form in two fused kernels (``triton_kernels.py``).

What the kernels cover: memory depth 1 and 2, d_h a power of two from 16 to 128, a depth-2 hidden
width that is a multiple of 16, chunk sizes 16, 32 and 64, fp32/bf16/fp16 inputs (fp32 state and
accumulators). Anything else (deeper memories, other chunk sizes, fp64) runs the ``torch`` backend
with a warning naming the reason. On a CPU the kernels run only under ``TRITON_INTERPRET=1``.

Gates: the coefficient matrices (``gates.chunk_coefficients``) are built by torch before the kernel
and their gradients reach the gates by autograd, as in the ``torch`` backend (O(chunk) floats per
token). Checkpoints: the forward stores the state every ``group`` chunks, with ``group`` about
sqrt(chunks) so that checkpoints plus the backward's per-group scratch are ~2 sqrt(chunks) states
per (batch, head).
"""

import math
import os
import warnings

import torch

from .torch_backend import _gate_chunks, neural_memory_chunked, without_autocast
from .gates import chunk_coefficients

CHUNK_SIZES = (16, 32, 64)
HEAD_DIMS = (16, 32, 64, 128)
MAX_BLOCK = 64
# A state tile ([d_h, block] dot operand) is kept under this many bytes, and loops are not
# software-pipelined (num_stages 1): Triton's default 3 stages multiplies every tile's shared-memory
# buffer, which put the depth-2 backward at 304 KiB for d_h 64 (an H100 block has 227 KiB).
MAX_TILE_BYTES = 16 * 1024
LAUNCH = dict(num_warps=4, num_stages=1)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unsupported_reason(q, weights, chunk_size, compute_dtype):
    """Why the kernels cannot run these arguments (None when they can)."""
    d = q.shape[-1]
    if len(weights) not in (1, 2):
        return f"memory depth {len(weights)} (the kernels cover depth 1 and 2)"
    if chunk_size not in CHUNK_SIZES:
        return f"chunk_size {chunk_size} (the kernels cover {list(CHUNK_SIZES)})"
    if d not in HEAD_DIMS:
        return f"d_h {d} (the kernels cover {list(HEAD_DIMS)})"
    if compute_dtype == torch.float64:
        return "fp64 inputs (the kernels compute in fp32)"
    if len(weights) == 2 and weights[0].shape[-1] % 16:
        return f"hidden width {weights[0].shape[-1]} (the kernels need a multiple of 16)"
    if q.device.type != "cuda" and not interpreting():
        return f"device {q.device.type} (the kernels need CUDA, or TRITON_INTERPRET=1 on CPU)"
    return None


def _block(width: int, head_dim: int, operand_bytes: int) -> int:
    """Largest power of two <= MAX_BLOCK that divides ``width`` and keeps a [head_dim, block] tile of
    dot operands within MAX_TILE_BYTES."""
    b = MAX_BLOCK
    while width % b or (b > 16 and head_dim * b * operand_bytes > MAX_TILE_BYTES):
        b //= 2
    return b


def dot_precision(dtype: torch.dtype) -> str:
    """Half inputs take tensor-core dots in their own type; fp32 inputs follow torch's TF32 switch."""
    if dtype in (torch.bfloat16, torch.float16):
        name = "bf16" if dtype == torch.bfloat16 else "fp16"
        return f"{name}_rounded" if interpreting() else name
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 and not interpreting() else "ieee"


def group_chunks(num_chunks: int) -> int:
    return max(1, math.isqrt(num_chunks - 1) + 1) if num_chunks > 1 else 1


def _pack(weights, momenta, B):
    """Per (batch, head) flat fp32 state [W_1 | S_1 | W_2 | S_2 ...] as ``[B*H, SZ]``."""
    parts = []
    for layer, w in enumerate(weights):
        H = w.shape[-3]
        parts.append(w.expand(B, *w.shape[-3:]).reshape(B * H, -1))
        parts.append(torch.zeros_like(parts[-1]) if momenta is None else momenta[layer].reshape(B * H, -1))
    return torch.cat(parts, dim=1).float()


def _unpack(flat, weights, B):
    """Inverse of ``_pack``: per layer ([B, H, d_in, d_out] W, same S)."""
    Ws, Ss, off = [], [], 0
    for w in weights:
        H, d_in, d_out = w.shape[-3:]
        size = d_in * d_out
        Ws.append(flat[:, off : off + size].reshape(B, H, d_in, d_out))
        Ss.append(flat[:, off + size : off + 2 * size].reshape(B, H, d_in, d_out))
        off += 2 * size
    return Ws, Ss


class _Geometry:
    """Sizes and launch constants shared by the forward and backward launches."""

    def __init__(self, q, weights, chunk_size):
        """Shapes only: ``q`` and ``weights`` may be meta tensors."""
        from .triton_chunk import BWD_ROW_SLOTS, FWD_ROW_SLOTS

        B, T, H, D = q.shape
        self.B, self.T, self.H, self.D, self.C = B, T, H, D, chunk_size
        self.depth = len(weights)
        self.hid = weights[0].shape[-1] if self.depth == 2 else D
        self.precision = dot_precision(q.dtype)
        self.block = _block(self.hid, D, 2 if self.precision.startswith(("bf16", "fp16")) else 4)
        self.sz = 2 * sum(w.shape[-2] * w.shape[-1] for w in weights)
        self.chunks = -(-T // chunk_size)
        self.group = group_chunks(self.chunks)
        self.groups = -(-self.chunks // self.group)
        self.fwd_rows = FWD_ROW_SLOTS * chunk_size * self.hid if self.depth == 2 else 1
        self.bwd_rows = BWD_ROW_SLOTS * chunk_size * self.hid if self.depth == 2 else 1
        self.copy_block = min(1024, self.sz & -self.sz)

    def forward_constants(self):
        return dict(SZ=self.sz, D=self.D, HID=self.hid, C=self.C, BH=self.block, PRECISION=self.precision,
                    DEPTH=self.depth, ROW_STRIDE=self.fwd_rows)

    def backward_constants(self):
        return dict(self.forward_constants(), ROW_STRIDE=self.bwd_rows, COPY_BLOCK=self.copy_block)


def _coefficients(lr, momentum, forget, chunk_size, requires_grad=False):
    gates = [_gate_chunks(g, chunk_size, torch.float32) for g in (lr, momentum, forget)]
    if requires_grad:
        for g in gates:
            g.requires_grad_()
    with torch.set_grad_enabled(requires_grad):
        coefs = chunk_coefficients(*gates)
    return gates, coefs


class TritonNeuralMemory(torch.autograd.Function):
    """Inputs after the int: q, k, v, lr, momentum, forget, *weights, *momenta (possibly none)."""

    @staticmethod
    @without_autocast  # the coefficients are built by torch matmuls, which autocast would make bf16
    def forward(ctx, chunk_size, num_layers, *tensors):
        from .triton_kernels import memory_forward_kernel

        q, k, v, lr, momentum, forget = tensors[:6]
        weights = tensors[6 : 6 + num_layers]
        momenta = tensors[6 + num_layers :] or None
        geo = _Geometry(q, weights, chunk_size)
        q_, k_, v_ = (x.contiguous() for x in (q, k, v))
        _, coefs = _coefficients(lr, momentum, forget, chunk_size)
        coefs = [x.contiguous() for x in coefs]
        N = geo.B * geo.H
        state = torch.empty(N, 2, geo.sz, dtype=torch.float32, device=q.device)
        state[:, 0] = _pack(weights, momenta, geo.B)
        training = any(ctx.needs_input_grad)
        ckpt = torch.empty(N, geo.groups, geo.sz, dtype=torch.float32, device=q.device) if training else state
        rows = torch.empty(N, geo.fwd_rows, dtype=torch.float32, device=q.device)
        out = torch.empty_like(q_)
        memory_forward_kernel[(N,)](
            q_, k_, v_, out, coefs[0], coefs[1], coefs[2], coefs[3], coefs[4], coefs[5],
            state, ckpt, rows, int(training), geo.T, geo.H, geo.chunks, geo.group, *q_.stride()[:3],
            **geo.forward_constants(), **LAUNCH)
        weights_T, momenta_T = _unpack(state[:, geo.chunks % 2], weights, geo.B)
        if training:
            ctx.save_for_backward(*tensors, ckpt)
        ctx.config = (chunk_size, num_layers, len(tensors))
        return (out, *weights_T, *momenta_T)

    @staticmethod
    @without_autocast
    def backward(ctx, dout, *dstate):
        from .triton_kernels import memory_backward_kernel

        chunk_size, L, num_inputs = ctx.config
        saved = ctx.saved_tensors
        tensors, ckpt = saved[:num_inputs], saved[num_inputs]
        q, k, v, lr, momentum, forget = tensors[:6]
        weights = tensors[6 : 6 + L]
        has_momenta = num_inputs > 6 + L
        geo = _Geometry(q, weights, chunk_size)
        N = geo.B * geo.H
        q_, k_, v_ = (x.contiguous() for x in (q, k, v))
        dout_ = torch.zeros_like(q_) if dout is None else dout.contiguous()
        gates, coefs_graph = _coefficients(lr, momentum, forget, chunk_size, requires_grad=True)
        coefs = [x.detach().contiguous() for x in coefs_graph]
        dcoefs = [torch.zeros_like(x) for x in coefs]

        dstate_buf = torch.zeros(N, 2, geo.sz, dtype=torch.float32, device=q.device)
        grads_T = [g if g is not None else torch.zeros(geo.B, *w.shape[-3:], device=q.device)
                   for g, w in zip(dstate, (*weights, *weights))]
        dstate_buf[:, 0] = _pack([g for g in grads_T[:L]], grads_T[L:], geo.B)
        scratch = torch.empty(N, geo.group, geo.sz, dtype=torch.float32, device=q.device)
        rows = torch.empty(N, geo.bwd_rows, dtype=torch.float32, device=q.device)
        dq, dk, dv = (torch.empty(q_.shape, dtype=torch.float32, device=q.device) for _ in range(3))
        memory_backward_kernel[(N,)](
            q_, k_, v_, dout_, dq, dk, dv, *coefs, *dcoefs, ckpt, scratch, dstate_buf, rows,
            geo.T, geo.H, geo.chunks, geo.group, *q_.stride()[:3],
            **geo.backward_constants(), **LAUNCH)

        torch.autograd.backward(tuple(coefs_graph), tuple(dcoefs))
        T = geo.T
        dgates = [g.grad.view(geo.B, geo.H, -1)[..., :T].transpose(1, 2).to(x.dtype)
                  for g, x in zip(gates, (lr, momentum, forget))]
        dW, dS = _unpack(dstate_buf[:, geo.chunks % 2], weights, geo.B)
        dweights = [(g.sum(0) if w.dim() == 3 else g).to(w.dtype) for g, w in zip(dW, weights)]
        dmomenta = [g.to(m.dtype) for g, m in zip(dS, tensors[6 + L :])] if has_momenta else []
        return (None, None, dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), *dgates, *dweights, *dmomenta)


def neural_memory_triton(q, k, v, lr, momentum, forget, weights, momenta, chunk_size, compute_dtype):
    reason = unsupported_reason(q, weights, chunk_size, compute_dtype)
    if reason is not None:
        warnings.warn(f"neural_memory backend 'triton' does not cover {reason}; running the 'torch' backend",
                      stacklevel=3)
        return neural_memory_chunked(q, k, v, lr, momentum, forget, weights, momenta, chunk_size, compute_dtype)
    tensors = (q, k, v, lr, momentum, forget, *weights, *(momenta or ()))
    res = TritonNeuralMemory.apply(chunk_size, len(weights), *tensors)
    L = len(weights)
    return res[0], res[1 : 1 + L], res[1 + L :]
