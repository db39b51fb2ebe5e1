"""The launch of one attention plan.

``AttentionLauncher`` is built at plan(): it fixes everything that does not change between run()
calls (the work list, the workspace views, option tensors, the grid, constexprs, the part of the
specialization key that is fixed) as the kernel's plan-time argument group, so run() only adds the
per-call tensors, strides and scales (``PER_CALL_ARGS``) and launches. Argument order and names
come from the kernel's declaration (``signature.py``); ``kernel_constexprs`` is the one place the
constexpr values are assembled.
"""

from __future__ import annotations

import copy
import functools
import math
import operator
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .._launch import launch
from .._utils import LOG2E
from ..kernels.attention.kernel import attention_kernel
from .config import KernelConfig, block_d, group_constexpr
from .kv import KVView
from .options import AttentionOptions
from .signature import CONSTEXPR_ARGS, META_FIELDS, PARAM_TENSORS, PLAN_ARGS
from .scheduler import WorkPlan
from .variant import launch_errors


@functools.lru_cache(maxsize=None)
def dummy(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A one-element tensor standing in for an absent optional tensor argument."""
    return torch.zeros(1, dtype=dtype, device=device)


_NO_SCALARS = (0.0, 0.0, 0.0, 0.0)

# Every (options, config) a launcher was built for, by id: the torch.library op names its kernel
# configuration by this id (registered eagerly at plan(), never while torch.compile traces).
LAUNCH_CONFIGS: List[Tuple[AttentionOptions, KernelConfig]] = []
_LAUNCH_IDS: Dict[Tuple[AttentionOptions, KernelConfig], int] = {}


def register_launch(opts: AttentionOptions, cfg: KernelConfig) -> int:
    key = (opts, cfg)
    index = _LAUNCH_IDS.get(key)
    if index is None:
        index = _LAUNCH_IDS[key] = len(LAUNCH_CONFIGS)
        LAUNCH_CONFIGS.append(key)
    return index


_META_PTRS = {name: f"{name}_ptr" for name in META_FIELDS}
_plan_args = operator.itemgetter(*PLAN_ARGS)  # a values dict -> the plan-time arguments, in order
_STATIC_KEYS: Dict[tuple, tuple] = {}


def _static_keys(opts: AttentionOptions, cfg: KernelConfig, page_size: int, aligned: tuple) -> Tuple[int, int]:
    """(launch id, static key): everything fixed for a plan, folded into one hash so the per-call
    key stays short. Cached by the identity of the options and config (plan() gets the same
    cached objects every step; hashing them is most of the cost); the entry holds them, so their
    ids stay theirs."""
    key = (id(opts), id(cfg), page_size, aligned)
    hit = _STATIC_KEYS.get(key)
    if hit is None:
        if len(_STATIC_KEYS) > 4096:
            _STATIC_KEYS.clear()
        static = hash((id(attention_kernel), cfg.launch_key, opts, page_size) + aligned)
        hit = _STATIC_KEYS[key] = (opts, cfg, register_launch(opts, cfg), static)
    return hit[2], hit[3]


def launch_flags(has_window: bool, write_lse: bool, has_sinks: bool) -> int:
    return int(has_window) | int(write_lse) << 1 | int(has_sinks) << 2


def kernel_constexprs(opts: AttentionOptions, cfg: KernelConfig, has_window: bool, write_lse: bool,
                      has_sinks: bool = False) -> Dict[str, object]:
    """The kernel's constexprs, in its signature order."""
    variant = opts.variant
    values = dict(
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=opts.head_dim, BLOCK_D=block_d(opts.head_dim),
        HEAD_DIM_VO=opts.head_dim_vo, BLOCK_DV=block_d(opts.head_dim_vo), PAGED=opts.paged,
        CAUSAL=opts.causal, HAS_WINDOW=has_window, SOFT_CAP=opts.logits_soft_cap > 0, POS_ENC=opts.pos_enc,
        CUSTOM_MASK=opts.custom_mask, HAS_SINKS=has_sinks, WRITE_LSE=write_lse, MERGE_M=cfg.merge_m,
        MERGE_BLOCK_C=cfg.merge_block_c,
        LOGITS_HOOK=None if variant is None else variant.logits_transform,
        MASK_HOOK=None if variant is None else variant.logits_mask,
        RANGE_HOOK=None if variant is None else variant.kv_range,
        USE_SOFTMAX=True if variant is None else variant.use_softmax, DOT_PRECISION=cfg.dot_precision,
        GROUP_C=group_constexpr(opts.group),
    )
    return {name: values[name] for name in CONSTEXPR_ARGS}


def scale_for_kernel(opts: AttentionOptions, q_scale: float, k_scale: float) -> float:
    """``sm_scale_log2``: ``sm_scale * log2 e``, or ``sm_scale / soft_cap`` with a soft cap."""
    scale = opts.sm_scale * q_scale * k_scale
    return scale / opts.logits_soft_cap if opts.logits_soft_cap > 0 else scale * LOG2E


class AttentionLauncher:
    def __init__(self, opts: AttentionOptions, cfg: KernelConfig, plan: WorkPlan, meta: Dict[str, torch.Tensor],
                 kv_indices: Optional[torch.Tensor], part_o: torch.Tensor, part_lse: torch.Tensor,
                 counters: torch.Tensor, page_size: int, mask: Optional[torch.Tensor] = None,
                 mask_indptr: Optional[torch.Tensor] = None, alibi: Optional[torch.Tensor] = None):
        device = part_o.device
        i32, f32 = dummy(device, torch.int32), dummy(device, torch.float32)
        values = dict(
            part_o_ptr=part_o, part_lse_ptr=part_lse, merge_counter_ptr=counters,
            kv_indices_ptr=i32 if kv_indices is None else kv_indices,
            mask_ptr=dummy(device, torch.uint8) if mask is None else mask,
            mask_indptr_ptr=i32 if mask_indptr is None else mask_indptr,
            alibi_ptr=f32 if alibi is None else alibi,
            group=opts.group, num_qo_heads=opts.num_qo_heads, page_size=page_size,
        )
        values.update({_META_PTRS[name]: view for name, view in meta.items()})
        self.cfg = cfg
        self.grid = (plan.grid_items, opts.num_kv_heads, 1)
        self.f32_dummy = f32
        self.no_params = (f32,) * len(PARAM_TENSORS)
        self._set_options(opts, values)

    def _set_options(self, opts: AttentionOptions, values: Dict[str, object]) -> None:
        """The parts that follow the options: their plan-time scalars, constexprs and static key."""
        values.update(soft_cap=opts.logits_soft_cap, rope_rcp_scale=1.0 / opts.rope_scale,
                      rope_log2_rcp_theta=-math.log2(opts.rope_theta))
        self.opts = opts
        self.plan_args = _plan_args(values)
        self._constexprs: Dict[tuple, Dict[str, object]] = {}
        # The workspace views and metadata fields are 16-byte aligned by construction; the caller's
        # tensors (page ids, mask, ALiBi slopes) are checked.
        aligned = tuple(values[name].data_ptr() & 15 == 0 for name in ("kv_indices_ptr", "mask_ptr", "alibi_ptr"))
        self.launch_id, self.static_key = _static_keys(opts, self.cfg, values["page_size"], aligned)

    def with_options(self, opts: AttentionOptions) -> "AttentionLauncher":
        """This plan's launcher for other run-time options (causal, soft cap, sm_scale, RoPE scale and
        theta: ``options.with_run_options``), sharing its work list, workspace and metadata. The
        configuration does not depend on these options (``select_config`` reads the problem's shape,
        dtypes, masks and positional encoding), and the work list stays valid: causal only changes
        the scheduler's work estimate and item order, every item still spans its KV range."""
        new = copy.copy(self)
        new._set_options(opts, dict(zip(PLAN_ARGS, self.plan_args)))
        return new

    def constexprs(self, has_window: bool, write_lse: bool, has_sinks: bool) -> Dict[str, object]:
        key = (has_window, write_lse, has_sinks)
        cx = self._constexprs.get(key)
        if cx is None:
            cx = self._constexprs[key] = kernel_constexprs(self.opts, self.cfg, has_window, write_lse, has_sinks)
        return cx

    def call_args(self, q: torch.Tensor, kv: KVView, out: torch.Tensor, lse: Optional[torch.Tensor], q_scale: float,
                  k_scale: float, v_scale: float, window_left: Optional[int], sinks: Optional[torch.Tensor] = None,
                  params: Sequence = ((), ())):
        """The per-call argument group (``PER_CALL_ARGS`` order) and the constexprs for it. ``params`` =
        (tensors, floats) of a variant, at most 4 of each."""
        window = self.opts.window_left if window_left is None else window_left
        write_lse = lse is not None
        tensors, scalars = params
        if tensors or scalars:
            tensors = tuple(tensors) + self.no_params[len(tensors):]
            scalars = tuple(float(s) for s in scalars) + (0.0,) * (4 - len(scalars))
        else:
            tensors, scalars = self.no_params, _NO_SCALARS
        args = ((q, kv.k, kv.v, out, lse if write_lse else self.f32_dummy, self.f32_dummy if sinks is None else sinks)
                + tensors
                + (q.stride(0), q.stride(1), kv.stride_kp, kv.stride_kt, kv.stride_kh, kv.stride_vp, kv.stride_vt,
                   kv.stride_vh, out.stride(0), out.stride(1), scale_for_kernel(self.opts, q_scale, k_scale),
                   float(v_scale), window)
                + scalars)
        return args, self.constexprs(window >= 0, write_lse, sinks is not None)

    def __call__(self, q: torch.Tensor, kv: KVView, out: torch.Tensor, lse: Optional[torch.Tensor] = None,
                 q_scale: float = 1.0, k_scale: float = 1.0, v_scale: float = 1.0,
                 window_left: Optional[int] = None, sinks: Optional[torch.Tensor] = None,
                 params: Sequence = ((), ())) -> None:
        """``q`` [N_q, H_qo, D]; ``out`` [N_q, H_qo, D_vo]; ``lse`` [N_q, H_qo] float32 (base 2) or None;
        ``sinks`` [H_qo] float32 or None."""
        if self.grid[0] == 0:
            return
        args, cx = self.call_args(q, kv, out, lse, q_scale, k_scale, v_scale, window_left, sinks, params)
        # Pointer dtypes are part of the signature: a float16 call must never reuse a bfloat16 binary.
        key = (self.static_key, args[10:20], args[22], cx["HAS_WINDOW"], cx["WRITE_LSE"], cx["HAS_SINKS"], q.dtype,
               kv.k.dtype, out.dtype, tuple(t.dtype for t in args[5:10]), tuple(t.data_ptr() & 15 == 0 for t in args[:10]))
        try:
            launch(attention_kernel, self.grid, args + self.plan_args, cx, self.cfg.num_warps, self.cfg.num_stages,
                   key, prehashed=True)
        except Exception as exc:  # a variant's hook that does not compile: name it (the first launch compiles)
            error = launch_errors(self.opts.variant, exc)
            if error is exc:
                raise
            raise error from exc
