"""What the serving loop calls for everything but the matrix multiplies: norms, RoPE, the KV
append, attention, the gated activation and sampling.

``KernelBackend(module)`` takes a module with FlashInfer's API: ``flashinfer_triton`` (this library)
or ``flashinfer`` itself, so the same loop runs on either set of kernels. ``SdpaBackend`` is the
PyTorch baseline: the same paged cache, attention through ``torch.nn.functional.scaled_dot_product_attention``
over KV gathered from the pages, everything else in plain PyTorch (the formulas of the Hugging Face
modules).

A backend is planned once per step (``plan(step)``: host page tables in, one upload, wrapper plans)
and that plan serves every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import split_shared_prefix
from .model import ModelSpec, RopeSpec
from .paging import StepBatch, cpu_i32


@dataclass(frozen=True)
class SamplingParams:
    """``temperature == 0`` is greedy decoding; otherwise softmax at ``temperature`` then top-k
    (``top_k <= 0``: off) and top-p filtering."""

    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 0.9

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _upload(arrays: List[np.ndarray], device: torch.device, dtype=np.int32) -> List[torch.Tensor]:
    """Copy host index arrays to the device in one transfer; return a view per array."""
    sizes = [a.size for a in arrays]
    flat = torch.from_numpy(np.concatenate([a.reshape(-1).astype(dtype, copy=False) for a in arrays]))
    flat = flat.to(device)
    return list(torch.split(flat, sizes))


class KernelBackend:
    """The loop on a FlashInfer-API module (``flashinfer_triton`` or ``flashinfer``).

    Per step: chunked prefill through ``BatchPrefillWithPagedKVCacheWrapper`` (causal, bottom-right);
    decode through ``BatchDecodeWithPagedKVCacheWrapper``, or, when the decode requests start with
    the same cached pages (a shared system prompt), through the 2-level
    ``MultiLevelCascadeAttentionWrapper`` that ``flashinfer_triton.split_shared_prefix`` builds (this
    library's helper; FlashInfer has none, so it serves both modules). Norms, RoPE, the KV append,
    ``silu_and_mul``, softmax and top-k/top-p sampling are the module's.

    Parameters
    ----------
    module : the kernel module (``import flashinfer_triton`` or ``import flashinfer``).
    spec : ModelSpec
    dtype : the model's dtype (query and KV data type of every plan).
    device : where the cache and activations live.
    page_size : KV page size.
    cascade : use the cascade wrapper for decode over a shared prefix.
    workspace_mb : size of each wrapper's float workspace (split-KV partials).
    """

    def __init__(self, module, spec: ModelSpec, dtype: torch.dtype, device, page_size: int, cascade: bool = True,
                 workspace_mb: int = 128, name: Optional[str] = None) -> None:
        self.m = module
        self.name = name or module.__name__
        self.spec, self.dtype, self.device, self.page_size = spec, dtype, torch.device(device), page_size
        self.cascade = cascade
        ws = lambda: torch.empty(workspace_mb << 20, dtype=torch.uint8, device=self.device)  # noqa: E731
        self._decode = module.BatchDecodeWithPagedKVCacheWrapper(ws(), "NHD", use_tensor_cores=True)
        self._prefill = module.BatchPrefillWithPagedKVCacheWrapper(ws(), "NHD")
        self._cascade = module.MultiLevelCascadeAttentionWrapper(2, ws(), "NHD") if cascade else None
        self.used_cascade = False

    def plan(self, step: StepBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Plan attention for every layer of this step; return the step's device ``tokens [T]`` and
        ``logit_rows [R]`` (int32)."""
        s, p = self.spec, self.page_size
        (tokens, self._positions, self._batch_indices, self._indptr, self._indices, self._last,
         logit_rows) = _upload([step.tokens, step.positions, step.row_request, step.page_indptr, step.page_indices,
                                step.last_page_len, step.logit_rows], self.device)
        heads = (s.num_qo_heads, s.num_kv_heads, s.head_dim, p)
        n = self._num_decode = step.num_decode
        self._decode_wrapper = None
        self.used_cascade = False
        if n:
            indptr, indices, last = (cpu_i32(a) for a in step.decode_tables())
            if self.cascade and n > 1:
                levels = split_shared_prefix(indptr, indices, last, p)
                if levels.num_shared_pages:
                    self._cascade.plan(*levels, *heads, causal=True, q_data_type=self.dtype)
                    self._decode_wrapper = self._cascade
                    self.used_cascade = True
            if self._decode_wrapper is None:
                self._decode.plan(indptr, indices, last, *heads, q_data_type=self.dtype)
                self._decode_wrapper = self._decode
        self._has_prefill = step.num_requests > n
        if self._has_prefill:
            qo, indptr, indices, last = (cpu_i32(a) for a in step.prefill_tables())
            self._prefill.plan(qo, indptr, indices, last, *heads, causal=True, q_data_type=self.dtype)
        return tokens, logit_rows

    def rmsnorm(self, x, weight, eps):
        return self.m.rmsnorm(x, weight, eps)

    def fused_add_rmsnorm(self, x, residual, weight, eps):
        self.m.fused_add_rmsnorm(x, residual, weight, eps)

    def rope_inplace(self, q, k):
        r = self.spec.rope
        if r.kind == "llama3":
            self.m.apply_llama31_rope_pos_ids_inplace(q, k, self._positions, rope_scale=r.factor, rope_theta=r.theta,
                                                      low_freq_factor=r.low_freq_factor,
                                                      high_freq_factor=r.high_freq_factor,
                                                      old_context_len=r.old_context_len)
        else:
            self.m.apply_rope_pos_ids_inplace(q, k, self._positions, rope_theta=r.theta)

    def append_kv(self, k, v, kv_cache):
        self.m.append_paged_kv_cache(k, v, self._batch_indices, self._positions, kv_cache, self._indices,
                                     self._indptr, self._last)

    def attention(self, q, kv_cache):
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        n = self._num_decode
        if n:
            if self._decode_wrapper is self._cascade:
                out[:n] = self._cascade.run(q[:n], kv_cache)  # FlashInfer's cascade run() has no out=
            else:
                self._decode.run(q[:n], kv_cache, out=out[:n])
        if self._has_prefill:
            self._prefill.run(q[n:], kv_cache, out=out[n:])
        return out

    def silu_and_mul(self, x):
        return self.m.silu_and_mul(x)

    def sample(self, logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator) -> torch.Tensor:
        logits = logits.float()
        if sampling.greedy:
            return self.m.top_k_sampling_from_probs(self.m.softmax(logits), 1, generator=generator)
        probs = self.m.softmax(logits, temperature=sampling.temperature)
        return self.m.top_k_top_p_sampling_from_probs(probs, sampling.top_k, sampling.top_p, generator=generator)


def rope_inv_freq(rope: RopeSpec, head_dim: int) -> torch.Tensor:
    """``[head_dim / 2]`` float64 inverse frequencies (Hugging Face's default and llama3 rules)."""
    inv = 1.0 / rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if rope.kind == "llama3":
        low_wavelen = rope.old_context_len / rope.low_freq_factor
        high_wavelen = rope.old_context_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / rope.factor, inv)
        smooth = ((rope.old_context_len / wavelen - rope.low_freq_factor)
                  / (rope.high_freq_factor - rope.low_freq_factor))
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = torch.where(medium, smoothed, scaled)
    return inv


