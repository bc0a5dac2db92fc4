"""docs/EXTENDING.md, proven: a new mixer, a new task and a new evaluation, each defined in this one
file and registered with a decorator, go through the layer plan, sizing (parameters, cache bytes,
FLOPs), the mixer contract, a sweep file, one tiny real training run and a results table, with no
other file edited.

The toy mixer is a per-channel exponential moving average (a one-state linear recurrence); the toy
task asks the model to repeat the first half of a random sequence; the toy evaluation measures the
model's mean predictive entropy on the task's validation data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ablate.config import ConfigError, knob, override
from ablate.layers import no_reinit
from ablate.mixers.base import Context, LayerSpec, Mixer, MixerOutput
from ablate.registry import EVALUATIONS, MIXERS, TASKS
from ablate.tasks.base import Metric, Task
from ablate.tasks.batches import StepBatchSampler
from tests import test_mixer_contract as contract  # before the toy registers: its cases are the shipped mixers

# ----------------------------------------------------------------------------- a mixer


@dataclass(frozen=True, kw_only=True)
class EMAConfig:
    init_decay: float = knob(0.5, "initial decay a of every channel")


class EMA(Mixer):
    """h_t = a * h_{t-1} + (1 - a) * x_t per channel, a = sigmoid(logit); in/out projections."""

    has_attention, has_ssm = False, True
    config = EMAConfig  # its own section: `mixers: {toy_ema: {init_decay: ...}}`

    def __init__(self, cfg, spec: LayerSpec, backends):
        super().__init__()
        d = cfg.size.d_model
        self.init_decay = self.options(cfg).init_decay
        self.in_proj = nn.Linear(d, d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.logit = no_reinit(nn.Parameter(torch.empty(d)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.logit.fill_(math.log(self.init_decay / (1 - self.init_decay)))

    def forward(self, x: Tensor, ctx: Context) -> MixerOutput:
        u = self.in_proj(x)
        a = torch.sigmoid(self.logit)
        cache = ctx.cache
        h = u.new_zeros(u.shape[0], u.shape[-1]) if cache is None or cache.ssm is None else cache.ssm
        ys = []
        for t in range(u.shape[1]):
            h = a * h + (1 - a) * u[:, t]
            ys.append(h)
        if cache is not None:
            cache.store("ssm", h)
        maps = {}
        if ctx.want_map:  # alpha[c, i, j] = (1 - a) a^(i - j) for j <= i
            T = u.shape[1]
            i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
            gap = (i - j).clamp(min=0).to(u.dtype)
            alpha = (1 - a)[:, None, None] * a[:, None, None] ** gap * (i >= j)
            maps["ssm"] = alpha.expand(u.shape[0], -1, -1, -1)
        return MixerOutput(self.out_proj(torch.stack(ys, 1)), maps=maps)

    def cache_bytes(self, seq_len: int, n_meta: int, bytes_per_el: int) -> dict[str, int]:
        return {"ema": self.logit.numel() * bytes_per_el}  # a kind of state sizing has never seen

    def sequence_flops(self, seq_len: int, n_meta: int) -> float:
        return 3.0 * self.logit.numel()  # multiply, multiply, add per channel

    def param_split(self) -> dict[str, int]:
        return {"attention": 0, "ssm": sum(p.numel() for p in self.parameters()), "shared": 0}


# ----------------------------------------------------------------------------- a task


@dataclass(frozen=True, kw_only=True)
class RepeatConfig:
    vocab_size: int = knob(16, "token vocabulary")
    seq_len: int = knob(16, "tokens per example; the second half repeats the first")
    n_train: int = knob(512, "training examples")
    n_val: int = knob(64, "validation examples")


def repeat_examples(cfg: RepeatConfig, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(0, cfg.vocab_size, (n, cfg.seq_len // 2), generator=g)
    tokens = torch.cat([half, half], 1)
    labels = torch.full_like(tokens, -100)
    labels[:, cfg.seq_len // 2 - 1 : -1] = tokens[:, cfg.seq_len // 2 :]  # predict the repeat
    return TensorDataset(tokens, labels)


class RepeatData(L.LightningDataModule):
    def __init__(self, cfg: RepeatConfig, batch_size: int, steps_per_epoch: int, seed: int):
        super().__init__()
        self.cfg, self.batch_size, self.steps_per_epoch, self.seed = cfg, batch_size, steps_per_epoch, seed
        self.vocab_size, self.seq_len, self.val_names = cfg.vocab_size, cfg.seq_len, ["repeat"]
        self.train_set, self.val_set = repeat_examples(cfg, cfg.n_train, 1), repeat_examples(cfg, cfg.n_val, 2)

    def train_dataloader(self):
        sampler = StepBatchSampler([len(self.train_set)], self.batch_size, self.steps_per_epoch, self.seed)
        return DataLoader(self.train_set, batch_sampler=sampler)

    def val_dataloader(self):
        return [DataLoader(self.val_set, batch_size=32)]


class Repeat(Task):
    config = RepeatConfig
    metrics = (Metric("val/loss", "minimize", "loss on the repeated half"), Metric("val/acc", "maximize"))

    @classmethod
    def build_data(cls, cfg, batch_size, steps_per_epoch, seed):
        return RepeatData(cfg, batch_size, steps_per_epoch, seed)


# ----------------------------------------------------------------------------- an evaluation


@dataclass(frozen=True, kw_only=True)
class EntropyConfig:
    max_batches: int = knob(1, "validation batches to score")


class Entropy:
    config = EntropyConfig
    metrics = (Metric("nats", "minimize", "mean predictive entropy"),)

    @classmethod
    def run(cls, cfg, model, data, run_dir):
        values = []
        with torch.no_grad():
            for i, (tokens, _) in enumerate(data.val_dataloader()[0]):
                if i == cfg.max_batches:
                    break
                logp = F.log_softmax(model(tokens).logits.float(), -1)
                values.append(-(logp.exp() * logp).sum(-1).mean())
        return {"nats": float(torch.stack(values).mean())}


# ----------------------------------------------------------------------------- the test


@pytest.fixture
def registered():
    from ablate.evaluate.base import Evaluation

    evaluation = type("EntropyEval", (Entropy, Evaluation), {})
    MIXERS.register("toy_ema")(EMA)
    TASKS.register("toy_repeat")(Repeat)
    EVALUATIONS.register("toy_entropy")(evaluation)
    yield
    for registry, name in ((MIXERS, "toy_ema"), (TASKS, "toy_repeat"), (EVALUATIONS, "toy_entropy")):
        registry.unregister(name)


def test_a_new_mixer_task_and_evaluation_need_no_other_file(registered, tmp_path):
    from ablate.analysis.tables import write_tables
    from ablate.model import LM
    from ablate.plan import expand
    from ablate.sizing import cache_bytes, count_params, meta_model, train_flops_per_token
    from ablate.sweep.grid import load_sweep
    from ablate.train.config import RunConfig
    from ablate.train.recipe import RecipeConfig
    from ablate.train.run import train
    from ablate.variants import load_variant

    variant = tmp_path / "ema-hybrid.yaml"
    variant.write_text(yaml.safe_dump({
        "description": "EMA and attention layers alternate", "size": {"d_model": 32, "n_layers": 2},
        "layout": {"pattern": ["toy_ema", "attention"], "window": 4, "global_layers": "none"},
        "attention": {"n_heads": 2}, "mlp": {"hidden": 48}, "mixers": {"toy_ema": {"init_decay": 0.8}}}))
    model_cfg = load_variant(variant).model

    # its own config section: in the variant file, overridable, checked strictly
    lm = LM(model_cfg)
    assert torch.sigmoid(lm.blocks[0].mixer.logit).allclose(torch.tensor(0.8))
    assert override(model_cfg, "mixers.toy_ema.init_decay", 0.3).mixers == {"toy_ema": {"init_decay": 0.3}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(variant.read_text().replace("init_decay", "decay"))
    with pytest.raises(ConfigError, match=r"bad.yaml.*unknown key 'mixers.toy_ema.decay'.*init_decay"):
        load_variant(bad)

    # plan: the mixer's own facts decide windows (attention layers only)
    plan = expand(model_cfg)
    assert [(s.mixer, s.window) for s in plan] == [("toy_ema", None), ("attention", 4)]

    # sizing: its parameters, its new cache kind in the total, its FLOPs in the model's
    params = count_params(model_cfg)
    assert params.ssm == 2 * 32 * 32 + 32 and params.attention > 0
    cache = cache_bytes(model_cfg, 100, "fp32")
    assert cache["ema"] == 32 * 4 and cache["total"] == cache["ema"] + cache["kv_window"]
    model = meta_model(model_cfg)
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2)
    flops = 6.0 * matmul + 3 * (3.0 * 32 + model.blocks[1].mixer.sequence_flops(64, 0))
    assert train_flops_per_token(model_cfg, 64) == pytest.approx(flops)

    # the mixer contract, the same checks every registered mixer passes
    spec = LayerSpec(0, "toy_ema")
    for n_meta in (0, 2):
        contract.check_shape_causality_decoding(model_cfg, spec, n_meta)
    contract.check_maps(model_cfg, spec)
    contract.check_accounting(model_cfg, spec)
    lm = LM(model_cfg).double().eval()
    tokens = torch.randint(0, model_cfg.size.vocab_size, (1, 10))
    decoding = lm.new_cache(10)
    steps = [lm(tokens[:, :6], decoding).logits] + [lm(tokens[:, t : t + 1], decoding).logits for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), lm(tokens).logits)

    # a sweep file names the task and carries its section, like any other task's
    sweep_file = tmp_path / "toy.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "toy", "variants": [str(variant)], "tasks": ["toy_repeat"], "results": str(tmp_path / "results"),
        "toy_repeat": {"vocab_size": 12}, "evaluate": {"toy_entropy": {"max_batches": 2}}}))
    (_, swept), = load_sweep(sweep_file).runs.values()
    assert swept.task == "toy_repeat" and swept.data == RepeatConfig(vocab_size=12)
    assert swept.evaluate == {"toy_entropy": EntropyConfig(max_batches=2)}

    # one tiny real training run, and a table read from its record alone
    recipe = RecipeConfig(max_steps=20, eval_every=10, batch_size=16, warmup_steps=2, lr=3e-3)
    cfg = RunConfig(variant="ema-hybrid", model=model_cfg, task="toy_repeat", recipe=recipe,
                    data={"vocab_size": 12}, evaluate={"toy_entropy": {}})
    record = train(cfg, tmp_path / "results" / "runs" / "ema-hybrid")
    assert record["status"] == "finished"
    assert record["cache_bytes"]["fp32"]["ema"] == 32 * 4
    assert [m["name"] for m in record["metric_specs"]] == ["val/loss", "val/acc", "eval/toy_entropy/nats"]
    assert 0 < record["metrics"]["eval/toy_entropy/nats"] <= math.log(12) + 1e-6  # an entropy over 12 tokens
    on_disk = json.loads((tmp_path / "results" / "runs" / "ema-hybrid" / "run.json").read_text())
    assert on_disk["config"]["data"] == {"vocab_size": 12, "seq_len": 16, "n_train": 512, "n_val": 64}
    paths = write_tables(tmp_path / "results")
    table = open(paths["markdown"]).read()
    assert "ema-hybrid" in table and "toy_repeat" in table and "toy_entropy" in table
    header = table.splitlines()[0]
    assert header.index(" loss ") < header.index(" acc ")  # the task's headline leads
