"""plan(): turn a batch's lengths into a flat, load-balanced work list for the attention kernel.

A work item is ``(request, q tile start, kv chunk start, kv chunk end, chunk index)``; the kernel's
grid is ``(items, num_kv_heads)``. When the batch has too few programs to fill the GPU, or its
longest request is several times the fair share of the batch's KV work per program slot, requests
longer than that fair share (a multiple of the kernel's BLOCK_N) are cut into chunks, so a batch of
very different lengths (or one long request) becomes equal-sized pieces and no compute unit idles
behind the longest request. A split request's chunks write float32 partials (v, lse) to the
workspace and the last chunk program of each tile merges them (``merge_counter`` per tile and KV
head). A fixed chunk size (``fixed_split_size``) gives results that do not depend on the rest of
the batch. The split thresholds come from the device's table (``config.SplitPolicy``).

All metadata lives in one int32 host array, copied to the device with one asynchronous copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .config import SplitPolicy
from .signature import META_FIELDS

ITEM_FIELDS = META_FIELDS  # every field is per work item (the kernel loads them in one round)
# Each field's row in the scheduler's [fields, items] arrays.
(_REQ, _Q_START, _KV_START, _KV_END, _CHUNK, _QO_BEGIN, _QO_LEN, _KV_BEGIN, _KV_LEN, _PART_BASE, _NUM_CHUNKS,
 _COUNTER) = (META_FIELDS.index(f"item_{name}") for name in (
    "req", "q_start", "kv_start", "kv_end", "chunk", "qo_begin", "qo_len", "kv_begin", "kv_len", "part_base",
    "num_chunks", "counter"))


@dataclass
class WorkPlan:
    num_items: int          # real items
    grid_items: int         # items the grid is sized for (>= num_items; fixed under CUDA graphs)
    num_partial_rows: int   # float32 partial rows (each num_qo_heads x head_dim_vo) the split requests write
    num_counters: int       # merge counters per KV head (one per tile of a split request)
    num_split_requests: int
    chunk_size: int         # KV tokens per chunk; 0 when no request is split
    offsets: Dict[str, Tuple[int, int]]  # field -> (start, length) inside the packed int32 array
    host: np.ndarray        # packed int32 metadata


def _ceil_div(a, b):
    return -(-a // b)


def choose_chunk(total_work: int, max_kv_len: int, num_programs: int, block_n: int, num_kv_heads: int,
                 num_cus: int, policy: SplitPolicy) -> int:
    """KV tokens per chunk (0: no split). Split when the unsplit grid (``num_programs`` programs)
    under-fills the GPU, or when the longest request exceeds ``skew_factor`` fair shares (then it,
    not throughput, sets the time); chunks are the fair share of ``programs_per_cu`` programs per
    compute unit, at least ``min_chunk_tokens`` and a multiple of ``block_n``."""
    if total_work <= 0:
        return 0
    target_items = _ceil_div(policy.programs_per_cu * num_cus, num_kv_heads)
    fair = _ceil_div(total_work, target_items)
    if num_programs < policy.fill_programs_per_cu * num_cus or max_kv_len > policy.skew_factor * fair:
        chunk = max(policy.min_chunk_tokens, _ceil_div(fair, block_n) * block_n)
        return 0 if chunk >= max_kv_len else chunk
    return 0


def max_grid(batch: int, max_tiles: int, num_kv_heads: int, num_cus: int, policy: SplitPolicy,
             causal: bool) -> int:
    """Upper bound on the items of any plan with at most ``max_tiles`` tiles over ``batch``
    requests (CUDA-graph grids are sized with it). A request of ``t`` tiles and ``n`` KV tokens
    makes ``t * ceil(n / chunk) <= t * n / chunk + t`` items and ``chunk >= fair share``, so the
    total is at most ``target + max_tiles`` (``2 * target`` with causal tiles, whose work estimate
    is about half their KV)."""
    target = _ceil_div(policy.programs_per_cu * num_cus, num_kv_heads)
    return max(max_tiles, batch) + (2 * target if causal else target)


def plan_work(
    qo_indptr: np.ndarray,
    kv_len: np.ndarray,
    kv_begin: np.ndarray,
    tile_q: int,
    block_n: int,
    num_kv_heads: int,
    num_cus: int,
    causal: bool,
    policy: SplitPolicy,
    disable_split_kv: bool = False,
    fixed_split_size: Optional[int] = None,
    pad_items: Optional[int] = None,
    qo_begin: Optional[np.ndarray] = None,
) -> WorkPlan:
    """Build the work list. ``qo_indptr`` [B+1], ``kv_len`` [B], ``kv_begin`` [B] (first page or
    token of each request) are int64 numpy arrays; ``fixed_split_size`` is in KV tokens.
    ``pad_items`` sizes the grid for CUDA-graph replay (padding items carry request -1).
    ``qo_begin`` [B]: the q/o row of each request's first query when its rows are not
    ``qo_indptr[:-1]`` (requests of a head-major layout; ``qo_indptr`` then only gives lengths)."""
    batch = kv_len.shape[0]
    qo_len = qo_indptr[1:] - qo_indptr[:-1]
    if qo_begin is None:
        qo_begin = qo_indptr[:-1]
    # Decode-shaped batches (every request one q tile) skip the tile arithmetic: plan() runs every step.
    one_tile = batch > 0 and int(qo_len.min()) >= 1 and int(qo_len.max()) <= tile_q
    tiles = None if one_tile else np.maximum(_ceil_div(qo_len, tile_q), 0)

    chunk = 0
    if fixed_split_size is not None and fixed_split_size > 0:
        chunk = _ceil_div(int(fixed_split_size), block_n) * block_n
    elif not disable_split_kv:
        num_tiles = batch if tiles is None else int(tiles.sum())
        chunk = choose_chunk(_kv_work(qo_len, kv_len, tiles, tile_q, causal), int(kv_len.max(initial=0)),
                             num_tiles * num_kv_heads, block_n, num_kv_heads, num_cus, policy)

    if one_tile and (chunk == 0 or not causal):  # (a causal split plan orders its items: the general path)
        fields, rows, counters, n_split = _one_tile_items(qo_begin, qo_len, kv_begin, kv_len, chunk)
    else:
        tiles = np.ones(batch, dtype=np.int64) if tiles is None else tiles
        fields, rows, counters, n_split = _tiled_items(qo_begin, qo_len, kv_begin, kv_len, tiles, tile_q, chunk,
                                                       causal)
    num_items = fields.shape[1]
    grid_items = num_items
    if pad_items is not None:
        if num_items > pad_items:
            raise ValueError(f"plan: this batch needs {num_items} work items, more than the {pad_items} the CUDA graph "
                             "was sized for; create the wrapper with larger buffers or a larger fixed_split_size")
        grid_items = pad_items
    return _pack(fields, grid_items, rows, counters, n_split, chunk)


def _kv_work(qo_len: np.ndarray, kv_len: np.ndarray, tiles: Optional[np.ndarray], tile_q: int, causal: bool) -> int:
    """KV tokens the batch's tiles read (the split decision's estimate). ``tiles`` None: one tile
    per request, which reads all of its request's KV, causal or not (its last row is the last key)."""
    if tiles is None:
        return int(kv_len.sum())
    if causal:  # a causal tile sees a prefix: about half of a long request's KV on average
        per_tile = np.minimum(kv_len, (kv_len - qo_len) + tile_q * (tiles + 1) // 2).clip(min=0)
    else:
        per_tile = kv_len
    return int(per_tile.dot(tiles))


# Each items builder returns (fields [len(META_FIELDS), items] int64 in META_FIELDS order, partial
# rows, merge counters, split requests). Partials: request b's rows start at part_base[b], chunk c's
# at + c * qo_len[b]; the merge counter of tile t of request b is counter_base[b] + t (counted over
# the split requests before it; an unsplit request's items carry the next one, and no partials).

def _one_tile_items(qo_begin, qo_len, kv_begin, kv_len, chunk: int):
    """Items of a batch whose every request is one q tile: request-major, one per KV chunk. (Row
    writes and array methods: plan() runs every decode step, and numpy's per-call overhead, not the
    arithmetic, is its cost here.)"""
    batch = kv_len.shape[0]
    # Per-request rows in field order; repeated once per chunk below, then the per-item rows are set.
    f = np.empty((len(META_FIELDS), batch), dtype=np.int64)
    f[_REQ] = np.arange(batch)
    f[_Q_START] = 0
    f[_QO_BEGIN] = qo_begin
    f[_QO_LEN] = qo_len
    f[_KV_BEGIN] = kv_begin
    f[_KV_LEN] = kv_len
    n_chunks = np.maximum(kv_len + (chunk - 1), chunk) // chunk if chunk > 0 else None  # at least 1
    ends = None if n_chunks is None else n_chunks.cumsum()
    if ends is None or int(ends[-1]) == batch:  # nothing split: one item per request
        f[_KV_START] = 0
        f[_KV_END] = kv_len
        f[_CHUNK] = 0
        f[_PART_BASE] = -1
        f[_NUM_CHUNKS] = 1
        f[_COUNTER] = 0
        return f, 0, 0, 0
    split = n_chunks > 1
    part_rows = n_chunks * qo_len * split
    part_end = part_rows.cumsum()
    f[_KV_START] = ends - n_chunks  # the request's first item, until the per-item rows replace it
    f[_PART_BASE] = np.where(split, part_end - part_rows, -1)
    f[_NUM_CHUNKS] = n_chunks
    f[_COUNTER] = split.cumsum() - split
    f = f.repeat(n_chunks, axis=1)
    f[_CHUNK] = np.arange(f.shape[1]) - f[_KV_START]
    f[_KV_START] = f[_CHUNK] * chunk
    f[_KV_END] = np.minimum(f[_KV_START] + chunk, f[_KV_LEN])
    n_split = int(np.count_nonzero(split))
    return f, int(part_end[-1]), n_split, n_split


def _tiled_items(qo_begin, qo_len, kv_begin, kv_len, tiles, tile_q: int, chunk: int, causal: bool):
    """Items of any batch: for each request, tiles x chunks (chunk-major inside a request keeps KV
    reuse local); causal plans longest first."""
    batch = kv_len.shape[0]
    n_chunks = np.maximum(_ceil_div(kv_len, chunk), 1) if chunk > 0 else np.ones(batch, dtype=np.int64)
    split = (n_chunks > 1) & (tiles > 0)
    per_req = tiles * n_chunks
    num_items = int(per_req.sum())
    ends = np.cumsum(per_req)
    item_req = np.repeat(np.arange(batch, dtype=np.int64), per_req)
    local = np.arange(num_items, dtype=np.int64) - (ends - per_req)[item_req]
    nch = n_chunks[item_req]
    item_chunk = local % nch
    item_q_start = (local // nch) * tile_q
    item_kv_start = item_chunk * chunk
    item_kv_end = np.minimum(item_kv_start + chunk, kv_len[item_req]) if chunk > 0 else kv_len[item_req]
    part_rows = np.where(split, n_chunks * qo_len, 0)
    part_base = np.where(split, np.cumsum(part_rows) - part_rows, -1)
    split_tiles = np.where(split, tiles, 0)
    counter_base = np.cumsum(split_tiles) - split_tiles
    arrays = {"item_req": item_req, "item_q_start": item_q_start, "item_kv_start": item_kv_start,
              "item_kv_end": item_kv_end, "item_chunk": item_chunk, "item_qo_begin": qo_begin[item_req],
              "item_qo_len": qo_len[item_req], "item_kv_begin": kv_begin[item_req],
              "item_kv_len": kv_len[item_req], "item_part_base": part_base[item_req], "item_num_chunks": nch,
              "item_counter": counter_base[item_req] + item_q_start // tile_q}
    fields = np.stack([arrays[name] for name in META_FIELDS])
    if causal and num_items > 1:
        # Longest-first: a causal tile's work grows with its position; starting the heavy tiles
        # first keeps them off the tail of the launch.
        q_last = np.minimum(item_q_start + tile_q, arrays["item_qo_len"]) + arrays["item_kv_len"] - arrays["item_qo_len"]
        order = np.argsort(-(np.minimum(item_kv_end, q_last) - item_kv_start), kind="stable")
        fields = fields[:, order]
    return fields, int(part_rows.sum()), int(split_tiles.sum()), int(split.sum())


@functools.lru_cache(maxsize=256)
def _layout(grid_items: int) -> Dict[str, Tuple[int, int]]:
    """Field -> (start, length) in the packed array: every field holds one int32 per grid item, at a
    16-byte aligned start (pointer alignment, part of Triton's specialization, never changes)."""
    stride = _ceil_div(max(grid_items, 1), 4) * 4
    return {name: (i * stride, grid_items) for i, name in enumerate(META_FIELDS)}


def _pack(fields: np.ndarray, grid_items: int, rows: int, counters: int, n_split: int, chunk: int) -> WorkPlan:
    num_items = fields.shape[1]
    stride = _ceil_div(max(grid_items, 1), 4) * 4
    host = np.empty((len(META_FIELDS), stride), dtype=np.int32)
    host[:, :num_items] = fields
    if stride > num_items:  # padding items of a CUDA-graph grid (request -1 means "exit"), and the alignment tail
        host[:, num_items:] = 0
        host[_REQ, num_items:grid_items] = -1
    return WorkPlan(num_items, grid_items, rows, counters, n_split, chunk, _layout(grid_items), host.reshape(-1))


class DeviceMetadata:
    """Device copy of a WorkPlan's packed array, with a named view per field. Under CUDA graphs the
    device buffer is allocated once and refilled in place, so captured kernels see new plans."""

    def __init__(self, device: torch.device, fixed: bool):
        self.device = device
        self.fixed = fixed
        self.buffer: Optional[torch.Tensor] = None
        self.pinned: Optional[torch.Tensor] = None
        self.views: Dict[str, torch.Tensor] = {}
        self._layout = None
        self._copied = None
        self._cuda = device.type == "cuda"
        self._staged = (0, None, None, None)  # (n, pinned[:n] as numpy, pinned[:n], buffer[:n]): plans of one size reuse them

    def upload(self, plan: WorkPlan, non_blocking: bool = True) -> Dict[str, torch.Tensor]:
        n = plan.host.shape[0]
        if self.fixed and self._layout is not None and self._layout != plan.offsets:
            raise ValueError("plan: under CUDA graphs a new plan must keep the batch size and buffer sizes "
                             "of the captured one")
        if self._staged[0] != n:
            if self.buffer is None or self.buffer.numel() < n:
                self.buffer = torch.empty(n, dtype=torch.int32, device=self.device)
                self.pinned = torch.empty(n, dtype=torch.int32, pin_memory=self._cuda)
            pinned = self.pinned[:n]
            self._staged = (n, pinned.numpy(), pinned, self.buffer[:n])
        _, staged, pinned, dst = self._staged
        if self._copied is not None:
            self._copied.synchronize()  # the previous async copy may still read the pinned buffer
        staged[:] = plan.host
        async_copy = non_blocking and self._cuda
        dst.copy_(pinned, non_blocking=async_copy)
        if async_copy:
            if self._copied is None:
                self._copied = torch.cuda.Event()
            self._copied.record()
        if self._layout != plan.offsets:
            self.views = {name: self.buffer[s:s + max(length, 1)] for name, (s, length) in plan.offsets.items()}
            self._layout = plan.offsets
        return self.views
