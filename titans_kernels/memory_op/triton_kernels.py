"""The two Triton kernels of ``backend="triton"``: one program per (batch, head) walks every chunk.

Forward: the state never leaves the program's two ping-pong buffers (chunk c reads slot c % 2 and
writes the other); at the first chunk of every checkpoint group the start state is also stored to
``CKPT``. Backward: groups in reverse; a group's per-chunk start states are recomputed from its
checkpoint into ``SCRATCH`` (the key pass and the state update only), then its chunks run backward
in reverse, the state gradient ping-ponging in ``DSTATE`` like the forward state.

q, k, v, out and their gradients share one [B, T, H, D] stride set; coefficient tensors are the
contiguous ``[B*H, chunks, C(, C)]`` outputs of ``gates.chunk_coefficients``.
"""

# In a try block: transformers' loader of exported model code (trust_remote_code) requires every
# import outside one to be installed, and this module is only imported where the Triton backend runs.
try:
    import triton
    import triton.language as tl
except ImportError as e:
    raise ImportError("the Triton memory kernels need triton (CUDA builds of torch bundle it)") from e

from .triton_chunk import bwd_chunk_d1, bwd_chunk_d2, fwd_chunk_d1, fwd_chunk_d2


@triton.jit
def _chunk_coefficients(COEF_G, COEF_BETA, COEF_PHI, COEF_M, COEF_DM, COEF_LR, n, c, T, NC, C: tl.constexpr):
    """This chunk's G, beta, phi (rows) and the end-of-chunk row: g = G[last], cv = lr o Dm[last],
    beta_n, phi_n, m_n (last = the chunk's last real token)."""
    rc = tl.arange(0, C)
    cb = (n * NC + c) * C
    last = tl.minimum(T - c * C, C) - 1
    G = tl.load(COEF_G + cb * C + rc[:, None] * C + rc[None, :])
    beta = tl.load(COEF_BETA + cb + rc)
    phi = tl.load(COEF_PHI + cb + rc)
    lr = tl.load(COEF_LR + cb + rc)
    dm = tl.load(COEF_DM + cb * C + last * C + rc)
    g = tl.load(COEF_G + cb * C + last * C + rc)
    beta_n = tl.load(COEF_BETA + cb + last)
    phi_n = tl.load(COEF_PHI + cb + last)
    m_n = tl.load(COEF_M + cb + last)
    return G, beta, phi, lr, dm, g, beta_n, phi_n, m_n, cb, last


@triton.jit
def _rows(X, rowp, row_mask, D: tl.constexpr):
    return tl.load(X + rowp + tl.arange(0, D)[None, :], mask=row_mask, other=0.0).to(tl.float32)


@triton.jit
def _chunk_rows(Q, K, b, h, c, T, stride_b, stride_t, stride_h, D: tl.constexpr, C: tl.constexpr):
    """Row offsets ([C, 1]) of chunk c, the mask of its real tokens, and its q and k rows (fp32)."""
    t = c * C + tl.arange(0, C)
    row_mask = (t < T)[:, None]
    rowp = b * stride_b + h * stride_h + t[:, None] * stride_t
    return rowp, row_mask, _rows(Q, rowp, row_mask, D), _rows(K, rowp, row_mask, D)


