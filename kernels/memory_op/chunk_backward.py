"""Backward of one chunk of the dual form: the hand-derived vector-Jacobian product of
``chunk_forward`` (same layout and names; d* is the gradient of the final loss w.r.t. *).

Three passes mirror the forward in reverse: the end-of-chunk state update, the query path (layer
L..1), then the key path (the error chain Delta_l = (Delta_{l+1} W_{l+1}^T) o gelu'(a_l) and the MLP
forward). Gradients of the coefficients are accumulated into per-chunk buffers; the gates' gradients
follow from them by autograd through ``chunk_coefficients``, which is cheap (O(n^2) per chunk).
"""

import torch

from kernels.memory_op.chunk_forward import split_state
from kernels.memory_op.mlp import gelu_grad2, gelu_vjp

def chunk_backward(WS, coef, n, acts, dout, dWS_end, dcoef):
    """Gradients of one chunk: returns (dq, dk, dv, dWS_start) and adds into ``dcoef`` (this chunk's
    coefficient-gradient buffers, shaped like ``coef``)."""
    L = len(WS)
    xs, pre, errs, deltas, ps, pws, pxs, zs = acts
    G = coef.G[:, :n, :n]
    beta, phi = coef.beta[:, :n, None], coef.phi[:, :n, None]
    last = n - 1
    g_last = coef.G[:, last, :n, None]
    dm_last = coef.Dm[:, last, :n]
    c_last = (dm_last * coef.lr[:, :n])[..., None]
    beta_n, phi_n, m_n = (x[:, last, None, None] for x in (coef.beta, coef.phi, coef.M))

    # 1. End-of-chunk update: W' = beta_n W + phi_n S - X^T (g o Delta), S' = m_n S - X^T (c o Delta).
    dWS, dxs, ddeltas = [], [], []
    dg = torch.zeros_like(g_last[..., 0])
    dc = torch.zeros_like(dg)
    for layer in range(L):
        W, S = split_state(WS[layer])
        dW_end, dS_end = split_state(dWS_end[layer])
        grad = torch.empty_like(WS[layer])
        dW, dS = split_state(grad)
        torch.mul(dW_end, beta_n, out=dW)
        torch.mul(dW_end, phi_n, out=dS)
        dS.addcmul_(dS_end, m_n)
        dcoef.beta[:, last] += (W * dW_end).sum(dim=(1, 2))
        dcoef.phi[:, last] += (S * dW_end).sum(dim=(1, 2))
        dcoef.M[:, last] += (S * dS_end).sum(dim=(1, 2))
        d = deltas[layer]
        R_W, R_S = split_state(torch.bmm(xs[layer], dWS_end[layer]))
        ddeltas.append(-(g_last * R_W + c_last * R_S))
        dxs.append(-torch.bmm(torch.cat([g_last * d, c_last * d], dim=-1), dWS_end[layer].transpose(1, 2)))
        dg -= (R_W * d).sum(-1)
        dc -= (R_S * d).sum(-1)
        dWS.append(grad)
    dcoef.G[:, last, :n] += dg
    dcoef.Dm[:, last, :n] += dc * coef.lr[:, :n]
    dcoef.lr[:, :n] += dc * dm_last

    # 2. Query path, last layer first: z = beta o (P W) + phi o (P S) - (G o P X^T) Delta.
    dz = dout
    dG = torch.zeros_like(G)
    for layer in range(L - 1, -1, -1):
        if layer < L - 1:
            dz = gelu_vjp(dp, zs[layer])
        pW, pS = split_state(pws[layer])
        dcoef.beta[:, :n] += (dz * pW).sum(-1)
        dcoef.phi[:, :n] += (dz * pS).sum(-1)
        D = torch.cat([beta * dz, phi * dz], dim=-1)
        dWS[layer].baddbmm_(ps[layer].transpose(1, 2), D)
        dp = torch.bmm(D, WS[layer].transpose(1, 2))
        dA = torch.bmm(dz, deltas[layer].transpose(1, 2)).neg_()
        ddeltas[layer].baddbmm_((G * pxs[layer]).transpose(1, 2), dz, alpha=-1.0)
        dG += dA * pxs[layer]
        dPX = dA * G
        dp.baddbmm_(dPX, xs[layer])
        dxs[layer].baddbmm_(dPX.transpose(1, 2), ps[layer])
    dq = dp
    dcoef.G[:, :n, :n] += dG

    # 3. Key path: the error chain first (Delta_l feeds on Delta_{l+1}), then the MLP forward.
    Ws = [split_state(ws)[0] for ws in WS]
    dWs = [split_state(g)[0] for g in dWS]
    dpre = []
    for layer in range(L - 1):
        de = gelu_vjp(ddeltas[layer], pre[layer])
        dpre.append(gelu_grad2(pre[layer]).mul_(ddeltas[layer]).mul_(errs[layer]))
        ddeltas[layer + 1].baddbmm_(de, Ws[layer + 1])
        dWs[layer + 1].baddbmm_(de.transpose(1, 2), deltas[layer + 1])
    dy = 2.0 * ddeltas[L - 1]
    dv = -dy
    dxs[L - 1].baddbmm_(dy, Ws[L - 1].transpose(1, 2))
    dWs[L - 1].baddbmm_(xs[L - 1].transpose(1, 2), dy)
    for layer in range(L - 2, -1, -1):
        da = dpre[layer].add_(gelu_vjp(dxs[layer + 1], pre[layer]))
        dxs[layer].baddbmm_(da, Ws[layer].transpose(1, 2))
        dWs[layer].baddbmm_(xs[layer].transpose(1, 2), da)
    return dq, dxs[0], dv, dWS
