"""The token-by-token oracle (``backend="sequential"``): slow, obviously correct, any depth.

Inside a chunk every gradient is taken at the chunk-start weights, then the token recurrence runs
exactly as written in TITANS_SPEC section 1:

    S_t = eta_t S_{t-1} - theta_t u_t,   W_t = (1 - alpha_t) W_{t-1} + S_t,   o_t = M_{W_t}(q_t)

It materialises W_t for every token (autograd keeps them all), so use it only at test sizes.
"""

import torch

from .mlp import loss_gradient_factors, mlp_forward


def neural_memory_sequential(q, k, v, lr, momentum, forget, weights, momenta, chunk_size, compute_dtype):
    B, T, H, _ = q.shape
    # [B, T, H, d] -> [B, H, T, d] in the compute dtype; gates -> [B, H, T, 1, 1] for weight-shaped ops.
    q, k, v = (x.transpose(1, 2).to(compute_dtype) for x in (q, k, v))
    theta, eta, alpha = (g.transpose(1, 2).to(compute_dtype)[..., None, None] for g in (lr, momentum, forget))
    W = [w.to(compute_dtype).expand(B, *w.shape[-3:]) for w in weights]
    S = [torch.zeros_like(w) for w in W] if momenta is None else [m.to(compute_dtype) for m in momenta]

    outs = []
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        xs, deltas = loss_gradient_factors(W, k[:, :, start:end], v[:, :, start:end])
        for t in range(start, end):
            i = t - start
            for layer in range(len(W)):
                u = xs[layer][:, :, i, :, None] * deltas[layer][:, :, i, None, :]
                S[layer] = eta[:, :, t] * S[layer] - theta[:, :, t] * u
                W[layer] = (1.0 - alpha[:, :, t]) * W[layer] + S[layer]
            outs.append(mlp_forward(W, q[:, :, t : t + 1]))
    out = torch.cat(outs, dim=2).transpose(1, 2)
    return out, tuple(W), tuple(S)
