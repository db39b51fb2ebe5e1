"""The MLA attention kernel: DeepSeek multi-head latent attention (matrix-absorbed form) on a paged cache.

Every query head of a request attends to one compressed KV stream: K = concat(ckv, kpe) (512 + 64
wide), V = ckv. A program takes one work item ``(request, q tile, kv chunk)`` of the engine's
scheduler and one group of heads, and packs heads and query tokens into the M dimension of
``tl.dot`` (row m = query ``q_start + m // group``, head ``head_group * group + m % group``), so
each KV block is read once for all the heads of the tile. The block's logits are
``q_nope . ckv^T + q_pe . kpe^T``, and the same ckv tile is the V operand of ``p @ V``: the cache
is never copied or concatenated. Programs are numbered head group fastest, so the head groups of
one item run side by side and share its KV through L2.

Split-KV: a split request's chunks write float32 partials (a whole ``[rows, 512]`` tile each: with
128 heads, 256 KB per query and chunk) and ``mla_merge_kernel``, launched right after, merges them:
one program per (split tile, block of heads) over the plan's list of split tiles, ``BLOCK_C``
chunks a load. (The attention kernel's in-kernel merge by the last chunk to finish made one program
read every chunk's whole tile: about 15 us a chunk on the H200, benchmarks/results/tune/mla-h200.json.)
Causal masking is a run-time flag
(bottom-right aligned, as FlashInfer: query ``i`` sees key ``j <= i + kv_len - qo_len``).
Softmax in base 2; the LSE written is ``log2(sum_j 2^(s_j * log2 e))``, times ``lse_scale``.
"""

import triton
import triton.language as tl

from . import AotConfig
from .attention.helpers import kv_rows, load_work_item, tile_bounds
from .attention.merge import merge_chunks


