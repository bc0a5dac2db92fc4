"""The fused decoding-step kernels (ops/step/triton.py) against the torch references, forward only.

GPU tests (marked gpu). Without a GPU they run on the CPU through Triton's interpreter:

    pip install --target /tmp/tri triton
    TRITON_INTERPRET=1 PYTHONPATH=/tmp/tri python -m pytest tests/ops/test_step_kernels.py

The reference is the op's torch code run in float64 on the same (rounded) inputs; tolerances as in
test_gpu_kernels.py: relative Frobenius error, fp32 under 1e-5, bf16 outputs or states under 1e-2.
"""

from __future__ import annotations

import pytest
import torch

from ablate.ops import conv1d, scan, ssd
from ablate.ops import step as step_ops
from ablate.ops.backends import resolve
from ablate.ops.conv1d import reference as conv_reference
from tests.ops.triton_cases import DEVICE, MARKS, rel_err

pytestmark = MARKS  # on the CPU only under the interpreter; otherwise a GPU test

DTYPES = pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])


@pytest.fixture(scope="module")
def kernels():
    pytest.importorskip("triton")
    from ablate.ops.step import triton as kernels

    return kernels


def strided(*shape, dtype, scale=1.0):
    """randn of `shape` whose last axis is not unit-stride and whose rows are not packed (as the
    mixers' slices of transposed projections)."""
    wide = scale * torch.randn(*shape[:-1], 2 * shape[-1] + 1, device=DEVICE)
    return wide[..., 1::2].to(dtype) if dtype == torch.float32 else wide.to(dtype)[..., 1::2]


def f64(t):
    return None if t is None else t.detach().double().cpu()


# ----------------------------------------------------------------------------- Mamba-1


def mamba_inputs(B, D, N, dtype, state_dtype, with_z=True, with_bias=True):
    return dict(
        h=torch.randn(B, D, N, device=DEVICE).to(state_dtype),
        u=strided(B, D, dtype=dtype),
        delta=strided(B, D, dtype=dtype, scale=0.5),
        A=-torch.rand(D, N, device=DEVICE) * 4 - 0.05,
        B=strided(B, N, dtype=dtype),
        C=strided(B, N, dtype=dtype),
        D=torch.randn(D, device=DEVICE).to(dtype),
        z=strided(B, D, dtype=dtype) if with_z else None,
        delta_bias=(0.1 * torch.randn(D, device=DEVICE)).to(dtype) if with_bias else None,
    )


@DTYPES
@pytest.mark.parametrize("B,D,N", [(1, 5, 3), (2, 37, 16), (3, 64, 17), (1, 300, 1), (2, 9, 64)])
def test_mamba_step_matches_reference(kernels, dtype, tol, B, D, N):
    x = mamba_inputs(B, D, N, dtype, torch.float32)
    x64 = {k: f64(v) for k, v in x.items()}
    y_ref = scan.selective_state_update(**x64)  # float64 on the CPU: the reference code
    h = x["h"]
    y = kernels.selective_state_update(**x)
    assert y.dtype == dtype and y.shape == (B, D)
    assert rel_err(y, y_ref) < tol
    assert rel_err(h, x64["h"]) < 1e-5  # the state is fp32


@pytest.mark.parametrize("with_z,with_bias,softplus", [(False, False, True), (True, False, False),
                                                       (False, True, False)])
def test_mamba_step_optional_inputs(kernels, with_z, with_bias, softplus):
    x = mamba_inputs(2, 19, 7, torch.float32, torch.float32, with_z, with_bias)
    x["D"] = None if with_z else x["D"]
    x64 = {k: f64(v) for k, v in x.items()}
    y_ref = scan.selective_state_update(**x64, delta_softplus=softplus)
    y = kernels.selective_state_update(**x, delta_softplus=softplus)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(x["h"], x64["h"]) < 1e-5


def test_mamba_step_bf16_state(kernels):
    """The cache keeps the state in the model's dtype (bf16 when decoding a bf16 model)."""
    x = mamba_inputs(2, 33, 16, torch.bfloat16, torch.bfloat16)
    x64 = {k: f64(v) for k, v in x.items()}
    y_ref = scan.selective_state_update(**x64)
    y = kernels.selective_state_update(**x)
    assert x["h"].dtype == torch.bfloat16
    assert rel_err(y, y_ref) < 1e-2 and rel_err(x["h"], x64["h"]) < 1e-2


