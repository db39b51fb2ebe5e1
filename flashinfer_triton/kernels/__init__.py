"""@triton.jit kernels only; one module per kernel family.

Every module that holds kernels defines ``aot_configs() -> list[AotConfig]``: each kernel with every
constexpr configuration its launcher can pick (or a covering set of them, as the attention family
documents). ``tests/test_aot_compile.py`` compiles all of them for ``cuda:90`` (H100/H200) and
``hip:gfx942`` (MI300X), and a spot set (every value of every constexpr and type at least once)
for ``cuda:80`` (A100) and ``hip:gfx950`` (MI355X), on a CPU-only machine.
"""

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List


@dataclass(frozen=True)
class AotConfig:
    """One kernel specialization: ``signature`` maps every argument to a Triton type string
    ("*fp16", "i32", "fp32", ...) or "constexpr"; ``constexprs`` gives the constexpr values."""

    kernel: Callable
    signature: Dict[str, str]
    constexprs: Dict[str, Any]
    num_warps: int = 4
    num_stages: int = 2
    name: str = field(default="")
    hip_num_warps: int = 0  # warps on AMD (64-lane wavefronts, 1024 threads a block at most); 0: num_warps
    targets: tuple = ()     # AOT targets this configuration is for ("cuda90", "gfx942", ...); empty: all

    def warps_for(self, backend: str) -> int:
        return self.hip_num_warps if (backend == "hip" and self.hip_num_warps) else self.num_warps


TORCH_TO_TRITON = {
    "torch.float16": "fp16",
    "torch.bfloat16": "bf16",
    "torch.float32": "fp32",
    "torch.float8_e4m3fn": "fp8e4nv",
    "torch.float8_e5m2": "fp8e5",
    "torch.int32": "i32",
    "torch.int64": "i64",
    "torch.uint8": "u8",
}


def kernel_parameters(kernel) -> tuple:
    """(name, is_constexpr) of a @triton.jit function's parameters, from its Python signature (the
    same under the JIT and the interpreter, whose function objects differ)."""
    params = inspect.signature(kernel.fn).parameters.values()
    return tuple((p.name, "constexpr" in str(p.annotation)) for p in params)


def ptr(dtype) -> str:
    """Triton pointer type string for a torch dtype."""
    return "*" + TORCH_TO_TRITON[str(dtype)]


def all_aot_configs() -> List[AotConfig]:
    configs: List[AotConfig] = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "aot_configs"):
            configs.extend(module.aot_configs())
    return configs
