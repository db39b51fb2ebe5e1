"""Merging attention states (v, lse): one online LSE-merge step serves the split-KV merge inside the
attention kernel, ``merge_state`` / ``merge_state_in_place`` / ``merge_states`` (cascade) and the
context-parallel exchange. All math in float32.

LSE is base 2: ``s = log2(sum_j 2^(x_j * log2(e)))`` over scaled logits ``x_j``. Merging weights
state ``i`` by ``2^(s_i - max_k s_k)``. Non-finite states behave as the float64 reference does:
``s = -inf`` is an empty segment (weight 0, its ``v`` never read into the sum), a NaN ``s`` makes the
result NaN, and ``s = +inf`` dominates (the result is the mean ``v`` of the ``+inf`` states and
``s = +inf``). All-empty gives ``v = 0``, ``s = -inf``.
"""

import triton
import triton.language as tl


@triton.jit
def merge_step(m, l, acc, s, v):
    """Fold the states ``(v, s)`` along axis 0 into the running ``(m, l, acc)``: ``m``, ``l``
    [R] (running max and sum of weights), ``acc`` [R, D] (weighted sum of v); ``s`` [C, R],
    ``v`` [C, R, D]. Returns the updated ``(m, l, acc)``; ``finish_merge`` turns it into (v, s)."""
    is_nan = s != s
    any_nan = tl.max(is_nan.to(tl.int32), 0) > 0
    s = tl.where(is_nan, float("-inf"), s)
    m_new = tl.maximum(m, tl.max(s, 0))
    pos_inf = m_new == float("inf")
    m_safe = tl.where((m_new == float("-inf")) | pos_inf, 0.0, m_new)
    alpha = tl.where(pos_inf, tl.where(m == float("inf"), 1.0, 0.0), tl.exp2(m - m_safe))
    w = tl.where(pos_inf[None, :], tl.where(s == float("inf"), 1.0, 0.0), tl.exp2(s - m_safe[None, :]))
    l = tl.where(any_nan, float("nan"), l * alpha + tl.sum(w, 0))
    acc = acc * alpha[:, None] + tl.sum(tl.where((w > 0)[:, :, None], v * w[:, :, None], 0.0), 0)
    return m_new, l, acc


@triton.jit
def finish_merge(m, l, acc):
    """(v [R, D], s [R]) of a merged state; an empty state gives v = 0, s = -inf."""
    empty = l == 0.0
    v = acc / tl.where(empty, 1.0, l)[:, None]
    s = tl.where(empty, float("-inf"), m + tl.log2(tl.where(empty, 1.0, l)))
    return v, s


