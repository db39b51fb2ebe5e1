"""Cascade inference, FlashInfer 0.6.x API.

Attention-state merging: ``merge_state``, ``merge_state_in_place``, ``merge_states``. An attention
state is ``(v, s)``: the attention output over a KV segment and its log-sum-exp, **base 2**
(FlashInfer's convention): ``s = log2(sum_j 2^(x_j * log2(e)))`` over the scaled logits ``x_j``.
A state with ``s = -inf`` is an empty segment: it contributes nothing (its ``v`` is not read into the
sum); merging only empty states gives ``v = 0`` and ``s = -inf``, never NaN.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton

from ._utils import check_tensor, interpreter_active
from .kernels import merge as _km

_V_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ---------------------------------------------------------------------------------------------
# merge_state / merge_state_in_place / merge_states (self-contained: checks, launchers, ops)
# ---------------------------------------------------------------------------------------------


def _merge_check_v(name: str, v, ndim: int, device=None) -> torch.Tensor:
    check_tensor(name, v, dtypes=_V_DTYPES, ndim=ndim, device=device)
    if v.device.type == "cpu" and not interpreter_active():
        raise ValueError(f"{name}: expected a CUDA/ROCm tensor, got one on cpu (set TRITON_INTERPRET=1 for the CPU interpreter)")
    if _km.blocks(v.shape[-1]) is None:
        raise NotImplementedError(f"{name}: head_dim={v.shape[-1]}; at most {_km.BLOCK_DS[-1]} is supported")
    return v


def _merge_check_s(name: str, s, shape, device, in_place: bool = False) -> torch.Tensor:
    check_tensor(name, s, ndim=len(shape), device=device)
    if list(s.shape) != list(shape):
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(s.shape)}")
    if s.dtype != torch.float32:
        if in_place or not s.dtype.is_floating_point:
            raise TypeError(f"{name}: expected dtype float32, got {str(s.dtype).replace('torch.', '')}")
        s = s.float()
    return s


def _last_contiguous(v: torch.Tensor) -> torch.Tensor:
    return v if v.stride(-1) == 1 or v.shape[-1] <= 1 else v.contiguous()


def _launch_merge_state(v_a, s_a, v_b, s_b, v_out, s_out, mask) -> None:
    seq_len, num_heads, head_dim = v_a.shape
    if seq_len == 0 or num_heads == 0:
        return
    block_h, block_d = _km.blocks(head_dim)
    grid = (seq_len, triton.cdiv(num_heads, block_h))
    _km.merge_state_kernel[grid](
        v_a, s_a, v_b, s_b, v_out, s_out, v_a if mask is None else mask,
        num_heads, head_dim,
        v_a.stride(0), v_a.stride(1), s_a.stride(0), s_a.stride(1),
        v_b.stride(0), v_b.stride(1), s_b.stride(0), s_b.stride(1),
        v_out.stride(0), v_out.stride(1), s_out.stride(0), s_out.stride(1),
        HAS_MASK=mask is not None, BLOCK_H=block_h, BLOCK_D=block_d, num_warps=_km.NUM_WARPS,
    )


def _merge_state_impl(v_a, s_a, v_b, s_b) -> Tuple[torch.Tensor, torch.Tensor]:
    v_out = torch.empty(v_a.shape, dtype=v_a.dtype, device=v_a.device)
    s_out = torch.empty(s_a.shape, dtype=torch.float32, device=v_a.device)
    _launch_merge_state(v_a, s_a, v_b, s_b, v_out, s_out, None)
    return v_out, s_out


def _launch_merge_states(v, s) -> Tuple[torch.Tensor, torch.Tensor]:
    seq_len, num_states, num_heads, head_dim = v.shape
    v_out = torch.empty((seq_len, num_heads, head_dim), dtype=v.dtype, device=v.device)
    s_out = torch.empty((seq_len, num_heads), dtype=torch.float32, device=v.device)
    if seq_len == 0 or num_heads == 0:
        return v_out, s_out
    block_h, block_d = _km.blocks(head_dim)
    grid = (seq_len, triton.cdiv(num_heads, block_h))
    _km.merge_states_kernel[grid](
        v, s, v_out, s_out, num_states, num_heads, head_dim,
        v.stride(0), v.stride(1), v.stride(2), s.stride(0), s.stride(1), s.stride(2),
        v_out.stride(0), v_out.stride(1), s_out.stride(0), s_out.stride(1),
        BLOCK_H=block_h, BLOCK_D=block_d, num_warps=_km.NUM_WARPS,
    )
    return v_out, s_out


@torch.library.custom_op("flashinfer_triton::merge_state", mutates_args=())
def _merge_state_op(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return _merge_state_impl(v_a, s_a, v_b, s_b)


@_merge_state_op.register_fake
def _(v_a, s_a, v_b, s_b):
    return torch.empty_like(v_a, memory_format=torch.contiguous_format), s_a.new_empty(s_a.shape, dtype=torch.float32)


@torch.library.custom_op("flashinfer_triton::merge_state_in_place", mutates_args=("v", "s"))
def _merge_state_in_place_op(
    v: torch.Tensor, s: torch.Tensor, v_other: torch.Tensor, s_other: torch.Tensor, mask: Optional[torch.Tensor]
) -> None:
    _launch_merge_state(v, s, v_other, s_other, v, s, None if mask is None else mask.view(torch.uint8))


@_merge_state_in_place_op.register_fake
def _(v, s, v_other, s_other, mask):
    return None


@torch.library.custom_op("flashinfer_triton::merge_states", mutates_args=())
def _merge_states_op(v: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return _launch_merge_states(v, s)


@_merge_states_op.register_fake
def _(v, s):
    seq_len, _, num_heads, head_dim = v.shape
    return v.new_empty((seq_len, num_heads, head_dim)), s.new_empty((seq_len, num_heads), dtype=torch.float32)


def merge_state(
    v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Merge two attention states: the output and LSE of attention over KV segments ``[A: B]``.

    Parameters
    ----------
    v_a : torch.Tensor
        Attention output over segment A, shape ``[seq_len, num_heads, head_dim]``, dtype float16,
        bfloat16 or float32.
    s_a : torch.Tensor
        Base-2 log-sum-exp over segment A, shape ``[seq_len, num_heads]``, dtype float32 (other
        float dtypes are converted). ``-inf`` marks an empty segment.
    v_b : torch.Tensor
        Attention output over segment B, same shape and dtype as ``v_a``.
    s_b : torch.Tensor
        Base-2 log-sum-exp over segment B, shape ``[seq_len, num_heads]``, float32.

    Returns
    -------
    V : torch.Tensor
        Merged output, shape ``[seq_len, num_heads, head_dim]``, ``v_a``'s dtype.
    S : torch.Tensor
        Merged base-2 log-sum-exp, shape ``[seq_len, num_heads]``, dtype float32
        (``log2(2^s_a + 2^s_b)``; ``-inf`` where both are empty, with ``V = 0`` there).
    """
    _merge_check_v("v_a", v_a, 3)
    device = v_a.device
    _merge_check_v("v_b", v_b, 3, device)
    if v_b.shape != v_a.shape or v_b.dtype != v_a.dtype:
        raise ValueError(f"v_b: expected shape {list(v_a.shape)} and dtype {v_a.dtype} (v_a's), got {list(v_b.shape)}, {v_b.dtype}")
    s_a = _merge_check_s("s_a", s_a, v_a.shape[:2], device)
    s_b = _merge_check_s("s_b", s_b, v_a.shape[:2], device)
    v_a, v_b = _last_contiguous(v_a), _last_contiguous(v_b)
    if torch.compiler.is_compiling():
        return _merge_state_op(v_a, s_a, v_b, s_b)
    return _merge_state_impl(v_a, s_a, v_b, s_b)


