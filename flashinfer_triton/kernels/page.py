"""Paged KV-cache kernels: append ragged K/V rows (or MLA ckv/kpe rows) into pages, ragged indptr ->
(batch index, position).

Same-dtype appends are bitwise copies: the launcher views both sides as an unsigned/signed integer
type of the same width (u8 for fp8 caches, i16 for fp16/bf16, i32 for fp32), so one specialization
serves every dtype of a width and fp8 needs no fp8 arithmetic. Appends that change dtype
(fp16/bf16 into an fp8 e4m3 cache) convert in the kernel (round to nearest even).
"""

import triton
import triton.language as tl

from . import AotConfig


@triton.jit
def append_paged_kv_cache_kernel(
    p_k_app,
    p_v_app,
    p_batch_indices,
    p_positions,
    p_k_cache,
    p_v_cache,
    p_kv_indices,
    p_kv_indptr,
    page_size,
    num_heads,
    head_dim,
    batch_size,
    num_indices,
    num_pages,
    s_ka_n,
    s_ka_h,
    s_va_n,
    s_va_h,
    s_kc_p,
    s_kc_s,
    s_kc_h,
    s_vc_p,
    s_vc_s,
    s_vc_h,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program per (appended row, block of heads): copy K and V row ``[BLOCK_H, head_dim]``
    into slot ``pos % page_size`` of page ``kv_indices[kv_indptr[b] + pos // page_size]``.
    The cache strides (page, slot, head) cover NHD, HND and the (k, v) tuple alike.

    A row whose request ``b`` is outside ``[0, batch_size)``, whose position is negative or past
    its request's pages (``kv_indptr[b+1]``), or whose page id is outside ``[0, num_pages)`` is
    not written: no index value makes this kernel touch memory outside its tensors or another
    request's pages (a few scalar compares per row)."""
    i = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1)
    b = tl.load(p_batch_indices + i).to(tl.int64)
    pos = tl.load(p_positions + i).to(tl.int64)
    ok = (b >= 0) & (b < batch_size) & (pos >= 0)
    start = tl.load(p_kv_indptr + b, mask=ok, other=0).to(tl.int64)
    end = tl.load(p_kv_indptr + b + 1, mask=ok, other=0).to(tl.int64)
    page_iter = start + pos // page_size
    ok = ok & (start >= 0) & (page_iter < end) & (page_iter < num_indices)
    page = tl.load(p_kv_indices + page_iter, mask=ok, other=-1).to(tl.int64)
    if (page >= 0) & (page < num_pages):
        slot = pos % page_size
        o_h = (hb * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
        o_d = tl.arange(0, BLOCK_D).to(tl.int64)
        m_hd = (o_h < num_heads)[:, None] & (o_d < head_dim)[None, :]

        p_src = p_k_app + i * s_ka_n + o_h[:, None] * s_ka_h + o_d[None, :]
        b_k = tl.load(p_src, mask=m_hd)
        p_dst = p_k_cache + page * s_kc_p + slot * s_kc_s + o_h[:, None] * s_kc_h + o_d[None, :]
        tl.store(p_dst, b_k.to(p_k_cache.dtype.element_ty), mask=m_hd)

        p_src = p_v_app + i * s_va_n + o_h[:, None] * s_va_h + o_d[None, :]
        b_v = tl.load(p_src, mask=m_hd)
        p_dst = p_v_cache + page * s_vc_p + slot * s_vc_s + o_h[:, None] * s_vc_h + o_d[None, :]
        tl.store(p_dst, b_v.to(p_v_cache.dtype.element_ty), mask=m_hd)


@triton.jit
def append_paged_mla_kv_cache_kernel(
    p_ckv_app,
    p_kpe_app,
    p_batch_indices,
    p_positions,
    p_ckv_cache,
    p_kpe_cache,
    p_kv_indices,
    p_kv_indptr,
    page_size,
    batch_size,
    num_indices,
    num_pages,
    s_ca_n,
    s_pa_n,
    s_cc_p,
    s_cc_s,
    s_pc_p,
    s_pc_s,
    D_CKV: tl.constexpr,
    D_KPE: tl.constexpr,
):
    """One program per appended row: copy its ckv ``[D_CKV]`` and kpe ``[D_KPE]`` into slot
    ``pos % page_size`` of page ``kv_indices[kv_indptr[b] + pos // page_size]`` of the MLA caches
    (page and slot strides free). A row with an out-of-range request, position or page id is not
    written, as in ``append_paged_kv_cache_kernel``."""
    i = tl.program_id(0).to(tl.int64)
    b = tl.load(p_batch_indices + i).to(tl.int64)
    pos = tl.load(p_positions + i).to(tl.int64)
    ok = (b >= 0) & (b < batch_size) & (pos >= 0)
    start = tl.load(p_kv_indptr + b, mask=ok, other=0).to(tl.int64)
    end = tl.load(p_kv_indptr + b + 1, mask=ok, other=0).to(tl.int64)
    page_iter = start + pos // page_size
    ok = ok & (start >= 0) & (page_iter < end) & (page_iter < num_indices)
    page = tl.load(p_kv_indices + page_iter, mask=ok, other=-1).to(tl.int64)
    if (page >= 0) & (page < num_pages):
        slot = pos % page_size
        o_c = tl.arange(0, D_CKV)
        b_c = tl.load(p_ckv_app + i * s_ca_n + o_c)
        tl.store(p_ckv_cache + page * s_cc_p + slot * s_cc_s + o_c, b_c.to(p_ckv_cache.dtype.element_ty))
        o_p = tl.arange(0, D_KPE)
        b_p = tl.load(p_kpe_app + i * s_pa_n + o_p)
        tl.store(p_kpe_cache + page * s_pc_p + slot * s_pc_s + o_p, b_p.to(p_kpe_cache.dtype.element_ty))


@triton.jit(do_not_specialize=["nnz"])
def batch_indices_positions_kernel(
    p_append_indptr,
    p_seq_lens,
    p_batch_indices,
    p_positions,
    nnz,
    BLOCK: tl.constexpr,
):
    """One program per request b: rows ``append_indptr[b] .. append_indptr[b+1]`` get batch index b
    and position ``seq_lens[b] - append_len + i``. Rows outside ``[0, nnz)`` (an indptr that runs
    past the outputs) are not written."""
    b = tl.program_id(0)
    start = tl.load(p_append_indptr + b).to(tl.int64)
    end = tl.load(p_append_indptr + b + 1).to(tl.int64)
    seq_len = tl.load(p_seq_lens + b).to(tl.int64)
    first = seq_len - (end - start)
    for off in range(0, end - start, BLOCK):
        o_i = off + tl.arange(0, BLOCK).to(tl.int64)
        o_row = start + o_i
        m_i = (o_i < end - start) & (o_row >= 0) & (o_row < nnz)
        tl.store(p_batch_indices + o_row, tl.zeros([BLOCK], tl.int32) + b, mask=m_i)
        tl.store(p_positions + o_row, (first + o_i).to(tl.int32), mask=m_i)


# ---- configuration table shared by the launchers (flashinfer_triton/page.py) and aot_configs() ----

APPEND_BLOCK_DS = (16, 32, 64, 128, 256, 512)
APPEND_TILE = 1024  # elements per program: BLOCK_H * BLOCK_D
APPEND_NUM_WARPS = 4
# (append element type, cache element type) pairs, as Triton pointer types. Same-type pairs are
# the bitwise copies; the others convert.
APPEND_TYPE_PAIRS = (
    ("*u8", "*u8"),
    ("*i16", "*i16"),
    ("*i32", "*i32"),
    ("*fp16", "*fp8e4nv"),
    ("*bf16", "*fp8e4nv"),
)
MLA_D_CKV, MLA_D_KPE = 512, 64  # DeepSeek's (FlashInfer's MLA append supports only these)
MLA_APPEND_NUM_WARPS = 2
POSITIONS_BLOCK = 128
INDEX_TYPES = ("*i32", "*i64")


def append_blocks(head_dim: int):
    """(BLOCK_H, BLOCK_D) for a head dimension; None when head_dim is too large."""
    block_d = max(16, 1 << (max(int(head_dim), 1) - 1).bit_length())
    if block_d not in APPEND_BLOCK_DS:
        return None
    return max(1, APPEND_TILE // block_d), block_d


def aot_configs():
    configs = []
    for src, dst in APPEND_TYPE_PAIRS:
        for block_d in APPEND_BLOCK_DS:
            block_h = max(1, APPEND_TILE // block_d)
            sig = {
                "p_k_app": src,
                "p_v_app": src,
                "p_batch_indices": "*i32",
                "p_positions": "*i32",
                "p_k_cache": dst,
                "p_v_cache": dst,
                "p_kv_indices": "*i32",
                "p_kv_indptr": "*i32",
            }
            for name in ("page_size", "num_heads", "head_dim", "batch_size", "num_indices", "num_pages",
                         "s_ka_n", "s_ka_h", "s_va_n", "s_va_h",
                         "s_kc_p", "s_kc_s", "s_kc_h", "s_vc_p", "s_vc_s", "s_vc_h"):
                sig[name] = "i32"
            sig["BLOCK_H"] = "constexpr"
            sig["BLOCK_D"] = "constexpr"
            configs.append(AotConfig(
                append_paged_kv_cache_kernel, sig, {"BLOCK_H": block_h, "BLOCK_D": block_d},
                num_warps=APPEND_NUM_WARPS,
                name=f"append_paged_kv_cache_{src[1:]}_{dst[1:]}_d{block_d}",
            ))
    for src, dst in APPEND_TYPE_PAIRS:
        sig = {"p_ckv_app": src, "p_kpe_app": src, "p_batch_indices": "*i32", "p_positions": "*i32",
               "p_ckv_cache": dst, "p_kpe_cache": dst, "p_kv_indices": "*i32", "p_kv_indptr": "*i32"}
        for name in ("page_size", "batch_size", "num_indices", "num_pages", "s_ca_n", "s_pa_n", "s_cc_p", "s_cc_s",
                     "s_pc_p", "s_pc_s"):
            sig[name] = "i32"
        sig.update(D_CKV="constexpr", D_KPE="constexpr")
        configs.append(AotConfig(
            append_paged_mla_kv_cache_kernel, sig, {"D_CKV": MLA_D_CKV, "D_KPE": MLA_D_KPE},
            num_warps=MLA_APPEND_NUM_WARPS, name=f"append_paged_mla_kv_cache_{src[1:]}_{dst[1:]}",
        ))
    for t_indptr in INDEX_TYPES:
        for t_seq in INDEX_TYPES:
            sig = {"p_append_indptr": t_indptr, "p_seq_lens": t_seq, "p_batch_indices": "*i32",
                   "p_positions": "*i32", "nnz": "i32", "BLOCK": "constexpr"}
            configs.append(AotConfig(
                batch_indices_positions_kernel, sig, {"BLOCK": POSITIONS_BLOCK}, num_warps=4,
                name=f"batch_indices_positions_{t_indptr[1:]}_{t_seq[1:]}",
            ))
    return configs
