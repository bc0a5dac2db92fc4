"""Block compilation is resolved with the kernels: auto means on with a GPU, off on the CPU."""

import pytest

from ablate.ops.backends import BackendError, resolve


def test_compile_auto_is_off_on_cpu_and_explicit_choices_are_kept():
    assert resolve("auto", "cpu").compile is False
    assert resolve("auto", "cpu", compile="auto").compile is False
    assert resolve("torch", "cpu", compile="on").compile is True
    assert resolve("auto", "cpu", compile="off").as_dict()["compile"] is False


def test_unknown_compile_choice_is_an_error_naming_the_allowed_values():
    with pytest.raises(BackendError, match="auto, on, off"):
        resolve("auto", "cpu", compile="yes")


def test_cpu_resolves_to_the_cpu_paths():
    from ablate.ops.conv1d import native as native_conv
    from ablate.ops.gated_norm import native as native_norm
    from ablate.ops.scan import native as native_scan
    from ablate.ops.ssd import native as native_ssd

    b = resolve("auto", "cpu")
    assert (b.scan, b.ssd, b.conv1d, b.gated_norm) == (
        "native" if native_scan.available() else "loop", "native" if native_ssd.available() else "headmajor",
        "native" if native_conv.available() else "shifts", "native" if native_norm.available() else "torch")
    b = resolve("torch", "cpu")  # pure torch: the loop scan
    assert (b.scan, b.ssd, b.conv1d, b.gated_norm) == ("loop", "headmajor", "shifts", "torch")


def test_the_decoding_step_follows_the_backend_asked_for():
    # the fused Triton step kernels (ops/step) are chosen by Backends.step: never on the CPU, and
    # never when pure torch was asked for, on any device; the mixers pass it to every step op
    import torch

    from ablate.ops import step as step_ops

    assert resolve("auto", "cpu").step == "torch"
    assert resolve("torch", "cuda").step == "torch"
    t = torch.zeros(2)
    assert step_ops.fused(t, impl="torch") is None and step_ops.fused(t) is None  # CPU tensors
    with pytest.raises(ValueError, match="allowed: triton, torch"):
        step_ops.fused(t, impl="cuda")
