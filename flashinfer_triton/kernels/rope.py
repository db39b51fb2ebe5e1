"""Rotary position embedding kernels (FlashInfer's apply_rope* family).

A program takes ``BLOCK_T`` tokens, computes cos/sin for them once (on the fly from the
frequency formula, or loaded from a float32 cos/sin cache), then walks its share of the head
blocks (the query's, then the key's, as one list) in tiles of ``[BLOCK_T, BLOCK_H, HALF_BLOCK]``
rotation pairs: one launch for q and k. With few tokens the head blocks are spread over the
grid's second axis, one per program. NeoX layout pairs
element ``j`` with ``j + rotary_dim/2``; interleaved (GPT-J) pairs ``2j`` with ``2j + 1``.
Columns ``rotary_dim..head_dim`` are copied when the output is a different tensor (``n_pass``).

Frequencies follow FlashInfer: ``freq_j = theta^(-2j/rotary_dim)``, then
``smooth = clamp(freq * smooth_a + smooth_b, 0, 1)``,
``freq = (1 - smooth) * freq / rope_scale + smooth * freq`` (``smooth_a = smooth_b = 0`` is plain
RoPE with position interpolation; Llama 3.1 passes its smoothing constants). Frequencies and
angles are float64 (per token, not per head), cos/sin and the rotation float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import AotConfig, ptr

POS_IDS = 0  # positions from a pos_ids tensor
POS_INDPTR = 1  # positions from indptr/offsets: offsets[b] + (token - indptr[b])
POS_CACHE = 2  # positions from pos_ids, cos/sin from a float32 cache [max_pos, rotary_dim]

# HALF_BLOCK (next power of two >= rotary_dim / 2) -> (BLOCK_H, BLOCK_T, num_warps)
ROPE_TABLE = {
    16: (16, 4, 4),
    32: (8, 4, 4),
    64: (8, 4, 4),
    128: (4, 4, 4),
    256: (2, 4, 4),
}


def rope_config(rotary_dim: int):
    """(HALF_BLOCK, BLOCK_H, BLOCK_T, num_warps) for a rotary dim; every result is in aot_configs()."""
    half = rotary_dim // 2
    for hb, (bh, bt, warps) in ROPE_TABLE.items():
        if half <= hb:
            return hb, bh, bt, warps
    return None


@triton.jit
def _head_tile(hb, n_q_blocks, p_q, p_k, p_qo, p_ko, n_qo_heads, n_kv_heads,
               sq_n, sq_h, sk_n, sk_h, sqo_n, sqo_h, sko_n, sko_h, o_t, m_t, BLOCK_H: tl.constexpr):
    """Head block ``hb`` of the joint list (query head blocks, then key head blocks): input and
    output pointers, their [BLOCK_T, BLOCK_H, 1] offsets and the (token, head) mask."""
    is_q = hb < n_q_blocks
    o_h = (tl.where(is_q, hb, hb - n_q_blocks) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    m_th = m_t[:, None, None] & (o_h < tl.where(is_q, n_qo_heads, n_kv_heads))[None, :, None]
    s_n = tl.where(is_q, sq_n, sk_n).to(tl.int64)
    s_h = tl.where(is_q, sq_h, sk_h).to(tl.int64)
    so_n = tl.where(is_q, sqo_n, sko_n).to(tl.int64)
    so_h = tl.where(is_q, sqo_h, sko_h).to(tl.int64)
    p_x = tl.where(is_q, p_q, p_k) + o_t[:, None, None] * s_n + o_h[None, :, None] * s_h
    p_o = tl.where(is_q, p_qo, p_ko) + o_t[:, None, None] * so_n + o_h[None, :, None] * so_h
    return p_x, p_o, m_th


@triton.jit
def _load_pair(p_x, m_th, half, HALF_BLOCK: tl.constexpr, INTERLEAVE: tl.constexpr):
    """The two halves of each rotation pair, in the input dtype."""
    o_j = tl.arange(0, HALF_BLOCK)
    m = m_th & (o_j < half)[None, None, :]
    if INTERLEAVE:
        b_x1 = tl.load(p_x + 2 * o_j[None, None, :], mask=m, other=0.0)
        b_x2 = tl.load(p_x + 2 * o_j[None, None, :] + 1, mask=m, other=0.0)
    else:
        b_x1 = tl.load(p_x + o_j[None, None, :], mask=m, other=0.0)
        b_x2 = tl.load(p_x + o_j[None, None, :] + half, mask=m, other=0.0)
    return b_x1, b_x2


@triton.jit
def _rotate_store(p_x, p_o, m_th, b_x1, b_x2, b_cos, b_sin, half, rotary_dim, n_pass,
                  HALF_BLOCK: tl.constexpr, INTERLEAVE: tl.constexpr):
    o_j = tl.arange(0, HALF_BLOCK)
    m = m_th & (o_j < half)[None, None, :]
    b_x1 = b_x1.to(tl.float32)
    b_x2 = b_x2.to(tl.float32)
    b_o1 = (b_x1 * b_cos - b_x2 * b_sin).to(p_o.dtype.element_ty)
    b_o2 = (b_x2 * b_cos + b_x1 * b_sin).to(p_o.dtype.element_ty)
    if INTERLEAVE:
        tl.store(p_o + 2 * o_j[None, None, :], b_o1, mask=m)
        tl.store(p_o + 2 * o_j[None, None, :] + 1, b_o2, mask=m)
    else:
        tl.store(p_o + o_j[None, None, :], b_o1, mask=m)
        tl.store(p_o + o_j[None, None, :] + half, b_o2, mask=m)
    # Pass-through columns (partial rotary, out of place): n_pass is 0 in place.
    for c0 in range(0, n_pass, HALF_BLOCK):
        o_c = rotary_dim + c0 + o_j
        m_c = m_th & ((c0 + o_j) < n_pass)[None, None, :]
        b_v = tl.load(p_x + o_c[None, None, :], mask=m_c, other=0.0)
        tl.store(p_o + o_c[None, None, :], b_v, mask=m_c)


@triton.jit
def rope_kernel(
    p_q, p_k, p_qo, p_ko, p_pos, p_indptr, p_offsets, p_cache,
    nnz, n_qo_heads, n_kv_heads, batch_size, n_search,
    sq_n, sq_h, sk_n, sk_h, sqo_n, sqo_h, sko_n, sko_h,
    pos_stride, cache_stride, max_pos,
    rotary_dim, n_pass, n_q_blocks, n_blocks, n_splits,
    exp_step, exp_step_lo, rcp_scale, smooth_a, smooth_b,
    POS_MODE: tl.constexpr, INTERLEAVE: tl.constexpr,
    HALF_BLOCK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Grid (token blocks, splits of the head blocks). Head blocks ``0..n_q_blocks`` are the
    query's, ``n_q_blocks..n_blocks`` the key's; program ``(t, s)`` takes blocks ``s, s +
    n_splits, ...``. The first block's loads are issued before the positions are known, so at small
    token counts (one block per program) one memory round trip overlaps the cos/sin math."""
    pid_t = tl.program_id(0)
    pid_s = tl.program_id(1)
    half = rotary_dim // 2
    o_t = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    m_t = o_t < nnz
    p_x, p_o, m_th = _head_tile(pid_s, n_q_blocks, p_q, p_k, p_qo, p_ko, n_qo_heads, n_kv_heads,
                                sq_n, sq_h, sk_n, sk_h, sqo_n, sqo_h, sko_n, sko_h, o_t, m_t, BLOCK_H)
    b_x1, b_x2 = _load_pair(p_x, m_th, half, HALF_BLOCK, INTERLEAVE)

    if POS_MODE == 1:
        # Request of each token: the largest b in [0, batch_size) with indptr[b] <= token.
        b_lo = tl.zeros([BLOCK_T], dtype=tl.int32)
        b_hi = tl.zeros([BLOCK_T], dtype=tl.int32) + (batch_size - 1)
        for _ in range(n_search):
            b_mid = (b_lo + b_hi + 1) // 2
            b_v = tl.load(p_indptr + b_mid)
            go = b_v <= o_t
            b_lo = tl.where(go, b_mid, b_lo)
            b_hi = tl.where(go, b_hi, b_mid - 1)
        b_start = tl.load(p_indptr + b_lo).to(tl.int64)
        b_pos = tl.load(p_offsets + b_lo).to(tl.int64) + (o_t - b_start)
    else:
        # pos_stride is twice the int64 stride when int64 positions are read as their low words.
        b_pos = tl.load(p_pos + o_t * pos_stride, mask=m_t, other=0).to(tl.int64)
    o_j = tl.arange(0, HALF_BLOCK)
    m_j = o_j < half
    if POS_MODE == 2:
        # A position outside the cache reads nothing and gives NaN for its token.
        m_tj = (m_t & (b_pos >= 0) & (b_pos < max_pos))[:, None] & m_j[None, :]
        p_row = p_cache + b_pos[:, None] * cache_stride + o_j[None, :]
        b_cos = tl.load(p_row, mask=m_tj, other=float("nan")).to(tl.float32)
        b_sin = tl.load(p_row + half, mask=m_tj, other=float("nan")).to(tl.float32)
    else:
        # Frequencies and angles in float64 (BLOCK_T x HALF_BLOCK values per program, negligible
        # next to the memory traffic), reduced to [0, 2*pi) before float32 cos/sin: accurate to
        # float32 rounding at any position, where float32 angles lose ~1e-7 * angle radians.
        # freq_j = 2^(j * exp_step), exp_step = -2 log2(theta) / rotary_dim from the host as a
        # float32 (hi, lo) pair so that it keeps float64 precision (and no float64 division here).
        exp_step = tl.cast(exp_step, tl.float64) + tl.cast(exp_step_lo, tl.float64)
        rcp_scale = tl.cast(rcp_scale, tl.float64)
        smooth_a = tl.cast(smooth_a, tl.float64)
        smooth_b = tl.cast(smooth_b, tl.float64)
        b_freq = tl.exp2(o_j.to(tl.float64) * exp_step)
        b_smooth = tl.minimum(tl.maximum(b_freq * smooth_a + smooth_b, 0.0), 1.0)
        b_freq = (1.0 - b_smooth) * (b_freq * rcp_scale) + b_smooth * b_freq
        b_angle = b_pos.to(tl.float64)[:, None] * b_freq[None, :]
        b_angle = b_angle - 6.283185307179586 * tl.floor(b_angle * 0.15915494309189535)
        b_angle = b_angle.to(tl.float32)
        b_cos = tl.cos(b_angle)
        b_sin = tl.sin(b_angle)
    b_cos = b_cos[:, None, :]
    b_sin = b_sin[:, None, :]
    _rotate_store(p_x, p_o, m_th, b_x1, b_x2, b_cos, b_sin, half, rotary_dim, n_pass, HALF_BLOCK, INTERLEAVE)
    for hb in range(pid_s + n_splits, n_blocks, n_splits):
        p_x, p_o, m_th = _head_tile(hb, n_q_blocks, p_q, p_k, p_qo, p_ko, n_qo_heads, n_kv_heads,
                                    sq_n, sq_h, sk_n, sk_h, sqo_n, sqo_h, sko_n, sko_h, o_t, m_t, BLOCK_H)
        b_x1, b_x2 = _load_pair(p_x, m_th, half, HALF_BLOCK, INTERLEAVE)
        _rotate_store(p_x, p_o, m_th, b_x1, b_x2, b_cos, b_sin, half, rotary_dim, n_pass, HALF_BLOCK, INTERLEAVE)


