"""Plain PyTorch references for MLA attention and its paged cache (never imported by the package).

MLA is attention with one KV head shared by every query head: K = concat(ckv, kpe), V = ckv. The
reference scores the concatenated q against the concatenated K once for all heads (no per-head
copy of the cache, so DeepSeek sizes fit in float64).
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch

LOG2E = 1.4426950408889634
D_CKV, D_KPE = 512, 64
DEEPSEEK_SM_SCALE = 1.0 / math.sqrt(128 + 64)  # the head dimension before matrix absorption


def mla_ref(q_nope: torch.Tensor, q_pe: torch.Tensor, ckv: torch.Tensor, kpe: torch.Tensor, *, causal: bool,
            sm_scale: float, compute_dtype: torch.dtype = torch.float64):
    """One request: q_nope [L, H, 512], q_pe [L, H, 64], ckv [K, 512], kpe [K, 64]. Returns out
    [L, H, 512] and lse [L, H] (base 2) in ``compute_dtype``."""
    cd = compute_dtype
    q = torch.cat([q_nope, q_pe], dim=-1).to(cd)
    k = torch.cat([ckv, kpe], dim=-1).to(cd)
    L, K = q.shape[0], k.shape[0]
    s = torch.einsum("qhd,kd->hqk", q, k) * sm_scale
    if causal:  # bottom-right aligned: query i sees key j <= i + K - L
        keep = torch.arange(K, device=q.device)[None, :] <= torch.arange(L, device=q.device)[:, None] + K - L
        s = s.masked_fill(~keep[None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1) * LOG2E  # [H, L]
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)  # a row with no key: output 0, lse -inf
    return torch.einsum("hqk,kd->qhd", p, ckv.to(cd)), lse.transpose(0, 1)


def build_mla_cache(kv_lens: List[int], page_size: int, dtype: torch.dtype, device, generator: torch.Generator,
                    extra_pages: int = 3, spare_pages: Optional[List[int]] = None, fused: bool = False):
    """A random paged MLA cache holding ``kv_lens`` tokens per request in permuted pages (unused
    pages and slots full of garbage). ``spare_pages[b]`` more pages than needed go to request b
    (its ``kv_len_arr`` entry stays authoritative). ``fused``: ckv and kpe are views of one
    ``[pages, page_size, 576]`` tensor (as SGLang passes them). Returns (ckv_cache, kpe_cache,
    kv_indptr, kv_indices, kv_len_arr, [ckv_b [K, 512]], [kpe_b [K, 64]])."""
    spare = spare_pages or [0] * len(kv_lens)
    pages = [(n + page_size - 1) // page_size + s for n, s in zip(kv_lens, spare)]
    total = sum(pages) + extra_pages
    perm = torch.randperm(total, generator=generator)
    full = torch.randn(total, page_size, D_CKV + D_KPE, generator=generator).to(dtype).to(device)
    if fused:
        ckv_cache, kpe_cache = full[..., :D_CKV], full[..., D_CKV:]
    else:
        ckv_cache, kpe_cache = full[..., :D_CKV].contiguous(), full[..., D_CKV:].contiguous()
    indptr, indices, ckvs, kpes = [0], [], [], []
    for n, p in zip(kv_lens, pages):
        ids = perm[len(indices): len(indices) + p].tolist()
        indices += ids
        indptr.append(len(indices))
        sel = torch.tensor(ids, dtype=torch.long, device=device)
        ckvs.append(ckv_cache[sel].reshape(-1, D_CKV)[:n])
        kpes.append(kpe_cache[sel].reshape(-1, D_KPE)[:n])
    i32 = dict(dtype=torch.int32, device=device)
    return (ckv_cache, kpe_cache, torch.tensor(indptr, **i32), torch.tensor(indices, **i32),
            torch.tensor(kv_lens, **i32), ckvs, kpes)


def append_paged_mla_kv_cache(append_ckv, append_kpe, batch_indices, positions, ckv_cache, kpe_cache, kv_indices,
                              kv_indptr):
    """Writes row i into slot ``positions[i] % page_size`` of page
    ``kv_indices[kv_indptr[batch_indices[i]] + positions[i] // page_size]``, in the cache dtype."""
    page_size = ckv_cache.shape[1]
    b = batch_indices.long().cpu()
    p = positions.long().cpu()
    page = kv_indices.long().cpu()[kv_indptr.long().cpu()[b] + p // page_size].to(ckv_cache.device)
    slot = (p % page_size).to(ckv_cache.device)
    ckv_cache[page, slot] = append_ckv.to(ckv_cache.dtype)
    kpe_cache[page, slot] = append_kpe.to(kpe_cache.dtype)
