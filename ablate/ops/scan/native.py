"""Mamba-1 selective scan for the CPU as one compiled C++ loop (impl 'native').

The same math and the same autograd boundary as ``loop.py`` (softplus(dt + bias), the scan,
the D skip and the SiLU(z) gate inside), but each time step is one pass over the channels with
the state held per (state, channel) in a buffer the size of one (N, D) state: no (b, K, N, D)
temporaries, no per-step dispatcher calls. The forward keeps the state entering every block of
``CHUNK`` steps; the backward walks a sample's blocks in reverse, recomputes the block's states
and exp(dt A) from that checkpoint into two (CHUNK, N, D) buffers (in cache), and runs the
adjoint recurrence (see ``loop.py``) with every reduction over channels or samples done in place.

Built once per machine by ``ops.native_build`` (g++ -O3 -march=native, vectorised over channels;
exp through glibc's libmvec, no -ffast-math so NaN/Inf propagate as in torch), loaded with ctypes.
``available()`` says whether it builds here; ``ops.backends.resolve`` picks it on CPU only then
(else 'loop'). float32 and float64.
Tested against ``reference.py`` forward and backward.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ablate.ops import native_build
from ablate.ops.native_build import args as _i64  # ints as int64, pointers as they are
from ablate.ops.native_build import ptr as _ptr

CHUNK = 16  # steps per recomputed block in the backward (2 * CHUNK * N * D values per sample)

SOURCE = r"""
#include <cstdint>
#include <cstring>
#include <vector>

extern "C" {
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
double exp(double);
#pragma omp declare simd notinbranch
float logf(float);
#pragma omp declare simd notinbranch
double log(double);
}
static inline float ex(float x) { return expf(x); }
static inline double ex(double x) { return exp(x); }
static inline float lg(float x) { return logf(x); }
static inline double lg(double x) { return log(x); }
// softplus as torch computes it (x above 20: x; else log1p(exp(x))), log1p(e) as log(1 + e) e / ((1 + e) - 1),
// exact to rounding where 1 + e rounds (Goldberg), e itself where 1 + e == 1
template <typename S>
static inline S softplus(S x) {
  const S e = ex(x), v = S(1) + e;
  const S lp = v == S(1) ? e : lg(v) * (e / (v - S(1)));
  return x > S(20) ? x : lp;
}

typedef int64_t I;

// u, dt, z: (b, T, D) rows dense, strides (sb, st); B, C: (b, T, N) likewise; At: (N, D) dense;
// h0: (b, N, D) dense or null; out: (b, T, D) dense; hlast: (b, N, D); ckpt: (b, nchunks, N, D).
// fwd also writes dt = softplus(delta + bias) (or without either) into dtw (b, T, D) dense: the dt it reads.
template <typename S>
static void fwd(I b, I T, I D, I N, I K, const S* u, I usb, I ust, const S* dt, I dsb, I dst,
                const S* At, const S* Bm, I bsb, I bst, const S* Cm, I csb, I cst, const S* Dv,
                const S* z, I zsb, I zst, const S* h0, S* out, S* hlast, S* ckpt,
                const S* delta, I esb, I est, const S* bias, int sp) {
  const I nch = (T + K - 1) / K;
  std::vector<S> hb(N * D), yb(D), du(D);
  for (I s = 0; s < b; ++s)
    for (I t = 0; t < T; ++t) {
      const S* e = delta + s * esb + t * est;
      S* w = const_cast<S*>(dt) + s * dsb + t * dst;
      if (sp) {
#pragma omp simd
        for (I d = 0; d < D; ++d) w[d] = softplus(e[d] + (bias ? bias[d] : S(0)));
      } else {
#pragma omp simd
        for (I d = 0; d < D; ++d) w[d] = e[d] + (bias ? bias[d] : S(0));
      }
    }
  for (I s = 0; s < b; ++s) {
    S* h = hb.data();
    if (h0) std::memcpy(h, h0 + s * N * D, sizeof(S) * N * D);
    else std::memset(h, 0, sizeof(S) * N * D);
    for (I t = 0; t < T; ++t) {
      if (t % K == 0) std::memcpy(ckpt + (s * nch + t / K) * N * D, h, sizeof(S) * N * D);
      const S* ut = u + s * usb + t * ust;
      const S* dtt = dt + s * dsb + t * dst;
      const S* Bt = Bm + s * bsb + t * bst;
      const S* Ct = Cm + s * csb + t * cst;
      S* y = yb.data();
      S* dtu = du.data();
#pragma omp simd
      for (I d = 0; d < D; ++d) { dtu[d] = dtt[d] * ut[d]; y[d] = Dv ? Dv[d] * ut[d] : S(0); }
      for (I n = 0; n < N; ++n) {
        const S bn = Bt[n], cn = Ct[n];
        S* hn = h + n * D;
        const S* an = At + n * D;
#pragma omp simd
        for (I d = 0; d < D; ++d) {
          const S v = ex(dtt[d] * an[d]) * hn[d] + dtu[d] * bn;
          hn[d] = v;
          y[d] += cn * v;
        }
      }
      S* o = out + (s * T + t) * D;
      if (z) {
        const S* zt = z + s * zsb + t * zst;
#pragma omp simd
        for (I d = 0; d < D; ++d) o[d] = y[d] * (zt[d] / (S(1) + ex(-zt[d])));
      } else {
        std::memcpy(o, y, sizeof(S) * D);
      }
    }
    std::memcpy(hlast + s * N * D, h, sizeof(S) * N * D);
  }
}

