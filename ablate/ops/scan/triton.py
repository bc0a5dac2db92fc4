"""Mamba-1 selective scan in Triton, forward and backward.

One program owns BLOCK_D channels of one sequence and walks the time axis in chunks of CHUNK
steps. Inside a chunk it loops over the N states; for each, the recurrence
h_t = a_t h_{t-1} + b_t (a = exp(dt A_n), b = dt u B_n) is solved for all (channel, step) at once
with ``tl.associative_scan`` over the step axis, y accumulates C_n h in registers, and the chunk's
last state is carried into the next chunk (as in mamba-ssm, the state index is a loop, so no
reduction over N crosses threads). The forward stores the state at every chunk start
(B, D, T/CHUNK, N); the backward walks its own, longer chunks (a whole number of the forward's)
in reverse, recomputes the chunk's states from the checkpoint at its start, and solves the
adjoint recurrence

    x_t = C_t dy_t + a_{t+1} x_{t+1}        (x_{T} = grad of the final state, a_T = 1)

with a reverse scan over the same chunk. dB and dC (sums over channels) are added with atomics;
dA and dD partial sums per program are reduced with torch.

The forward unrolls its loop over states; the backward must not: unrolled, the compiler hoists
all N states' loads and tiles at once (255 registers and spills, 2x slower; benchmarks/NOTES.md).

Gate and skip are fused: out = (y + D u) * silu(z). Inputs may be fp32, fp16 or bf16; all
arithmetic is fp32. Layouts as in reference.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ablate.ops.scan import gluon_bwd


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _dt_tile(dt_ptr, bias_ptr, b, offs_d, offs_t, T, D, SOFTPLUS: tl.constexpr):
    """dt after bias and softplus at (offs_d, offs_t); 0 outside the sequence (decay 1, no input)."""
    md = offs_d < D
    m2 = md[:, None] & (offs_t < T)[None, :]
    row = (b * D + offs_d)[:, None] * T + offs_t[None, :]
    raw = tl.load(dt_ptr + row, mask=m2, other=0.0).to(tl.float32)
    if bias_ptr is not None:
        raw += tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[:, None]
    dt = _softplus(raw) if SOFTPLUS else raw
    return tl.where(m2, dt, 0.0), raw


@triton.jit
def _steps(u_ptr, dt_ptr, bias_ptr, b, offs_d, t0, T, D, CHUNK: tl.constexpr, SOFTPLUS: tl.constexpr):
    """One chunk's step offsets, masks, row offsets, u and dt tiles (BLOCK_D, CHUNK)."""
    offs_t = t0 + tl.arange(0, CHUNK)
    mt = offs_t < T
    m2 = (offs_d < D)[:, None] & mt[None, :]
    row = (b * D + offs_d)[:, None] * T + offs_t[None, :]
    u = tl.load(u_ptr + row, mask=m2, other=0.0).to(tl.float32)
    dt, raw = _dt_tile(dt_ptr, bias_ptr, b, offs_d, offs_t, T, D, SOFTPLUS)
    return offs_t, mt, m2, row, u, dt, raw


@triton.jit
def _column(m, cols, n):
    """m[:, n] of a (BLOCK_D, N) register tile."""
    return tl.sum(tl.where(cols[None, :] == n, m, 0.0), axis=1)


