"""Strict configs: every error names the file, the key (or layer) and what is allowed."""

from __future__ import annotations

import pytest

from ablate.config import ConfigError, ModelConfig, override, parse_assignment
from ablate.plan import PlanError, expand
from ablate.variants import load_variant, variant_names


def write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_every_shipped_variant_loads():
    assert {"llama", "mamba", "mamba2", "samba", "hymba", "hymba-1.5b"} <= set(variant_names())
    for name in variant_names():
        assert load_variant(name).name == name


@pytest.mark.parametrize(
    "text,expected",
    [
        ("attention: {n_head: 4}", ["bad.yaml", "attention.n_head", "n_heads"]),
        ("size: {d_model: wide}", ["bad.yaml", "size.d_model", "'wide'", "int"]),
        ("hybrid: {fusion: max}", ["bad.yaml", "hybrid.fusion", "'mean'", "'concat'"]),
        ("mamba: {dt_rank: big}", ["mamba.dt_rank", "'auto'"]),
        ("n_meta: 1.5", ["n_meta", "int"]),
        ("layers: 3", ["unknown key 'layers'", "layout"]),
        ("layout: {pattern: [attention, rwkv]}", ["bad.yaml", "rwkv", "mamba2"]),
        ("size: {n_layers: 5}\nlayout: {pattern: [mamba, attention]}", ["n_layers = 5", "pattern"]),
        (
            "size: {n_layers: 4}\nlayout: {pattern: [mamba, attention], window: 8, global_layers: [0]}",
            ["layer 0", "not an attention layer"],
        ),
        ("layout: {pattern: [hybrid], global_layers: [first]}", ["window is null"]),
        (
            "size: {n_layers: 4}\nlayout: {pattern: [attention], window: 8, global_layers: [1], "
            "kv_groups: [[0, 1]]}",
            ["kv group [0, 1]", "layer 1 (window None)", "producer"],
        ),
        (
            "size: {n_layers: 4}\nlayout: {pattern: [attention], window: 8, global_layers: none, "
            "kv_groups: [[1, 3]]}",
            ["consecutive"],
        ),
        ("- a\n- b", ["bad.yaml", "mapping"]),
        ("size: {d_model: 4", ["bad.yaml", "not valid YAML"]),
    ],
)
def test_bad_variant_files(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        load_variant(write(tmp_path, text))
    for piece in expected:
        assert piece in str(err.value)


def test_unknown_variant_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown variant 'lama'.*llama"):
        load_variant("lama")


def test_override_is_validated_and_returns_a_new_config():
    cfg = ModelConfig()
    new = override(cfg, "attention.n_heads", 8)
    assert new.attention.n_heads == 8 and cfg.attention.n_heads == 4
    with pytest.raises(ConfigError, match="unknown key 'attention.heads'"):
        override(cfg, "attention.heads", 8)
    with pytest.raises(ConfigError, match="'size.d_model' = 'x'"):
        override(cfg, "size.d_model", "x")
    assert parse_assignment("layout.global_layers=[first, last]") == (
        "layout.global_layers", ["first", "last"])


def test_hymba_1p5b_plan_matches_the_released_config():
    plan = expand(load_variant("hymba-1.5b").model)
    assert [s.index for s in plan if s.window is None] == [0, 15, 31]
    groups = {}
    for s in plan:
        if s.kv_group is not None:
            groups.setdefault(s.kv_group, []).append(s.index)
    expected = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [16, 17, 18],
                [19, 20], [21, 22], [23, 24], [25, 26], [27, 28], [29, 30]]
    assert sorted(groups.values()) == expected
    assert sum(s.kv_role == "producer" for s in plan) == 14
    assert sum(s.kv_role == "consumer" for s in plan) == 15


def test_plan_error_is_a_value_error():
    with pytest.raises(PlanError):
        expand(override(ModelConfig(), "layout.kv_share", 0))


def test_a_knob_added_later_keeps_old_identities_at_its_default():
    from ablate.config import ModelConfig, to_dict

    default = to_dict(ModelConfig(), identity=True)
    assert "embed_init_std" not in default  # runs recorded before the knob keep their hash
    assert to_dict(ModelConfig(embed_init_std=1.0), identity=True)["embed_init_std"] == 1.0
    assert "embed_init_std" in to_dict(ModelConfig())  # the full record still shows it


def test_embed_init_std_sets_the_embedding_alone():
    import torch

    from ablate.api import build_model

    torch.manual_seed(0)
    model = build_model("llama", ["size.d_model=64", "size.n_layers=1", "size.vocab_size=512", "embed_init_std=1.0"])
    assert abs(model.embed.weight.std().item() - 1.0) < 0.05
    assert abs(model.blocks[0].mlp_norm.weight.mean().item() - 1.0) < 1e-6
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert abs(linear.weight.std().item() - 0.02) < 0.005
