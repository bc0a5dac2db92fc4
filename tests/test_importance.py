"""Head importance (Hymba App. C): zeroing beta1 / beta2 is the forward with that path's output
zeroed, the scales come back afterwards, and `ablate importance` measures the run's headline on
its own validation data (the unablated value is the run's recorded metric)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from ablate.cli import main
from ablate.config import override
from ablate.model import LM
from ablate.probe.importance import Ablation, zeroed
from ablate.train.run import train
from ablate.variants import load_variant
from tests.conftest import tiny
from tests.helpers import tiny_mqar


def hybrid_model(fusion: str = "mean") -> LM:
    cfg = override(tiny(load_variant("roadmap-b-parallel").model), "hybrid.fusion", fusion)
    model = LM(cfg).eval()
    with torch.no_grad():  # scales away from their init of 1, so that zeroing one is not a special case
        for block in model.blocks if fusion != "sum" else []:
            block.mixer.norm_attn.weight.uniform_(0.5, 1.5)
            block.mixer.norm_ssm.weight.uniform_(0.5, 1.5)
    return model


def with_output_zeroed(model, layer: int, path: str, part: slice = slice(None)):
    """A forward hook on the path module that zeroes (part of) its output: the definition."""
    module = getattr(model.blocks[layer].mixer, "attn" if path == "attention" else "ssm")

    def hook(module, args, output):
        out, *rest = output
        out = out.clone()
        out[..., part] = 0
        return (out, *rest)

    return module.register_forward_hook(hook)


@pytest.mark.parametrize("fusion", ["mean", "concat", "gate"])
@pytest.mark.parametrize("path", ["attention", "ssm"])
def test_zeroing_a_scale_equals_zeroing_the_path_output(fusion, path):
    model = hybrid_model(fusion)
    tokens = torch.randint(0, model.cfg.size.vocab_size, (2, 10))
    with torch.no_grad():
        before = model(tokens).logits
        with zeroed(model, Ablation(1, path)):
            scaled = model(tokens).logits
        hook = with_output_zeroed(model, 1, path)
        expected = model(tokens).logits
        hook.remove()
        after = model(tokens).logits
    torch.testing.assert_close(scaled, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(scaled, before)
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # the scale is back


def test_zeroing_one_heads_slice_of_beta1_removes_that_heads_normalised_output():
    """The head's contribution after the path's norm is gone and the other heads keep theirs
    (zeroing the head before the norm would rescale them too)."""
    model = hybrid_model()
    mixer = model.blocks[0].mixer
    part = slice(mixer.attn.v_head_dim, 2 * mixer.attn.v_head_dim)
    tokens = torch.randint(0, model.cfg.size.vocab_size, (2, 10))

    def zero_head(module, args, output):
        output = output.clone()
        output[..., part] = 0
        return output

    with torch.no_grad():
        with zeroed(model, Ablation(0, "attention", head=1)):
            scaled = model(tokens).logits
        hook = mixer.norm_attn.register_forward_hook(zero_head)
        expected = model(tokens).logits
        hook.remove()
    torch.testing.assert_close(scaled, expected, rtol=1e-5, atol=1e-6)


def test_layers_without_scales_have_their_path_output_zeroed():
    model = hybrid_model("sum")  # no output norms: the hook is the ablation
    tokens = torch.randint(0, model.cfg.size.vocab_size, (1, 8))
    with torch.no_grad():
        with zeroed(model, Ablation(0, "ssm")):
            ablated = model(tokens).logits
        hook = with_output_zeroed(model, 0, "ssm")
        expected = model(tokens).logits
        hook.remove()
    torch.testing.assert_close(ablated, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="has no ssm path"):
        with zeroed(LM(tiny(load_variant("llama").model)), Ablation(0, "ssm")):
            pass


def test_importance_command_measures_the_runs_headline(tmp_path, capsys):
    run_dir = tmp_path / "run"
    record = train(tiny_mqar(tmp_path, variant="roadmap-b-parallel", steps=10, every=5), run_dir)
    assert main(["importance", str(run_dir), "--limit", "10000"]) == 0
    table = pd.read_csv(run_dir / "importance" / "importance.csv")
    n_heads = json.loads((run_dir / "run.json").read_text())["config"]["model"]["attention"]["n_heads"]
    assert len(table) == 2 * (2 + n_heads)  # per layer: both paths and every head
    assert set(table["zeroed"]) == {"beta1", "beta2"} and (table["metric"] == "val/acc").all()
    assert table["baseline"].iloc[0] == pytest.approx(record["metrics"]["val/acc"], abs=1e-6)
    assert (run_dir / "importance" / "importance.png").stat().st_size > 1000
    assert "beta2" in capsys.readouterr().out
    assert main(["importance", str(run_dir), "--layers", "0", "--no-heads", "--out", str(tmp_path / "o")]) == 0
    assert len(pd.read_csv(tmp_path / "o" / "importance.csv")) == 2
