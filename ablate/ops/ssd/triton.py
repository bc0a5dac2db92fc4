"""Mamba-2 SSD forward as three Triton kernels over chunks: the prefill path (no backward).

Same contract as ``reference.ssd`` (x (B, T, H, P), dt (B, T, H) positive, A (H,), B, C (B, T, G, N),
D (H,), initial / final state (B, H, P, N) in fp32). The sequence is cut into chunks of ``CHUNK``
steps, as ``chunked.ssd`` does, and the work split the way the SSD paper derives it:

    1. chunk state   S_c = sum_l exp(cum_end - cum_l) dt_l x_l B_l^T       (P x N per chunk, head)
    2. state passing h_c = exp(cum_end of chunk c-1) h_{c-1} + S_{c-1}    (sequential over chunks;
                     S_c is overwritten by the state entering chunk c, the final state comes out)
    3. chunk output  y_l = sum_{s<=l} (C_l . B_s) exp(cum_l - cum_s) dt_s x_s + exp(cum_l) C_l h_c + D x_l

cum is the running sum of dt A within the chunk (non-increasing, so every exp above is <= 1).
Kernels 1 and 3 are matrix products per (sequence, head, chunk, P-tile); they recompute cum from dt
rather than store it. Products run on the tensor cores in the inputs' dtype when it is 16-bit and
in full fp32 ("ieee") for fp32 inputs; everything else accumulates in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

CHUNK = 64


@triton.jit
def _chunk_cum(dt_ptr, sdb, sdt, sdh, b, head, A, t0, T, BLOCK_L: tl.constexpr):
    """dt (fp32, 0 past T) and cum = cumsum(dt A) over the chunk starting at t0."""
    offs_l = t0 + tl.arange(0, BLOCK_L)
    dt = tl.load(dt_ptr + b * sdb + offs_l * sdt + head * sdh, mask=offs_l < T, other=0.0).to(tl.float32)
    return dt, tl.cumsum(dt * A, axis=0)


@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr, dtype: tl.constexpr):
    if DOT_FP32:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a.to(dtype), b.to(dtype))


@triton.jit
def _chunk_tile(H, heads_per_group, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's (sequence, head, B/C group, chunk, chunk start) and its step, P and N offsets."""
    b, head = tl.program_id(0) // H, tl.program_id(0) % H
    t0 = tl.program_id(1) * BLOCK_L
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    return b, head, head // heads_per_group, tl.program_id(1), t0, t0 + tl.arange(0, BLOCK_L), offs_p, \
        tl.arange(0, BLOCK_N)


@triton.jit
def _chunk_state_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, S_ptr, T, H, P, N, heads_per_group,
                        sxb, sxt, sxh, sxp, sdb, sdt, sdh, sBb, sBt, sBg, sBn, sSb, sSc, sSh, sSp,
                        DOT_FP32: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    b, head, group, c, t0, offs_l, offs_p, offs_n = _chunk_tile(H, heads_per_group, BLOCK_L, BLOCK_P, BLOCK_N)
    ml, mp, mn = offs_l < T, offs_p < P, offs_n < N
    A = tl.load(A_ptr + head).to(tl.float32)
    dt, cum = _chunk_cum(dt_ptr, sdb, sdt, sdh, b, head, A, t0, T, BLOCK_L)
    to_end = tl.exp(tl.sum(dt * A, axis=0) - cum) * dt  # (L,): 0 past T
    x = tl.load(x_ptr + b * sxb + offs_l[:, None] * sxt + head * sxh + offs_p[None, :] * sxp,
                mask=ml[:, None] & mp[None, :], other=0.0)
    Bm = tl.load(B_ptr + b * sBb + offs_l[:, None] * sBt + group * sBg + offs_n[None, :] * sBn,
                 mask=ml[:, None] & mn[None, :], other=0.0)
    xw = x.to(tl.float32) * to_end[:, None]
    S = _dot(tl.trans(xw), Bm.to(tl.float32), DOT_FP32, x_ptr.dtype.element_ty)  # (P, N)
    tl.store(S_ptr + b * sSb + c * sSc + head * sSh + offs_p[:, None] * sSp + offs_n[None, :], S,
             mask=mp[:, None] & mn[None, :])


@triton.jit
def _state_pass_kernel(S_ptr, dt_ptr, A_ptr, h0_ptr, hT_ptr, T, H, PN, n_chunks, sSb, sSc, sSh, sdb, sdt, sdh,
                       BLOCK_L: tl.constexpr, BLOCK: tl.constexpr):
    b, head = tl.program_id(0) // H, tl.program_id(0) % H
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # flat (p, n) of the state
    m = offs < PN
    A = tl.load(A_ptr + head).to(tl.float32)
    if h0_ptr is not None:
        h = tl.load(h0_ptr + (b * H + head) * PN + offs, mask=m, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK], dtype=tl.float32)
    c = 0
    while c < n_chunks:  # (a while loop: Triton's interpreter cannot range over a runtime int here)
        dt, _ = _chunk_cum(dt_ptr, sdb, sdt, sdh, b, head, A, c * BLOCK_L, T, BLOCK_L)
        at = S_ptr + b * sSb + c * sSc + head * sSh + offs
        S = tl.load(at, mask=m, other=0.0)
        tl.store(at, h, mask=m)  # the state entering chunk c (each element read, then written, by one thread)
        h = tl.exp(tl.sum(dt * A, axis=0)) * h + S
        c += 1
    tl.store(hT_ptr + (b * H + head) * PN + offs, h, mask=m)