@triton.jit
def _fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                out_ptr, hT_ptr, ckpt_ptr, T, D, n_chunks,
                N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, SOFTPLUS: tl.constexpr):
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cols = tl.arange(0, N)
    md = offs_d < D
    state_off = (b * D + offs_d)[:, None] * N + cols[None, :]
    if h0_ptr is not None:
        h = tl.load(h0_ptr + state_off, mask=md[:, None], other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    is_last = (tl.arange(0, CHUNK) == CHUNK - 1)[None, :]
    for c in range(n_chunks):
        tl.store(ckpt_ptr + ((b * D + offs_d)[:, None] * n_chunks + c) * N + cols[None, :], h, mask=md[:, None])
        offs_t, mt, m2, row, u, dt, raw = _steps(u_ptr, dt_ptr, bias_ptr, b, offs_d, c * CHUNK, T, D,
                                                 CHUNK, SOFTPLUS)
        dtu = dt * u
        y = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        h_next = tl.zeros((BLOCK_D, N), dtype=tl.float32)
        for n in tl.static_range(N):
            A_n = tl.load(A_ptr + offs_d * N + n, mask=md, other=0.0)
            B_n = tl.load(B_ptr + (b * N + n) * T + offs_t, mask=mt, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + (b * N + n) * T + offs_t, mask=mt, other=0.0).to(tl.float32)
            a_cum, x_cum = tl.associative_scan((tl.exp(dt * A_n[:, None]), dtu * B_n[None, :]), 1, _combine)
            hs = x_cum + a_cum * _column(h, cols, n)[:, None]
            y += hs * C_n[None, :]
            h_next = tl.where(cols[None, :] == n, tl.sum(tl.where(is_last, hs, 0.0), axis=1)[:, None], h_next)
        h = h_next
        if D_ptr is not None:
            y += u * tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[:, None]
        if z_ptr is not None:
            z = tl.load(z_ptr + row, mask=m2, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(out_ptr + row, y.to(out_ptr.dtype.element_ty), mask=m2)
    tl.store(hT_ptr + state_off, h, mask=md[:, None])


@triton.jit
def _bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dout_ptr, dhT_ptr,
                du_ptr, ddt_ptr, dz_ptr, dA_part_ptr, dB_ptr, dC_ptr, dD_part_ptr, dh0_ptr,
                T, D, n_ckpts,
                N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, CKPT_STRIDE: tl.constexpr,
                SOFTPLUS: tl.constexpr):
    # the forward's chunks may be shorter: its checkpoint for this kernel's chunk c is at c * CKPT_STRIDE
    b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cols = tl.arange(0, N)
    md = offs_d < D
    state_off = (b * D + offs_d)[:, None] * N + cols[None, :]
    if dhT_ptr is not None:  # dL/dh after the last step
        carry = tl.load(dhT_ptr + state_off, mask=md[:, None], other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    a_first = tl.zeros((BLOCK_D, N), dtype=tl.float32)  # decay of step 0, for the initial-state grad
    is_first = (tl.arange(0, CHUNK) == 0)[None, :]
    Dv = 0.0
    if D_ptr is not None:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[:, None]
    n_chunks = tl.cdiv(T, CHUNK)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        h_in = tl.load(ckpt_ptr + ((b * D + offs_d)[:, None] * n_ckpts + c * CKPT_STRIDE) * N + cols[None, :],
                       mask=md[:, None], other=0.0)
        offs_t, mt, m2, row, u, dt, raw = _steps(u_ptr, dt_ptr, bias_ptr, b, offs_d, c * CHUNK, T, D,
                                                 CHUNK, SOFTPLUS)
        dt_next, _ = _dt_tile(dt_ptr, bias_ptr, b, offs_d, offs_t + 1, T, D, SOFTPLUS)
        dtu = dt * u
        dout = tl.load(dout_ptr + row, mask=m2, other=0.0).to(tl.float32)
        dy = dout
        if z_ptr is not None:
            z = tl.load(z_ptr + row, mask=m2, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            dy = dout * z * sig
        y = u * Dv  # the pre-gate output, rebuilt from the recomputed states for dz
        dD_acc += tl.sum(dy * u, axis=1)
        ddt = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        du = dy * Dv
        carry_next = tl.zeros((BLOCK_D, N), dtype=tl.float32)
        for n in range(N):  # a loop, not unrolled: see the module docstring
            A_n = tl.load(A_ptr + offs_d * N + n, mask=md, other=0.0)
            B_n = tl.load(B_ptr + (b * N + n) * T + offs_t, mask=mt, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + (b * N + n) * T + offs_t, mask=mt, other=0.0).to(tl.float32)
            a = tl.exp(dt * A_n[:, None])
            x = dtu * B_n[None, :]
            a_cum, x_cum = tl.associative_scan((a, x), 1, _combine)
            hs = x_cum + a_cum * _column(h_in, cols, n)[:, None]
            y += hs * C_n[None, :]
            # adjoint x_t = C_t dy_t + a_{t+1} x_{t+1}, scanned from the chunk end
            r_cum, g_cum = tl.associative_scan((tl.exp(dt_next * A_n[:, None]), dy * C_n[None, :]), 1, _combine,
                                               reverse=True)
            xs = g_cum + r_cum * _column(carry, cols, n)[:, None]
            carry_next = tl.where(cols[None, :] == n, tl.sum(tl.where(is_first, xs, 0.0), axis=1)[:, None],
                                  carry_next)
            a_first = tl.where(cols[None, :] == n, tl.sum(tl.where(is_first, a, 0.0), axis=1)[:, None], a_first)
            dlog = xs * (hs - x)  # dL/d(dt_t A) = x_t a_t h_{t-1}
            xB = xs * B_n[None, :]
            ddt += dlog * A_n[:, None] + xB * u
            du += xB * dt
            dA_acc = tl.where(cols[None, :] == n, dA_acc + tl.sum(dlog * dt, axis=1)[:, None], dA_acc)
            # dB, dC sum over all channels: this block's share is added in L2 (as mamba-ssm does)
            tl.atomic_add(dB_ptr + (b * N + n) * T + offs_t, tl.sum(xs * dtu, axis=0), mask=mt, sem="relaxed")
            tl.atomic_add(dC_ptr + (b * N + n) * T + offs_t, tl.sum(hs * dy, axis=0), mask=mt, sem="relaxed")
        carry = carry_next
        if z_ptr is not None:
            tl.store(dz_ptr + row, (dout * y * sig * (1.0 + z * (1.0 - sig))).to(dz_ptr.dtype.element_ty), mask=m2)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        tl.store(ddt_ptr + row, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
        tl.store(du_ptr + row, du.to(du_ptr.dtype.element_ty), mask=m2)
    tl.store(dh0_ptr + state_off, a_first * carry, mask=md[:, None])
    tl.store(dA_part_ptr + state_off, dA_acc, mask=md[:, None])
    tl.store(dD_part_ptr + b * D + offs_d, dD_acc, mask=md)


# Tile shape: channels per program, steps per chunk, warps (fwd, bwd); see benchmarks/NOTES.md.
# bwd "gluon": gluon_bwd.py, chunks of 32 lanes x bwd_steps_per_thread steps, one channel per warp.
CONFIG = {"BLOCK_D": 32, "CHUNK": 32, "fwd_warps": 4, "bwd": "gluon", "bwd_steps_per_thread": 4,
          "bwd_BLOCK_D": 1, "bwd_CHUNK": 128, "bwd_warps": 1}


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, h0):
        BLOCK_D, CHUNK = CONFIG["BLOCK_D"], CONFIG["CHUNK"]
        u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
        z = z.contiguous() if z is not None else None
        batch, dim, T = u.shape
        N = A.shape[1]
        n_chunks = triton.cdiv(T, CHUNK)
        out = torch.empty_like(u)
        hT = u.new_empty(batch, dim, N, dtype=torch.float32)
        ckpt = u.new_empty(batch, dim, n_chunks, N, dtype=torch.float32)
        grid = (batch, triton.cdiv(dim, BLOCK_D))
        A32 = A.float().contiguous()
        _fwd_kernel[grid](u, delta, A32, B, C, D, z, delta_bias, h0, out, hT, ckpt, T, dim, n_chunks,
                          N=N, BLOCK_D=BLOCK_D, CHUNK=CHUNK, SOFTPLUS=softplus, num_warps=CONFIG["fwd_warps"])
        ctx.save_for_backward(u, delta, A32, B, C, D, z, delta_bias, ckpt, h0)
        ctx.softplus, ctx.chunk = softplus, CHUNK
        return out, hT

    @staticmethod
    def backward(ctx, dout, dhT):
        u, delta, A, B, C, D, z, delta_bias, ckpt, h0 = ctx.saved_tensors
        batch, dim, T = u.shape
        N = A.shape[1]
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        dA_part = u.new_empty(batch, dim, N, dtype=torch.float32)
        dB32 = u.new_zeros(batch, N, T, dtype=torch.float32)
        dC32 = u.new_zeros(batch, N, T, dtype=torch.float32)
        dD_part = u.new_empty(batch, dim, dtype=torch.float32)
        dh0 = u.new_empty(batch, dim, N, dtype=torch.float32)
        args = (u, delta, A, B, C, D, z, delta_bias, ckpt, dout.contiguous(),
                dhT.contiguous() if dhT is not None else None,
                du, ddelta, dz, dA_part, dB32, dC32, dD_part, dh0, T, dim, ckpt.shape[2])
        warps = CONFIG["bwd_warps"]
        if CONFIG["bwd"] == "gluon":
            steps = CONFIG["bwd_steps_per_thread"]
            chunk = gluon_bwd.LANES * steps
            gluon_bwd._bwd_kernel[(batch, triton.cdiv(dim, warps))](
                *args, N=N, S=steps, LOG_S=steps.bit_length() - 1, W=warps, CKPT_STRIDE=chunk // ctx.chunk,
                SOFTPLUS=ctx.softplus, num_warps=warps)
        else:
            # the backward's chunk is a whole number of the forward's (a checkpoint at each chunk start)
            BLOCK_D, CHUNK = CONFIG["bwd_BLOCK_D"], CONFIG["bwd_CHUNK"]
            if CHUNK % ctx.chunk:
                raise ValueError(f"scan CONFIG: bwd_CHUNK={CHUNK} must be a multiple of the forward's "
                                 f"CHUNK={ctx.chunk}")
            _bwd_kernel[(batch, triton.cdiv(dim, BLOCK_D))](
                *args, N=N, BLOCK_D=BLOCK_D, CHUNK=CHUNK, CKPT_STRIDE=CHUNK // ctx.chunk, SOFTPLUS=ctx.softplus,
                num_warps=warps)
        dB, dC = dB32.to(B.dtype), dC32.to(C.dtype)
        dA = dA_part.sum(0)
        dD = dD_part.sum(0).to(D.dtype) if D is not None else None
        dbias = None
        if delta_bias is not None:
            dbias = ddelta.float().sum((0, 2)).to(delta_bias.dtype)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, dh0 if h0 is not None else None


@torch.compiler.disable  # a compiled block calls the kernels as they are (dynamo breaks the graph here)
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
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    out, hT = _SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)
    return (out, hT) if return_final_state else out
