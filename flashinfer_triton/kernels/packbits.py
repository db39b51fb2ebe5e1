"""Bit packing: a boolean array (viewed as uint8, nonzero = 1) into uint8 bytes, 8 elements a byte.

Big bit order puts element 8j in bit 7 of byte j (``numpy.packbits`` default, FlashInfer's default);
little puts it in bit 0 (what FlashInfer's attention kernels read for packed custom masks).
Missing trailing elements of the last byte count as 0.
"""

import triton
import triton.language as tl

from . import AotConfig


@triton.jit
def _pack_bytes(p_x, start, length, o_byte, LITTLE: tl.constexpr):
    """Bytes ``o_byte`` ([BLOCK]) of the segment x[start : start + length], as uint8."""
    o_bit = tl.arange(0, 8)
    o_elem = o_byte[:, None] * 8 + o_bit[None, :]
    b_x = tl.load(p_x + start + o_elem, mask=o_elem < length, other=0)
    b_bit = (b_x != 0).to(tl.int32)
    if LITTLE:
        shift = o_bit
    else:
        shift = 7 - o_bit
    return tl.sum(b_bit << shift[None, :], axis=1).to(tl.uint8)


@triton.jit(do_not_specialize=["n"])
def packbits_kernel(p_x, p_y, n, BLOCK: tl.constexpr, LITTLE: tl.constexpr):
    """One program per BLOCK output bytes of ``y [ceil(n / 8)]``."""
    o_byte = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    b_y = _pack_bytes(p_x, 0, n, o_byte, LITTLE)
    tl.store(p_y + o_byte, b_y, mask=o_byte * 8 < n)


@triton.jit
def segment_packbits_kernel(p_x, p_indptr, p_indptr_new, p_y, BLOCK: tl.constexpr, LITTLE: tl.constexpr):
    """Grid (segment, block of its output bytes): segment s packs x[indptr[s] : indptr[s+1]] into
    y[indptr_new[s] : indptr_new[s+1]]."""
    s = tl.program_id(0)
    start = tl.load(p_indptr + s).to(tl.int64)
    length = tl.load(p_indptr + s + 1).to(tl.int64) - start
    out_start = tl.load(p_indptr_new + s).to(tl.int64)
    o_byte = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    b_y = _pack_bytes(p_x, start, length, o_byte, LITTLE)
    tl.store(p_y + out_start + o_byte, b_y, mask=o_byte * 8 < length)


# ---- configuration table shared by flashinfer_triton/quantization.py and aot_configs() ----
BLOCK_BYTES = 256
NUM_WARPS = 4


def aot_configs():
    configs = []
    for little in (False, True):
        order = "little" if little else "big"
        configs.append(AotConfig(
            packbits_kernel,
            {"p_x": "*u8", "p_y": "*u8", "n": "i32", "BLOCK": "constexpr", "LITTLE": "constexpr"},
            {"BLOCK": BLOCK_BYTES, "LITTLE": little}, num_warps=NUM_WARPS, name=f"packbits_{order}",
        ))
        configs.append(AotConfig(
            segment_packbits_kernel,
            {"p_x": "*u8", "p_indptr": "*i32", "p_indptr_new": "*i32", "p_y": "*u8",
             "BLOCK": "constexpr", "LITTLE": "constexpr"},
            {"BLOCK": BLOCK_BYTES, "LITTLE": little}, num_warps=NUM_WARPS, name=f"segment_packbits_{order}",
        ))
    return configs