@triton.jit
def mla_block(acc, l_i, m_i, start, hi, b_qn, b_qp, q_pos, qk_scale_log2, kv, o_c, o_p, MASKED: tl.constexpr,
              BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One ``BLOCK_N``-key step of the online softmax over keys ``[start, start + BLOCK_N)``: one
    load of the ckv and kpe rows, logits ``q_nope . ckv^T + q_pe . kpe^T`` (q already carries the
    kpe scale's ratio to ckv's), scaled to base 2, ``acc += p @ ckv``. ``MASKED=False`` is for
    blocks every row sees whole (no bounds, no causal mask). ``kv`` = (ckv_ptr, kpe_ptr,
    kv_indices_ptr, kv_begin, page_size, stride_cp, stride_ct, stride_pp, stride_pt)."""
    ckv_ptr, kpe_ptr, kv_indices_ptr, kv_begin, page_size, stride_cp, stride_ct, stride_pp, stride_pt = kv
    o_n = start + tl.arange(0, BLOCK_N)
    m_n = o_n < hi
    c_rows, p_rows = kv_rows(kv_indices_ptr, kv_begin, o_n, m_n, page_size, stride_cp, stride_ct, stride_pp,
                             stride_pt, True, MASKED)
    p_c = ckv_ptr + c_rows[:, None] + o_c[None, :]
    p_p = kpe_ptr + p_rows[:, None] + o_p[None, :]
    if MASKED:
        b_c = tl.load(p_c, mask=m_n[:, None], other=0.0).to(b_qn.dtype)
        b_p = tl.load(p_p, mask=m_n[:, None], other=0.0).to(b_qn.dtype)
    else:
        b_c = tl.load(p_c).to(b_qn.dtype)
        b_p = tl.load(p_p).to(b_qn.dtype)
    s = tl.dot(b_qn, tl.trans(b_c), input_precision=DOT_PRECISION)
    s = tl.dot(b_qp, tl.trans(b_p), acc=s, input_precision=DOT_PRECISION) * qk_scale_log2
    if MASKED:
        s = tl.where(m_n[None, :] & (o_n[None, :] <= q_pos[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet stays empty
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = m_new
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(b_qn.dtype), b_c, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def store_out(out, o_ptr, q_row, head, m_row, o_dv, stride_on, stride_oh, v_scale):
    """Write final output columns ``o_dv`` of a tile's rows (``v_scale`` dequantizes an fp8 ckv)."""
    p_o = o_ptr + q_row[:, None] * stride_on + head.to(tl.int64)[:, None] * stride_oh + o_dv[None, :]
    tl.store(p_o, (out * v_scale).to(o_ptr.dtype.element_ty), mask=m_row[:, None])


@triton.jit
def store_lse(lse, lse_ptr, q_row, head, m_row, num_heads, lse_scale, write_lse):
    """The rows' LSE, when asked (``lse_scale``: 1 for base 2, ln 2 for base e)."""
    if write_lse != 0:
        tl.store(lse_ptr + q_row * num_heads + head, lse * lse_scale, mask=m_row)


@triton.jit(do_not_specialize=["num_heads", "head_groups", "group", "page_size", "causal", "write_lse"])
def mla_kernel(
    # per run(): inputs, outputs, their strides, scales, LSE switches
    q_nope_ptr, q_pe_ptr, ckv_ptr, kpe_ptr, o_ptr, lse_ptr,
    stride_qn_n, stride_qn_h, stride_qp_n, stride_qp_h, stride_cp, stride_ct, stride_pp, stride_pt,
    stride_on, stride_oh, qk_scale_log2, pe_ratio, v_scale, lse_scale, write_lse,
    # fixed at plan(): workspace, work list, page table, problem sizes
    part_o_ptr, part_lse_ptr,
    item_req_ptr, item_q_start_ptr, item_kv_start_ptr, item_kv_end_ptr, item_chunk_ptr, item_qo_begin_ptr,
    item_qo_len_ptr, item_kv_begin_ptr, item_kv_len_ptr, item_part_base_ptr,
    kv_indices_ptr, num_heads, head_groups, group, page_size, causal,
    # block shape
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM_CKV: tl.constexpr, HEAD_DIM_KPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Shapes (elements): q_nope [N_q, H, HEAD_DIM_CKV], q_pe [N_q, H, HEAD_DIM_KPE] (token and head
    strides free, last dimension contiguous); ckv [pages, page_size, HEAD_DIM_CKV] and kpe [pages,
    page_size, HEAD_DIM_KPE] addressed as ``page * stride_p + slot * stride_t``; o [N_q, H,
    HEAD_DIM_CKV]; lse [N_q, H] float32; partials float32 part_o [rows, H, HEAD_DIM_CKV], part_lse
    [rows, H]. Grid: ``items * head_groups`` programs. ``qk_scale_log2`` is ``sm_scale * log2(e)``
    times ckv's dequantization scale, ``pe_ratio`` kpe's scale over ckv's (1 unless fp8 scales
    differ), ``v_scale`` ckv's scale."""
    pid = tl.program_id(0)
    item = pid // head_groups
    head_group = pid % head_groups
    req, q_start, kv_start, kv_end, qo_begin, qo_len, kv_begin, kv_len, part_base = load_work_item(
        item, item_req_ptr, item_q_start_ptr, item_kv_start_ptr, item_kv_end_ptr, item_qo_begin_ptr, item_qo_len_ptr,
        item_kv_begin_ptr, item_kv_len_ptr, item_part_base_ptr)
    if req < 0:  # padding item of a CUDA-graph sized grid
        return
    tile_q = BLOCK_M // group

    o_m = tl.arange(0, BLOCK_M)
    q_idx = q_start + o_m // group
    head = head_group * group + o_m % group
    m_row = (o_m < tile_q * group) & (q_idx < qo_len) & (head < num_heads)
    # Without a causal mask every query sits at the last position: it sees the whole KV.
    q_pos = tl.where(causal != 0, q_idx + kv_len - qo_len, kv_len - 1)
    q_row = (qo_begin + q_idx).to(tl.int64)
    o_c = tl.arange(0, HEAD_DIM_CKV)
    o_p = tl.arange(0, HEAD_DIM_KPE)
    h64 = head.to(tl.int64)
    b_qn = tl.load(q_nope_ptr + q_row[:, None] * stride_qn_n + h64[:, None] * stride_qn_h + o_c[None, :],
                   mask=m_row[:, None], other=0.0)
    b_qp = tl.load(q_pe_ptr + q_row[:, None] * stride_qp_n + h64[:, None] * stride_qp_h + o_p[None, :],
                   mask=m_row[:, None], other=0.0)
    # fp8 scales: ckv's multiplies the logits, kpe's enters q_pe as its ratio to ckv's (exact at 1).
    b_qp = (b_qp.to(tl.float32) * pe_ratio).to(b_qn.dtype)

    causal_q_start = tl.where(causal != 0, q_start, 0)
    causal_qo_len = tl.where(causal != 0, qo_len, 1)
    lo, hi, full_lo, full_hi = tile_bounds(kv_start, kv_end, causal_q_start, tile_q, causal_qo_len, kv_len, -1,
                                           BLOCK_N, True, False, False)
    kv = (ckv_ptr, kpe_ptr, kv_indices_ptr, kv_begin, page_size, stride_cp, stride_ct, stride_pp, stride_pt)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_CKV], tl.float32)
    for start in range(full_lo, full_hi, BLOCK_N):
        acc, l_i, m_i = mla_block(acc, l_i, m_i, start, hi, b_qn, b_qp, q_pos, qk_scale_log2, kv, o_c, o_p, False,
                                  BLOCK_N, DOT_PRECISION)
    for start in range(full_hi, hi, BLOCK_N):
        acc, l_i, m_i = mla_block(acc, l_i, m_i, start, hi, b_qn, b_qp, q_pos, qk_scale_log2, kv, o_c, o_p, True,
                                  BLOCK_N, DOT_PRECISION)

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    if part_base < 0:
        store_out(out, o_ptr, q_row, head, m_row, o_c, stride_on, stride_oh, v_scale)
        store_lse(lse, lse_ptr, q_row, head, m_row, num_heads, lse_scale, write_lse)
    else:  # a split request: this chunk's partial (unscaled), merged by mla_merge_kernel
        chunk = tl.load(item_chunk_ptr + item)
        part_row = (part_base + chunk * qo_len + q_idx).to(tl.int64) * num_heads + head
        tl.store(part_o_ptr + part_row[:, None] * HEAD_DIM_CKV + o_c[None, :], out, mask=m_row[:, None])
        tl.store(part_lse_ptr + part_row, lse, mask=m_row)