// gout: (b, T, D) dense; gh: (b, N, D) or null. Outputs du, ddt (d/d dt after softplus), dz: (b, T, D)
// dense; dB, dC: (b, T, N) dense; dAt: (N, D), dD: (D,) accumulated (zeroed by the caller); dh0: (b, N, D).
template <typename S>
static void bwd(I b, I T, I D, I N, I K, const S* u, I usb, I ust, const S* dt, I dsb, I dst,
                const S* At, const S* Bm, I bsb, I bst, const S* Cm, I csb, I cst, const S* Dv,
                const S* z, I zsb, I zst, const S* ckpt, const S* gout, const S* gh,
                S* du, S* ddt, S* dz, S* dB, S* dC, S* dAt, S* dD, S* dh0,
                const S* delta, I esb, I est, const S* bias, int sp, S* dbias) {
  const I nch = (T + K - 1) / K;
  std::vector<S> hs(K * N * D), dec(K * N * D), carry(N * D), gy(D), gdr(D), gdt(D), dh(D), dtu(D);
  for (I s = 0; s < b; ++s) {
    if (gh) std::memcpy(carry.data(), gh + s * N * D, sizeof(S) * N * D);
    else std::memset(carry.data(), 0, sizeof(S) * N * D);
    for (I c = nch - 1; c >= 0; --c) {
      const I t0 = c * K, k = (T - t0 < K) ? T - t0 : K;
      const S* hin = ckpt + (s * nch + c) * N * D;
      for (I i = 0; i < k; ++i) {  // recompute the block's states and decays
        const I t = t0 + i;
        const S* ut = u + s * usb + t * ust;
        const S* dtt = dt + s * dsb + t * dst;
        const S* Bt = Bm + s * bsb + t * bst;
        const S* hp = i ? hs.data() + (i - 1) * N * D : hin;
        for (I n = 0; n < N; ++n) {
          const S bn = Bt[n];
          const S* an = At + n * D;
          S* de = dec.data() + (i * N + n) * D;
          S* hn = hs.data() + (i * N + n) * D;
          const S* hpn = hp + n * D;
#pragma omp simd
          for (I d = 0; d < D; ++d) {
            const S a = ex(dtt[d] * an[d]);
            de[d] = a;
            hn[d] = a * hpn[d] + dtt[d] * ut[d] * bn;
          }
        }
      }
      for (I i = k - 1; i >= 0; --i) {
        const I t = t0 + i;
        const S* ut = u + s * usb + t * ust;
        const S* dtt = dt + s * dsb + t * dst;
        const S* Bt = Bm + s * bsb + t * bst;
        const S* Ct = Cm + s * csb + t * cst;
        const S* go = gout + (s * T + t) * D;
        const S* hcur = hs.data() + i * N * D;
        const S* hp = i ? hs.data() + (i - 1) * N * D : hin;
        if (z) {  // out = y z sigmoid(z)
          const S* zt = z + s * zsb + t * zst;
          S* dzt = dz + (s * T + t) * D;
          S* y = gdr.data();
#pragma omp simd
          for (I d = 0; d < D; ++d) y[d] = Dv ? Dv[d] * ut[d] : S(0);
          for (I n = 0; n < N; ++n) {
            const S cn = Ct[n];
            const S* hn = hcur + n * D;
#pragma omp simd
            for (I d = 0; d < D; ++d) y[d] += cn * hn[d];
          }
#pragma omp simd
          for (I d = 0; d < D; ++d) {
            const S sg = S(1) / (S(1) + ex(-zt[d]));
            const S g = go[d] * sg;
            dzt[d] = g * y[d] * (S(1) + zt[d] * (S(1) - sg));
            gy[d] = g * zt[d];
          }
        } else {
          std::memcpy(gy.data(), go, sizeof(S) * D);
        }
#pragma omp simd
        for (I d = 0; d < D; ++d) { gdr[d] = 0; gdt[d] = 0; dtu[d] = dtt[d] * ut[d]; }
        S* dBt = dB + (s * T + t) * N;
        S* dCt = dC + (s * T + t) * N;
        for (I n = 0; n < N; ++n) {
          const S bn = Bt[n], cn = Ct[n];
          const S* hn = hcur + n * D;
          const S* hpn = hp + n * D;
          const S* de = dec.data() + (i * N + n) * D;
          const S* an = At + n * D;
          S* ca = carry.data() + n * D;
          S* dan = dAt + n * D;
          S sc = 0, sb = 0;
#pragma omp simd reduction(+ : sc, sb)
          for (I d = 0; d < D; ++d) {
            const S g = gy[d];
            const S h = cn * g + ca[d];  // dh_t
            sc += hn[d] * g;
            sb += h * dtu[d];
            gdr[d] += h * bn;
            const S ga = h * de[d] * hpn[d];  // d(dt_t A)
            dan[d] += ga * dtt[d];
            gdt[d] += ga * an[d];
            ca[d] = de[d] * h;
          }
          dCt[n] = sc;
          dBt[n] = sb;
        }
        S* dut = du + (s * T + t) * D;
        S* ddtt = ddt + (s * T + t) * D;
        const S* et = delta + s * esb + t * est;
#pragma omp simd
        for (I d = 0; d < D; ++d) {  // d delta: softplus'(x) = sigmoid(x), x = delta + bias
          const S g = gdt[d] + gdr[d] * ut[d];
          const S x = et[d] + (bias ? bias[d] : S(0));
          ddtt[d] = sp ? g / (S(1) + ex(-x)) : g;
          dut[d] = gdr[d] * dtt[d] + (Dv ? gy[d] * Dv[d] : S(0));
        }
        if (dbias) {
#pragma omp simd
          for (I d = 0; d < D; ++d) dbias[d] += ddtt[d];
        }
        if (dD) {
#pragma omp simd
          for (I d = 0; d < D; ++d) dD[d] += gy[d] * ut[d];
        }
      }
    }
    std::memcpy(dh0 + s * N * D, carry.data(), sizeof(S) * N * D);
  }
}

