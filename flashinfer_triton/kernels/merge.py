"""Merging attention states (v, lse): the output and base-2 log-sum-exp of attention over the union
of KV segments, from the per-segment ones. All math in float32.

LSE is base 2: ``s = log2(sum_j 2^(x_j * log2(e)))`` over scaled logits ``x_j``. Merging weights
state ``i`` by ``2^(s_i - max_k s_k)``. A state with ``s = -inf`` (empty segment) has weight 0 and its
``v`` is never read into the sum (so NaN/garbage there does not leak); all-empty gives ``v = 0``,
``s = -inf``.
"""

import triton
import triton.language as tl

from . import AotConfig


@triton.jit
def merge_state_kernel(
    p_va,
    p_sa,
    p_vb,
    p_sb,
    p_vo,
    p_so,
    p_mask,
    num_heads,
    head_dim,
    s_va_n,
    s_va_h,
    s_sa_n,
    s_sa_h,
    s_vb_n,
    s_vb_h,
    s_sb_n,
    s_sb_h,
    s_vo_n,
    s_vo_h,
    s_so_n,
    s_so_h,
    HAS_MASK: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Grid (seq, head block). Writes (vo, so); with HAS_MASK, rows whose mask byte is 0 are left
    untouched (the in-place form passes vo = va, so = sa)."""
    n = tl.program_id(0).to(tl.int64)
    o_h = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D).to(tl.int64)
    m_h = o_h < num_heads
    if HAS_MASK:
        # A masked-off row loads and stores nothing.
        m_h = m_h & ((tl.zeros([BLOCK_H], tl.int32) + tl.load(p_mask + n).to(tl.int32)) != 0)
    m_hd = m_h[:, None] & (o_d < head_dim)[None, :]

    b_sa = tl.load(p_sa + n * s_sa_n + o_h * s_sa_h, mask=m_h, other=float("-inf")).to(tl.float32)
    b_sb = tl.load(p_sb + n * s_sb_n + o_h * s_sb_h, mask=m_h, other=float("-inf")).to(tl.float32)
    b_m = tl.maximum(b_sa, b_sb)
    b_m = tl.where(b_m == float("-inf"), 0.0, b_m)
    b_wa = tl.exp2(b_sa - b_m)
    b_wb = tl.exp2(b_sb - b_m)
    b_d = b_wa + b_wb

    b_va = tl.load(p_va + n * s_va_n + o_h[:, None] * s_va_h + o_d[None, :], mask=m_hd, other=0.0).to(tl.float32)
    b_vb = tl.load(p_vb + n * s_vb_n + o_h[:, None] * s_vb_h + o_d[None, :], mask=m_hd, other=0.0).to(tl.float32)
    b_acc = tl.where((b_wa > 0)[:, None], b_va * b_wa[:, None], 0.0)
    b_acc += tl.where((b_wb > 0)[:, None], b_vb * b_wb[:, None], 0.0)
    b_nonempty = b_d > 0
    b_o = b_acc / tl.where(b_nonempty, b_d, 1.0)[:, None]
    b_lse = tl.where(b_nonempty, b_m + tl.log2(tl.where(b_nonempty, b_d, 1.0)), float("-inf"))

    tl.store(p_vo + n * s_vo_n + o_h[:, None] * s_vo_h + o_d[None, :], b_o.to(p_vo.dtype.element_ty), mask=m_hd)
    tl.store(p_so + n * s_so_n + o_h * s_so_h, b_lse, mask=m_h)


@triton.jit(do_not_specialize=["num_states"])
def merge_states_kernel(
    p_v,
    p_s,
    p_vo,
    p_so,
    num_states,
    num_heads,
    head_dim,
    s_v_n,
    s_v_k,
    s_v_h,
    s_s_n,
    s_s_k,
    s_s_h,
    s_vo_n,
    s_vo_h,
    s_so_n,
    s_so_h,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Grid (seq, head block); loops over the states with a running max (online softmax)."""
    n = tl.program_id(0).to(tl.int64)
    o_h = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D).to(tl.int64)
    m_h = o_h < num_heads
    m_hd = m_h[:, None] & (o_d < head_dim)[None, :]

    b_m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    b_d = tl.zeros([BLOCK_H], tl.float32)
    b_acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    p_v_n = p_v + n * s_v_n + o_h[:, None] * s_v_h + o_d[None, :]
    p_s_n = p_s + n * s_s_n + o_h * s_s_h
    for _ in range(num_states):
        b_s = tl.load(p_s_n, mask=m_h, other=float("-inf")).to(tl.float32)
        b_m_new = tl.maximum(b_m, b_s)
        b_ref = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        b_alpha = tl.exp2(b_m - b_ref)
        b_w = tl.exp2(b_s - b_ref)
        b_v = tl.load(p_v_n, mask=m_hd, other=0.0).to(tl.float32)
        p_s_n += s_s_k  # pointer steps: 64-bit addresses however many states
        p_v_n += s_v_k
        b_acc = b_acc * b_alpha[:, None] + tl.where((b_w > 0)[:, None], b_v * b_w[:, None], 0.0)
        b_d = b_d * b_alpha + b_w
        b_m = b_m_new

    b_nonempty = b_d > 0
    b_o = b_acc / tl.where(b_nonempty, b_d, 1.0)[:, None]
    b_lse = tl.where(b_nonempty, b_m + tl.log2(tl.where(b_nonempty, b_d, 1.0)), float("-inf"))
    tl.store(p_vo + n * s_vo_n + o_h[:, None] * s_vo_h + o_d[None, :], b_o.to(p_vo.dtype.element_ty), mask=m_hd)
    tl.store(p_so + n * s_so_n + o_h * s_so_h, b_lse, mask=m_h)


