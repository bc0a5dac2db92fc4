"""One model for every variant: embedding, meta tokens, the layer plan, final norm, tied head.

    h = [meta tokens ; embed(tokens)]            meta prepended once, RoPE positions 0..n_meta-1
    for each layer:  h = h + mixer(norm(h));  h = h + mlp(norm(h))     (pre-norm residual)
    logits = embed.weight @ final_norm(h)[n_meta:]                   meta stripped before the head

KV sharing: a producer layer's post-RoPE K/V is handed to the consumer layers of its group.
Decoding: ``Cache`` holds one LayerCache per layer, sized for ``max_tokens`` when created, plus
the number of positions consumed (on the host, and on the device for captured steps); the first
call (empty cache) prepends the meta tokens, later calls feed only new tokens. ``GraphedStep``
captures one decoding step as a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import ablate.mixers  # noqa: F401  (registers the mixers)
from ablate.config import ModelConfig
from ablate.layers import RMSNorm, SwiGLU, no_weight_decay, swiglu_hidden
from ablate.mixers.base import Context, LayerCache, LayerSpec, Mixer, SharedKV
from ablate.ops.backends import Backends
from ablate.plan import expand
from ablate.registry import MIXERS


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, spec: LayerSpec, backends: Backends):
        super().__init__()
        d = cfg.size.d_model
        self.spec = spec
        self.mixer_norm = RMSNorm(d, cfg.norm_eps)
        self.mixer: Mixer = MIXERS.get(spec.mixer)(cfg, spec, backends)
        self.mlp = None
        if cfg.mlp.kind == "swiglu":
            self.mlp_norm = RMSNorm(d, cfg.norm_eps)
            self.mlp = SwiGLU(d, swiglu_hidden(d, cfg.mlp.hidden))

    def forward(self, h: Tensor, ctx: Context):
        out = self.mixer(self.mixer_norm(h), ctx)
        h = h + out.y
        if self.mlp is not None:
            h = h + self.mlp(self.mlp_norm(h))
        return h, out


@dataclass
class Cache:
    layers: list[LayerCache]
    max_tokens: int  # real tokens (meta excluded) the cache was sized for
    length: int = 0  # positions consumed so far, meta tokens included
    next_pos: Tensor | None = None  # `length` on the device: a captured step reads and advances it

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self.layers)

    def tensors(self) -> list[Tensor]:
        fields = ("k", "v", "pos", "ssm", "conv")
        found = [getattr(c, f) for c in self.layers for f in fields] + [self.next_pos]
        return [t for t in found if t is not None]


def check_room(cache: Cache, n_meta: int, new: int) -> None:
    held = cache.length - n_meta if cache.length else 0  # real tokens already in the cache
    if held + new > cache.max_tokens:
        raise ValueError(f"the decoding cache holds {cache.max_tokens} tokens and has {held}; {new} more do not fit "
                         "(LM.new_cache(max_tokens))")


@dataclass
class LMOutput:
    logits: Tensor  # (B, T, vocab), meta positions removed
    maps: list[dict[str, Tensor]] = field(default_factory=list)  # per layer, over all positions


class LM(nn.Module):
    def __init__(self, cfg: ModelConfig, backends: Backends | None = None):
        super().__init__()
        self.cfg = cfg
        self.plan = expand(cfg)
        self.backends = backends or Backends()
        d = cfg.size.d_model
        self.embed = nn.Embedding(cfg.size.vocab_size, d)
        self.n_meta = cfg.n_meta
        if cfg.n_meta:
            # std 1 as in Hymba (torch.randn); set in reset_parameters
            self.meta = no_weight_decay(nn.Parameter(torch.empty(cfg.n_meta, d)))
            self.meta._no_reinit = True
        self.blocks = nn.ModuleList(Block(cfg, spec, self.backends) for spec in self.plan)
        # Compiled views of the same blocks (a plain list, so the parameters are registered once),
        # used for full-sequence forwards; decoding steps change shapes every call and stay eager.
        self.compiled_blocks = [torch.compile(b) for b in self.blocks] if self.backends.compile else None
        self.final_norm = RMSNorm(d, cfg.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Generic N(0, init_std) for linear/conv/embedding weights (the embedding: embed_init_std
        when set), zero biases, then each module's own init (SSM A/D/dt, norms, meta tokens)."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Embedding)):
                if not getattr(module.weight, "_no_reinit", False):
                    nn.init.normal_(module.weight, std=std)
                bias = getattr(module, "bias", None)
                if bias is not None and not getattr(bias, "_no_reinit", False):
                    nn.init.zeros_(bias)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()
        if self.cfg.embed_init_std is not None:  # the tied embedding is also the output head
            nn.init.normal_(self.embed.weight, std=self.cfg.embed_init_std)
        for block in self.blocks:
            block.mixer.reset_parameters()
        if self.n_meta:
            nn.init.normal_(self.meta, std=1.0)

    def new_cache(self, max_tokens: int) -> Cache:
        """An empty decoding cache for up to max_tokens tokens (prompt and generated)."""
        return Cache([LayerCache(max_tokens) for _ in self.blocks], max_tokens)

    def forward(self, tokens: Tensor, cache: Cache | None = None, return_maps: bool = False,
                last_only: bool = False) -> LMOutput:
        """tokens: (B, T). With a cache, decoding continues from cache.length and the cache is
        updated in place; without one, this is a full forward over a fresh sequence. last_only:
        logits at the last position only, (B, 1, vocab) (a prefill before decoding: at B=64 and 8k
        tokens the logits of every position are 33 GB in bf16)."""
        if last_only and tokens.shape[1] == 0:
            raise ValueError("last_only=True needs at least one token (the last position's logits)")
        h = self.embed(tokens)
        start = 0 if cache is None else cache.length
        n_prefix = self.n_meta if start == 0 else 0
        if cache is not None:
            check_room(cache, self.n_meta, tokens.shape[1])
        if n_prefix:
            h = torch.cat([self.meta.to(h.dtype).expand(h.shape[0], -1, -1), h], dim=1)
        pos = torch.arange(h.shape[1], device=h.device)
        if start:  # from the device counter, so a captured step reads the current position
            pos = pos + cache.next_pos
        shared: dict[int, SharedKV] = {}
        maps = []
        fast = self.compiled_blocks is not None and cache is None and not return_maps
        for i, block in enumerate(self.blocks):
            spec = block.spec
            ctx = Context(pos=pos, n_meta=self.n_meta,
                          cache=None if cache is None else cache.layers[i],
                          shared_kv=shared.get(spec.kv_group) if spec.kv_role == "consumer" else None,
                          want_map=return_maps)
            h, out = (self.compiled_blocks[i] if fast else block)(h, ctx)
            if spec.kv_role == "producer":
                shared[spec.kv_group] = out.kv
            maps.append(out.maps)
        if cache is not None:
            cache.length = start + h.shape[1]
            if cache.next_pos is None:
                cache.next_pos = torch.full((), cache.length, dtype=torch.long, device=h.device)
            else:
                cache.next_pos.add_(h.shape[1])
        h = self.final_norm(h[:, -1:] if last_only else h[:, n_prefix:])
        return LMOutput(h @ self.embed.weight.T, maps if return_maps else [])

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None, cuda_graph: bool | None = None,
                 compile_step: bool = False, stop: Callable[[Tensor], bool] | None = None) -> Tensor:
        """Greedy (temperature 0) or sampled continuation with the decoding cache; (B, T + new).
        cuda_graph (default: on for CUDA inputs) replays each step as one captured graph;
        compile_step also compiles the step first: 2-3.4x faster steps at 350M, but a minute or
        two to build, again for every new prompt length, so for long generations only.
        stop(new tokens so far, (B, n)) -> True ends decoding early (e.g. every row hit a stop
        string); the output then has fewer than max_new_tokens new tokens."""
        cache = self.new_cache(prompt.shape[1] + max_new_tokens)
        logits = self(prompt, cache, last_only=True).logits[:, -1]
        graphed = prompt.is_cuda if cuda_graph is None else cuda_graph
        step = None
        if graphed and max_new_tokens > 1:
            step = GraphedStep(self, cache, prompt.shape[0], compile=compile_step)
        out = [prompt]
        for i in range(max_new_tokens):
            if temperature > 0:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            out.append(nxt)
            if stop is not None and stop(torch.cat(out[1:], dim=1)):
                break
            if i + 1 < max_new_tokens:
                logits = step(nxt) if step else self(nxt, cache).logits[:, -1]
        return torch.cat(out, dim=1)


class GraphedStep:
    """One decoding step (B, 1) -> last logits (B, vocab), captured as a CUDA graph.

    Eager decoding launches every op of every layer from Python (thousands of small kernels per
    token); a replay launches them all at once. The cache must be prefilled first: its tensors are
    allocated then, and the step updates them in place. Each call advances the cache by one token
    and returns the same logits tensor, overwritten by the next call.
    """

    def __init__(self, model: LM, cache: Cache, batch: int, compile: bool = False):
        if cache.length == 0:
            raise ValueError("GraphedStep needs a prefilled cache (run the prompt through the model first)")
        self.cache, self.n_meta = cache, model.n_meta
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=cache.next_pos.device)
        # compile=True first fuses the step's small ops with torch.compile (fewer kernels to replay)
        step = torch.compile(model, dynamic=False) if compile else model
        saved_length, saved = cache.length, [t.clone() for t in cache.tensors()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # one warm-up step: compilation and lazy setup stay outside the capture
            step(self.tokens, cache)
        torch.cuda.current_stream().wait_stream(side)
        cache.length = saved_length  # the capture sees the same host state as the warm-up (no recompile)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):  # records kernels without running them
            self.logits = step(self.tokens, cache).logits[:, -1]
        for t, s in zip(cache.tensors(), saved, strict=True):  # undo the warm-up step
            t.copy_(s)
        cache.length = saved_length

    def __call__(self, tokens: Tensor) -> Tensor:
        check_room(self.cache, self.n_meta, 1)  # a replay writes its slot without any check
        self.tokens.copy_(tokens)
        self.graph.replay()
        self.cache.length += 1
        return self.logits
