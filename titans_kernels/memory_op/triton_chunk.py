"""Triton bodies of one chunk of the dual form: forward (with the state update) and backward, for
memory depth 1 and 2. The math is ``chunk_forward.py`` / ``chunk_backward.py`` line for line (same
names); what differs is the tiling.

One program owns one (batch, head). The fp32 state of a head is one flat buffer
``[W_1 | S_1 | W_2 | S_2]`` (row-major per matrix); a chunk reads it from ``src`` and writes the next
state to ``dst`` (never the same buffer: a tile read by one warp is never overwritten by another in the
same chunk). The hidden width of a depth-2 memory is walked in blocks of ``BH`` columns, so no
weight-sized tile ever sits in registers; rows of hidden width (``[C, HID]``: pre-activations, errors)
go through a small per-program scratch, ``rows``, which stays in L1/L2. Depth 1 is walked in blocks of
output columns, where every quantity but the ``[C, C]`` score matrices is local to a block.

Reductions that cross blocks (the MLP output, ``P X^T`` of layer 2, ``dq``, ``dk``, ``dDelta_2``) are
carried in registers across the block loop. ``tl.debug_barrier()`` separates a block loop's stores
from the next loop's loads of the same scratch.
"""

# In a try block: transformers' loader of exported model code (trust_remote_code) requires every
# import outside one to be installed, and this module is only imported where the Triton backend runs.
try:
    import triton
    import triton.language as tl
except ImportError as e:
    raise ImportError("the Triton memory kernels need triton (CUDA builds of torch bundle it)") from e

# Globals a jit function reads must be constexpr.
_INV_SQRT2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr):
    """a @ b with an fp32 accumulator. PRECISION "bf16"/"fp16": tensor-core dots on operands rounded to
    that type; "ieee"/"tf32": fp32 operands. "bf16_rounded"/"fp16_rounded" are the same products for
    the interpreter, whose half-precision dot is wrong (triton 3.9): operands rounded, then multiplied
    exactly in fp32 (a product of two half values is exact in fp32)."""
    if PRECISION == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    elif PRECISION == "fp16":
        return tl.dot(a.to(tl.float16), b.to(tl.float16), out_dtype=tl.float32)
    elif PRECISION == "bf16_rounded":
        a16 = a.to(tl.bfloat16).to(tl.float32)
        b16 = b.to(tl.bfloat16).to(tl.float32)
        return tl.dot(a16, b16, input_precision="ieee", out_dtype=tl.float32)
    elif PRECISION == "fp16_rounded":
        a16 = a.to(tl.float16).to(tl.float32)
        b16 = b.to(tl.float16).to(tl.float32)
        return tl.dot(a16, b16, input_precision="ieee", out_dtype=tl.float32)
    else:
        return tl.dot(a, b, input_precision=PRECISION, out_dtype=tl.float32)


@triton.jit
def _tile(ptr, rows, cols, ld):
    """Pointers of the [len(rows), len(cols)] tile of a row-major matrix with leading dim ``ld``."""
    return ptr + rows[:, None] * ld + cols[None, :]


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.erf(x * _INV_SQRT2))


@triton.jit
def _gelu_grad(x):
    return 0.5 * (1.0 + tl.erf(x * _INV_SQRT2)) + x * tl.exp(-0.5 * x * x) * _INV_SQRT_2PI


@triton.jit
def _gelu_grad2(x):
    return tl.exp(-0.5 * x * x) * (2.0 - x * x) * _INV_SQRT_2PI


@triton.jit
def _total(x):
    return tl.sum(tl.sum(x, 1), 0)


@triton.jit
def _state_d1(ptr, cols, D: tl.constexpr):
    """Columns ``cols`` of a depth-1 state: W, S [D, BO]."""
    rd = tl.arange(0, D)
    return tl.load(_tile(ptr, rd, cols, D)), tl.load(_tile(ptr + D * D, rd, cols, D))


