"""Real inputs for the probes: an example of a run's own task (MQAR with its key, value and query
positions marked) or a text sample, and the run's validation data rebuilt from its record."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ablate.api import Run
from ablate.config import ConfigError, from_dict
from ablate.registry import TASKS


@dataclass
class ProbeInput:
    tokens: torch.Tensor  # (T,) int64
    description: str  # what the input is, for titles
    marks: dict[str, list[int]] = field(default_factory=dict)  # e.g. {"key": [...], "value": [...], "query": [...]}
    labels: list[str] | None = None  # the token strings, when the run has a tokenizer


def task_config(run: Run):
    """The run's task section (``config.data``) as its task's config dataclass."""
    task = run.record["task"]
    if task not in TASKS.names():
        raise ConfigError(f"{run.path / 'run.json'}: task '{task}' is not registered; "
                          f"allowed: {', '.join(TASKS.names())}")
    return from_dict(TASKS.get(task).config, run.config.get("data") or {}, str(run.path / "run.json"), "config.data.")


def validation_data(run: Run):
    """The run's validation datamodule (set up), as its record describes it."""
    record = run.record
    data = TASKS.get(record["task"]).build_data(task_config(run), record["config"]["recipe"]["batch_size"], 1,
                                                record["seed"])
    data.setup("validate")
    return data


def mqar_marks(inputs: torch.Tensor, labels: torch.Tensor, n_pairs: int) -> dict[str, list[int]]:
    """Positions of the context keys and values (the first 2n tokens) and of the queries (labelled)."""
    return {"key": list(range(0, 2 * n_pairs, 2)), "value": list(range(1, 2 * n_pairs, 2)),
            "query": torch.nonzero(labels != -100).flatten().tolist()}


def mqar_input(run: Run, seq_len: int | None, n_pairs: int | None, seed: int = 0) -> ProbeInput:
    """A fresh MQAR example from the run's test distribution (test seed range); by default as long
    as its first test segment, with that segment's number of pairs."""
    from ablate.tasks.mqar import Segment, generate

    cfg = task_config(run)
    first = cfg.test[0]
    seq_len = seq_len or first.seq_len
    # another length: one pair per 16 tokens (as the default test grid), as many as the keys allow
    n_pairs = n_pairs or (first.n_pairs if seq_len == first.seq_len else
                          max(1, min(seq_len // 16, cfg.vocab_size // 2 - 1)))
    try:
        inputs, labels = generate(Segment(seq_len=seq_len, n_pairs=n_pairs, n_examples=1), cfg.vocab_size,
                                  cfg.power_a, (1 << 31) + seed)
    except ValueError as err:
        raise ConfigError(f"--seq-len {seq_len} / --pairs {n_pairs}: {err}") from None
    return ProbeInput(inputs[0], f"MQAR example, {seq_len} tokens, {n_pairs} pairs",
                      mqar_marks(inputs[0], labels[0], n_pairs))


def task_input(run: Run, seq_len: int | None = None, n_pairs: int | None = None) -> ProbeInput:
    """An input of the run's task: MQAR generates one example; any other task takes its first
    validation example (truncated to seq_len)."""
    from ablate.tasks.mqar import MQARConfig

    if isinstance(task_config(run), MQARConfig):
        return mqar_input(run, seq_len, n_pairs)
    if n_pairs is not None:
        raise ConfigError(f"--pairs is for MQAR runs; {run.path} is a '{run.record['task']}' run")
    inputs, _ = next(iter(validation_data(run).val_dataloader()[0]))
    tokens = inputs[0, :seq_len] if seq_len else inputs[0]
    return ProbeInput(tokens, f"first validation example of task '{run.record['task']}', {len(tokens)} tokens",
                      labels=token_labels(run, tokens))


def text_input(run: Run, text: str | None = None, seq_len: int | None = None) -> ProbeInput:
    """A text sample through the run's tokenizer: ``text``, else the start of its validation text."""
    if run.tokenizer is None:
        raise ConfigError(f"--input text needs a run with a tokenizer (a text-task run); {run.path} is a "
                          f"'{run.record['task']}' run: use --input task")
    if text is None:
        sample = task_input(run, seq_len)
        return ProbeInput(sample.tokens, "validation text sample", labels=sample.labels)
    tokens = run.encode(text)[0]
    tokens = tokens[:seq_len] if seq_len else tokens
    return ProbeInput(tokens, f"text sample, {len(tokens)} tokens", labels=token_labels(run, tokens))


def default_device(device: str | None) -> str:
    """The device a probe runs its model on: the one asked for, else CUDA when there is one."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def token_labels(run: Run, tokens: torch.Tensor) -> list[str] | None:
    if run.tokenizer is None:
        return None
    return [run.tokenizer.id_to_token(int(t)) or "?" for t in tokens]