@triton.jit
def memory_forward_kernel(Q, K, V, OUT, COEF_G, COEF_BETA, COEF_PHI, COEF_M, COEF_DM, COEF_LR,
                          STATE, CKPT, ROWS, SAVE_CKPT, T, H, NC, GROUP, stride_b, stride_t, stride_h,
                          SZ: tl.constexpr, ROW_STRIDE: tl.constexpr, D: tl.constexpr, HID: tl.constexpr,
                          C: tl.constexpr, BH: tl.constexpr, PRECISION: tl.constexpr, DEPTH: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    b = n // H
    h = n % H
    rd = tl.arange(0, D)
    state = STATE + n * 2 * SZ
    rows = ROWS + n * ROW_STRIDE
    ngroups = tl.cdiv(NC, GROUP)
    for c in range(0, NC):
        src = state + (c % 2) * SZ
        dst = state + ((c + 1) % 2) * SZ
        rowp, row_mask, q, k = _chunk_rows(Q, K, b, h, c, T, stride_b, stride_t, stride_h, D, C)
        G, beta, phi, lr, dm, g, beta_n, phi_n, m_n, cb, last = _chunk_coefficients(
            COEF_G, COEF_BETA, COEF_PHI, COEF_M, COEF_DM, COEF_LR, n, c, T, NC, C)
        save = (c % GROUP == 0) & (SAVE_CKPT != 0)
        ckpt = CKPT + (n * ngroups + c // GROUP) * SZ
        if DEPTH == 1:
            fwd_chunk_d1(src, dst, ckpt, save, V + rowp, OUT + rowp, row_mask, q, k, G, beta, phi, g, lr * dm,
                         beta_n, phi_n, m_n, D, C, BH, PRECISION, True)
        else:
            v = _rows(V, rowp, row_mask, D)
            out = fwd_chunk_d2(src, dst, ckpt, save, rows, q, k, v, G, beta, phi, g, lr * dm, beta_n, phi_n, m_n,
                               D, HID, C, BH, PRECISION, True)
            tl.store(OUT + rowp + rd[None, :], out.to(OUT.dtype.element_ty), mask=row_mask)
        tl.debug_barrier()


@triton.jit
def memory_backward_kernel(Q, K, V, DOUT, DQ, DK, DV, COEF_G, COEF_BETA, COEF_PHI, COEF_M, COEF_DM, COEF_LR,
                           DCOEF_G, DCOEF_BETA, DCOEF_PHI, DCOEF_M, DCOEF_DM, DCOEF_LR,
                           CKPT, SCRATCH, DSTATE, ROWS, T, H, NC, GROUP, stride_b, stride_t, stride_h,
                           SZ: tl.constexpr, ROW_STRIDE: tl.constexpr, COPY_BLOCK: tl.constexpr,
                           D: tl.constexpr, HID: tl.constexpr, C: tl.constexpr, BH: tl.constexpr,
                           PRECISION: tl.constexpr, DEPTH: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    b = n // H
    h = n % H
    rc = tl.arange(0, C)
    rd = tl.arange(0, D)
    rz = tl.arange(0, COPY_BLOCK)
    scratch = SCRATCH + n * GROUP * SZ
    dstate = DSTATE + n * 2 * SZ
    rows = ROWS + n * ROW_STRIDE
    ngroups = tl.cdiv(NC, GROUP)
    for gr in range(0, ngroups):
        gi = ngroups - 1 - gr
        first = gi * GROUP
        stop = tl.minimum(first + GROUP, NC)
        ckpt = CKPT + (n * ngroups + gi) * SZ
        for off in range(0, SZ, COPY_BLOCK):
            tl.store(scratch + off + rz, tl.load(ckpt + off + rz))
        tl.debug_barrier()
        # The group's chunk start states: slot j holds the state before chunk first + j.
        for c in range(first, stop - 1):
            src = scratch + (c - first) * SZ
            rowp, row_mask, q, k = _chunk_rows(Q, K, b, h, c, T, stride_b, stride_t, stride_h, D, C)
            G, beta, phi, lr, dm, g, beta_n, phi_n, m_n, cb, last = _chunk_coefficients(
                COEF_G, COEF_BETA, COEF_PHI, COEF_M, COEF_DM, COEF_LR, n, c, T, NC, C)
            never = c < 0
            if DEPTH == 1:
                fwd_chunk_d1(src, src + SZ, src, never, V + rowp, DOUT + rowp, row_mask, q, k, G, beta, phi,
                             g, lr * dm, beta_n, phi_n, m_n, D, C, BH, PRECISION, False)
            else:
                v = _rows(V, rowp, row_mask, D)
                fwd_chunk_d2(src, src + SZ, src, never, rows, q, k, v, G, beta, phi, g, lr * dm, beta_n, phi_n,
                             m_n, D, HID, C, BH, PRECISION, False)
            tl.debug_barrier()
        for cr in range(0, stop - first):
            c = stop - 1 - cr
            src = scratch + (c - first) * SZ
            done = NC - 1 - c  # chunks already walked backward: the parity of the state-gradient slot
            dsrc = dstate + (done % 2) * SZ
            ddst = dstate + ((done + 1) % 2) * SZ
            rowp, row_mask, q, k = _chunk_rows(Q, K, b, h, c, T, stride_b, stride_t, stride_h, D, C)
            G, beta, phi, lr, dm, g, beta_n, phi_n, m_n, cb, last = _chunk_coefficients(
                COEF_G, COEF_BETA, COEF_PHI, COEF_M, COEF_DM, COEF_LR, n, c, T, NC, C)
            cv = lr * dm
            if DEPTH == 1:
                dq, dk, dG, dbeta, dphi, dg, dc, dbeta_n, dphi_n, dm_n = bwd_chunk_d1(
                    src, dsrc, ddst, V + rowp, DOUT + rowp, DV + rowp, row_mask, q, k, G, beta, phi, g, cv,
                    beta_n, phi_n, m_n, D, C, BH, PRECISION)
            else:
                v = _rows(V, rowp, row_mask, D)
                dout = _rows(DOUT, rowp, row_mask, D)
                dq, dk, dv, dG, dbeta, dphi, dg, dc, dbeta_n, dphi_n, dm_n = bwd_chunk_d2(
                    src, dsrc, ddst, rows, q, k, v, dout, G, beta, phi, g, cv, beta_n, phi_n, m_n,
                    D, HID, C, BH, PRECISION)
                tl.store(DV + rowp + rd[None, :], dv, mask=row_mask)
            tl.store(DQ + rowp + rd[None, :], dq, mask=row_mask)
            tl.store(DK + rowp + rd[None, :], dk, mask=row_mask)
            # Coefficient gradients; the end-of-chunk terms belong to row `last`.
            is_last = rc == last
            tl.store(DCOEF_G + cb * C + rc[:, None] * C + rc[None, :], dG + tl.where(is_last[:, None], dg[None, :], 0.0))
            tl.store(DCOEF_BETA + cb + rc, dbeta + tl.where(is_last, dbeta_n, 0.0))
            tl.store(DCOEF_PHI + cb + rc, dphi + tl.where(is_last, dphi_n, 0.0))
            tl.store(DCOEF_M + cb + rc, tl.where(is_last, dm_n, 0.0))
            tl.store(DCOEF_DM + cb * C + last * C + rc, dc * lr)
            tl.store(DCOEF_LR + cb + rc, dc * dm)
            tl.debug_barrier()