@triton.jit
def _store_state_d1(ptr, cols, w, s, D: tl.constexpr):
    rd = tl.arange(0, D)
    tl.store(_tile(ptr, rd, cols, D), w)
    tl.store(_tile(ptr + D * D, rd, cols, D), s)


@triton.jit
def _state_d2(ptr, cols, D: tl.constexpr, HID: tl.constexpr):
    """Hidden block ``cols`` of a depth-2 state: W1, S1 [D, BH] and W2, S2 [BH, D]."""
    rd = tl.arange(0, D)
    return (tl.load(_tile(ptr, rd, cols, HID)), tl.load(_tile(ptr + D * HID, rd, cols, HID)),
            tl.load(_tile(ptr + 2 * D * HID, cols, rd, D)), tl.load(_tile(ptr + 3 * D * HID, cols, rd, D)))


@triton.jit
def _weights_d2(ptr, cols, D: tl.constexpr, HID: tl.constexpr):
    """W1, W2 of hidden block ``cols`` (the key pass needs no S)."""
    rd = tl.arange(0, D)
    return tl.load(_tile(ptr, rd, cols, HID)), tl.load(_tile(ptr + 2 * D * HID, cols, rd, D))


@triton.jit
def _store_state_d2(ptr, cols, w1, s1, w2, s2, D: tl.constexpr, HID: tl.constexpr):
    rd = tl.arange(0, D)
    tl.store(_tile(ptr, rd, cols, HID), w1)
    tl.store(_tile(ptr + D * HID, rd, cols, HID), s1)
    tl.store(_tile(ptr + 2 * D * HID, cols, rd, D), w2)
    tl.store(_tile(ptr + 3 * D * HID, cols, rd, D), s2)


@triton.jit
def _row(rows, slot, cols, C: tl.constexpr, HID: tl.constexpr):
    """Block ``cols`` of a [C, HID] row slot of the scratch."""
    return tl.load(_tile(rows + slot * C * HID, tl.arange(0, C), cols, HID))


@triton.jit
def _store_row(rows, slot, cols, x, C: tl.constexpr, HID: tl.constexpr):
    tl.store(_tile(rows + slot * C * HID, tl.arange(0, C), cols, HID), x)


# ----------------------------------------------------------------------------------------------------
# depth 1: W, S [D, D]; out = beta o (Q W) + phi o (Q S) - (G o Q K^T) Delta, Delta = 2 (K W - V)


@triton.jit
def fwd_chunk_d1(src, dst, ckpt, save, vrow, orow, row_mask, q, k, G, beta, phi, g, cv, beta_n, phi_n, m_n,
                 D: tl.constexpr, C: tl.constexpr, BO: tl.constexpr, PRECISION: tl.constexpr,
                 NEED_OUT: tl.constexpr):
    """One chunk; ``vrow``/``orow``: pointers of the chunk's v / out rows at column 0 (``[C, 1]``),
    stored and loaded per block of BO columns. Writes the end state to ``dst`` (and ``src`` to ``ckpt``
    when ``save``)."""
    ro = tl.arange(0, BO)
    kt = tl.trans(k)
    gm = G
    if NEED_OUT:
        gm = G * _mm(q, kt, PRECISION)
    for ob in range(0, D, BO):
        cols = ob + ro
        w, s = _state_d1(src, cols, D)
        v = tl.load(vrow + cols[None, :], mask=row_mask, other=0.0).to(tl.float32)
        delta = 2.0 * (_mm(k, w, PRECISION) - v)
        if NEED_OUT:
            out = beta[:, None] * _mm(q, w, PRECISION) + phi[:, None] * _mm(q, s, PRECISION) - _mm(gm, delta, PRECISION)
            tl.store(orow + cols[None, :], out.to(orow.dtype.element_ty), mask=row_mask)
        _store_state_d1(dst, cols, beta_n * w + phi_n * s - _mm(kt, g[:, None] * delta, PRECISION),
                        m_n * s - _mm(kt, cv[:, None] * delta, PRECISION), D)
        if save:
            _store_state_d1(ckpt, cols, w, s, D)


