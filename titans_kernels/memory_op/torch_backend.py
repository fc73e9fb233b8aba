"""The chunked dual form (``backend="torch"``): the chunk loop, checkpoint groups and autograd glue.

Backward memory. The forward keeps, per checkpoint group of chunks, only the group's start state
(W and S, fp32) besides the op's own inputs; the backward recomputes one group at a time (its
per-chunk states and activations), then runs the hand-derived chunk backward in reverse.
``checkpoint_group_chunks`` sizes a group so that the kept state is at most ``2 * d_h`` floats per
token and head, whatever the memory's parameter count: the per-token cost is the inputs
(q, k, v: 3 d_h; gates: 3) plus <= 2 d_h of state. The transient peak is one group's states
(group_chunks x 2 x parameter count per head) and activations, plus the coefficient matrices of the
whole sequence (4 x chunk_size floats per token and head).
"""

import functools
import math

import torch
import torch.nn.functional as F

from .chunk_backward import chunk_backward
from .chunk_forward import chunk_forward, split_state
from .gates import ChunkCoefficients, chunk_coefficients

# Kept state per token and head is bounded by this many multiples of d_h (see the module docstring).
KEPT_STATE_PER_TOKEN_IN_HEAD_DIMS = 2


def checkpoint_group_chunks(layer_shapes, head_dim: int, chunk_size: int) -> int:
    """Chunks per checkpoint group: a group keeps 2 x (parameter count) floats (W and S)."""
    params = sum(d_in * d_out for d_in, d_out in layer_shapes)
    return max(1, math.ceil(2 * params / (KEPT_STATE_PER_TOKEN_IN_HEAD_DIMS * head_dim * chunk_size)))


def _to_rows(x, dtype):
    """[B, T, H, d] -> [B * H, T, d] (one copy, in ``dtype``)."""
    B, T, H, d = x.shape
    rows = torch.empty(B, H, T, d, dtype=dtype, device=x.device)
    rows.copy_(x.transpose(1, 2))
    return rows.view(B * H, T, d)


def _from_rows(rows, B, H, dtype):
    N, T, d = rows.shape
    return rows.view(B, H, T, d).transpose(1, 2).to(dtype).contiguous()


