"""Decode tokens/s with the step replayed as a CUDA graph, with and without torch.compile (GPU)."""
import sys
import time

import torch

from ablate.bench import core_model
from ablate.model import LM, GraphedStep
from ablate.ops.backends import resolve

context, new = 8000, 64
for name in sys.argv[1:]:
    cfg = core_model(name, "350M")
    model = LM(cfg, resolve("auto", "cuda")).cuda().bfloat16().eval()
    prompt = torch.randint(0, cfg.size.vocab_size, (1, context), device="cuda")
    with torch.no_grad():
        for compile_ in (False, True):
            cache = model.new_cache(context + new + 4)
            nxt = model(prompt, cache).logits[:, -1].argmax(-1, keepdim=True)
            t0 = time.perf_counter()
            step = GraphedStep(model, cache, 1, compile=compile_)
            built = time.perf_counter() - t0
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(new):
                nxt = step(nxt).argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            print(f"{name} compile={compile_}: {new / (time.perf_counter() - t0):.1f} tok/s (built in {built:.0f} s)",
                  flush=True)
