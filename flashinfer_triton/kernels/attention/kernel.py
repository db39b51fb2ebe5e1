"""The one attention kernel: decode, prefill (ragged and paged), cascade levels, block-sparse lists.

A program takes one work item ``(request, q tile, kv chunk)`` of the scheduler's list (grid axis 0)
and one KV head (axis 1). It packs the query heads that share that KV head, times a tile of query
rows, into the M dimension of ``tl.dot`` (row m = query ``q_start + m // group``, head
``kv_head * group + m % group``), walks its KV chunk ``BLOCK_N`` keys at a time through the page
table (``attend_block``), and writes the output. A request whose KV is split into chunks writes
float32 partials (v, lse); the last of a tile's chunk programs to finish (an atomic counter per
tile and KV head) merges them and writes the output, so split-KV needs no second launch.
Softmax runs in base 2; the LSE written is ``log2(sum_j 2^(s_j * log2 e))`` over scaled logits s.

The kernel's signature is the one declaration of its arguments: ``ARG_TYPES`` gives each runtime
argument's type (or role), and the launcher, the AOT signature and the torch.library op derive
their argument lists from the two (``flashinfer_triton/attention/signature.py``).
"""

import triton
import triton.language as tl

from .helpers import attend_block, load_work_item, tile_bounds
from .variants import user_kv_range
from .elementwise import rope_rotate
from .merge import merge_chunks

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def finish_tile(out, lse, o_ptr, lse_ptr, sinks_ptr, q_row, qo_head, m_row, o_dv, m_dv, stride_on, stride_oh,
                num_qo_heads, v_scale, HEAD_DIM_VO: tl.constexpr, HAS_SINKS: tl.constexpr, WRITE_LSE: tl.constexpr):
    """Write a tile's final rows: attention sinks (a learned per-head logit in the denominator,
    gpt-oss; the LSE includes it, as in FlashInfer), the V dequantization scale, the output dtype."""
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + qo_head, mask=m_row, other=0.0).to(tl.float32) * LOG2E
        top = tl.maximum(lse, sink)
        lse_all = top + tl.log2(tl.exp2(lse - top) + tl.exp2(sink - top))
        out = out * tl.exp2(lse - lse_all)[:, None]
        lse = lse_all
    out = out * v_scale
    p_o = o_ptr + q_row[:, None] * stride_on + qo_head.to(tl.int64)[:, None] * stride_oh + o_dv[None, :]
    tl.store(p_o, out.to(o_ptr.dtype.element_ty), mask=m_row[:, None] & m_dv[None, :])
    if WRITE_LSE:
        tl.store(lse_ptr + q_row * num_qo_heads + qo_head, lse, mask=m_row)


