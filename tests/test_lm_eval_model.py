"""The lm-eval adapter scores exactly what the model computes: loglikelihood is the sum of the
model's own log-probabilities of the continuation under lm-eval's context/continuation split,
independent of the batch size; loglikelihood_rolling is the text task's own loss on the same
document; generate_until is greedy ``LM.generate`` cut at the stop strings. Tiny models, CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from ablate.evaluate.lm_eval_model import AblateLM  # noqa: E402
from ablate.model import LM  # noqa: E402
from ablate.tasks.text import TextConfig, Windows, load_tokenizer  # noqa: E402
from ablate.variants import load_variant  # noqa: E402
from tests.conftest import tiny  # noqa: E402

CORPUS = ("The cat sat on the mat. The dog sat on the log. A bird sang in the tree, and the cat "
          "watched the bird. Question: where did the cat sit?\nAnswer: on the mat.\n") * 40
MAX_LENGTH = 24


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    cfg = TextConfig(train=("x",), val=("x",), vocab_size=300, cache_dir=str(tmp_path_factory.mktemp("tok")))
    return load_tokenizer(cfg, CORPUS)


def model_of(variant: str, tokenizer) -> LM:
    torch.manual_seed(0)
    return LM(tiny(load_variant(variant).model, vocab=tokenizer.get_vocab_size())).eval()


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def reference_loglikelihood(model: LM, tok, context: str, continuation: str) -> float:
    """Written out: trailing spaces of the context belong to the continuation (lm-eval's rule), the
    continuation's tokens are those of the whole text after the context's, and an empty context is
    the end-of-text token."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if context:
        whole = tok.encode(context + continuation).ids
        n_context = len(tok.encode(context).ids)
    else:
        whole = [tok.token_to_id("<|endoftext|>")] + tok.encode(continuation).ids
        n_context = 1
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].float(), -1)
    return sum(logp[n_context - 1 + j, t].item() for j, t in enumerate(whole[n_context:]))


PAIRS = [("The cat sat on the", " mat."), ("The dog sat on the ", "log."), ("", "A bird sang"),
         ("Question: where did the cat sit?\nAnswer:", " on the mat."), ("The", " bird")]


@pytest.mark.parametrize("variant", ["llama", "mamba", "hymba"])  # hymba: meta tokens, parallel heads, SWA
def test_loglikelihood_is_the_models_own(variant, tokenizer):
    model = model_of(variant, tokenizer)
    lm = AblateLM(model=model, tokenizer=tokenizer, max_length=64, batch_size=3)
    got = lm.loglikelihood(requests("loglikelihood", PAIRS), disable_tqdm=True)
    for (context, continuation), (logprob, _) in zip(PAIRS, got, strict=True):
        assert logprob == pytest.approx(reference_loglikelihood(model, tokenizer, context, continuation), abs=1e-4)


def test_batch_size_does_not_change_scores(tokenizer):
    model = model_of("hymba", tokenizer)
    pairs = PAIRS * 3 + [(CORPUS[:200], " the tree")]
    scores = {b: AblateLM(model=model, tokenizer=tokenizer, max_length=MAX_LENGTH, batch_size=b)
              .loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True) for b in (1, 8)}
    for (a, greedy_a), (b, greedy_b) in zip(scores[1], scores[8], strict=True):
        assert a == pytest.approx(b, abs=1e-5) and greedy_a == greedy_b


def test_long_contexts_are_left_truncated_to_the_trained_length(tokenizer):
    model = model_of("llama", tokenizer)
    lm = AblateLM(model=model, tokenizer=tokenizer, max_length=MAX_LENGTH)
    context, continuation = CORPUS[:400], " the mat."
    (got, _), = lm.loglikelihood(requests("loglikelihood", [(context, continuation)]), disable_tqdm=True)
    whole = tokenizer.encode(context + continuation).ids
    n_cont = len(whole) - len(tokenizer.encode(context).ids)
    window = whole[-(MAX_LENGTH + 1):]
    logp = F.log_softmax(model(torch.tensor([window[:-1]])).logits[0], -1)
    expected = sum(logp[len(window) - 1 - n_cont + j, t].item() for j, t in enumerate(window[-n_cont:]))
    assert got == pytest.approx(expected, abs=1e-4)


