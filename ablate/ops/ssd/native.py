"""Mamba-2 SSD for the CPU as one compiled C++ recurrence (impl 'native').

The contract of ``reference.ssd``, computed as the recurrence itself rather than in chunks:

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,    y_t = h_t C_t + D x_t

At the CPU study's shapes (T = 64, N = 16, head_dim 32) the chunked forms (``headmajor``) spend
most of their time on elementwise passes over (l, s) decay and score tensors, each a few MB at
DRAM speed, while the recurrence does T x H x P x N x 2 multiply-adds per sample and touches
only one (N, H*P) state. Heads and head dims together form W = H*P channels, the innermost axis,
so every inner loop is a vectorised pass over a group's channels (the decay exp(dt A) and dt are
per head, spread over the head's P channels once per step; B and C are per group, scalars inside).

The forward keeps the state entering every block of ``CHUNK`` steps; the backward walks a sample's
blocks in reverse, recomputes the block's states from that checkpoint into a (CHUNK, N, W) buffer
(in cache), and runs the adjoint recurrence, with G_t = dL/dh_t:

    G_t = C_t gy_t^T + exp(dt_{t+1} A) G_{t+1}   (G_{T-1} also gets the final state's gradient)
    dx_t = dt_t G_t B_t + D gy_t;   dB_t = sum_c G_t dt_t x_t;   dC_t = sum_c h_t gy_t
    ddt_t = sum_c x_t (G_t B_t) + A a_t sum(G_t h_{t-1});   dA += dt_t a_t sum(G_t h_{t-1})

every reduction over channels or samples done in place. ``chunk`` (the chunked forms' block
length) is accepted for the common contract and not used: the recurrence needs no chunks.

Built once per machine by ``ops.native_build`` (g++ -O3 -march=native, vectorised over channels,
no -ffast-math so NaN/Inf propagate as in torch), loaded with ctypes. ``available()`` says whether
it builds here; ``ops.backends.resolve`` picks it on the CPU only then (else 'headmajor').
float32 and float64 (other dtypes run in float32, as the reference accumulates).
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

CHUNK = 16  # steps per recomputed block in the backward (CHUNK * N * W values per sample)

SOURCE = r"""
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

typedef int64_t I;
// channels per register tile: a tile's decay, dt x, output (forward) or the gradients it sums over the
// states (backward) stay in registers through the loop over the N states, so each state element
// costs one load and one store instead of a round trip of every per-channel operand
constexpr I TC = 32;

// Each tile function runs m <= TC channels of one group at one step; Full: m == TC, known to the
// compiler (the loops unroll over whole vectors). h, hc, hp, carry: N rows of stride W.
template <typename S, bool Full>
static inline void fwd_tile(I m, I N, I W, const S* a, const S* u, const S* Bt, const S* Ct, S* h, S* y) {
  if constexpr (Full) m = TC;
  S at[TC], ut[TC], yt[TC];
#pragma omp simd
  for (I c = 0; c < m; ++c) { at[c] = a[c]; ut[c] = u[c]; yt[c] = y[c]; }
  for (I n = 0; n < N; ++n) {
    const S bn = Bt[n], cn = Ct[n];
    S* hn = h + n * W;
#pragma omp simd
    for (I c = 0; c < m; ++c) {
      const S v = at[c] * hn[c] + ut[c] * bn;
      hn[c] = v;
      yt[c] += cn * v;
    }
  }
#pragma omp simd
  for (I c = 0; c < m; ++c) y[c] = yt[c];
}

template <typename S, bool Full>
static inline void rec_tile(I m, I N, I W, const S* a, const S* u, const S* Bt, const S* hp, S* hc) {
  if constexpr (Full) m = TC;
  S at[TC], ut[TC];
#pragma omp simd
  for (I c = 0; c < m; ++c) { at[c] = a[c]; ut[c] = u[c]; }
  for (I n = 0; n < N; ++n) {
    const S bn = Bt[n];
    const S* hpn = hp + n * W;
    S* hn = hc + n * W;
#pragma omp simd
    for (I c = 0; c < m; ++c) hn[c] = at[c] * hpn[c] + ut[c] * bn;
  }
}

