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
words are read directly, no copy). Each function is also a ``torch.library`` custom op that
``torch.compile`` sees; eager calls launch the kernel directly.
"""

from __future__ import annotations

import math
import struct
from typing import Optional, Tuple

import torch

from ._utils import check_int32_index, check_shape, check_tensor, num_compute_units
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
    check_tensor(name, pos, dtypes=(torch.int32, torch.int64), ndim=1, device=device)
    if pos.shape[0] != nnz:
        raise ValueError(f"{name}: expected {nnz} entries (one per token of q/k), got {pos.shape[0]}")


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

# Below this many token blocks the heads of a token block are spread over several programs.
_MIN_PROGRAMS_PER_CU = 2


def _launch_rope(
    q, k, q_out, k_out, pos, indptr, offsets, cache,
    rotary_dim: int, interleave: bool, rope_scale: float, rope_theta: float,
    smooth_a: float, smooth_b: float,
) -> None:
    nnz, n_qo, head_dim = q.shape
    n_kv = k.shape[1]
    if nnz == 0:
        return
    if cache is not None:
        mode = POS_CACHE
    elif indptr is not None:
        mode = POS_INDPTR
    else:
        mode = POS_IDS
    half_block, block_h, block_t, warps = rope_config(rotary_dim)
    pos_stride = 0
    if pos is not None:
        if pos.dtype == torch.int64:
            # Read the low 32-bit word of each position (little-endian), no copy.
            if pos.stride(0) != 1:
                pos = pos.contiguous()
            pos = pos.view(torch.int32)
            pos_stride = 2
        else:
            pos_stride = pos.stride(0)
    batch_size = indptr.shape[0] - 1 if indptr is not None else 1
    dummy_i32 = pos if pos is not None else indptr
    in_place = q_out.data_ptr() == q.data_ptr() and k_out.data_ptr() == k.data_ptr()
    n_pass = 0 if in_place else head_dim - rotary_dim
    log2_theta = math.log2(rope_theta)
    log2_hi = struct.unpack("f", struct.pack("f", log2_theta))[0]
    programs_t = (nnz + block_t - 1) // block_t
    head_blocks = (max(n_qo, n_kv) + block_h - 1) // block_h
    target = _MIN_PROGRAMS_PER_CU * num_compute_units(q.device.index or 0)
    n_splits = 1
    if programs_t < target:
        n_splits = max(1, min(head_blocks, (target + programs_t - 1) // programs_t))
    rope_kernel[(programs_t, n_splits)](
        q, k, q_out, k_out,
        pos if pos is not None else dummy_i32,
        indptr if indptr is not None else dummy_i32,
        offsets if offsets is not None else dummy_i32,
        cache if cache is not None else _dummy_f32(q.device),
        nnz, n_qo, n_kv, batch_size, int(batch_size).bit_length(),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
        pos_stride, cache.stride(0) if cache is not None else 0,
        rotary_dim, n_pass, n_splits,
        log2_hi, log2_theta - log2_hi, 1.0 / rope_scale, smooth_a, smooth_b,
        POS_MODE=mode, INTERLEAVE=bool(interleave),
        HALF_BLOCK=half_block, BLOCK_H=block_h, BLOCK_T=block_t,
        num_warps=warps,
    )


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
    check_int32_index("indptr", indptr, device=q.device)
    if indptr.shape[0] < 2:
        raise ValueError(f"indptr: expected batch_size + 1 >= 2 entries, got {indptr.shape[0]}")
    check_int32_index("offsets", offsets, numel=indptr.shape[0] - 1, device=q.device)
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
        shape: ``[batch_size + 1]``, dtype: ``torch.int32``; request ``i`` owns tokens
        ``indptr[i]:indptr[i+1]``; ``indptr[0] == 0`` and ``indptr[-1] == nnz``.
    offsets : torch.Tensor
        shape: ``[batch_size]``, dtype: ``torch.int32``; the position of request ``i``'s first
        token (token ``t`` has position ``offsets[i] + t - indptr[i]``).
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
        (values in ``[0, 2**31)``).
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
        shape: ``[nnz]``, dtype: ``torch.int32`` or ``torch.int64``; row of ``cos_sin_cache`` for
        each token (must be in range: not checked on the device).
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
        shape: ``[nnz]``, dtype: ``torch.int32`` or ``torch.int64``.
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
