"""Backward of the Triton selective scan, written in Gluon (Triton with explicit layouts).

Why Gluon: the adjoint is a scan that runs backwards in time, and Triton 3.6 lowers
``associative_scan(..., reverse=True)`` by moving every element across lanes (benchmarks/NOTES.md:
344 shuffles per state where the forward scan takes 24, even when the axis lies inside one
thread). With the layout fixed by hand, each thread owns S consecutive steps of one channel
(32 lanes x S steps = one chunk), and the reverse scan is built from pieces that cost no
shuffles or only a few per chunk:

1. each thread reverses its S steps in registers (``_flip_segments``: splits, joins and
   permutes, which only rename registers), scans them forward and reverses the result: the
   adjoint of every step given the adjoint entering the segment from its right;
2. the 32 segment summaries (one per lane) are combined across lanes: reversed with a gather,
   scanned forward, gathered back shifted by one segment (an exclusive suffix);
3. every step adds its segment's incoming adjoint.

The rest follows the plain Triton backward in triton.py: chunks walked from the end, the states
recomputed from the forward's checkpoint at each chunk start, a loop over the N states, dB and
dC added with atomics. Layouts as in reference.py.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

LANES = gl.constexpr(32)  # one chunk segment per lane


@gluon.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@gluon.jit
def _softplus(x):
    return gl.where(x <= 20.0, gl.log(1.0 + gl.exp(x)), x)


@gluon.jit
def _sigmoid(x):
    return 1.0 / (1.0 + gl.exp(-x))


@gluon.jit
def _flip_segments(x, layout: gl.constexpr, LOG_S: gl.constexpr):
    """x (W, G, S) in `layout`, the last axis in one thread -> x[:, :, ::-1], by renaming registers.

    Each round complements the lowest index bit (swap the halves of a split) and rotates the bits
    by one (the top bit becomes the lowest); after log2(S) rounds every bit is complemented once.
    """
    W: gl.constexpr = x.shape[0]
    G: gl.constexpr = x.shape[1]
    S: gl.constexpr = x.shape[2]
    for _ in gl.static_range(LOG_S):
        lo, hi = gl.split(gl.reshape(x, [W, G, S // 2, 2]))
        x = gl.reshape(gl.join(hi, lo), [W, G, 2, S // 2])
        x = gl.reshape(gl.permute(x, [0, 1, 3, 2]), [W, G, S])
    return gl.convert_layout(x, layout, assert_trivial=True)


@gluon.jit
def _first_of_segments(x, layout: gl.constexpr, LOG_S: gl.constexpr):
    """x (W, G, S) in `layout` -> x[:, :, 0] (W, G), by keeping the even half LOG_S times (no data moves)."""
    W: gl.constexpr = x.shape[0]
    G: gl.constexpr = x.shape[1]
    S: gl.constexpr = x.shape[2]
    for k in gl.static_range(LOG_S):
        x, _ = gl.split(gl.reshape(x, [W, G, S >> (k + 1), 2]))
    return gl.convert_layout(gl.reshape(x, [W, G]), gl.SliceLayout(2, layout), assert_trivial=True)


@gluon.jit
def _gather(x, index, layout: gl.constexpr):
    """x[w, index[w, j]] for a (W, 32) tile with one value per lane (a shuffle each)."""
    return gl.convert_layout(gl.gather(x, index, 1), layout, assert_trivial=True)


@gluon.jit
def _reverse_adjoint(r, g, carry, L2: gl.constexpr, L3: gl.constexpr, LOG_S: gl.constexpr):
    """x_t = g_t + r_t x_{t+1} over a (W, CHUNK) tile, x after the chunk = carry (W,).

    Returns x (W, CHUNK) in layout L2 and x at the chunk's first step (W,).
    """
    W: gl.constexpr = r.shape[0]
    CHUNK: gl.constexpr = r.shape[1]
    S: gl.constexpr = CHUNK // LANES
    SUM: gl.constexpr = gl.SliceLayout(2, L3)
    r3 = gl.convert_layout(gl.reshape(r, [W, LANES, S]), L3, assert_trivial=True)
    g3 = gl.convert_layout(gl.reshape(g, [W, LANES, S]), L3, assert_trivial=True)
    # 1. inside each segment, from its last step back: x_t = lg_t + lr_t * (x entering from the right)
    lr, lg = gl.associative_scan((_flip_segments(r3, L3, LOG_S), _flip_segments(g3, L3, LOG_S)), 2, _combine)
    lr = _flip_segments(lr, L3, LOG_S)
    lg = _flip_segments(lg, L3, LOG_S)
    # 2. across segments: what enters segment j is segments j+1..G-1 applied to the carry
    SEG: gl.constexpr = gl.BlockedLayout([1, 1], [1, LANES], [W, 1], [1, 0])  # (W, 32), one per lane
    sr = gl.convert_layout(_first_of_segments(lr, L3, LOG_S), SEG, assert_trivial=True)
    sg = gl.convert_layout(_first_of_segments(lg, L3, LOG_S), SEG, assert_trivial=True)
    lane = gl.arange(0, LANES, layout=gl.SliceLayout(0, SEG))
    rev = gl.zeros([W, LANES], gl.int32, SEG) + (LANES - 1 - lane)[None, :]
    ir, ig = gl.associative_scan((_gather(sr, rev, SEG), _gather(sg, rev, SEG)), 1, _combine)
    # ir/ig at j: the last j+1 segments composed; segment j needs the last G-1-j, i.e. index G-2-j
    shifted = gl.maximum(rev - 1, 0)
    last = (lane == LANES - 1)[None, :]
    er = gl.where(last, 1.0, _gather(ir, shifted, SEG))
    eg = gl.where(last, 0.0, _gather(ig, shifted, SEG))
    x_in = eg + er * gl.convert_layout(carry, gl.SliceLayout(1, SEG))[:, None]
    first = gl.sum(gl.where(lane[None, :] == 0, sg + sr * x_in, 0.0), axis=1)
    x_in = gl.convert_layout(x_in, SUM, assert_trivial=True)
    # 3. every step adds its segment's incoming adjoint
    x3 = lg + lr * x_in[:, :, None]
    x = gl.convert_layout(gl.reshape(x3, [W, CHUNK]), L2, assert_trivial=True)
    return x, first


@gluon.jit
def _column(m, cols, n):
    """m[:, n] of a (W, N) tile (a reduction across lanes)."""
    return gl.sum(gl.where(cols[None, :] == n, m, 0.0), axis=1)


@gluon.jit
def _bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dout_ptr, dhT_ptr,
                du_ptr, ddt_ptr, dz_ptr, dA_part_ptr, dB_ptr, dC_ptr, dD_part_ptr, dh0_ptr,
                T, D, n_ckpts,
                N: gl.constexpr, S: gl.constexpr, LOG_S: gl.constexpr, W: gl.constexpr,
                CKPT_STRIDE: gl.constexpr, SOFTPLUS: gl.constexpr):
    # one program: W channels (one per warp) x the whole sequence, in chunks of 32 lanes x S steps
    CHUNK: gl.constexpr = LANES * S
    L2: gl.constexpr = gl.BlockedLayout([1, S], [1, LANES], [W, 1], [1, 0])  # (W, CHUNK)
    L3: gl.constexpr = gl.BlockedLayout([1, 1, S], [1, LANES, 1], [W, 1, 1], [2, 1, 0])  # its (W, 32, S) view
    LS: gl.constexpr = gl.BlockedLayout([1, 1], [1, LANES], [W, 1], [1, 0])  # (W, N), states across lanes
    ROW: gl.constexpr = gl.SliceLayout(1, L2)
    STEP: gl.constexpr = gl.SliceLayout(0, L2)
    ROW_S: gl.constexpr = gl.SliceLayout(1, LS)

    b = gl.program_id(0)
    offs_d = gl.program_id(1) * W + gl.arange(0, W, layout=ROW)
    md = offs_d < D
    offs_ds = gl.program_id(1) * W + gl.arange(0, W, layout=ROW_S)
    mds = offs_ds < D
    cols = gl.arange(0, N, layout=gl.SliceLayout(0, LS))
    state_off = (b * D + offs_ds)[:, None] * N + cols[None, :]
    if dhT_ptr is not None:  # dL/dh after the last step
        carry = gl.load(dhT_ptr + state_off, mask=mds[:, None], other=0.0).to(gl.float32)
    else:
        carry = gl.zeros([W, N], gl.float32, LS)
    dA_acc = gl.zeros([W, N], gl.float32, LS)
    dD_acc = gl.zeros([W], gl.float32, ROW)
    bias = gl.zeros([W], gl.float32, ROW)
    if bias_ptr is not None:
        bias = gl.load(bias_ptr + offs_d, mask=md, other=0.0).to(gl.float32)
    Dv = gl.zeros([W], gl.float32, ROW)
    if D_ptr is not None:
        Dv = gl.load(D_ptr + offs_d, mask=md, other=0.0).to(gl.float32)

    n_chunks = gl.cdiv(T, CHUNK)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        offs_t = c * CHUNK + gl.arange(0, CHUNK, layout=STEP)
        mt = offs_t < T
        m2 = md[:, None] & mt[None, :]
        m2_next = md[:, None] & (offs_t + 1 < T)[None, :]
        row = (b * D + offs_d)[:, None] * T + offs_t[None, :]
        u = gl.load(u_ptr + row, mask=m2, other=0.0).to(gl.float32)
        raw = gl.load(dt_ptr + row, mask=m2, other=0.0).to(gl.float32) + bias[:, None]
        raw_next = gl.load(dt_ptr + row + 1, mask=m2_next, other=0.0).to(gl.float32) + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(raw)
            dt_next = _softplus(raw_next)
        else:
            dt = raw
            dt_next = raw_next
        dt = gl.where(m2, dt, 0.0)  # decay 1 and no input outside the sequence
        dt_next = gl.where(m2_next, dt_next, 0.0)
        dtu = dt * u
        dout = gl.load(dout_ptr + row, mask=m2, other=0.0).to(gl.float32)
        dy = dout
        if z_ptr is not None:
            z = gl.load(z_ptr + row, mask=m2, other=0.0).to(gl.float32)
            sig = _sigmoid(z)
            dy = dout * z * sig
        y = u * Dv[:, None]  # the pre-gate output, rebuilt from the recomputed states for dz
        dD_acc += gl.sum(dy * u, axis=1)
        ddt = gl.zeros([W, CHUNK], gl.float32, L2)
        du = dy * Dv[:, None]
        h_in = gl.load(ckpt_ptr + ((b * D + offs_ds)[:, None] * n_ckpts + c * CKPT_STRIDE) * N + cols[None, :],
                       mask=mds[:, None], other=0.0)
        carry_next = gl.zeros([W, N], gl.float32, LS)
        # state n's A, B, C are loaded one iteration ahead, so their latency overlaps state n-1's work
        A_n = gl.load(A_ptr + offs_d * N, mask=md, other=0.0)
        B_n = gl.load(B_ptr + b * N * T + offs_t, mask=mt, other=0.0).to(gl.float32)
        C_n = gl.load(C_ptr + b * N * T + offs_t, mask=mt, other=0.0).to(gl.float32)
        for n in range(N):  # a loop, not unrolled: unrolled, all states' tiles would be live at once
            more = n + 1 < N
            A_next = gl.load(A_ptr + offs_d * N + n + 1, mask=md & more, other=0.0)
            B_next = gl.load(B_ptr + (b * N + n + 1) * T + offs_t, mask=mt & more, other=0.0).to(gl.float32)
            C_next = gl.load(C_ptr + (b * N + n + 1) * T + offs_t, mask=mt & more, other=0.0).to(gl.float32)
            a = gl.exp(dt * A_n[:, None])
            x = dtu * B_n[None, :]
            a_cum, x_cum = gl.associative_scan((a, x), 1, _combine)
            h0_n = gl.convert_layout(_column(h_in, cols, n), ROW)
            hs = x_cum + a_cum * h0_n[:, None]
            y += hs * C_n[None, :]
            # adjoint x_t = C_t dy_t + a_{t+1} x_{t+1}, from the chunk end
            xs, x_first = _reverse_adjoint(gl.exp(dt_next * A_n[:, None]), dy * C_n[None, :],
                                           _column(carry, cols, n), L2, L3, LOG_S)
            x_first = gl.convert_layout(x_first, ROW_S)
            carry_next = gl.where(cols[None, :] == n, x_first[:, None], carry_next)
            dlog = xs * (hs - x)  # dL/d(dt_t A) = x_t a_t h_{t-1}
            xB = xs * B_n[None, :]
            ddt += dlog * A_n[:, None] + xB * u
            du += xB * dt
            dA_n = gl.convert_layout(gl.sum(dlog * dt, axis=1), ROW_S)
            dA_acc = gl.where(cols[None, :] == n, dA_acc + dA_n[:, None], dA_acc)
            # dB, dC sum over all channels: this program's share is added in L2 (as mamba-ssm does)
            gl.atomic_add(dB_ptr + (b * N + n) * T + offs_t, gl.sum(xs * dtu, axis=0), mask=mt, sem="relaxed")
            gl.atomic_add(dC_ptr + (b * N + n) * T + offs_t, gl.sum(hs * dy, axis=0), mask=mt, sem="relaxed")
            A_n, B_n, C_n = A_next, B_next, C_next
        carry = carry_next
        if z_ptr is not None:
            gl.store(dz_ptr + row, (dout * y * sig * (1.0 + z * (1.0 - sig))).to(dz_ptr.dtype.element_ty),
                     mask=m2)
        if SOFTPLUS:
            ddt = ddt * _sigmoid(raw)
        gl.store(ddt_ptr + row, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
        gl.store(du_ptr + row, du.to(du_ptr.dtype.element_ty), mask=m2)
    # the initial state's gradient: the adjoint before step 0 times step 0's decay
    A_tile = gl.load(A_ptr + offs_ds[:, None] * N + cols[None, :], mask=mds[:, None], other=0.0)
    raw0 = gl.load(dt_ptr + (b * D + offs_ds) * T, mask=mds, other=0.0).to(gl.float32)
    if bias_ptr is not None:
        raw0 += gl.load(bias_ptr + offs_ds, mask=mds, other=0.0).to(gl.float32)
    dt0 = _softplus(raw0) if SOFTPLUS else raw0
    gl.store(dh0_ptr + state_off, gl.exp(dt0[:, None] * A_tile) * carry, mask=mds[:, None])
    gl.store(dA_part_ptr + state_off, dA_acc, mask=mds[:, None])
    gl.store(dD_part_ptr + b * D + offs_d, dD_acc, mask=md)
