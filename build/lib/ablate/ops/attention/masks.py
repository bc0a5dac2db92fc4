"""Attention visibility from absolute positions.

A key at position j is visible to a query at position i when j <= i and either the layer is
global, j is a meta token (j < n_meta: always visible, as in Hymba), or i - j < window (the
window counts the query itself, so a query sees `window` local positions).
"""

from __future__ import annotations

from torch import Tensor


def visible(q_pos: Tensor, k_pos: Tensor, window: int | None, n_meta: int) -> Tensor:
    """(Tq,) and (Tk,) absolute positions -> bool (Tq, Tk)."""
    i, j = q_pos[:, None], k_pos[None, :]
    mask = j <= i
    if window is not None:
        mask = mask & ((i - j < window) | (j < n_meta))
    return mask
