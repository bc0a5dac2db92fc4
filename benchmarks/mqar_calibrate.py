"""MQAR calibration for the CPU-sized default sweep: how many steps a model needs to learn recall.

A bare training loop (same LM, optimizer and schedule code as the recipe, single thread) that
prints test accuracy every 100 steps. Environment: MIX=1 trains on (64,4)+(64,2) instead of (64,4)
only; TKV = pairs in the test segment (default 4); STEPS; B = batch; SCALE=1 shrinks output
projections by 1/sqrt(2 L) (tried, did not help).

    python benchmarks/mqar_calibrate.py VARIANT LR WD D_MODEL N_LAYERS VOCAB [key=value ...]

Results and conclusions: benchmarks/MQAR_CALIBRATION.md.
"""
import os
import sys
import time

import torch
import torch.nn.functional as F
from ablate.config import load_variant, override
from ablate.model import LM
from ablate.tasks.mqar import generate, Segment
from ablate.train.recipe import RecipeConfig, build_optimizer
torch.set_num_threads(1); torch.manual_seed(0)
variant, lr, wd, d, L_, V = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
cfg = load_variant(variant).model
for k,v in [("size.d_model",d),("size.n_layers",L_),("size.vocab_size",V),("attention.n_heads",2),("attention.n_kv_heads",2),("mamba.d_state",4)]:
    cfg = override(cfg,k,v)
extra = sys.argv[7:]
for e in extra:
    k,v=e.split("="); import yaml; cfg=override(cfg,k,yaml.safe_load(v))
m = LM(cfg)
if os.environ.get("SCALE"):
    import math
    with torch.no_grad():
        for n,p in m.named_parameters():
            if n.endswith("out_proj.weight") or n.endswith("down.weight"):
                p.mul_(1/math.sqrt(2*L_))
import os
if os.environ.get("MIX"):
    X1,Y1 = generate(Segment(seq_len=64,n_pairs=4,n_examples=10000),V,0.01,1)
    X2,Y2 = generate(Segment(seq_len=64,n_pairs=2,n_examples=10000),V,0.01,3)
    X=torch.cat([X1,X2]); Y=torch.cat([Y1,Y2])
else:
    X,Y = generate(Segment(seq_len=64,n_pairs=4,n_examples=20000),V,0.01,1)
Xt,Yt = generate(Segment(seq_len=64,n_pairs=int(os.environ.get("TKV","4")),n_examples=500),V,0.01,2**31)
steps=int(os.environ.get('STEPS','1500'))
opt,sched = build_optimizer(m, RecipeConfig(lr=lr, weight_decay=wd, warmup_steps=50), steps)
t=time.time()
for s in range(steps):
    i = torch.randint(0,len(X),(int(os.environ.get('B','64')),))
    loss = F.cross_entropy(m(X[i]).logits.flatten(0,1), Y[i].flatten(), ignore_index=-100)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(),1.0); opt.step(); sched.step()
    if (s+1)%100==0:
        with torch.no_grad():
            lg=m(Xt).logits; mask=Yt!=-100; acc=((lg.argmax(-1)==Yt)&mask).sum()/mask.sum()
        print(variant, lr, wd, d, s+1, round(loss.item(),3), round(acc.item(),3), round(time.time()-t), flush=True)
