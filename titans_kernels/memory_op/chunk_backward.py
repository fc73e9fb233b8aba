"""Backward of one chunk of the dual form: the hand-derived vector-Jacobian product of
``chunk_forward`` (same layout and names; d* is the gradient of the final loss w.r.t. *).

Three passes mirror the forward in reverse: the end-of-chunk state update, the query path (layer
L..1), then the key path (the error chain Delta_l = (Delta_{l+1} W_{l+1}^T) o gelu'(a_l) and the MLP
forward). Gradients of the coefficients are accumulated into per-chunk buffers; the gates' gradients
follow from them by autograd through ``chunk_coefficients``, which is cheap (O(n^2) per chunk).
"""

import torch

from .chunk_forward import end_of_chunk, split_state
from .mlp import gelu_grad2, gelu_vjp


def chunk_backward(WS, coef, n, acts, dout, dWS_end, dcoef):
    """Gradients of one chunk: returns (dq, dk, dv, dWS_start) and adds into ``dcoef`` (this chunk's
    coefficient-gradient buffers, shaped like ``coef``)."""
    L = len(WS)
    xs, pre, errs, deltas, ps, pws, pxs, zs = acts
    N = dout.shape[0]
    G = coef.G[:, :n, :n]
    beta_phi = torch.stack([coef.beta[:, :n], coef.phi[:, :n]], dim=-1)[..., None]  # [N, n, 2, 1]
    last = n - 1
    end = end_of_chunk(coef, n)

    # 1. End-of-chunk update: W' = beta_n W + phi_n S - X^T (g o Delta), S' = m_n S - X^T (c o Delta),
    #    with g = G[n, :] and c = n_{:, n} stacked as end.g_c.
    dWS, dxs, ddeltas = [], [], []
    dg_c = torch.zeros(N, n, 2, dtype=dout.dtype, device=dout.device)
    for layer in range(L):
        W, S = split_state(WS[layer])
        dW_end, dS_end = split_state(dWS_end[layer])
        grad = torch.empty_like(WS[layer])
        dW, dS = split_state(grad)
        torch.mul(dW_end, end.beta, out=dW)
        torch.mul(dW_end, end.phi, out=dS)
        dS.addcmul_(dS_end, end.M)
        dcoef.beta[:, last] += (W * dW_end).sum(dim=(1, 2))
        dcoef.phi[:, last] += (S * dW_end).sum(dim=(1, 2))
        dcoef.M[:, last] += (S * dS_end).sum(dim=(1, 2))
        d = deltas[layer]
        R = torch.bmm(xs[layer], dWS_end[layer]).view(N, n, 2, -1)       # [X dW' | X dS']
        ddeltas.append(-(R * end.g_c).sum(2))
        dxs.append(-torch.bmm((end.g_c * d[:, :, None, :]).flatten(2), dWS_end[layer].transpose(1, 2)))
        dg_c -= (R * d[:, :, None, :]).sum(-1)
        dWS.append(grad)
    dg, dc = dg_c.unbind(-1)
    dcoef.G[:, last, :n] += dg
    dcoef.Dm[:, last, :n] += dc * coef.lr[:, :n]
    dcoef.lr[:, :n] += dc * end.dm

    # 2. Query path, last layer first: z = beta o (P W) + phi o (P S) - (G o P X^T) Delta.
    dz, dp = dout, None  # dp: gradient w.r.t. the layer input, carried to the layer below
    dG = torch.zeros_like(G)
    for layer in range(L - 1, -1, -1):
        if layer < L - 1:
            dz = gelu_vjp(dp, zs[layer])
        dbeta_phi = (pws[layer].view(N, n, 2, -1) * dz[:, :, None, :]).sum(-1)
        dcoef.beta[:, :n] += dbeta_phi[..., 0]
        dcoef.phi[:, :n] += dbeta_phi[..., 1]
        D = (beta_phi * dz[:, :, None, :]).flatten(2)                      # [beta o dz | phi o dz]
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
