"""Mamba-1 selective scan in pure torch for the CPU: one autograd Function with a hand-written
backward, token-major and blocked over time so that its working set stays in cache.

Autograd through a T-step loop records ~5T small ops and re-reads (B, D, N) state for each. Here
the whole scan, with the softplus of dt, the D skip and the SiLU(z) gate, is one Function. It
works on (b, T, channels) tensors (a transposed view of the token-major projections the Mamba
path makes, so no copy) and walks the sequence in blocks of K steps, K chosen so that a
(b, K, N, D) block is about ``BLOCK_BYTES``: every (b, T, D, N)-sized quantity (decay, drive,
states, their gradients) only ever exists one block at a time, and nothing of that size is
stored for the backward; the memory traffic is that of the (b, T, D) inputs and outputs.

The forward keeps the state entering each block. The backward walks the blocks in reverse,
recomputes the block's states from that checkpoint, and runs the adjoint recurrence

    dh_t = C_t dy_t + exp(dt_{t+1} A) dh_{t+1}       (dh_{T-1} also gets the final-state grad)
    d drive_t = dh_t,   d(dt_t A) = exp(dt_t A) dh_t h_{t-1}

then maps those to dt, A, B, C, u (and D, z, the dt bias) for the block. The CPU path (``ops.backends``
picks it without CUDA), tested against ``reference.py`` forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

BLOCK_BYTES = 1 << 20  # target size of one (b, K, N, D) block: a few of them stay in L2/L3


def block_steps(b: int, N: int, D: int, T: int, itemsize: int) -> int:
    """Steps per block K: the largest with b * K * N * D * itemsize <= BLOCK_BYTES (at least 1)."""
    return max(1, min(T, BLOCK_BYTES // (b * N * D * itemsize)))


def _rows(t: Tensor) -> Tensor:
    """Dense along the last axis: a token-major view is kept as it is, a channel-major tensor copied."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _sum_states(s: Tensor, w: Tensor, out: Tensor | None = None) -> Tensor:
    """sum_n s[:, :, n] * w[:, :, n] -> (b, k, D) for s (b, k, N, D) and w (b, k, N) or (N, D):
    one multiply-add per state (a reduction over the state axis would zero-fill its output first
    and needs an s-sized product)."""
    w = w.unsqueeze(-1) if w.dim() == 3 else w[None, None]
    out = torch.mul(s[:, :, 0], w[:, :, 0], out=out)
    for n in range(1, s.shape[2]):
        out.addcmul_(s[:, :, n], w[:, :, n])
    return out


def _block_states(dt: Tensor, u: Tensor, B: Tensor, At: Tensor, h: Tensor | None, t0: int, t1: int,
                  dec: Tensor, st: Tensor) -> Tensor:
    """States h_t for t in [t0, t1) into st (b, k, N, D) and exp(dt_t A) into dec; h is the state
    before t0 (None: zeros). Returns h_{t1-1} (a view of st)."""
    dt_b = dt[:, t0:t1]
    torch.mul(dt_b[:, :, None, :], At, out=dec).exp_()
    torch.mul(B[:, t0:t1, :, None], (dt_b * u[:, t0:t1])[:, :, None, :], out=st)  # drive dt_t B_t u_t
    for i in range(t1 - t0):
        if h is not None:
            st[:, i].addcmul_(dec[:, i], h)
        h = st[:, i]
    return h


