"""Plain PyTorch references for paged-KV append, batch indices/positions, seq lens and state merging.
Float64 unless a dtype is passed; never imported by optimized code."""

from __future__ import annotations

import torch


def seq_lens(kv_indptr, kv_last_page_len, page_size):
    num_pages = (kv_indptr[1:] - kv_indptr[:-1]).long()
    return (torch.clamp(num_pages - 1, min=0) * page_size + kv_last_page_len.long()).to(torch.int32)


def batch_indices_positions(append_indptr, seq_lens, nnz):
    """(batch_indices, positions) as int32 lists of length append_indptr[-1] (entries past it unset)."""
    ind = append_indptr.tolist()
    sl = seq_lens.tolist()
    bi, pos = [], []
    for b in range(len(ind) - 1):
        n = ind[b + 1] - ind[b]
        for i in range(n):
            bi.append(b)
            pos.append(sl[b] - n + i)
    return torch.tensor(bi, dtype=torch.int32), torch.tensor(pos, dtype=torch.int32)


def append_paged_kv_cache(append_key, append_value, batch_indices, positions, k_cache, v_cache,
                          kv_indices, kv_indptr, kv_layout):
    """Writes into k_cache/v_cache (4-D, the given layout) in place, converting to the cache dtype."""
    page_size = k_cache.shape[1] if kv_layout == "NHD" else k_cache.shape[2]
    b = batch_indices.long().cpu()
    p = positions.long().cpu()
    page = kv_indices.long().cpu()[kv_indptr.long().cpu()[b] + p // page_size]
    slot = p % page_size
    for cache, x in ((k_cache, append_key), (v_cache, append_value)):
        view = cache if kv_layout == "NHD" else cache.transpose(1, 2)
        view[page.to(cache.device), slot.to(cache.device)] = x.to(cache.dtype)


def merge_states(v, s, dtype=torch.float64):
    """v [seq, n, H, D], s [seq, n, H] (base-2 LSE) -> (v [seq, H, D], s [seq, H]) computed in dtype.
    States with s = -inf weigh 0 (their v is ignored); all-empty gives v = 0, s = -inf. Non-finite
    states are the limit of finite ones: a NaN s makes the result NaN; s = +inf dominates (the mean
    v of the +inf states, s = +inf)."""
    v = v.to(dtype)
    s = s.to(dtype)
    nan = torch.isnan(s).any(dim=1)
    inf = torch.isposinf(s)
    any_inf = inf.any(dim=1)
    s = torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)
    out, lse = _merge_finite(v, torch.where(any_inf[:, None], torch.full_like(s, float("-inf")), s))
    w_inf = inf.to(dtype)
    mean_inf = (torch.where(inf[..., None], v, torch.zeros_like(v)) * w_inf[..., None]).sum(1) / \
        w_inf.sum(1).clamp(min=1)[..., None]
    out = torch.where(any_inf[..., None], mean_inf, out)
    lse = torch.where(any_inf, torch.full_like(lse, float("inf")), lse)
    out = torch.where(nan[..., None], torch.full_like(out, float("nan")), out)
    lse = torch.where(nan, torch.full_like(lse, float("nan")), lse)
    return out, lse


def _merge_finite(v, s):
    m = s.max(dim=1, keepdim=True).values if s.shape[1] > 0 else torch.full_like(s[:, :1], float("-inf"))
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    w = torch.exp2(s - m)
    d = w.sum(dim=1)
    num = torch.where(w[..., None] > 0, v * w[..., None], torch.zeros_like(v)).sum(dim=1)
    nonempty = d > 0
    out = torch.where(nonempty[..., None], num / torch.where(nonempty, d, torch.ones_like(d))[..., None], torch.zeros_like(num))
    lse = torch.where(nonempty, m[:, 0] + torch.log2(torch.where(nonempty, d, torch.ones_like(d))), torch.full_like(d, float("-inf")))
    return out, lse


def merge_state(v_a, s_a, v_b, s_b, dtype=torch.float64):
    return merge_states(torch.stack([v_a, v_b], dim=1), torch.stack([s_a, s_b], dim=1), dtype)
