"""Launch configuration: one function of (problem, batch shape, device), tables per device family.

``select_config`` is the only place a block shape, warp count, pipeline depth or split threshold
is chosen. Each ``DeviceTable`` names the committed sweep its numbers come from
(``benchmarks/results/tune/``) or says that they are architecture defaults not yet measured; the
AOT tier compiles every configuration these tables can produce for every target
(``coverage.py``), and a test fails if a launcher could pick one outside that set.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace
from typing import Dict, Tuple

import torch

from .._utils import next_power_of_2
from .device import DeviceInfo
from .options import AttentionOptions

FP32_BLOCK_N = 16  # KV block for float32 operands (one stage): fits MI300X's 64 KB LDS
# Block-sparse shape choice (select_block_sparse_config), not measured: a tile of fewer rows costs
# as much as 64; another shape than the dense one must save more than 1/8 of the work.
MIN_TILE_COST_ROWS = 64
SPARSE_SHAPE_MARGIN = 0.125


@dataclass(frozen=True)
class BlockShape:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class SplitPolicy:
    """Split-KV thresholds (see ``scheduler.choose_chunk``)."""

    programs_per_cu: int       # chunks sized so the batch makes this many programs per compute unit
    fill_programs_per_cu: int  # split when the unsplit grid has fewer programs than this per compute unit
    min_chunk_tokens: int      # never cut a chunk smaller than this
    skew_factor: int           # split a GPU-filling batch only if its longest request is this many fair shares


@dataclass(frozen=True)
class DeviceTable:
    source: str                            # the committed sweep these numbers come from, or why none
    decode: Dict[int, BlockShape]          # by BLOCK_D; block_m is raised to the GQA group
    prefill: Dict[int, Tuple[Tuple[int, int, BlockShape], ...]]  # by BLOCK_D: (min max_qo_len, min rows, shape)
    decode_split: SplitPolicy
    prefill_split: SplitPolicy
    masked_prefill_max_stages: int         # custom masks / in-kernel RoPE keep more tiles live


_HOPPER_SOURCE = ("decode: benchmarks/results/tune/decode-h200.json (H200, Triton 3.6, 2026-12-01): bn128/w4/s2 led "
                  "the shape sweeps' geometric means over 1x16..1x131072 and skew64 (num_stages 5-7, which give "
                  "the paged loop two or three K/V buffers, won only unsplit short rows and lost the large ones); "
                  "decode_split from the third run: 2 programs per SM, fill 2, chunks of >= 128 keys (split "
                  "short requests down to one block per program: 1x2048 38.5 -> 17.6 us) led its geometric "
                  "mean; prefill D128: benchmarks/results/tune/prefill-h200.json (H200, Triton 3.6, 2026-12-02, "
                  "32 shapes x 1x1024..1x16384, 8x2048, 16x512 causal): 128x128/w8/s3 led 1x16384 (488 TFLOP/s), "
                  "128x64/w8/s3 led 1x1024, 1x4096 (413, was 322 at 128x32/w4) and 8x2048, 128x32/w4/s3 led "
                  "16x512 (213); D64 (same file, 1x4096 and 8x2048): 128x64/w8/s3 tied 64x64/w4/s3 on 1x4096 (321) "
                  "and led 8x2048 (350 vs 323); D256 (same file, 1x4096, 6 shapes in the budget): 128x32/w8/s3 "
                  "422, the table's 128x64/w8/s2 415 (kept)")
_HOPPER = DeviceTable(
    source=_HOPPER_SOURCE,
    decode={64: BlockShape(16, 128, 4, 2), 128: BlockShape(16, 128, 4, 2), 256: BlockShape(16, 64, 4, 2)},
    prefill={
        64: ((1024, 0, BlockShape(128, 64, 8, 3)), (0, 0, BlockShape(64, 64, 4, 3))),
        128: ((8193, 0, BlockShape(128, 128, 8, 3)), (1024, 0, BlockShape(128, 64, 8, 3)),
              (0, 8192, BlockShape(128, 32, 4, 3)), (0, 0, BlockShape(64, 64, 4, 3))),
        256: ((0, 0, BlockShape(128, 64, 8, 2)),),
    },
    decode_split=SplitPolicy(programs_per_cu=2, fill_programs_per_cu=2, min_chunk_tokens=128, skew_factor=4),
    prefill_split=SplitPolicy(programs_per_cu=2, fill_programs_per_cu=1, min_chunk_tokens=256, skew_factor=4),
    masked_prefill_max_stages=2,
)
# AMD CDNA (MI300X, MI355X): 64-lane wavefronts, 64 KB of LDS on the MI300X. Not measured on an AMD
# GPU: shapes whose K/V tiles (and the q tile) fit 64 KB with one pipeline stage, as the AOT tier
# shows for gfx942 with realistic pointer alignment (Hopper's pipelined 128x128 tiles need 128-160 KB).
_CDNA = DeviceTable(
    source="architecture defaults for 64 KB LDS (one stage, K/V tiles <= 32 KB); not measured on an MI300X",
    decode={64: BlockShape(16, 64, 4, 1), 128: BlockShape(16, 64, 4, 1), 256: BlockShape(16, 32, 4, 1)},
    prefill={64: ((0, 0, BlockShape(64, 64, 4, 1)),), 128: ((0, 0, BlockShape(64, 64, 4, 1)),),
             256: ((0, 0, BlockShape(64, 16, 4, 1)),)},
    decode_split=_HOPPER.decode_split,
    prefill_split=_HOPPER.prefill_split,
    masked_prefill_max_stages=1,
)
_DEFAULT = DeviceTable(**{**_HOPPER.__dict__, "source": "architecture defaults (Hopper shapes); not measured"})

TABLES: Dict[str, DeviceTable] = {"h200": _HOPPER, "h100": _HOPPER, "hopper": _HOPPER, "cdna": _CDNA,
                                  "default": _DEFAULT}
# Which AOT targets compile each table's configurations (full covering, spot set).
TABLE_TARGETS: Dict[str, Tuple[str, ...]] = {"h200": ("cuda90", "cuda80"), "h100": ("cuda90", "cuda80"),
                                              "hopper": ("cuda90", "cuda80"), "default": ("cuda90", "cuda80"),
                                              "cdna": ("gfx942", "gfx950")}


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    merge_m: int         # rows the in-kernel split-KV merge covers (a tile's real rows)
    merge_block_c: int   # chunks the in-kernel split-KV merge loads at once
    dot_precision: object  # None for bf16/fp16 operands (the target's default), "ieee" for float32
    decode: bool         # one tile covers a request's query rows

    @property
    def launch_key(self):
        return (self.block_m, self.block_n, self.num_warps, self.num_stages, self.merge_m, self.merge_block_c,
                self.dot_precision)


def table_for(device: DeviceInfo) -> DeviceTable:
    return TABLES.get(device.family, _DEFAULT)


def block_d(head_dim: int) -> int:
    return next_power_of_2(head_dim)


# Rows the in-kernel split merge takes at a time in a prefill tile (it loops over the tile's rows):
# 32 keeps the 128x32 / 4-warp prefill kernel's spills at 160 bytes (ptxas, sm_90a) where a whole
# 128-row tile at once spilled 1.9 KB; not timed on a GPU yet.
MERGE_SLICE_ROWS = 32


def merge_rows(block_m: int, group: int, max_qo_len: int, decode: bool) -> int:
    """Rows the in-kernel split merge takes per step: a decode-shaped tile holds
    ``max_qo_len * group`` of its 16 rows (4 at 32/8 heads): 4 when that fits; otherwise
    ``MERGE_SLICE_ROWS`` (or the whole tile if smaller), the merge looping over the tile."""
    if decode and max(max_qo_len, 1) * group <= 4:
        return 4
    return min(block_m, MERGE_SLICE_ROWS)


def merge_block_c(rows: int) -> int:
    """Chunks the in-kernel merge loads per step: about 8K float32 elements of [chunks, rows, 128]
    partials at once, 16 at most (one memory round trip per step: 3-4 us for up to 16 chunks,
    benchmarks/results/tune/split-probe-h200.json). Two 32-row slices a step: four spill 1.8 KB in
    the 128x32 prefill kernel (ptxas, sm_90a)."""
    return max(1, min(16, 64 // rows))


# GQA groups the attention kernel is compiled for as a constant (other groups pass it at run time).
# A run-time group keeps its row indices live through the KV loop: ptxas for sm_90a, bf16, D128,
# causal ragged prefill: 234 registers at 128x64/w8/s3 and 152 B of spill at 128x32/w4/s3, against
# 220 and 48 B with the group a constant 4 (the kernel before the engine refactor, whose group was a
# constexpr: 204 and 36 B; it was about 10 % faster on 8x2048 and 16x512 on the H200). Not yet timed.
CONSTANT_GROUPS = (1, 2, 4, 8)


def group_constexpr(group: int) -> int:
    """The kernel's ``GROUP_C``: the group itself where it is compiled as a constant, else 0."""
    return group if group in CONSTANT_GROUPS else 0