@triton.jit(do_not_specialize=["num_heads", "tile_q", "write_lse"])
def mla_merge_kernel(
    # per run(): outputs, their strides, scales, LSE switch
    o_ptr, lse_ptr, stride_on, stride_oh, v_scale, lse_scale, write_lse,
    # fixed at plan(): the partials, the split tiles' items, the work list
    part_o_ptr, part_lse_ptr, merge_item_ptr, item_q_start_ptr, item_qo_begin_ptr, item_qo_len_ptr,
    item_part_base_ptr, item_num_chunks_ptr, num_heads, tile_q,
    HEAD_DIM_CKV: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Grid ``(len(merge_item), cdiv(num_heads, BLOCK_H))``. ``merge_item`` [tiles] int32 holds the
    first chunk's item of every split tile (-1 pads a CUDA-graph sized list); its program merges, for
    the tile's ``tile_q`` queries and ``BLOCK_H`` heads, the partials ``mla_kernel`` wrote (layout
    and LSE base as there) into o [N_q, H, HEAD_DIM_CKV] (times ``v_scale``) and lse [N_q, H]
    (times ``lse_scale``, when ``write_lse``)."""
    item = tl.load(merge_item_ptr + tl.program_id(0))
    if item < 0:
        return
    part_base = tl.load(item_part_base_ptr + item)
    q_start = tl.load(item_q_start_ptr + item)
    qo_begin = tl.load(item_qo_begin_ptr + item)
    qo_len = tl.load(item_qo_len_ptr + item)
    num_chunks = tl.load(item_num_chunks_ptr + item)
    head = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    o_c = tl.arange(0, HEAD_DIM_CKV)
    for t in range(0, tile_q):
        q_vec = tl.zeros([BLOCK_H], tl.int32) + q_start + t
        m_row = (head < num_heads) & (q_vec < qo_len)
        v, lse = merge_chunks(part_o_ptr, part_lse_ptr, part_base, num_chunks, qo_len, q_vec, head, m_row, num_heads,
                              o_c, o_c < HEAD_DIM_CKV, HEAD_DIM_CKV, BLOCK_H, HEAD_DIM_CKV, BLOCK_C, True)
        q_row = (qo_begin + q_vec).to(tl.int64)
        store_out(v, o_ptr, q_row, head, m_row, o_c, stride_on, stride_oh, v_scale)
        store_lse(lse, lse_ptr, q_row, head, m_row, num_heads, lse_scale, write_lse)


# The declaration: every runtime argument's type. "q"/"kv"/"o" are pointers of the plan's q, KV and
# output dtypes, "meta" an int32 per-item field of the scheduler's work list (field name = argument
# name without "_ptr").
ARG_TYPES = {
    "q_nope_ptr": "q", "q_pe_ptr": "q", "ckv_ptr": "kv", "kpe_ptr": "kv", "o_ptr": "o", "lse_ptr": "*fp32",
    **{name: "i32" for name in ("stride_qn_n", "stride_qn_h", "stride_qp_n", "stride_qp_h", "stride_cp", "stride_ct",
                                "stride_pp", "stride_pt", "stride_on", "stride_oh", "write_lse")},
    "qk_scale_log2": "fp32", "pe_ratio": "fp32", "v_scale": "fp32", "lse_scale": "fp32",
    "part_o_ptr": "*fp32", "part_lse_ptr": "*fp32",
    **{f"item_{field}_ptr": "meta" for field in ("req", "q_start", "kv_start", "kv_end", "chunk", "qo_begin",
                                                 "qo_len", "kv_begin", "kv_len", "part_base")},
    "kv_indices_ptr": "*i32",
    **{name: "i32" for name in ("num_heads", "head_groups", "group", "page_size", "causal")},
}
# Arguments that change per run() (the rest are fixed at plan()); they lead the signature.
PER_CALL_ARGS = ("q_nope_ptr", "q_pe_ptr", "ckv_ptr", "kpe_ptr", "o_ptr", "lse_ptr", "stride_qn_n", "stride_qn_h",
                 "stride_qp_n", "stride_qp_h", "stride_cp", "stride_ct", "stride_pp", "stride_pt", "stride_on",
                 "stride_oh", "qk_scale_log2", "pe_ratio", "v_scale", "lse_scale", "write_lse")
MERGE_ARG_TYPES = {
    "o_ptr": "o", "lse_ptr": "*fp32", "stride_on": "i32", "stride_oh": "i32", "v_scale": "fp32", "lse_scale": "fp32",
    "write_lse": "i32", "part_o_ptr": "*fp32", "part_lse_ptr": "*fp32", "merge_item_ptr": "*i32",
    **{f"item_{field}_ptr": "meta" for field in ("q_start", "qo_begin", "qo_len", "part_base", "num_chunks")},
    "num_heads": "i32", "tile_q": "i32",
}
MERGE_PER_CALL_ARGS = ("o_ptr", "lse_ptr", "stride_on", "stride_oh", "v_scale", "lse_scale", "write_lse")


def aot_configs():
    """Every configuration the MLA launchers can pick: each device table's block shape for every
    (q, kv) dtype pair it accepts, and the merge kernel for every output dtype
    (``flashinfer_triton/attention/mla.py`` builds the list)."""
    from ..attention.mla import mla_aot_configs

    return mla_aot_configs()


__all__ = ["mla_kernel", "mla_merge_kernel", "ARG_TYPES", "PER_CALL_ARGS", "MERGE_ARG_TYPES",
           "MERGE_PER_CALL_ARGS", "AotConfig", "aot_configs"]
