"""Mamba-1 selective scan on the GPU, forward and backward, written in Gluon (Triton with the
register layout given by hand).

One program owns one channel of one sequence (one warp; W channels with W warps) and walks the
time axis in chunks of 32 lanes x S steps: each thread holds S consecutive steps. Inside a chunk
it loops over the N states (a loop, not unrolled, so one state's tiles are live at a time; the
next state's A, B, C are loaded one iteration ahead). For each state the recurrence
h_t = a_t h_{t-1} + b_t (a = exp(dt A_n), b = dt u B_n) is an ``associative_scan`` over the chunk,
y accumulates C_n h in registers, and the chunk's last state is carried into the next chunk.
The forward stores the state at every chunk start (B, D, n_chunks, N).

The backward walks its chunks from the end, recomputes the states from those checkpoints and
solves the adjoint recurrence

    x_t = C_t dy_t + a_{t+1} x_{t+1}        (x_T = grad of the final state, a_T = 1)

backwards in time. Why Gluon: Triton 3.6 lowers ``associative_scan(..., reverse=True)`` by moving
every element across lanes (344 shuffles per state where the forward scan takes 24, even when the
axis lies inside one thread; benchmarks/NOTES.md). With the layout fixed, the reverse scan is
built from pieces that move no data or only one value per lane (``_reverse_adjoint``): each
thread reverses its S steps in registers (splits, joins and permutes only rename registers),
scans them forward and reverses the result; the 32 segment summaries are combined across lanes
with a gather, a forward scan and a gather back shifted by one segment.

dB and dC (sums over channels) are added with atomics; dA and dD partial sums per program are
reduced with torch. Gate and skip are fused: out = (y + D u) * silu(z). Inputs may be fp32, fp16
or bf16; all arithmetic is fp32. Layouts as in reference.py.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

LANES = gl.constexpr(32)  # one segment of a chunk per lane


@gluon.constexpr_function
def _tile_layout(S, W):
    """(W channels, CHUNK steps): one channel per warp, S consecutive steps per thread."""
    return gl.BlockedLayout([1, S], [1, 32], [W, 1], [1, 0])


@gluon.constexpr_function
def _segments_layout(S, W):
    """The same registers seen as (W, 32 segments, S steps)."""
    return gl.BlockedLayout([1, 1, S], [1, 32, 1], [W, 1, 1], [2, 1, 0])


@gluon.constexpr_function
def _lanes_layout(W):
    """(W channels, one value per lane): the N states of a channel, or the 32 segments' summaries."""
    return gl.BlockedLayout([1, 1], [1, 32], [W, 1], [1, 0])


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
def _dt(dt_ptr, row, mask, bias, SOFTPLUS: gl.constexpr):
    """(dt after bias and softplus, 0 where masked: decay 1 and no input; dt before softplus)."""
    raw = gl.load(dt_ptr + row, mask=mask, other=0.0).to(gl.float32) + bias[:, None]
    dt = _softplus(raw) if SOFTPLUS else raw
    return gl.where(mask, dt, 0.0), raw


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
def _segment_end(x, layout: gl.constexpr, LOG_S: gl.constexpr, LAST: gl.constexpr):
    """x (W, G, S) in `layout` -> x[:, :, -1 if LAST else 0] (W, G), by keeping one half of the
    register axis LOG_S times (no data moves)."""
    W: gl.constexpr = x.shape[0]
    G: gl.constexpr = x.shape[1]
    S: gl.constexpr = x.shape[2]
    for k in gl.static_range(LOG_S):
        lo, hi = gl.split(gl.reshape(x, [W, G, S >> (k + 1), 2]))
        x = hi if LAST else lo
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
    SEG: gl.constexpr = _lanes_layout(W)  # (W, 32)
    sr = gl.convert_layout(_segment_end(lr, L3, LOG_S, False), SEG, assert_trivial=True)
    sg = gl.convert_layout(_segment_end(lg, L3, LOG_S, False), SEG, assert_trivial=True)
    lane = gl.arange(0, LANES, layout=gl.SliceLayout(0, SEG))
    rev = gl.zeros([W, LANES], gl.int32, SEG) + (LANES - 1 - lane)[None, :]
    ir, ig = gl.associative_scan((_gather(sr, rev, SEG), _gather(sg, rev, SEG)), 1, _combine)
    # ir/ig at j: the last j+1 segments composed; segment j needs the last G-1-j, i.e. index G-2-j
    shifted = gl.maximum(rev - 1, 0)
    last = (lane == LANES - 1)[None, :]
    er = gl.where(last, 1.0, _gather(ir, shifted, SEG))
    eg = gl.where(last, 0.0, _gather(ig, shifted, SEG))
    x_in = eg + er * gl.convert_layout(carry, gl.SliceLayout(1, SEG))[:, None]
    first = _lane(sg + sr * x_in, 0)
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
def _state_inputs(A_ptr, B_ptr, C_ptr, b, n, offs_d, md, offs_t, mt, T, N: gl.constexpr):
    """A[:, n] (W,), B[b, n] and C[b, n] over the chunk (CHUNK,); zeros once n reaches N."""
    more = n < N
    A_n = gl.load(A_ptr + offs_d * N + n, mask=md & more, other=0.0)
    B_n = gl.load(B_ptr + (b * N + n) * T + offs_t, mask=mt & more, other=0.0).to(gl.float32)
    C_n = gl.load(C_ptr + (b * N + n) * T + offs_t, mask=mt & more, other=0.0).to(gl.float32)
    return A_n, B_n, C_n