def aot_configs():
    import torch

    configs = []
    ints = ["nnz", "n_qo_heads", "n_kv_heads", "batch_size", "n_search",
            "sq_n", "sq_h", "sk_n", "sk_h", "sqo_n", "sqo_h", "sko_n", "sko_h",
            "pos_stride", "cache_stride", "max_pos", "rotary_dim", "n_pass", "n_q_blocks", "n_blocks", "n_splits"]
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        p = ptr(dtype)
        tag = str(dtype).replace("torch.", "")
        for hb, (bh, bt, warps) in ROPE_TABLE.items():
            for mode in (POS_IDS, POS_INDPTR, POS_CACHE):
                for interleave in (False, True):
                    sig = {"p_q": p, "p_k": p, "p_qo": p, "p_ko": p, "p_pos": "*i32",
                           "p_indptr": "*i32", "p_offsets": "*i32", "p_cache": "*fp32"}
                    sig.update({k: "i32" for k in ints})
                    sig.update({k: "fp32" for k in ("exp_step", "exp_step_lo", "rcp_scale", "smooth_a", "smooth_b")})  # fp64 math inside
                    cex = {"POS_MODE": mode, "INTERLEAVE": interleave,
                           "HALF_BLOCK": hb, "BLOCK_H": bh, "BLOCK_T": bt}
                    sig.update({k: "constexpr" for k in cex})
                    name = f"rope_{tag}_half{hb}_mode{mode}_{'interleave' if interleave else 'neox'}"
                    configs.append(AotConfig(rope_kernel, sig, cex, num_warps=warps, name=name))
    return configs
