"""The attention problem: options every attention API shares, validated in one place.

``make_options`` turns FlashInfer's plan() arguments into an ``AttentionOptions`` (raising a clear
error naming the argument, or NotImplementedError naming an unsupported option); the config
selection, the launcher and the torch.library op all read this one object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .._utils import canonicalize_dtype
from .variant import AttentionVariant, check_variant

SUPPORTED_HEAD_DIMS = (64, 80, 96, 112, 128, 192, 256)
# float32 is an extension over FlashInfer (exact matrix products, for references and the CPU tier).
Q_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
KV_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2)
O_DTYPES = Q_DTYPES
POS_ENCODING_MODES = {"NONE": 0, "ROPE_LLAMA": 1, "ALIBI": 2}
# head_dim_vo differs from head_dim_qk only as FlashInfer's fa2/fa3 prefill allows it (DeepSeek's 192/128).
HEAD_DIM_QK_VO = tuple((d, d) for d in SUPPORTED_HEAD_DIMS) + ((192, 128),)
MAX_GROUP = 128  # query heads per KV head: the largest BLOCK_M of a tile


@dataclass(frozen=True)
class AttentionOptions:
    """Everything about an attention problem except the batch's lengths."""

    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    head_dim_vo: int
    q_dtype: torch.dtype
    kv_dtype: torch.dtype
    o_dtype: torch.dtype
    paged: bool
    causal: bool
    window_left: int
    logits_soft_cap: float
    sm_scale: float
    pos_enc: int
    rope_scale: float
    rope_theta: float
    custom_mask: bool
    variant: Optional[AttentionVariant] = None

    @property
    def group(self) -> int:
        return self.num_qo_heads // self.num_kv_heads


def _int_arg(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    return int(value)


def pos_encoding_code(mode: str) -> int:
    if mode not in POS_ENCODING_MODES:
        raise ValueError(f"pos_encoding_mode: expected one of {list(POS_ENCODING_MODES)}, got {mode!r}")
    return POS_ENCODING_MODES[mode]


def plan_dtypes(q_data_type, kv_data_type, o_data_type):
    """FlashInfer's dtype arguments (names or torch dtypes): kv and o default to q's."""
    q_dtype = canonicalize_dtype(q_data_type, "q_data_type")
    if q_dtype not in Q_DTYPES:
        raise TypeError(f"q_data_type: expected float16, bfloat16 or float32, got {q_dtype}")
    kv_dtype = canonicalize_dtype(kv_data_type, "kv_data_type") or q_dtype
    if kv_dtype not in KV_DTYPES:
        raise TypeError(f"kv_data_type: expected one of {[str(d).replace('torch.', '') for d in KV_DTYPES]}, got {kv_dtype}")
    o_dtype = canonicalize_dtype(o_data_type, "o_data_type") or q_dtype
    if o_dtype not in O_DTYPES:
        raise TypeError(f"o_data_type: expected float16, bfloat16 or float32, got {o_dtype}")
    if (q_dtype == torch.float32) != (kv_dtype == torch.float32):
        raise TypeError(f"kv_data_type: float32 (an extension, for exact references) needs float32 q and KV together, "
                        f"got q {q_dtype} and kv {kv_dtype}")
    return q_dtype, kv_dtype, o_dtype


def make_options(**kwargs) -> AttentionOptions:
    """Validate the options of an attention problem (keyword arguments of ``_make_options``); the
    same arguments give the same (cached) object, so a plan() per step pays for the checks once."""
    key = tuple(kwargs.items())  # call sites pass their keywords in one order (another order: one more entry)
    try:
        hit = _OPTIONS.get(key)
    except TypeError:  # an unhashable argument: validate without the cache (and raise a clear error)
        return _make_options(**kwargs)
    if hit is None:
        if len(_OPTIONS) > 1024:
            _OPTIONS.clear()
        hit = _OPTIONS[key] = _make_options(**kwargs)
    return hit


_OPTIONS: dict = {}


def _make_options(*, num_qo_heads, num_kv_heads, head_dim, head_dim_vo=None, q_data_type="float16",
                 kv_data_type=None, o_data_type=None, paged: bool, causal: bool = False, custom_mask: bool = False,
                 pos_encoding_mode: str = "NONE", window_left: int = -1, logits_soft_cap=None, sm_scale=None,
                 rope_scale=None, rope_theta=None, use_fp16_qk_reduction: bool = False,
                 variant: Optional[AttentionVariant] = None, head_dim_name: str = "head_dim") -> AttentionOptions:
    """Validate the options of an attention problem. A custom mask replaces the causal mask
    (FlashInfer's rule); a variant's hooks apply on top of the built-in options."""
    num_qo_heads = _int_arg("num_qo_heads", num_qo_heads)
    num_kv_heads = _int_arg("num_kv_heads", num_kv_heads)
    head_dim = _int_arg(head_dim_name, head_dim)
    head_dim_vo = head_dim if head_dim_vo is None else _int_arg("head_dim_vo", head_dim_vo)
    if num_qo_heads <= 0 or num_kv_heads <= 0 or num_qo_heads % num_kv_heads != 0:
        raise ValueError(f"num_qo_heads ({num_qo_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})")
    if num_qo_heads // num_kv_heads > MAX_GROUP:
        raise NotImplementedError(f"num_qo_heads / num_kv_heads = {num_qo_heads // num_kv_heads}: GQA groups above "
                                  f"{MAX_GROUP} are not supported")
    for name, value in ((head_dim_name, head_dim), ("head_dim_vo", head_dim_vo)):
        if value not in SUPPORTED_HEAD_DIMS:
            raise NotImplementedError(f"{name}={value}: supported head dims are {SUPPORTED_HEAD_DIMS}")
    if (head_dim, head_dim_vo) not in HEAD_DIM_QK_VO:
        raise NotImplementedError(f"head_dim_vo={head_dim_vo} with {head_dim_name}={head_dim}: a v/o head dim other "
                                  f"than the q/k one is supported for {[p for p in HEAD_DIM_QK_VO if p[0] != p[1]]}")
    if use_fp16_qk_reduction:
        raise NotImplementedError("use_fp16_qk_reduction=True: q.k products always accumulate in float32 here")
    window_left = _int_arg("window_left", window_left)
    if window_left < -1:
        raise ValueError(f"window_left: expected -1 (no window) or a non-negative int, got {window_left}")
    if logits_soft_cap is not None and not logits_soft_cap >= 0:
        raise ValueError(f"logits_soft_cap: expected None, 0 or a positive value, got {logits_soft_cap}")
    for name, value in (("rope_scale", rope_scale), ("rope_theta", rope_theta)):
        if value is not None and not value > 0:
            raise ValueError(f"{name}: expected a positive value, got {value}")
    if sm_scale is not None and not (isinstance(sm_scale, (int, float)) and math.isfinite(sm_scale)):
        raise ValueError(f"sm_scale: expected a finite float, got {sm_scale!r}")
    q_dtype, kv_dtype, o_dtype = plan_dtypes(q_data_type, kv_data_type, o_data_type)
    check_variant(variant)
    return AttentionOptions(
        num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, head_dim_vo=head_dim_vo,
        q_dtype=q_dtype, kv_dtype=kv_dtype, o_dtype=o_dtype, paged=bool(paged),
        causal=bool(causal) and not custom_mask, window_left=window_left,
        logits_soft_cap=float(logits_soft_cap or 0.0),
        sm_scale=1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale),
        pos_enc=pos_encoding_code(pos_encoding_mode), rope_scale=1.0 if rope_scale is None else float(rope_scale),
        rope_theta=1e4 if rope_theta is None else float(rope_theta), custom_mask=bool(custom_mask),
        variant=variant,
    )


