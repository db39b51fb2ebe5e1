"""Block-sparse work lists: a BSR matrix, or per-head blocks of variable size, as a paged batch.

FlashInfer's reading, kept here: a row block of the attention matrix is a *request*; its key list
is the concatenation of its stored column blocks in index order, read through the page table (a
page is a column block: page id = block column index, page size = the block width). From there
``plan_attention`` treats it as any paged batch: the scheduler cuts long key lists into chunks and
merges them like split-KV, spreading the work over the compute units, and the one attention kernel
runs it (whole KV blocks on its unmasked path, the ragged end and the causal diagonal on the masked
one). Work is proportional to the stored blocks; there is no kernel of its own.

Positions inside a request are positions in its compacted key list, so causal (bottom-right) means
row ``i`` of a row block of ``qo_len`` rows and ``kv_len`` listed keys sees list entry ``p`` iff
``p <= i + kv_len - qo_len``: FlashInfer's definition, which is causal over the sequence when each
row lists its blocks in ascending order and ends with its diagonal block.

Variable blocks (per KV head, sizes per head): one request per (KV head h, row block), the GQA
group packed as the query heads of one KV head; its rows start at ``h * group * qo_len`` plus the
block's first row, so the rows of an HND q / out ``[H_qo, qo_len, D]`` read as ``[rows, group, D]``
with strides ``(D, qo_len * D)`` land on head ``h * group + g`` with no copy. K/V of all heads are
one token sequence ``[H_kv * kv_len]`` (HND, heads back to back) in pages of the greatest common
divisor of the column block sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from .config import select_block_sparse_config
from .device import device_info
from .options import AttentionOptions
from .plan import PlannedAttention, plan_attention
from .scheduler import DeviceMetadata
from .workspace import Workspace


@dataclass(frozen=True)
class SparseBatch:
    """A block-sparse problem as the engine's batch: int64 host arrays ``qo_indptr [B+1]`` (query
    counts), ``kv_len [B]`` (listed keys per request), ``kv_begin [B]`` (first page-table entry),
    ``qo_begin [B]`` (first q/o row, when not ``qo_indptr[:-1]``)."""

    qo_indptr: np.ndarray
    kv_len: np.ndarray
    kv_begin: np.ndarray
    page_size: int
    qo_begin: Optional[np.ndarray] = None

    @property
    def qo_len(self) -> np.ndarray:
        return np.diff(self.qo_indptr)


def bsr_batch(indptr: np.ndarray, M: int, R: int, C: int) -> SparseBatch:
    """Row block ``b`` of a BSR matrix (``indptr [MB+1]``, host int64) is request ``b``: rows
    ``[b * R, min((b + 1) * R, M))``, keys ``C * (indptr[b+1] - indptr[b])``, pages
    ``indices[indptr[b]:indptr[b+1]]``."""
    num_rows = indptr.shape[0] - 1
    qo_indptr = np.minimum(np.arange(num_rows + 1, dtype=np.int64) * R, M)
    return SparseBatch(qo_indptr, np.diff(indptr) * C, indptr[:-1].copy(), C)


def variable_batch(block_mask: np.ndarray, row_sz: np.ndarray, col_sz: np.ndarray,
                   group: int) -> Tuple[SparseBatch, np.ndarray, np.ndarray]:
    """Per-KV-head blocks (``block_mask [H_kv, MB, NB]`` bool, ``row_sz [H_kv, MB]``,
    ``col_sz [H_kv, NB]`` int64 host arrays; every head's sizes sum to the same ``qo_len`` /
    ``kv_len``) as requests ``(KV head h, row block r)`` in that order, rows from
    ``h * group * qo_len + row start``. Returns the batch and, per stored block in (head, row,
    column) order, its first page and its page count (``expand_pages`` builds the page table)."""
    num_kv_heads, num_rows, _ = block_mask.shape
    qo_len = int(row_sz[0].sum()) if num_kv_heads else 0
    kv_len = int(col_sz[0].sum()) if num_kv_heads else 0
    sizes = col_sz[col_sz > 0]
    page = int(np.gcd.reduce(sizes)) if sizes.size else 1
    col_start = np.cumsum(col_sz, axis=1) - col_sz
    h, r, c = np.nonzero(block_mask)
    pages = col_sz[h, c] // page
    first = (h * kv_len + col_start[h, c]) // page
    row_pages = np.zeros((num_kv_heads, num_rows), dtype=np.int64)
    np.add.at(row_pages, (h, r), pages)
    row_pages = row_pages.reshape(-1)
    row_start = np.cumsum(row_sz, axis=1) - row_sz + (np.arange(num_kv_heads) * group * qo_len)[:, None]
    qo_indptr = np.concatenate([[0], np.cumsum(row_sz.reshape(-1))]).astype(np.int64)
    batch = SparseBatch(qo_indptr, row_pages * page, np.cumsum(row_pages) - row_pages, page,
                        row_start.reshape(-1).astype(np.int64))
    return batch, first, pages


def expand_pages(first: np.ndarray, count: np.ndarray, device: torch.device) -> torch.Tensor:
    """The page table ``concat(first[i] + arange(count[i]))`` as a contiguous int32 tensor on
    ``device`` (built there: only the per-block arrays cross to the device)."""
    total = int(count.sum())
    if total == 0:
        return torch.zeros(1, dtype=torch.int32, device=device)
    first_t = torch.from_numpy(first).to(device)
    count_t = torch.from_numpy(count).to(device)
    block_start = torch.cumsum(count_t, 0) - count_t
    offset = torch.arange(total, device=device) - torch.repeat_interleave(block_start, count_t, output_size=total)
    return (torch.repeat_interleave(first_t, count_t, output_size=total) + offset).to(torch.int32)


def plan_block_sparse(opts: AttentionOptions, workspace: Workspace, meta: DeviceMetadata, batch: SparseBatch,
                      kv_indices: torch.Tensor, dense_qo_len: int, mask: Optional[torch.Tensor] = None,
                      mask_indptr: Optional[torch.Tensor] = None, non_blocking: bool = True) -> PlannedAttention:
    """Plan a block-sparse batch on the engine. ``dense_qo_len``: the query rows of the dense
    problem the pattern is cut from (the configuration choice reads it)."""
    cfg = select_block_sparse_config(opts, device_info(workspace.device), batch.qo_len, dense_qo_len,
                                     batch.page_size)
    return plan_attention(opts, workspace, meta, batch.qo_indptr, batch.kv_len, batch.kv_begin, kv_indices,
                          batch.page_size, cfg=cfg, mask=mask, mask_indptr=mask_indptr, non_blocking=non_blocking,
                          qo_begin=batch.qo_begin)


def max_page_id_fits(num_tokens: int, page_size: int) -> bool:
    """Page ids are int32 in the kernel's page table."""
    return math.ceil(num_tokens / max(page_size, 1)) < 2 ** 31
