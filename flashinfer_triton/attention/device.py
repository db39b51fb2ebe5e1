"""Facts about the device a tensor lives on, read from that device (never from device 0).

``device_info(device)`` is what config selection and the scheduler key on: the GPU family (for the
tuning table), compute units, shared memory per block and the target the AOT tier compiles for.
Under the Triton interpreter (CPU) it describes a small modelled GPU, so that split-KV paths run
at the interpreter tier's small test sizes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .._utils import interpreter_active

# The interpreter's modelled device: 16 compute units (small batches split, as on a real GPU).
INTERPRETER_COMPUTE_UNITS = 16


@dataclass(frozen=True)
class DeviceInfo:
    name: str            # e.g. "NVIDIA H200", "AMD Instinct MI300X", "interpreter"
    family: str          # tuning-table key: "h200", "h100", "hopper", "cdna", "default"
    backend: str         # "cuda", "hip" or "interpreter"
    arch: str            # "90", "gfx942", ... ("" for the interpreter)
    compute_units: int
    shared_memory: int   # bytes per block (opt-in maximum)
    warp_size: int


def _family(name: str, backend: str, arch: str) -> str:
    lowered = name.lower()
    if backend == "cuda" and arch == "90":
        if "h200" in lowered:
            return "h200"
        if "h100" in lowered or "h800" in lowered:
            return "h100"
        return "hopper"
    if backend == "hip":
        return "cdna"  # MI300X (gfx942), MI355X (gfx950): 64-lane wavefronts, 64 KB of LDS on gfx942
    return "default"


@functools.lru_cache(maxsize=None)
def _info(device_type: str, index: int, interpret: bool) -> DeviceInfo:
    if interpret or device_type == "cpu" or not torch.cuda.is_available():
        return DeviceInfo("interpreter", "default", "interpreter", "", INTERPRETER_COMPUTE_UNITS, 101376, 32)
    props = torch.cuda.get_device_properties(index)
    if torch.version.hip is not None:
        backend, arch = "hip", str(getattr(props, "gcnArchName", "")).split(":")[0]
    else:
        backend, arch = "cuda", f"{props.major}{props.minor}"
    smem = int(getattr(props, "shared_memory_per_block_optin", 0) or getattr(props, "shared_memory_per_block", 49152))
    warp = int(getattr(props, "warp_size", 64 if backend == "hip" else 32))
    return DeviceInfo(props.name, _family(props.name, backend, arch), backend, arch, props.multi_processor_count,
                      smem, warp)


def device_info(device: torch.device) -> DeviceInfo:
    """Facts of ``device`` (a torch.device or anything torch.device accepts)."""
    device = torch.device(device)
    index = device.index if device.index is not None else (
        torch.cuda.current_device() if device.type == "cuda" and torch.cuda.is_available() else 0)
    return _info(device.type, index, interpreter_active())
