"""Causal depthwise conv1d with fused SiLU in Triton, forward and backward.

Same contract as reference.causal_conv1d: x (B, C, T) in any strides (the mixers pass a
transposed view of their token-major projection, channels contiguous, and the kernel reads it as
it is), weight (C, K), bias (C,), optional carried state (B, C, K-1) of the inputs before x.

    pre[c, t] = bias[c] + sum_k weight[c, k] * x[c, t - (K-1) + k]    (x before 0: the state)
    y = silu(pre)

One program owns a (BLOCK_C channels x BLOCK_T steps) tile; the K shifted input tiles come from
L1/L2. The output and the gradients take x's strides (a channels-contiguous x gives channels-
contiguous y, dx), so every tile is read and written in one memory order. The backward
recomputes pre at the K shifted positions each output step needs, so no intermediate is stored:

    dpre[t] = dy[t] * silu'(pre[t]),   dx[t] = sum_k weight[k] dpre[t + (K-1) - k]

and adds its share of dweight and dbias with atomics, once per program. The state's gradient
(K-1 steps) is finished in torch from the first steps' dpre.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_C, BLOCK_T, WARPS = 64, 64, 4


@triton.jit
def _inputs(x_ptr, s_ptr, b, offs_c, mc, offs_t, T, sxb, sxc, sxt, C, K: tl.constexpr):
    """x at steps offs_t (BLOCK_C, BLOCK_T) for steps in -(K-1)..T-1, from the state below 0."""
    inside = mc[:, None] & (offs_t >= 0)[None, :] & (offs_t < T)[None, :]
    val = tl.load(x_ptr + b * sxb + offs_c[:, None] * sxc + offs_t[None, :] * sxt, mask=inside, other=0.0)
    val = val.to(tl.float32)
    if s_ptr is not None:
        before = mc[:, None] & (offs_t < 0)[None, :] & (offs_t >= 1 - K)[None, :]
        state = tl.load(s_ptr + (b * C + offs_c[:, None]) * (K - 1) + (offs_t + K - 1)[None, :], mask=before,
                        other=0.0)
        val += state.to(tl.float32)
    return val


@triton.jit
def _pre(x_ptr, s_ptr, w_ptr, bias_ptr, b, offs_c, mc, offs_t, T, sxb, sxc, sxt, C, K: tl.constexpr):
    """The conv before the activation at steps offs_t."""
    acc = tl.zeros((offs_c.shape[0], offs_t.shape[0]), dtype=tl.float32)
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + offs_c, mask=mc, other=0.0).to(tl.float32)[:, None]
    for k in tl.static_range(K):
        w = tl.load(w_ptr + offs_c * K + k, mask=mc, other=0.0).to(tl.float32)
        acc += w[:, None] * _inputs(x_ptr, s_ptr, b, offs_c, mc, offs_t - (K - 1) + k, T, sxb, sxc, sxt, C, K)
    return acc


@triton.jit
def _fwd_kernel(x_ptr, s_ptr, w_ptr, bias_ptr, y_ptr, T, C, sxb, sxc, sxt,
                K: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    mc = offs_c < C
    pre = _pre(x_ptr, s_ptr, w_ptr, bias_ptr, b, offs_c, mc, offs_t, T, sxb, sxc, sxt, C, K)
    y = pre * tl.sigmoid(pre) if SILU else pre
    out = b * sxb + offs_c[:, None] * sxc + offs_t[None, :] * sxt
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=mc[:, None] & (offs_t < T)[None, :])


@triton.jit
def _bwd_kernel(x_ptr, s_ptr, w_ptr, bias_ptr, dy_ptr, dx_ptr, dw_ptr, dbias_ptr, T, C, sxb, sxc, sxt, n_tblocks,
                K: tl.constexpr, KP: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr,
                BLOCK_T: tl.constexpr):
    # a program walks every n_splits-th time block of its channels and adds its dweight and
    # dbias sums once at the end (one add per block would make thousands collide on each weight)
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = offs_c < C
    taps = tl.arange(0, KP)
    dw_acc = tl.zeros((BLOCK_C, KP), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for tb in range(tl.program_id(2), n_tblocks, tl.num_programs(2)):
        offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
        dx = tl.zeros((BLOCK_C, BLOCK_T), dtype=tl.float32)
        for k in tl.static_range(K):
            at = offs_t + (K - 1 - k)  # the output step that tap k of input step t feeds
            valid = mc[:, None] & (at < T)[None, :]
            dy = tl.load(dy_ptr + b * sxb + offs_c[:, None] * sxc + at[None, :] * sxt, mask=valid, other=0.0)
            dy = dy.to(tl.float32)
            if SILU:
                pre = _pre(x_ptr, s_ptr, w_ptr, bias_ptr, b, offs_c, mc, at, T, sxb, sxc, sxt, C, K)
                sig = tl.sigmoid(pre)
                dy = dy * sig * (1.0 + pre * (1.0 - sig))
            w = tl.load(w_ptr + offs_c * K + k, mask=mc, other=0.0).to(tl.float32)
            dx += w[:, None] * dy
            if k == K - 1:  # at == offs_t: this block's own dpre gives dweight and dbias
                for j in tl.static_range(K):
                    src = _inputs(x_ptr, s_ptr, b, offs_c, mc, offs_t - (K - 1) + j, T, sxb, sxc, sxt, C, K)
                    dw_acc += tl.where(taps[None, :] == j, tl.sum(dy * src, axis=1)[:, None], 0.0)
                db_acc += tl.sum(dy, axis=1)
        out = b * sxb + offs_c[:, None] * sxc + offs_t[None, :] * sxt
        tl.store(dx_ptr + out, dx.to(dx_ptr.dtype.element_ty), mask=mc[:, None] & (offs_t < T)[None, :])
    tl.atomic_add(dw_ptr + offs_c[:, None] * K + taps[None, :], dw_acc, mask=mc[:, None] & (taps < K)[None, :],
                  sem="relaxed")
    if dbias_ptr is not None:
        tl.atomic_add(dbias_ptr + offs_c, db_acc, mask=mc, sem="relaxed")


def _grid(x: Tensor, splits: int = 0):
    """(batch, channel blocks, time blocks), or time split in `splits` strided parts."""
    B, C, T = x.shape
    return (B, triton.cdiv(C, BLOCK_C), splits or triton.cdiv(T, BLOCK_T))


def _layout(x: Tensor) -> Tensor:
    """x as the kernels read it: time- or channels-contiguous, else copied to time-contiguous."""
    return x if x.is_contiguous() or x.transpose(1, 2).is_contiguous() else x.contiguous()


# Registered as torch custom ops, so a compiled block traces through the conv instead of breaking
# its graph there (see ops/scan/triton.py). A carried state's gradient (chunked prefill with
# gradients, never a training step) is computed in torch by _state_grad, with autograd.grad: eager
# only, not under a compiled backward.
@torch.library.custom_op("ablate::causal_conv1d_fwd", mutates_args=(), device_types="cuda",
                         schema="(Tensor x, Tensor w, Tensor? bias, Tensor? state, bool silu) -> Tensor")
def _conv_fwd(x, w, bias, state, silu):
    B, C, T = x.shape
    y = torch.empty_like(x)  # in x's memory order
    _fwd_kernel[_grid(x)](x, state, w, bias, y, T, C, *x.stride(), K=w.shape[1], SILU=silu, BLOCK_C=BLOCK_C,
                          BLOCK_T=BLOCK_T, num_warps=WARPS)
    return y


@_conv_fwd.register_fake
def _(x, w, bias, state, silu):
    return torch.empty_like(x)


@torch.library.custom_op("ablate::causal_conv1d_bwd", mutates_args=(), device_types="cuda",
                         schema="(Tensor x, Tensor w, Tensor? bias, Tensor? state, Tensor dy, bool silu) "
                                "-> (Tensor, Tensor, Tensor)")
def _conv_bwd(x, w, bias, state, dy, silu):
    """-> dx (x's memory order), dw, dbias (empty without a bias)."""
    B, C, T = x.shape
    K = w.shape[1]
    if dy.stride() != x.stride():  # the kernel reads dy in x's memory order
        dy = torch.empty_like(x, dtype=dy.dtype).copy_(dy)
    dx = torch.empty_like(x)
    dw = torch.zeros(C, K, dtype=torch.float32, device=x.device)
    dbias = torch.zeros(C, dtype=torch.float32, device=x.device) if bias is not None else None
    n_tblocks = triton.cdiv(T, BLOCK_T)
    # enough programs to fill the GPU (~1000), the fewest per weight for the final adds
    splits = max(1, min(n_tblocks, 1024 // (B * triton.cdiv(C, BLOCK_C))))
    _bwd_kernel[_grid(x, splits)](x, state, w, bias, dy, dx, dw, dbias, T, C, *x.stride(), n_tblocks, K=K,
                                  KP=triton.next_power_of_2(K), SILU=silu, BLOCK_C=BLOCK_C,
                                  BLOCK_T=BLOCK_T, num_warps=WARPS)
    return dx, dw.to(w.dtype), dbias.to(bias.dtype) if bias is not None else x.new_empty(0)


@_conv_bwd.register_fake
def _(x, w, bias, state, dy, silu):
    return torch.empty_like(x), torch.empty_like(w), torch.empty_like(bias) if bias is not None else x.new_empty(0)


def _conv_setup(ctx, inputs, output):
    x, w, bias, state, silu = inputs
    ctx.save_for_backward(x, w, bias, state)
    ctx.silu = silu


def _conv_backward(ctx, dy):
    x, w, bias, state = ctx.saved_tensors
    dx, dw, dbias = _conv_bwd(x, w, bias, state, dy, ctx.silu)
    dstate = None
    if state is not None and ctx.needs_input_grad[3]:
        dstate = _state_grad(x, w, bias, state, dy, ctx.silu)
    return dx, dw, dbias if bias is not None else None, dstate, None


_conv_fwd.register_autograd(_conv_backward, setup_context=_conv_setup)


def _state_grad(x, w, bias, s, dy, silu):
    """d(state) from the first K-1 output steps (the only ones the state reaches), in torch."""
    from ablate.ops.conv1d.reference import causal_conv1d

    K = w.shape[1]
    head = min(K - 1, x.shape[-1])
    with torch.enable_grad():
        s_ = s.detach().float().requires_grad_()
        y = causal_conv1d(x[..., :head].float(), w.float(), None if bias is None else bias.float(), silu,
                          initial_state=s_)
        (ds,) = torch.autograd.grad(y, s_, dy[..., :head].float())
    return ds.to(s.dtype)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True,
                  initial_state: Tensor | None = None, return_final_state: bool = False):
    state = initial_state.contiguous() if initial_state is not None else None
    y = _conv_fwd(_layout(x), weight.contiguous(), bias, state, silu)
    if not return_final_state:
        return y
    K, T = weight.shape[1], x.shape[-1]
    if T >= K - 1:
        return y, x[..., T - (K - 1):]
    before = initial_state if initial_state is not None else x.new_zeros(x.shape[0], x.shape[1], K - 1)
    return y, torch.cat([before.to(x.dtype), x], dim=-1)[..., -(K - 1):]
