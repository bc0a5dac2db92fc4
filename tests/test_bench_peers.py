"""The peers benchmark section's builders (benchmarks/peers.py): our config -> the peer's config,
parameter counts within 2%, the row helpers. CPU only; transformers and mamba-ssm optional."""

from __future__ import annotations

import pytest

from ablate.sizing import count_params
from benchmarks import peers
from benchmarks.bench import SIZES, core_model, main

SSM_PAIRS = ("mamba", "mamba2", "roadmap-a-sequential")


@pytest.mark.parametrize("size", list(SIZES))
def test_llama_config_has_our_shapes(size):
    cfg = core_model("llama", size)
    kw = peers.llama_config_kwargs(cfg)
    sets = SIZES[size]
    assert kw["hidden_size"] == sets["size.d_model"] and kw["num_hidden_layers"] == sets["size.n_layers"]
    assert kw["num_attention_heads"] == sets["attention.n_heads"]
    assert kw["num_key_value_heads"] == sets["attention.n_kv_heads"]
    assert kw["intermediate_size"] == sets["mlp.hidden"] and kw["vocab_size"] == 32001
    assert kw["head_dim"] == sets["size.d_model"] // sets["attention.n_heads"]
    assert kw["tie_word_embeddings"] and not kw["attention_bias"] and not kw["mlp_bias"]
    assert kw["attn_implementation"] == "sdpa" and kw["eos_token_id"] is None
    assert kw["rope_theta"] == cfg.attention.rope_theta and kw["rms_norm_eps"] == cfg.norm_eps
    # the same count as ours, exactly (q|k|v fused or not, the weights are the same)
    assert peers.llama_param_count(kw) == count_params(cfg).total


@pytest.mark.parametrize("size", list(SIZES))
def test_hf_llama_parameter_count_matches_ours(size):
    transformers = pytest.importorskip("transformers")
    import torch

    cfg = core_model("llama", size)
    kw = peers.llama_config_kwargs(cfg)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw, use_cache=False))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    assert model.config._attn_implementation == "sdpa"
    real = sum(p.numel() for p in model.parameters())
    assert real == peers.llama_param_count(kw)
    ours = count_params(cfg).total
    assert abs(real - ours) / ours <= peers.PARAMS_TOLERANCE


def test_mamba_ssm_configs_have_our_layers():
    mamba = peers.mamba_ssm_config_kwargs(core_model("mamba", "125M"))
    assert mamba["ssm_cfg"] == {"layer": "Mamba1", "d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": 32,
                                "conv_bias": True, "dt_min": 0.001, "dt_max": 0.1}
    assert mamba["attn_layer_idx"] == [] and mamba["attn_cfg"] == {}
    assert mamba["d_model"] == 512 and mamba["n_layer"] == 24 and mamba["d_intermediate"] == 1664
    assert mamba["vocab_size"] == 32001 and mamba["pad_vocab_size_multiple"] == 1 and mamba["tie_embeddings"]
    assert mamba["rms_norm"] and mamba["fused_add_norm"] and mamba["residual_in_fp32"]

    mamba2 = peers.mamba_ssm_config_kwargs(core_model("mamba2", "350M"), causal_conv1d=False)
    assert mamba2["ssm_cfg"]["layer"] == "Mamba2" and mamba2["ssm_cfg"]["headdim"] == 64
    assert mamba2["ssm_cfg"]["d_state"] == 64 and mamba2["ssm_cfg"]["ngroups"] == 1
    assert mamba2["ssm_cfg"]["use_mem_eff_path"] is False  # its fused path needs causal-conv1d
    assert mamba2["d_model"] == 768 and mamba2["n_layer"] == 32 and mamba2["d_intermediate"] == 2432

    seq = peers.mamba_ssm_config_kwargs(core_model("roadmap-a-sequential", "125M"))
    assert seq["ssm_cfg"]["layer"] == "Mamba1"
    assert seq["attn_layer_idx"] == list(range(1, 24, 2))  # pattern [mamba, attention]
    assert seq["attn_cfg"] == {"num_heads": 8, "num_heads_kv": 4, "head_dim": 64, "causal": True,
                               "qkv_proj_bias": False, "out_proj_bias": False, "rotary_emb_dim": 0,
                               "rotary_emb_base": 10000.0}
    with_rope = peers.mamba_ssm_config_kwargs(core_model("roadmap-a-sequential", "125M"), rope=True)
    assert with_rope["attn_cfg"]["rotary_emb_dim"] == 64


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("name", SSM_PAIRS)
def test_mamba_ssm_parameter_count_within_2_percent(name, size):
    cfg = core_model(name, size)
    kw = peers.mamba_ssm_config_kwargs(cfg)
    ours = count_params(cfg).total
    theirs = peers.mamba_ssm_param_count(kw)
    assert abs(theirs - ours) / ours <= peers.PARAMS_TOLERANCE
    # the only difference is ours' dt/B/C RMSNorms in each Mamba layer (Mamba-2: none at all)
    n_mamba = sum(1 for i in range(cfg.size.n_layers) if i not in kw["attn_layer_idx"]) if name != "mamba2" else 0
    assert ours - theirs == n_mamba * (32 if size == "125M" else 48) + n_mamba * 2 * 16