@triton.jit(do_not_specialize=["window_left", "group", "num_qo_heads"])
def attention_kernel(
    # per run(): inputs, outputs, their strides, scales, sinks, the variant's tensors and scalars
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, sinks_ptr, param_t0, param_t1, param_t2, param_t3,
    stride_qn, stride_qh, stride_kp, stride_kt, stride_kh, stride_vp, stride_vt, stride_vh, stride_on, stride_oh,
    sm_scale_log2, v_scale, window_left, param_s0, param_s1, param_s2, param_s3,
    # fixed at plan(): workspace, work list, page table, option tensors and scalars
    part_o_ptr, part_lse_ptr, merge_counter_ptr,
    item_req_ptr, item_q_start_ptr, item_kv_start_ptr, item_kv_end_ptr, item_chunk_ptr, item_qo_begin_ptr,
    item_qo_len_ptr, item_kv_begin_ptr, item_kv_len_ptr, item_part_base_ptr, item_num_chunks_ptr, item_counter_ptr,
    kv_indices_ptr, mask_ptr, mask_indptr_ptr, alibi_ptr,
    group, num_qo_heads, page_size, soft_cap, rope_rcp_scale, rope_log2_rcp_theta,
    # block shape and variant
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    HEAD_DIM_VO: tl.constexpr, BLOCK_DV: tl.constexpr, PAGED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFT_CAP: tl.constexpr, POS_ENC: tl.constexpr,
    CUSTOM_MASK: tl.constexpr, HAS_SINKS: tl.constexpr, WRITE_LSE: tl.constexpr, MERGE_M: tl.constexpr,
    MERGE_BLOCK_C: tl.constexpr,
    LOGITS_HOOK: tl.constexpr, MASK_HOOK: tl.constexpr, RANGE_HOOK: tl.constexpr, USE_SOFTMAX: tl.constexpr,
    DOT_PRECISION: tl.constexpr, GROUP_C: tl.constexpr,
):
    """Shapes (elements): q [N_q, H_qo, HEAD_DIM]; paged K/V addressed as
    ``page * stride_kp + slot * stride_kt + head * stride_kh`` (ragged: ``token * stride_kt + ...``);
    o [N_q, H_qo, HEAD_DIM_VO]; lse [N_q, H_qo] float32 (base 2); partials float32
    part_o [rows, H_qo, HEAD_DIM_VO], part_lse [rows, H_qo]. POS_ENC: 0 none, 1 RoPE (llama),
    2 ALiBi. ``sm_scale_log2`` is ``sm_scale * log2(e)``, or ``sm_scale / soft_cap`` with SOFT_CAP.
    ``GROUP_C``: the GQA group as a constant (``config.CONSTANT_GROUPS``), or 0 for ``group`` at run time."""
    item = tl.program_id(0)
    kv_head = tl.program_id(1)
    req, q_start, kv_start, kv_end, qo_begin, qo_len, kv_begin, kv_len, part_base = load_work_item(
        item, item_req_ptr, item_q_start_ptr, item_kv_start_ptr, item_kv_end_ptr, item_qo_begin_ptr, item_qo_len_ptr,
        item_kv_begin_ptr, item_kv_len_ptr, item_part_base_ptr)
    if req < 0:  # padding item of a CUDA-graph sized grid
        return
    if GROUP_C > 0:  # a constant group: the row indices below fold to shifts and masks
        group = GROUP_C
    tile_q = BLOCK_M // group

    # Rows of the tile: (query, head) pairs; queries sit at bottom-right aligned positions.
    o_m = tl.arange(0, BLOCK_M)
    q_idx = q_start + o_m // group
    qo_head = kv_head * group + o_m % group
    m_row = (o_m < tile_q * group) & (q_idx < qo_len)
    q_pos = q_idx + kv_len - qo_len
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    o_dv = tl.arange(0, BLOCK_DV)
    m_dv = o_dv < HEAD_DIM_VO
    q_row = (qo_begin + q_idx).to(tl.int64)
    p_q = q_ptr + q_row[:, None] * stride_qn + qo_head.to(tl.int64)[:, None] * stride_qh
    b_q = tl.load(p_q + o_d[None, :], mask=m_row[:, None] & m_d[None, :], other=0.0)
    o_swap = o_d
    if POS_ENC == 1:
        o_swap = (o_d + HEAD_DIM // 2) % HEAD_DIM
        b_q_sw = tl.load(p_q + o_swap[None, :], mask=m_row[:, None] & m_d[None, :], other=0.0)
        b_q = rope_rotate(b_q, b_q_sw, q_pos.to(tl.float32), o_d, rope_rcp_scale, rope_log2_rcp_theta,
                          HEAD_DIM).to(k_ptr.dtype.element_ty)
    slope_log2 = tl.zeros([BLOCK_M], tl.float32)
    if POS_ENC == 2:
        slope_log2 = tl.load(alibi_ptr + qo_head, mask=m_row, other=0.0) * LOG2E
    mask_base = 0
    if CUSTOM_MASK:
        mask_base = tl.load(mask_indptr_ptr + req).to(tl.int64)

    rows = (q_idx, q_pos, qo_head, m_row, slope_log2, mask_base, o_d, m_d, o_dv, m_dv, o_swap)
    kv = (k_ptr, v_ptr, kv_indices_ptr, kv_begin, page_size, stride_kp, stride_kt, stride_kh, stride_vp, stride_vt,
          stride_vh, kv_head, req, kv_len)
    opts = (sm_scale_log2, soft_cap, window_left, rope_rcp_scale, rope_log2_rcp_theta, mask_ptr)
    # The variant's scalars as float32 tensors: the same type in the interpreter (a Python float there)
    # and under Inductor (which may pass fp64).
    params = (param_t0, param_t1, param_t2, param_t3, tl.full([], param_s0, tl.float32), tl.full([], param_s1, tl.float32),
              tl.full([], param_s2, tl.float32), tl.full([], param_s3, tl.float32))
    ALL_MASKED: tl.constexpr = CUSTOM_MASK or (MASK_HOOK is not None)
    lo, hi, full_lo, full_hi = tile_bounds(kv_start, kv_end, q_start, tile_q, qo_len, kv_len, window_left,
                                           BLOCK_N, CAUSAL, HAS_WINDOW, ALL_MASKED)
    if RANGE_HOOK is not None:
        # The variant's key range of this tile (a mask comes with it: every block stays masked).
        lo, hi = user_kv_range(RANGE_HOOK, lo, hi, q_start + kv_len - qo_len,
                               tl.minimum(q_start + tile_q, qo_len) - 1 + kv_len - qo_len, kv_len, req, params, BLOCK_N)
        full_lo = lo
        full_hi = lo

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    # Keys before the window edge, then whole blocks every row sees (no mask), then the causal
    # diagonal and the chunk's ragged end.
    if HAS_WINDOW:
        for start in range(lo, full_lo, BLOCK_N):
            acc, l_i, m_i = attend_block(acc, l_i, m_i, start, hi, b_q, rows, kv, opts, params, True, BLOCK_N,
                                         HEAD_DIM, BLOCK_D, HEAD_DIM_VO, BLOCK_DV, PAGED, CAUSAL,
                                         HAS_WINDOW, SOFT_CAP, POS_ENC, CUSTOM_MASK, LOGITS_HOOK, MASK_HOOK,
                                         USE_SOFTMAX, DOT_PRECISION)
    for start in range(full_lo, full_hi, BLOCK_N):
        acc, l_i, m_i = attend_block(acc, l_i, m_i, start, hi, b_q, rows, kv, opts, params, False, BLOCK_N,
                                     HEAD_DIM, BLOCK_D, HEAD_DIM_VO, BLOCK_DV, PAGED, CAUSAL,
                                     HAS_WINDOW, SOFT_CAP, POS_ENC, CUSTOM_MASK, LOGITS_HOOK, MASK_HOOK,
                                     USE_SOFTMAX, DOT_PRECISION)
    for start in range(full_hi, hi, BLOCK_N):
        acc, l_i, m_i = attend_block(acc, l_i, m_i, start, hi, b_q, rows, kv, opts, params, True, BLOCK_N,
                                     HEAD_DIM, BLOCK_D, HEAD_DIM_VO, BLOCK_DV, PAGED, CAUSAL,
                                     HAS_WINDOW, SOFT_CAP, POS_ENC, CUSTOM_MASK, LOGITS_HOOK, MASK_HOOK,
                                     USE_SOFTMAX, DOT_PRECISION)

    if USE_SOFTMAX:
        empty = l_i == 0.0
        out = acc / tl.where(empty, 1.0, l_i)[:, None]
        lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    else:
        out = acc
        lse = tl.zeros([BLOCK_M], tl.float32)
    if part_base < 0:
        finish_tile(out, lse, o_ptr, lse_ptr, sinks_ptr, q_row, qo_head, m_row, o_dv, m_dv, stride_on, stride_oh,
                    num_qo_heads, v_scale, HEAD_DIM_VO, HAS_SINKS, WRITE_LSE)
    else:
        # Split request: write this chunk's partial; the tile's last chunk program merges them all.
        chunk = tl.load(item_chunk_ptr + item)
        num_chunks = tl.load(item_num_chunks_ptr + item)
        part_row = (part_base + chunk * qo_len + q_idx).to(tl.int64) * num_qo_heads + qo_head
        tl.store(part_o_ptr + part_row[:, None] * HEAD_DIM_VO + o_dv[None, :], out, mask=m_row[:, None] & m_dv[None, :])
        tl.store(part_lse_ptr + part_row, lse, mask=m_row)
        tl.debug_barrier()  # every thread's partial is stored before the counter moves (release below)
        counter = merge_counter_ptr + tl.load(item_counter_ptr + item) * tl.num_programs(1) + kv_head
        finished = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if finished == num_chunks - 1:
            tl.debug_barrier()
            # The merge covers the tile's real rows (a decode tile has `group` of its BLOCK_M rows),
            # MERGE_M rows at a time: a prefill tile's 64-128 rows at once would hold [rows, BLOCK_DV]
            # float32 partials beside the merge state and spill (ptxas: 1.9 KB for 128 rows).
            tile_rows = tl.minimum(tile_q, qo_len - q_start) * group  # a decode tile: `group` rows
            for r0 in range(0, tile_rows, MERGE_M):
                o_r = r0 + tl.arange(0, MERGE_M)
                r_q = q_start + o_r // group
                r_head = kv_head * group + o_r % group
                m_r = o_r < tile_rows
                merged_out, merged_lse = merge_chunks(part_o_ptr, part_lse_ptr, part_base, num_chunks, qo_len, r_q,
                                                      r_head, m_r, num_qo_heads, o_dv, m_dv, HEAD_DIM_VO, MERGE_M,
                                                      BLOCK_DV, MERGE_BLOCK_C, USE_SOFTMAX)
                finish_tile(merged_out, merged_lse, o_ptr, lse_ptr, sinks_ptr, (qo_begin + r_q).to(tl.int64), r_head,
                            m_r, o_dv, m_dv, stride_on, stride_oh, num_qo_heads, v_scale, HEAD_DIM_VO, HAS_SINKS,
                            WRITE_LSE)
            tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")  # ready for the next launch (graph replay)


# The declaration: every runtime argument's type. "q"/"kv"/"o" are pointers of the plan's q, KV and
# output dtypes, "param" a variant tensor (its dtype from the variant), "meta" an int32 per-item field
# of the scheduler's work list (field name = argument name without "_ptr").
ARG_TYPES = {
    "q_ptr": "q", "k_ptr": "kv", "v_ptr": "kv", "o_ptr": "o", "lse_ptr": "*fp32",
    **{name: "i32" for name in ("stride_qn", "stride_qh", "stride_kp", "stride_kt", "stride_kh", "stride_vp",
                                "stride_vt", "stride_vh", "stride_on", "stride_oh")},
    "sm_scale_log2": "fp32", "v_scale": "fp32", "window_left": "i32",
    "part_o_ptr": "*fp32", "part_lse_ptr": "*fp32", "merge_counter_ptr": "*i32",
    **{f"item_{field}_ptr": "meta" for field in ("req", "q_start", "kv_start", "kv_end", "chunk", "qo_begin",
                                                 "qo_len", "kv_begin", "kv_len", "part_base", "num_chunks", "counter")},
    "kv_indices_ptr": "*i32", "mask_ptr": "*u8", "mask_indptr_ptr": "*i32", "alibi_ptr": "*fp32",
    "sinks_ptr": "*fp32",
    **{f"param_t{i}": "param" for i in range(4)},
    "group": "i32", "num_qo_heads": "i32", "page_size": "i32",
    "soft_cap": "fp32", "rope_rcp_scale": "fp32", "rope_log2_rcp_theta": "fp32",
    **{f"param_s{i}": "fp32" for i in range(4)},
}
# Arguments that change per run() (the rest are fixed at plan()); they lead the signature.
PER_CALL_ARGS = ("q_ptr", "k_ptr", "v_ptr", "o_ptr", "lse_ptr", "sinks_ptr", "param_t0", "param_t1", "param_t2",
                 "param_t3", "stride_qn", "stride_qh", "stride_kp", "stride_kt", "stride_kh", "stride_vp", "stride_vt",
                 "stride_vh", "stride_on", "stride_oh", "sm_scale_log2", "v_scale", "window_left", "param_s0",
                 "param_s1", "param_s2", "param_s3")
