"""Attention variants: the hooks the tile loop calls, and the built-in options written as hooks.

FlashInfer's built-in options are one variant, ``DefaultAttention<mask, window, soft cap, ALiBi>``;
here the same options are the ``builtin_*`` functions below, switched by constexpr flags, so an
option that is off costs nothing. User variants are two more hooks, Triton functions passed to the
kernel as constexprs (``None`` when absent):

``LOGITS_HOOK(logits, q_pos, kv_pos, qo_head, kv_head, req, params) -> logits``
    ``logits`` float32 ``[BLOCK_M, BLOCK_N]`` in natural units (``sm_scale * q.k`` after the
    built-in soft cap / ALiBi); ``q_pos`` int32 ``[BLOCK_M]`` the query's position in its sequence
    (``kv_len - qo_len + i``); ``kv_pos`` int32 ``[BLOCK_N]`` the key's position; ``qo_head`` int32
    ``[BLOCK_M]``; ``kv_head``, ``req`` int32 scalars; ``params`` the tuple
    ``(t0, t1, t2, t3, s0, s1, s2, s3)`` of the variant's tensors (pointers) and float scalars.
    Without softmax (``USE_SOFTMAX=False``, e.g. sigmoid attention) it returns the weights directly.
``MASK_HOOK(q_pos, kv_pos, qo_head, kv_head, req, params) -> keep``
    bool ``[BLOCK_M, BLOCK_N]``; False removes a key. Every block then takes the masked path.

Logits inside the loop are base-2 (``* log2 e``); the hooks see natural units.
"""

import triton
import triton.language as tl

from .elementwise import tanh

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def soft_cap_logits(s, sm_scale_log2, soft_cap):
    """``soft_cap * tanh(x / soft_cap)`` on x = sm_scale * q.k, in base-2 units; the launcher passes
    ``sm_scale_log2 = sm_scale / soft_cap`` with a soft cap."""
    return (soft_cap * LOG2E) * tanh(s * sm_scale_log2)


@triton.jit
def alibi_logits(s, slope_log2, q_idx, kv_pos):
    """ALiBi bias ``slope * (kv_pos - q_idx)`` (natural units, FlashInfer's convention: the raw
    query index, not its position), added in base-2 units."""
    return s + slope_log2[:, None] * (kv_pos[None, :] - q_idx[:, None]).to(tl.float32)


@triton.jit
def builtin_logits(s, sm_scale_log2, soft_cap, slope_log2, q_idx, kv_pos, SOFT_CAP: tl.constexpr,
                   POS_ENC: tl.constexpr):
    """Scaled logits in base 2 with the built-in soft cap and ALiBi (POS_ENC == 2)."""
    if SOFT_CAP:
        s = soft_cap_logits(s, sm_scale_log2, soft_cap)
    else:
        s = s * sm_scale_log2
    if POS_ENC == 2:
        s = alibi_logits(s, slope_log2, q_idx, kv_pos)
    return s


@triton.jit
def causal_keep(q_pos, kv_pos):
    """Bottom-right causal: key j is visible to the query at position p iff j <= p."""
    return kv_pos[None, :] <= q_pos[:, None]


@triton.jit
def window_keep(q_pos, kv_pos, window_left):
    """Sliding window: keys at positions >= p - window_left."""
    return kv_pos[None, :] >= q_pos[:, None] - window_left


@triton.jit
def packed_mask_keep(keep, mask_ptr, mask_base, q_idx, kv_pos, kv_len):
    """Custom mask bit-packed little-endian, row-major ``[qo_len, kv_len]`` per request from byte
    ``mask_base``; only bits under ``keep`` are read."""
    bit = q_idx.to(tl.int64)[:, None] * kv_len + kv_pos[None, :]
    byte = tl.load(mask_ptr + mask_base + bit // 8, mask=keep, other=0)
    return keep & (((byte >> (bit % 8).to(tl.uint8)) & 1) != 0)


@triton.jit
def builtin_mask(m_n, m_row, q_idx, q_pos, kv_pos, window_left, kv_len, mask_ptr, mask_base,
                 CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, CUSTOM_MASK: tl.constexpr):
    """Keys in range for rows in range, with the built-in causal / window / custom masks."""
    keep = m_n[None, :] & m_row[:, None]
    if CAUSAL:
        keep &= causal_keep(q_pos, kv_pos)
    if HAS_WINDOW:
        keep &= window_keep(q_pos, kv_pos, window_left)
    if CUSTOM_MASK:
        keep = packed_mask_keep(keep, mask_ptr, mask_base, q_idx, kv_pos, kv_len)
    return keep
