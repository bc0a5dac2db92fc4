"""The mixer contract, run over every mixer configuration and every variant in variants/."""

from __future__ import annotations

import pytest
import torch

from ablate.config import ModelConfig, override
from ablate.mixers.base import Context, LayerCache
from ablate.model import LM
from ablate.ops.backends import Backends
from ablate.plan import LayerSpec
from ablate.registry import MIXERS
from ablate.variants import load_variant, variant_names
from tests.conftest import tiny

REFERENCE_SHAPES = {"hymba-1.5b", "llama-3.2-1b", "llama-3.2-3b", "smollm2-1.7b"}
VARIANTS = variant_names()


def mixer_cases():
    """(id, ModelConfig, LayerSpec) for every registered mixer and its structural options."""
    base = tiny(ModelConfig())
    cases = [
        ("attention-global", base, LayerSpec(0, "attention")),
        ("attention-window", base, LayerSpec(0, "attention", window=4)),
        ("mamba", base, LayerSpec(0, "mamba")),
        ("mamba-no-inner-norms", override(base, "mamba.inner_norms", False), LayerSpec(0, "mamba")),
        ("mamba2", override(base, "mamba2.n_groups", 2), LayerSpec(0, "mamba2")),
    ]
    for fusion in ("mean", "sum", "concat", "gate"):
        for ssm in ("mamba", "mamba2"):
            cfg = override(override(base, "hybrid.fusion", fusion), "hybrid.ssm", ssm)
            cases.append((f"hybrid-{fusion}-{ssm}", cfg, LayerSpec(0, "hybrid", window=4)))
    assert {spec.mixer for _, _, spec in cases} == set(MIXERS.names())
    return cases


CASES = mixer_cases()


def build(cfg, spec):
    torch.manual_seed(0)
    return MIXERS.get(spec.mixer)(cfg, spec, Backends()).double()


@pytest.mark.parametrize("n_meta", [0, 2])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mixer_shape_causality_decoding(case, n_meta):
    _, cfg, spec = case
    check_shape_causality_decoding(cfg, spec, n_meta)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mixer_maps(case):
    _, cfg, spec = case
    check_maps(cfg, spec)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mixer_accounting(case):
    _, cfg, spec = case
    check_accounting(cfg, spec)


def check_shape_causality_decoding(cfg, spec, n_meta):
    """Output shape, causality, and prefill + single steps with a cache == the full forward."""
    mixer = build(cfg, spec)
    B, T, d = 2, 13, cfg.size.d_model
    x = torch.randn(B, T, d, dtype=torch.float64)
    pos = torch.arange(T)
    y = mixer(x, Context(pos=pos, n_meta=n_meta)).y
    assert y.shape == (B, T, d)

    t = 7
    x2 = x.clone()
    x2[:, t] += torch.randn(B, d, dtype=torch.float64)
    y2 = mixer(x2, Context(pos=pos, n_meta=n_meta)).y
    torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=0, atol=1e-12)
    assert not torch.allclose(y2[:, t], y[:, t])

    # prefill 5 positions, then one step at a time
    cache = LayerCache(max_tokens=T)
    parts = [mixer(x[:, :5], Context(pos=pos[:5], n_meta=n_meta, cache=cache)).y]
    for i in range(5, T):
        parts.append(mixer(x[:, i : i + 1], Context(pos=pos[i : i + 1], n_meta=n_meta, cache=cache)).y)
    torch.testing.assert_close(torch.cat(parts, dim=1), y, rtol=1e-5, atol=1e-5)


def check_maps(cfg, spec):
    """With want_map the mixer returns exactly the maps of its paths; attention rows are causal
    probabilities that respect the window and the meta prefix; an SSM map is causal and, for the
    SSM paths that expose prepare(), reproduces the path's output."""
    mixer = build(cfg, spec)
    B, T, n_meta = 2, 11, 2
    x = torch.randn(B, T, cfg.size.d_model, dtype=torch.float64)
    out = mixer(x, Context(pos=torch.arange(T), n_meta=n_meta, want_map=True))
    above = torch.ones(T, T, dtype=torch.bool).triu(1)
    if "attention" in out.maps:
        probs = out.maps["attention"]
        assert probs.shape[-2:] == (T, T)
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
        assert probs[..., above].abs().max() == 0
        if spec.window is not None:  # outside the window and not a meta column: zero
            i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
            hidden = (i - j >= spec.window) & (j >= n_meta)
            assert probs[..., hidden].abs().max() == 0
            assert (probs[..., n_meta:, :n_meta] > 0).all()  # meta always visible
    if "ssm" in out.maps:
        alpha = out.maps["ssm"]
        assert alpha.shape[-2:] == (T, T)
        assert alpha[..., above].abs().max() == 0
        if hasattr(getattr(mixer, "ssm", None), "prepare"):
            check_ssm_map_reproduces_output(mixer, x, n_meta, alpha)
    declared = {kind for kind, has in (("attention", mixer.has_attention), ("ssm", mixer.has_ssm)) if has}
    assert set(out.maps) == declared, f"maps {sorted(out.maps)}; the mixer's paths say {sorted(declared)}"


