"""Rotary position embedding of the attention path's q and k. ``rope(..., impl=NAME)`` dispatches to
one implementation; the name comes from ``ops.backends.resolve`` and is recorded."""

from ablate.ops.rope import reference, rotation

# torch: autograd through the formula (every device); rotation: hand-written backward (the CPU)
IMPLS = {"torch": reference.rope, "rotation": rotation.rope}


def rope(x, pos, theta: float, impl: str = "torch"):
    return IMPLS[impl](x, pos, theta)


__all__ = ["rope", "IMPLS"]