def merge_state_in_place(
    v: torch.Tensor,
    s: torch.Tensor,
    v_other: torch.Tensor,
    s_other: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> None:
    r"""Merge the state ``(v_other, s_other)`` into ``(v, s)``, in place.

    Parameters
    ----------
    v : torch.Tensor
        Attention output, updated in place, shape ``[seq_len, num_heads, head_dim]``, dtype
        float16, bfloat16 or float32, last dimension contiguous.
    s : torch.Tensor
        Base-2 log-sum-exp, updated in place, shape ``[seq_len, num_heads]``, dtype float32.
    v_other : torch.Tensor
        The other attention output, same shape and dtype as ``v``.
    s_other : torch.Tensor
        The other base-2 log-sum-exp, shape ``[seq_len, num_heads]``, float32.
    mask : Optional[torch.Tensor]
        shape ``[seq_len]``, dtype ``torch.bool``: only rows where it is True are merged, the
        others are left untouched (useful under CUDA graphs). None (default) merges every row.
    """
    _merge_check_v("v", v, 3)
    device = v.device
    if v.stride(-1) != 1 and v.shape[-1] > 1:
        raise ValueError(f"v: the last dimension must be contiguous (stride 1), got strides {v.stride()}")
    _merge_check_v("v_other", v_other, 3, device)
    if v_other.shape != v.shape or v_other.dtype != v.dtype:
        raise ValueError(f"v_other: expected shape {list(v.shape)} and dtype {v.dtype} (v's), got {list(v_other.shape)}, {v_other.dtype}")
    s = _merge_check_s("s", s, v.shape[:2], device, in_place=True)
    s_other = _merge_check_s("s_other", s_other, v.shape[:2], device)
    v_other = _last_contiguous(v_other)
    if mask is not None:
        check_tensor("mask", mask, dtypes=(torch.bool,), ndim=1, device=device)
        if mask.numel() != v.shape[0]:
            raise ValueError(f"mask: expected {v.shape[0]} entries (seq_len), got {mask.numel()}")
    if torch.compiler.is_compiling():
        _merge_state_in_place_op(v, s, v_other, s_other, mask)
    else:
        _launch_merge_state(v, s, v_other, s_other, v, s, None if mask is None else mask.view(torch.uint8))


def merge_states(v: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Merge ``num_states`` attention states per row and head.

    Parameters
    ----------
    v : torch.Tensor
        Attention outputs, shape ``[seq_len, num_states, num_heads, head_dim]``, dtype float16,
        bfloat16 or float32.
    s : torch.Tensor
        Base-2 log-sum-exps, shape ``[seq_len, num_states, num_heads]``, dtype float32 (other
        float dtypes are converted); ``-inf`` marks an empty state.

    Returns
    -------
    V : torch.Tensor
        Merged output, shape ``[seq_len, num_heads, head_dim]``, ``v``'s dtype.
    S : torch.Tensor
        Merged base-2 log-sum-exp ``log2(sum_i 2^s_i)``, shape ``[seq_len, num_heads]``, dtype
        float32; ``-inf`` (with ``V = 0``) where every state is empty.
    """
    _merge_check_v("v", v, 4)
    s = _merge_check_s("s", s, v.shape[:3], v.device)
    v = _last_contiguous(v)
    if torch.compiler.is_compiling():
        return _merge_states_op(v, s)
    return _launch_merge_states(v, s)