def test_mamba_ssm_count_follows_its_module_layout():
    # a hand count of one tiny model: d=16, 2 layers (Mamba1, then MHA), MLP 128 (rounded to 128)
    kw = {"d_model": 16, "d_intermediate": 100, "n_layer": 2, "vocab_size": 10, "pad_vocab_size_multiple": 8,
          "tie_embeddings": True, "ssm_cfg": {"layer": "Mamba1", "d_state": 4, "d_conv": 4, "expand": 2},
          "attn_layer_idx": [1], "attn_cfg": {"num_heads": 2, "num_heads_kv": 1}}
    di, rank = 32, 1
    mamba = 16 * 64 + (di * 4 + di) + di * (rank + 8) + (rank * di + di) + di * 4 + di + di * 16
    mha = (16 * 8 * 4 + 32) + (16 * 16 + 16)  # qkv and out projections, with their default biases
    mlp = 16 + 3 * 16 * 128
    assert peers.mamba_ssm_param_count(kw) == mamba + mha + 2 * 16 + 2 * mlp + 16 * 16 + 16


def test_mamba_ssm_real_count_matches_the_analytic_one():
    pytest.importorskip("mamba_ssm")  # a GPU machine with the wheel (it does not load without CUDA)
    import torch
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    for name in SSM_PAIRS:
        kw = peers.mamba_ssm_config_kwargs(core_model(name, "125M"))
        model = MambaLMHeadModel(MambaConfig(**kw), device=torch.device("meta"))
        assert sum(p.numel() for p in model.parameters()) == peers.mamba_ssm_param_count(kw), name


@pytest.mark.parametrize("name", ["roadmap-b-parallel", "samba", "roadmap-e-meta", "roadmap-d-kvshare"])
def test_peers_refuse_what_they_cannot_build(name):
    cfg = core_model(name, "125M")
    with pytest.raises(ValueError):
        peers.mamba_ssm_config_kwargs(cfg)
    with pytest.raises(ValueError):
        peers.llama_config_kwargs(cfg)


def test_llama_peer_refuses_ssm_layers():
    with pytest.raises(ValueError, match="attention-only"):
        peers.llama_config_kwargs(core_model("mamba", "125M"))


def test_notes_say_what_differs_by_construction():
    kw = peers.mamba_ssm_config_kwargs(core_model("roadmap-a-sequential", "125M"))
    text = "; ".join(peers.structural_notes(core_model("roadmap-a-sequential", "125M"), "mamba_ssm", kw))
    assert "RMSNorms on dt, B and C" in text and "no RoPE" in text and "768 parameters" in text
    kw2 = peers.mamba_ssm_config_kwargs(core_model("mamba2", "125M"))
    text2 = "; ".join(peers.structural_notes(core_model("mamba2", "125M"), "mamba_ssm", kw2))
    assert "RMSNorms" not in text2 and "RoPE" not in text2


def test_compare_gives_the_ratio_and_flags_parameter_gaps():
    out = peers.compare({"tok_s": 300.0, "params": 100}, {"tok_s": 200.0, "params": 101})
    assert out == {"ratio": 1.5, "params_diff_pct": pytest.approx(1.0), "params_within_2pct": True}
    out = peers.compare({"tok_s": 100.0, "params": 100}, {"tok_s": 200.0, "params": 103})
    assert out["ratio"] == 0.5 and out["params_within_2pct"] is False
    assert peers.compare({"tok_s": 1.0}, None) == {}
    assert peers.compare(None, {"tok_s": 1.0, "params": 3}) == {}


def test_missing_peer_packages_are_skipped_by_name(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("mamba_ssm", "transformers") else real(name, *a))
    assert peers.skip_reason("mamba_ssm") == "skipped: mamba_ssm not installed"
    assert peers.skip_reason("transformers") == "skipped: transformers not installed"
    assert peers.skip_reason("torch") is None


def test_attempt_records_a_failure_and_goes_on(capsys):
    assert peers.attempt(lambda: {"tok_s": 1.0}) == ({"tok_s": 1.0}, None)

    def boom():
        raise RuntimeError("out of\nmemory")

    result, error = peers.attempt(boom)
    assert result is None and error == "RuntimeError: out of memory"
    assert "Traceback" in capsys.readouterr().err


