"""Rotary position embedding: FlashInfer's ``apply_rope*``, ``apply_llama31_rope*`` and
``apply_rope_with_cos_sin_cache*`` on one Triton kernel (``kernels/rope.py``).

Layouts: ``q [nnz, num_q_heads, head_dim]`` and ``k [nnz, num_k_heads, head_dim]`` (any strides
on the first two dimensions, the last one contiguous); head counts may differ. ``interleave=False``
(NeoX) rotates the halves ``[..., :rotary_dim/2]`` / ``[..., rotary_dim/2:rotary_dim]``;
``interleave=True`` (GPT-J) rotates the even/odd pairs. Dimensions past ``rotary_dim`` are
copied unchanged (out of place) or left untouched (in place). cos/sin are computed in float32
on the fly, with the frequency formula of FlashInfer (``theta^(-2j/rotary_dim) / rope_scale``,
Llama 3.1 smoothing for the llama31 variants), or read from a float32 ``cos_sin_cache``.

Positions are read as 32-bit integers (``int64`` positions must be below ``2**31``; their low
words are read directly, no copy, at any stride). ``indptr``/``offsets`` must be contiguous (a
strided view raises, as in FlashInfer). A position outside ``cos_sin_cache`` reads nothing and
gives NaN for its token; in checked mode (``flashinfer_triton.checked()``) it raises, as do a
malformed ``indptr`` and int64 positions past int32. Each function is also a ``torch.library``
custom op that ``torch.compile`` sees; eager calls launch the kernel directly, through a cached
launch (shapes, strides and parameters are looked up, not recomputed, on a repeated call).
"""

from __future__ import annotations

import math
import struct
from typing import Dict, Optional, Tuple

import torch

from . import _checks
from ._checks import INT32_64, index_tensor
from ._utils import check_tensor, interpreter_active, num_compute_units
from .kernels.rope import POS_CACHE, POS_IDS, POS_INDPTR, rope_config, rope_kernel

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

__all__ = [
    "apply_rope", "apply_rope_inplace", "apply_rope_pos_ids", "apply_rope_pos_ids_inplace",
    "apply_llama31_rope", "apply_llama31_rope_inplace", "apply_llama31_rope_pos_ids",
    "apply_llama31_rope_pos_ids_inplace", "apply_rope_with_cos_sin_cache",
    "apply_rope_with_cos_sin_cache_inplace",
]


# --------------------------------------------------------------------------- checks


def _check_qk(q, k) -> None:
    check_tensor("q", q, dtypes=_FLOAT_DTYPES, ndim=3, last_dim_contiguous=True)
    check_tensor("k", k, dtypes=(q.dtype,), ndim=3, device=q.device, last_dim_contiguous=True)
    if k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"k: expected shape [{q.shape[0]}, *, {q.shape[2]}] (nnz and head_dim of q), got {list(k.shape)}")


def _check_rotary_dim(rotary_dim, head_dim: int) -> int:
    if rotary_dim is None:
        rotary_dim = head_dim
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, int):
        raise TypeError(f"rotary_dim: expected an int or None, got {type(rotary_dim).__name__}")
    if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim: expected an even value in [2, head_dim={head_dim}], got {rotary_dim}")
    if rope_config(rotary_dim) is None:
        raise NotImplementedError(f"rotary_dim: values above 512 are not supported, got {rotary_dim}")
    return rotary_dim


def _check_pos_ids(name: str, pos, nnz: int, device) -> None:
    # Any stride: the kernel reads positions through their stride.
    index_tensor(name, pos, dtypes=INT32_64, numel=nnz, device=device, layout="any")
    if _checks.ENABLED and pos.dtype == torch.int64:
        _checks.check_in_range(name, pos, -2**31, 2**31, "a position (read as int32)")


def _check_scalar(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(v).__name__}")
    return float(v)


def _check_rope_params(rope_scale, rope_theta) -> Tuple[float, float]:
    rope_scale = _check_scalar("rope_scale", rope_scale)
    rope_theta = _check_scalar("rope_theta", rope_theta)
    if not rope_scale > 0:
        raise ValueError(f"rope_scale: expected a positive value, got {rope_scale}")
    if not rope_theta > 0:
        raise ValueError(f"rope_theta: expected a positive value, got {rope_theta}")
    return rope_scale, rope_theta


