"""Causal depthwise conv1d and its single-step update."""

from ablate.ops.conv1d.reference import causal_conv1d, causal_conv1d_loop, conv_step

__all__ = ["causal_conv1d", "causal_conv1d_loop", "conv_step"]
