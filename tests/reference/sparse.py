"""Block-sparse patterns as dense boolean masks (FlashInfer's semantics), for the dense reference.

Never imported by the package. A row block's keys are its stored blocks in list order; causal is
bottom-right in that list (``p <= i + kv_len - qo_len`` for row ``i`` of ``qo_len`` and list entry
``p`` of ``kv_len``); an element mask replaces causal. Columns are assumed listed once per row.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def _row_visibility(qo_len: int, kv_len: int, causal: bool) -> torch.Tensor:
    """[qo_len, kv_len]: which entries of a row block's key list each of its rows sees."""
    if not causal:
        return torch.ones(qo_len, kv_len, dtype=torch.bool)
    i = torch.arange(qo_len)[:, None]
    p = torch.arange(kv_len)[None, :]
    return p <= i + kv_len - qo_len


def bsr_dense_mask(indptr: Sequence[int], indices: Sequence[int], M: int, N: int, R: int, C: int,
                   block_mask: Optional[torch.Tensor] = None, causal: bool = False) -> torch.Tensor:
    """bool ``[M, N]``: what a BSR pattern (``indptr [MB+1]``, ``indices [nnz]`` as lists) with an
    optional element mask ``block_mask [nnz, R, C]`` lets each query row see."""
    keep = torch.zeros(M, N, dtype=torch.bool)
    for b in range(len(indptr) - 1):
        r0, r1 = b * R, min((b + 1) * R, M)
        cols = list(indices[indptr[b]:indptr[b + 1]])
        keys = torch.tensor([c * C + s for c in cols for s in range(C)], dtype=torch.long)
        if block_mask is not None:
            seen = torch.cat([block_mask[indptr[b] + j].cpu()[: r1 - r0] for j in range(len(cols))], dim=1) \
                if cols else torch.zeros(r1 - r0, 0, dtype=torch.bool)
        else:
            seen = _row_visibility(r1 - r0, len(keys), causal)
        keep[r0:r1, keys] = seen
    return keep


def variable_dense_mask(block_mask: torch.Tensor, row_sz: Sequence[int], col_sz: Sequence[int],
                        causal: bool = False) -> torch.Tensor:
    """bool ``[sum(row_sz), sum(col_sz)]`` for one KV head's variable blocks (``block_mask [MB, NB]``);
    a row block's key list is its selected column blocks in ascending order."""
    row_start = [0]
    for n in row_sz:
        row_start.append(row_start[-1] + int(n))
    col_start = [0]
    for n in col_sz:
        col_start.append(col_start[-1] + int(n))
    keep = torch.zeros(row_start[-1], col_start[-1], dtype=torch.bool)
    for r in range(len(row_sz)):
        cols = [c for c in range(len(col_sz)) if bool(block_mask[r, c])]
        keys = torch.tensor([t for c in cols for t in range(col_start[c], col_start[c + 1])], dtype=torch.long)
        keep[row_start[r]:row_start[r + 1], keys] = _row_visibility(int(row_sz[r]), len(keys), causal)
    return keep
