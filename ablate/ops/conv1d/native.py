"""Causal depthwise conv1d + SiLU for the CPU as compiled C++ loops (impl 'native').

The contract and layout of ``shifts.py``: x used as (B, T, C) (the transposed view the SSM paths
pass, rows dense over channels), output a (B, C, T) view of a (B, T, C) tensor, with a conv state
it defers to ``reference.causal_conv1d``. Forward and backward are each one pass over (B, T) with
the K taps and the SiLU inside a loop vectorised over channels:

    y[:, t] = bias + sum_k w[:, k] x[:, t - (K-1-k)]        out = SiLU(y)
    g = dout * silu'(y);  dx[:, t] = sum_k w[:, k] g[:, t + K-1-k];  dw[:, k] = sum g[t + K-1-k] x[t]

Built by ``ops.native_build``; ``ops.backends.resolve`` picks it on the CPU where it builds.
Tested against ``reference.causal_conv1d`` forward and backward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ablate.ops import native_build
from ablate.ops.conv1d import reference

SOURCE = r"""
#include <cstdint>
#include <cstring>
#include <vector>

extern "C" {
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
double exp(double);
}
static inline float ex(float x) { return expf(x); }
static inline double ex(double x) { return exp(x); }
typedef int64_t I;

// x: (b, T, C) rows dense, strides (sb, st); taps (K, C) dense; bias (C,) or null; y (pre-SiLU) and
// out: (b, T, C) dense (out may be null when silu is 0: y is the output).
template <typename S>
static void fwd(I b, I T, I C, I K, const S* x, I sb, I st, const S* w, const S* bias, int silu, S* y, S* out) {
  for (I s = 0; s < b; ++s)
    for (I t = 0; t < T; ++t) {
      S* yt = y + (s * T + t) * C;
      const S* wl = w + (K - 1) * C;
      const S* xt = x + s * sb + t * st;
#pragma omp simd
      for (I c = 0; c < C; ++c) yt[c] = (bias ? bias[c] : S(0)) + wl[c] * xt[c];
      for (I k = 0; k < K - 1; ++k) {
        const I sh = K - 1 - k;
        if (t < sh) continue;
        const S* xs = x + s * sb + (t - sh) * st;
        const S* wk = w + k * C;
#pragma omp simd
        for (I c = 0; c < C; ++c) yt[c] += wk[c] * xs[c];
      }
      if (silu) {
        S* o = out + (s * T + t) * C;
#pragma omp simd
        for (I c = 0; c < C; ++c) o[c] = yt[c] / (S(1) + ex(-yt[c]));
      }
    }
}

// gout (b, T, C) dense; dx (b, T, C) dense; dw (K, C), dbias (C,) accumulated (zeroed by the caller).
template <typename S>
static void bwd(I b, I T, I C, I K, const S* x, I sb, I st, const S* w, const S* y, int silu, const S* gout,
                S* dx, S* dw, S* dbias) {
  std::vector<S> gb(T * C);
  for (I s = 0; s < b; ++s) {
    S* g = gb.data();
    const S* go = gout + s * T * C;
    const S* ys = y + s * T * C;
    if (silu) {
#pragma omp simd
      for (I i = 0; i < T * C; ++i) {
        const S sg = S(1) / (S(1) + ex(-ys[i]));
        g[i] = go[i] * sg * (S(1) + ys[i] * (S(1) - sg));
      }
    } else {
      std::memcpy(g, go, sizeof(S) * T * C);
    }
    for (I t = 0; t < T; ++t) {
      const S* xt = x + s * sb + t * st;
      S* dxt = dx + (s * T + t) * C;
      const S* gt = g + t * C;
      const S* wl = w + (K - 1) * C;
      S* dwl = dw + (K - 1) * C;
#pragma omp simd
      for (I c = 0; c < C; ++c) {
        dxt[c] = wl[c] * gt[c];
        dwl[c] += gt[c] * xt[c];
      }
      if (dbias) {
#pragma omp simd
        for (I c = 0; c < C; ++c) dbias[c] += gt[c];
      }
      for (I k = 0; k < K - 1; ++k) {
        const I sh = K - 1 - k;
        if (t + sh >= T) continue;
        const S* gs = g + (t + sh) * C;
        const S* wk = w + k * C;
        S* dwk = dw + k * C;
#pragma omp simd
        for (I c = 0; c < C; ++c) {
          dxt[c] += wk[c] * gs[c];
          dwk[c] += gs[c] * xt[c];
        }
      }
    }
  }
}

