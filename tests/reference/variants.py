"""Plain PyTorch references for attention variants (one request at a time): additive biases, keep
masks, sigmoid weights, sinks; and T5's relative-position buckets. Never imported by the package."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

LOG2E = 1.4426950408889634


def variant_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, sm_scale: Optional[float] = None,
                          bias: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None,
                          soft_cap: float = 0.0, sigmoid_bias: Optional[float] = None,
                          sinks: Optional[torch.Tensor] = None,
                          compute_dtype: torch.dtype = torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
    """q [L, Hq, D], k [K, Hkv, D], v [K, Hkv, Dv]. Logits ``x = sm_scale * q.k`` (soft-capped with
    ``soft_cap > 0``) plus ``bias`` [Hq or 1, L, K]; ``keep`` bool broadcastable to [Hq, L, K].
    Softmax attention (with ``sinks`` [Hq] in the denominator), or with ``sigmoid_bias`` the
    weights ``sigmoid(x + sigmoid_bias)`` of the kept keys (FlashSigmoid, no normalization).
    Returns out [L, Hq, Dv] and lse [L, Hq] (base 2; zeros for sigmoid) in ``compute_dtype``."""
    cd = compute_dtype
    L, hq, d = q.shape
    g = hq // k.shape[1]
    q, k, v = q.to(cd), k.to(cd).repeat_interleave(g, 1), v.to(cd).repeat_interleave(g, 1)
    s = torch.einsum("qhd,khd->hqk", q, k) * (1.0 / math.sqrt(d) if sm_scale is None else sm_scale)
    if soft_cap > 0:
        s = soft_cap * torch.tanh(s / soft_cap)
    if bias is not None:
        s = s + bias.to(cd)
    if sigmoid_bias is not None:
        w = torch.sigmoid(s + sigmoid_bias)
        if keep is not None:
            w = w * keep
        return torch.einsum("hqk,khd->qhd", w, v), torch.zeros(L, hq, dtype=cd, device=q.device)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    if sinks is not None:
        s = torch.cat([s, sinks.to(cd)[:, None, None].expand(hq, L, 1)], -1)
        v = torch.cat([v, torch.zeros_like(v[:1])])
    lse = torch.logsumexp(s, -1) * LOG2E
    p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)
    return torch.einsum("hqk,khd->qhd", p, v), lse.transpose(0, 1)


def positions(qo_len: int, kv_len: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(q_pos [L, 1], kv_pos [1, K]): queries are the last ``qo_len`` of ``kv_len`` tokens."""
    q_pos = torch.arange(qo_len, device=device)[:, None] + kv_len - qo_len
    return q_pos, torch.arange(kv_len, device=device)[None, :]


def t5_relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32,
                                max_distance: int = 128) -> torch.Tensor:
    """Hugging Face T5's ``_relative_position_bucket`` (relative_position = key - query)."""
    relative_buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    large = max_exact + (torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return relative_buckets + torch.where(is_small, relative_position, large)