def test_greedy_flag_is_true_for_the_argmax_continuation(tokenizer):
    model = model_of("llama", tokenizer)
    lm = AblateLM(model=model, tokenizer=tokenizer, max_length=64)
    context = "The cat sat on the"
    tokens = torch.tensor([tokenizer.encode(context).ids])
    greedy = model.generate(tokens, 3)[0, tokens.shape[1]:].tolist()
    continuation = tokenizer.decode(greedy)
    if tokenizer.encode(context + continuation).ids[tokens.shape[1]:] != greedy:
        pytest.skip("the greedy tokens do not re-tokenize to themselves")
    (_, is_greedy), = lm.loglikelihood(requests("loglikelihood", [(context, continuation)]), disable_tqdm=True)
    assert is_greedy


@pytest.mark.parametrize("variant", ["llama", "hymba"])
def test_rolling_loglikelihood_is_the_text_tasks_loss(variant, tokenizer):
    """The text task's validation windows over [end-of-text] + document give the same total loss as
    lm-eval's rolling windows over the document (a whole number of windows, so neither drops any)."""
    model = model_of(variant, tokenizer)
    doc_tokens = tokenizer.encode(CORPUS).ids[: 4 * MAX_LENGTH]
    document = tokenizer.decode(doc_tokens)
    assert tokenizer.encode(document).ids == doc_tokens
    lm = AblateLM(model=model, tokenizer=tokenizer, max_length=MAX_LENGTH, batch_size=2)
    (rolling,) = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(document,)]), disable_tqdm=True)
    stream = torch.tensor([tokenizer.token_to_id("<|endoftext|>")] + doc_tokens)
    windows = Windows(stream, MAX_LENGTH)
    assert len(windows) == 4
    total = 0.0
    with torch.no_grad():
        for i in range(len(windows)):
            inputs, labels = windows[i]
            logits = model(inputs[None]).logits[0]
            total -= F.cross_entropy(logits, labels, reduction="sum").item()
    assert rolling == pytest.approx(total, rel=1e-5)
    assert math.exp(-rolling / len(doc_tokens)) > 1


@pytest.mark.parametrize("variant", ["llama", "hymba"])
def test_generate_until_is_greedy_generate_cut_at_the_stop_string(variant, tokenizer):
    model = model_of(variant, tokenizer)
    lm = AblateLM(model=model, tokenizer=tokenizer, max_length=64, batch_size=4)
    prompts = ["The cat sat on", "The dog", "A bird sang in the", "The cat sat on"]
    free = [tokenizer.decode(model.generate(torch.tensor([tokenizer.encode(p).ids]), 12)[0].tolist()[
        len(tokenizer.encode(p).ids):]) for p in prompts]
    got = lm.generate_until(requests("generate_until", [(p, {"until": [], "max_gen_toks": 12}) for p in prompts]),
                            disable_tqdm=True)
    assert got == free
    # a stop string that the free generation contains: the text before it, and decoding stopped there
    stop = free[0][len(free[0]) // 2:][:2] or free[0][:1]
    (cut,) = lm.generate_until(requests("generate_until", [(prompts[0], {"until": [stop], "max_gen_toks": 12})]),
                               disable_tqdm=True)
    assert cut == free[0].split(stop)[0]


def test_sampling_is_refused(tokenizer):
    from ablate.config import ConfigError

    lm = AblateLM(model=model_of("llama", tokenizer), tokenizer=tokenizer, max_length=64)
    with pytest.raises(ConfigError, match="greedily"):
        lm.generate_until(requests("generate_until", [("The", {"until": ["\n"], "do_sample": True})]))
