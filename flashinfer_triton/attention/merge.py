"""Host side of the one LSE-merge family: checks, launches and torch.library ops of
``merge_state`` / ``merge_state_in_place`` / ``merge_states`` (the cascade API calls these; the
split-KV merge runs inside the attention kernel with the same ``merge_step``).

States are ``(v, s)`` with ``s`` the base-2 LSE; see ``flashinfer_triton/kernels/attention/merge.py``
for the semantics of empty (-inf), NaN and +inf states.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton

from .._utils import check_tensor, interpreter_active
from ..kernels.attention import merge as km

V_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_v(name: str, v, ndim: int, device=None) -> torch.Tensor:
    check_tensor(name, v, dtypes=V_DTYPES, ndim=ndim, device=device)
    if v.device.type == "cpu" and not interpreter_active():
        raise ValueError(f"{name}: expected a CUDA/ROCm tensor, got one on cpu (set TRITON_INTERPRET=1 for the CPU interpreter)")
    if km.merge_blocks(v.shape[-1]) is None:
        raise NotImplementedError(f"{name}: head_dim={v.shape[-1]}; at most {km.BLOCK_DS[-1]} is supported")
    return v


def check_s(name: str, s, shape, device, in_place: bool = False) -> torch.Tensor:
    check_tensor(name, s, ndim=len(shape), device=device)
    if list(s.shape) != list(shape):
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(s.shape)}")
    if s.dtype != torch.float32:
        if in_place or not s.dtype.is_floating_point:
            raise TypeError(f"{name}: expected dtype float32, got {str(s.dtype).replace('torch.', '')}")
        s = s.float()
    return s


def last_contiguous(v: torch.Tensor) -> torch.Tensor:
    return v if v.stride(-1) == 1 or v.shape[-1] <= 1 else v.contiguous()


def launch_merge_state(v_a, s_a, v_b, s_b, v_out, s_out, mask: Optional[torch.Tensor]) -> None:
    """(v_out, s_out) = merge of (v_a, s_a) and (v_b, s_b); [seq, H, D] / [seq, H] with any strides
    but a unit last stride. Rows whose ``mask`` (uint8 [seq], contiguous) byte is 0 are skipped."""
    seq_len, num_heads, head_dim = v_a.shape
    if seq_len == 0 or num_heads == 0:
        return
    block_h, block_d = km.merge_blocks(head_dim)
    grid = (seq_len, triton.cdiv(num_heads, block_h))
    km.merge_state_kernel[grid](
        v_a, s_a, v_b, s_b, v_out, s_out, v_a if mask is None else mask, num_heads, head_dim,
        v_a.stride(0), v_a.stride(1), s_a.stride(0), s_a.stride(1), v_b.stride(0), v_b.stride(1),
        s_b.stride(0), s_b.stride(1), v_out.stride(0), v_out.stride(1), s_out.stride(0), s_out.stride(1),
        HAS_MASK=mask is not None, BLOCK_H=block_h, BLOCK_D=block_d, num_warps=km.NUM_WARPS,
    )


def merge_state_new(v_a, s_a, v_b, s_b) -> Tuple[torch.Tensor, torch.Tensor]:
    v_out = torch.empty(v_a.shape, dtype=v_a.dtype, device=v_a.device)
    s_out = torch.empty(s_a.shape, dtype=torch.float32, device=v_a.device)
    launch_merge_state(v_a, s_a, v_b, s_b, v_out, s_out, None)
    return v_out, s_out


def launch_merge_states(v, s) -> Tuple[torch.Tensor, torch.Tensor]:
    """v [seq, K, H, D], s [seq, K, H] -> (v [seq, H, D], s [seq, H] float32)."""
    seq_len, num_states, num_heads, head_dim = v.shape
    v_out = torch.empty((seq_len, num_heads, head_dim), dtype=v.dtype, device=v.device)
    s_out = torch.empty((seq_len, num_heads), dtype=torch.float32, device=v.device)
    if seq_len == 0 or num_heads == 0:
        return v_out, s_out
    block_h, block_d = km.merge_blocks(head_dim)
    grid = (seq_len, triton.cdiv(num_heads, block_h))
    km.merge_states_kernel[grid](
        v, s, v_out, s_out, num_states, num_heads, head_dim,
        v.stride(0), v.stride(1), v.stride(2), s.stride(0), s.stride(1), s.stride(2),
        v_out.stride(0), v_out.stride(1), s_out.stride(0), s_out.stride(1),
        BLOCK_H=block_h, BLOCK_D=block_d, num_warps=km.NUM_WARPS,
    )
    return v_out, s_out


@torch.library.custom_op("flashinfer_triton::merge_state", mutates_args=())
def merge_state_op(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return merge_state_new(v_a, s_a, v_b, s_b)


@merge_state_op.register_fake
def _(v_a, s_a, v_b, s_b):
    return torch.empty_like(v_a, memory_format=torch.contiguous_format), s_a.new_empty(s_a.shape, dtype=torch.float32)


@torch.library.custom_op("flashinfer_triton::merge_state_in_place", mutates_args=("v", "s"))
def merge_state_in_place_op(
    v: torch.Tensor, s: torch.Tensor, v_other: torch.Tensor, s_other: torch.Tensor, mask: Optional[torch.Tensor]
) -> None:
    launch_merge_state(v, s, v_other, s_other, v, s, None if mask is None else mask.view(torch.uint8))


@merge_state_in_place_op.register_fake
def _(v, s, v_other, s_other, mask):
    return None


@torch.library.custom_op("flashinfer_triton::merge_states", mutates_args=())
def merge_states_op(v: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return launch_merge_states(v, s)


@merge_states_op.register_fake
def _(v, s):
    seq_len, _, num_heads, head_dim = v.shape
    return v.new_empty((seq_len, num_heads, head_dim)), s.new_empty((seq_len, num_heads), dtype=torch.float32)


def merge_into(v: torch.Tensor, s: torch.Tensor, v_other: torch.Tensor, s_other: torch.Tensor) -> None:
    """``(v, s) <- merge((v, s), (v_other, s_other))`` in place (cascade levels), no checks."""
    if torch.compiler.is_compiling():
        merge_state_in_place_op(v, s, v_other, s_other, None)
    else:
        launch_merge_state(v, s, v_other, s_other, v, s, None)
