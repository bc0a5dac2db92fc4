"""`python -m benchmarks.eval_speed`: lm-eval items per second through the ablate adapter, per
request type, on the local task files; appended to benchmarks/RESULTS.md with the command and
the machine. A benchmark, not a test.

    python -m benchmarks.eval_speed --size tiny --device cpu            # a tiny model on the CPU
    python -m benchmarks.eval_speed --size 125M --device cuda           # Hymba's 125M shapes on a GPU

Tasks timed: piqa (loglikelihood, 2 choices), hellaswag (4 longer choices), squad_completion
(generate_until, at most 48 tokens), wikitext (loglikelihood_rolling over whole articles). The
model is untrained: speed does not depend on the weights, except where a generation stops (at
the first newline of its text, or after 48 tokens), so generate_until rates are indicative. The
tokenizer is a BPE trained on Tiny Shakespeare, with the vocabulary the size asks for.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ablate.cli import comma_list

SIZES = {
    "tiny": {"size.d_model": 64, "size.n_layers": 4, "attention.n_heads": 2, "attention.n_kv_heads": 2,
             "mlp.hidden": 128, "vocab": 2048, "seq_len": 256},
    "125M": {"size.d_model": 512, "size.n_layers": 24, "attention.n_heads": 8, "attention.n_kv_heads": 4,
             "mlp.hidden": 1664, "mamba2.head_dim": 64, "vocab": 32000, "seq_len": 2048},
}
TASKS = ("piqa", "hellaswag", "squad_completion", "wikitext")


def build(variant: str, size: str, device: str, cache: Path):
    from ablate.config import override
    from ablate.evaluate.lm_tasks import data_file
    from ablate.model import LM
    from ablate.tasks.text import TextConfig, load_tokenizer
    from ablate.variants import load_variant

    shape = dict(SIZES[size])
    vocab, seq_len = shape.pop("vocab"), shape.pop("seq_len")
    text = data_file("tinyshakespeare/input.txt").read_text()
    tokenizer = load_tokenizer(TextConfig(train=("x",), val=("x",), vocab_size=vocab, cache_dir=str(cache)), text)
    cfg = load_variant(variant).model
    shape["size.vocab_size"] = tokenizer.get_vocab_size()
    if cfg.layout.window is not None:
        shape["layout.window"] = min(cfg.layout.window, seq_len // 2)
    for key, value in shape.items():
        cfg = override(cfg, key, value)
    model = LM(cfg).to(device).eval()
    return model, tokenizer, seq_len, sum(p.numel() for p in model.parameters())


def time_tasks(model, tokenizer, seq_len: int, limit: int, batch_size: int) -> list[dict]:
    from ablate.evaluate.harness import offline_lm_eval
    from ablate.evaluate.lm_tasks import INCLUDE_PATH, data_dir
    from ablate.evaluate.lm_tasks import TASKS as NAMES

    lm_eval, TaskManager = offline_lm_eval()
    from ablate.evaluate.lm_eval_model import AblateLM

    manager = TaskManager(include_path=str(INCLUDE_PATH), metadata={"data_dir": str(data_dir())})
    lm = AblateLM(model=model, tokenizer=tokenizer, max_length=seq_len, batch_size=batch_size)
    rows = []
    for task in TASKS:
        lm_eval.simple_evaluate(model=lm, tasks=[NAMES[task]], task_manager=manager, limit=2,
                                bootstrap_iters=0, verbosity="ERROR")  # warm-up: data, kernels, graphs
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = lm_eval.simple_evaluate(model=lm, tasks=[NAMES[task]], task_manager=manager, limit=limit,
                                      bootstrap_iters=0, verbosity="ERROR", log_samples=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        items = len(out["samples"][NAMES[task]])
        rows.append({"task": task, "items": items, "seconds": round(seconds, 2),
                     "items_per_s": round(items / seconds, 1)})
    return rows


def write(rows: list[dict], out: Path, command: str, machine: str) -> None:
    import platform

    import pandas as pd

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = (f"\n## {stamp} — {machine}\n\ncommand: `{command}`  \ntorch {torch.__version__}, Python "
            f"{platform.python_version()}\n\n### eval speed (lm-eval items/s through the ablate adapter)\n\n"
            + pd.DataFrame(rows).to_markdown(index=False, floatfmt=".2f") + "\n")
    with out.open("a") as f:
        f.write(text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.eval_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", type=comma_list(), default=["llama", "mamba", "hymba"])
    p.add_argument("--size", choices=list(SIZES), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--limit", type=int, default=100, help="items per task")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="benchmarks/RESULTS.md")
    p.add_argument("--cache", default=".cache/text", help="tokenizer cache")
    args = p.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    machine = torch.cuda.get_device_name() if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    rows = []
    for variant in args.variants:
        model, tokenizer, seq_len, params = build(variant, args.size, args.device, Path(args.cache))
        for row in time_tasks(model, tokenizer, seq_len, args.limit, args.batch_size):
            rows.append({"variant": variant, "size": args.size, "params_M": round(params / 1e6, 1),
                         "context": seq_len, **row})
        print(rows[-4:], flush=True)
    write(rows, Path(args.out), "python -m benchmarks.eval_speed " + " ".join(argv), machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
