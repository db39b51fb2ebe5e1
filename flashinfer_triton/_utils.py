"""Shared helpers for the API layer: argument checks with clear errors, dtype names, device facts.

Nothing here launches a kernel. Checks raise ``ValueError``/``TypeError`` naming the argument and
what was expected; unsupported FlashInfer options raise ``NotImplementedError`` naming the option.
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Optional, Sequence, Union

import torch

LOG2E = 1.4426950408889634

_DTYPE_NAMES = {
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float": torch.float32,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "e4m3": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
    "e5m2": torch.float8_e5m2,
}


def interpreter_active() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def canonicalize_dtype(dtype: Union[str, torch.dtype, None], name: str) -> Optional[torch.dtype]:
    """Accept FlashInfer's dtype spellings ("float16", torch.float16, ...)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype]
    raise ValueError(f"{name}: unknown dtype {dtype!r}; expected one of {sorted(_DTYPE_NAMES)} or a torch.dtype")


def check_tensor(
    name: str,
    t,
    *,
    dtypes: Optional[Iterable[torch.dtype]] = None,
    ndim: Optional[Union[int, Sequence[int]]] = None,
    device: Optional[torch.device] = None,
    last_dim_contiguous: bool = False,
) -> torch.Tensor:
    """Raise a clear error unless ``t`` is a tensor of the expected dtype, rank and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            want = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name}: expected dtype {want}, got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            raise ValueError(f"{name}: expected a {'/'.join(map(str, allowed))}-D tensor, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")
    if last_dim_contiguous and t.dim() > 0 and t.stride(-1) != 1 and t.shape[-1] > 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got strides {t.stride()}")
    return t


def check_shape(name: str, t: torch.Tensor, shape: Sequence[Optional[int]]) -> None:
    """``shape`` entries of None are not checked."""
    ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
    if not ok:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {list(t.shape)}")


def check_int32_index(name: str, t, numel: Optional[int] = None, device=None) -> torch.Tensor:
    # The common case in a few attribute reads (plan() checks three per call); check_tensor words errors.
    if not (isinstance(t, torch.Tensor) and t.dtype == torch.int32 and t.dim() == 1
            and (device is None or t.device == device)):
        check_tensor(name, t, dtypes=(torch.int32,), ndim=1, device=device)
    if numel is not None and t.numel() != numel:
        raise ValueError(f"{name}: expected {numel} entries, got {t.numel()}")
    return t


def num_compute_units(device=None) -> int:
    """Streaming multiprocessors (NVIDIA) or compute units (AMD) of ``device`` (an index, a
    torch.device, or None for the current device); the interpreter's modelled count on the CPU."""
    from .attention.device import device_info

    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    elif isinstance(device, int):
        device = torch.device("cuda", device) if torch.cuda.is_available() else torch.device("cpu")
    return device_info(device).compute_units


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def alibi_slopes(num_heads: int, device) -> torch.Tensor:
    """ALiBi slopes (Press et al.), as in FlashInfer's reference: float32 ``[num_heads]``."""
    n = 2 ** math.floor(math.log2(num_heads))
    m0 = 2.0 ** (-8.0 / n)
    slopes = [m0 ** (i + 1) for i in range(n)]
    if n < num_heads:
        m1 = 2.0 ** (-4.0 / n)
        slopes += [m1 ** (2 * i + 1) for i in range(num_heads - n)]
    return torch.tensor(slopes, dtype=torch.float32, device=device)
