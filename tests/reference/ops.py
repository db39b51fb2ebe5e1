"""Plain PyTorch references for norm, RoPE and gated activations.

Every function computes in ``compute_dtype`` (float64 for the oracle; float32 for the
"low-precision" reference that mirrors FlashInfer's float32 math) and returns that dtype, unless
``out_dtype`` is given, in which case the result is rounded once to it (and intermediate values
that FlashInfer stores, like the residual sum, are rounded too).
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def _fin(x: torch.Tensor, out_dtype: Optional[torch.dtype]) -> torch.Tensor:
    return x if out_dtype is None else x.to(out_dtype)


# --------------------------------------------------------------------------- norm


def rmsnorm(x, weight, eps=1e-6, weight_bias=0.0, compute_dtype=torch.float64, out_dtype=None):
    x = x.to(compute_dtype)
    w = weight.to(compute_dtype) + weight_bias
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    return _fin(y, out_dtype)


def fused_add_rmsnorm(x, residual, weight, eps=1e-6, weight_bias=0.0, compute_dtype=torch.float64, out_dtype=None):
    """Returns (new input, new residual): the normalized sum and the sum."""
    s = x.to(compute_dtype) + residual.to(compute_dtype)
    return rmsnorm(s, weight, eps, weight_bias, compute_dtype, out_dtype), _fin(s, out_dtype)


def layernorm(x, gamma, beta, eps=1e-6, compute_dtype=torch.float64, out_dtype=None):
    x = x.to(compute_dtype)
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + eps) * gamma.to(compute_dtype) + beta.to(compute_dtype)
    return _fin(y, out_dtype)


# --------------------------------------------------------------------------- rope


def rope_frequencies(rotary_dim, rope_scale=1.0, rope_theta=1e4, llama31=None, compute_dtype=torch.float64):
    """Per-pair frequencies ``[rotary_dim // 2]``; ``llama31 = (low_freq_factor, high_freq_factor,
    old_context_len)`` applies Llama 3.1 smoothing (FlashInfer's formula)."""
    j = torch.arange(rotary_dim // 2, dtype=compute_dtype)
    freq = torch.pow(torch.tensor(rope_theta, dtype=compute_dtype), -2.0 * j / rotary_dim)
    if llama31 is None:
        return freq / rope_scale
    low, high, old = llama31
    smooth_a = old / (2 * math.pi * high - 2 * math.pi * low)
    smooth_b = -1.0 / (high / low - 1.0)
    smooth = (freq * smooth_a + smooth_b).clamp(0.0, 1.0)
    return (1 - smooth) * (freq / rope_scale) + smooth * freq


def rope_cos_sin(positions, rotary_dim, rope_scale=1.0, rope_theta=1e4, llama31=None, compute_dtype=torch.float64):
    """(cos, sin), each ``[nnz, rotary_dim // 2]``."""
    freq = rope_frequencies(rotary_dim, rope_scale, rope_theta, llama31, compute_dtype)
    angle = positions.to(compute_dtype)[:, None] * freq[None, :]
    return angle.cos(), angle.sin()


def cos_sin_cache(max_position, rotary_dim, rope_theta=1e4):
    """A vLLM-style float32 cache ``[max_position, rotary_dim]``: cos then sin (computed in float64)."""
    cos, sin = rope_cos_sin(torch.arange(max_position), rotary_dim, 1.0, rope_theta)
    return torch.cat([cos, sin], dim=-1).float()


def apply_rotary(x, cos, sin, rotary_dim, interleave, compute_dtype=torch.float64, out_dtype=None):
    """Rotate ``x [nnz, H, D]`` with ``cos/sin [nnz, rotary_dim // 2]``; dims past rotary_dim pass through."""
    x = x.to(compute_dtype)
    c = cos.to(compute_dtype)[:, None, :]
    s = sin.to(compute_dtype)[:, None, :]
    out = x.clone()
    if interleave:
        a, b = x[..., 0:rotary_dim:2], x[..., 1:rotary_dim:2]
        out[..., 0:rotary_dim:2] = a * c - b * s
        out[..., 1:rotary_dim:2] = b * c + a * s
    else:
        h = rotary_dim // 2
        a, b = x[..., :h], x[..., h:rotary_dim]
        out[..., :h] = a * c - b * s
        out[..., h:rotary_dim] = b * c + a * s
    return _fin(out, out_dtype)


def positions_from_indptr(indptr, offsets):
    """Token positions of a ragged batch: ``offsets[b] + (t - indptr[b])``."""
    lens = (indptr[1:] - indptr[:-1]).long()
    batch = torch.repeat_interleave(torch.arange(len(lens)), lens.cpu()).to(indptr.device)
    t = torch.arange(int(indptr[-1]), device=indptr.device)
    return offsets.long()[batch] + t - indptr.long()[batch]


# --------------------------------------------------------------------------- activations


def act_and_mul(x, act: str, compute_dtype=torch.float64, out_dtype=None):
    x = x.to(compute_dtype)
    d = x.shape[-1] // 2
    g, u = x[..., :d], x[..., d:]
    if act == "silu":
        a = g / (1 + torch.exp(-g))
    elif act == "gelu":
        a = 0.5 * g * (1 + torch.erf(g / math.sqrt(2.0)))
    elif act == "gelu_tanh":
        a = 0.5 * g * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g.pow(3))))
    else:
        raise ValueError(act)
    return _fin(a * u, out_dtype)
