"""Mamba-2's gated RMSNorm for the CPU as compiled C++ (impl 'native'), one pass per row forward and
backward where autograd through ``reference.py`` takes about a dozen elementwise passes:

    v = y SiLU(z);  r = 1 / sqrt(mean(v^2) + eps);  out = v r w
    dv = r w g - v (r^3 sum(w g v) / W);  dw = sum over rows of g v r;  dy = dv SiLU(z);  dz = dv y SiLU'(z)

r^3 sum(w g v) is formed as one product, so where v^2 overflows (r = 0) and the sum is infinite the
gradient is NaN, as autograd's 0 * inf gives; where the sum is finite both give zeros. NaN and Inf
propagate (no -ffast-math). Built by ``ops.native_build``; ``ops.backends.resolve`` picks it on the CPU
where it builds. float32 and float64; other dtypes take the reference. Tested against ``reference.py``.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ablate.ops import native_build
from ablate.ops.gated_norm import reference

SOURCE = r"""
#include <cmath>
#include <cstdint>
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

// y: (rows, W) dense; z: rows of W dense, row r at z + (r / T) * zsb + (r % T) * zst; w: (W,).
// out: (rows, W) dense; rs: (rows,) the 1 / rms of each row, for the backward.
template <typename S>
static void fwd(I rows, I T, I W, const S* y, const S* z, I zsb, I zst, const S* w, S eps, S* out, S* rs) {
  std::vector<S> v(W);
  for (I r = 0; r < rows; ++r) {
    const S* yr = y + r * W;
    const S* zr = z + (r / T) * zsb + (r % T) * zst;
    S ss = 0;
#pragma omp simd reduction(+ : ss)
    for (I c = 0; c < W; ++c) {
      v[c] = yr[c] * (zr[c] / (S(1) + ex(-zr[c])));
      ss += v[c] * v[c];
    }
    const S rr = S(1) / std::sqrt(ss / S(W) + eps);
    rs[r] = rr;
    S* o = out + r * W;
#pragma omp simd
    for (I c = 0; c < W; ++c) o[c] = (v[c] * rr) * w[c];
  }
}

// g: (rows, W) dense. dy, dz: (rows, W) dense; dw: (W,) accumulated (zeroed by the caller).
template <typename S>
static void bwd(I rows, I T, I W, const S* y, const S* z, I zsb, I zst, const S* w, const S* rs, const S* g,
                S* dy, S* dz, S* dw) {
  std::vector<S> v(W), sg(W);
  for (I r = 0; r < rows; ++r) {
    const S* yr = y + r * W;
    const S* zr = z + (r / T) * zsb + (r % T) * zst;
    const S* gr = g + r * W;
    const S rr = rs[r];
    S sum = 0;
#pragma omp simd reduction(+ : sum)
    for (I c = 0; c < W; ++c) {
      sg[c] = S(1) / (S(1) + ex(-zr[c]));
      v[c] = yr[c] * (zr[c] * sg[c]);
      sum += w[c] * gr[c] * v[c];
    }
    const S k = (rr * rr * rr) * sum / S(W);
    S* dyr = dy + r * W;
    S* dzr = dz + r * W;
#pragma omp simd
    for (I c = 0; c < W; ++c) {
      const S dv = rr * (w[c] * gr[c]) - v[c] * k;
      dw[c] += gr[c] * (v[c] * rr);
      dyr[c] = dv * (zr[c] * sg[c]);
      dzr[c] = dv * yr[c] * sg[c] * (S(1) + zr[c] * (S(1) - sg[c]));
    }
  }
}

extern "C" {
void norm_fwd_f32(I rows, I T, I W, const float* y, const float* z, I zsb, I zst, const float* w, float eps,
                  float* out, float* rs) { fwd<float>(rows, T, W, y, z, zsb, zst, w, eps, out, rs); }
void norm_fwd_f64(I rows, I T, I W, const double* y, const double* z, I zsb, I zst, const double* w, double eps,
                  double* out, double* rs) { fwd<double>(rows, T, W, y, z, zsb, zst, w, eps, out, rs); }
void norm_bwd_f32(I rows, I T, I W, const float* y, const float* z, I zsb, I zst, const float* w, const float* rs,
                  const float* g, float* dy, float* dz, float* dw) {
  bwd<float>(rows, T, W, y, z, zsb, zst, w, rs, g, dy, dz, dw); }
void norm_bwd_f64(I rows, I T, I W, const double* y, const double* z, I zsb, I zst, const double* w,
                  const double* rs, const double* g, double* dy, double* dz, double* dw) {
  bwd<double>(rows, T, W, y, z, zsb, zst, w, rs, g, dy, dz, dw); }
}
"""

SYMBOLS = ("norm_fwd_f32", "norm_fwd_f64", "norm_bwd_f32", "norm_bwd_f64")


def load():
    return native_build.load("gated_norm", SOURCE, SYMBOLS)


def available() -> bool:
    return native_build.available(load)


def _suffix(t: Tensor) -> str:
    return "f64" if t.dtype == torch.float64 else "f32"


class _NativeGatedNorm(torch.autograd.Function):
    """y: (b, T, W) dense; z: (b, T, W) with dense rows (a slice of the token-major projection, as it
    is); weight: (W,) -> (b, T, W)."""

    @staticmethod
    def forward(ctx, y, z, weight, eps):
        b, T, W = y.shape
        out = y.new_empty(b, T, W)
        rs = y.new_empty(b, T)
        ptr = native_build.ptr
        eps_c = (ctypes.c_double if y.dtype == torch.float64 else ctypes.c_float)(eps)
        getattr(load(), f"norm_fwd_{_suffix(y)}")(*native_build.args(
            [b * T, T, W, ptr(y), ptr(z), z.stride(0), z.stride(1), ptr(weight)]), eps_c, ptr(out), ptr(rs))
        ctx.save_for_backward(y, z, weight, rs)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        y, z, weight, rs = ctx.saved_tensors
        b, T, W = y.shape
        g = g.contiguous()
        dy, dz = y.new_empty(b, T, W), y.new_empty(b, T, W)
        dw = y.new_zeros(W)
        ptr = native_build.ptr
        getattr(load(), f"norm_bwd_{_suffix(y)}")(*native_build.args(
            [b * T, T, W, ptr(y), ptr(z), z.stride(0), z.stride(1), ptr(weight), ptr(rs), ptr(g)]),
            ptr(dy), ptr(dz), ptr(dw))
        return dy, dz, dw, None


@torch.compiler.disable  # a ctypes call: compiled blocks call it as it is
def gated_rms_norm(y: Tensor, z: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Same contract as ``reference.gated_rms_norm`` for the mixer's (b, T, W) y and z, all in one dtype,
    float32 or float64, on the CPU; anything else takes the reference."""
    if (y.dim() != 3 or z.shape != y.shape or len({y.dtype, z.dtype, weight.dtype}) > 1
            or y.dtype not in (torch.float32, torch.float64) or y.device.type != "cpu"):
        return reference.gated_rms_norm(y, z, weight, eps)
    z = z if z.stride(-1) == 1 else z.contiguous()
    return _NativeGatedNorm.apply(y.contiguous(), z, weight.contiguous(), float(eps))