@triton.jit
def bwd_chunk_d1(src, dsrc, ddst, vrow, dorow, dvrow, row_mask, q, k, G, beta, phi, g, cv, beta_n, phi_n, m_n,
                 D: tl.constexpr, C: tl.constexpr, BO: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of ``fwd_chunk_d1``: reads the state gradient after the chunk from ``dsrc``, writes the
    one before it to ``ddst`` and dv per column block; returns dq, dk and the coefficient gradients."""
    ro = tl.arange(0, BO)
    px = _mm(q, tl.trans(k), PRECISION)
    gmt = tl.trans(G * px)
    kt = tl.trans(k)
    qt = tl.trans(q)
    dq = tl.zeros([C, D], tl.float32)
    dk = tl.zeros([C, D], tl.float32)
    dA = tl.zeros([C, C], tl.float32)
    dbeta = tl.zeros([C], tl.float32)
    dphi = tl.zeros([C], tl.float32)
    dg = tl.zeros([C], tl.float32)
    dc = tl.zeros([C], tl.float32)
    dbeta_n = 0.0
    dphi_n = 0.0
    dm_n = 0.0
    for ob in range(0, D, BO):
        cols = ob + ro
        w, s = _state_d1(src, cols, D)
        dwe, dse = _state_d1(dsrc, cols, D)
        v = tl.load(vrow + cols[None, :], mask=row_mask, other=0.0).to(tl.float32)
        dout = tl.load(dorow + cols[None, :], mask=row_mask, other=0.0).to(tl.float32)
        delta = 2.0 * (_mm(k, w, PRECISION) - v)
        # end-of-chunk update
        dbeta_n += _total(w * dwe)
        dphi_n += _total(s * dwe)
        dm_n += _total(s * dse)
        kdw = _mm(k, dwe, PRECISION)
        kds = _mm(k, dse, PRECISION)
        dg -= tl.sum(kdw * delta, 1)
        dc -= tl.sum(kds * delta, 1)
        dk -= _mm(g[:, None] * delta, tl.trans(dwe), PRECISION) + _mm(cv[:, None] * delta, tl.trans(dse), PRECISION)
        # query path
        bdo = beta[:, None] * dout
        pdo = phi[:, None] * dout
        dbeta += tl.sum(_mm(q, w, PRECISION) * dout, 1)
        dphi += tl.sum(_mm(q, s, PRECISION) * dout, 1)
        dq += _mm(bdo, tl.trans(w), PRECISION) + _mm(pdo, tl.trans(s), PRECISION)
        dA -= _mm(dout, tl.trans(delta), PRECISION)
        ddelta = -(g[:, None] * kdw + cv[:, None] * kds) - _mm(gmt, dout, PRECISION)
        # key path: Delta = 2 (K W - V)
        dy = 2.0 * ddelta
        tl.store(dvrow + cols[None, :], -dy, mask=row_mask)
        dk += _mm(dy, tl.trans(w), PRECISION)
        _store_state_d1(ddst, cols, beta_n * dwe + _mm(qt, bdo, PRECISION) + _mm(kt, dy, PRECISION),
                        phi_n * dwe + m_n * dse + _mm(qt, pdo, PRECISION), D)
    dG = dA * px
    dpx = dA * G
    dq += _mm(dpx, k, PRECISION)
    dk += _mm(tl.trans(dpx), q, PRECISION)
    return dq, dk, dG, dbeta, dphi, dg, dc, dbeta_n, dphi_n, dm_n


# ----------------------------------------------------------------------------------------------------
# depth 2: W1, S1 [D, HID]; W2, S2 [HID, D]; GELU between. Row scratch slots of [C, HID]:
_A1 = tl.constexpr(0)
_X2 = tl.constexpr(1)
_E1 = tl.constexpr(2)
_D1 = tl.constexpr(3)
_Z1 = tl.constexpr(4)
_P2 = tl.constexpr(5)
_DD1 = tl.constexpr(6)
_DZ1 = tl.constexpr(7)
_DE1 = tl.constexpr(8)
FWD_ROW_SLOTS = 4
BWD_ROW_SLOTS = 9


@triton.jit
def _key_pass_d2(src, rows, k, v, D: tl.constexpr, HID: tl.constexpr, C: tl.constexpr, BH: tl.constexpr,
                 PRECISION: tl.constexpr):
    """A1 = K W1, X2 = gelu(A1), Delta2 = 2 (X2 W2 - V), E1 = Delta2 W2^T, Delta1 = E1 o gelu'(A1);
    rows A1, X2, E1, D1 go to the scratch, Delta2 is returned."""
    rh = tl.arange(0, BH)
    y = tl.zeros([C, D], tl.float32)
    for hb in range(0, HID, BH):
        cols = hb + rh
        w1, w2 = _weights_d2(src, cols, D, HID)
        a1 = _mm(k, w1, PRECISION)
        x2 = _gelu(a1)
        _store_row(rows, _A1, cols, a1, C, HID)
        _store_row(rows, _X2, cols, x2, C, HID)
        y += _mm(x2, w2, PRECISION)
    delta2 = 2.0 * (y - v)
    tl.debug_barrier()
    for hb in range(0, HID, BH):
        cols = hb + rh
        w1, w2 = _weights_d2(src, cols, D, HID)
        e1 = _mm(delta2, tl.trans(w2), PRECISION)
        _store_row(rows, _E1, cols, e1, C, HID)
        _store_row(rows, _D1, cols, e1 * _gelu_grad(_row(rows, _A1, cols, C, HID)), C, HID)
    tl.debug_barrier()
    return delta2


@triton.jit
def fwd_chunk_d2(src, dst, ckpt, save, rows, q, k, v, G, beta, phi, g, cv, beta_n, phi_n, m_n,
                 D: tl.constexpr, HID: tl.constexpr, C: tl.constexpr, BH: tl.constexpr, PRECISION: tl.constexpr,
                 NEED_OUT: tl.constexpr):
    """One chunk: returns the output rows (zeros unless NEED_OUT) and writes the end state to ``dst``."""
    rh = tl.arange(0, BH)
    delta2 = _key_pass_d2(src, rows, k, v, D, HID, C, BH, PRECISION)
    gd2 = g[:, None] * delta2
    cd2 = cv[:, None] * delta2
    kt = tl.trans(k)
    gm1 = G
    if NEED_OUT:
        gm1 = G * _mm(q, kt, PRECISION)
    acc = tl.zeros([C, D], tl.float32)
    px2 = tl.zeros([C, C], tl.float32)
    for hb in range(0, HID, BH):
        cols = hb + rh
        w1, s1, w2, s2 = _state_d2(src, cols, D, HID)
        d1 = _row(rows, _D1, cols, C, HID)
        x2 = _row(rows, _X2, cols, C, HID)
        if NEED_OUT:
            z1 = beta[:, None] * _mm(q, w1, PRECISION) + phi[:, None] * _mm(q, s1, PRECISION) - _mm(gm1, d1, PRECISION)
            p2 = _gelu(z1)
            acc += beta[:, None] * _mm(p2, w2, PRECISION) + phi[:, None] * _mm(p2, s2, PRECISION)
            px2 += _mm(p2, tl.trans(x2), PRECISION)
        x2t = tl.trans(x2)
        _store_state_d2(dst, cols,
                        beta_n * w1 + phi_n * s1 - _mm(kt, g[:, None] * d1, PRECISION),
                        m_n * s1 - _mm(kt, cv[:, None] * d1, PRECISION),
                        beta_n * w2 + phi_n * s2 - _mm(x2t, gd2, PRECISION),
                        m_n * s2 - _mm(x2t, cd2, PRECISION), D, HID)
        if save:
            _store_state_d2(ckpt, cols, w1, s1, w2, s2, D, HID)
    out = acc
    if NEED_OUT:
        out = acc - _mm(G * px2, delta2, PRECISION)
    tl.debug_barrier()
    return out


@triton.jit
def bwd_chunk_d2(src, dsrc, ddst, rows, q, k, v, dout, G, beta, phi, g, cv, beta_n, phi_n, m_n,
                 D: tl.constexpr, HID: tl.constexpr, C: tl.constexpr, BH: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of ``fwd_chunk_d2`` from the chunk's start state ``src``: recomputes the activations,
    reads the state gradient after the chunk from ``dsrc``, writes the one before it to ``ddst``, and
    returns dq, dk, dv and the coefficient gradients."""
    rh = tl.arange(0, BH)
    kt = tl.trans(k)
    qt = tl.trans(q)

    # Recompute: key pass, then the query path of layer 1 (Z1, P2 to the scratch) and of layer 2's sums.
    delta2 = _key_pass_d2(src, rows, k, v, D, HID, C, BH, PRECISION)
    px1 = _mm(q, kt, PRECISION)
    gm1 = G * px1
    pw2 = tl.zeros([C, D], tl.float32)
    ps2 = tl.zeros([C, D], tl.float32)
    px2 = tl.zeros([C, C], tl.float32)
    for hb in range(0, HID, BH):
        cols = hb + rh
        w1, s1, w2, s2 = _state_d2(src, cols, D, HID)
        d1 = _row(rows, _D1, cols, C, HID)
        z1 = beta[:, None] * _mm(q, w1, PRECISION) + phi[:, None] * _mm(q, s1, PRECISION) - _mm(gm1, d1, PRECISION)
        p2 = _gelu(z1)
        _store_row(rows, _Z1, cols, z1, C, HID)
        _store_row(rows, _P2, cols, p2, C, HID)
        pw2 += _mm(p2, w2, PRECISION)
        ps2 += _mm(p2, s2, PRECISION)
        px2 += _mm(p2, tl.trans(_row(rows, _X2, cols, C, HID)), PRECISION)
    tl.debug_barrier()

    # Layer 2's query path (dz = dout) and what of the end-of-chunk update needs no block loop.
    dbeta = tl.sum(pw2 * dout, 1)
    dphi = tl.sum(ps2 * dout, 1)
    bdo = beta[:, None] * dout
    pdo = phi[:, None] * dout
    dA2 = -_mm(dout, tl.trans(delta2), PRECISION)
    dG = dA2 * px2
    dpx2 = dA2 * G
    dd2 = -_mm(tl.trans(G * px2), dout, PRECISION)
    gmt1 = tl.trans(gm1)

    # Pass 1 over hidden blocks: layer 1's query path and end-of-chunk terms, dDelta1 and its
    # pull-back into dDelta2; block-local rows to the scratch.
    xdw2 = tl.zeros([C, D], tl.float32)
    xds2 = tl.zeros([C, D], tl.float32)
    dq = tl.zeros([C, D], tl.float32)
    dk = tl.zeros([C, D], tl.float32)
    dA1 = tl.zeros([C, C], tl.float32)
    dg = tl.zeros([C], tl.float32)
    dc = tl.zeros([C], tl.float32)
    dbeta_n = 0.0
    dphi_n = 0.0
    dm_n = 0.0
    for hb in range(0, HID, BH):
        cols = hb + rh
        w1, s1, w2, s2 = _state_d2(src, cols, D, HID)
        dw1e, ds1e, dw2e, ds2e = _state_d2(dsrc, cols, D, HID)
        x2 = _row(rows, _X2, cols, C, HID)
        d1 = _row(rows, _D1, cols, C, HID)
        dbeta_n += _total(w1 * dw1e) + _total(w2 * dw2e)
        dphi_n += _total(s1 * dw1e) + _total(s2 * dw2e)
        dm_n += _total(s1 * ds1e) + _total(s2 * ds2e)
        xdw2 += _mm(x2, dw2e, PRECISION)
        xds2 += _mm(x2, ds2e, PRECISION)
        dp2 = _mm(bdo, tl.trans(w2), PRECISION) + _mm(pdo, tl.trans(s2), PRECISION) + _mm(dpx2, x2, PRECISION)
        dz1 = dp2 * _gelu_grad(_row(rows, _Z1, cols, C, HID))
        dbeta += tl.sum(_mm(q, w1, PRECISION) * dz1, 1)
        dphi += tl.sum(_mm(q, s1, PRECISION) * dz1, 1)
        dq += _mm(beta[:, None] * dz1, tl.trans(w1), PRECISION) + _mm(phi[:, None] * dz1, tl.trans(s1), PRECISION)
        dA1 -= _mm(dz1, tl.trans(d1), PRECISION)
        kdw1 = _mm(k, dw1e, PRECISION)
        kds1 = _mm(k, ds1e, PRECISION)
        dg -= tl.sum(kdw1 * d1, 1)
        dc -= tl.sum(kds1 * d1, 1)
        dk -= _mm(g[:, None] * d1, tl.trans(dw1e), PRECISION) + _mm(cv[:, None] * d1, tl.trans(ds1e), PRECISION)
        dd1 = -(g[:, None] * kdw1 + cv[:, None] * kds1) - _mm(gmt1, dz1, PRECISION)
        de1 = dd1 * _gelu_grad(_row(rows, _A1, cols, C, HID))
        dd2 += _mm(de1, w2, PRECISION)
        _store_row(rows, _DD1, cols, dd1, C, HID)
        _store_row(rows, _DZ1, cols, dz1, C, HID)
        _store_row(rows, _DE1, cols, de1, C, HID)
    tl.debug_barrier()

    # Delta2 is complete: layer 2's end-of-chunk terms, then dy, dv and layer 1's score gradients.
    dd2 -= g[:, None] * xdw2 + cv[:, None] * xds2
    dg -= tl.sum(xdw2 * delta2, 1)
    dc -= tl.sum(xds2 * delta2, 1)
    dy = 2.0 * dd2
    dG += dA1 * px1
    dpx1 = dA1 * G
    dq += _mm(dpx1, k, PRECISION)
    dk += _mm(tl.trans(dpx1), q, PRECISION)
    gd2 = g[:, None] * delta2
    cd2 = cv[:, None] * delta2
    dpx2t = tl.trans(dpx2)

    # Pass 2: the key path of layer 1 and every weight gradient.
    for hb in range(0, HID, BH):
        cols = hb + rh
        w1, w2 = _weights_d2(src, cols, D, HID)
        dw1e, ds1e, dw2e, ds2e = _state_d2(dsrc, cols, D, HID)
        x2 = _row(rows, _X2, cols, C, HID)
        p2 = _row(rows, _P2, cols, C, HID)
        a1 = _row(rows, _A1, cols, C, HID)
        dz1 = _row(rows, _DZ1, cols, C, HID)
        dx2 = (_mm(dpx2t, p2, PRECISION) + _mm(dy, tl.trans(w2), PRECISION)
               - _mm(gd2, tl.trans(dw2e), PRECISION) - _mm(cd2, tl.trans(ds2e), PRECISION))
        da1 = (_gelu_grad2(a1) * _row(rows, _DD1, cols, C, HID) * _row(rows, _E1, cols, C, HID)
               + _gelu_grad(a1) * dx2)
        dk += _mm(da1, tl.trans(w1), PRECISION)
        p2t = tl.trans(p2)
        _store_state_d2(ddst, cols,
                        beta_n * dw1e + _mm(qt, beta[:, None] * dz1, PRECISION) + _mm(kt, da1, PRECISION),
                        phi_n * dw1e + m_n * ds1e + _mm(qt, phi[:, None] * dz1, PRECISION),
                        beta_n * dw2e + _mm(p2t, bdo, PRECISION)
                        + _mm(tl.trans(_row(rows, _DE1, cols, C, HID)), delta2, PRECISION)
                        + _mm(tl.trans(x2), dy, PRECISION),
                        phi_n * dw2e + m_n * ds2e + _mm(p2t, pdo, PRECISION), D, HID)
    tl.debug_barrier()
    return dq, dk, -dy, dG, dbeta, dphi, dg, dc, dbeta_n, dphi_n, dm_n
