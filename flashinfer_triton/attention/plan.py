"""plan() of every attention API: options + batch lengths + device -> work list, workspace, launcher.

The API wrappers parse their own arguments (page tables, masks, FlashInfer's option names) and
then call ``plan_attention``, the one path from a validated problem to a ready ``AttentionLauncher``:
config selection for the device, the scheduler, the metadata upload, the workspace views, the
CUDA-graph bounds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .._utils import alibi_slopes
from .config import KernelConfig, select_config, split_policy
from .device import device_info
from .launcher import AttentionLauncher, dummy
from .options import AttentionOptions
from .scheduler import DeviceMetadata, WorkPlan, max_grid, plan_work
from .workspace import Workspace


@dataclass(frozen=True)
class GraphBounds:
    """Sizes fixed for the life of a CUDA-graph wrapper: the grid's items, the partial rows and the
    merge counters every later plan must fit in (its pointers are baked into captured graphs)."""

    items: int
    partial_rows: int
    counters: int


@dataclass
class PlannedAttention:
    opts: AttentionOptions
    cfg: KernelConfig
    plan: WorkPlan
    launcher: AttentionLauncher


@functools.lru_cache(maxsize=64)
def cached_alibi_slopes(num_heads: int, device: torch.device) -> torch.Tensor:
    return alibi_slopes(num_heads, device)


def graph_bounds(opts: AttentionOptions, cfg: KernelConfig, device: torch.device, batch: int, max_rows: int) -> GraphBounds:
    """Bounds for a CUDA-graph wrapper serving ``batch`` requests and at most ``max_rows`` query rows."""
    info = device_info(device)
    tile_q = cfg.block_m // opts.group
    max_tiles = -(-max_rows // tile_q) + batch
    items = max_grid(batch, max_tiles, opts.num_kv_heads, info.compute_units, split_policy(info, cfg.decode),
                     opts.causal)
    return GraphBounds(items, items * min(tile_q, max(max_rows, 1)), max_tiles)


def plan_attention(opts: AttentionOptions, workspace: Workspace, meta: DeviceMetadata, qo_indptr: np.ndarray,
                   kv_len: np.ndarray, kv_begin: np.ndarray, kv_indices: Optional[torch.Tensor], page_size: int,
                   *, config_qo_len: Optional[int] = None, config_rows: Optional[int] = None,
                   cfg: Optional[KernelConfig] = None, disable_split_kv: bool = False,
                   fixed_split_tokens: Optional[int] = None, bounds: Optional[GraphBounds] = None,
                   mask: Optional[torch.Tensor] = None, mask_indptr: Optional[torch.Tensor] = None,
                   non_blocking: bool = True, qo_begin: Optional[np.ndarray] = None) -> PlannedAttention:
    """Plan one batch. ``qo_indptr`` [B+1], ``kv_len`` [B], ``kv_begin`` [B] int64 host arrays
    (``kv_begin``: first page-table entry of each request, or first token for ragged KV).
    ``config_qo_len`` / ``config_rows`` override the batch's longest query count / total rows for
    the block-shape choice (CUDA graphs and fixed splits keep one shape across batches); ``cfg``
    fixes the configuration outright. ``fixed_split_tokens`` is the KV chunk in tokens.
    ``qo_begin`` [B]: each request's first q/o row when not ``qo_indptr[:-1]`` (``plan_work``)."""
    device = workspace.device
    info = device_info(device)
    max_qo_len = int(np.diff(qo_indptr).max(initial=0)) if config_qo_len is None else config_qo_len
    total_rows = int(qo_indptr[-1]) if config_rows is None else config_rows
    if cfg is None:
        cfg = select_config(opts, info, max(max_qo_len, 1), total_rows, page_size)
    tile_q = cfg.block_m // opts.group
    policy = split_policy(info, cfg.decode)
    row_capacity = workspace.partial_capacity // (4 * opts.num_qo_heads * (opts.head_dim_vo + 1))

    def schedule(no_split: bool) -> WorkPlan:
        return plan_work(qo_indptr, kv_len, kv_begin, tile_q, cfg.block_n, opts.num_kv_heads, info.compute_units,
                         opts.causal, policy, disable_split_kv=no_split,
                         fixed_split_size=None if no_split else fixed_split_tokens,
                         pad_items=None if bounds is None else bounds.items, qo_begin=qo_begin)

    plan = schedule(disable_split_kv)
    rows_cap = row_capacity if bounds is None else min(row_capacity, bounds.partial_rows)
    counters_cap = workspace.max_counters() // opts.num_kv_heads
    if bounds is not None:
        counters_cap = min(counters_cap, bounds.counters)
    if plan.num_partial_rows > rows_cap or plan.num_counters > counters_cap:
        if fixed_split_tokens is not None:
            raise ValueError(f"float_workspace_buffer: the fixed split size needs {plan.num_partial_rows} partial rows "
                             f"and {plan.num_counters} merge counters, more than the buffer holds ({rows_cap} / "
                             f"{counters_cap}); pass a larger buffer or a larger split")
        plan = schedule(True)  # not enough workspace for partials: one chunk per request
    rows = plan.num_partial_rows if bounds is None else bounds.partial_rows
    part_o, part_lse = workspace.partials(rows, opts.num_qo_heads, opts.head_dim_vo)
    if bounds is not None:
        counters = workspace.counters(bounds.counters * opts.num_kv_heads)
    elif plan.num_counters:
        counters = workspace.counters(plan.num_counters * opts.num_kv_heads)
    else:
        counters = dummy(device, torch.int32)
    views = meta.upload(plan, non_blocking=non_blocking)
    alibi = cached_alibi_slopes(opts.num_qo_heads, device) if opts.pos_enc == 2 else None
    launcher = AttentionLauncher(opts, cfg, plan, views, kv_indices, part_o, part_lse, counters, page_size, mask=mask,
                                 mask_indptr=mask_indptr, alibi=alibi)
    return PlannedAttention(opts, cfg, plan, launcher)
