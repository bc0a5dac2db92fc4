"""The Python API: a finished run loads with its model, record and tokenizer; it exports to the
Hugging Face layout (safetensors + config + tokenizer) and loads back with identical logits; the
Lightning checkpoint loads through Lightning; run directories are self-contained."""

from __future__ import annotations

import json

import pytest
import torch

import ablate
from ablate.train.run import train
from tests.helpers import tiny_mqar


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    train(tiny_mqar(tmp, steps=10, every=5), tmp / "results" / "runs" / "llama")
    return tmp / "results" / "runs" / "llama"


def test_load_run_gives_the_trained_model_and_its_record(finished_run):
    run = ablate.load_run(finished_run)
    assert run.record["status"] == "finished" and run.model_config.size.vocab_size == 32
    tokens = torch.randint(0, 32, (2, 16))
    assert run.model(tokens).logits.shape == (2, 16, 32)
    maps = run.maps(tokens)
    assert len(maps) == 2 and maps[0]["attention"].shape == (2, 2, 16, 16)
    assert run.generate(tokens[:1, :5], max_new_tokens=3).shape == (1, 8)
    assert torch.equal(run.generate(tokens[0, :5].tolist(), 3), run.generate(tokens[:1, :5], 3))  # a list of ids
    assert len(run.maps(tokens[0].tolist())) == 2
    with pytest.raises(ValueError, match="no tokenizer"):
        run.generate("text")
    frame = ablate.load_results(finished_run.parent.parent)
    assert frame["run"].tolist() == ["llama"]


def test_export_and_load_back_give_identical_logits(finished_run, tmp_path, capsys):
    from ablate.cli import main

    assert main(["export", str(finished_run), str(tmp_path / "export")]) == 0
    assert {p.name for p in (tmp_path / "export").iterdir()} == {"model.safetensors", "config.json"}
    original, exported = ablate.load_run(finished_run), ablate.load_run(tmp_path / "export")
    tokens = torch.randint(0, 32, (2, 16))
    assert torch.equal(original.model(tokens).logits, exported.model(tokens).logits)
    assert exported.record == original.record


def test_the_lightning_checkpoint_loads_through_lightning(finished_run):
    from ablate.train.module import LitLM

    module = LitLM.load_from_checkpoint(finished_run / "checkpoints" / "last.ckpt", map_location="cpu")
    run = ablate.load_run(finished_run)
    tokens = torch.randint(0, 32, (1, 16))
    # the module runs the kernels resolve picks on the CPU (RoPE 'rotation'), load_run the torch
    # references: the same weights give the same logits up to rounding
    torch.testing.assert_close(module.model.eval()(tokens).logits, run.model(tokens).logits, rtol=1e-5, atol=1e-5)


def test_a_run_directory_holds_its_resolved_variant(finished_run):
    from ablate.config import to_dict
    from ablate.variants import load_variant

    variant = load_variant(finished_run / "variant.yaml")
    record = json.loads((finished_run / "run.json").read_text())
    assert to_dict(variant.model) == record["config"]["model"]


def test_build_model_from_a_variant_with_overrides():
    model = ablate.build_model("hymba", ["size.d_model=64", "size.n_layers=4"])
    assert model.cfg.size.d_model == 64 and len(model.blocks) == 4 and model.n_meta == 128
