"""Text LM: local corpora in every supported format, a cached BPE tokenizer, real training on
Tiny Shakespeare evaluated on WikiText-2 (skipped when ../shared/data is absent)."""

from __future__ import annotations

import gzip
import json

import pytest

from ablate.config import ConfigError
from ablate.tasks.text import TextConfig, TextData, read_source
from ablate.train.config import run_config
from ablate.train.run import train
from tests.conftest import SHARED_DATA
from tests.helpers import TINY_MODEL

SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
WIKITEXT = SHARED_DATA / "wikitext2" / "valid.txt"


def test_formats(tmp_path):
    (tmp_path / "a.txt").write_text("hello\r\nworld\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "from jsonl"}) + "\n")
    import pandas as pd

    pd.DataFrame({"body": ["from parquet"]}).to_parquet(tmp_path / "c.parquet")
    assert read_source(str(tmp_path / "a.txt"), "text") == "hello\nworld\n"
    assert read_source(str(tmp_path / "b.jsonl.gz"), "text") == "from jsonl"
    assert read_source(str(tmp_path / "c.parquet"), "body") == "from parquet"
    with pytest.raises(ConfigError, match="c.parquet: no column 'text'"):
        read_source(str(tmp_path / "c.parquet"), "text")
    with pytest.raises(ConfigError, match="no such file"):
        read_source(str(tmp_path / "missing.txt"), "text")


def test_named_hf_dataset_offline_is_a_clear_error():
    with pytest.raises(ConfigError, match="hf:nope/nope"):
        read_source("hf:nope/nope:train", "text")


def test_tokenizer_is_trained_once_and_cached(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    cfg = TextConfig(train=(str(corpus),), val=(str(corpus),), vocab_size=300, seq_len=8,
                     cache_dir=str(tmp_path / "cache"))
    first = TextData(cfg, batch_size=4, steps_per_epoch=2, seed=0)
    assert len(list((tmp_path / "cache").glob("bpe-*.json"))) == 1
    second = TextData(cfg, batch_size=4, steps_per_epoch=2, seed=0)
    assert first.tokenizer.to_str() == second.tokenizer.to_str()
    assert first.tokenizer.decode(first.train_tokens[:40].tolist()).startswith("the quick brown fox jumps over")


@pytest.mark.skipif(not SHAKESPEARE.exists() or not WIKITEXT.exists(), reason="needs ../shared/data")
def test_train_on_shakespeare_evaluate_on_wikitext(tmp_path):
    sets = TINY_MODEL + [
        f"text.train=[{SHAKESPEARE}]", f"text.val=[{WIKITEXT}]", "text.vocab_size=512", "text.seq_len=64",
        "text.max_val_tokens=4000", f"text.cache_dir={tmp_path}", "recipe.max_steps=40", "recipe.eval_every=20",
        "recipe.batch_size=8", "recipe.warmup_steps=5",
    ]
    record = train(run_config("llama", "text", sets), tmp_path / "run")
    assert record["config"]["model"]["size"]["vocab_size"] == 512
    ppl = record["metrics"]["val/ppl"]
    assert 1 < ppl < 512  # better than uniform over the vocabulary after 40 steps
    assert "val/valid/loss" in record["metrics"]
    # the run is self-contained: its tokenizer is inside, and the API decodes text with it
    import ablate

    assert (tmp_path / "run" / "tokenizer.json").exists()
    run = ablate.load_run(tmp_path / "run")
    assert isinstance(run.generate("To be, or not", max_new_tokens=5), str)
    exported = ablate.load_run(ablate.export_run(tmp_path / "run", tmp_path / "export"))
    assert (tmp_path / "export" / "tokenizer.json").exists()
    assert exported.tokenizer.to_str() == run.tokenizer.to_str()