#define ARGS_F(S) I b, I T, I D, I N, I K, const S* u, I usb, I ust, const S* dt, I dsb, I dst, \
  const S* At, const S* Bm, I bsb, I bst, const S* Cm, I csb, I cst, const S* Dv, const S* z, I zsb, I zst
#define PASS_F b, T, D, N, K, u, usb, ust, dt, dsb, dst, At, Bm, bsb, bst, Cm, csb, cst, Dv, z, zsb, zst
extern "C" {
void scan_fwd_f32(ARGS_F(float), const float* h0, float* out, float* hl, float* ck, const float* e, I esb, I est,
                  const float* bias, int sp) { fwd<float>(PASS_F, h0, out, hl, ck, e, esb, est, bias, sp); }
void scan_fwd_f64(ARGS_F(double), const double* h0, double* out, double* hl, double* ck, const double* e, I esb,
                  I est, const double* bias, int sp) { fwd<double>(PASS_F, h0, out, hl, ck, e, esb, est, bias, sp); }
void scan_bwd_f32(ARGS_F(float), const float* ck, const float* go, const float* gh, float* du, float* ddt,
                  float* dz, float* dB, float* dC, float* dAt, float* dD, float* dh0, const float* e, I esb, I est,
                  const float* bias, int sp, float* dbias) {
  bwd<float>(PASS_F, ck, go, gh, du, ddt, dz, dB, dC, dAt, dD, dh0, e, esb, est, bias, sp, dbias); }
void scan_bwd_f64(ARGS_F(double), const double* ck, const double* go, const double* gh, double* du, double* ddt,
                  double* dz, double* dB, double* dC, double* dAt, double* dD, double* dh0, const double* e, I esb,
                  I est, const double* bias, int sp, double* dbias) {
  bwd<double>(PASS_F, ck, go, gh, du, ddt, dz, dB, dC, dAt, dD, dh0, e, esb, est, bias, sp, dbias); }
}
"""

def load() -> ctypes.CDLL:
    """The compiled library (built on first use); RuntimeError saying why where it cannot be built."""
    return native_build.load("scan", SOURCE, ("scan_fwd_f32", "scan_fwd_f64", "scan_bwd_f32", "scan_bwd_f64"))


def available() -> bool:
    return native_build.available(load)


def _rows(t: Tensor) -> Tensor:
    """(b, T, X) with the last axis dense (a token-major view kept as it is)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _strided(t: Tensor | None):
    if t is None:
        return [_ptr(None), 0, 0]
    return [_ptr(t), t.stride(0), t.stride(1)]