def _llama31_smooth(low_freq_factor, high_freq_factor, old_context_len) -> Tuple[float, float]:
    low = _check_scalar("low_freq_factor", low_freq_factor)
    high = _check_scalar("high_freq_factor", high_freq_factor)
    old = _check_scalar("old_context_len", old_context_len)
    if not (low > 0 and high > low):
        raise ValueError(f"high_freq_factor/low_freq_factor: expected 0 < low_freq_factor < high_freq_factor, got {low}, {high}")
    smooth_a = old / (2 * math.pi * high - 2 * math.pi * low)
    smooth_b = -1.0 / (high / low - 1.0)
    return smooth_a, smooth_b


# --------------------------------------------------------------------------- launcher

# Below this many token blocks the head blocks of a token block are spread over several programs.
_MIN_PROGRAMS_PER_CU = 2

try:  # the raw stream getter Triton's own CUDA driver uses
    from torch._C import _cuda_getCurrentRawStream as _raw_stream
except Exception:  # noqa: BLE001
    _raw_stream = None

# Host work that depends only on shapes, strides, dtypes and the RoPE parameters, done once per
# key: (constexprs, num_warps, BLOCK_T, fixed int args, float args, number of head blocks).
_PLANS: Dict[tuple, tuple] = {}
# Compiled binaries for the lean launch path, keyed by the plan key and what Triton specializes
# the per-call arguments on (each pointer's 16-byte alignment; 1 / multiple of 16 / 64-bit for the
# ints that change between calls), so a binary is reused exactly where Triton would pick it.
_BINARIES: Dict[tuple, object] = {}
_LEAN = [_raw_stream is not None]


def _f32_pair(x: float) -> Tuple[float, float]:
    """(hi, lo) float32 values with hi + lo == x to about 48 bits (kernel float args are float32)."""
    hi = struct.unpack("f", struct.pack("f", x))[0]
    return hi, x - hi


def _plan(key, q, k, q_out, k_out, pos_stride, cache, rotary_dim, interleave, mode, in_place,
          rope_scale, rope_theta, smooth_a, smooth_b):
    half_block, block_h, block_t, warps = rope_config(rotary_dim)
    n_qo, n_kv, head_dim = q.shape[1], k.shape[1], q.shape[2]
    n_q_blocks = (n_qo + block_h - 1) // block_h
    n_blocks = n_q_blocks + (n_kv + block_h - 1) // block_h
    ints = (q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
            pos_stride, cache.stride(0) if cache is not None else 0, cache.shape[0] if cache is not None else 0,
            rotary_dim, 0 if in_place else head_dim - rotary_dim, n_q_blocks, n_blocks)
    floats = _f32_pair(-2.0 * math.log2(rope_theta) / rotary_dim) + (1.0 / rope_scale, smooth_a, smooth_b)
    constexprs = dict(POS_MODE=mode, INTERLEAVE=interleave, HALF_BLOCK=half_block, BLOCK_H=block_h, BLOCK_T=block_t)
    target = _MIN_PROGRAMS_PER_CU * num_compute_units(q.device.index or 0)
    plan = (constexprs, warps, block_t, ints, floats, n_blocks, target)
    _PLANS[key] = plan
    return plan


