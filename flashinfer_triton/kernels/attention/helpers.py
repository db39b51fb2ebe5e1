"""@triton.jit helpers of the attention tile loop: math, KV addressing, loop bounds, one KV block.

The tile loop (``kernel.py``) reads as a pipeline of these: ``tile_bounds`` gives the KV range of a
tile and the part of it that needs no mask, ``attend_block`` runs one ``BLOCK_N``-key step of the
online softmax (load K, logits, variant hooks, mask, softmax update, load V, accumulate).
All logits inside the loop are in base-2 units (scaled by ``sm_scale * log2(e)``).
"""

import triton
import triton.language as tl

from .elementwise import rope_rotate
from .variants import builtin_logits, builtin_mask, user_logits, user_mask

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def load_work_item(item, item_req_ptr, item_q_start_ptr, item_kv_start_ptr, item_kv_end_ptr, item_qo_begin_ptr,
                   item_qo_len_ptr, item_kv_begin_ptr, item_kv_len_ptr, item_part_base_ptr):
    """The fields of work item ``item`` a program starts from (the scheduler stores every field per
    item: one round of independent loads, no dependent second round through the request index):
    ``(req, q_start, kv_start, kv_end, qo_begin, qo_len, kv_begin [int64], kv_len, part_base)``;
    ``req < 0`` marks a padding item of a CUDA-graph sized grid."""
    req = tl.load(item_req_ptr + item)
    q_start = tl.load(item_q_start_ptr + item)
    kv_start = tl.load(item_kv_start_ptr + item)
    kv_end = tl.load(item_kv_end_ptr + item)
    qo_begin = tl.load(item_qo_begin_ptr + item)
    qo_len = tl.load(item_qo_len_ptr + item)
    kv_begin = tl.load(item_kv_begin_ptr + item).to(tl.int64)
    kv_len = tl.load(item_kv_len_ptr + item)
    part_base = tl.load(item_part_base_ptr + item)
    return req, q_start, kv_start, kv_end, qo_begin, qo_len, kv_begin, kv_len, part_base


@triton.jit
def tile_bounds(kv_start, kv_end, q_start, tile_q, qo_len, kv_len, window_left,
                BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, ALL_MASKED: tl.constexpr):
    """KV range ``[lo, hi)`` a tile of queries ``[q_start, q_start + tile_q)`` must visit inside its
    chunk ``[kv_start, kv_end)``, and the sub-range ``[full_lo, full_hi)`` of whole blocks that every
    row sees entirely (no mask at all). ``lo`` is aligned down to ``BLOCK_N`` (chunk starts are
    multiples of it); keys below the true start are excluded by the window mask. Query ``i`` sits at position ``i + kv_len - qo_len`` (bottom-right causal)."""
    first_q_pos = q_start + kv_len - qo_len
    last_q_pos = tl.minimum(q_start + tile_q, qo_len) - 1 + kv_len - qo_len
    lo = kv_start
    hi = kv_end
    if CAUSAL:
        hi = tl.minimum(hi, last_q_pos + 1)
    if HAS_WINDOW:
        lo = tl.maximum(lo, first_q_pos - window_left) // BLOCK_N * BLOCK_N
    full_lo = lo
    full_hi = lo
    if not ALL_MASKED:
        if HAS_WINDOW:
            edge = last_q_pos - window_left  # keys >= edge are inside every row's window
            full_lo = lo + tl.maximum(edge - lo + BLOCK_N - 1, 0) // BLOCK_N * BLOCK_N
        full_lo = tl.minimum(full_lo, hi)
        full_end = hi
        if CAUSAL:
            full_end = tl.minimum(full_end, first_q_pos + 1)  # keys <= the first row's position
        full_hi = full_lo + tl.maximum(full_end - full_lo, 0) // BLOCK_N * BLOCK_N
    return lo, hi, full_lo, full_hi