def with_run_options(opts: AttentionOptions, *, pos_encoding_mode: str, logits_soft_cap, sm_scale, rope_scale,
                     rope_theta, causal: Optional[bool] = None, use_fp16_qk_reduction: bool = False) -> AttentionOptions:
    """``opts`` under the options FlashInfer's run() reads from the wrapper's attributes (which the
    legacy ``forward`` and the engines' fast plans write after plan()), validated as plan() does.
    None keeps ``causal``; the positional encoding is part of the plan (its configuration and
    tables), so a different one raises NotImplementedError naming it."""
    new = make_options(num_qo_heads=opts.num_qo_heads, num_kv_heads=opts.num_kv_heads, head_dim=opts.head_dim,
                       head_dim_vo=opts.head_dim_vo, q_data_type=opts.q_dtype, kv_data_type=opts.kv_dtype,
                       o_data_type=opts.o_dtype, paged=opts.paged,
                       causal=opts.causal if causal is None else causal, custom_mask=opts.custom_mask,
                       pos_encoding_mode=pos_encoding_mode, window_left=opts.window_left,
                       logits_soft_cap=logits_soft_cap, sm_scale=sm_scale, rope_scale=rope_scale, rope_theta=rope_theta,
                       use_fp16_qk_reduction=use_fp16_qk_reduction, variant=opts.variant)
    if new.pos_enc != opts.pos_enc:
        planned = next(m for m, code in POS_ENCODING_MODES.items() if code == opts.pos_enc)
        raise NotImplementedError(f"pos_encoding_mode={pos_encoding_mode!r} after plan() with {planned!r}: the "
                                  f"positional encoding is fixed by plan(); pass it there")
    return new


def scale_arg(name: str, value) -> float:
    """q_scale / k_scale / v_scale: a Python float (a tensor would need a host sync in run())."""
    if value is None:
        return 1.0
    if isinstance(value, torch.Tensor):
        raise NotImplementedError(f"{name} as a tensor: pass a Python float (a tensor would need a host sync)")
    return float(value)


BACKENDS = ("auto", "fa2", "fa3", "triton")


def check_backend(backend: str) -> str:
    """FlashInfer's attention backends "auto", "fa2" and "fa3" (and "triton") all run this library's
    Triton kernels; backends with another API (cudnn, trtllm-gen, cutlass) raise."""
    if backend not in BACKENDS:
        raise NotImplementedError(f"backend={backend!r}: supported backends are {BACKENDS} (all run the Triton "
                                  f"kernels of flashinfer_triton)")
    return backend


def resolved_backend(backend: str) -> str:
    """The ``_backend`` a wrapper holds after plan(), as FlashInfer resolves it: "auto" becomes "fa2"
    (the FlashAttention-2 style kernel this library runs; vLLM then uses the fa2 argument form of
    ``_cached_module.plan``)."""
    return "fa2" if backend == "auto" else backend
