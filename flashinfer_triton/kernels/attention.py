"""The one attention kernel family: decode, prefill (ragged and paged), cascade levels.

A program takes one work item ``(request, q tile, kv chunk)`` from the scheduler's list and one KV
head (grid axis 1). It packs the query heads that share that KV head, times a tile of query rows,
into the M dimension of ``tl.dot`` (row m = query ``q_start + m // GROUP``, head
``kv_head * GROUP + m % GROUP``), walks its KV chunk ``BLOCK_N`` tokens at a time through the page
table, and writes either the final output (request not split) or a float32 partial (o, lse) that
``merge_partials_kernel`` combines. Softmax runs in base 2: logits are scaled by
``sm_scale * log2(e)`` and the LSE written is ``log2(sum(2^(s * log2 e)))`` over scaled logits s.
"""

from typing import Optional

import triton
import triton.language as tl

from . import AotConfig, ptr

LOG2E = 1.4426950408889634
FP32_BLOCK_N = 16  # KV block for float32 operands (launched with one pipeline stage)


@triton.jit
def _tanh(x):
    # Portable tanh (libdevice is neither in the interpreter nor identical across CUDA and HIP):
    # odd series near 0, where (1 - e) / (1 + e) would cancel, the exp form elsewhere.
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    t = (1.0 - e) / (1.0 + e)
    x2 = x * x
    series = x * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333 + x2 * -0.05396825396825397)))
    return tl.where(ax < 0.125, series, tl.where(x < 0, -t, t))


@triton.jit
def _rope_rotate(x, x_swapped, pos, o_d, rope_rcp_scale, rope_log2_rcp_theta, HEAD_DIM: tl.constexpr):
    """Llama RoPE (rotate-half): x * cos + rotate_half(x) * sin; ``x_swapped`` holds x at
    (d + D/2) % D. ``pos`` is [rows] float32, the result is float32 [rows, BLOCK_D]."""
    HALF: tl.constexpr = HEAD_DIM // 2
    i = (o_d % HALF).to(tl.float32)
    freq = rope_rcp_scale * tl.exp2(rope_log2_rcp_theta * (2.0 * i / HEAD_DIM))
    angle = pos[:, None] * freq[None, :]
    sign = tl.where(o_d < HALF, -1.0, 1.0)
    return x.to(tl.float32) * tl.cos(angle) + sign[None, :] * x_swapped.to(tl.float32) * tl.sin(angle)