def is_decode_shape(group: int, max_qo_len: int) -> bool:
    """One 16-row tile holds every query row of each request: the decode block table applies."""
    return max_qo_len * group <= 16


@functools.lru_cache(maxsize=4096)
def select_config(opts: AttentionOptions, device: DeviceInfo, max_qo_len: int, total_rows: int,
                  page_size: int) -> KernelConfig:
    """The kernel configuration for a problem (``opts``), the batch's longest query count and total
    query rows, its page size (paged KV) and the device it runs on."""
    if opts.kv_dtype == torch.float8_e4m3fn and device.backend == "cuda" and device.arch.isdigit() and int(device.arch) < 89:
        raise NotImplementedError(f"kv_data_type=float8_e4m3fn: Triton needs compute capability 8.9 or newer for it "
                                  f"(this device is sm_{device.arch}); use float8_e5m2")
    table = table_for(device)
    group = opts.group
    bd = block_d(max(opts.head_dim, opts.head_dim_vo))
    decode = is_decode_shape(group, max(max_qo_len, 1))
    if decode:
        shape = table.decode[bd]
        block_m = max(shape.block_m, next_power_of_2(group))
    else:
        shape = next(s for min_q, min_rows, s in table.prefill[bd] if max_qo_len >= min_q and total_rows >= min_rows)
        block_m = max(shape.block_m, next_power_of_2(group))
    block_n, warps, stages = shape.block_n, shape.num_warps, shape.num_stages
    if not decode and (opts.custom_mask or opts.pos_enc == 1):
        stages = min(stages, table.masked_prefill_max_stages)
    precision = None
    if opts.q_dtype == torch.float32:
        # float32 operands (an extension over FlashInfer, for exact references) take twice the
        # shared memory of bf16: one small shape, one stage (it fits MI300X's 64 KB LDS).
        if group > 64:
            raise NotImplementedError(f"q_data_type=float32 with {group} query heads per KV head: float32 supports "
                                      f"GQA groups up to 64")
        block_m = 16 if decode else 64
        block_n, warps, stages, precision = FP32_BLOCK_N, 4, 1, "ieee"
    rows = merge_rows(block_m, group, max_qo_len, decode)
    return KernelConfig(block_m, block_n, warps, stages, rows, merge_block_c(rows), precision, decode)