@triton.jit
def merge_chunks(part_o_ptr, part_lse_ptr, part_base, num_chunks, qo_len, q_idx, qo_head, m_row, num_qo_heads,
                 o_dv, m_dv, HEAD_DIM_VO: tl.constexpr, ROWS: tl.constexpr, BLOCK_DV: tl.constexpr,
                 BLOCK_C: tl.constexpr, USE_SOFTMAX: tl.constexpr):
    """Merge the split-KV partials of one tile: chunk ``c`` of query ``q_idx`` (head ``qo_head``)
    lies at partial row ``(part_base + c * qo_len + q_idx) * num_qo_heads + qo_head``, float32
    (v normalized, s base 2). ``BLOCK_C`` chunks load at once: one memory latency per block of
    chunks, not per chunk. The loads bypass L1 (``.cg``): other programs wrote the partials.
    ``q_idx``, ``qo_head``, ``m_row`` are [ROWS]. Returns the merged ``(v [ROWS, BLOCK_DV], s [ROWS])``."""
    m = tl.full([ROWS], float("-inf"), tl.float32)
    l = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, BLOCK_DV], tl.float32)
    for c0 in range(0, num_chunks, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_cr = (o_c < num_chunks)[:, None] & m_row[None, :]
        row = (part_base + o_c[:, None] * qo_len + q_idx[None, :]).to(tl.int64) * num_qo_heads + qo_head[None, :]
        v = tl.load(part_o_ptr + row[:, :, None] * HEAD_DIM_VO + o_dv[None, None, :],
                    mask=m_cr[:, :, None] & m_dv[None, None, :], other=0.0, cache_modifier=".cg")
        if USE_SOFTMAX:
            s = tl.load(part_lse_ptr + row, mask=m_cr, other=float("-inf"), cache_modifier=".cg")
            m, l, acc = merge_step(m, l, acc, s, v)
        else:
            acc += tl.sum(v, 0)
    if USE_SOFTMAX:
        return finish_merge(m, l, acc)
    return acc, tl.zeros([ROWS], tl.float32)


@triton.jit
def merge_state_kernel(
    p_va, p_sa, p_vb, p_sb, p_vo, p_so, p_mask, num_heads, head_dim,
    s_va_n, s_va_h, s_sa_n, s_sa_h, s_vb_n, s_vb_h, s_sb_n, s_sb_h, s_vo_n, s_vo_h, s_so_n, s_so_h,
    HAS_MASK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Grid (seq, head block). Writes (vo, so) = merge of (va, sa) and (vb, sb); with HAS_MASK, rows
    whose mask byte is 0 are left untouched (the in-place form passes vo = va, so = sa)."""
    n = tl.program_id(0).to(tl.int64)
    o_h = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D).to(tl.int64)
    m_h = o_h < num_heads
    if HAS_MASK:
        # A masked-off row loads and stores nothing.
        m_h = m_h & ((tl.zeros([BLOCK_H], tl.int32) + tl.load(p_mask + n).to(tl.int32)) != 0)
    m_hd = m_h[:, None] & (o_d < head_dim)[None, :]

    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    s_a = tl.load(p_sa + n * s_sa_n + o_h * s_sa_h, mask=m_h, other=float("-inf")).to(tl.float32)
    v_a = tl.load(p_va + n * s_va_n + o_h[:, None] * s_va_h + o_d[None, :], mask=m_hd, other=0.0).to(tl.float32)
    s_b = tl.load(p_sb + n * s_sb_n + o_h * s_sb_h, mask=m_h, other=float("-inf")).to(tl.float32)
    v_b = tl.load(p_vb + n * s_vb_n + o_h[:, None] * s_vb_h + o_d[None, :], mask=m_hd, other=0.0).to(tl.float32)
    m, l, acc = merge_step(m, l, acc, s_a[None, :], v_a[None, :, :])
    m, l, acc = merge_step(m, l, acc, s_b[None, :], v_b[None, :, :])
    v_o, s_o = finish_merge(m, l, acc)
    tl.store(p_vo + n * s_vo_n + o_h[:, None] * s_vo_h + o_d[None, :], v_o.to(p_vo.dtype.element_ty), mask=m_hd)
    tl.store(p_so + n * s_so_n + o_h * s_so_h, s_o, mask=m_h)


@triton.jit(do_not_specialize=["num_states"])
def merge_states_kernel(
    p_v, p_s, p_vo, p_so, num_states, num_heads, head_dim,
    s_v_n, s_v_k, s_v_h, s_s_n, s_s_k, s_s_h, s_vo_n, s_vo_h, s_so_n, s_so_h,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Grid (seq, head block); folds the ``num_states`` states one at a time (``merge_step``)."""
    n = tl.program_id(0).to(tl.int64)
    o_h = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D).to(tl.int64)
    m_h = o_h < num_heads
    m_hd = m_h[:, None] & (o_d < head_dim)[None, :]
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    p_v_n = p_v + n * s_v_n + o_h[:, None] * s_v_h + o_d[None, :]
    p_s_n = p_s + n * s_s_n + o_h * s_s_h
    for _ in range(num_states):
        s = tl.load(p_s_n, mask=m_h, other=float("-inf")).to(tl.float32)
        v = tl.load(p_v_n, mask=m_hd, other=0.0).to(tl.float32)
        p_s_n += s_s_k  # pointer steps: 64-bit addresses however many states
        p_v_n += s_v_k
        m, l, acc = merge_step(m, l, acc, s[None, :], v[None, :, :])
    v_o, s_o = finish_merge(m, l, acc)
    tl.store(p_vo + n * s_vo_n + o_h[:, None] * s_vo_h + o_d[None, :], v_o.to(p_vo.dtype.element_ty), mask=m_hd)
    tl.store(p_so + n * s_so_n + o_h * s_so_h, s_o, mask=m_h)


# ---- merge_state(s) launch table, shared by flashinfer_triton/attention/merge.py and the AOT tier ----
BLOCK_DS = (16, 32, 64, 128, 256, 512)
TILE = 1024  # BLOCK_H * BLOCK_D elements per program
NUM_WARPS = 4


def merge_blocks(head_dim: int):
    """(BLOCK_H, BLOCK_D) for a head dimension; None when head_dim is too large."""
    block_d = max(16, 1 << (max(int(head_dim), 1) - 1).bit_length())
    if block_d not in BLOCK_DS:
        return None
    return max(1, TILE // block_d), block_d
