"""One decoding step of each SSM op as a single Triton kernel (forward only).

Each replaces a chain of small torch kernels per layer and token (the T=1 reference scan launches
a dozen): the Mamba-1 selective state update, the Mamba-2 (SSD) state update and the causal conv's
state shift. Same contracts as the torch references (ops/scan/__init__.py, ops/ssd/__init__.py,
ops/conv1d/reference.py: conv_step); inputs in any strides (the mixers pass slices of transposed
projections), read as they are. All arithmetic is fp32; the state is updated in place and stored
in its own dtype, the output takes the reference's dtype.

    Mamba-1  dt = softplus(delta + bias); h = exp(dt A) h + dt u B;  y = (C.h + D u) silu(z)
             (selective_step: delta = W_dt rms(dt_low), B = rms(B), C = rms(C), A = -exp(A_log), in-kernel)
    Mamba-2  h = exp(dt A_head) h + dt x B_group;                    y = C.h + D_head x
    conv     window = [state, x]; y = silu(bias + window . w);       state = window[1:]

One program owns a tile of state rows of one sequence (channels for Mamba-1, head_dim rows of one
head for Mamba-2, channels for the conv). The state is read and written in place by the same
program: a barrier separates its loads from its stores, and a tile holds at least as many elements
as the program has threads (``_tile``), so no element is held by two threads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

TILE = 2048  # state elements per program (a target; measured nowhere yet)


@triton.jit
def _softplus(x):
    # log1p(exp(x)) as log(u) * e / (u - 1), u = 1 + e (exact where u rounds to 1); x past 20: x
    e = tl.exp(tl.minimum(x, 20.0))
    u = 1.0 + e
    lp = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _rms(x, n, eps):
    # x * rsqrt(mean(x^2) + eps) over the n real entries (masked ones load as 0)
    return x * tl.rsqrt(tl.sum(x * x, axis=0) / n + eps)


@triton.jit
def _mamba_step_kernel(h_ptr, u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
                       W_ptr, w_dt_ptr, w_B_ptr, w_C_ptr, Dim, N, R, eps,
                       shb, shd, shn, sub, sud, sdb, sdd, szb, szd, sAd, sAn, sBb, sBn, sCb, sCn, sWd, sWr,
                       SOFTPLUS: tl.constexpr, PROJECT: tl.constexpr, NORM: tl.constexpr, A_LOG: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    # PROJECT: dt_ptr holds x_proj's low-rank dt (B, R), projected here by W (D, R); else dt (B, D).
    # NORM: dt (low-rank), B and C are RMS-normed first (weights w_dt, w_B, w_C; Hymba's inner norms).
    # A_LOG: A_ptr holds the parameter A_log, A = -exp(A_log) (one elementwise kernel fewer per layer).
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    md, mn = offs_d < Dim, offs_n < N
    m2 = md[:, None] & mn[None, :]
    u = tl.load(u_ptr + b * sub + offs_d * sud, mask=md, other=0.0).to(tl.float32)
    Bn = tl.load(B_ptr + b * sBb + offs_n * sBn, mask=mn, other=0.0).to(tl.float32)
    Cn = tl.load(C_ptr + b * sCb + offs_n * sCn, mask=mn, other=0.0).to(tl.float32)
    if NORM:
        Bn = _rms(Bn, N, eps) * tl.load(w_B_ptr + offs_n, mask=mn, other=0.0).to(tl.float32)
        Cn = _rms(Cn, N, eps) * tl.load(w_C_ptr + offs_n, mask=mn, other=0.0).to(tl.float32)
    if PROJECT:  # every program of a sequence recomputes the R-vector: R is small (d_model / 16)
        offs_r = tl.arange(0, BLOCK_R)
        mr = offs_r < R
        low = tl.load(dt_ptr + b * sdb + offs_r * sdd, mask=mr, other=0.0).to(tl.float32)
        if NORM:
            low = _rms(low, R, eps) * tl.load(w_dt_ptr + offs_r, mask=mr, other=0.0).to(tl.float32)
        W = tl.load(W_ptr + offs_d[:, None] * sWd + offs_r[None, :] * sWr, mask=md[:, None] & mr[None, :],
                    other=0.0).to(tl.float32)
        dt = tl.sum(W * low[None, :], axis=1)
    else:
        dt = tl.load(dt_ptr + b * sdb + offs_d * sdd, mask=md, other=0.0).to(tl.float32)
    if bias_ptr is not None:
        dt += tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + offs_d[:, None] * sAd + offs_n[None, :] * sAn, mask=m2, other=0.0).to(tl.float32)
    if A_LOG:
        A = -tl.exp(A)
    h_at = h_ptr + b * shb + offs_d[:, None] * shd + offs_n[None, :] * shn
    h = tl.load(h_at, mask=m2, other=0.0).to(tl.float32)
    tl.debug_barrier()  # every load of the state before any store
    h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bn[None, :]  # masked entries stay 0
    tl.store(h_at, h.to(h_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(h * Cn[None, :], axis=1)  # from the fp32 state, as the reference
    if D_ptr is not None:
        y += u * tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if z_ptr is not None:
        z = tl.load(z_ptr + b * szb + offs_d * szd, mask=md, other=0.0).to(tl.float32)
        y = y * (z * tl.sigmoid(z))
    tl.store(y_ptr + b * Dim + offs_d, y.to(y_ptr.dtype.element_ty), mask=md)


@triton.jit
def _ssd_step_kernel(h_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, H, P, N, heads_per_group,
                     shb, shh, shp, shn, sxb, sxh, sxp, sdb, sdh, sBb, sBg, sBn, sCb, sCg, sCn,
                     BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0) // H
    head = tl.program_id(0) % H
    group = head // heads_per_group
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp, mn = offs_p < P, offs_n < N
    m2 = mp[:, None] & mn[None, :]
    dt = tl.load(dt_ptr + b * sdb + head * sdh).to(tl.float32)
    decay = tl.exp(dt * tl.load(A_ptr + head).to(tl.float32))
    x = tl.load(x_ptr + b * sxb + head * sxh + offs_p * sxp, mask=mp, other=0.0).to(tl.float32)
    Bn = tl.load(B_ptr + b * sBb + group * sBg + offs_n * sBn, mask=mn, other=0.0).to(tl.float32)
    Cn = tl.load(C_ptr + b * sCb + group * sCg + offs_n * sCn, mask=mn, other=0.0).to(tl.float32)
    h_at = h_ptr + b * shb + head * shh + offs_p[:, None] * shp + offs_n[None, :] * shn
    h = tl.load(h_at, mask=m2, other=0.0).to(tl.float32)
    tl.debug_barrier()  # every load of the state before any store
    h = decay * h + (dt * x)[:, None] * Bn[None, :]
    tl.store(h_at, h.to(h_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(h * Cn[None, :], axis=1)
    if D_ptr is not None:
        y += x * tl.load(D_ptr + head).to(tl.float32)
    tl.store(y_ptr + (b * H + head) * P + offs_p, y.to(y_ptr.dtype.element_ty), mask=mp)


@triton.jit
def _conv_step_kernel(s_ptr, x_ptr, w_ptr, bias_ptr, y_ptr, Ch, ssb, ssc, ssk, sxb, sxc, swc, swk,
                      K: tl.constexpr, KP: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    taps = tl.arange(0, KP)[None, :]
    mc = offs_c < Ch
    rows = s_ptr + b * ssb + offs_c[:, None] * ssc
    # the window [state, x] (K taps) and the same shifted by one (the new state, K-1 taps)
    x = tl.load(x_ptr + b * sxb + offs_c * sxc, mask=mc, other=0.0)
    x = x.to(s_ptr.dtype.element_ty).to(tl.float32)[:, None]  # the reference joins x to the state in its dtype
    past = tl.load(rows + taps * ssk, mask=mc[:, None] & (taps < K - 1), other=0.0).to(tl.float32)
    ahead = tl.load(rows + (taps + 1) * ssk, mask=mc[:, None] & (taps + 1 < K - 1), other=0.0).to(tl.float32)
    window = tl.where(taps == K - 1, x, past)
    shifted = tl.where(taps == K - 2, x, ahead)
    w = tl.load(w_ptr + offs_c[:, None] * swc + taps * swk, mask=mc[:, None] & (taps < K), other=0.0)
    acc = tl.sum(window * w.to(tl.float32), axis=1)
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + offs_c, mask=mc, other=0.0).to(tl.float32)
    y = acc * tl.sigmoid(acc) if SILU else acc
    tl.debug_barrier()  # every load of the state before any store
    tl.store(rows + taps * ssk, shifted.to(s_ptr.dtype.element_ty), mask=mc[:, None] & (taps < K - 1))
    tl.store(y_ptr + b * Ch + offs_c, y.to(y_ptr.dtype.element_ty), mask=mc)


def _tile(rows: int, width: int) -> tuple[int, int]:
    """(rows per program, warps) for a tile of `rows` x `width` (a power of two) state elements:
    about TILE elements, never fewer than the program's threads (32 per warp)."""
    block = min(triton.next_power_of_2(rows), max(1, TILE // width))
    block = max(block, max(1, 32 // width))
    return block, max(1, min(4, block * width // 256))


def _vec(t: Tensor | None) -> Tensor | None:
    """A per-channel parameter as a unit-stride vector (the kernels index it densely)."""
    return None if t is None else t.contiguous()


@torch.compiler.disable  # a compiled block calls the kernel as it is
def selective_state_update(h: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, z: Tensor | None = None, delta_bias: Tensor | None = None,
                           delta_softplus: bool = True) -> Tensor:
    """ops.scan.selective_state_update: h (B, D, N) in place; u, delta, z (B, D); B, C (B, N) -> y (B, D)."""
    return _mamba_step(h, u, delta, A, B, C, D, z, delta_bias, delta_softplus)


@torch.compiler.disable
def selective_step(h: Tensor, u: Tensor, z: Tensor | None, dbc: Tensor, A_log: Tensor, D: Tensor | None,
                   dt_weight: Tensor, dt_bias: Tensor | None, norm_weights: tuple[Tensor, Tensor, Tensor] | None,
                   eps: float) -> Tensor:
    """ops.scan.selective_step: the dt/B/C norms, the dt projection and A = -exp(A_log) folded into the
    state update."""
    R, N = dt_weight.shape[1], h.shape[2]
    w_dt, w_B, w_C = norm_weights if norm_weights is not None else (None, None, None)
    return _mamba_step(h, u, dbc[:, :R], A_log, dbc[:, R : R + N], dbc[:, R + N :], D, z, dt_bias, True,
                       dt_weight, _vec(w_dt), _vec(w_B), _vec(w_C), eps, a_log=True)


def _mamba_step(h, u, delta, A, B, C, D, z, delta_bias, delta_softplus, W=None, w_dt=None, w_B=None, w_C=None,
                eps=0.0, a_log=False):
    batch, dim, N = h.shape
    y = u.new_empty(batch, dim)  # the reference's output dtype: u's
    width = triton.next_power_of_2(N)
    block, warps = _tile(dim, width)
    zs = z.stride() if z is not None else (0, 0)
    R = W.shape[1] if W is not None else 1
    if block * triton.next_power_of_2(R) > 4 * TILE:  # the dt_proj tile (BLOCK_D x BLOCK_R) in registers too
        block = max(max(1, 32 // width), 4 * TILE // triton.next_power_of_2(R))
        warps = max(1, min(4, block * width // 32))  # still no more threads than state elements
    _mamba_step_kernel[(batch, triton.cdiv(dim, block))](
        h, u, delta, A, B, C, _vec(D), z, _vec(delta_bias), y, W, w_dt, w_B, w_C, dim, N, R, eps,
        *h.stride(), *u.stride(), *delta.stride(), *zs, *A.stride(), *B.stride(), *C.stride(),
        *(W.stride() if W is not None else (0, 0)), SOFTPLUS=delta_softplus, PROJECT=W is not None,
        NORM=w_B is not None, A_LOG=a_log, BLOCK_D=block, BLOCK_N=width, BLOCK_R=triton.next_power_of_2(R),
        num_warps=warps)
    return y


@torch.compiler.disable
def ssd_state_update(h: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                     D: Tensor | None = None) -> Tensor:
    """ops.ssd.ssd_state_update: h (B, H, P, N) in place; x (B, H, P); dt (B, H); B, C (B, G, N) -> y (B, H, P)."""
    batch, H, P, N = h.shape
    y = x.new_empty(batch, H, P)
    width = triton.next_power_of_2(N)
    block, warps = _tile(P, width)
    _ssd_step_kernel[(batch * H, triton.cdiv(P, block))](
        h, x, dt, _vec(A), B, C, _vec(D), y, H, P, N, H // B.shape[1], *h.stride(), *x.stride(), *dt.stride(),
        *B.stride(), *C.stride(), BLOCK_P=block, BLOCK_N=width, num_warps=warps)
    return y


BLOCK_C, CONV_WARPS = 128, 4  # one channel per thread


@torch.compiler.disable
def conv_step(state: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True) -> Tensor:
    """ops.conv1d.conv_step: state (B, C, K-1) shifted in place; x (B, C); weight (C, K) -> y (B, C)."""
    batch, channels = x.shape
    K = weight.shape[1]
    dtype = torch.promote_types(state.dtype, weight.dtype)  # the reference's output dtype
    if bias is not None:
        dtype = torch.promote_types(dtype, bias.dtype)
    y = x.new_empty(batch, channels, dtype=dtype)
    _conv_step_kernel[(batch, triton.cdiv(channels, BLOCK_C))](
        state, x, weight, _vec(bias), y, channels, *state.stride(), *x.stride(), *weight.stride(), K=K,
        KP=triton.next_power_of_2(K), SILU=silu, BLOCK_C=BLOCK_C, num_warps=CONV_WARPS)
    return y