def _common(u, dt, At, B, C, D, z, K):
    b, T, Dm = u.shape
    return [b, T, Dm, At.shape[0], K, *_strided(u), *_strided(dt), _ptr(At), *_strided(B), *_strided(C),
            _ptr(D), *_strided(z)]


class _NativeScan(torch.autograd.Function):
    """(u, delta, A, B, C, D, z, bias, h0, softplus) -> (out, h_{T-1}); dt = softplus(delta + bias) inside.
    u, delta, z: (b, T, D) with dense rows; B, C: (b, T, N); A: (D, N); D, bias: (D,); h0 and the final
    state: (b, D, N)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, h0, softplus):
        u, delta, B, C = (_rows(t) for t in (u, delta, B, C))
        z = None if z is None else _rows(z)
        D = None if D is None else D.contiguous()
        bias = None if bias is None else bias.contiguous()
        b, T, Dm = u.shape
        dt = u.new_empty(b, T, Dm)
        N = A.shape[1]
        At = A.t().contiguous()
        h0n = None if h0 is None else h0.transpose(1, 2).contiguous()  # (b, N, D)
        out = u.new_empty(b, T, Dm)
        hlast = u.new_empty(b, N, Dm)
        ckpt = u.new_empty(b, -(-T // CHUNK), N, Dm)
        fn = load().scan_fwd_f64 if u.dtype == torch.float64 else load().scan_fwd_f32
        fn(*_i64(_common(u, dt, At, B, C, D, z, CHUNK)), _ptr(h0n), _ptr(out), _ptr(hlast), _ptr(ckpt),
           *_i64(_strided(delta)), _ptr(bias), int(softplus))
        ctx.has = (D is not None, z is not None, h0 is not None)
        ctx.softplus = softplus
        ctx.save_for_backward(u, dt, At, B, C, D, z, ckpt, delta, bias)
        return out, hlast.transpose(1, 2).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, gh_last):
        u, dt, At, B, C, D, z, ckpt, delta, bias = ctx.saved_tensors
        has_D, has_z, has_h0 = ctx.has
        b, T, Dm = u.shape
        N = At.shape[0]
        gout = torch.zeros_like(u) if gout is None else gout.contiguous()
        gh = None if gh_last is None else gh_last.transpose(1, 2).contiguous()
        du, ddt = u.new_empty(b, T, Dm), u.new_empty(b, T, Dm)
        dz = u.new_empty(b, T, Dm) if has_z else None
        dB, dC = u.new_empty(b, T, N), u.new_empty(b, T, N)
        dAt = u.new_zeros(N, Dm)
        dD = u.new_zeros(Dm) if has_D else None
        dh0 = u.new_empty(b, N, Dm)
        dbias = None if bias is None else u.new_zeros(Dm)
        fn = load().scan_bwd_f64 if u.dtype == torch.float64 else load().scan_bwd_f32
        fn(*_i64(_common(u, dt, At, B, C, D, z, CHUNK)), _ptr(ckpt), _ptr(gout), _ptr(gh), _ptr(du),
           _ptr(ddt), _ptr(dz), _ptr(dB), _ptr(dC), _ptr(dAt), _ptr(dD), _ptr(dh0),
           *_i64(_strided(delta)), _ptr(bias), int(ctx.softplus), _ptr(dbias))
        return du, ddt, dAt.t(), dB, dC, dD, dz, dbias, dh0.transpose(1, 2) if has_h0 else None, None


@torch.compiler.disable  # a ctypes call: compiled blocks call it as it is
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
    acc = torch.promote_types(u.dtype, torch.float32)
    if acc not in (torch.float32, torch.float64) or u.device.type != "cpu":
        raise ValueError(f"the native scan runs float32/float64 on the CPU; got {u.dtype} on {u.device}")

    def tokens(t):  # (b, X, T) -> (b, T, X), a view; in the accumulation dtype
        return None if t is None else t.transpose(1, 2).to(acc)

    def cast(t):
        return None if t is None else t.to(acc)

    out, h = _NativeScan.apply(tokens(u), tokens(delta), cast(A), tokens(B), tokens(C), cast(D), tokens(z),
                               cast(delta_bias), cast(initial_state), delta_softplus)
    y = out.transpose(1, 2).to(u.dtype)
    return (y, h) if return_final_state else y
