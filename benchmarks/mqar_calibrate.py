"""MQAR calibration for the CPU-sized default sweep: how many steps a model needs to learn recall.

A bare training loop (single thread; the package's LM and optimizer/schedule code) that prints the
training loss and test accuracy every 100 steps, so one can see when (if) the induction circuit
forms. Results and conclusions: benchmarks/MQAR_CALIBRATION.md.

    python benchmarks/mqar_calibrate.py llama --layers 2 --d-model 64 --batch 64 --mix
    python benchmarks/mqar_calibrate.py llama --layers 6 --set mlp.kind=none
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from ablate.config import override, parse_assignment
from ablate.model import LM
from ablate.tasks.mqar import Segment, generate
from ablate.train.recipe import RecipeConfig, build_optimizer
from ablate.variants import load_variant


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variant")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seq", type=int, default=64, help="training and test sequence length")
    p.add_argument("--mix", action="store_true", help="train on (seq,4)+(seq,2) instead of (seq,4) only")
    p.add_argument("--test-pairs", type=int, default=4)
    p.add_argument("--examples", type=int, default=10000, help="training examples per segment (x2 without --mix)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale-out", action="store_true", help="output projections x 1/sqrt(2 layers)")
    p.add_argument("--zero-out", action="store_true", help="output projections (mixers' and MLPs') start at zero")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model override")
    return p.parse_args()


def build(args) -> LM:
    cfg = load_variant(args.variant).model
    sets = {"size.d_model": args.d_model, "size.n_layers": args.layers, "size.vocab_size": args.vocab,
            "attention.n_heads": 2, "attention.n_kv_heads": 2, "mamba.d_state": 4}
    sets.update(parse_assignment(text) for text in args.set)
    for key, value in sets.items():
        cfg = override(cfg, key, value)
    model = LM(cfg)
    if args.scale_out:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("out_proj.weight", "down.weight")):
                    p.mul_(1 / math.sqrt(2 * args.layers))
    if args.zero_out:  # every block starts as the identity: the residual stream is the embedding alone
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("out_proj.weight", "down.weight")):
                    p.zero_()
    return model


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = build(args)
    segments = [(4, args.examples), (2, args.examples)] if args.mix else [(4, 2 * args.examples)]
    parts = [generate(Segment(seq_len=args.seq, n_pairs=k, n_examples=n), args.vocab, 0.01, seed)
             for seed, (k, n) in enumerate(segments, start=1)]
    X, Y = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
    Xt, Yt = generate(Segment(seq_len=args.seq, n_pairs=args.test_pairs, n_examples=500), args.vocab, 0.01, 2**31)
    opt, sched = build_optimizer(model, RecipeConfig(lr=args.lr, weight_decay=args.wd, warmup_steps=50), args.steps)
    start = time.time()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(X), (args.batch,))
        loss = F.cross_entropy(model(X[idx]).logits.flatten(0, 1), Y[idx].flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            with torch.no_grad():
                mask = Yt != -100
                acc = ((model(Xt).logits.argmax(-1) == Yt) & mask).sum() / mask.sum()
            print(f"step {step}: loss {loss.item():.3f}, test acc {acc.item():.3f}, {time.time() - start:.0f} s",
                  flush=True)


if __name__ == "__main__":
    main()
