"""The lm-evaluation-harness model adapter: a finished ablate run as lm-eval's model ``ablate``.

    lm_eval.simple_evaluate(model="ablate", model_args="run_dir=RUN", tasks=[...])   # after importing this
    ablate lm-eval --model ablate --model_args run_dir=RUN --tasks ablate_piqa           # lm-eval's own CLI

It implements lm-eval's three request types on top of ``TemplateLM``, which does lm-eval's own
context/continuation split (trailing spaces of the context move to the continuation; an empty
context is conditioned on the end-of-text token):

- ``loglikelihood``: the sum of the model's log-probabilities of the continuation tokens, and
  whether greedy decoding would produce them. Context + continuation is left-truncated to the
  trained context (``cache_seq_len`` of the run). Requests are sorted longest first and batched
  with right padding, which is exact for every mixer: all are causal, so a position never sees
  the padding after it.
- ``loglikelihood_rolling``: lm-eval's disjoint rolling windows of the trained context over the
  document (the first token conditioned on end-of-text), scored like loglikelihood.
- ``generate_until``: greedy ``LM.generate`` with the decoding cache (CUDA graphs on a GPU), until
  a stop string, end-of-text or ``max_gen_toks``. A batch holds prompts of one token length,
  since the decoding cache (meta tokens, SSM states) has no padding.

Meta tokens are the model's own business: it prepends them inside every forward. Importing this
module needs lm-eval (``pip install 'ablate[eval]'``) and registers the model with it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ablate.config import ConfigError

END_OF_TEXT = "<|endoftext|>"  # the special token ablate's BPE tokenizers are trained with


def _as_int(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"lm-eval model_args: {name} = {value!r}; allowed: a positive integer") from None


@register_model("ablate")
class AblateLM(TemplateLM):
    """``run_dir``: a finished run (or an ``ablate export``); or, in process, ``model`` (an
    ``ablate.model.LM``), ``tokenizer`` (HF tokenizers) and ``max_length`` (the trained context)."""

    def __init__(self, run_dir: str | None = None, *, model=None, tokenizer=None, max_length: int | None = None,
                 batch_size: int | str = 8, device: str | None = None, max_batch_size=None, **unknown):
        super().__init__()
        if unknown:  # a mistyped model_args key would otherwise be ignored
            raise ConfigError(f"lm-eval model_args {sorted(unknown)}; allowed: run_dir, max_length, batch_size, "
                              "device")
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"  # lm-eval's CLI asks for cuda by default
        self.run_info = {}
        if run_dir is not None:
            from ablate.api import load_run

            run = load_run(run_dir, device)
            model, tokenizer = run.model, run.tokenizer
            max_length = max_length or run.record.get("cache_seq_len")
            self.run_info = {"run_dir": str(Path(run_dir).resolve()), "variant": run.record.get("variant"),
                             "seed": run.record.get("seed"), "config_hash": run.record.get("config_hash")}
            if tokenizer is None:
                raise ConfigError(f"{run_dir}: its task ({run.record.get('task')}) has no tokenizer; lm-eval "
                                  "evaluates text, so evaluate a run trained on the text task")
        if model is None or tokenizer is None or max_length is None:
            raise ConfigError("lm-eval model 'ablate': give model_args run_dir=RUN_DIR")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length = _as_int(max_length, "max_length")
        self.batch_size = 8 if str(batch_size).startswith("auto") else _as_int(batch_size, "batch_size")
        self._device = next(model.parameters()).device
        self._eot = tokenizer.token_to_id(END_OF_TEXT)
        if self._eot is None:
            raise ConfigError(f"the run's tokenizer has no {END_OF_TEXT} token, which lm-eval needs as the "
                              "prefix of an empty context")

    # -- tokenizer ---------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self._eot

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def get_model_info(self) -> dict:
        return {"ablate": self.run_info, "max_length": self.max_length}

    # -- scoring -----------------------------------------------------------------------------------

    def _autocast(self):
        # bf16 on a GPU as the training recipe's default precision; fp32 on the CPU
        return torch.autocast("cuda", torch.bfloat16) if self.device.type == "cuda" else torch.autocast(
            "cpu", enabled=False)

    @torch.no_grad()
    def _score(self, windows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context tokens, continuation tokens) pairs -> (sum log p(continuation), greedy?), batched."""
        inputs, n_scored = [], []
        for context, continuation in windows:
            whole = (context + continuation)[-(self.max_length + 1):]
            inputs.append(whole[:-1])
            n_scored.append(min(len(continuation), len(whole) - 1))
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))  # long first: equal-length batches pad little
        results: list[tuple[float, bool] | None] = [None] * len(inputs)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = len(inputs[batch[0]])
            tokens = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                tokens[row, :len(inputs[i])] = torch.tensor(inputs[i])
            with self._autocast():
                logits = self.model(tokens.to(self.device)).logits
            logprobs = F.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(batch):
                end, n = len(inputs[i]), n_scored[i]
                target = torch.tensor(windows[i][1][-n:], device=self.device)
                scored = logprobs[row, end - n:end]
                results[i] = (scored.gather(-1, target[:, None]).sum().item(),
                              bool((scored.argmax(-1) == target).all()))
        return results

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results = self._score([(context, continuation) for _, context, continuation in requests])
        for (key, _, _), answer in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for n, (text,) in enumerate(req.args for req in requests):
            doc = get_rolling_token_windows(token_list=self.tok_encode(text), prefix_token=self.eot_token_id,
                                            max_seq_len=self.max_length, context_len=1)
            for window in map(make_disjoint_window, doc):
                windows.append(window)
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owner, self._score(windows), strict=True):
            totals[n] += logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    # -- generation --------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        prompts = []
        for context, kwargs in (req.args for req in requests):
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = _as_int(kwargs.pop("max_gen_toks", 256), "max_gen_toks")
            if kwargs.pop("do_sample", False) or float(kwargs.pop("temperature", 0.0) or 0.0) > 0:
                raise ConfigError("lm-eval model 'ablate' decodes greedily; the task asked for sampling")
            room = max(self.max_length - max_new, 1)  # as lm-eval's HF model: context + new tokens fit the window
            prompts.append((self.tok_encode(context)[-room:], tuple(until), max_new))
        # one batch per (prompt length, stop strings, budget): the decoding cache has no padding
        groups: dict[tuple, list[int]] = {}
        for i, (tokens, until, max_new) in enumerate(prompts):
            groups.setdefault((len(tokens), until, max_new), []).append(i)
        out: list[str | None] = [None] * len(prompts)
        batches = [(key, ids[s:s + self.batch_size]) for key, ids in groups.items()
                   for s in range(0, len(ids), self.batch_size)]
        for (_, until, max_new), ids in tqdm(batches, desc="generate_until", disable=disable_tqdm):
            texts = self._generate([prompts[i][0] for i in ids], until, max_new)
            for i, text in zip(ids, texts, strict=True):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _generate(self, prompts: list[list[int]], until: tuple[str, ...], max_new: int) -> list[str]:
        def finished(new: torch.Tensor) -> bool:
            return all(self._ends(row.tolist(), until) for row in new)

        tokens = torch.tensor(prompts, device=self.device)
        with self._autocast():
            out = self.model.generate(tokens, max_new, stop=finished)
        return [self._cut(row.tolist(), until) for row in out[:, tokens.shape[1]:]]

    def _ends(self, new: list[int], until: tuple[str, ...]) -> bool:
        return self._eot in new or any(stop in self.tok_decode(new) for stop in until)

    def _cut(self, new: list[int], until: tuple[str, ...]) -> str:
        """The generated text up to end-of-text and before the first stop string."""
        if self._eot in new:
            new = new[:new.index(self._eot)]
        text = self.tok_decode(new)
        for stop in until:
            text = text.split(stop)[0]
        return text