def test_mamba_steps_chain(kernels):
    """Several steps in a row carry the state as the sequence scan does."""
    from ablate.ops.scan import reference

    B, D, N, T = 2, 21, 16, 6
    x = {k: v for k, v in mamba_inputs(B, D, N, torch.float32, torch.float32).items() if k != "h"}
    seq = {k: torch.stack([v] + [torch.randn_like(v) for _ in range(T - 1)], -1) if k in ("u", "delta", "z")
           else v for k, v in x.items()}
    seq["B"] = torch.randn(B, N, T, device=DEVICE)
    seq["C"] = torch.randn(B, N, T, device=DEVICE)
    y_ref, h_ref = reference.selective_scan(**{k: f64(v) for k, v in seq.items()}, return_final_state=True)
    h = torch.zeros(B, D, N, device=DEVICE)
    ys = [kernels.selective_state_update(h, seq["u"][..., t], seq["delta"][..., t], seq["A"], seq["B"][..., t],
                                         seq["C"][..., t], seq["D"], seq["z"][..., t], seq["delta_bias"])
          for t in range(T)]
    assert rel_err(torch.stack(ys, -1), y_ref) < 1e-5 and rel_err(h, h_ref) < 1e-5


@DTYPES
@pytest.mark.parametrize("norms", [True, False], ids=["norms", "no-norms"])
@pytest.mark.parametrize("B,D,N,R", [(1, 5, 3, 1), (2, 37, 16, 3), (3, 64, 17, 48), (2, 130, 4, 5),
                                     (1, 600, 4, 128)])  # the last: the dt_proj tile caps the channels per program
def test_mamba_projected_step_matches_reference(kernels, dtype, tol, norms, B, D, N, R):
    """selective_step: the inner RMSNorms, the dt projection and A = -exp(A_log) folded into the update
    kernel give the torch code's result (norms, F.linear, then the state update)."""
    x = mamba_inputs(B, D, N, dtype, torch.float32)
    dbc = strided(B, R + 2 * N, dtype=dtype, scale=3.0)  # the norms see a scale other than 1
    weights = tuple((1 + 0.3 * torch.randn(n, device=DEVICE)).to(dtype) for n in (R, N, N)) if norms else None
    W = (R**-0.5 * torch.randn(D, R, device=DEVICE)).to(dtype)
    args = dict(h=x["h"], u=x["u"], z=x["z"], dbc=dbc, A_log=torch.log(-x["A"]), D=x["D"], dt_weight=W,
                dt_bias=x["delta_bias"], norm_weights=weights, eps=1e-6)
    a64 = {k: (tuple(f64(w) for w in v) if isinstance(v, tuple) else f64(v) if isinstance(v, torch.Tensor) else v)
           for k, v in args.items()}
    y_ref = scan.selective_step(**a64)  # float64 on the CPU: the reference code
    y = kernels.selective_step(**args)
    assert y.dtype == dtype and y.shape == (B, D)
    assert rel_err(y, y_ref) < tol
    assert rel_err(x["h"], a64["h"]) < (1e-5 if dtype == torch.float32 else 1e-2)


# ----------------------------------------------------------------------------- Mamba-2


def ssd_inputs(B, H, P, G, N, dtype, state_dtype=torch.float32, with_D=True):
    return dict(
        h=torch.randn(B, H, P, N, device=DEVICE).to(state_dtype),
        x=strided(B, H, P, dtype=dtype),
        dt=torch.nn.functional.softplus(torch.randn(B, H, device=DEVICE)),  # the mixer's dt: fp32, positive
        A=-torch.rand(H, device=DEVICE) * 3 - 0.1,
        B=strided(B, G, N, dtype=dtype),
        C=strided(B, G, N, dtype=dtype),
        D=torch.randn(H, device=DEVICE).to(dtype) if with_D else None,
    )


@DTYPES
@pytest.mark.parametrize("B,H,P,G,N", [(1, 1, 1, 1, 1), (2, 4, 3, 2, 5), (1, 6, 64, 3, 16), (2, 2, 17, 1, 128),
                                       (1, 3, 130, 1, 9)])
def test_ssd_step_matches_reference(kernels, dtype, tol, B, H, P, G, N):
    x = ssd_inputs(B, H, P, G, N, dtype)
    x64 = {k: f64(v) for k, v in x.items()}
    y_ref = ssd.ssd_state_update(**x64)
    y = kernels.ssd_state_update(**x)
    assert y.dtype == dtype and y.shape == (B, H, P)
    assert rel_err(y, y_ref) < tol
    assert rel_err(x["h"], x64["h"]) < 1e-5


def test_ssd_step_bf16_state_no_D(kernels):
    x = ssd_inputs(2, 4, 16, 2, 32, torch.bfloat16, torch.bfloat16, with_D=False)
    x64 = {k: f64(v) for k, v in x.items()}
    y_ref = ssd.ssd_state_update(**x64)
    y = kernels.ssd_state_update(**x)
    assert rel_err(y, y_ref) < 1e-2 and rel_err(x["h"], x64["h"]) < 1e-2


# ----------------------------------------------------------------------------- causal conv


