"""Low-overhead kernel launches for the hot paths (decode run() is called once per layer per step).

``kernel[grid](...)`` re-binds and re-specializes every argument in Python on each call (tens of
microseconds for a kernel with fifty arguments). ``launch`` does that once: the first call goes
through Triton's JIT (compiling if needed) and keeps the ``CompiledKernel``; later calls with the
same key call its C launcher directly. The key holds the device and everything Triton specializes
on (every int argument exactly, every pointer's 16-byte alignment, the constexprs and launch
options), so a cached kernel is only reused where Triton itself would pick the same binary.

The direct call uses Triton's launcher convention of versions 3.2 to 3.9 (``CompiledKernel.run(grid
x, y, z, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook, *args)``). On
any other version, under the interpreter, with ``FLASHINFER_TRITON_FAST_LAUNCH=0``, or if a direct
call is ever refused, every launch takes the public ``kernel[grid](...)`` path instead.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Tuple

import triton

from ._utils import interpreter_active

FAST_LAUNCH_VERSIONS = ((3, 2), (3, 9))  # inclusive range of Triton versions the direct call is known for

_CACHE: Dict[Tuple, Any] = {}


def triton_version() -> Tuple[int, int]:
    major, minor = triton.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def fast_launch_supported(version: Tuple[int, int] = None) -> bool:
    version = triton_version() if version is None else version
    lo, hi = FAST_LAUNCH_VERSIONS
    return lo <= version <= hi and os.environ.get("FLASHINFER_TRITON_FAST_LAUNCH", "1") != "0"


try:  # the raw stream getter Triton's own CUDA driver uses
    from torch._C import _cuda_getCurrentRawStream as _raw_stream
except Exception:  # noqa: BLE001
    _raw_stream = None

_FAST_OK = [fast_launch_supported() and _raw_stream is not None]


def launch(kernel, grid: Tuple[int, int, int], args: Tuple, constexprs: Dict[str, Any], num_warps: int,
           num_stages: int, key: Tuple, prehashed: bool = False):
    """Launch ``kernel`` over ``grid`` (3 ints) with runtime ``args`` (positional, in signature order,
    all before the constexprs) and ``constexprs`` (keyword, in signature order). ``key`` must cover
    what Triton specializes the runtime args on: each pointer's 16-byte alignment and each int's
    value (the caller builds it from what it knows is fixed, which is cheaper than scanning args).
    With ``prehashed`` the key already identifies kernel, constexprs and launch options too."""
    if interpreter_active() or not _FAST_OK[0]:
        kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        return
    device = args[0].device.index
    full_key = (device, key) if prehashed else (device, id(kernel), num_warps, num_stages,
                                                tuple(constexprs.values()), key)
    compiled = _CACHE.get(full_key)
    if compiled is None:
        compiled = kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        if compiled is None or not hasattr(compiled, "run"):
            _FAST_OK[0] = False
            return
        _CACHE[full_key] = compiled
        return  # this call already launched through the JIT
    try:
        compiled.run(grid[0], grid[1], grid[2], _raw_stream(device), compiled.function, compiled.packed_metadata,
                     None, None, None, *args, *constexprs.values())
    except (TypeError, ValueError, AttributeError):
        # The launcher refused the call before launching (another calling convention): never again.
        _FAST_OK[0] = False
        kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
