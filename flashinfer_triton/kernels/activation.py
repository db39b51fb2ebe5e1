"""Gated activations: ``out = act(x[..., :d]) * x[..., d:]`` for SiLU, GELU (erf) and GELU (tanh).

Grid ``(row blocks, column blocks)``; a program handles ``[ROWS, BLOCK]`` outputs, reading the
gate and up halves of the same rows. Math is float32, rounded once at the store (as FlashInfer).
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import AotConfig, ptr

ACT_SILU = 0
ACT_GELU = 1
ACT_GELU_TANH = 2

# BLOCK (next power of two >= d, at least 128, at most 2048) -> (ROWS, num_warps)
ACT_TABLE = {
    128: (16, 4),
    256: (8, 4),
    512: (4, 4),
    1024: (2, 4),
    2048: (1, 4),
}


def act_config(d: int):
    """(BLOCK, ROWS, num_warps) for a hidden size ``d``; every result is in aot_configs()."""
    for block, (rows, warps) in ACT_TABLE.items():
        if d <= block:
            return block, rows, warps
    block = max(ACT_TABLE)
    rows, warps = ACT_TABLE[block]
    return block, rows, warps


@triton.jit
def act_and_mul_kernel(
    p_x, p_out, n_rows, d, s_x, s_o,
    ACT: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    o_r = pid_r.to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    o_c = pid_c * BLOCK + tl.arange(0, BLOCK)
    m = (o_r < n_rows)[:, None] & (o_c < d)[None, :]
    p_g = p_x + o_r[:, None] * s_x + o_c[None, :]
    b_g = tl.load(p_g, mask=m, other=0.0).to(tl.float32)
    b_u = tl.load(p_g + d, mask=m, other=0.0).to(tl.float32)
    if ACT == 0:
        b_a = b_g / (1.0 + tl.exp(-b_g))
    elif ACT == 1:
        b_a = 0.5 * b_g * (1.0 + tl.math.erf(b_g * 0.7071067811865476))
    else:
        # tanh(z) = sign(z) * (1 - e) / (1 + e), e = exp(-2|z|): no overflow, absolute error
        # ~1e-7 near 0, which is what matters inside (1 + tanh).
        b_z = 0.7978845608028654 * (b_g + 0.044715 * b_g * b_g * b_g)
        b_e = tl.exp(-2.0 * tl.abs(b_z))
        b_t = (1.0 - b_e) / (1.0 + b_e)
        b_t = tl.where(b_z < 0, -b_t, b_t)
        b_a = 0.5 * b_g * (1.0 + b_t)
    b_y = b_a * b_u
    tl.store(p_out + o_r[:, None] * s_o + o_c[None, :], b_y.to(p_out.dtype.element_ty), mask=m)


def aot_configs():
    import torch

    configs = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        p = ptr(dtype)
        tag = str(dtype).replace("torch.", "")
        for act, act_name in ((ACT_SILU, "silu"), (ACT_GELU, "gelu"), (ACT_GELU_TANH, "gelu_tanh")):
            for block, (rows, warps) in ACT_TABLE.items():
                sig = {"p_x": p, "p_out": p, "n_rows": "i32", "d": "i32", "s_x": "i32", "s_o": "i32",
                       "ACT": "constexpr", "BLOCK": "constexpr", "ROWS": "constexpr"}
                cex = {"ACT": act, "BLOCK": block, "ROWS": rows}
                configs.append(AotConfig(act_and_mul_kernel, sig, cex, num_warps=warps,
                                         name=f"act_{act_name}_and_mul_{tag}_B{block}_R{rows}"))
    return configs