@DTYPES
@pytest.mark.parametrize("B,C,K", [(1, 5, 4), (2, 37, 4), (3, 300, 3), (1, 129, 2), (2, 7, 5)])
@pytest.mark.parametrize("with_bias,silu", [(True, True), (False, False)])
def test_conv_step_matches_reference(kernels, dtype, tol, B, C, K, with_bias, silu):
    state = torch.randn(B, C, K - 1, device=DEVICE).to(dtype)
    x = strided(B, C, dtype=dtype)
    w = (torch.randn(C, K, device=DEVICE) / K**0.5).to(dtype)
    bias = torch.randn(C, device=DEVICE).to(dtype) if with_bias else None
    state64 = f64(state)
    y_ref = conv_reference.conv_step(state64, f64(x), f64(w), f64(bias), silu)
    y = kernels.conv_step(state, x, w, bias, silu)
    assert y.dtype == dtype and y.shape == (B, C)
    assert rel_err(y, y_ref) < tol
    assert torch.equal(state.double().cpu(), state64.to(dtype).double())  # a shift: exact


def test_conv_steps_chain_match_the_sequence_conv(kernels):
    B, C, K, T = 2, 45, 4, 7
    x = torch.randn(B, C, T, device=DEVICE)
    w, bias = torch.randn(C, K, device=DEVICE), torch.randn(C, device=DEVICE)
    y_ref = conv_reference.causal_conv1d(f64(x), f64(w), f64(bias))
    state = torch.zeros(B, C, K - 1, device=DEVICE)
    ys = torch.stack([kernels.conv_step(state, x[..., t], w, bias) for t in range(T)], -1)
    assert rel_err(ys, y_ref) < 1e-5
    assert torch.equal(state.cpu(), x[..., T - (K - 1):].cpu())


# ----------------------------------------------------------------------------- dispatch


def test_dispatch_on_cuda_runs_the_kernels(kernels):
    """The ops functions hand CUDA tensors to the kernels (bit-equal results); CPU tensors never."""
    if DEVICE != "cuda":
        assert step_ops.fused(torch.zeros(2)) is None and resolve("auto", "cpu").step == "torch"
        pytest.skip("the kernels' dispatch needs CUDA tensors")
    assert resolve("auto", "cuda").step == "triton"
    x = ssd_inputs(2, 4, 16, 2, 32, torch.bfloat16)
    h2 = x["h"].clone()
    assert torch.equal(ssd.ssd_state_update(**x), kernels.ssd_state_update(**{**x, "h": h2}))
    assert torch.equal(x["h"], h2)
    x = mamba_inputs(2, 37, 16, torch.bfloat16, torch.float32)
    h2 = x["h"].clone()
    assert torch.equal(scan.selective_state_update(**x), kernels.selective_state_update(**{**x, "h": h2}))
    assert torch.equal(x["h"], h2)
    W, dbc = torch.randn(37, 3, device=DEVICE), torch.randn(2, 3 + 32, device=DEVICE)
    step = dict(u=x["u"], z=x["z"], dbc=dbc, A_log=torch.log(-x["A"]), D=x["D"], dt_weight=W, dt_bias=x["delta_bias"],
                norm_weights=tuple(torch.ones(n, device=DEVICE) for n in (3, 16, 16)))
    assert torch.equal(scan.selective_step(x["h"], **step), kernels.selective_step(h2, **step, eps=1e-6))
    assert torch.equal(x["h"], h2)
    state = torch.randn(2, 37, 3, device=DEVICE)
    s2, xs, w = state.clone(), torch.randn(2, 37, device=DEVICE), torch.randn(37, 4, device=DEVICE)
    assert torch.equal(conv1d.conv_step(state, xs, w), kernels.conv_step(s2, xs, w))
    assert torch.equal(state, s2)
    with torch.enable_grad():  # a gradient wanted: the reference (the kernels have no backward)
        assert step_ops.fused(w.requires_grad_()) is None


# ----------------------------------------------------------------------------- a model decoding through them


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_model_decoding_through_the_kernels(kernels, name, monkeypatch):
    """A tiny model decoding token by token with every step op forced through the kernels (on the
    CPU: interpreted) gives the logits of the torch step ops: the call sites' strides and dtypes."""
    from ablate.model import LM
    from ablate.variants import load_variant
    from tests.conftest import tiny

    model = LM(tiny(load_variant(name).model)).to(DEVICE).eval()
    tokens = torch.randint(0, model.cfg.size.vocab_size, (2, 9), device=DEVICE)

    def decode(fused):
        monkeypatch.setattr(step_ops, "fused", fused)
        cache = model.new_cache(tokens.shape[1])
        with torch.no_grad():
            out = [model(tokens[:, :4], cache).logits]
            out += [model(tokens[:, i : i + 1], cache).logits for i in range(4, tokens.shape[1])]
        return torch.cat(out, 1)

    calls = []
    ref = decode(lambda *tensors, impl="triton": None)
    out = decode(lambda *tensors, impl="triton": calls.append(tensors[0].shape) or kernels)
    assert calls  # the kernels ran (conv and state update, 5 steps x 2 layers)
    assert rel_err(out, ref) < 1e-5
