"""Attention ops: masks from positions, an eager path that returns probabilities (for maps and
tests), and SDPA. ``attention(..., impl=NAME)`` dispatches; the name comes from ``ops.backends``."""

from __future__ import annotations

from torch import Tensor

from ablate.ops.attention import reference, sdpa
from ablate.ops.attention.masks import visible


def attention(q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor,
              window: int | None, n_meta: int, impl: str = "sdpa"):
    """Causal attention over absolute positions (window and always-visible meta prefix)."""
    # As many keys as queries means the keys are this step's own positions (a cached prefix makes
    # them longer), decided from shapes so no device->host sync sits on the training path.
    square = q.shape[2] == k.shape[2]
    if impl == "flex" and square and window is not None:
        from ablate.ops.attention import flex

        if flex.supports(q, v):
            return flex.attention(q, k, v, window, n_meta)
    if impl != "eager" and square and window is None:
        # global causal takes SDPA's causal kernel, no mask built (meta tokens are a prefix, so
        # causal already shows them to everyone)
        return sdpa.attention(q, k, v, None, is_causal=True)
    mask = visible(q_pos, k_pos, window, n_meta)
    if impl == "eager":
        return reference.attention(q, k, v, mask)
    return sdpa.attention(q, k, v, mask)


def attention_probs(q, k, v, q_pos, k_pos, window, n_meta):
    """Output and the softmax probabilities (B, H, Tq, Tk)."""
    return reference.attention(q, k, v, visible(q_pos, k_pos, window, n_meta), return_probs=True)