// carry holds dL/dh_t from the steps after t on entry and dL/dh_{t-1} through the decay on exit;
// gdr = sum_n G B, gA = sum_n G h_{t-1} per channel; dBt, dCt (this group's N) accumulated.
template <typename S, bool Full>
static inline void bwd_tile(I m, I N, I W, const S* a, const S* u, const S* gy, const S* Bt, const S* Ct,
                            const S* hc, const S* hp, S* carry, S* gdr, S* gA, S* dBt, S* dCt) {
  if constexpr (Full) m = TC;
  S at[TC], ut[TC], gt[TC], rt[TC], qt[TC];
#pragma omp simd
  for (I c = 0; c < m; ++c) { at[c] = a[c]; ut[c] = u[c]; gt[c] = gy[c]; rt[c] = 0; qt[c] = 0; }
  for (I n = 0; n < N; ++n) {
    const S bn = Bt[n], cn = Ct[n];
    const S* hn = hc + n * W;
    const S* hpn = hp + n * W;
    S* ca = carry + n * W;
    S sc = 0, sb = 0;
#pragma omp simd reduction(+ : sc, sb)
    for (I c = 0; c < m; ++c) {
      const S g = cn * gt[c] + ca[c];  // G_t = dL/dh_t
      sc += hn[c] * gt[c];
      sb += g * ut[c];
      rt[c] += g * bn;
      qt[c] += g * hpn[c];
      ca[c] = at[c] * g;
    }
    dCt[n] += sc;
    dBt[n] += sb;
  }
#pragma omp simd
  for (I c = 0; c < m; ++c) { gdr[c] = rt[c]; gA[c] = qt[c]; }
}

// the tiles of channels [c0, c1): f(first channel, count, whether a whole tile)
template <typename F>
static inline void tiles(I c0, I c1, F f) {
  for (I c = c0; c < c1; c += TC) {
    const I m = c1 - c < TC ? c1 - c : TC;
    f(c, m, m == TC);
  }
}

// the step's decay exp(dt A) and dt x for each channel (both per head, spread over its P channels)
template <typename S>
static inline void spread(I H, I P, const S* dtt, const S* A, const S* xt, S* ac, S* dtx) {
  for (I hd = 0; hd < H; ++hd) {
    const S a = std::exp(dtt[hd] * A[hd]), d = dtt[hd];
    for (I p = 0; p < P; ++p) {
      ac[hd * P + p] = a;
      dtx[hd * P + p] = d * xt[hd * P + p];
    }
  }
}

// x: (b, T, W) rows dense (W = H P, head-major), strides (xsb, xst); dt: (b, T, H) likewise; A, D: (H,)
// (D may be null); Bm, Cm: (b, T, G, N) with each (G, N) row dense; h0: (b, N, W) dense or null.
// out: (b, T, W) dense; hlast: (b, N, W); ckpt: (b, nchunks, N, W): the state entering every block of K steps.
template <typename S>
static void fwd(I b, I T, I H, I P, I G, I N, I K, const S* x, I xsb, I xst, const S* dt, I dsb, I dst,
                const S* A, const S* Bm, I bsb, I bst, const S* Cm, I csb, I cst, const S* Dv,
                const S* h0, S* out, S* hlast, S* ckpt) {
  const I W = H * P, Wg = W / G, nch = (T + K - 1) / K;
  std::vector<S> hb(N * W), ac(W), dtx(W);
  for (I s = 0; s < b; ++s) {
    S* h = hb.data();
    if (h0) std::memcpy(h, h0 + s * N * W, sizeof(S) * N * W);
    else std::memset(h, 0, sizeof(S) * N * W);
    for (I t = 0; t < T; ++t) {
      if (t % K == 0) std::memcpy(ckpt + (s * nch + t / K) * N * W, h, sizeof(S) * N * W);
      const S* xt = x + s * xsb + t * xst;
      const S* dtt = dt + s * dsb + t * dst;
      const S* Bt = Bm + s * bsb + t * bst;
      const S* Ct = Cm + s * csb + t * cst;
      S* y = out + (s * T + t) * W;
      spread(H, P, dtt, A, xt, ac.data(), dtx.data());
      for (I hd = 0; hd < H; ++hd)
        for (I p = 0; p < P; ++p) y[hd * P + p] = (Dv ? Dv[hd] : S(0)) * xt[hd * P + p];
      for (I g = 0; g < G; ++g)
        tiles(g * Wg, (g + 1) * Wg, [&](I c, I m, bool full) {
          if (full) fwd_tile<S, true>(m, N, W, &ac[c], &dtx[c], Bt + g * N, Ct + g * N, h + c, y + c);
          else fwd_tile<S, false>(m, N, W, &ac[c], &dtx[c], Bt + g * N, Ct + g * N, h + c, y + c);
        });
    }
    std::memcpy(hlast + s * N * W, h, sizeof(S) * N * W);
  }
}