# ---- configuration table shared by flashinfer_triton/cascade.py and aot_configs() ----
BLOCK_DS = (16, 32, 64, 128, 256, 512)
TILE = 1024  # BLOCK_H * BLOCK_D elements per program
NUM_WARPS = 4
V_TYPES = ("*fp16", "*bf16", "*fp32")


def blocks(head_dim: int):
    """(BLOCK_H, BLOCK_D) for a head dimension; None when head_dim is too large."""
    block_d = max(16, 1 << (max(int(head_dim), 1) - 1).bit_length())
    if block_d not in BLOCK_DS:
        return None
    return max(1, TILE // block_d), block_d


def aot_configs():
    configs = []
    for vt in V_TYPES:
        for block_d in BLOCK_DS:
            block_h = max(1, TILE // block_d)
            for has_mask in (False, True):
                sig = {"p_va": vt, "p_sa": "*fp32", "p_vb": vt, "p_sb": "*fp32", "p_vo": vt, "p_so": "*fp32",
                       "p_mask": "*u8"}
                for name in ("num_heads", "head_dim", "s_va_n", "s_va_h", "s_sa_n", "s_sa_h", "s_vb_n", "s_vb_h",
                             "s_sb_n", "s_sb_h", "s_vo_n", "s_vo_h", "s_so_n", "s_so_h"):
                    sig[name] = "i32"
                sig.update(HAS_MASK="constexpr", BLOCK_H="constexpr", BLOCK_D="constexpr")
                configs.append(AotConfig(
                    merge_state_kernel, sig, {"HAS_MASK": has_mask, "BLOCK_H": block_h, "BLOCK_D": block_d},
                    num_warps=NUM_WARPS, name=f"merge_state_{vt[1:]}_d{block_d}{'_mask' if has_mask else ''}",
                ))
            sig = {"p_v": vt, "p_s": "*fp32", "p_vo": vt, "p_so": "*fp32"}
            for name in ("num_states", "num_heads", "head_dim", "s_v_n", "s_v_k", "s_v_h", "s_s_n", "s_s_k", "s_s_h",
                         "s_vo_n", "s_vo_h", "s_so_n", "s_so_h"):
                sig[name] = "i32"
            sig.update(BLOCK_H="constexpr", BLOCK_D="constexpr")
            configs.append(AotConfig(
                merge_states_kernel, sig, {"BLOCK_H": block_h, "BLOCK_D": block_d},
                num_warps=NUM_WARPS, name=f"merge_states_{vt[1:]}_d{block_d}",
            ))
    return configs