@triton.jit
def _attention_block(
    acc, l_i, m_i, start, hi, b_q, q_idx, q_pos, m_row, slope_log2, o_d, m_d, o_dv, m_dv, o_swap,
    kv_indices_ptr, kv_begin, page_size, k_ptr, v_ptr, stride_kp, stride_kt, stride_kh, stride_vp, stride_vt,
    stride_vh, kv_head, sm_scale_log2, soft_cap, window_left, rope_rcp_scale, rope_log2_rcp_theta, mask_ptr,
    mask_base, kv_len, MASKED: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    HEAD_DIM_VO: tl.constexpr, BLOCK_DV: tl.constexpr, PAGED: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr, SOFT_CAP: tl.constexpr, POS_ENC: tl.constexpr, CUSTOM_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One BLOCK_N-key step of the online softmax. MASKED=False is for blocks wholly inside the
    range and every row's causal/window limits: no bounds checks, no mask arithmetic."""
    o_n = start + tl.arange(0, BLOCK_N)
    m_n = o_n < hi
    if PAGED:
        if MASKED:
            page = tl.load(kv_indices_ptr + kv_begin + o_n // page_size, mask=m_n, other=0).to(tl.int64)
        else:
            page = tl.load(kv_indices_ptr + kv_begin + o_n // page_size).to(tl.int64)
        slot = (o_n % page_size).to(tl.int64)
        k_row = page * stride_kp + slot * stride_kt
        v_row = page * stride_vp + slot * stride_vt
    else:
        tok = kv_begin + o_n.to(tl.int64)
        k_row = tok * stride_kt
        v_row = tok * stride_vt
    if MASKED:
        m_k = m_n[:, None] & m_d[None, :]
        m_v = m_n[:, None] & m_dv[None, :]
    else:
        m_k = (o_d < HEAD_DIM)[None, :]
        m_v = (o_dv < HEAD_DIM_VO)[None, :]
    p_k = k_ptr + (k_row + kv_head * stride_kh)[:, None]
    if HEAD_DIM == BLOCK_D and not MASKED:
        b_k = tl.load(p_k + o_d[None, :])
    else:
        b_k = tl.load(p_k + o_d[None, :], mask=m_k, other=0.0)
    if POS_ENC == 1:
        b_k_sw = tl.load(p_k + o_swap[None, :], mask=m_k, other=0.0)
        b_k = _rope_rotate(b_k, b_k_sw, o_n.to(tl.float32), o_d, rope_rcp_scale, rope_log2_rcp_theta, HEAD_DIM)
    b_k = b_k.to(b_q.dtype)
    s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)
    if SOFT_CAP:
        s = (soft_cap * 1.4426950408889634) * _tanh(s * sm_scale_log2)
    else:
        s = s * sm_scale_log2
    if POS_ENC == 2:
        s += slope_log2[:, None] * (o_n[None, :] - q_idx[:, None]).to(tl.float32)
    if MASKED:
        keep = m_n[None, :] & m_row[:, None]
        if CAUSAL:
            keep &= o_n[None, :] <= q_pos[:, None]
        if HAS_WINDOW:
            keep &= o_n[None, :] >= q_pos[:, None] - window_left
        if CUSTOM_MASK:
            bit = q_idx.to(tl.int64)[:, None] * kv_len + o_n[None, :]
            byte = tl.load(mask_ptr + mask_base + bit // 8, mask=keep, other=0)
            keep &= ((byte >> (bit % 8).to(tl.uint8)) & 1) != 0
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = m_new
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    p_v = v_ptr + (v_row + kv_head * stride_vh)[:, None]
    if HEAD_DIM_VO == BLOCK_DV and not MASKED:
        b_v = tl.load(p_v + o_dv[None, :])
    else:
        b_v = tl.load(p_v + o_dv[None, :], mask=m_v, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(b_q.dtype), b_v.to(b_q.dtype), input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, part_o_ptr, part_lse_ptr,
    item_req_ptr, item_q_start_ptr, item_kv_start_ptr, item_kv_end_ptr, item_chunk_ptr,
    qo_indptr_ptr, kv_begin_ptr, kv_len_ptr, part_base_ptr,
    kv_indices_ptr, mask_ptr, mask_indptr_ptr, alibi_ptr,
    stride_qn, stride_qh, stride_kp, stride_kt, stride_kh, stride_vp, stride_vt, stride_vh,
    stride_on, stride_oh,
    num_qo_heads, page_size,
    sm_scale_log2, soft_cap, window_left, rope_rcp_scale, rope_log2_rcp_theta, v_scale,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM_VO: tl.constexpr, BLOCK_DV: tl.constexpr,
    PAGED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFT_CAP: tl.constexpr,
    POS_ENC: tl.constexpr, CUSTOM_MASK: tl.constexpr, WRITE_LSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr = "tf32",
):
    """Shapes (elements): q [N_q, H_qo, HEAD_DIM]; paged K/V addressed as
    page * stride_kp + slot * stride_kt + head * stride_kh (ragged: token * stride_kt + ...);
    o [N_q, H_qo, HEAD_DIM_VO]; lse [N_q, H_qo] float32 (base 2); partials float32
    part_o [rows, H_qo, HEAD_DIM_VO], part_lse [rows, H_qo]. POS_ENC: 0 none, 1 RoPE (llama), 2 ALiBi.
    ``sm_scale_log2`` is sm_scale * log2(e) (or sm_scale / soft_cap when SOFT_CAP)."""
    TILE_Q: tl.constexpr = BLOCK_M // GROUP
    item = tl.program_id(0)
    kv_head = tl.program_id(1)
    req = tl.load(item_req_ptr + item)
    if req < 0:  # padding item of a CUDA-graph sized grid
        return
    q_start = tl.load(item_q_start_ptr + item)
    kv_start = tl.load(item_kv_start_ptr + item)
    kv_end = tl.load(item_kv_end_ptr + item)
    chunk = tl.load(item_chunk_ptr + item)
    qo_begin = tl.load(qo_indptr_ptr + req)
    qo_len = tl.load(qo_indptr_ptr + req + 1) - qo_begin
    kv_begin = tl.load(kv_begin_ptr + req).to(tl.int64)
    kv_len = tl.load(kv_len_ptr + req)
    part_base = tl.load(part_base_ptr + req)

    o_m = tl.arange(0, BLOCK_M)
    q_idx = q_start + o_m // GROUP  # query index inside the request
    head = kv_head * GROUP + o_m % GROUP
    m_row = (o_m // GROUP < TILE_Q) & (q_idx < qo_len)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    o_dv = tl.arange(0, BLOCK_DV)
    m_dv = o_dv < HEAD_DIM_VO

    q_row = (qo_begin + q_idx).to(tl.int64)
    p_q = q_ptr + q_row[:, None] * stride_qn + head.to(tl.int64)[:, None] * stride_qh
    b_q = tl.load(p_q + o_d[None, :], mask=m_row[:, None] & m_d[None, :], other=0.0)
    # Bottom-right alignment: query q_idx sits at position q_idx + kv_len - qo_len.
    q_pos = q_idx + kv_len - qo_len
    if POS_ENC == 1:
        o_swap = (o_d + HEAD_DIM // 2) % HEAD_DIM
        b_q_sw = tl.load(p_q + o_swap[None, :], mask=m_row[:, None] & m_d[None, :], other=0.0)
        b_q = _rope_rotate(b_q, b_q_sw, q_pos.to(tl.float32), o_d, rope_rcp_scale, rope_log2_rcp_theta, HEAD_DIM)
        b_q = b_q.to(k_ptr.dtype.element_ty)
    if POS_ENC == 2:
        # ALiBi bias slope * (kv_idx - q_idx) in natural units, FlashInfer's convention (raw q_idx).
        slope_log2 = tl.load(alibi_ptr + head, mask=m_row, other=0.0) * 1.4426950408889634

    # Effective KV range of this tile: causal and window limits of its first/last query.
    lo = kv_start
    hi = kv_end
    last_q_pos = tl.minimum(q_start + TILE_Q, qo_len) - 1 + kv_len - qo_len
    if CAUSAL:
        hi = tl.minimum(hi, last_q_pos + 1)
    if HAS_WINDOW:
        lo = tl.maximum(lo, q_start + kv_len - qo_len - window_left)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    mask_base = 0
    if CUSTOM_MASK:
        mask_base = tl.load(mask_indptr_ptr + req).to(tl.int64)
    if POS_ENC != 2:
        slope_log2 = tl.zeros([BLOCK_M], tl.float32)
    if POS_ENC != 1:
        o_swap = o_d

    # Blocks [full_lo, full_hi) need no mask at all (every row sees every key, all in range): the
    # causal diagonal, the window edge, the chunk's ragged end and custom masks take the masked path.
    first_q_pos = q_start + kv_len - qo_len
    full_lo = lo
    full_hi = lo
    if not CUSTOM_MASK:
        if HAS_WINDOW:
            edge = last_q_pos - window_left  # keys >= edge are inside every row's window
            full_lo = lo + tl.maximum(edge - lo + BLOCK_N - 1, 0) // BLOCK_N * BLOCK_N
        full_lo = tl.minimum(full_lo, hi)
        full_end = hi
        if CAUSAL:
            full_end = tl.minimum(full_end, first_q_pos + 1)  # keys <= first row's position
        full_hi = full_lo + tl.maximum(full_end - full_lo, 0) // BLOCK_N * BLOCK_N
    if HAS_WINDOW:  # keys before the window edge (full_lo == lo without a window)
      for start in range(lo, full_lo, BLOCK_N):
        acc, l_i, m_i = _attention_block(
            acc, l_i, m_i, start, hi, b_q, q_idx, q_pos, m_row, slope_log2, o_d, m_d, o_dv, m_dv, o_swap,
            kv_indices_ptr, kv_begin, page_size, k_ptr, v_ptr, stride_kp, stride_kt, stride_kh, stride_vp, stride_vt,
            stride_vh, kv_head, sm_scale_log2, soft_cap, window_left, rope_rcp_scale, rope_log2_rcp_theta, mask_ptr,
            mask_base, kv_len, True, BLOCK_N, HEAD_DIM, BLOCK_D, HEAD_DIM_VO, BLOCK_DV, PAGED, CAUSAL, HAS_WINDOW,
            SOFT_CAP, POS_ENC, CUSTOM_MASK, DOT_PRECISION)
    for start in range(full_lo, full_hi, BLOCK_N):
        acc, l_i, m_i = _attention_block(
            acc, l_i, m_i, start, hi, b_q, q_idx, q_pos, m_row, slope_log2, o_d, m_d, o_dv, m_dv, o_swap,
            kv_indices_ptr, kv_begin, page_size, k_ptr, v_ptr, stride_kp, stride_kt, stride_kh, stride_vp, stride_vt,
            stride_vh, kv_head, sm_scale_log2, soft_cap, window_left, rope_rcp_scale, rope_log2_rcp_theta, mask_ptr,
            mask_base, kv_len, False, BLOCK_N, HEAD_DIM, BLOCK_D, HEAD_DIM_VO, BLOCK_DV, PAGED, CAUSAL, HAS_WINDOW,
            SOFT_CAP, POS_ENC, CUSTOM_MASK, DOT_PRECISION)
    for start in range(full_hi, hi, BLOCK_N):
        acc, l_i, m_i = _attention_block(
            acc, l_i, m_i, start, hi, b_q, q_idx, q_pos, m_row, slope_log2, o_d, m_d, o_dv, m_dv, o_swap,
            kv_indices_ptr, kv_begin, page_size, k_ptr, v_ptr, stride_kp, stride_kt, stride_kh, stride_vp, stride_vt,
            stride_vh, kv_head, sm_scale_log2, soft_cap, window_left, rope_rcp_scale, rope_log2_rcp_theta, mask_ptr,
            mask_base, kv_len, True, BLOCK_N, HEAD_DIM, BLOCK_D, HEAD_DIM_VO, BLOCK_DV, PAGED, CAUSAL, HAS_WINDOW,
            SOFT_CAP, POS_ENC, CUSTOM_MASK, DOT_PRECISION)

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    if part_base >= 0:
        part_row = (part_base + chunk * qo_len + q_idx).to(tl.int64) * num_qo_heads + head
        tl.store(part_o_ptr + part_row[:, None] * HEAD_DIM_VO + o_dv[None, :], out,
                 mask=m_row[:, None] & m_dv[None, :])
        tl.store(part_lse_ptr + part_row, lse, mask=m_row)
    else:
        out = out * v_scale
        p_o = o_ptr + q_row[:, None] * stride_on + head.to(tl.int64)[:, None] * stride_oh + o_dv[None, :]
        tl.store(p_o, out.to(o_ptr.dtype.element_ty), mask=m_row[:, None] & m_dv[None, :])
        if WRITE_LSE:
            tl.store(lse_ptr + q_row * num_qo_heads + head, lse, mask=m_row)


@triton.jit
def merge_partials_kernel(
    part_o_ptr, part_lse_ptr, o_ptr, lse_ptr,
    merge_out_row_ptr, merge_part_row_ptr, merge_stride_ptr, merge_count_ptr,
    stride_on, stride_oh, num_qo_heads, v_scale,
    HEAD_DIM_VO: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_C: tl.constexpr, WRITE_LSE: tl.constexpr,
):
    """Combine the split-KV partials of one (query row, head) by their base-2 LSE. Partials of row
    j are at rows part_row[j] + c * stride[j], c < count[j]; BLOCK_C chunks are loaded at once (a
    chunk-by-chunk loop would serialize one memory latency per chunk)."""
    j = tl.program_id(0)
    head = tl.program_id(1)
    out_row = tl.load(merge_out_row_ptr + j)
    if out_row < 0:
        return
    part_row = tl.load(merge_part_row_ptr + j).to(tl.int64)
    stride = tl.load(merge_stride_ptr + j).to(tl.int64)
    count = tl.load(merge_count_ptr + j)
    o_dv = tl.arange(0, BLOCK_DV)
    m_dv = o_dv < HEAD_DIM_VO
    m_i = float("-inf")
    l_i = 0.0
    acc = tl.zeros([BLOCK_DV], tl.float32)
    for c0 in range(0, count, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < count
        row = (part_row + o_c * stride) * num_qo_heads + head
        s = tl.load(part_lse_ptr + row, mask=m_c, other=float("-inf"))
        v = tl.load(part_o_ptr + row[:, None] * HEAD_DIM_VO + o_dv[None, :], mask=m_c[:, None] & m_dv[None, :], other=0.0)
        m_new = tl.maximum(m_i, tl.max(s, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        w = tl.exp2(s - m_safe)
        l_i = l_i * alpha + tl.sum(w, 0)
        acc = acc * alpha + tl.sum(w[:, None] * v, 0)
        m_i = m_new
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i) * v_scale
    out_row64 = out_row.to(tl.int64)
    tl.store(o_ptr + out_row64 * stride_on + head.to(tl.int64) * stride_oh + o_dv, out.to(o_ptr.dtype.element_ty), mask=m_dv)
    if WRITE_LSE:
        lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
        tl.store(lse_ptr + out_row64 * num_qo_heads + head, lse)


# ---------------------------------------------------------------------------------------------
# Launch configurations: the launchers and the AOT tier share these tables.

def decode_block_config(group: int, head_dim: int):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for one query row per request. Chosen by
    benchmarks/tune_decode.py on an H100 (bf16, D=128, page 16): BLOCK_N=128, 4 warps, 2 stages led
    the geometric mean over batch 1-256 x 512-128k (BLOCK_N=64 for short requests measured slower
    at 64x2048 and no faster at 256x512); D=256 halves BLOCK_N to fit shared memory."""
    block_m = max(16, triton.next_power_of_2(group))
    block_n = 128 if head_dim <= 128 else 64
    return block_m, block_n, 4, 2


def prefill_block_config(group: int, head_dim: int, max_qo_len: int, total_qo_len: Optional[int] = None):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for query tiles of BLOCK_M // group rows. Chosen by
    benchmarks/tune_prefill.py on an H100 (causal, 32/8 heads, bf16). D=128: 128/128/8 warps/3
    stages for requests longer than 8k (484 TFLOP/s at 16k); 128/32/4/3 for many query rows in
    requests up to 8k (8x2048: 382 vs 343, 16x512: 231 vs 191); 64/64/4/3 for few rows (1x1024:
    178, 1x4096: 400, more tiles for the SMs). D=64: 64/64/4/3; D=256: 128/64/8/2 (three stages
    would need 256 KB of shared memory). ``total_qo_len`` (all requests' query rows) defaults to
    ``max_qo_len``."""
    if max_qo_len * group <= 16:
        return decode_block_config(group, head_dim)
    if head_dim <= 64:
        return 64, 64, 4, 3
    if head_dim <= 128:
        if max_qo_len > 8192:
            return 128, 128, 8, 3
        total = max_qo_len if total_qo_len is None else total_qo_len
        return (128, 32, 4, 3) if total >= 8192 else (64, 64, 4, 3)
    return 128, 64, 8, 2


def variant_stages(num_stages: int, custom_mask: bool, pos_enc: int) -> int:
    """Custom masks and in-kernel RoPE keep extra tiles live: at 3 stages the D=128 prefill tile
    needs 233 KB of shared memory on an H100 (limit 227 KB), so they run with at most 2."""
    return min(num_stages, 2) if custom_mask or pos_enc == 1 else num_stages


def merge_block_config(num_qo_heads: int, head_dim_vo: int):
    """(BLOCK_C, num_warps) for the partial merge: chunks loaded per step, one (row, head) a program."""
    return 16 if head_dim_vo <= 256 else 8, 4


def _attention_signature(q_dtype, kv_dtype, o_dtype):
    sig = {
        "q_ptr": ptr(q_dtype), "k_ptr": ptr(kv_dtype), "v_ptr": ptr(kv_dtype), "o_ptr": ptr(o_dtype),
        "lse_ptr": "*fp32", "part_o_ptr": "*fp32", "part_lse_ptr": "*fp32",
    }
    for name in ("item_req_ptr", "item_q_start_ptr", "item_kv_start_ptr", "item_kv_end_ptr", "item_chunk_ptr",
                 "qo_indptr_ptr", "kv_begin_ptr", "kv_len_ptr", "part_base_ptr", "kv_indices_ptr",
                 "mask_indptr_ptr"):
        sig[name] = "*i32"
    sig["mask_ptr"] = "*u8"
    sig["alibi_ptr"] = "*fp32"
    for name in ("stride_qn", "stride_qh", "stride_kp", "stride_kt", "stride_kh", "stride_vp", "stride_vt",
                 "stride_vh", "stride_on", "stride_oh", "num_qo_heads", "page_size"):
        sig[name] = "i32"
    for name in ("sm_scale_log2", "soft_cap"):
        sig[name] = "fp32"
    sig["window_left"] = "i32"
    for name in ("rope_rcp_scale", "rope_log2_rcp_theta", "v_scale"):
        sig[name] = "fp32"
    for name in ("GROUP", "BLOCK_M", "BLOCK_N", "HEAD_DIM", "BLOCK_D", "HEAD_DIM_VO", "BLOCK_DV", "PAGED",
                 "CAUSAL", "HAS_WINDOW", "SOFT_CAP", "POS_ENC", "CUSTOM_MASK", "WRITE_LSE", "DOT_PRECISION"):
        sig[name] = "constexpr"
    return sig


def attention_constexprs(group, block_m, block_n, head_dim, head_dim_vo, paged, causal, has_window,
                         soft_cap, pos_enc, custom_mask, write_lse):
    return dict(
        GROUP=group, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim), HEAD_DIM_VO=head_dim_vo,
        BLOCK_DV=triton.next_power_of_2(head_dim_vo), PAGED=paged, CAUSAL=causal, HAS_WINDOW=has_window,
        SOFT_CAP=soft_cap, POS_ENC=pos_enc, CUSTOM_MASK=custom_mask, WRITE_LSE=write_lse,
        DOT_PRECISION="tf32",
    )


def aot_configs():
    import torch

    configs = []
    # Block shapes for every head dim the API accepts, GQA groups 1/4/16 (the block shape depends on
    # head dim and group only), decode and causal prefill, in bf16; float16 and float32 (ieee dots)
    # on the common shape; then every variant flag on the common shape. fp16 and bf16 lower alike.
    bf16 = torch.bfloat16
    for head_dim in (64, 96, 128, 256):
        for group in (1, 4, 16):
            for kind, (bm, bn, warps, stages) in (
                ("decode", decode_block_config(group, head_dim)),
                ("prefill", prefill_block_config(group, head_dim, 1 << 20)),
                ("prefillmid", prefill_block_config(group, head_dim, 2048, 1 << 20)),
                ("prefillshort", prefill_block_config(group, head_dim, 1024)),
            ):
                if kind != "prefill" and head_dim not in (96, 128):
                    continue  # one prefill block shape for these head dims
                cx = attention_constexprs(group, bm, bn, head_dim, head_dim, True, kind.startswith("prefill"),
                                          False, False, 0, False, True)
                configs.append(AotConfig(attention_fwd_kernel, _attention_signature(bf16, bf16, bf16), cx,
                                         warps, stages, f"attn_{kind}_paged_bf16_d{head_dim}_g{group}"))
    for dtype, prec in ((torch.float16, "tf32"), (torch.float32, "ieee")):
        for kind, (bm, bn, warps, stages) in (("decode", decode_block_config(4, 128)),
                                              ("prefill", prefill_block_config(4, 128, 1 << 20))):
            fp32 = dtype == torch.float32
            cx = attention_constexprs(4, bm, FP32_BLOCK_N if fp32 else bn, 128, 128, True, kind == "prefill", False,
                                      False, 0, False, False)
            cx["DOT_PRECISION"] = prec
            configs.append(AotConfig(attention_fwd_kernel, _attention_signature(dtype, dtype, dtype), cx,
                                     warps, 1 if fp32 else stages, f"attn_{kind}_paged_{dtype}_d128_g4"))
    for dtype in (bf16,):
        for variant in ("window", "softcap", "rope", "alibi", "mask"):
            for kind, (bm, bn, warps, stages) in (("decode", decode_block_config(4, 128)),
                                                  ("prefill", prefill_block_config(4, 128, 1 << 20)),
                                                  ("prefillmid", prefill_block_config(4, 128, 2048, 1 << 20)),
                                                  ("prefillshort", prefill_block_config(4, 128, 1024))):
                pos_enc = {"rope": 1, "alibi": 2}.get(variant, 0)
                cx = attention_constexprs(4, bm, bn, 128, 128, True, kind.startswith("prefill"), variant == "window",
                                          variant == "softcap", pos_enc, variant == "mask", True)
                configs.append(AotConfig(attention_fwd_kernel, _attention_signature(dtype, dtype, dtype), cx,
                                         warps, variant_stages(stages, variant == "mask", pos_enc),
                                         f"attn_{kind}_{variant}_{dtype}"))
        # Prefill launchers (prefill.py): short queries take the decode block shape with causal masks
        # and ragged K/V; non-causal and masked ragged prefill; a v/o head dim unlike q/k's.
        for name, group, hd, hd_vo, qo_len, paged, causal, mask in (
            ("shortq_causal_paged", 4, 128, 128, 1, True, True, False),
            ("shortq_causal_ragged", 4, 128, 128, 1, False, True, False),
            ("noncausal_ragged", 4, 128, 128, 1 << 20, False, False, False),
            ("noncausal_ragged_mid", 4, 128, 128, 2048, False, False, False),
            ("mask_ragged", 4, 128, 128, 1 << 20, False, False, True),
            ("mask_ragged_mid", 4, 128, 128, 2048, False, False, True),
            ("mask_ragged_short", 4, 128, 128, 1024, False, False, True),
            ("d192_vo128_ragged", 1, 192, 128, 1 << 20, False, True, False),
        ):
            bm, bn, warps, stages = prefill_block_config(group, max(hd, hd_vo), qo_len,
                                                         (1 << 20) if name.endswith("_mid") else None)
            cx = attention_constexprs(group, bm, bn, hd, hd_vo, paged, causal, False, False, 0, mask, True)
            configs.append(AotConfig(attention_fwd_kernel, _attention_signature(dtype, dtype, dtype), cx, warps,
                                     variant_stages(stages, mask, 0), f"attn_prefill_{name}_{dtype}"))
    for dtype, head_dims in ((bf16, (64, 96, 128, 256)), (torch.float16, (128,)), (torch.float32, (64,))):
        for head_dim in head_dims:
            bc, warps = merge_block_config(32, head_dim)
            sig = {"part_o_ptr": "*fp32", "part_lse_ptr": "*fp32", "o_ptr": ptr(dtype), "lse_ptr": "*fp32"}
            for name in ("merge_out_row_ptr", "merge_part_row_ptr", "merge_stride_ptr", "merge_count_ptr"):
                sig[name] = "*i32"
            sig.update(stride_on="i32", stride_oh="i32", num_qo_heads="i32", v_scale="fp32",
                       HEAD_DIM_VO="constexpr", BLOCK_DV="constexpr", BLOCK_C="constexpr", WRITE_LSE="constexpr")
            cx = dict(HEAD_DIM_VO=head_dim, BLOCK_DV=triton.next_power_of_2(head_dim), BLOCK_C=bc, WRITE_LSE=True)
            configs.append(AotConfig(merge_partials_kernel, sig, cx, warps, 1, f"merge_{dtype}_d{head_dim}"))
    return configs
