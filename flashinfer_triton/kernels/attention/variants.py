"""Attention variants: the hooks the tile loop calls, and the built-in options written as hooks.

FlashInfer's built-in options are one variant, ``DefaultAttention<mask, window, soft cap, ALiBi>``;
here the same options are the ``builtin_*`` functions below, switched by constexpr flags, so an
option that is off costs nothing. User variants are two more hooks, Triton functions passed to the
kernel as constexprs (``None`` when absent), called through ``user_logits`` / ``user_mask``, which
check their results when the kernel compiles (the public API and its documentation:
``flashinfer_triton/attention/variant.py``):

``LOGITS_HOOK(logits, q_pos, kv_pos, qo_head, kv_head, req, params) -> logits``
    ``logits`` float32 ``[BLOCK_M, BLOCK_N]`` in natural units (``sm_scale * q.k`` after the
    built-in soft cap / ALiBi); ``q_pos`` int32 ``[BLOCK_M]`` the query's position in its sequence
    (``kv_len - qo_len + i``); ``kv_pos`` int32 ``[BLOCK_N]`` the key's position; ``qo_head`` int32
    ``[BLOCK_M]``; ``kv_head``, ``req`` int32 scalars; ``params`` the tuple
    ``(t0, t1, t2, t3, s0, s1, s2, s3)`` of the variant's tensors (pointers) and float scalars.
    Without softmax (``USE_SOFTMAX=False``, e.g. sigmoid attention) it returns the weights directly.
``MASK_HOOK(q_pos, kv_pos, qo_head, kv_head, req, params) -> keep``
    bool ``[BLOCK_M, BLOCK_N]``; False removes a key. Every block then takes the masked path.
``RANGE_HOOK(q_first, q_last, kv_len, req, params) -> (lo, hi)``
    int32 scalars: the key positions ``[lo, hi)`` that queries at positions ``q_first..q_last`` (a
    tile) can see; blocks outside are skipped (block sparsity). Only with a ``MASK_HOOK``, which
    still removes the keys of the visited blocks that are outside (blocks are ``BLOCK_N``-aligned).

Logits inside the loop are base-2 (``* log2 e``); the hooks see natural units (with a hook the
built-ins compute in natural units and one multiply by ``log2 e`` follows the hook).
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
                   POS_ENC: tl.constexpr, NATURAL: tl.constexpr):
    """Scaled logits with the built-in soft cap and ALiBi (POS_ENC == 2), in base-2 units, or in
    natural units with NATURAL (the input of a variant's logits hook)."""
    if SOFT_CAP:
        if NATURAL:
            s = soft_cap * tanh(s * sm_scale_log2)
        else:
            s = soft_cap_logits(s, sm_scale_log2, soft_cap)
    elif NATURAL:
        s = s * (sm_scale_log2 * (1.0 / LOG2E))
    else:
        s = s * sm_scale_log2
    if POS_ENC == 2:
        if NATURAL:
            s = alibi_logits(s, slope_log2 * (1.0 / LOG2E), q_idx, kv_pos)
        else:
            s = alibi_logits(s, slope_log2, q_idx, kv_pos)
    return s


@triton.jit
def user_logits(LOGITS_HOOK: tl.constexpr, s, q_pos, kv_pos, qo_head, kv_head, req, params):
    """The variant's logits transform on natural-unit logits ``s`` [BLOCK_M, BLOCK_N]; its result's
    dtype and shape are checked when the kernel compiles."""
    out = LOGITS_HOOK(s, q_pos, kv_pos, qo_head, kv_head, req, params)
    tl.static_assert(out.dtype == tl.float32, "logits_transform must return float32 logits [BLOCK_M, BLOCK_N]")
    tl.static_assert(len(out.shape) == 2, "logits_transform must return float32 logits [BLOCK_M, BLOCK_N]")
    tl.static_assert(out.shape[0] == s.shape[0], "logits_transform must return float32 logits [BLOCK_M, BLOCK_N]")
    tl.static_assert(out.shape[1] == s.shape[1], "logits_transform must return float32 logits [BLOCK_M, BLOCK_N]")
    return out


@triton.jit
def user_mask(MASK_HOOK: tl.constexpr, q_pos, kv_pos, qo_head, kv_head, req, params):
    """The variant's logits mask; its result must be bool [BLOCK_M, BLOCK_N] (checked when the
    kernel compiles)."""
    keep = MASK_HOOK(q_pos, kv_pos, qo_head, kv_head, req, params)
    tl.static_assert(keep.dtype == tl.int1, "logits_mask must return a bool keep mask [BLOCK_M, BLOCK_N]")
    tl.static_assert(len(keep.shape) == 2, "logits_mask must return a bool keep mask [BLOCK_M, BLOCK_N]")
    tl.static_assert(keep.shape[0] == q_pos.shape[0], "logits_mask must return a bool keep mask [BLOCK_M, BLOCK_N]")
    tl.static_assert(keep.shape[1] == kv_pos.shape[0], "logits_mask must return a bool keep mask [BLOCK_M, BLOCK_N]")
    return keep


@triton.jit
def user_kv_range(RANGE_HOOK: tl.constexpr, lo, hi, q_first, q_last, kv_len, req, params, BLOCK_N: tl.constexpr):
    """The tile's KV range ``[lo, hi)`` narrowed to the variant's ``[range_lo, range_hi)``; ``lo``
    stays aligned to ``BLOCK_N`` (blocks start on page boundaries)."""
    range_lo, range_hi = RANGE_HOOK(q_first, q_last, kv_len, req, params)
    range_lo = tl.full([], range_lo, tl.int32)
    range_hi = tl.full([], range_hi, tl.int32)
    tl.static_assert(len(range_lo.shape) == 0, "kv_range must return two int32 scalars (lo, hi)")
    tl.static_assert(len(range_hi.shape) == 0, "kv_range must return two int32 scalars (lo, hi)")
    lo = tl.maximum(lo, tl.maximum(range_lo, 0) // BLOCK_N * BLOCK_N)
    hi = tl.minimum(hi, range_hi)
    return lo, hi


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
