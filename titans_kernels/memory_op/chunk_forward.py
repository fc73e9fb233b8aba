"""Forward of one chunk in the dual form (``backend="torch"``), on the flattened layout.

Layout: batch and heads are flattened into one leading dim ``N = B * H``; rows are ``[N, n, d]``; each
layer's state is one tensor ``WS = [W | S]`` of shape ``[N, d_in, 2 d_out]`` so that a query row meets
W and S in one matmul and the end-of-chunk update is one matmul too.

Inside a chunk with start state (W_0, S_0), the gradients of all keys are taken at W_0, so a layer's
input rows X and error rows Delta come from one MLP pass over the keys. The weights token t has seen,
applied to a query row p_t, are (TITANS_SPEC section 1)

    p_t W_t = beta_t p_t W_0 + phi_t p_t S_0 - sum_{j<=t} G[t, j] (p_t . x_j) Delta_j

that is ``beta * (P W_0) + phi * (P S_0) - (G o P X^T) Delta`` layer by layer (P: the query rows the
layer sees), and the end state is read off the coefficients' last row.
"""

from typing import List, NamedTuple, Optional

import torch

from .mlp import gelu, gelu_vjp


class ChunkActivations(NamedTuple):
    """What the backward of a chunk needs besides its start state (per layer lists)."""
    xs: List[torch.Tensor]      # layer inputs on the key path (xs[0] = k)
    pre: List[torch.Tensor]     # key-path pre-activations of the hidden layers
    errs: List[torch.Tensor]    # Delta_{l+1} W_{l+1}^T, before gelu'
    deltas: List[torch.Tensor]  # loss errors at each layer's output
    ps: List[torch.Tensor]      # query-path layer inputs (ps[0] = q)
    pws: List[torch.Tensor]     # ps[l] @ WS[l] = [P W_0 | P S_0]
    pxs: List[torch.Tensor]     # ps[l] @ xs[l]^T, before the coefficient mask
    zs: List[torch.Tensor]      # query-path pre-activations of the hidden layers


class EndOfChunk(NamedTuple):
    """Coefficients of the end-of-chunk update, shaped to broadcast against the state."""
    g_c: torch.Tensor   # [N, n, 2, 1]: G[n, j] and n_{j, n} side by side (W and S halves)
    beta: torch.Tensor  # [N, 1, 1]
    phi: torch.Tensor
    M: torch.Tensor
    dm: torch.Tensor    # [N, n]: Dm[n, j] (for the gradient of n_{j, n} = a_j Dm[n, j])


def end_of_chunk(coef, n: int) -> EndOfChunk:
    last = n - 1
    dm = coef.Dm[:, last, :n]
    g_c = torch.stack([coef.G[:, last, :n], dm * coef.lr[:, :n]], dim=-1)[..., None]
    return EndOfChunk(g_c, *(x[:, last, None, None] for x in (coef.beta, coef.phi, coef.M)), dm)


def split_state(ws: torch.Tensor):
    half = ws.shape[-1] // 2
    return ws[..., :half], ws[..., half:]


def key_pass(WS, k, v):
    """MLP pass over the keys at the chunk-start weights: layer inputs, pre-activations, errors."""
    Ws = [split_state(ws)[0] for ws in WS]
    xs, pre, h = [k], [], k
    for layer in range(len(Ws) - 1):
        a = torch.bmm(h, Ws[layer])
        pre.append(a)
        h = gelu(a)
        xs.append(h)
    delta = 2.0 * (torch.bmm(h, Ws[-1]) - v)
    deltas, errs = [delta], []
    for layer in range(len(Ws) - 2, -1, -1):
        e = torch.bmm(delta, Ws[layer + 1].transpose(1, 2))
        delta = gelu_vjp(e, pre[layer])
        errs.append(e)
        deltas.append(delta)
    errs.reverse()
    deltas.reverse()
    return xs, pre, errs, deltas


def chunk_forward(WS, q, k, v, coef, n: int, keep: bool = False, out_unused: bool = False):
    """Output rows ``[N, n, d]`` and end state of one chunk (+ activations when ``keep``; the
    output itself is skipped when ``out_unused``, as in the backward's recomputation).

    ``coef`` holds this chunk's coefficients (sized for a full chunk); a short last chunk uses the
    leading ``n`` rows, which do not depend on the padding after them.
    """
    xs, pre, errs, deltas = key_pass(WS, k, v)
    N = q.shape[0]
    G = coef.G[:, :n, :n]
    beta_phi = torch.stack([coef.beta[:, :n], coef.phi[:, :n]], dim=-1)[..., None]  # [N, n, 2, 1]
    ps, pws, pxs, zs = [], [], [], []
    p = q
    for layer, ws in enumerate(WS):
        pw = torch.bmm(p, ws)
        px = torch.bmm(p, xs[layer].transpose(1, 2))
        if keep:
            ps.append(p)
            pws.append(pw)
            pxs.append(px)
        if layer == len(WS) - 1 and out_unused:
            break
        # beta o (P W_0) + phi o (P S_0) - (G o P X^T) Delta
        z = torch.baddbmm((pw.view(N, n, 2, -1) * beta_phi).sum(2), G * px, deltas[layer], alpha=-1.0)
        if layer < len(WS) - 1:
            if keep:
                zs.append(z)
            p = gelu(z)
    out = None if out_unused else z

    coef_last = end_of_chunk(coef, n)
    new_WS = []
    for layer, ws in enumerate(WS):
        W, S = split_state(ws)
        new = torch.empty_like(ws)
        new_W, new_S = split_state(new)
        torch.mul(W, coef_last.beta, out=new_W)
        new_W.addcmul_(S, coef_last.phi)
        torch.mul(S, coef_last.M, out=new_S)
        new.baddbmm_(xs[layer].transpose(1, 2), (coef_last.g_c * deltas[layer][:, :, None, :]).flatten(2), alpha=-1.0)
        new_WS.append(new)
    acts: Optional[ChunkActivations] = ChunkActivations(xs, pre, errs, deltas, ps, pws, pxs, zs) if keep else None
    return out, new_WS, acts