@triton.jit
def kv_rows(kv_indices_ptr, kv_begin, o_n, m_n, page_size, stride_kp, stride_kt, stride_vp, stride_vt,
            PAGED: tl.constexpr, MASKED: tl.constexpr):
    """int64 element offsets of the K rows and V rows of keys ``o_n`` (head 0, d 0). Paged KV goes
    through the page table ``kv_indices[kv_begin:]`` (one page id per key; keys of a page share a
    cache line of ids); ragged KV: token ``kv_begin + o_n``. (A page-granular gather, one id per page
    with constexpr page sizes, measured slower on the H200: benchmarks/results/tune/decode-h200.json.)"""
    if PAGED:
        if MASKED:
            page = tl.load(kv_indices_ptr + kv_begin + o_n // page_size, mask=m_n, other=0).to(tl.int64)
        else:
            page = tl.load(kv_indices_ptr + kv_begin + o_n // page_size).to(tl.int64)
        slot = (o_n % page_size).to(tl.int64)
        k_rows = page * stride_kp + slot * stride_kt
        v_rows = page * stride_vp + slot * stride_vt
    else:
        tok = kv_begin + o_n.to(tl.int64)
        k_rows = tok * stride_kt
        v_rows = tok * stride_vt
    return k_rows, v_rows


@triton.jit
def attend_block(
    acc, l_i, m_i, start, hi, b_q, rows, kv, opts, params,
    MASKED: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    HEAD_DIM_VO: tl.constexpr, BLOCK_DV: tl.constexpr, PAGED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFT_CAP: tl.constexpr, POS_ENC: tl.constexpr,
    CUSTOM_MASK: tl.constexpr, LOGITS_HOOK: tl.constexpr, MASK_HOOK: tl.constexpr, USE_SOFTMAX: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One ``BLOCK_N``-key step of the online softmax over keys ``[start, start + BLOCK_N)``.
    ``MASKED=False`` is for blocks wholly inside the range and every row's limits: no bounds
    checks, no mask arithmetic. Returns the updated ``(acc, l_i, m_i)``.

    ``rows`` = (q_idx, q_pos, qo_head, m_row, slope_log2, mask_base, o_d, m_d, o_dv, m_dv, o_swap),
    ``kv`` = (k_ptr, v_ptr, kv_indices_ptr, kv_begin, page_size, stride_kp, stride_kt, stride_kh,
    stride_vp, stride_vt, stride_vh, kv_head, req, kv_len),
    ``opts`` = (sm_scale_log2, soft_cap, window_left, rope_rcp_scale, rope_log2_rcp_theta, mask_ptr)."""
    q_idx, q_pos, qo_head, m_row, slope_log2, mask_base, o_d, m_d, o_dv, m_dv, o_swap = rows
    k_ptr, v_ptr, kv_indices_ptr, kv_begin, page_size, stride_kp, stride_kt, stride_kh, stride_vp, stride_vt, \
        stride_vh, kv_head, req, kv_len = kv
    sm_scale_log2, soft_cap, window_left, rope_rcp_scale, rope_log2_rcp_theta, mask_ptr = opts

    o_n = start + tl.arange(0, BLOCK_N)
    m_n = o_n < hi
    k_rows, v_rows = kv_rows(kv_indices_ptr, kv_begin, o_n, m_n, page_size, stride_kp, stride_kt, stride_vp,
                             stride_vt, PAGED, MASKED)
    p_k = k_ptr + (k_rows + kv_head * stride_kh)[:, None] + o_d[None, :]
    if HEAD_DIM == BLOCK_D and not MASKED:
        b_k = tl.load(p_k)
    elif MASKED:
        b_k = tl.load(p_k, mask=m_n[:, None] & m_d[None, :], other=0.0)
    else:
        b_k = tl.load(p_k, mask=m_d[None, :], other=0.0)
    if POS_ENC == 1:
        p_k_sw = k_ptr + (k_rows + kv_head * stride_kh)[:, None] + o_swap[None, :]
        b_k_sw = tl.load(p_k_sw, mask=m_n[:, None] & m_d[None, :], other=0.0)
        b_k = rope_rotate(b_k, b_k_sw, o_n.to(tl.float32), o_d, rope_rcp_scale, rope_log2_rcp_theta, HEAD_DIM)
    s = tl.dot(b_q, tl.trans(b_k.to(b_q.dtype)), input_precision=DOT_PRECISION)

    # Logits: built-in options (soft cap, ALiBi) in base-2 units; with the user's hook, they and the
    # hook work in natural units and one multiply by log2 e follows.
    if LOGITS_HOOK is not None:
        s = builtin_logits(s, sm_scale_log2, soft_cap, slope_log2, q_idx, o_n, SOFT_CAP, POS_ENC, True)
        s = user_logits(LOGITS_HOOK, s, q_pos, o_n, qo_head, kv_head, req, params)
        if USE_SOFTMAX:
            s = s * LOG2E
    else:
        s = builtin_logits(s, sm_scale_log2, soft_cap, slope_log2, q_idx, o_n, SOFT_CAP, POS_ENC, False)

    if MASKED:
        keep = builtin_mask(m_n, m_row, q_idx, q_pos, o_n, window_left, kv_len, mask_ptr, mask_base,
                            CAUSAL, HAS_WINDOW, CUSTOM_MASK)
        if MASK_HOOK is not None:
            keep &= user_mask(MASK_HOOK, q_pos, o_n, qo_head, kv_head, req, params)
        if USE_SOFTMAX:
            s = tl.where(keep, s, float("-inf"))
        else:
            s = tl.where(keep, s, 0.0)

    p_v = v_ptr + (v_rows + kv_head * stride_vh)[:, None] + o_dv[None, :]
    if HEAD_DIM_VO == BLOCK_DV and not MASKED:
        b_v = tl.load(p_v)
    elif MASKED:
        b_v = tl.load(p_v, mask=m_n[:, None] & m_dv[None, :], other=0.0)
    else:
        b_v = tl.load(p_v, mask=m_dv[None, :], other=0.0)

    if USE_SOFTMAX:
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED:
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet stays empty
        else:
            m_safe = m_new
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(b_q.dtype), b_v.to(b_q.dtype), input_precision=DOT_PRECISION)
        m_i = m_new
    else:
        acc += tl.dot(s.to(b_q.dtype), b_v.to(b_q.dtype), input_precision=DOT_PRECISION)
    return acc, l_i, m_i
