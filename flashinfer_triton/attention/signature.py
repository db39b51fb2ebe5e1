"""Kernel argument lists, derived from each kernel's one declaration.

A kernel's own signature fixes the names and order; ``ARG_TYPES`` beside it gives each runtime
argument's type (or role). From the two, ``KernelSignature`` derives the per-run() and per-plan()
argument groups the launcher packs, the scheduler's metadata fields, the AOT signature
(``aot_signature``) and the tensor / int / float split the torch.library op carries
(``op_kinds``). The module-level names are ``attention_kernel``'s; ``kernels/mla.py`` declares
``mla_kernel`` the same way.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

import torch

from ..kernels import TORCH_TO_TRITON, kernel_parameters
from ..kernels.attention.kernel import ARG_TYPES, PER_CALL_ARGS, attention_kernel



def triton_type(dtype: torch.dtype) -> str:
    return TORCH_TO_TRITON[str(dtype)]


class KernelSignature:
    """The argument lists of one kernel, checked against its declaration (``arg_types``: runtime
    argument -> Triton type, a dtype role such as "q", "meta" for a work-list field, "param" for a
    variant tensor; ``per_call``: the arguments that change per run(), leading the signature)."""

    def __init__(self, kernel, arg_types: Mapping[str, str], per_call: Tuple[str, ...]):
        name = kernel.fn.__name__
        self.kernel = kernel
        self.arg_types = dict(arg_types)
        self.all_args = kernel_parameters(kernel)
        self.runtime_args: Tuple[str, ...] = tuple(n for n, cx in self.all_args if not cx)
        self.constexpr_args: Tuple[str, ...] = tuple(n for n, cx in self.all_args if cx)
        if set(self.runtime_args) != set(self.arg_types):
            diff = sorted(set(self.runtime_args) ^ set(self.arg_types))
            raise ImportError(f"{name} and its ARG_TYPES disagree: {diff}")
        if self.runtime_args[: len(per_call)] != tuple(per_call):
            raise ImportError(f"{name}: the per-call arguments must lead its signature, in PER_CALL_ARGS order")
        self.per_call_args = tuple(per_call)
        self.plan_args: Tuple[str, ...] = self.runtime_args[len(per_call):]
        self.meta_fields: Tuple[str, ...] = tuple(n[: -len("_ptr")] for n in self.runtime_args
                                                  if self.arg_types[n] == "meta")
        self.param_tensors: Tuple[str, ...] = tuple(n for n in self.runtime_args if self.arg_types[n] == "param")

    def aot_signature(self, roles: Mapping[str, torch.dtype],
                      param_dtypes: Sequence[torch.dtype] = ()) -> Dict[str, str]:
        """The kernel's Triton signature with these dtypes for its roles (constexprs marked "constexpr")."""
        params = list(param_dtypes) + [torch.float32] * (len(self.param_tensors) - len(param_dtypes))
        sig = {}
        for name, _ in self.all_args:
            kind = self.arg_types.get(name)
            if kind is None:
                sig[name] = "constexpr"
            elif kind in roles:
                sig[name] = "*" + triton_type(roles[kind])
            elif kind == "meta":
                sig[name] = "*i32"
            elif kind == "param":
                sig[name] = "*" + triton_type(params[self.param_tensors.index(name)])
            else:
                sig[name] = kind
        return sig

    def op_kinds(self, names: Sequence[str]) -> Tuple[str, ...]:
        """"tensor", "int" or "float" for each runtime argument name (how the torch.library op carries it)."""
        out = []
        for name in names:
            kind = self.arg_types[name]
            out.append("int" if kind == "i32" else "float" if kind == "fp32" else "tensor")
        return tuple(out)


ATTENTION = KernelSignature(attention_kernel, ARG_TYPES, PER_CALL_ARGS)
ALL_ARGS = ATTENTION.all_args
RUNTIME_ARGS = ATTENTION.runtime_args
CONSTEXPR_ARGS = ATTENTION.constexpr_args
PLAN_ARGS = ATTENTION.plan_args
META_FIELDS = ATTENTION.meta_fields
PARAM_TENSORS = ATTENTION.param_tensors


def aot_signature(q_dtype, kv_dtype, o_dtype, param_dtypes: Sequence[torch.dtype] = ()) -> Dict[str, str]:
    """``attention_kernel``'s Triton signature for these dtypes (constexprs marked "constexpr")."""
    return ATTENTION.aot_signature({"q": q_dtype, "kv": kv_dtype, "o": o_dtype}, param_dtypes)


def op_kinds(names: Sequence[str]) -> Tuple[str, ...]:
    return ATTENTION.op_kinds(names)
