"""RMSNorm (plain and Gemma-style, optionally fused with a residual add) and LayerNorm kernels.

One program normalizes ``ROWS`` rows with the whole hidden dimension in one register block
(``SINGLE``), or, for hidden sizes above the largest block, one row in a loop over chunks.
Rows are addressed as ``(row // n_inner) * stride_outer + (row % n_inner) * stride_inner`` so
2-D ``[B, D]`` and strided 3-D ``[B, H, D]`` inputs need no copy. All math is float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import AotConfig, ptr

# BLOCK_D -> (ROWS, num_warps). The launcher picks the smallest BLOCK_D >= hidden size; above
# the largest single block it uses LOOP_CONFIG (one row per program, chunks of LOOP_BLOCK).
NORM_TABLE = {
    64: (32, 4),
    128: (16, 4),
    256: (8, 4),
    512: (4, 4),
    1024: (2, 4),
    2048: (1, 4),
    4096: (1, 8),
    8192: (1, 16),
    16384: (1, 16),
}
LOOP_BLOCK = 4096
LOOP_WARPS = 8


def norm_config(hidden_size: int):
    """(BLOCK_D, ROWS, SINGLE, num_warps) for a hidden size; every result is in ``aot_configs()``."""
    for block, (rows, warps) in NORM_TABLE.items():
        if hidden_size <= block:
            return block, rows, True, warps
    return LOOP_BLOCK, 1, False, LOOP_WARPS


@triton.jit
def _row_offsets(o_r, n_inner, stride_outer, stride_inner):
    return (o_r // n_inner) * stride_outer + (o_r % n_inner) * stride_inner


@triton.jit
def rmsnorm_kernel(
    p_x, p_res, p_w, p_out,
    n_rows, n_inner, D,
    sx_o, sx_i, sr_o, sr_i, so_o, so_i,
    eps, w_offset,
    FUSED_ADD: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, SINGLE: tl.constexpr,
):
    """out = x * rsqrt(mean(x^2) + eps) * (w + w_offset), x = input (+ residual if FUSED_ADD, in
    which case residual <- x in its dtype and out is written over input)."""
    eps = tl.cast(eps, tl.float32)
    w_offset = tl.cast(w_offset, tl.float32)
    pid = tl.program_id(0)
    o_r = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    m_r = o_r < n_rows
    o_x = _row_offsets(o_r, n_inner, sx_o, sx_i)
    o_o = _row_offsets(o_r, n_inner, so_o, so_i)
    if FUSED_ADD:
        o_res = _row_offsets(o_r, n_inner, sr_o, sr_i)
    o_d = tl.arange(0, BLOCK_D)
    if SINGLE:
        m_d = o_d < D
        m = m_r[:, None] & m_d[None, :]
        b_x = tl.load(p_x + o_x[:, None] + o_d[None, :], mask=m, other=0.0).to(tl.float32)
        if FUSED_ADD:
            p_r = p_res + o_res[:, None] + o_d[None, :]
            b_x += tl.load(p_r, mask=m, other=0.0).to(tl.float32)
            tl.store(p_r, b_x.to(p_res.dtype.element_ty), mask=m)
        b_rrms = tl.rsqrt(tl.sum(b_x * b_x, axis=1) / D + eps)
        b_w = tl.load(p_w + o_d, mask=m_d, other=0.0).to(tl.float32) + w_offset
        b_y = b_x * b_rrms[:, None] * b_w[None, :]
        tl.store(p_out + o_o[:, None] + o_d[None, :], b_y.to(p_out.dtype.element_ty), mask=m)
    else:
        # Two passes over the row: the sum of squares, then the output. Input and residual are
        # only written in the second pass, after their chunk was read, so re-reading is safe.
        b_ss = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            o_c = d0 + o_d
            m = m_r[:, None] & (o_c < D)[None, :]
            b_x = tl.load(p_x + o_x[:, None] + o_c[None, :], mask=m, other=0.0).to(tl.float32)
            if FUSED_ADD:
                b_x += tl.load(p_res + o_res[:, None] + o_c[None, :], mask=m, other=0.0).to(tl.float32)
            b_ss += b_x * b_x
        b_rrms = tl.rsqrt(tl.sum(b_ss, axis=1) / D + eps)
        for d0 in range(0, D, BLOCK_D):
            o_c = d0 + o_d
            m_c = o_c < D
            m = m_r[:, None] & m_c[None, :]
            b_x = tl.load(p_x + o_x[:, None] + o_c[None, :], mask=m, other=0.0).to(tl.float32)
            if FUSED_ADD:
                p_r = p_res + o_res[:, None] + o_c[None, :]
                b_x += tl.load(p_r, mask=m, other=0.0).to(tl.float32)
                tl.store(p_r, b_x.to(p_res.dtype.element_ty), mask=m)
            b_w = tl.load(p_w + o_c, mask=m_c, other=0.0).to(tl.float32) + w_offset
            b_y = b_x * b_rrms[:, None] * b_w[None, :]
            tl.store(p_out + o_o[:, None] + o_c[None, :], b_y.to(p_out.dtype.element_ty), mask=m)


@triton.jit
def layernorm_kernel(
    p_x, p_gamma, p_beta, p_out,
    n_rows, n_inner, D,
    sx_o, sx_i, so_o, so_i,
    eps,
    BLOCK_D: tl.constexpr, ROWS: tl.constexpr, SINGLE: tl.constexpr,
):
    """out = (x - mean) * rsqrt(var + eps) * gamma + beta, biased variance, float32 math."""
    eps = tl.cast(eps, tl.float32)
    pid = tl.program_id(0)
    o_r = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    m_r = o_r < n_rows
    o_x = _row_offsets(o_r, n_inner, sx_o, sx_i)
    o_o = _row_offsets(o_r, n_inner, so_o, so_i)
    o_d = tl.arange(0, BLOCK_D)
    if SINGLE:
        m_d = o_d < D
        m = m_r[:, None] & m_d[None, :]
        b_x = tl.load(p_x + o_x[:, None] + o_d[None, :], mask=m, other=0.0).to(tl.float32)
        b_mean = tl.sum(b_x, axis=1) / D
        b_xc = tl.where(m, b_x - b_mean[:, None], 0.0)
        b_rstd = tl.rsqrt(tl.sum(b_xc * b_xc, axis=1) / D + eps)
        b_g = tl.load(p_gamma + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_b = tl.load(p_beta + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_y = b_xc * b_rstd[:, None] * b_g[None, :] + b_b[None, :]
        tl.store(p_out + o_o[:, None] + o_d[None, :], b_y.to(p_out.dtype.element_ty), mask=m)
    else:
        b_acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            o_c = d0 + o_d
            m = m_r[:, None] & (o_c < D)[None, :]
            b_acc += tl.load(p_x + o_x[:, None] + o_c[None, :], mask=m, other=0.0).to(tl.float32)
        b_mean = tl.sum(b_acc, axis=1) / D
        b_acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            o_c = d0 + o_d
            m = m_r[:, None] & (o_c < D)[None, :]
            b_x = tl.load(p_x + o_x[:, None] + o_c[None, :], mask=m, other=0.0).to(tl.float32)
            b_xc = tl.where(m, b_x - b_mean[:, None], 0.0)
            b_acc += b_xc * b_xc
        b_rstd = tl.rsqrt(tl.sum(b_acc, axis=1) / D + eps)
        for d0 in range(0, D, BLOCK_D):
            o_c = d0 + o_d
            m_c = o_c < D
            m = m_r[:, None] & m_c[None, :]
            b_x = tl.load(p_x + o_x[:, None] + o_c[None, :], mask=m, other=0.0).to(tl.float32)
            b_g = tl.load(p_gamma + o_c, mask=m_c, other=0.0).to(tl.float32)
            b_b = tl.load(p_beta + o_c, mask=m_c, other=0.0).to(tl.float32)
            b_y = (b_x - b_mean[:, None]) * b_rstd[:, None] * b_g[None, :] + b_b[None, :]
            tl.store(p_out + o_o[:, None] + o_c[None, :], b_y.to(p_out.dtype.element_ty), mask=m)


def _all_table_entries():
    entries = [(block, rows, True, warps) for block, (rows, warps) in NORM_TABLE.items()]
    entries.append((LOOP_BLOCK, 1, False, LOOP_WARPS))
    return entries


def aot_configs():
    import torch

    configs = []
    ints = ["n_rows", "n_inner", "D"]
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        p = ptr(dtype)
        tag = str(dtype).replace("torch.", "")
        for block, rows, single, warps in _all_table_entries():
            for fused in (False, True):
                sig = {"p_x": p, "p_res": p, "p_w": p, "p_out": p}
                sig.update({k: "i32" for k in ints + ["sx_o", "sx_i", "sr_o", "sr_i", "so_o", "so_i"]})
                sig.update({"eps": "fp32", "w_offset": "fp32"})
                cex = {"FUSED_ADD": fused, "BLOCK_D": block, "ROWS": rows, "SINGLE": single}
                sig.update({k: "constexpr" for k in cex})
                name = f"rmsnorm_{'fused_' if fused else ''}{tag}_B{block}_R{rows}_{'single' if single else 'loop'}"
                configs.append(AotConfig(rmsnorm_kernel, sig, cex, num_warps=warps, name=name))
            sig = {"p_x": p, "p_gamma": "*fp32", "p_beta": "*fp32", "p_out": p}
            sig.update({k: "i32" for k in ints + ["sx_o", "sx_i", "so_o", "so_i"]})
            sig["eps"] = "fp32"
            cex = {"BLOCK_D": block, "ROWS": rows, "SINGLE": single}
            sig.update({k: "constexpr" for k in cex})
            name = f"layernorm_{tag}_B{block}_R{rows}_{'single' if single else 'loop'}"
            configs.append(AotConfig(layernorm_kernel, sig, cex, num_warps=warps, name=name))
    return configs
