"""Token mixers, one file each, all behind the protocol in ``mixers.base``."""

from ablate.mixers import attention, hybrid, mamba, mamba2  # noqa: F401  (register)
