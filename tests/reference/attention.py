"""Plain PyTorch attention references (one request at a time) and paged-cache builders for tests.

Never imported by the package. ``compute_dtype=torch.float64`` is the oracle; the same code run in
the kernel's low precision gives the error scale that tolerances are derived from.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

LOG2E = 1.4426950408889634


def alibi_slopes_ref(num_heads: int) -> torch.Tensor:
    n = 2 ** math.floor(math.log2(num_heads))
    m = torch.pow(torch.tensor(2.0 ** (-8.0 / n), dtype=torch.float64), torch.arange(1, 1 + n, dtype=torch.float64))
    if n < num_heads:
        m_hat = torch.pow(torch.tensor(2.0 ** (-4.0 / n), dtype=torch.float64),
                          torch.arange(1, 1 + 2 * (num_heads - n), 2, dtype=torch.float64))
        m = torch.cat([m, m_hat])
    return m


def rope_llama_ref(x: torch.Tensor, pos: torch.Tensor, rope_scale: float, rope_theta: float) -> torch.Tensor:
    """x [N, H, D], pos [N]: rotate-half RoPE with freq_i = 1 / (rope_scale * theta^(2i/D))."""
    d = x.shape[-1]
    half = d // 2
    i = torch.arange(half, dtype=torch.float64, device=x.device)
    freq = 1.0 / (rope_scale * rope_theta ** (2 * i / d))
    ang = pos.to(torch.float64)[:, None] * freq[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :].to(x.dtype)
    sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :].to(x.dtype)
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window_left: int = -1,
    logits_soft_cap: float = 0.0,
    sm_scale: Optional[float] = None,
    pos_encoding_mode: str = "NONE",
    rope_scale: float = 1.0,
    rope_theta: float = 1e4,
    custom_mask: Optional[torch.Tensor] = None,
    sinks: Optional[torch.Tensor] = None,
    compute_dtype: torch.dtype = torch.float64,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One request. q [L, Hq, D], k [K, Hkv, D], v [K, Hkv, Dv]; custom_mask bool [L, K]; sinks
    [Hq]: a learned logit per head (natural units) joining every row's softmax with a zero value.
    Returns out [L, Hq, Dv] and lse [L, Hq] (base 2, the sink included), in ``compute_dtype``."""
    L, hq, d = q.shape
    K, hkv, _ = k.shape
    g = hq // hkv
    cd = compute_dtype
    q = q.to(cd)
    k = k.to(cd)
    v = v.to(cd)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(d)
    if pos_encoding_mode == "ROPE_LLAMA":
        q = rope_llama_ref(q, torch.arange(L, device=q.device) + K - L, rope_scale, rope_theta)
        k = rope_llama_ref(k, torch.arange(K, device=k.device), rope_scale, rope_theta)
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, k) * sm_scale
    if logits_soft_cap and logits_soft_cap > 0:
        s = logits_soft_cap * torch.tanh(s / logits_soft_cap)
    qi = torch.arange(L, device=q.device)[:, None]
    kj = torch.arange(K, device=q.device)[None, :]
    if pos_encoding_mode == "ALIBI":
        slopes = alibi_slopes_ref(hq).to(q.device).to(cd)
        s = s + slopes[:, None, None] * (kj - qi).to(cd)[None]
    keep = torch.ones(L, K, dtype=torch.bool, device=q.device)
    if causal:
        keep &= kj <= qi + K - L
    if window_left >= 0:
        keep &= kj >= qi + K - L - window_left
    if custom_mask is not None:
        keep &= custom_mask.to(q.device)
    s = s.masked_fill(~keep[None], float("-inf"))
    if sinks is not None:
        s = torch.cat([s, sinks.to(cd).to(s.device)[:, None, None].expand(hq, L, 1)], dim=-1)
        v = torch.cat([v, torch.zeros_like(v[:1])], dim=0)
    lse = torch.logsumexp(s, dim=-1) * LOG2E  # [hq, L], in the compute precision
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # fully masked rows: output 0, lse -inf
    out = torch.einsum("hqk,khd->qhd", p, v)
    return out, lse.transpose(0, 1)


def build_paged_cache(
    kv_lens: List[int],
    page_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device,
    kv_layout: str = "NHD",
    extra_pages: int = 3,
    generator: Optional[torch.Generator] = None,
):
    """A random paged cache holding ``kv_lens`` tokens per request in randomly permuted,
    non-contiguous pages (plus unused pages full of garbage). Returns
    (cache_5d, indptr, indices, last_page_len, [k_i], [v_i]) with k_i/v_i [kv_len_i, H, D]."""
    pages_per_req = [(n + page_size - 1) // page_size for n in kv_lens]
    total = sum(pages_per_req) + extra_pages
    perm = torch.randperm(total, generator=generator)
    shape = (total, 2, page_size, num_kv_heads, head_dim) if kv_layout == "NHD" else (total, 2, num_kv_heads, page_size, head_dim)
    cache = torch.randn(shape, generator=generator).to(dtype).to(device)
    indptr = [0]
    indices, last, ks, vs = [], [], [], []
    cursor = 0
    for n, np_ in zip(kv_lens, pages_per_req):
        ids = perm[cursor:cursor + np_].tolist()
        cursor += np_
        indices += ids
        indptr.append(len(indices))
        last.append(n - (np_ - 1) * page_size if np_ else 0)
        if np_:
            sel = cache[torch.tensor(ids, device=device)]  # [np, 2, ...]
            if kv_layout == "HND":
                sel = sel.transpose(2, 3)
            sel = sel.reshape(np_, 2, page_size, num_kv_heads, head_dim)
            ks.append(sel[:, 0].reshape(-1, num_kv_heads, head_dim)[:n])
            vs.append(sel[:, 1].reshape(-1, num_kv_heads, head_dim)[:n])
        else:
            ks.append(torch.empty(0, num_kv_heads, head_dim, dtype=dtype, device=device))
            vs.append(torch.empty(0, num_kv_heads, head_dim, dtype=dtype, device=device))
    i32 = dict(dtype=torch.int32, device=device)
    return (cache, torch.tensor(indptr, **i32), torch.tensor(indices, **i32), torch.tensor(last, **i32), ks, vs)
