"""The Python API: what a notebook or script needs, re-exported as ``ablate.load_run`` etc.

    run = ablate.load_run("results/default/runs/llama-mqar-s0")   # a run directory or an export
    run.record["metrics"], run.config.model, run.model             # the record, configs, the trained LM
    run.generate(tokens or text, max_new_tokens=20)                 # greedy decoding with the cache
    run.maps(tokens)                                                # per layer {"attention", "ssm"} maps
    ablate.export_run(run_dir, out)                                 # safetensors + config + tokenizer
    ablate.build_model("hymba", ["size.d_model=128"])               # an untrained LM from a variant
    ablate.load_results("results/default")                          # one row per run (pandas)

An export is the Hugging Face layout: ``model.safetensors`` (the weights), ``config.json`` (the
resolved model config, the run's task and record) and, for text runs, ``tokenizer.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ablate.config import ConfigError, ModelConfig, from_dict, override, parse_assignment, to_dict
from ablate.model import LM
from ablate.ops.backends import Backends

EXPORT_FORMAT = "ablate-lm-v1"


@dataclass
class Run:
    """A finished (or exported) run: its record, configs, trained model and tokenizer (text runs)."""

    path: Path
    record: dict
    model_config: ModelConfig
    model: LM
    tokenizer: Any = None  # a tokenizers.Tokenizer for text runs, None for token-level tasks

    @property
    def config(self) -> dict:
        return self.record["config"]

    def encode(self, text: str) -> torch.Tensor:
        if self.tokenizer is None:
            raise ValueError(f"{self.path}: this run's task has no tokenizer; pass token ids")
        return torch.tensor([self.tokenizer.encode(text).ids])

    def tokens(self, prompt) -> torch.Tensor:
        """Text (runs with a tokenizer), a list of token ids, or a (T,) / (B, T) tensor -> (B, T)."""
        tokens = self.encode(prompt) if isinstance(prompt, str) else torch.as_tensor(prompt, dtype=torch.long)
        return tokens[None] if tokens.dim() == 1 else tokens

    def generate(self, prompt, max_new_tokens: int = 32, **kwargs) -> str | torch.Tensor:
        """Greedy continuation (``LM.generate`` kwargs pass through); text in, text out; token ids
        (a list, (T,) or (B, T)) in, (B, T + new) ids out."""
        tokens = self.tokens(prompt)
        device = next(self.model.parameters()).device
        out = self.model.generate(tokens.to(device), max_new_tokens, **kwargs)
        if isinstance(prompt, str):
            return self.tokenizer.decode(out[0, tokens.shape[1]:].tolist())
        return out

    @torch.no_grad()
    def maps(self, tokens) -> list[dict[str, torch.Tensor]]:
        """Per layer: "attention" probabilities (B, H, T, T) and/or the SSM's implicit "ssm" map."""
        return self.model(self.tokens(tokens), return_maps=True).maps


def build_model(variant: str | Path, sets: list[str] = (), backends: Backends | None = None) -> LM:
    """An untrained LM of a variant (a name in variants/ or a YAML path) with ``key=value`` overrides."""
    from ablate.variants import load_variant

    cfg = load_variant(variant).model
    for text in sets:
        cfg = override(cfg, *parse_assignment(text))
    return LM(cfg, backends)


def load_results(results: str | Path):
    """Every run record under a results directory as a pandas DataFrame (``ablate.analysis``)."""
    from ablate.analysis.records import load_runs

    return load_runs(results)


def _tokenizer(path: Path):
    if not (path / "tokenizer.json").exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path / "tokenizer.json"))


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """A run directory (``run.json`` + ``checkpoints/last.ckpt``) or an export directory
    (``config.json`` + ``model.safetensors``), with the model in eval mode on ``device``."""
    path = Path(path)
    if (path / "config.json").exists() and (path / "model.safetensors").exists():
        from safetensors.torch import load_file

        meta = json.loads((path / "config.json").read_text())
        if meta.get("format") != EXPORT_FORMAT:
            raise ConfigError(f"{path / 'config.json'}: key 'format' = {meta.get('format')!r}; "
                              f"allowed: {EXPORT_FORMAT!r}")
        cfg = from_dict(ModelConfig, meta["model"], str(path / "config.json"), "model.")
        model = LM(cfg)
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        record = meta["record"]
    else:
        if not (path / "run.json").exists():
            raise ConfigError(f"{path}: neither a run directory (run.json) nor an export "
                              "(config.json, model.safetensors)")
        record = json.loads((path / "run.json").read_text())
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
            raise ConfigError(f"{ckpt}: no checkpoint (the run has status '{record.get('status')}')")
        cfg = from_dict(ModelConfig, record["config"]["model"], str(path / "run.json"), "config.model.")
        model = LM(cfg)
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return Run(path, record, cfg, model.to(device).eval(), _tokenizer(path))


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Write a run as model.safetensors + config.json (+ tokenizer.json); ``load_run(out)`` loads it."""
    from safetensors.torch import save_file

    run = load_run(run_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in run.model.state_dict().items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    meta = {"format": EXPORT_FORMAT, "model": to_dict(run.model_config), "record": run.record}
    (out / "config.json").write_text(json.dumps(meta, indent=2, default=str))
    if run.tokenizer is not None:
        run.tokenizer.save(str(out / "tokenizer.json"))
    return out
