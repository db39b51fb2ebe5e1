"""The attention kernel's argument lists, derived from its one declaration.

``attention_kernel``'s own signature fixes the names and order; ``ARG_TYPES`` beside it gives each
runtime argument's type. From the two come: the per-run() and per-plan() argument groups the
launcher packs, the scheduler's metadata fields, the AOT signature (``aot_signature``) and the
tensor / int / float split the torch.library op carries (``op_kinds``).
"""

from __future__ import annotations

import inspect
from typing import Dict, Sequence, Tuple

import torch

from ..kernels import TORCH_TO_TRITON
from ..kernels.attention.kernel import ARG_TYPES, PER_CALL_ARGS, attention_kernel



def _parameters(kernel):
    """(name, is_constexpr) of a @triton.jit function's parameters, from its Python signature (the
    same under the JIT and the interpreter)."""
    params = inspect.signature(kernel.fn).parameters.values()
    return tuple((p.name, "constexpr" in str(p.annotation)) for p in params)


ALL_ARGS = _parameters(attention_kernel)
RUNTIME_ARGS: Tuple[str, ...] = tuple(name for name, cx in ALL_ARGS if not cx)
CONSTEXPR_ARGS: Tuple[str, ...] = tuple(name for name, cx in ALL_ARGS if cx)
if set(RUNTIME_ARGS) != set(ARG_TYPES):
    raise ImportError(f"attention_kernel and ARG_TYPES disagree: {sorted(set(RUNTIME_ARGS) ^ set(ARG_TYPES))}")
if RUNTIME_ARGS[: len(PER_CALL_ARGS)] != PER_CALL_ARGS:
    raise ImportError("attention_kernel: the per-call arguments must lead its signature, in PER_CALL_ARGS order")
PLAN_ARGS: Tuple[str, ...] = RUNTIME_ARGS[len(PER_CALL_ARGS):]
META_FIELDS: Tuple[str, ...] = tuple(name[: -len("_ptr")] for name in RUNTIME_ARGS if ARG_TYPES[name] == "meta")
PARAM_TENSORS: Tuple[str, ...] = tuple(name for name in RUNTIME_ARGS if ARG_TYPES[name] == "param")


def triton_type(dtype: torch.dtype) -> str:
    return TORCH_TO_TRITON[str(dtype)]


def aot_signature(q_dtype, kv_dtype, o_dtype, param_dtypes: Sequence[torch.dtype] = ()) -> Dict[str, str]:
    """The kernel's Triton signature for these dtypes (constexprs marked "constexpr")."""
    roles = {"q": q_dtype, "kv": kv_dtype, "o": o_dtype}
    params = list(param_dtypes) + [torch.float32] * (len(PARAM_TENSORS) - len(param_dtypes))
    sig = {}
    for name, _ in ALL_ARGS:
        kind = ARG_TYPES.get(name)
        if kind is None:
            sig[name] = "constexpr"
        elif kind in roles:
            sig[name] = "*" + triton_type(roles[kind])
        elif kind == "meta":
            sig[name] = "*i32"
        elif kind == "param":
            sig[name] = "*" + triton_type(params[PARAM_TENSORS.index(name)])
        else:
            sig[name] = kind
    return sig


def op_kinds(names: Sequence[str]) -> Tuple[str, ...]:
    """"tensor", "int" or "float" for each runtime argument name (how the torch.library op carries it)."""
    out = []
    for name in names:
        kind = ARG_TYPES[name]
        out.append("int" if kind == "i32" else "float" if kind == "fp32" else "tensor")
    return tuple(out)
