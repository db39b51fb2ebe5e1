"""CPU tier 2: every kernel configuration the launchers can pick compiles ahead of time for the
H100 (cuda:90) and the MI300X (hip:gfx942). This is how AMD support is kept honest without an AMD GPU."""

import os

import pytest

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("ahead-of-time compile needs the real compiler, not the interpreter", allow_module_level=True)

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from flashinfer_triton.kernels import all_aot_configs

TARGETS = {"cuda90": GPUTarget("cuda", 90, 32), "gfx942": GPUTarget("hip", "gfx942", 64)}
CONFIGS = all_aot_configs()


def _id(cfg):
    return cfg.name or cfg.kernel.__name__


@pytest.mark.parametrize("target", list(TARGETS), ids=list(TARGETS))
@pytest.mark.parametrize("cfg", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_compiles(cfg, target):
    tgt = TARGETS[target]
    warps = cfg.warps_for(tgt.backend)
    assert warps * tgt.warp_size <= 1024, f"{_id(cfg)}: {warps} warps x {tgt.warp_size} lanes > 1024 threads a block"
    src = ASTSource(fn=cfg.kernel, signature=cfg.signature, constexprs=cfg.constexprs)
    compiled = triton.compile(src, target=tgt, options={"num_warps": warps, "num_stages": cfg.num_stages})
    binary = "cubin" if target == "cuda90" else "hsaco"
    assert compiled.asm.get(binary), f"no {binary} produced for {_id(cfg)}"
    # A kernel that needs more shared memory than the chip has would fail at launch, not here.
    limit = 232448 if target == "cuda90" else 65536
    assert compiled.metadata.shared <= limit, f"{_id(cfg)} needs {compiled.metadata.shared} B of shared memory > {limit}"


def test_registry_not_empty():
    assert len(CONFIGS) > 0
