"""Shared test utilities: the tier (CPU interpreter or GPU), poisoned outputs, data-derived tolerances."""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
ON_GPU = torch.cuda.is_available() and not INTERPRET
DEVICE = torch.device("cuda") if ON_GPU else torch.device("cpu")
# The interpreter cannot do bfloat16 arithmetic: the CPU tier tests float16 and float32.
LOW_DTYPES = [torch.bfloat16, torch.float16] if ON_GPU else [torch.float16, torch.float32]

requires_gpu = pytest.mark.skipif(not ON_GPU, reason="GPU tier: needs a CUDA/ROCm device")


def gpu_or_cpu(cpu_value, gpu_value):
    """Pick a test size by tier: small on the interpreter, realistic on a GPU."""
    return gpu_value if ON_GPU else cpu_value


def poisoned(shape, dtype, device=DEVICE) -> torch.Tensor:
    """An output buffer full of NaN, so an element the kernel never writes fails the test."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x = x.double()
    ref = ref.double()
    finite = torch.isfinite(ref)
    if not torch.equal(torch.isfinite(x), finite):
        return float("inf")
    scale = ref[finite].abs().max().item() if finite.any() else 1.0
    if not finite.any():
        return 0.0 if torch.equal(x, ref) else float("inf")
    return (x[finite] - ref[finite]).abs().max().item() / max(scale, 1e-30)


def assert_close_to_reference(out: torch.Tensor, ref_exact: torch.Tensor, ref_lowp: torch.Tensor, name="out", factor=2.0):
    """The kernel's error against a float64 oracle must be at most ``factor`` times the error of the
    same reference computed in the low precision (plus one unit of that precision's rounding, so
    an exact low-precision reference does not demand an exact kernel). NaN never passes."""
    assert not torch.isnan(out).any(), f"{name}: NaN in output (an element was not written?)"
    err = _err(out, ref_exact)
    err_ref = _err(ref_lowp, ref_exact)
    eps = torch.finfo(out.dtype).eps if out.dtype.is_floating_point else 0.0
    # float32 kernels reassociate sums (tiles, exp2 with a pre-folded log2 e): a few ulps of slack.
    bound = factor * err_ref + (4 * eps if out.dtype == torch.float32 else eps)
    assert err <= bound, f"{name}: max error {err:.3e} (relative to max |ref|) > bound {bound:.3e} (low-precision reference {err_ref:.3e})"