@gluon.jit
def _segment_ends(hs, L3: gl.constexpr, LOG_S: gl.constexpr):
    """The last step of each lane's segment of a (W, CHUNK) tile: (W, 32), one value per lane."""
    W: gl.constexpr = hs.shape[0]
    S: gl.constexpr = hs.shape[1] // LANES
    SEG: gl.constexpr = _lanes_layout(W)
    ends = _segment_end(gl.convert_layout(gl.reshape(hs, [W, LANES, S]), L3, assert_trivial=True), L3, LOG_S, True)
    return gl.convert_layout(ends, SEG, assert_trivial=True)


@gluon.jit
def _lane(x, j: gl.constexpr):
    """x[:, j] of a (W, 32) tile with one value per lane (a reduction across lanes)."""
    lane = gl.arange(0, LANES, layout=gl.SliceLayout(0, x.type.layout))
    return gl.sum(gl.where(lane[None, :] == j, x, 0.0), axis=1)


@gluon.jit
def _channels(D, W: gl.constexpr, N: gl.constexpr, L2: gl.constexpr, LS: gl.constexpr):
    """This program's channels as rows of the tile layout and of the states layout (with masks), the
    state index and the offsets of its (W, N) states in a (B, D, N) tensor."""
    offs_d = gl.program_id(1) * W + gl.arange(0, W, layout=gl.SliceLayout(1, L2))
    offs_ds = gl.program_id(1) * W + gl.arange(0, W, layout=gl.SliceLayout(1, LS))
    cols = gl.arange(0, N, layout=gl.SliceLayout(0, LS))
    state_off = (gl.program_id(0) * D + offs_ds)[:, None] * N + cols[None, :]
    return offs_d, offs_d < D, offs_ds, offs_ds < D, cols, state_off


@gluon.jit
def _pick(x, j, K: gl.constexpr, layout: gl.constexpr):
    """A (W, K) tile in `layout` whose every element is x[:, j]; x is (W, M) with one value per
    lane, in `layout` too (a shuffle: no reduction across lanes)."""
    W: gl.constexpr = x.shape[0]
    index = gl.zeros([W, K], gl.int32, layout) + j
    return gl.convert_layout(gl.gather(x, index, 1), layout, assert_trivial=True)


@gluon.jit
def _add_carried(x_cum, a_cum, h, L2: gl.constexpr, L3: gl.constexpr):
    """x_cum + a_cum * h over a (W, CHUNK) tile; h is (W, 32) with the same value in every lane."""
    W: gl.constexpr = x_cum.shape[0]
    CHUNK: gl.constexpr = x_cum.shape[1]
    S: gl.constexpr = CHUNK // LANES
    x3 = gl.convert_layout(gl.reshape(x_cum, [W, LANES, S]), L3, assert_trivial=True)
    a3 = gl.convert_layout(gl.reshape(a_cum, [W, LANES, S]), L3, assert_trivial=True)
    h3 = gl.convert_layout(h, gl.SliceLayout(2, L3), assert_trivial=True)[:, :, None]
    return gl.convert_layout(gl.reshape(x3 + a3 * h3, [W, CHUNK]), L2, assert_trivial=True)


