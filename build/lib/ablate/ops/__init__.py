"""Kernels. One folder per op; each has a pure-torch reference that is the ground truth for tests
and the CPU path. Fast implementations are chosen once per run by ``ops.backends.resolve``."""