class SdpaBackend:
    """The PyTorch baseline of the same loop: the paged cache written by indexing, attention by
    ``scaled_dot_product_attention`` over each step's KV gathered from the pages (decode: one
    padded batched call, the query heads of a KV head folded into the query length; prefill: one
    call per chunk with a bottom-right causal mask), norms/RoPE/SwiGLU/sampling in PyTorch."""

    name = "sdpa"

    def __init__(self, spec: ModelSpec, dtype: torch.dtype, device, page_size: int) -> None:
        self.spec, self.dtype, self.device, self.page_size = spec, dtype, torch.device(device), page_size
        self._inv_freq = rope_inv_freq(spec.rope, spec.head_dim).float().to(self.device)
        self.used_cascade = False

    def plan(self, step: StepBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        from torch.nn.attention.bias import causal_lower_right

        row_page, row_slot = step.token_slots()
        n = self._num_decode = step.num_decode
        kv_len = step.kv_len.astype(np.int64)
        p = self.page_size

        def kv_slots(b, length):
            j = np.arange(length)
            return step.page_indices[step.page_indptr[b] + j // p].astype(np.int64), j % p

        dec_page = dec_slot = dec_valid = np.zeros((0,), np.int64)
        max_len = int(kv_len[:n].max()) if n else 0
        if n:
            j = np.minimum(np.arange(max_len)[None, :], kv_len[:n, None] - 1)  # pad by repeating the last key
            dec_page = step.page_indices[step.page_indptr[:n, None] + j // p].astype(np.int64)
            dec_slot = j % p
            dec_valid = (np.arange(max_len)[None, :] < kv_len[:n, None]).astype(np.int64)
        pf = [kv_slots(b, int(kv_len[b])) for b in range(n, step.num_requests)]
        pf_page = np.concatenate([a for a, _ in pf]) if pf else np.zeros((0,), np.int64)
        pf_slot = np.concatenate([b for _, b in pf]) if pf else np.zeros((0,), np.int64)
        (tokens, positions, self._row_page, self._row_slot, dec_page, dec_slot, dec_valid, self._pf_page,
         self._pf_slot, logit_rows) = _upload([step.tokens, step.positions, row_page, row_slot, dec_page, dec_slot,
                                               dec_valid, pf_page, pf_slot, step.logit_rows], self.device, np.int64)
        self._positions = positions.float()
        if n:
            self._dec_page, self._dec_slot = dec_page.view(n, max_len), dec_slot.view(n, max_len)
            self._dec_mask = dec_valid.view(n, 1, 1, max_len).bool()
        self._chunks = []  # (first row, last row + 1, first slot, last slot + 1, mask) per prefill request
        slot0 = 0
        for b in range(n, step.num_requests):
            r0, r1, length = int(step.qo_indptr[b]), int(step.qo_indptr[b + 1]), int(kv_len[b])
            self._chunks.append((r0, r1, slot0, slot0 + length, causal_lower_right(r1 - r0, length)))
            slot0 += length
        return tokens.int(), logit_rows

    def rmsnorm(self, x, weight, eps):
        xf = x.float()
        return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def fused_add_rmsnorm(self, x, residual, weight, eps):
        residual.add_(x)
        x.copy_(self.rmsnorm(residual, weight, eps))

    def rope_inplace(self, q, k):
        angle = self._positions[:, None] * self._inv_freq[None, :]
        cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
        half = q.shape[-1] // 2
        for x in (q, k):
            x1, x2 = x[..., :half].float(), x[..., half:].float()
            x.copy_(torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1))

    def append_kv(self, k, v, kv_cache):
        kv_cache[self._row_page, :, self._row_slot] = torch.stack([k, v], dim=1)

    def attention(self, q, kv_cache):
        s = self.spec
        group = s.num_qo_heads // s.num_kv_heads
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        n = self._num_decode
        if n:
            kv = kv_cache[self._dec_page, :, self._dec_slot]             # [n, L, 2, Hkv, D]
            k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # [n, Hkv, L, D]
            qd = q[:n].reshape(n, s.num_kv_heads, group, s.head_dim)    # a KV head's query heads as rows
            o = F.scaled_dot_product_attention(qd, k, v, attn_mask=self._dec_mask)
            out[:n] = o.reshape(n, s.num_qo_heads, s.head_dim)
        for r0, r1, s0, s1, mask in self._chunks:
            kv = kv_cache[self._pf_page[s0:s1], :, self._pf_slot[s0:s1]]  # [L, 2, Hkv, D]
            k = kv[:, 0].transpose(0, 1).repeat_interleave(group, dim=0)[None]
            v = kv[:, 1].transpose(0, 1).repeat_interleave(group, dim=0)[None]
            o = F.scaled_dot_product_attention(q[r0:r1].transpose(0, 1)[None], k, v, attn_mask=mask)
            out[r0:r1] = o[0].transpose(0, 1)
        return out

    def silu_and_mul(self, x):
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]

    def sample(self, logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator) -> torch.Tensor:
        logits = logits.float()
        if sampling.greedy:
            return logits.argmax(-1)
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        k = sampling.top_k if 0 < sampling.top_k < probs.shape[-1] else probs.shape[-1]
        top, idx = probs.topk(k, dim=-1)
        drop = top.cumsum(-1) - top >= sampling.top_p  # keep the smallest prefix reaching top_p
        top = top.masked_fill(drop, 0)
        choice = torch.multinomial(top, 1, generator=generator)
        return idx.gather(-1, choice)[:, 0]