extern "C" {
void conv_fwd_f32(I b, I T, I C, I K, const float* x, I sb, I st, const float* w, const float* bias, int silu,
                  float* y, float* out) { fwd<float>(b, T, C, K, x, sb, st, w, bias, silu, y, out); }
void conv_fwd_f64(I b, I T, I C, I K, const double* x, I sb, I st, const double* w, const double* bias, int silu,
                  double* y, double* out) { fwd<double>(b, T, C, K, x, sb, st, w, bias, silu, y, out); }
void conv_bwd_f32(I b, I T, I C, I K, const float* x, I sb, I st, const float* w, const float* y, int silu,
                  const float* go, float* dx, float* dw, float* db) {
  bwd<float>(b, T, C, K, x, sb, st, w, y, silu, go, dx, dw, db); }
void conv_bwd_f64(I b, I T, I C, I K, const double* x, I sb, I st, const double* w, const double* y, int silu,
                  const double* go, double* dx, double* dw, double* db) {
  bwd<double>(b, T, C, K, x, sb, st, w, y, silu, go, dx, dw, db); }
}
"""

SYMBOLS = ("conv_fwd_f32", "conv_fwd_f64", "conv_bwd_f32", "conv_bwd_f64")


def load():
    return native_build.load("conv1d", SOURCE, SYMBOLS)


def available() -> bool:
    return native_build.available(load)


def _suffix(t: Tensor) -> str:
    return "f64" if t.dtype == torch.float64 else "f32"


class _NativeConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        """x (B, T, C) dense over C; weight (C, K); bias (C,) or None -> (B, T, C)."""
        b, T, C = x.shape
        K = weight.shape[1]
        taps = weight.t().contiguous()  # (K, C)
        bias = None if bias is None else bias.contiguous()
        y = x.new_empty(b, T, C)
        out = x.new_empty(b, T, C) if silu else None
        ptr = native_build.ptr
        getattr(load(), f"conv_fwd_{_suffix(x)}")(*native_build.args(
            [b, T, C, K, ptr(x), x.stride(0), x.stride(1), ptr(taps), ptr(bias)]),
            int(silu), ptr(y), ptr(out))
        ctx.silu, ctx.has_bias = silu, bias is not None
        ctx.save_for_backward(x, taps, y)
        return out if silu else y

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        x, taps, y = ctx.saved_tensors
        b, T, C = x.shape
        K = taps.shape[0]
        g = gout.contiguous()
        dx = x.new_empty(b, T, C)
        dw = x.new_zeros(K, C)
        dbias = x.new_zeros(C) if ctx.has_bias else None
        ptr = native_build.ptr
        getattr(load(), f"conv_bwd_{_suffix(x)}")(*native_build.args(
            [b, T, C, K, ptr(x), x.stride(0), x.stride(1), ptr(taps), ptr(y)]),
            int(ctx.silu), ptr(g), ptr(dx), ptr(dw), ptr(dbias))
        return dx, dw.t(), dbias, None


@torch.compiler.disable  # a ctypes call: compiled blocks call it as it is
def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True,
                  initial_state: Tensor | None = None, return_final_state: bool = False):
    """Same contract as ``reference.causal_conv1d``; x (B, C, T), float32/float64 on the CPU."""
    if initial_state is not None or return_final_state:
        return reference.causal_conv1d(x, weight, bias, silu, initial_state, return_final_state)
    acc = torch.promote_types(x.dtype, torch.float32)  # bf16/fp16 run in float32, cast back
    if acc not in (torch.float32, torch.float64) or x.device.type != "cpu":
        raise ValueError(f"the native conv runs float32/float64 on the CPU; got {x.dtype} on {x.device}")
    xt = x.transpose(1, 2).to(acc)
    if xt.stride(-1) != 1:
        xt = xt.contiguous()
    y = _NativeConv.apply(xt, weight.to(acc), None if bias is None else bias.to(acc), silu)
    return y.to(x.dtype).transpose(1, 2)