def test_peers_options_are_checked_and_it_is_not_a_default_section(tmp_path, capsys):
    import torch

    from benchmarks.bench import DEFAULT_SECTIONS, build_parser, run

    assert "peers" not in DEFAULT_SECTIONS and "cpu" not in DEFAULT_SECTIONS
    assert main(["--sections", "peers", "--peers-pairs", "llama,nope"]) == 2
    assert "--peers-pairs: unknown ['nope']" in capsys.readouterr().err
    assert main(["--sections", "peers", "--peers-batches", "1,x"]) == 2
    args = build_parser().parse_args(["--sections", "peers", "--peers-parts", "decode", "--peers-batches", "1,64"])
    assert args.peers_parts == ["decode"] and args.peers_batches == [1, 64]
    assert args.peers_pairs == list(peers.PAIRS)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="need a CUDA GPU"):
            run(["peers"], tmp_path / "R.md", "test")


def test_a_spent_budget_skips_rows_and_says_so():
    rows: list[dict] = []
    peers.bench_peers(rows, sizes=["125M"], peers_pairs=["llama", "mamba"], peers_parts=["train", "decode"],
                      peers_batches=[1], peers_budget_s=-1)
    assert [(r["case"], r["impl"]) for r in rows] == [
        ("125M train bf16 B=8 T=2048", "llama"), ("125M train bf16 B=8 T=2048", "mamba"),
        ("350M decode bf16 B=1 context=8192 +128", "llama"), ("350M decode bf16 B=1 context=8192 +128", "mamba")]
    assert all(r["error"].startswith("skipped: time budget spent") for r in rows)


# ----------------------------------------------------------------------------- whole rows, tiny, on CPU


@pytest.fixture
def tiny_on_cpu(monkeypatch):
    """The section's rows as they run on the GPU, on CPU with a tiny size (no compile, wall clock)."""
    from benchmarks import bench

    monkeypatch.setattr(peers, "DEVICE", "cpu")
    monkeypatch.setattr(peers, "COMPILE", False)
    monkeypatch.setitem(bench.SIZES, "tiny", {"size.d_model": 64, "size.n_layers": 2, "attention.n_heads": 4,
                                              "attention.n_kv_heads": 2, "mlp.hidden": 128})
    return "tiny"


def test_a_training_row_measures_both_sides(tiny_on_cpu):
    pytest.importorskip("transformers")
    row = peers.train_row("llama", tiny_on_cpu, batch=2, seq=16, warmup=1, iters=2)
    assert row["error"] is None, row["error"]
    assert row["case"] == "tiny train bf16 B=2 T=16" and row["impl"] == "llama"
    assert "LlamaForCausalLM" in row["peer"] and row["ours_tok_s"] > 0 and row["peer_tok_s"] > 0
    assert row["ratio"] == pytest.approx(row["ours_tok_s"] / row["peer_tok_s"], rel=1e-2)
    assert row["ours_params_M"] == row["peer_params_M"] and row["params_within_2pct"]


def test_a_row_without_its_peer_package_still_measures_ours(tiny_on_cpu):
    if peers.skip_reason("mamba_ssm") is None:
        pytest.skip("mamba_ssm is installed here")
    row = peers.train_row("mamba", tiny_on_cpu, batch=2, seq=16, warmup=1, iters=2)
    assert row["error"] == "skipped: mamba_ssm not installed"
    assert row["ours_tok_s"] > 0 and "peer_tok_s" not in row and "ratio" not in row
    assert "RMSNorms on dt, B and C" in row["note"] and "counted from its layout" in row["note"]
    assert row["params_within_2pct"] and row["peer_params_M"] < row["ours_params_M"]  # ours' inner norms
    row = peers.decode_row("mamba", tiny_on_cpu, batch=1, context=8, new=2, compile_step=False)
    assert row["error"] == "skipped: mamba_ssm not installed" and row["ours_tok_s"] > 0


def test_a_decoding_row_times_hf_generate(tiny_on_cpu):
    pytest.importorskip("transformers")
    row = peers.decode_row("llama", tiny_on_cpu, batch=2, context=16, new=8, compile_step=False)
    assert row["error"] is None, row["error"]
    assert row["case"] == "tiny decode bf16 B=2 context=16 +8" and "static cache" in row["peer"]
    assert row["ours_tok_s"] > 0 and row["peer_tok_s"] > 0 and row["ratio"] > 0
    # off CUDA HF's generate does not compile; the row says so rather than claiming it
    assert "not compiled" in row["note"]


def test_a_failing_peer_is_recorded_in_its_row(tiny_on_cpu, monkeypatch):
    pytest.importorskip("transformers")

    def broken(kw, use_cache):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(peers, "build_hf_llama", broken)
    rows: list[dict] = []
    peers.bench_peers(rows, sizes=[tiny_on_cpu], peers_pairs=["llama"], peers_parts=["train"], peers_batch=2,
                      peers_seq=16, peers_warmup=1, peers_steps=1)
    assert len(rows) == 1 and rows[0]["error"] == "peer: RuntimeError: CUDA out of memory"
    assert rows[0]["ours_tok_s"] > 0 and rows[0]["row_s"] > 0