// gout: (b, T, W) dense; gh: (b, N, W) or null. Outputs dx: (b, T, W); ddt: (b, T, H); dB, dC: (b, T, G, N),
// all dense; dA, dD: (H,) accumulated (zeroed by the caller; dD may be null); dh0: (b, N, W).
template <typename S>
static void bwd(I b, I T, I H, I P, I G, I N, I K, const S* x, I xsb, I xst, const S* dt, I dsb, I dst,
                const S* A, const S* Bm, I bsb, I bst, const S* Cm, I csb, I cst, const S* Dv,
                const S* ckpt, const S* gout, const S* gh, S* dx, S* ddt, S* dB, S* dC, S* dA, S* dD, S* dh0) {
  const I W = H * P, Wg = W / G, nch = (T + K - 1) / K;
  std::vector<S> hs(K * N * W), acs(K * W), dtxs(K * W), carry(N * W), gdr(W), gA(W);
  for (I s = 0; s < b; ++s) {
    if (gh) std::memcpy(carry.data(), gh + s * N * W, sizeof(S) * N * W);
    else std::memset(carry.data(), 0, sizeof(S) * N * W);
    for (I ch = nch - 1; ch >= 0; --ch) {
      const I t0 = ch * K, k = (T - t0 < K) ? T - t0 : K;
      const S* hin = ckpt + (s * nch + ch) * N * W;
      for (I i = 0; i < k; ++i) {  // recompute the block's states, decays and dt x
        const I t = t0 + i;
        const S* Bt = Bm + s * bsb + t * bst;
        S* ac = acs.data() + i * W;
        S* u = dtxs.data() + i * W;
        spread(H, P, dt + s * dsb + t * dst, A, x + s * xsb + t * xst, ac, u);
        const S* hp = i ? hs.data() + (i - 1) * N * W : hin;
        S* hc = hs.data() + i * N * W;
        for (I g = 0; g < G; ++g)
          tiles(g * Wg, (g + 1) * Wg, [&](I c, I m, bool full) {
            if (full) rec_tile<S, true>(m, N, W, ac + c, u + c, Bt + g * N, hp + c, hc + c);
            else rec_tile<S, false>(m, N, W, ac + c, u + c, Bt + g * N, hp + c, hc + c);
          });
      }
      for (I i = k - 1; i >= 0; --i) {
        const I t = t0 + i;
        const S* xt = x + s * xsb + t * xst;
        const S* dtt = dt + s * dsb + t * dst;
        const S* Bt = Bm + s * bsb + t * bst;
        const S* Ct = Cm + s * csb + t * cst;
        const S* gy = gout + (s * T + t) * W;
        const S* hc = hs.data() + i * N * W;
        const S* hp = i ? hs.data() + (i - 1) * N * W : hin;
        const S* ac = acs.data() + i * W;
        const S* u = dtxs.data() + i * W;
        S* dBt = dB + (s * T + t) * G * N;
        S* dCt = dC + (s * T + t) * G * N;
        std::memset(dBt, 0, sizeof(S) * G * N);
        std::memset(dCt, 0, sizeof(S) * G * N);
        for (I g = 0; g < G; ++g)
          tiles(g * Wg, (g + 1) * Wg, [&](I c, I m, bool full) {
            if (full)
              bwd_tile<S, true>(m, N, W, ac + c, u + c, gy + c, Bt + g * N, Ct + g * N, hc + c, hp + c,
                                carry.data() + c, &gdr[c], &gA[c], dBt + g * N, dCt + g * N);
            else
              bwd_tile<S, false>(m, N, W, ac + c, u + c, gy + c, Bt + g * N, Ct + g * N, hc + c, hp + c,
                                 carry.data() + c, &gdr[c], &gA[c], dBt + g * N, dCt + g * N);
          });
        S* dxt = dx + (s * T + t) * W;
        for (I hd = 0; hd < H; ++hd) {
          const S d = dtt[hd], skip = Dv ? Dv[hd] : S(0), a = ac[hd * P];
          S sx = 0, sa = 0, sd = 0;
          for (I p = 0; p < P; ++p) {
            const I c = hd * P + p;
            dxt[c] = d * gdr[c] + skip * gy[c];
            sx += xt[c] * gdr[c];
            sa += gA[c];
            sd += gy[c] * xt[c];
          }
          ddt[(s * T + t) * H + hd] = sx + A[hd] * a * sa;  // through dt x B, and through exp(dt A)
          dA[hd] += d * a * sa;
          if (dD) dD[hd] += sd;
        }
      }
    }
    std::memcpy(dh0 + s * N * W, carry.data(), sizeof(S) * N * W);
  }
}