@gluon.jit
def _fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                out_ptr, hT_ptr, ckpt_ptr, T, D, n_chunks,
                N: gl.constexpr, S: gl.constexpr, LOG_S: gl.constexpr, W: gl.constexpr, SOFTPLUS: gl.constexpr):
    # one program: W channels (one per warp) x the whole sequence, in chunks of 32 lanes x S steps;
    # the state at every chunk start is stored for the backward
    CHUNK: gl.constexpr = LANES * S
    L2: gl.constexpr = _tile_layout(S, W)  # (W, CHUNK)
    L3: gl.constexpr = _segments_layout(S, W)  # its (W, 32, S) view
    LS: gl.constexpr = _lanes_layout(W)  # (W, N)
    ROW: gl.constexpr = gl.SliceLayout(1, L2)
    STEP: gl.constexpr = gl.SliceLayout(0, L2)
    b = gl.program_id(0)
    offs_d, md, offs_ds, mds, cols, state_off = _channels(D, W, N, L2, LS)
    if h0_ptr is not None:
        h = gl.load(h0_ptr + state_off, mask=mds[:, None], other=0.0).to(gl.float32)
    else:
        h = gl.zeros([W, N], gl.float32, LS)
    bias = gl.zeros([W], gl.float32, ROW)
    if bias_ptr is not None:
        bias = gl.load(bias_ptr + offs_d, mask=md, other=0.0).to(gl.float32)
    for c in range(n_chunks):
        gl.store(ckpt_ptr + ((b * D + offs_ds)[:, None] * n_chunks + c) * N + cols[None, :], h, mask=mds[:, None])
        offs_t = c * CHUNK + gl.arange(0, CHUNK, layout=STEP)
        mt = offs_t < T
        m2 = md[:, None] & mt[None, :]
        row = (b * D + offs_d)[:, None] * T + offs_t[None, :]
        u = gl.load(u_ptr + row, mask=m2, other=0.0).to(gl.float32)
        dt, _ = _dt(dt_ptr, row, m2, bias, SOFTPLUS)
        dtu = dt * u
        y = gl.zeros([W, CHUNK], gl.float32, L2)
        h_next = gl.zeros([W, N], gl.float32, LS)
        A_n, B_n, C_n = _state_inputs(A_ptr, B_ptr, C_ptr, b, 0, offs_d, md, offs_t, mt, T, N)
        for n in range(N):
            A_next, B_next, C_next = _state_inputs(A_ptr, B_ptr, C_ptr, b, n + 1, offs_d, md, offs_t, mt, T, N)
            a_cum, x_cum = gl.associative_scan((gl.exp(dt * A_n[:, None]), dtu * B_n[None, :]), 1, _combine)
            # the carried state and the chunk's last one move between lanes by shuffles, not reductions
            hs = _add_carried(x_cum, a_cum, _pick(h, n, LANES, LS), L2, L3)
            y += hs * C_n[None, :]
            h_next = gl.where(cols[None, :] == n, _pick(_segment_ends(hs, L3, LOG_S), LANES - 1, N, LS), h_next)
            A_n, B_n, C_n = A_next, B_next, C_next
        h = h_next
        if D_ptr is not None:
            y += u * gl.load(D_ptr + offs_d, mask=md, other=0.0).to(gl.float32)[:, None]
        if z_ptr is not None:
            z = gl.load(z_ptr + row, mask=m2, other=0.0).to(gl.float32)
            y = y * z * _sigmoid(z)
        gl.store(out_ptr + row, y.to(out_ptr.dtype.element_ty), mask=m2)
    gl.store(hT_ptr + state_off, h, mask=mds[:, None])


