"""Elementwise @triton.jit math of the attention kernels: a portable tanh and Llama RoPE."""

import triton
import triton.language as tl


@triton.jit
def tanh(x):
    # Portable tanh (libdevice is neither in the interpreter nor identical across CUDA and HIP):
    # odd series near 0, where (1 - e) / (1 + e) would cancel, the exp form elsewhere.
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    t = (1.0 - e) / (1.0 + e)
    x2 = x * x
    series = x * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333 + x2 * -0.05396825396825397)))
    return tl.where(ax < 0.125, series, tl.where(x < 0, -t, t))


@triton.jit
def rope_rotate(x, x_swapped, pos, o_d, rope_rcp_scale, rope_log2_rcp_theta, HEAD_DIM: tl.constexpr):
    """Llama RoPE (rotate-half): ``x * cos + rotate_half(x) * sin``; ``x_swapped`` holds x at
    ``(d + D/2) % D``. ``pos`` is float32 [rows]; returns float32 [rows, BLOCK_D]."""
    HALF: tl.constexpr = HEAD_DIM // 2
    i = (o_d % HALF).to(tl.float32)
    freq = rope_rcp_scale * tl.exp2(rope_log2_rcp_theta * (2.0 * i / HEAD_DIM))
    angle = pos[:, None] * freq[None, :]
    sign = tl.where(o_d < HALF, -1.0, 1.0)
    return x.to(tl.float32) * tl.cos(angle) + sign[None, :] * x_swapped.to(tl.float32) * tl.sin(angle)
