"""What the Triton kernel tests share: where they run and how they compare.

On a GPU they are GPU tests (marked gpu, skipped without one by conftest); on the CPU they run only
under Triton's interpreter (TRITON_INTERPRET=1, Triton importable, e.g. PYTHONPATH=/tmp/tri).
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MARKS = [] if INTERPRET and DEVICE == "cpu" else [pytest.mark.gpu]


def rel_err(out, ref):
    """Relative Frobenius error of out against ref, both taken to float64 on the CPU."""
    ref = ref.double().cpu()
    return ((out.double().cpu() - ref).norm() / (ref.norm() + 1e-12)).item()