@gluon.jit
def _bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dout_ptr, dhT_ptr,
                du_ptr, ddt_ptr, dz_ptr, dA_part_ptr, dB_ptr, dC_ptr, dD_part_ptr, dh0_ptr,
                T, D, n_ckpts,
                N: gl.constexpr, S: gl.constexpr, LOG_S: gl.constexpr, W: gl.constexpr, SOFTPLUS: gl.constexpr):
    # one program: W channels (one per warp) x the whole sequence, in the forward's chunks walked
    # from the end; the forward stored the state at each chunk start
    CHUNK: gl.constexpr = LANES * S
    L2: gl.constexpr = _tile_layout(S, W)  # (W, CHUNK)
    L3: gl.constexpr = _segments_layout(S, W)  # its (W, 32, S) view
    LS: gl.constexpr = _lanes_layout(W)  # (W, N)
    ROW: gl.constexpr = gl.SliceLayout(1, L2)
    STEP: gl.constexpr = gl.SliceLayout(0, L2)
    ROW_S: gl.constexpr = gl.SliceLayout(1, LS)
    b = gl.program_id(0)
    offs_d, md, offs_ds, mds, cols, state_off = _channels(D, W, N, L2, LS)
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
        dt, raw = _dt(dt_ptr, row, m2, bias, SOFTPLUS)
        dt_next, _ = _dt(dt_ptr, row + 1, m2_next, bias, SOFTPLUS)
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
        h_in = gl.load(ckpt_ptr + ((b * D + offs_ds)[:, None] * n_ckpts + c) * N + cols[None, :],
                       mask=mds[:, None], other=0.0)
        carry_next = gl.zeros([W, N], gl.float32, LS)
        # state n's A, B, C are loaded one iteration ahead, so their latency overlaps state n-1's work
        A_n, B_n, C_n = _state_inputs(A_ptr, B_ptr, C_ptr, b, 0, offs_d, md, offs_t, mt, T, N)
        for n in range(N):  # a loop, not unrolled: unrolled, all states' tiles would be live at once
            A_next, B_next, C_next = _state_inputs(A_ptr, B_ptr, C_ptr, b, n + 1, offs_d, md, offs_t, mt, T, N)
            a = gl.exp(dt * A_n[:, None])
            x = dtu * B_n[None, :]
            a_cum, x_cum = gl.associative_scan((a, x), 1, _combine)
            # the forward moves states between lanes with _pick (a gather); here that measured slower
            # (1.54 -> 1.96 ms, benchmarks/NOTES.md), so the backward keeps the reductions
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


# Steps per thread (a chunk is 32x that, the same in both directions) and warps (= channels per
# program) of the forward and backward kernels; measured in benchmarks/NOTES.md.
CONFIG = {"steps_per_thread": 4, "fwd_warps": 1, "bwd_warps": 1}


def _steps_per_thread() -> tuple[int, int]:
    """CONFIG's steps per thread and its log2 (the in-register flips halve it that many times)."""
    steps = CONFIG["steps_per_thread"]
    if steps < 1 or steps & (steps - 1):
        raise ValueError(f"scan CONFIG: steps_per_thread must be a power of two, got {steps}")
    return steps, steps.bit_length() - 1


# The kernels are registered as torch custom ops (forward, backward, and the autograd formula that
# joins them), so a compiled block traces through the scan instead of breaking its graph there:
# with torch.compiler.disable each Mamba block ran as 7 compiled pieces, and the host-side cost of
# entering them left the H200 idle ~20 ms of a 124 ms training step (benchmarks/NOTES.md). Traced,
# the .contiguous() copies below also become inductor kernels. Optional outputs of the backward are
# empty tensors, a new one each (custom ops return no None, and no storage twice).

_FWD_SCHEMA = ("(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
               "Tensor? h0, bool softplus, int steps) -> (Tensor, Tensor, Tensor)")
_BWD_SCHEMA = ("(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
               "Tensor ckpt, Tensor dout, Tensor? dhT, bool softplus, int steps) "
               "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


def _fwd_shapes(u, A, steps):
    batch, dim, T = u.shape
    N = A.shape[1]
    n_chunks = triton.cdiv(T, LANES * steps)
    return (torch.empty_like(u), u.new_empty(batch, dim, N, dtype=torch.float32),
            u.new_empty(batch, dim, n_chunks, N, dtype=torch.float32))


@torch.library.custom_op("ablate::selective_scan_fwd", mutates_args=(), device_types="cuda", schema=_FWD_SCHEMA)
def _scan_fwd(u, delta, A, B, C, D, z, delta_bias, h0, softplus, steps):
    """u, delta, B, C, z contiguous; A fp32 (D, N) -> (out, final state, state at each chunk start)."""
    out, hT, ckpt = _fwd_shapes(u, A, steps)
    batch, dim, T = u.shape
    warps = CONFIG["fwd_warps"]
    _fwd_kernel[(batch, triton.cdiv(dim, warps))](
        u, delta, A, B, C, D, z, delta_bias, h0, out, hT, ckpt, T, dim, ckpt.shape[2],
        N=A.shape[1], S=steps, LOG_S=steps.bit_length() - 1, W=warps, SOFTPLUS=softplus, num_warps=warps)
    return out, hT, ckpt


@_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, h0, softplus, steps):
    return _fwd_shapes(u, A, steps)


