"""Text language modelling: local corpora or a named Hugging Face dataset, a BPE tokenizer,
packed fixed-length sequences, validation loss and perplexity.

Sources: paths (globs allowed) to .txt, .jsonl or .parquet files, each optionally .gz, or
``hf:NAME[:CONFIG]:SPLIT`` for a Hugging Face dataset (needs the ``datasets`` package and network,
or a filled HF cache). The tokenizer is either ``bpe`` — a byte-level BPE trained with HF
``tokenizers`` on the training text, cached by a hash of the text and the vocab size — or
``hf:NAME`` for a pretrained tokenizer. Token streams are cached the same way.

Training batches are random windows of seq_len + 1 tokens of the concatenated training stream,
chosen by (seed, step); validation uses every non-overlapping window of each validation source.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ablate.config import ConfigError, knob, require
from ablate.registry import TASKS
from ablate.tasks.base import Metric, Task, save_atomically
from ablate.tasks.batches import StepBatchSampler, ranks, shard


@dataclass(frozen=True, kw_only=True)
class TextConfig:
    train: tuple[str, ...] = knob(
        (), "training sources: paths/globs (.txt/.jsonl/.parquet[.gz]) or hf:NAME[:CONFIG]:SPLIT")
    val: tuple[str, ...] = knob((), "validation sources (each reported separately)")
    selection: tuple[str, ...] = knob((), "sources a study selects hyperparameters on (eval_split: selection); "
                                      "never the val sources")
    eval_split: Literal["test", "selection"] = knob(
        "test", "what validation measures: the val sources (test), or the selection sources")
    text_field: str = knob("text", "field holding the text in .jsonl / .parquet / HF rows")
    tokenizer: str = knob("bpe", "bpe (trained on the training text) or hf:NAME")
    vocab_size: int = knob(4096, "BPE vocabulary size")
    seq_len: int = knob(256, "tokens per training sequence")
    max_val_tokens: int | None = knob(200_000, "cap on tokens per validation source")
    eval_batch_size: int = knob(32, "batch size for evaluation")
    cache_dir: str = knob(".cache/text", "tokenizer and token-stream cache", identity=False)

    def __post_init__(self):
        require(self, vocab_size=(1, None), seq_len=(1, None), max_val_tokens=(1, None), eval_batch_size=(1, None))


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8-sig") if path.suffix == ".gz" else open(
        path, encoding="utf-8-sig")


def read_file(path: Path, field: str) -> str:
    kind = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
    if kind == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        if field not in frame:
            raise ConfigError(f"{path}: no column '{field}' (text.text_field); columns: {list(frame)}")
        return "\n".join(frame[field].astype(str))
    with _open(path) as f:
        if kind == ".jsonl":
            rows = [json.loads(line) for line in f if line.strip()]
            if rows and field not in rows[0]:
                raise ConfigError(f"{path}: no field '{field}' (text.text_field); fields: {list(rows[0])}")
            return "\n".join(str(r[field]) for r in rows)
        if kind in (".txt", ".raw", ".tokens", ""):
            return f.read().replace("\r\n", "\n")
    raise ConfigError(f"{path}: unsupported file type '{kind}'; allowed: .txt, .jsonl, .parquet (optionally .gz)")


def read_hf(source: str, field: str) -> str:
    parts = source[3:].split(":")
    if len(parts) not in (2, 3):
        raise ConfigError(f"text source '{source}': expected hf:NAME[:CONFIG]:SPLIT")
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"text source '{source}' needs the 'datasets' package: pip install datasets") from None
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # offline, unknown name, ...: say which source and why
        raise ConfigError(f"text source '{source}': could not load ({type(err).__name__}: {err}); "
                          "without network, use local files or a filled HF cache") from None
    return "\n".join(str(r[field]) for r in rows)


def read_source(source: str, field: str) -> str:
    if source.startswith("hf:"):
        return read_hf(source, field)
    paths = sorted(glob.glob(source))
    if not paths:
        raise ConfigError(f"text source '{source}': no such file")
    return "\n".join(read_file(Path(p), field) for p in paths)


def digest(*parts: str) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def load_tokenizer(cfg: TextConfig, train_text: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if cfg.tokenizer.startswith("hf:"):
        try:
            return Tokenizer.from_pretrained(cfg.tokenizer[3:])
        except Exception as err:
            raise ConfigError(f"text.tokenizer '{cfg.tokenizer}': could not load ({err}); "
                              "without network use tokenizer: bpe") from None
    if cfg.tokenizer != "bpe":
        raise ConfigError(f"text.tokenizer '{cfg.tokenizer}'; allowed: bpe or hf:NAME")
    path = Path(cfg.cache_dir) / f"bpe-{digest(train_text, str(cfg.vocab_size))}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    chunks = train_text.split("\n")
    tok.train_from_iterator((chunks[i : i + 1000] for i in range(0, len(chunks), 1000)), trainer)
    save_atomically(path, tok.save)
    return tok


def encode(tok, text: str, cache_dir: str) -> torch.Tensor:
    path = Path(cache_dir) / f"tokens-{digest(tok.to_str(), text)}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    lines = text.split("\n")
    ids = [i for enc in tok.encode_batch([line + "\n" for line in lines]) for i in enc.ids]
    tokens = torch.tensor(ids, dtype=torch.int32)
    save_atomically(path, lambda tmp: torch.save(tokens, tmp))
    return tokens


class Windows(Dataset):
    """Window i = tokens[i*L : i*L + L + 1] as (inputs, labels) shifted by one."""

    def __init__(self, tokens: torch.Tensor, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n = (len(tokens) - 1) // seq_len
        if self.n < 1:
            raise ConfigError(f"text: only {len(tokens)} tokens, fewer than text.seq_len + 1 = {seq_len + 1}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        chunk = self.tokens[i * self.seq_len : (i + 1) * self.seq_len + 1].long()
        return chunk[:-1], chunk[1:]


class TextData(L.LightningDataModule):
    def __init__(self, cfg: TextConfig, batch_size: int, steps_per_epoch: int, seed: int):
        super().__init__()
        if not cfg.train or not cfg.val:
            raise ConfigError("text task: give text.train and text.val sources")
        if cfg.eval_split == "selection" and not cfg.selection:
            raise ConfigError("text task: eval_split 'selection' (a study's lr_search) needs text.selection sources, "
                              "held apart from text.val")
        if set(cfg.selection) & set(cfg.val) or set(cfg.selection) & set(cfg.train):
            raise ConfigError("text task: text.selection shares a source with text.val or text.train; "
                              "selection must be held apart from both")
        evaluated = cfg.selection if cfg.eval_split == "selection" else cfg.val
        self.cfg, self.batch_size, self.steps_per_epoch, self.seed = cfg, batch_size, steps_per_epoch, seed
        train_text = "\n".join(read_source(s, cfg.text_field) for s in cfg.train)
        self.tokenizer = load_tokenizer(cfg, train_text)
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.train_tokens = encode(self.tokenizer, train_text, cfg.cache_dir)
        self.val_tokens = []
        for source in evaluated:
            tokens = encode(self.tokenizer, read_source(source, cfg.text_field), cfg.cache_dir)
            self.val_tokens.append(tokens[: cfg.max_val_tokens] if cfg.max_val_tokens else tokens)
        self.val_names = [Path(s).name.split(".")[0] or s for s in evaluated]
        self.seq_len = cfg.seq_len

    def train_dataloader(self) -> DataLoader:
        windows = Windows(self.train_tokens, self.cfg.seq_len)
        sampler = StepBatchSampler([len(windows)], self.batch_size, self.steps_per_epoch, self.seed, *ranks(self))
        return DataLoader(windows, batch_sampler=sampler)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(shard(Windows(t, self.cfg.seq_len), *ranks(self)), batch_size=self.cfg.eval_batch_size)
                for t in self.val_tokens]


@TASKS.register("text")
class Text(Task):
    """Language modelling: next-token loss and perplexity on each validation source."""

    config = TextConfig
    metrics = (
        Metric("val/loss", "minimize", "next-token cross-entropy, token-weighted over the validation sources"),
        Metric("val/ppl", "minimize", "exp(val/loss)"),
        Metric("val/acc", "maximize", "next-token accuracy, mean over the validation sources"),
    )

    @classmethod
    def build_data(cls, cfg: TextConfig, batch_size: int, steps_per_epoch: int, seed: int) -> TextData:
        return TextData(cfg, batch_size, steps_per_epoch, seed)
