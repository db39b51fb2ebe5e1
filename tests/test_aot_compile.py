"""CPU tier 2: every kernel configuration the launchers can pick compiles ahead of time for the
H100/H200 (cuda:90) and the MI300X (hip:gfx942); a spot set (every constexpr value and argument
type at least once per kernel) also for the A100 (cuda:80) and the MI355X (hip:gfx950); and the
attention variants of examples/attention_variants.py for cuda:90 and hip:gfx942. This is how
AMD support is kept honest without an AMD GPU. The attention family's list is a pairwise covering
(``flashinfer_triton/attention/coverage.py``; ``tests/test_coverage.py`` checks the launchers)."""

import os

import pytest

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("ahead-of-time compile needs the real compiler, not the interpreter", allow_module_level=True)

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from examples.attention_variants import aot_configs as example_variant_configs
from flashinfer_triton.kernels import all_aot_configs

FULL_TARGETS = {"cuda90": GPUTarget("cuda", 90, 32), "gfx942": GPUTarget("hip", "gfx942", 64)}
SPOT_TARGETS = {"cuda80": GPUTarget("cuda", 80, 32), "gfx950": GPUTarget("hip", "gfx950", 64)}
SHARED_LIMIT = {"cuda90": 232448, "cuda80": 166912, "gfx942": 65536, "gfx950": 163840}
CONFIGS = all_aot_configs()


def spot_set(configs):
    """Per kernel, a greedy subset in which every (argument, type or constexpr value) of the full
    list appears at least once."""
    out = []
    by_kernel = {}
    for cfg in configs:
        by_kernel.setdefault(cfg.kernel, []).append(cfg)
    for cfgs in by_kernel.values():
        def values(c):
            return {(k, v) for k, v in c.signature.items() if v != "constexpr"} | \
                   {(k, repr(v)) for k, v in c.constexprs.items()} | {("warps", c.num_warps), ("stages", c.num_stages)}
        todo = set().union(*(values(c) for c in cfgs))
        while todo:
            best = max(cfgs, key=lambda c: len(values(c) & todo))
            todo -= values(best)
            out.append(best)
    return out


def _id(cfg):
    return cfg.name or cfg.kernel.__name__


def supported(cfg, target: str) -> bool:
    """A configuration compiles for the targets its table serves (``AotConfig.targets``; attention's
    Hopper shapes for CUDA, its CDNA shapes for AMD); float8 e4m3 needs sm_89+ on NVIDIA (the
    launchers raise NotImplementedError on an A100)."""
    if cfg.targets and target not in cfg.targets:
        return False
    return not (target == "cuda80" and "*fp8e4nv" in cfg.signature.values())


# AOT_SPOT_ONLY=<target>: only that target's spot set (`make test-aot-triton36` runs it under the GPU
# machine's older Triton).
_SPOT_ONLY = os.environ.get("AOT_SPOT_ONLY", "")
CASES = [pytest.param(cfg, t, id=f"{t}-{_id(cfg)}") for t in FULL_TARGETS for cfg in CONFIGS if supported(cfg, t)] + \
        [pytest.param(cfg, t, id=f"{t}-{_id(cfg)}") for t in SPOT_TARGETS
         for cfg in spot_set([c for c in CONFIGS if supported(c, t)])] + \
        [pytest.param(cfg, t, id=f"{t}-{_id(cfg)}") for t in FULL_TARGETS for cfg in example_variant_configs()]


if _SPOT_ONLY:
    CASES = [pytest.param(cfg, _SPOT_ONLY, id=f"{_SPOT_ONLY}-{_id(cfg)}")
             for cfg in spot_set([c for c in CONFIGS if supported(c, _SPOT_ONLY)])]


@pytest.mark.parametrize("cfg,target", CASES)
def test_compiles(cfg, target):
    tgt = {**FULL_TARGETS, **SPOT_TARGETS}[target]
    warps = cfg.warps_for(tgt.backend)
    assert warps * tgt.warp_size <= 1024, f"{_id(cfg)}: {warps} warps x {tgt.warp_size} lanes > 1024 threads a block"
    # Realistic specialization: launches see 16-byte aligned pointers and strides divisible by 16, which
    # enables vectorized, pipelined loads (and their shared memory); without the hints the compiler
    # would assume neither and under-report what a real launch needs.
    # Arguments the kernel declares do_not_specialize never get the hint at a launch either.
    unspecialized = {cfg.kernel.arg_names[a] if isinstance(a, int) else a
                     for a in getattr(cfg.kernel, "do_not_specialize", ())}
    attrs = {(cfg.kernel.arg_names.index(name),): [["tt.divisibility", 16]]
             for name, ty in cfg.signature.items()
             if (ty.startswith("*") or "stride" in name) and name not in unspecialized}
    src = ASTSource(fn=cfg.kernel, signature=cfg.signature, constexprs=cfg.constexprs, attrs=attrs)
    compiled = triton.compile(src, target=tgt, options={"num_warps": warps, "num_stages": cfg.num_stages})
    binary = "cubin" if tgt.backend == "cuda" else "hsaco"
    assert compiled.asm.get(binary), f"no {binary} produced for {_id(cfg)}"
    # A kernel that needs more shared memory than the chip has would fail at launch, not here.
    assert compiled.metadata.shared <= SHARED_LIMIT[target], \
        f"{_id(cfg)} needs {compiled.metadata.shared} B of shared memory > {SHARED_LIMIT[target]}"


def test_registry_not_empty():
    assert len(CONFIGS) > 0


@triton.jit
def _misshapen_logits(logits, q_pos, kv_pos, qo_head, kv_head, req, params):
    return tl.sum(logits, 1)


@triton.jit
def _undefined_name(logits, q_pos, kv_pos, qo_head, kv_head, req, params):
    return logits + not_defined_anywhere  # noqa: F821


@triton.jit
def _int_mask(q_pos, kv_pos, qo_head, kv_head, req, params):
    return (kv_pos[None, :] <= q_pos[:, None]).to(tl.int32)


@pytest.mark.parametrize("role,hook,kind", [
    pytest.param("logits_transform", _misshapen_logits, "wrong shape or dtype", id="shape"),
    pytest.param("logits_transform", _undefined_name, "does not compile", id="name-error"),
    pytest.param("logits_mask", _int_mask, "wrong shape or dtype", id="mask-dtype"),
])
def test_variant_compile_error_names_the_function(role, hook, kind):
    """Triton's compiler (not the interpreter) on a broken hook: the error the launcher raises names
    the function and the hook signature (the frontend fails before any code generation)."""
    import flashinfer_triton as flashinfer
    from flashinfer_triton.attention.coverage import variant_aot_config

    variant = flashinfer.AttentionVariant(**{role: hook})
    cfg = variant_aot_config(variant)
    with pytest.raises(triton.compiler.errors.CompilationError) as info:
        triton.compile(ASTSource(fn=cfg.kernel, signature=cfg.signature, constexprs=cfg.constexprs),
                       target=FULL_TARGETS["cuda90"], options={"num_warps": cfg.num_warps})
    error = variant.explain(info.value)
    assert isinstance(error, flashinfer.VariantError), f"not attributed to the hook: {info.value}"
    assert f"{role} {hook.fn.__name__!r}" in str(error) and kind in str(error), str(error)