def _bwd_shapes(u, delta, A, B, C, D, z, delta_bias):
    batch, dim, _ = u.shape

    def absent():  # a new one for each output: custom ops may not return one storage twice
        return u.new_empty(0)

    return (torch.empty_like(u), torch.empty_like(delta), A.new_empty(A.shape, dtype=torch.float32),
            torch.empty_like(B), torch.empty_like(C), torch.empty_like(D) if D is not None else absent(),
            torch.empty_like(z) if z is not None else absent(),
            torch.empty_like(delta_bias) if delta_bias is not None else absent(),
            u.new_empty(batch, dim, A.shape[1], dtype=torch.float32))


@torch.library.custom_op("ablate::selective_scan_bwd", mutates_args=(), device_types="cuda", schema=_BWD_SCHEMA)
def _scan_bwd(u, delta, A, B, C, D, z, delta_bias, ckpt, dout, dhT, softplus, steps):
    """-> du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 (empty where that input is absent; dh0 always)."""
    batch, dim, T = u.shape
    N = A.shape[1]
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA_part = u.new_empty(batch, dim, N, dtype=torch.float32)
    dB32 = u.new_zeros(batch, N, T, dtype=torch.float32)
    dC32 = u.new_zeros(batch, N, T, dtype=torch.float32)
    dD_part = u.new_empty(batch, dim, dtype=torch.float32)
    dh0 = u.new_empty(batch, dim, N, dtype=torch.float32)
    warps = CONFIG["bwd_warps"]  # the forward's chunks: ckpt holds the state at each one's start
    _bwd_kernel[(batch, triton.cdiv(dim, warps))](
        u, delta, A, B, C, D, z, delta_bias, ckpt, dout, dhT,
        du, ddelta, dz, dA_part, dB32, dC32, dD_part, dh0, T, dim, ckpt.shape[2],
        N=N, S=steps, LOG_S=steps.bit_length() - 1, W=warps, SOFTPLUS=softplus, num_warps=warps)
    dD = dD_part.sum(0).to(D.dtype) if D is not None else u.new_empty(0)
    dbias = ddelta.float().sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else u.new_empty(0)
    return (du, ddelta, dA_part.sum(0), dB32.to(B.dtype), dC32.to(C.dtype), dD,
            dz if dz is not None else u.new_empty(0), dbias, dh0)


@_scan_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, ckpt, dout, dhT, softplus, steps):
    return _bwd_shapes(u, delta, A, B, C, D, z, delta_bias)


def _scan_setup(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, h0, softplus, steps = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.softplus, ctx.steps, ctx.has_h0 = softplus, steps, h0 is not None
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)


def _scan_backward(ctx, dout, dhT, _dckpt):
    u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
    dout = torch.zeros_like(u) if dout is None else dout.contiguous()
    dhT = None if dhT is None else dhT.contiguous()
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _scan_bwd(u, delta, A, B, C, D, z, delta_bias, ckpt, dout, dhT,
                                                           ctx.softplus, ctx.steps)
    return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None,
            dbias if delta_bias is not None else None, dh0 if ctx.has_h0 else None, None, None)


_scan_fwd.register_autograd(_scan_backward, setup_context=_scan_setup)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
):
    N = A.shape[1]
    if N & (N - 1):
        raise ValueError(f"Triton selective scan: the state size (d_state, A.shape[1] = {N}) must be a power of two; "
                         "use backend 'torch' for other sizes")
    steps, _ = _steps_per_thread()
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    out, hT, _ = _scan_fwd(u.contiguous(), delta.contiguous(), A.float().contiguous(), B.contiguous(),
                           C.contiguous(), D, z.contiguous() if z is not None else None, delta_bias, h0,
                           delta_softplus, steps)
    return (out, hT) if return_final_state else out