def _launch_rope(
    q, k, q_out, k_out, pos, indptr, offsets, cache,
    rotary_dim: int, interleave: bool, rope_scale: float, rope_theta: float,
    smooth_a: float, smooth_b: float,
) -> None:
    nnz = q.shape[0]
    if nnz == 0:
        return
    mode = POS_CACHE if cache is not None else (POS_INDPTR if indptr is not None else POS_IDS)
    pos_stride = 0
    if pos is not None:
        pos_stride = pos.stride(0)
        if pos.dtype == torch.int64:
            # Read the low 32-bit word of each position (little-endian), no copy, any stride.
            pos = pos.unsqueeze(-1).view(torch.int32)[:, 0]
            pos_stride *= 2
    in_place = q_out.data_ptr() == q.data_ptr() and k_out.data_ptr() == k.data_ptr()
    key = (q.dtype, q.device, mode, interleave, in_place, rotary_dim, q.shape[1:], k.shape[1],
           q.stride(), k.stride(), q_out.stride(), k_out.stride(), pos_stride,
           None if cache is None else (cache.stride(0), cache.shape[0]), rope_scale, rope_theta, smooth_a, smooth_b)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _plan(key, q, k, q_out, k_out, pos_stride, cache, rotary_dim, interleave, mode, in_place,
                     rope_scale, rope_theta, smooth_a, smooth_b)
    constexprs, warps, block_t, ints, floats, n_blocks, target = plan
    batch_size = indptr.shape[0] - 1 if indptr is not None else 1
    n_search = batch_size.bit_length()
    programs_t = (nnz + block_t - 1) // block_t
    n_splits = 1 if programs_t >= target else min(n_blocks, (target + programs_t - 1) // programs_t)
    i32 = pos if pos is not None else indptr
    ptrs = (q, k, q_out, k_out, i32, indptr if indptr is not None else i32, offsets if offsets is not None else i32,
            cache if cache is not None else _dummy_f32(q.device))
    args = ptrs + (nnz, q.shape[1], k.shape[1], batch_size, n_search) + ints + (n_splits,) + floats
    grid = (programs_t, n_splits, 1)
    if not _LEAN[0] or q.device.type != "cuda" or interpreter_active():
        rope_kernel[grid](*args, **constexprs, num_warps=warps)
        return
    spec = (key, n_splits, nnz == 1, nnz % 16 == 0, nnz >= 2**31, batch_size == 1, batch_size % 16 == 0,
            n_search == 1, n_search % 16 == 0) + tuple(t.data_ptr() & 15 == 0 for t in ptrs)
    binary = _BINARIES.get(spec)
    if binary is None:
        binary = rope_kernel[grid](*args, **constexprs, num_warps=warps)
        if all(hasattr(binary, a) for a in ("run", "function", "packed_metadata")):
            _BINARIES[spec] = binary
        else:  # not the launcher calling convention this path expects: the JIT path from now on
            _LEAN[0] = False
        return
    binary.run(grid[0], grid[1], 1, _raw_stream(q.device.index), binary.function, binary.packed_metadata,
               None, None, None, *args, *constexprs.values())


_DUMMIES = {}

# Output allocation for the out-of-place functions (tests replace it to poison the outputs).
_empty_like = torch.empty_like


def _dummy_f32(device) -> torch.Tensor:
    t = _DUMMIES.get(device)
    if t is None:
        t = _DUMMIES[device] = torch.zeros(1, dtype=torch.float32, device=device)
    return t


# --------------------------------------------------------------------------- torch.compile ops


@torch.library.custom_op("flashinfer_triton::apply_rope", mutates_args=("q_rope", "k_rope"))
def _rope_op(
    q: torch.Tensor, k: torch.Tensor, q_rope: torch.Tensor, k_rope: torch.Tensor,
    pos_ids: Optional[torch.Tensor], indptr: Optional[torch.Tensor], offsets: Optional[torch.Tensor],
    cos_sin_cache: Optional[torch.Tensor], rotary_dim: int, interleave: bool,
    rope_scale: float, rope_theta: float, smooth_a: float, smooth_b: float,
) -> None:
    _launch_rope(q, k, q_rope, k_rope, pos_ids, indptr, offsets, cos_sin_cache,
                 rotary_dim, interleave, rope_scale, rope_theta, smooth_a, smooth_b)


@_rope_op.register_fake
def _(q, k, q_rope, k_rope, pos_ids, indptr, offsets, cos_sin_cache, rotary_dim, interleave,
      rope_scale, rope_theta, smooth_a, smooth_b):
    return None


@torch.library.custom_op("flashinfer_triton::apply_rope_inplace", mutates_args=("q", "k"))
def _rope_inplace_op(
    q: torch.Tensor, k: torch.Tensor,
    pos_ids: Optional[torch.Tensor], indptr: Optional[torch.Tensor], offsets: Optional[torch.Tensor],
    cos_sin_cache: Optional[torch.Tensor], rotary_dim: int, interleave: bool,
    rope_scale: float, rope_theta: float, smooth_a: float, smooth_b: float,
) -> None:
    _launch_rope(q, k, q, k, pos_ids, indptr, offsets, cos_sin_cache,
                 rotary_dim, interleave, rope_scale, rope_theta, smooth_a, smooth_b)


@_rope_inplace_op.register_fake
def _(q, k, pos_ids, indptr, offsets, cos_sin_cache, rotary_dim, interleave,
      rope_scale, rope_theta, smooth_a, smooth_b):
    return None


def _run(q, k, q_out, k_out, pos, indptr, offsets, cache, rotary_dim, interleave,
         rope_scale, rope_theta, smooth_a, smooth_b) -> None:
    if not isinstance(interleave, bool):
        raise TypeError(f"interleave: expected a bool, got {type(interleave).__name__}")
    if q_out is None:
        if torch.compiler.is_compiling():
            _rope_inplace_op(q, k, pos, indptr, offsets, cache, rotary_dim, interleave,
                             rope_scale, rope_theta, smooth_a, smooth_b)
        else:
            _launch_rope(q, k, q, k, pos, indptr, offsets, cache, rotary_dim, interleave,
                         rope_scale, rope_theta, smooth_a, smooth_b)
    elif torch.compiler.is_compiling():
        _rope_op(q, k, q_out, k_out, pos, indptr, offsets, cache, rotary_dim, interleave,
                 rope_scale, rope_theta, smooth_a, smooth_b)
    else:
        _launch_rope(q, k, q_out, k_out, pos, indptr, offsets, cache, rotary_dim, interleave,
                     rope_scale, rope_theta, smooth_a, smooth_b)


def _ragged(q, k, indptr, offsets, rotary_dim, interleave, rope_scale, rope_theta, smooth, inplace):
    _check_qk(q, k)
    # Hot path: strided index views are rejected (as FlashInfer does), never copied per call.
    index_tensor("indptr", indptr, min_numel=2, device=q.device)
    index_tensor("offsets", offsets, numel=indptr.shape[0] - 1, device=q.device)
    if _checks.ENABLED:
        _checks.check_indptr("indptr", indptr, total=q.shape[0], total_name="nnz, q.shape[0]")
    rotary_dim = _check_rotary_dim(rotary_dim, q.shape[2])
    rope_scale, rope_theta = _check_rope_params(rope_scale, rope_theta)
    if inplace:
        _run(q, k, None, None, None, indptr, offsets, None, rotary_dim, interleave, rope_scale, rope_theta, *smooth)
        return None
    q_rope, k_rope = _empty_like(q), _empty_like(k)
    _run(q, k, q_rope, k_rope, None, indptr, offsets, None, rotary_dim, interleave, rope_scale, rope_theta, *smooth)
    return q_rope, k_rope


def _pos_ids(q, k, pos_ids, rotary_dim, interleave, rope_scale, rope_theta, smooth, inplace):
    _check_qk(q, k)
    _check_pos_ids("pos_ids", pos_ids, q.shape[0], q.device)
    rotary_dim = _check_rotary_dim(rotary_dim, q.shape[2])
    rope_scale, rope_theta = _check_rope_params(rope_scale, rope_theta)
    if inplace:
        _run(q, k, None, None, pos_ids, None, None, None, rotary_dim, interleave, rope_scale, rope_theta, *smooth)
        return None
    q_rope, k_rope = _empty_like(q), _empty_like(k)
    _run(q, k, q_rope, k_rope, pos_ids, None, None, None, rotary_dim, interleave, rope_scale, rope_theta, *smooth)
    return q_rope, k_rope


_DOC_RAGGED = r"""
    Parameters
    ----------
    q : torch.Tensor
        Queries, shape: ``[nnz, num_q_heads, head_dim]``, dtype: ``torch.float16``,
        ``torch.bfloat16`` or ``torch.float32``, last dimension contiguous.
    k : torch.Tensor
        Keys, shape: ``[nnz, num_k_heads, head_dim]``, dtype and device of ``q``.
    indptr : torch.Tensor
        shape: ``[batch_size + 1]``, dtype: ``torch.int32``, contiguous; request ``i`` owns tokens
        ``indptr[i]:indptr[i+1]``; ``indptr[0] == 0``, non-decreasing, ``indptr[-1] == nnz``
        (checked in checked mode).
    offsets : torch.Tensor
        shape: ``[batch_size]``, dtype: ``torch.int32``, contiguous; the position of request
        ``i``'s first token (token ``t`` has position ``offsets[i] + t - indptr[i]``).
    rotary_dim : Optional[int]
        Rotate the first ``rotary_dim`` dimensions (even, at most ``head_dim`` and 512);
        default ``None``: the whole head.
    interleave : bool
        ``False`` (default): NeoX halves; ``True``: GPT-J even/odd pairs."""

_DOC_POS = r"""
    Parameters
    ----------
    q : torch.Tensor
        Queries, shape: ``[nnz, num_q_heads, head_dim]``, dtype: ``torch.float16``,
        ``torch.bfloat16`` or ``torch.float32``, last dimension contiguous.
    k : torch.Tensor
        Keys, shape: ``[nnz, num_k_heads, head_dim]``, dtype and device of ``q``.
    pos_ids : torch.Tensor
        Position of each token, shape: ``[nnz]``, dtype: ``torch.int32`` or ``torch.int64``
        (values in ``[-2**31, 2**31)``, checked in checked mode), any stride.
    rotary_dim : Optional[int]
        Rotate the first ``rotary_dim`` dimensions (even, at most ``head_dim`` and 512);
        default ``None``: the whole head.
    interleave : bool
        ``False`` (default): NeoX halves; ``True``: GPT-J even/odd pairs."""

_DOC_PLAIN = r"""
    rope_scale : float
        Position interpolation factor (frequencies are divided by it), default ``1``.
    rope_theta : float
        RoPE base, default ``1e4``."""

_DOC_LLAMA = r"""
    rope_scale : float
        Frequency division factor for low frequencies, default ``8``.
    rope_theta : float
        RoPE base, default ``5e5``.
    low_freq_factor : float
        Llama 3.1 low frequency factor, default ``1``.
    high_freq_factor : float
        Llama 3.1 high frequency factor, default ``4``.
    old_context_len : int
        Llama 3.1 original context length, default ``8192``."""

_DOC_OUT = r"""

    Returns
    -------
    q_rope : torch.Tensor
        shape: ``[nnz, num_q_heads, head_dim]``, dtype of ``q``.
    k_rope : torch.Tensor
        shape: ``[nnz, num_k_heads, head_dim]``, dtype of ``k``.
    """

_DOC_INPLACE = r"""

    ``q`` and ``k`` are overwritten; nothing is returned.
    """


def apply_rope(q, k, indptr, offsets, rotary_dim=None, interleave=False, rope_scale=1, rope_theta=1e4):
    return _ragged(q, k, indptr, offsets, rotary_dim, interleave, rope_scale, rope_theta, (0.0, 0.0), False)


def apply_rope_inplace(q, k, indptr, offsets, rotary_dim=None, interleave=False, rope_scale=1, rope_theta=1e4):
    _ragged(q, k, indptr, offsets, rotary_dim, interleave, rope_scale, rope_theta, (0.0, 0.0), True)


def apply_rope_pos_ids(q, k, pos_ids, rotary_dim=None, interleave=False, rope_scale=1, rope_theta=1e4):
    return _pos_ids(q, k, pos_ids, rotary_dim, interleave, rope_scale, rope_theta, (0.0, 0.0), False)


def apply_rope_pos_ids_inplace(q, k, pos_ids, rotary_dim=None, interleave=False, rope_scale=1, rope_theta=1e4):
    _pos_ids(q, k, pos_ids, rotary_dim, interleave, rope_scale, rope_theta, (0.0, 0.0), True)


def apply_llama31_rope(q, k, indptr, offsets, rotary_dim=None, interleave=False, rope_scale=8, rope_theta=5e5,
                       low_freq_factor=1, high_freq_factor=4, old_context_len=8192):
    smooth = _llama31_smooth(low_freq_factor, high_freq_factor, old_context_len)
    return _ragged(q, k, indptr, offsets, rotary_dim, interleave, rope_scale, rope_theta, smooth, False)


def apply_llama31_rope_inplace(q, k, indptr, offsets, rotary_dim=None, interleave=False, rope_scale=8,
                               rope_theta=5e5, low_freq_factor=1, high_freq_factor=4, old_context_len=8192):
    smooth = _llama31_smooth(low_freq_factor, high_freq_factor, old_context_len)
    _ragged(q, k, indptr, offsets, rotary_dim, interleave, rope_scale, rope_theta, smooth, True)


def apply_llama31_rope_pos_ids(q, k, pos_ids, rotary_dim=None, interleave=False, rope_scale=8, rope_theta=5e5,
                               low_freq_factor=1, high_freq_factor=4, old_context_len=8192):
    smooth = _llama31_smooth(low_freq_factor, high_freq_factor, old_context_len)
    return _pos_ids(q, k, pos_ids, rotary_dim, interleave, rope_scale, rope_theta, smooth, False)


def apply_llama31_rope_pos_ids_inplace(q, k, pos_ids, rotary_dim=None, interleave=False, rope_scale=8,
                                       rope_theta=5e5, low_freq_factor=1, high_freq_factor=4, old_context_len=8192):
    smooth = _llama31_smooth(low_freq_factor, high_freq_factor, old_context_len)
    _pos_ids(q, k, pos_ids, rotary_dim, interleave, rope_scale, rope_theta, smooth, True)


apply_rope.__doc__ = "Apply RoPE to ragged queries/keys; cos/sin computed in the kernel." + _DOC_RAGGED + _DOC_PLAIN + _DOC_OUT
apply_rope_inplace.__doc__ = "Apply RoPE to ragged queries/keys in place." + _DOC_RAGGED + _DOC_PLAIN + _DOC_INPLACE
apply_rope_pos_ids.__doc__ = "Apply RoPE to queries/keys at the given positions." + _DOC_POS + _DOC_PLAIN + _DOC_OUT
apply_rope_pos_ids_inplace.__doc__ = "Apply RoPE at the given positions in place." + _DOC_POS + _DOC_PLAIN + _DOC_INPLACE
apply_llama31_rope.__doc__ = "Apply Llama 3.1 RoPE to ragged queries/keys." + _DOC_RAGGED + _DOC_LLAMA + _DOC_OUT
apply_llama31_rope_inplace.__doc__ = "Apply Llama 3.1 RoPE to ragged queries/keys in place." + _DOC_RAGGED + _DOC_LLAMA + _DOC_INPLACE
apply_llama31_rope_pos_ids.__doc__ = "Apply Llama 3.1 RoPE at the given positions." + _DOC_POS + _DOC_LLAMA + _DOC_OUT
apply_llama31_rope_pos_ids_inplace.__doc__ = "Apply Llama 3.1 RoPE at the given positions in place." + _DOC_POS + _DOC_LLAMA + _DOC_INPLACE


def _cos_sin_cache(positions, query, key, head_size, cos_sin_cache, is_neox, inplace):
    check_tensor("query", query, dtypes=_FLOAT_DTYPES, ndim=(2, 3), last_dim_contiguous=True)
    check_tensor("key", key, dtypes=(query.dtype,), ndim=(2, 3), device=query.device, last_dim_contiguous=True)
    if isinstance(head_size, bool) or not isinstance(head_size, int) or head_size <= 0:
        raise ValueError(f"head_size: expected a positive int, got {head_size!r}")
    nnz = query.shape[0]
    if key.shape[0] != nnz:
        raise ValueError(f"key: expected {nnz} tokens (as query), got shape {list(key.shape)}")
    for name, t in (("query", query), ("key", key)):
        width = t.shape[-1] * (t.shape[1] if t.dim() == 3 else 1)
        if width % head_size or (t.dim() == 3 and t.shape[-1] != head_size):
            raise ValueError(f"{name}: shape {list(t.shape)} is not [nnz, num_heads * head_size] with head_size={head_size}")
    _check_pos_ids("positions", positions, nnz, query.device)
    if not isinstance(cos_sin_cache, torch.Tensor) or cos_sin_cache.dtype != torch.float32:
        got = cos_sin_cache.dtype if isinstance(cos_sin_cache, torch.Tensor) else type(cos_sin_cache).__name__
        raise ValueError(f"cos_sin_cache: should be float32, got {got}")
    check_tensor("cos_sin_cache", cos_sin_cache, ndim=2, device=query.device, last_dim_contiguous=True)
    rotary_dim = _check_rotary_dim(cos_sin_cache.shape[1], head_size)
    if _checks.ENABLED:
        _checks.check_in_range("positions", positions, 0, cos_sin_cache.shape[0], "a row of cos_sin_cache")
    if not isinstance(is_neox, bool):
        raise TypeError(f"is_neox: expected a bool, got {type(is_neox).__name__}")
    q = _heads_view("query", query, head_size)
    k = _heads_view("key", key, head_size)
    if inplace:
        _run(q, k, None, None, positions, None, None, cos_sin_cache, rotary_dim, not is_neox, 1.0, 1.0, 0.0, 0.0)
        return None
    query_out, key_out = _empty_like(query), _empty_like(key)
    _run(q, k, _heads_view("query", query_out, head_size), _heads_view("key", key_out, head_size),
         positions, None, None, cos_sin_cache, rotary_dim, not is_neox, 1.0, 1.0, 0.0, 0.0)
    return query_out, key_out


def _heads_view(name, t, head_size):
    if t.dim() == 3:
        return t
    if t.stride(-1) != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous")
    # [nnz, H * D] with row stride s -> [nnz, H, D] with strides (s, D, 1), no copy.
    return t.as_strided((t.shape[0], t.shape[1] // head_size, head_size), (t.stride(0), head_size, 1))


def apply_rope_with_cos_sin_cache(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Apply RoPE with precomputed cos/sin (the vLLM/SGLang layout).

    Parameters
    ----------
    positions : torch.Tensor
        shape: ``[nnz]``, dtype: ``torch.int32`` or ``torch.int64``, any stride; row of
        ``cos_sin_cache`` for each token. A row outside ``[0, max_position)`` is not read and
        gives NaN for that token (checked mode raises instead).
    query : torch.Tensor
        shape: ``[nnz, num_q_heads * head_size]``, dtype: ``torch.float16``, ``torch.bfloat16``
        or ``torch.float32``, last dimension contiguous (rows may be strided).
    key : torch.Tensor
        shape: ``[nnz, num_k_heads * head_size]``, dtype of ``query``.
    head_size : int
        Size of one head.
    cos_sin_cache : torch.Tensor
        shape: ``[max_position, rotary_dim]``, dtype: ``torch.float32``; cos in the first half of
        each row, sin in the second. ``rotary_dim`` (even, at most ``head_size``) is its width.
    is_neox : bool
        ``True`` (default): NeoX halves; ``False``: GPT-J even/odd pairs.

    Returns
    -------
    query_out : torch.Tensor
        shape and dtype of ``query``.
    key_out : torch.Tensor
        shape and dtype of ``key``.
    """
    return _cos_sin_cache(positions, query, key, head_size, cos_sin_cache, is_neox, False)


def apply_rope_with_cos_sin_cache_inplace(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> None:
    r"""Apply RoPE with precomputed cos/sin (the vLLM/SGLang layout), in place.

    Parameters
    ----------
    positions : torch.Tensor
        shape: ``[nnz]``, dtype: ``torch.int32`` or ``torch.int64``, any stride; rows outside
        ``cos_sin_cache`` give NaN (checked mode raises).
    query : torch.Tensor
        shape: ``[nnz, num_q_heads * head_size]``, dtype: ``torch.float16``, ``torch.bfloat16``
        or ``torch.float32``; overwritten.
    key : torch.Tensor
        shape: ``[nnz, num_k_heads * head_size]``, dtype of ``query``; overwritten.
    head_size : int
        Size of one head.
    cos_sin_cache : torch.Tensor
        shape: ``[max_position, rotary_dim]``, dtype: ``torch.float32``; cos then sin.
    is_neox : bool
        ``True`` (default): NeoX halves; ``False``: GPT-J even/odd pairs.
    """
    _cos_sin_cache(positions, query, key, head_size, cos_sin_cache, is_neox, True)
