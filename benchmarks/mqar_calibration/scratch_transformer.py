"""The control of MQAR calibration round 4 (benchmarks/MQAR_CALIBRATION.md): a from-scratch pre-norm
transformer (tied embedding, RMSNorm, RoPE attention through SDPA, no MLP), trained on the same MQAR
data with the package's optimizer and schedule, to tell a bug in ablate's model from a property of
the task. `--impl ablate` trains ablate's LM (llama without MLP) in the same loop. Written for that
one check (a scratch script, kept so the numbers can be rerun), e.g.

    python benchmarks/mqar_calibration/scratch_transformer.py --layers 4 --steps 1500 --emb-std 1.0 --stop 0.9
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ablate.tasks.mqar import Segment, generate
from ablate.train.recipe import RecipeConfig, build_optimizer


def rope(x, theta=10000.0):
    T, D = x.shape[-2], x.shape[-1]
    half = D // 2
    inv = theta ** (-torch.arange(half, dtype=torch.float32) / half)
    ang = torch.arange(T).float()[:, None] * inv[None]
    c, s = ang.cos(), ang.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], -1)


class RMS(nn.Module):
    def __init__(s, d):
        super().__init__()
        s.w = nn.Parameter(torch.ones(d))

    def forward(s, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * s.w


class Attn(nn.Module):
    def __init__(s, d, h, qk_scale=None):
        super().__init__()
        s.h = h
        s.q = nn.Linear(d, d, bias=False)
        s.k = nn.Linear(d, d, bias=False)
        s.v = nn.Linear(d, d, bias=False)
        s.o = nn.Linear(d, d, bias=False)
        s.scale = qk_scale

    def forward(s, x):
        B, T, D = x.shape
        def sp(t):
            return t.view(B, T, s.h, -1).transpose(1, 2)

        q, k, v = rope(sp(s.q(x))), rope(sp(s.k(x))), sp(s.v(x))
        if getattr(s, "prev", False):
            i = torch.arange(T)
            m = i[None, :] == (i[:, None] - 1).clamp(min=0)
            y0 = F.scaled_dot_product_attention(q[:, :1], k[:, :1], v[:, :1], attn_mask=m)
            y1 = F.scaled_dot_product_attention(q[:, 1:], k[:, 1:], v[:, 1:], is_causal=True, scale=s.scale)
            y = torch.cat([y0, y1], 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=s.scale)
        return s.o(y.transpose(1, 2).reshape(B, T, D))


class Mini(nn.Module):
    def __init__(s, V, d, L, h, std=0.02, emb_std=None, out_scale=1.0, qk_scale=None):
        super().__init__()
        s.emb = nn.Embedding(V, d)
        s.ls = 1.0
        s.mult = 1.0
        s.norms = nn.ModuleList(RMS(d) for _ in range(L))
        s.attn = nn.ModuleList(Attn(d, h, qk_scale) for _ in range(L))
        s.fn = RMS(d)
        for m in s.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
        if emb_std:
            nn.init.normal_(s.emb.weight, std=emb_std)
        with torch.no_grad():
            for a in s.attn:
                a.o.weight.mul_(out_scale)

    def forward(s, x):
        h = s.emb(x) * s.mult
        for n, a in zip(s.norms, s.attn, strict=True):
            h = h + a(n(h))
        return s.ls * (s.fn(h) @ s.emb.weight.T)


p = argparse.ArgumentParser()
p.add_argument("--impl", default="mini")
p.add_argument("--layers", type=int, default=2)
p.add_argument("--d", type=int, default=64)
p.add_argument("--heads", type=int, default=2)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--wd", type=float, default=0.1)
p.add_argument("--warmup", type=int, default=50)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--steps", type=int, default=1000)
p.add_argument("--examples", type=int, default=40000)
p.add_argument("--std", type=float, default=0.02)
p.add_argument("--emb-std", type=float, default=None)
p.add_argument("--out-scale", type=float, default=1.0)
p.add_argument("--qk-scale", type=float, default=None)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--every", type=int, default=100)
p.add_argument("--stop", type=float, default=0.99)
p.add_argument("--set", action="append", default=[])
p.add_argument("--logit-scale", type=float, default=1.0)
p.add_argument("--prev-head", action="store_true")
p.add_argument("--schedule", default="cosine")
p.add_argument("--emb-mult", type=float, default=1.0)
p.add_argument("--emb-lr-mult", type=float, default=1.0)
a = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(a.seed)
V = 256
if a.impl == "mini":
    model = Mini(V, a.d, a.layers, a.heads, a.std, a.emb_std, a.out_scale, a.qk_scale)
    model.ls = a.logit_scale
    model.attn[0].prev = a.prev_head
    model.mult = a.emb_mult
else:
    from ablate.config import override, parse_assignment
    from ablate.model import LM
    from ablate.variants import load_variant

    cfg = load_variant("llama").model
    sets = {
        "size.d_model": a.d,
        "size.n_layers": a.layers,
        "size.vocab_size": V,
        "attention.n_heads": a.heads,
        "attention.n_kv_heads": a.heads,
        "mlp.kind": "none",
        "init_std": a.std,
    }
    sets.update(parse_assignment(t) for t in a.set)
    for k, v in sets.items():
        cfg = override(cfg, k, v)
    lm = LM(cfg)
    if a.emb_std:
        nn.init.normal_(lm.embed.weight, std=a.emb_std)
    with torch.no_grad():
        for n_, p_ in lm.named_parameters():
            if n_.endswith("out_proj.weight"):
                p_.mul_(a.out_scale)
    model = lambda x: lm(x).logits  # noqa: E731 (an attribute is set on it below)
    model.parameters = lm.parameters
    opt_model = lm
parts = [generate(Segment(seq_len=64, n_pairs=k, n_examples=a.examples), V, 0.01, seed) for seed, k in ((1, 4), (2, 2))]
X, Y = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
Xt, Yt = generate(Segment(seq_len=64, n_pairs=4, n_examples=500), V, 0.01, 2**31)
opt, sched = build_optimizer(
    model if a.impl == "mini" else opt_model,
    RecipeConfig(lr=a.lr, weight_decay=a.wd, warmup_steps=a.warmup, schedule=a.schedule),
    a.steps,
)
if a.emb_lr_mult != 1.0:
    from ablate.train.recipe import lr_factor

    rc = RecipeConfig(lr=a.lr, weight_decay=a.wd, warmup_steps=a.warmup, schedule=a.schedule)
    mod = model if a.impl == "mini" else opt_model
    E = mod.emb.weight if a.impl == "mini" else mod.embed.weight
    rest = [p_ for p_ in mod.parameters() if p_ is not E]
    groups = [
        {"params": [E], "weight_decay": a.wd, "lr": a.lr * a.emb_lr_mult},
        {"params": [p_ for p_ in rest if p_.dim() >= 2], "weight_decay": a.wd, "lr": a.lr},
        {"params": [p_ for p_ in rest if p_.dim() < 2], "weight_decay": 0.0, "lr": a.lr},
    ]
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s_: lr_factor(s_, rc, a.steps))
t0 = time.time()
curve = []
for step in range(1, a.steps + 1):
    idx = torch.randint(0, len(X), (a.batch,))
    loss = F.cross_entropy(model(X[idx]).flatten(0, 1), Y[idx].flatten(), ignore_index=-100)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
    opt.step()
    sched.step()
    if step % a.every == 0:
        with torch.no_grad():
            m = Yt != -100
            acc = (((model(Xt).argmax(-1) == Yt) & m).sum() / m.sum()).item()
        curve.append(f"{step}:{acc:.3f}")
        print(f"step {step}: loss {loss.item():.3f} acc {acc:.3f} {time.time() - t0:.0f}s", flush=True)
        if acc >= a.stop:
            break
print("CURVE", " ".join(curve), vars(a))