#define ARGS(S) I b, I T, I H, I P, I G, I N, I K, const S* x, I xsb, I xst, const S* dt, I dsb, I dst, \
  const S* A, const S* Bm, I bsb, I bst, const S* Cm, I csb, I cst, const S* Dv
#define PASS b, T, H, P, G, N, K, x, xsb, xst, dt, dsb, dst, A, Bm, bsb, bst, Cm, csb, cst, Dv
extern "C" {
void ssd_fwd_f32(ARGS(float), const float* h0, float* out, float* hl, float* ck) { fwd<float>(PASS, h0, out, hl, ck); }
void ssd_fwd_f64(ARGS(double), const double* h0, double* out, double* hl, double* ck) {
  fwd<double>(PASS, h0, out, hl, ck); }
void ssd_bwd_f32(ARGS(float), const float* ck, const float* go, const float* gh, float* dx, float* ddt, float* dB,
                 float* dC, float* dA, float* dD, float* dh0) {
  bwd<float>(PASS, ck, go, gh, dx, ddt, dB, dC, dA, dD, dh0); }
void ssd_bwd_f64(ARGS(double), const double* ck, const double* go, const double* gh, double* dx, double* ddt,
                 double* dB, double* dC, double* dA, double* dD, double* dh0) {
  bwd<double>(PASS, ck, go, gh, dx, ddt, dB, dC, dA, dD, dh0); }
}
"""

SYMBOLS = ("ssd_fwd_f32", "ssd_fwd_f64", "ssd_bwd_f32", "ssd_bwd_f64")


def load() -> ctypes.CDLL:
    """The compiled library (built on first use); RuntimeError saying why where it cannot be built."""
    return native_build.load("ssd", SOURCE, SYMBOLS)


def available() -> bool:
    return native_build.available(load)


def _rows(t: Tensor) -> Tensor:
    """(b, T, ...) whose axes after T form one dense row per sample and step (a view of a
    token-major projection is kept as it is), else a dense copy."""
    return t if t.numel() and t[0, 0].is_contiguous() else t.contiguous()


def _common(x, dt, A, B, C, D, K):
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    return [b, T, H, P, G, N, K, _ptr(x), x.stride(0), x.stride(1), _ptr(dt), dt.stride(0), dt.stride(1),
            _ptr(A), _ptr(B), B.stride(0), B.stride(1), _ptr(C), C.stride(0), C.stride(1), _ptr(D)]


class _NativeSSD(torch.autograd.Function):
    """(x, dt, A, B, C, D, h0) -> (y, h_{T-1}). x, y: (b, T, H, P); dt: (b, T, H); A, D: (H,); B, C:
    (b, T, G, N); h0 and the final state: (b, H, P, N). One dtype (float32 or float64) throughout."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, h0):
        b, T, H, P = x.shape
        N = B.shape[3]
        x, dt, B, C = (_rows(t) for t in (x, dt, B, C))
        A = A.contiguous()
        D = None if D is None else D.contiguous()
        # the kernel's state is (N, W), channels innermost
        h0n = None if h0 is None else h0.reshape(b, H * P, N).transpose(1, 2).contiguous()
        y = x.new_empty(b, T, H, P)
        hlast = x.new_empty(b, N, H * P)
        K = CHUNK
        ckpt = x.new_empty(b, -(-T // K), N, H * P)
        fn = load().ssd_fwd_f64 if x.dtype == torch.float64 else load().ssd_fwd_f32
        fn(*_i64(_common(x, dt, A, B, C, D, K)), _ptr(h0n), _ptr(y), _ptr(hlast), _ptr(ckpt))
        ctx.K, ctx.has_h0 = K, h0 is not None
        ctx.save_for_backward(x, dt, A, B, C, D, ckpt)
        return y, hlast.transpose(1, 2).reshape(b, H, P, N)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, gh_last):
        x, dt, A, B, C, D, ckpt = ctx.saved_tensors
        b, T, H, P = x.shape
        G, N = B.shape[2], B.shape[3]
        gy = torch.zeros_like(x) if gy is None else gy.contiguous()
        gh = None if gh_last is None else gh_last.reshape(b, H * P, N).transpose(1, 2).contiguous()
        dx, ddt = x.new_empty(b, T, H, P), x.new_empty(b, T, H)
        dB, dC = x.new_empty(b, T, G, N), x.new_empty(b, T, G, N)
        dA = x.new_zeros(H)
        dD = None if D is None else x.new_zeros(H)
        dh0 = x.new_empty(b, N, H * P)
        fn = load().ssd_bwd_f64 if x.dtype == torch.float64 else load().ssd_bwd_f32
        fn(*_i64(_common(x, dt, A, B, C, D, ctx.K)), _ptr(ckpt), _ptr(gy), _ptr(gh), _ptr(dx), _ptr(ddt),
           _ptr(dB), _ptr(dC), _ptr(dA), _ptr(dD), _ptr(dh0))
        dh0 = dh0.transpose(1, 2).reshape(b, H, P, N) if ctx.has_h0 else None
        return dx, ddt, dA, dB, dC, dD, dh0


@torch.compiler.disable  # a ctypes call: compiled blocks call it as it is
def ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    chunk: int = 64,
):
    acc = torch.promote_types(x.dtype, torch.float32)  # accumulate in at least fp32, as the reference
    if acc not in (torch.float32, torch.float64) or x.device.type != "cpu":
        raise ValueError(f"the native SSD runs float32/float64 on the CPU; got {x.dtype} on {x.device}")
    if x.shape[2] % B.shape[2]:
        raise ValueError(f"{x.shape[2]} heads are not a multiple of {B.shape[2]} B/C groups")

    def cast(t):
        return None if t is None else t.to(acc)

    y, h = _NativeSSD.apply(cast(x), cast(dt), cast(A), cast(B), cast(C), cast(D), cast(initial_state))
    y = y.to(x.dtype)
    return (y, h) if return_final_state else y
