"""Parameter counts, matching, and cache accounting against the paper and the real cache."""

from __future__ import annotations

import pytest
import torch

from ablate.config import override
from ablate.model import LM
from ablate.sizing import cache_bytes, count_params, match
from ablate.variants import load_variant
from tests.conftest import tiny


@pytest.mark.parametrize("name,expected", [
    ("hymba-1.5b", 1.52e9), ("llama-3.2-1b", 1.24e9), ("llama-3.2-3b", 3.21e9),
    ("smollm2-1.7b", 1.71e9),
])
def test_reference_parameter_counts(name, expected):
    total = count_params(load_variant(name).model).total
    assert abs(total - expected) / expected < 0.01


def test_hymba_1p5b_layer_sizes_follow_the_released_code():
    model_cfg = load_variant("hymba-1.5b").model
    with torch.device("meta"):
        model = LM(model_cfg)
    producer, consumer = model.blocks[1].mixer, model.blocks[2].mixer
    assert producer.in_proj.out_features == 8960 and consumer.in_proj.out_features == 8000
    assert producer.attn.v_head_dim == 128 and producer.attn.head_dim == 64
    assert producer.ssm.dt_rank == 100
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(n(model.blocks[1]) - 46.7e6) < 0.1e6 and abs(n(model.blocks[2]) - 45.2e6) < 0.1e6


def test_counts_add_up_and_ratio():
    c = count_params(load_variant("hymba").model)
    assert c.attention + c.ssm + c.shared + c.mlp + c.other == c.non_embedding
    assert c.attn_ssm_ratio.startswith("1:")
    assert count_params(load_variant("llama").model).attn_ssm_ratio == "1:0"
    assert count_params(load_variant("mamba").model).attn_ssm_ratio == "0:1"


# Paper Table 2 (fp16, 8000 tokens, 1 MB = 1e6 B); Hymba within +-5 MB (convention in sizing.py).
@pytest.mark.parametrize("name,mb,tol", [
    ("llama-3.2-1b", 262, 0.5), ("llama-3.2-3b", 918, 0.5), ("smollm2-1.7b", 1573, 0.5),
    ("hymba-1.5b", 79, 5),
])
def test_paper_table2_cache(name, mb, tol):
    assert abs(cache_bytes(load_variant(name).model, 8000, "fp16")["total"] / 1e6 - mb) <= tol


@pytest.mark.parametrize("name", ["llama", "mamba", "mamba2", "samba", "hymba", "roadmap-c-swa",
                                  "roadmap-d-kvshare", "hymba-1.5b"])
@pytest.mark.parametrize("T", [3, 12])
def test_analytic_cache_equals_the_cache_decoding_allocates(name, T):
    cfg = tiny(load_variant(name).model)
    model = LM(cfg).eval()
    cache = model.new_cache(T)
    tokens = torch.randint(0, cfg.size.vocab_size, (1, T))
    with torch.no_grad():
        model(tokens[:, :2], cache)
        for t in range(2, T):
            model(tokens[:, t : t + 1], cache)
    assert cache.nbytes() == cache_bytes(cfg, T, "fp32")["total"]


def test_sliding_window_and_kv_sharing_shrink_the_cache():
    def mb(name):
        return cache_bytes(load_variant(name).model, 8000)["total"]
    assert mb("roadmap-c-swa") < mb("roadmap-b-parallel")
    assert mb("roadmap-d-kvshare") < mb("roadmap-c-swa")
    assert mb("mamba") < mb("roadmap-d-kvshare")


@pytest.mark.parametrize("knob", ["mlp.hidden", "size.d_model"])
def test_match_hits_a_target_within_one_percent(knob):
    base = load_variant("hymba-1.5b").model if knob == "size.d_model" else load_variant("mamba").model
    target = int(count_params(base).non_embedding * 1.1)
    result = match(base, target, knob=knob)
    assert abs(result.residual) < 0.01
    assert count_params(result.cfg).non_embedding == result.params


def test_match_reports_an_unreachable_target():
    from ablate.config import ConfigError
    cfg = override(load_variant("llama").model, "mlp.kind", "none")
    with pytest.raises(ConfigError, match="tolerance"):
        match(cfg, 10**9, knob="mlp.hidden")