def _gate_chunks(g, chunk_size, dtype):
    """[B, T, H] -> [B * H, chunks, chunk_size], zero-padded (a short last chunk ignores the pad)."""
    B, T, H = g.shape
    num_chunks = -(-T // chunk_size)
    rows = g.transpose(1, 2).reshape(B * H, T).to(dtype)
    return F.pad(rows, (0, num_chunks * chunk_size - T)).view(B * H, num_chunks, chunk_size)


def _initial_state(weights, momenta, B, dtype):
    """Per layer [B * H, d_in, 2 d_out] = [W | S]."""
    states = []
    for layer, w in enumerate(weights):
        H, d_in, d_out = w.shape[-3:]
        ws = torch.empty(B, H, d_in, 2 * d_out, dtype=dtype, device=w.device)
        ws[..., :d_out].copy_(w.expand(B, H, d_in, d_out))
        if momenta is None:
            ws[..., d_out:].zero_()
        else:
            ws[..., d_out:].copy_(momenta[layer])
        states.append(ws.view(B * H, d_in, 2 * d_out))
    return states


def _split_final(WS, B):
    weights_T, momenta_T = [], []
    for ws in WS:
        W, S = split_state(ws)
        weights_T.append(W.reshape(B, -1, *W.shape[1:]).contiguous())
        momenta_T.append(S.reshape(B, -1, *S.shape[1:]).contiguous())
    return weights_T, momenta_T


def _coef_at(coefs, c):
    return ChunkCoefficients(*(x[:, c] for x in coefs))


def _run_chunks(WS, Q, K, V, coefs, chunk_size, first, stop, out_rows=None, keep=False):
    """Chunks [first, stop): writes outputs into ``out_rows`` and returns the end state, plus the
    per-chunk (start state, activations) when ``keep``."""
    T = Q.shape[1]
    kept = []
    for c in range(first, stop):
        s, e = c * chunk_size, min((c + 1) * chunk_size, T)
        o, new_WS, acts = chunk_forward(WS, Q[:, s:e], K[:, s:e], V[:, s:e], _coef_at(coefs, c), e - s, keep,
                                        out_unused=out_rows is None)
        if out_rows is not None:
            out_rows[:, s:e] = o
        if keep:
            kept.append((WS, acts))
        WS = new_WS
    return WS, kept


def without_autocast(fn):
    """The op computes in its own ``compute_dtype``: under an autocast region its matmuls would
    otherwise return bf16 and meet the fp32 state in the in-place updates."""

    @functools.wraps(fn)
    def wrapped(ctx, *args):
        device = next(a for a in args if isinstance(a, torch.Tensor)).device.type
        with torch.autocast(device, enabled=False):
            return fn(ctx, *args)

    return wrapped


class ChunkedNeuralMemory(torch.autograd.Function):
    """Inputs after the two ints: q, k, v, lr, momentum, forget, *weights, *momenta (possibly none)."""

    @staticmethod
    @without_autocast
    def forward(ctx, chunk_size, num_layers, compute_dtype, *tensors):
        q, k, v, lr, momentum, forget = tensors[:6]
        weights = tensors[6 : 6 + num_layers]
        momenta = tensors[6 + num_layers :] or None
        B, T, H, d = q.shape
        Q, K, V = (_to_rows(x, compute_dtype) for x in (q, k, v))
        coefs = chunk_coefficients(*(_gate_chunks(g, chunk_size, compute_dtype) for g in (lr, momentum, forget)))
        WS = _initial_state(weights, momenta, B, compute_dtype)

        num_chunks = coefs.G.shape[1]
        group = checkpoint_group_chunks([w.shape[-2:] for w in weights], d, chunk_size)
        out_rows = torch.empty_like(Q)
        boundaries = []
        training = any(ctx.needs_input_grad)
        for first in range(0, num_chunks, group):
            boundaries.extend(WS)
            # The last group's activations go straight to the backward, which would recompute them first.
            last = first + group >= num_chunks
            WS, kept = _run_chunks(WS, Q, K, V, coefs, chunk_size, first, num_chunks if last else first + group,
                                   out_rows, keep=last and training)
        weights_T, momenta_T = _split_final(WS, B)

        for _, acts in kept:  # own copies of q and k rows: views would pin the whole [B*H, T, d] copies
            acts.xs[0] = acts.xs[0].clone()
            acts.ps[0] = acts.ps[0].clone()
        ctx.last_group = kept
        ctx.save_for_backward(*tensors, *boundaries)
        ctx.config = (chunk_size, num_layers, compute_dtype, group, len(tensors))
        return (_from_rows(out_rows, B, H, q.dtype), *weights_T, *momenta_T)

    @staticmethod
    @without_autocast
    def backward(ctx, dout, *dstate):
        chunk_size, L, cdt, group, num_inputs = ctx.config
        saved = ctx.saved_tensors
        tensors, boundaries = saved[:num_inputs], saved[num_inputs:]
        q, k, v, lr, momentum, forget = tensors[:6]
        weights = tensors[6 : 6 + L]
        has_momenta = num_inputs > 6 + L
        B, T, H, d = q.shape
        Q, K, V = (_to_rows(x, cdt) for x in (q, k, v))

        gates = [_gate_chunks(g, chunk_size, cdt).requires_grad_() for g in (lr, momentum, forget)]
        with torch.enable_grad():
            coefs_graph = chunk_coefficients(*gates)
        coefs = ChunkCoefficients(*(x.detach() for x in coefs_graph))
        dcoefs = ChunkCoefficients(*(torch.zeros_like(x) for x in coefs))

        dO = torch.zeros_like(Q) if dout is None else _to_rows(dout, cdt)
        dWS = []
        for layer, w in enumerate(weights):
            d_in, d_out = w.shape[-2:]
            grad = torch.zeros(B, H, d_in, 2 * d_out, dtype=cdt, device=q.device)
            for half, g in ((slice(0, d_out), dstate[layer]), (slice(d_out, None), dstate[L + layer])):
                if g is not None:
                    grad[..., half].copy_(g)
            dWS.append(grad.view(B * H, d_in, 2 * d_out))

        dQ, dK, dV = (torch.empty_like(Q) for _ in range(3))
        num_chunks = coefs.G.shape[1]
        for gi in range((num_chunks - 1) // group, -1, -1):
            first, stop = gi * group, min((gi + 1) * group, num_chunks)
            if stop == num_chunks and ctx.last_group:
                kept, ctx.last_group = ctx.last_group, None  # freed after use (a second backward recomputes)
            else:
                start_WS = list(boundaries[gi * L : (gi + 1) * L])
                _, kept = _run_chunks(start_WS, Q, K, V, coefs, chunk_size, first, stop, keep=True)
            for c in range(stop - 1, first - 1, -1):
                s, e = c * chunk_size, min((c + 1) * chunk_size, T)
                WS, acts = kept[c - first]
                dcoef = ChunkCoefficients(*(x[:, c] for x in dcoefs))
                dQ[:, s:e], dK[:, s:e], dV[:, s:e], dWS = chunk_backward(
                    WS, _coef_at(coefs, c), e - s, acts, dO[:, s:e], dWS, dcoef)
            del kept

        torch.autograd.backward(tuple(coefs_graph), tuple(dcoefs))
        dgates = [_from_rows(g.grad.flatten(1)[:, :T, None], B, H, x.dtype).squeeze(-1)
                  for g, x in zip(gates, (lr, momentum, forget))]
        dweights, dmomenta = [], []
        for layer, w in enumerate(weights):
            dW, dS = split_state(dWS[layer])
            dW = dW.reshape(B, H, *dW.shape[1:])
            dweights.append((dW.sum(0) if w.dim() == 3 else dW).to(w.dtype))
            if has_momenta:
                dmomenta.append(dS.reshape(B, H, *dS.shape[1:]).to(tensors[6 + L + layer].dtype))
        grads = (*(_from_rows(x, B, H, t.dtype) for x, t in zip((dQ, dK, dV), (q, k, v))), *dgates, *dweights, *dmomenta)
        return (None, None, None, *grads)


def neural_memory_chunked(q, k, v, lr, momentum, forget, weights, momenta, chunk_size, compute_dtype):
    tensors = (q, k, v, lr, momentum, forget, *weights, *(momenta or ()))
    res = ChunkedNeuralMemory.apply(chunk_size, len(weights), compute_dtype, *tensors)
    L = len(weights)
    return res[0], res[1 : 1 + L], res[1 + L :]