def check_accounting(cfg, spec):
    """Parameter split covers every parameter; cache bytes and FLOPs are positive where the mixer
    keeps state or has a sequence op, and cache bytes equal what a decoding cache really holds."""
    mixer = build(cfg, spec)
    split = mixer.param_split()
    assert set(split) == {"attention", "ssm", "shared"}
    assert sum(split.values()) == sum(p.numel() for p in mixer.parameters())
    T, n_meta = 9, 2
    analytic = mixer.cache_bytes(T, n_meta, 8)  # float64 below
    assert all(isinstance(n, int) and n >= 0 for n in analytic.values())
    assert mixer.sequence_flops(T, n_meta) > 0
    cache = LayerCache(max_tokens=T)
    x = torch.randn(1, T + n_meta, cfg.size.d_model, dtype=torch.float64)
    mixer(x, Context(pos=torch.arange(T + n_meta), n_meta=n_meta, cache=cache))
    # a window layer allocates its ring for max_tokens; with T <= window both count the same
    assert cache.nbytes() == sum(analytic.values()), (cache, analytic)


def check_ssm_map_reproduces_output(mixer, x, n_meta, alpha):
    """y_pre_gate = alpha @ x_conv + D x_conv, per channel (Mamba-1) or per head (Mamba-2)."""
    ssm = mixer.ssm
    u = mixer.in_proj(x)
    if hasattr(mixer, "attn"):
        u = u[..., mixer.attn.in_dim :]
    ctx = Context(pos=torch.arange(x.shape[1]), n_meta=n_meta)
    x_conv, z, dt, B, C = ssm.prepare(u, ctx)
    if x_conv.dim() == 3:  # Mamba-1: (B, D, T)
        from ablate.ops.scan.reference import selective_scan

        y = selective_scan(x_conv, dt, ssm.A, B, C, ssm.D, None, ssm.dt_proj.bias)
        from_map = torch.einsum("bdij,bdj->bdi", alpha.to(x_conv.dtype), x_conv) + ssm.D[:, None] * x_conv
    else:  # Mamba-2: x (B, T, H, P)
        from ablate.ops.ssd.reference import ssd

        y = ssd(x_conv, dt, ssm.A, B, C, ssm.D)
        from_map = torch.einsum("bhij,bjhp->bihp", alpha.to(x_conv.dtype), x_conv) + ssm.D[:, None] * x_conv
    torch.testing.assert_close(from_map, y.to(from_map.dtype), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_contract(name):
    cfg = tiny(load_variant(name).model)
    torch.manual_seed(0)
    model = LM(cfg).double().eval()
    B, T, V = 2, 14, cfg.size.vocab_size
    tokens = torch.randint(0, V, (B, T))
    logits = model(tokens).logits
    assert logits.shape == (B, T, V)

    t = 9
    other = tokens.clone()
    other[:, t] = (other[:, t] + 1) % V
    logits2 = model(other).logits
    torch.testing.assert_close(logits2[:, :t], logits[:, :t], rtol=0, atol=1e-10)
    assert not torch.allclose(logits2[:, t], logits[:, t])

    cache = model.new_cache(T)
    steps = [model(tokens[:, :4], cache).logits, model(tokens[:, 4:8], cache).logits]
    steps += [model(tokens[:, i : i + 1], cache).logits for i in range(8, T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), logits, rtol=1e-5, atol=1e-5)
    last = model(tokens, model.new_cache(T), last_only=True).logits  # a prefill's last logits only
    assert last.shape == (B, 1, V)
    torch.testing.assert_close(last[:, 0], logits[:, -1], rtol=1e-10, atol=1e-10)

    maps = model(tokens, return_maps=True).maps
    assert len(maps) == cfg.size.n_layers
    for layer_maps in maps:
        for kind, m in layer_maps.items():
            assert m.shape[-1] == T + cfg.n_meta, kind
            if kind == "attention":
                torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)))