def split_policy(device: DeviceInfo, decode: bool) -> SplitPolicy:
    table = table_for(device)
    return table.decode_split if decode else table.prefill_split


@contextlib.contextmanager
def table_override(family: str, **fields):
    """Run with some fields of one device family's table replaced (the tuners' hook: they measure
    candidate entries through the real plan/run path). ``fields`` are ``DeviceTable`` fields."""
    previous = TABLES.get(family, _DEFAULT)
    TABLES[family] = replace(previous, source="tuning override", **fields)
    select_config.cache_clear()
    try:
        yield TABLES[family]
    finally:
        TABLES[family] = previous
        select_config.cache_clear()


def select_block_sparse_config(opts: AttentionOptions, device: DeviceInfo, row_lens, dense_qo_len: int,
                               page_size: int) -> KernelConfig:
    """The configuration of a block-sparse work list, whose requests are row blocks: few query rows
    (``row_lens``, an int array of each request's query rows) over a long, gathered key list.
    Candidates are what ``select_config`` gives the same problem read as a dense prefill of
    ``dense_qo_len`` rows, as a batch of short requests, and as a small batch of them (each reading
    with at least the batch's longest row block, so the configuration is valid for it). Cost: the
    tiles the requests cut into, each counted as its ``BLOCK_M`` rows but at least
    ``MIN_TILE_COST_ROWS`` (a padded row is wasted matrix work; a shorter tile is bound by its K/V
    loads, not its products). A later reading replaces the dense one only when it saves more than
    ``SPARSE_SHAPE_MARGIN`` of that cost (the dense shapes are the larger, more efficient tiles).
    Default, not yet measured (no sweep of block-sparse shapes is committed)."""
    max_q = max(int(row_lens.max(initial=0)), 1)
    total = max(int(row_lens.sum()), 1)
    best, best_cost = None, None
    dense = max(dense_qo_len, max_q)
    for qo_len, rows in ((dense, dense), (max_q, total), (max_q, 1)):
        cfg = select_config(opts, device, qo_len, rows, page_size)
        tiles = int((-(-row_lens // (cfg.block_m // opts.group))).sum())
        cost = tiles * max(cfg.block_m, MIN_TILE_COST_ROWS)
        if best is None or cost < best_cost * (1 - SPARSE_SHAPE_MARGIN):
            best, best_cost = cfg, cost
    return best


# ---- MLA (``kernels/mla.py``): one block shape per device family, its own split thresholds ----

@dataclass(frozen=True)
class MLATable:
    source: str               # the committed sweep these numbers come from, or why none
    shape: BlockShape         # bfloat16/float16 q (a float8 cache is converted as it loads)
    fp32_shape: BlockShape    # float32 q and cache (an extension, for exact references)
    split: SplitPolicy


# A tile is 64 query rows (heads, then tokens) x 512 output columns of float32: 8 warps hold it in
# registers. Hopper: benchmarks/results/tune/mla-h200.json (H200, Triton 3.6, 2026-12-01). First and
# second runs (in-kernel merge): BLOCK_N 64 with 2 stages led the shape stage (geometric mean over 7
# DeepSeek shapes 588 us; the previous 64 x 32 / 2 stages 680; pipeliner depths 5 and 7 706-711;
# 16 warps 1138; 4 warps 1537). Third run, with the merge kernel: chunks of at least 128 keys led the
# split stage (342 us; 512 keys 370, 2048 keys 527; 2 programs per SM 381: they do not fit one SM).
_MLA_HOPPER = MLATable(
    source="benchmarks/results/tune/mla-h200.json (H200, Triton 3.6, 2026-12-01)",
    shape=BlockShape(64, 64, 8, 2),
    fp32_shape=BlockShape(16, 16, 4, 1),
    split=SplitPolicy(programs_per_cu=1, fill_programs_per_cu=1, min_chunk_tokens=128, skew_factor=4),
)
# MI300X: 64 KB of LDS; the 64 x 32 / 2-stage tile fits it (AOT tier), the Hopper-tuned 64 x 64 may not.
# Not measured on an MI300X.
_MLA_CDNA = MLATable(
    source="architecture default: the 64 x 32 tile, which fits 64 KB LDS in the AOT tier; not measured",
    shape=BlockShape(64, 32, 8, 2),
    fp32_shape=BlockShape(16, 16, 4, 1),
    split=SplitPolicy(programs_per_cu=1, fill_programs_per_cu=1, min_chunk_tokens=128, skew_factor=4),
)
MLA_TABLES: Dict[str, MLATable] = {"h200": _MLA_HOPPER, "h100": _MLA_HOPPER, "hopper": _MLA_HOPPER,
                                   "cdna": _MLA_CDNA, "default": _MLA_HOPPER}


def mla_table_for(device: DeviceInfo) -> MLATable:
    return MLA_TABLES.get(device.family, MLA_TABLES["default"])


@functools.lru_cache(maxsize=256)
def select_mla_config(q_dtype: torch.dtype, kv_dtype: torch.dtype, device: DeviceInfo) -> KernelConfig:
    """The MLA kernel's configuration for a (q, kv) dtype pair on a device: the shape does not
    depend on the batch (every tile is BLOCK_M rows of heads and tokens, decode or not)."""
    if kv_dtype == torch.float8_e4m3fn and device.backend == "cuda" and device.arch.isdigit() and int(device.arch) < 89:
        raise NotImplementedError(f"kv_data_type=float8_e4m3fn: Triton needs compute capability 8.9 or newer for it "
                                  f"(this device is sm_{device.arch})")
    table = mla_table_for(device)
    fp32 = q_dtype == torch.float32
    shape = table.fp32_shape if fp32 else table.shape
    return KernelConfig(shape.block_m, shape.block_n, shape.num_warps, shape.num_stages, shape.block_m,
                        merge_block_c(shape.block_m), "ieee" if fp32 else None, False)


@contextlib.contextmanager
def mla_table_override(family: str, **fields):
    """Run with some fields of one device family's MLA table replaced (``tune_mla.py``'s hook, as
    ``table_override`` is the attention tuners'). ``fields`` are ``MLATable`` fields."""
    previous = MLA_TABLES.get(family, MLA_TABLES["default"])
    MLA_TABLES[family] = replace(previous, source="tuning override", **fields)
    select_mla_config.cache_clear()
    try:
        yield MLA_TABLES[family]
    finally:
        MLA_TABLES[family] = previous
        select_mla_config.cache_clear()