class _Scan(torch.autograd.Function):
    """(u, delta, A, B, C, D, z, delta_bias, h0, softplus) -> (out, h_{T-1}). u, delta, z: (b, T, D);
    B, C: (b, T, N); A: (D, N); D, delta_bias: (D,); h0 and the final state: (b, D, N)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, h0, softplus):
        u, delta, B, C = (_rows(t) for t in (u, delta, B, C))
        z = None if z is None else _rows(z)
        b, T, Dm = u.shape
        N = A.shape[1]
        At = A.t().contiguous()  # (N, D), dense over channels (a transposed view would run strided)
        K = block_steps(b, N, Dm, T, u.element_size())
        dt = delta + bias if bias is not None else delta
        dt = F.softplus(dt) if softplus else dt.clone()
        out = u.new_empty(b, T, Dm)
        dec_buf, st_buf = u.new_empty(b, K, N, Dm), u.new_empty(b, K, N, Dm)
        h = None if h0 is None else h0.transpose(1, 2)
        checkpoints = []  # the state entering each block after the first
        for t0 in range(0, T, K):
            t1 = min(t0 + K, T)
            k = t1 - t0
            if t0:
                checkpoints.append(h)
            h = _block_states(dt, u, B, At, h, t0, t1, dec_buf[:, :k], st_buf[:, :k])
            y = _sum_states(st_buf[:, :k], C[:, t0:t1], out=out[:, t0:t1])
            if D is not None:
                y.addcmul_(u[:, t0:t1], D)
            if z is not None:
                y.mul_(F.silu(z[:, t0:t1]))
            if t1 < T:
                h = h.clone()  # st_buf is reused by the next block
        ctx.softplus, ctx.K, ctx.checkpoints = softplus, K, checkpoints
        ctx.has = (D is not None, z is not None, bias is not None, h0 is not None)
        ctx.save_for_backward(u, dt, A, B, C, D, z, h0)
        return out, h.transpose(1, 2).clone(memory_format=torch.contiguous_format)

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, gh_last):
        u, dt, A, B, C, D, z, h0 = ctx.saved_tensors
        has_D, has_z, has_bias, has_h0 = ctx.has
        K = ctx.K
        b, T, Dm = dt.shape
        N = A.shape[1]
        At = A.t().contiguous()  # (N, D), dense over channels (a transposed view would run strided)
        gout = _rows(gout)
        checkpoints = [None if h0 is None else h0.transpose(1, 2), *ctx.checkpoints]
        du, ddt = u.new_empty(b, T, Dm), u.new_empty(b, T, Dm)
        dz = u.new_empty(b, T, Dm) if has_z else None
        dC, dB = u.new_empty(b, T, N), u.new_empty(b, T, N)
        dAt = u.new_zeros(N, Dm)
        dD = u.new_zeros(Dm) if has_D else None
        dec_buf, st_buf, g_buf, tmp_buf = (u.new_empty(b, K, N, Dm) for _ in range(4))
        carry = gh_last.transpose(1, 2) if gh_last is not None else None
        for j, t0 in reversed(list(enumerate(range(0, T, K)))):
            t1 = min(t0 + K, T)
            k = t1 - t0
            h_in = checkpoints[j]
            dec, st, g, tmp = dec_buf[:, :k], st_buf[:, :k], g_buf[:, :k], tmp_buf[:, :k]
            _block_states(dt, u, B, At, h_in, t0, t1, dec, st)
            u_b, dt_b = u[:, t0:t1], dt[:, t0:t1]
            if has_z:  # out = y z sigmoid(z); silu'(z) = sigmoid(z) (1 + z (1 - sigmoid(z)))
                z_b = z[:, t0:t1]
                y = _sum_states(st, C[:, t0:t1])
                if has_D:
                    y.addcmul_(u_b, D)
                sz = torch.sigmoid(z_b)
                gy = gout[:, t0:t1] * sz
                torch.mul(gy, y, out=dz[:, t0:t1]).mul_(torch.rsub(sz, 1).mul_(z_b).add_(1))
                gy.mul_(z_b)
            else:
                gy = gout[:, t0:t1]
            torch.mul(C[:, t0:t1, :, None], gy[:, :, None, :], out=g)  # C_t dy_t
            for i in range(k - 1, -1, -1):
                if carry is not None:
                    g[:, i].add_(carry)  # dh_t
                carry = dec[:, i].mul_(g[:, i])  # exp(dt_t A) dh_t: the carry into step t-1
            carry = carry.clone()  # dec is overwritten below
            # d(dt_t A) = exp(dt_t A) dh_t h_{t-1}
            dec[:, 1:].mul_(st[:, :k - 1])
            if h_in is not None:
                dec[:, 0].mul_(h_in)
            else:
                dec[:, 0].zero_()
            torch.sum(torch.mul(st, gy[:, :, None, :], out=tmp), -1, out=dC[:, t0:t1])
            torch.sum(torch.mul(g, (dt_b * u_b)[:, :, None, :], out=tmp), -1, out=dB[:, t0:t1])
            dh_B = _sum_states(g, B[:, t0:t1])  # d(dt_t u_t)
            dAt.add_(torch.mul(dec, dt_b[:, :, None, :], out=tmp).sum((0, 1)))
            ddt_b = _sum_states(dec, At, out=ddt[:, t0:t1])
            ddt_b.addcmul_(dh_B, u_b)
            du_b = torch.mul(dh_B, dt_b, out=du[:, t0:t1])
            if has_D:
                du_b.addcmul_(gy, D)
                dD.add_((gy * u_b).sum((0, 1)))
            if ctx.softplus:
                ddt_b.mul_(torch.expm1(-dt_b).neg_())  # softplus' = sigmoid = 1 - exp(-softplus)
        dbias = ddt.sum((0, 1)) if has_bias else None
        dh0 = carry.transpose(1, 2).clone(memory_format=torch.contiguous_format) if has_h0 else None
        return du, ddt, dAt.t(), dB, dC, dD, dz, dbias, dh0, None


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

    def tokens(t):  # (b, X, T) -> (b, T, X), a view; in the accumulation dtype
        return None if t is None else t.transpose(1, 2).to(acc)

    def cast(t):
        return None if t is None else t.to(acc)

    out, h = _Scan.apply(tokens(u), tokens(delta), cast(A), tokens(B), tokens(C), cast(D), tokens(z),
                         cast(delta_bias), cast(initial_state), delta_softplus)
    y = out.transpose(1, 2).to(u.dtype)
    return (y, h) if return_final_state else y