def test_kv_consumers_have_no_kv_projection_and_reuse_producer_kv():
    cfg = tiny(load_variant("roadmap-d-kvshare").model)
    model = LM(cfg)
    for block in model.blocks:
        heads = getattr(block.mixer, "attn", None)
        if block.spec.kv_role == "consumer":
            assert heads.k_dim == heads.v_dim == 0
            assert block.mixer.in_proj.out_features == heads.q_dim + block.mixer.ssm.in_dim
    # The consumer attends over the producer's keys: changing only the producer's K projection
    # changes the consumer layer's attention map.
    consumer = next(b for b in model.blocks if b.spec.kv_role == "consumer")
    producer = model.blocks[consumer.spec.index - 1]
    assert producer.spec.kv_role == "producer" and producer.spec.kv_group == consumer.spec.kv_group
    tokens = torch.randint(0, cfg.size.vocab_size, (1, 10))
    with torch.no_grad():
        before = model(tokens, return_maps=True).maps[consumer.spec.index]["attention"]
        heads = producer.mixer.attn
        producer.mixer.in_proj.weight[heads.q_dim : heads.q_dim + heads.k_dim].mul_(3.0)
        after = model(tokens, return_maps=True).maps[consumer.spec.index]["attention"]
    assert not torch.allclose(before, after)


def test_generate_matches_greedy_full_forward():
    cfg = tiny(load_variant("hymba").model)
    model = LM(cfg).eval()
    prompt = torch.randint(0, cfg.size.vocab_size, (1, 6))
    out = model.generate(prompt, max_new_tokens=5)
    seq = prompt
    for _ in range(5):
        nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)


def test_meta_tokens_are_prepended_and_stripped():
    cfg = tiny(load_variant("roadmap-e-meta").model)
    model = LM(cfg).eval()
    tokens = torch.randint(0, cfg.size.vocab_size, (2, 7))
    assert model(tokens).logits.shape[1] == 7
    with torch.no_grad():
        model.meta.add_(1.0)
    assert not torch.allclose(model(tokens).logits, LM(cfg).eval()(tokens).logits)


def test_global_producer_serves_a_window_consumer():
    from ablate.config import ModelConfig

    cfg = tiny(ModelConfig())
    for key, value in {"size.n_layers": 2, "layout.pattern": ["hybrid"], "layout.window": 4,
                       "layout.global_layers": ["first"], "layout.kv_groups": [[0, 1]], "n_meta": 2}.items():
        cfg = override(cfg, key, value)
    model = LM(cfg).double().eval()
    assert [s.kv_role for s in model.plan] == ["producer", "consumer"] and model.plan[1].window == 4
    tokens = torch.randint(0, cfg.size.vocab_size, (2, 12))
    full = model(tokens, return_maps=True)
    probs = full.maps[1]["attention"]  # the consumer: window 4 + meta over the producer's keys
    i, j = torch.meshgrid(torch.arange(14), torch.arange(14), indexing="ij")
    assert probs[..., (i - j >= 4) & (j >= 2)].abs().max() == 0
    cache = model.new_cache(12)
    steps = [model(tokens[:, :5], cache).logits] + [model(tokens[:, t : t + 1], cache).logits for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full.logits, rtol=1e-5, atol=1e-5)


def test_decoding_keeps_cache_storage_and_refuses_to_overflow():
    """A captured decoding step (CUDA graph) replays on fixed addresses: after the prefill no
    cache tensor may be replaced. Decoding past the size the cache was made for is an error."""
    cfg = tiny(load_variant("hymba").model)
    model = LM(cfg).eval()
    tokens = torch.randint(0, cfg.size.vocab_size, (1, 9))
    cache = model.new_cache(9)
    with torch.no_grad():
        model(tokens[:, :6], cache)
        storage = [t.data_ptr() for t in cache.tensors()]
        for t in range(6, 9):
            model(tokens[:, t : t + 1], cache)
        assert [t.data_ptr() for t in cache.tensors()] == storage
        assert int(cache.next_pos) == cache.length == 9 + cfg.n_meta
        with pytest.raises(ValueError, match="new_cache"):
            model(tokens[:, :1], cache)
