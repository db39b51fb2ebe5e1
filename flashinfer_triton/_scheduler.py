"""plan(): turn a batch's lengths into a flat, load-balanced work list for the attention kernel.

A work item is ``(request, q tile start, kv chunk start, kv chunk end, chunk index)``; the kernel's
grid is ``(items, num_kv_heads)``. When the batch has too few items to fill the GPU, or its longest
request is several times the fair share of the batch's KV work per program slot (``PROGRAMS_PER_CU``
per compute unit), requests longer than that fair share (a multiple of the kernel's BLOCK_N) are
cut into chunks, so a batch of very different lengths (or one long request)
becomes equal-sized pieces and no compute unit idles behind the longest request; the chunks' partial (o, lse) go to the
float workspace and a merge kernel combines them. A fixed chunk size (``fixed_split_size``) gives
results that do not depend on the rest of the batch.

All metadata lives in one int32 host array, copied to the device with one asynchronous copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch

# Programs per compute unit the split heuristic aims for: enough resident work to hide memory latency.
PROGRAMS_PER_CU = 2  # tuned on an H100 with benchmarks/tune_decode.py
MIN_CHUNK_TOKENS = 256
# Split a batch that already fills the GPU only when its longest request is this many fair shares
# long: then it, not throughput, sets the time; below that a merge pass costs more than it saves.
SKEW_FACTOR = 4


@dataclass
class WorkPlan:
    num_items: int          # real items
    grid_items: int         # items the grid is sized for (>= num_items; fixed under CUDA graphs)
    num_merge_rows: int
    grid_merge_rows: int
    num_partial_rows: int
    chunk_size: int         # 0 when no request is split
    offsets: Dict[str, Tuple[int, int]]  # name -> (start, length) inside the packed int32 array
    host: np.ndarray        # packed int32 metadata


FIELDS = ("item_req", "item_q_start", "item_kv_start", "item_kv_end", "item_chunk",
          "qo_indptr", "kv_begin", "kv_len", "part_base",
          "merge_out_row", "merge_part_row", "merge_stride", "merge_count")


def _ceil_div(a, b):
    return -(-a // b)


def plan_work(
    qo_indptr: np.ndarray,
    kv_len: np.ndarray,
    kv_begin: np.ndarray,
    tile_q: int,
    block_n: int,
    num_kv_heads: int,
    num_cus: int,
    causal: bool,
    disable_split_kv: bool = False,
    fixed_split_size: Optional[int] = None,
    pad_to: Optional[Tuple[int, int]] = None,
) -> WorkPlan:
    """Build the work list. ``qo_indptr`` [B+1], ``kv_len`` [B], ``kv_begin`` [B] (first page or
    token of each request) are int64/int32 numpy arrays. ``pad_to = (items, merge_rows)`` sizes the
    grids for CUDA-graph replay (padding items carry request -1)."""
    batch = kv_len.shape[0]
    qo_len = np.diff(qo_indptr).astype(np.int64)
    kv_len = kv_len.astype(np.int64)
    tiles = _ceil_div(qo_len, tile_q)
    tiles = np.maximum(tiles, 0)
    num_tiles = int(tiles.sum())

    # Work of a tile in KV tokens (causal tiles see a prefix); used to size chunks.
    total_work = int((tiles * kv_len).sum()) if not causal else int(
        np.minimum(kv_len, (kv_len - qo_len) + tile_q * (tiles + 1) // 2).clip(min=0).dot(tiles))
    target_items = _ceil_div(PROGRAMS_PER_CU * num_cus, num_kv_heads)

    chunk = 0
    if fixed_split_size is not None and fixed_split_size > 0:
        chunk = _ceil_div(int(fixed_split_size), block_n) * block_n
    elif not disable_split_kv and total_work > 0:
        fair = _ceil_div(total_work, target_items)
        # Under-filled: fewer programs than compute units (prefill tiles are heavy enough that one
        # wave of them keeps the GPU busy; the merge pass over every query row is not free).
        if num_tiles * num_kv_heads < num_cus or int(kv_len.max(initial=0)) > SKEW_FACTOR * fair:
            chunk = max(MIN_CHUNK_TOKENS, _ceil_div(fair, block_n) * block_n)
            if chunk >= int(kv_len.max(initial=0)):
                chunk = 0
    if chunk > 0:
        n_chunks = np.maximum(_ceil_div(kv_len, chunk), 1)
    else:
        n_chunks = np.ones(batch, dtype=np.int64)
    split = n_chunks > 1

    # Items: for each request, tiles x chunks (chunk-major inside a request keeps KV reuse local).
    per_req_items = tiles * n_chunks
    num_items = int(per_req_items.sum())
    item_req = np.repeat(np.arange(batch, dtype=np.int64), per_req_items)
    local = np.arange(num_items, dtype=np.int64) - np.repeat(np.cumsum(per_req_items) - per_req_items, per_req_items)
    nch = n_chunks[item_req]
    item_chunk = local % nch
    item_q_start = (local // nch) * tile_q
    if chunk > 0:
        item_kv_start = item_chunk * chunk
        item_kv_end = np.minimum(item_kv_start + chunk, kv_len[item_req])
    else:
        item_kv_start = np.zeros(num_items, dtype=np.int64)
        item_kv_end = kv_len[item_req]
    if causal and num_items > 1:
        # Longest-first: a causal tile's work grows with its position; starting the heavy tiles
        # first keeps them off the tail of the launch.
        q_last = np.minimum(item_q_start + tile_q, qo_len[item_req]) + (kv_len - qo_len)[item_req]
        work = np.minimum(item_kv_end, q_last) - item_kv_start
        order = np.argsort(-work, kind="stable")
        item_req, item_q_start, item_chunk = item_req[order], item_q_start[order], item_chunk[order]
        item_kv_start, item_kv_end = item_kv_start[order], item_kv_end[order]

    # Partials: request b's rows start at part_base[b], chunk c's rows at + c * qo_len[b].
    part_rows = np.where(split, n_chunks * qo_len, 0)
    part_base = np.where(split, np.cumsum(part_rows) - part_rows, -1)
    num_partial_rows = int(part_rows.sum())

    # Merge rows: every query row of a split request.
    merge_qo = np.where(split, qo_len, 0)
    num_merge = int(merge_qo.sum())
    m_req = np.repeat(np.arange(batch, dtype=np.int64), merge_qo)
    m_local = np.arange(num_merge, dtype=np.int64) - np.repeat(np.cumsum(merge_qo) - merge_qo, merge_qo)
    merge_out_row = qo_indptr[m_req].astype(np.int64) + m_local
    merge_part_row = part_base[m_req] + m_local
    merge_stride = qo_len[m_req]
    merge_count = n_chunks[m_req]

    grid_items, grid_merge = num_items, num_merge
    if pad_to is not None:
        grid_items, grid_merge = pad_to
        if num_items > grid_items or num_merge > grid_merge:
            raise ValueError(
                f"plan: this batch needs {num_items} work items and {num_merge} merge rows, more than the "
                f"{grid_items}/{grid_merge} the CUDA graph was sized for; create the wrapper with larger buffers")

    arrays = {
        "item_req": item_req, "item_q_start": item_q_start, "item_kv_start": item_kv_start,
        "item_kv_end": item_kv_end, "item_chunk": item_chunk, "qo_indptr": qo_indptr, "kv_begin": kv_begin,
        "kv_len": kv_len, "part_base": part_base, "merge_out_row": merge_out_row, "merge_part_row": merge_part_row,
        "merge_stride": merge_stride, "merge_count": merge_count,
    }
    return _pack(arrays, num_items, grid_items, num_merge, grid_merge, num_partial_rows, chunk)


# Padding values for grid slots beyond the real work: request -1 / output row -1 mean "exit".
_PAD = {"item_req": -1, "merge_out_row": -1}
_ITEM_FIELDS = FIELDS[:5]
_MERGE_FIELDS = FIELDS[9:]


def _pack(arrays, num_items, grid_items, num_merge, grid_merge, num_partial_rows, chunk) -> WorkPlan:
    sizes = {name: (grid_items if name in _ITEM_FIELDS else grid_merge if name in _MERGE_FIELDS else arrays[name].shape[0])
             for name in FIELDS}
    offsets = {}
    pos = 0
    for name in FIELDS:
        offsets[name] = (pos, sizes[name])
        pos += -(-max(sizes[name], 1) // 4) * 4  # 16-byte aligned fields: pointer alignment never changes
    host = np.zeros(pos, dtype=np.int32)
    for name in FIELDS:
        start, n = offsets[name]
        a = arrays[name]
        host[start:start + a.shape[0]] = a
        if n > a.shape[0] and name in _PAD:
            host[start + a.shape[0]:start + n] = _PAD[name]
    return WorkPlan(num_items, grid_items, num_merge, grid_merge, num_partial_rows, chunk, offsets, host)


def plan_decode(
    kv_len: np.ndarray,
    kv_begin: np.ndarray,
    block_n: int,
    num_kv_heads: int,
    num_cus: int,
    disable_split_kv: bool = False,
    fixed_split_size: Optional[int] = None,
    pad_to: Optional[Tuple[int, int]] = None,
) -> WorkPlan:
    """``plan_work`` for one query row per request, with a fraction of the numpy calls (plan() is on
    the serving engine's critical path every step). Same work-list semantics."""
    batch = kv_len.shape[0]
    target_items = _ceil_div(PROGRAMS_PER_CU * num_cus, num_kv_heads)
    chunk = 0
    if fixed_split_size is not None and fixed_split_size > 0:
        chunk = _ceil_div(int(fixed_split_size), block_n) * block_n
    elif not disable_split_kv:
        total = int(kv_len.sum())
        if total > 0:
            fair = _ceil_div(total, target_items)
            if batch < target_items or int(kv_len.max()) > SKEW_FACTOR * fair:
                chunk = max(MIN_CHUNK_TOKENS, _ceil_div(fair, block_n) * block_n)
                if chunk >= int(kv_len.max()):
                    chunk = 0
    arange_b = np.arange(batch, dtype=np.int64)
    qo_indptr = np.arange(batch + 1, dtype=np.int64)
    if chunk == 0:
        zeros = np.zeros(batch, dtype=np.int64)
        arrays = {"item_req": arange_b, "item_q_start": zeros, "item_kv_start": zeros, "item_kv_end": kv_len,
                  "item_chunk": zeros, "qo_indptr": qo_indptr, "kv_begin": kv_begin, "kv_len": kv_len,
                  "part_base": np.full(batch, -1, dtype=np.int64)}
        empty = np.zeros(0, dtype=np.int64)
        arrays.update(merge_out_row=empty, merge_part_row=empty, merge_stride=empty, merge_count=empty)
        num_items, num_merge, rows = batch, 0, 0
    else:
        n_chunks = np.maximum(_ceil_div(kv_len, chunk), 1)
        ends = np.cumsum(n_chunks)
        num_items = int(ends[-1])
        item_req = np.repeat(arange_b, n_chunks)
        item_chunk = np.arange(num_items, dtype=np.int64) - (ends - n_chunks)[item_req]
        item_kv_start = item_chunk * chunk
        split = n_chunks > 1
        part_base = np.where(split, ends - n_chunks, -1)
        merge_req = arange_b[split]
        arrays = {"item_req": item_req, "item_q_start": np.zeros(num_items, dtype=np.int64),
                  "item_kv_start": item_kv_start, "item_kv_end": np.minimum(item_kv_start + chunk, kv_len[item_req]),
                  "item_chunk": item_chunk, "qo_indptr": qo_indptr, "kv_begin": kv_begin, "kv_len": kv_len,
                  "part_base": part_base, "merge_out_row": merge_req, "merge_part_row": part_base[merge_req],
                  "merge_stride": np.ones(merge_req.shape[0], dtype=np.int64), "merge_count": n_chunks[merge_req]}
        num_merge = int(merge_req.shape[0])
        rows = num_items
    grid_items, grid_merge = num_items, num_merge
    if pad_to is not None:
        grid_items, grid_merge = pad_to
        if num_items > grid_items or num_merge > grid_merge:
            raise ValueError(f"plan: this batch needs {num_items} work items, more than the {grid_items} the CUDA "
                             "graph was sized for")
    return _pack(arrays, num_items, grid_items, num_merge, grid_merge, rows, chunk)


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

    def upload(self, plan: WorkPlan, non_blocking: bool = True) -> Dict[str, torch.Tensor]:
        n = plan.host.shape[0]
        if self.buffer is None or self.buffer.numel() < n or (self.fixed and self._layout != plan.offsets and self._layout is not None):
            if self.fixed and self.buffer is not None and self._layout != plan.offsets:
                raise ValueError("plan: under CUDA graphs a new plan must keep the batch size and buffer sizes "
                                 "of the captured one")
            self.buffer = torch.empty(n, dtype=torch.int32, device=self.device)
            self.pinned = torch.empty(n, dtype=torch.int32, pin_memory=self.device.type == "cuda")
        if self._copied is not None:
            self._copied.synchronize()  # the previous async copy may still read the pinned buffer
        pinned = self.pinned[:n]
        pinned.numpy()[:] = plan.host
        async_copy = non_blocking and self.device.type == "cuda"
        self.buffer[:n].copy_(pinned, non_blocking=async_copy)
        if async_copy:
            if self._copied is None:
                self._copied = torch.cuda.Event()
            self._copied.record()
        if self._layout != plan.offsets:
            self.views = {name: self.buffer[s:s + max(length, 1)] for name, (s, length) in plan.offsets.items()}
            self._layout = plan.offsets
        return self.views