@triton.jit
def _chunk_output_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, S_ptr, y_ptr, T, H, P, N, heads_per_group,
                         sxb, sxt, sxh, sxp, sdb, sdt, sdh, sBb, sBt, sBg, sBn, sCb, sCt, sCg, sCn,
                         sSb, sSc, sSh, sSp, syb, syt, syh,
                         DOT_FP32: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    b, head, group, c, t0, offs_l, offs_p, offs_n = _chunk_tile(H, heads_per_group, BLOCK_L, BLOCK_P, BLOCK_N)
    rows = offs_l - t0
    ml, mp, mn = offs_l < T, offs_p < P, offs_n < N
    dtype = x_ptr.dtype.element_ty
    A = tl.load(A_ptr + head).to(tl.float32)
    dt, cum = _chunk_cum(dt_ptr, sdb, sdt, sdh, b, head, A, t0, T, BLOCK_L)
    Cm = tl.load(C_ptr + b * sCb + offs_l[:, None] * sCt + group * sCg + offs_n[None, :] * sCn,
                 mask=ml[:, None] & mn[None, :], other=0.0).to(tl.float32)
    Bm = tl.load(B_ptr + b * sBb + offs_l[:, None] * sBt + group * sBg + offs_n[None, :] * sBn,
                 mask=ml[:, None] & mn[None, :], other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * sxb + offs_l[:, None] * sxt + head * sxh + offs_p[None, :] * sxp,
                mask=ml[:, None] & mp[None, :], other=0.0).to(tl.float32)
    # within the chunk: scores[l, s] = (C_l . B_s) exp(cum_l - cum_s) dt_s for s <= l
    causal = rows[:, None] >= rows[None, :]
    decay = tl.exp(tl.where(causal, cum[:, None] - cum[None, :], -float("inf")))
    scores = _dot(Cm, tl.trans(Bm), DOT_FP32, dtype) * decay * dt[None, :]
    y = _dot(scores, x, DOT_FP32, dtype)
    # from the state entering the chunk: exp(cum_l) C_l h^T
    h = tl.load(S_ptr + b * sSb + c * sSc + head * sSh + offs_p[:, None] * sSp + offs_n[None, :],
                mask=mp[:, None] & mn[None, :], other=0.0)
    y += tl.exp(cum)[:, None] * _dot(Cm, tl.trans(h), DOT_FP32, dtype)
    if D_ptr is not None:
        y += x * tl.load(D_ptr + head).to(tl.float32)
    tl.store(y_ptr + b * syb + offs_l[:, None] * syt + head * syh + offs_p[None, :], y.to(y_ptr.dtype.element_ty),
             mask=ml[:, None] & mp[None, :])


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))  # tl.dot needs every side >= 16


@torch.compiler.disable  # raw launches into new_empty outputs: a compiled block calls it as it is
def ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
        initial_state: Tensor | None = None, return_final_state: bool = False):
    """ops.ssd.ssd forward on CUDA (impl 'triton'); no backward: training takes 'chunked'."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, dt, A, B, C, D, initial_state)):
        raise RuntimeError("ssd impl 'triton' is forward-only (prefill, evaluation); a gradient needs impl 'chunked'")
    batch, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    n_chunks = triton.cdiv(T, CHUNK)
    block_p, block_n = min(_block(P), 64), _block(N)
    states = x.new_empty(batch, n_chunks, H, P, N, dtype=torch.float32)
    final = x.new_empty(batch, H, P, N, dtype=torch.float32)
    y = x.new_empty(batch, T, H, P)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    A, D = A.contiguous(), D.contiguous() if D is not None else None
    # fp32 products for fp32 inputs, and on the CPU (only Triton's interpreter runs there: its numpy
    # products have no bf16 and return garbage for it)
    dot_fp32 = x.dtype == torch.float32 or not x.is_cuda
    x_s, dt_s, B_s, C_s = x.stride(), dt.stride(), B.stride(), C.stride()
    S_s = states.stride()[:4]
    grid = (batch * H, n_chunks, triton.cdiv(P, block_p))
    _chunk_state_kernel[grid](x, dt, A, B, states, T, H, P, N, H // G, *x_s, *dt_s, *B_s, *S_s,
                              DOT_FP32=dot_fp32, BLOCK_L=CHUNK, BLOCK_P=block_p, BLOCK_N=block_n)
    block = min(1024, triton.next_power_of_2(P * N))
    _state_pass_kernel[(batch * H, triton.cdiv(P * N, block))](
        states, dt, A, h0, final, T, H, P * N, n_chunks, *S_s[:3], *dt_s, BLOCK_L=CHUNK, BLOCK=block)
    _chunk_output_kernel[grid](x, dt, A, B, C, D, states, y, T, H, P, N, H // G, *x_s, *dt_s, *B_s, *C_s, *S_s,
                               *y.stride()[:3], DOT_FP32=dot_fp32, BLOCK_L=CHUNK, BLOCK_P=block_p, BLOCK_N=block_n)
    return (y, final) if return_final_state else y
