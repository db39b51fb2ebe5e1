"""Shared launcher for the attention kernel family (decode, prefill, cascade).

The API modules validate arguments and build a ``WorkPlan`` at plan(); run() calls
``launch_attention`` with tensors only, so it does no host work that depends on tensor values.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from ._utils import LOG2E, check_tensor
from ._launch import launch
from .kernels.attention import FP32_BLOCK_N, attention_constexprs, attention_fwd_kernel, merge_block_config, merge_partials_kernel

# float32 is an extension over FlashInfer (exact matrix products, for references and the CPU tier).
KV_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2)
Q_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass
class KVView:
    """K and V addressed as ``page * stride_p + slot * stride_t + head * stride_h + d`` (ragged KV:
    page 0, slot = token)."""

    k: torch.Tensor
    v: torch.Tensor
    stride_kp: int
    stride_kt: int
    stride_kh: int
    stride_vp: int
    stride_vt: int
    stride_vh: int
    page_size: int
    num_kv_heads: int
    head_dim: int
    head_dim_vo: int
    num_pages: int


def check_layout(kv_layout: str) -> str:
    if kv_layout not in ("NHD", "HND"):
        raise ValueError(f"kv_layout: expected 'NHD' or 'HND', got {kv_layout!r}")
    return kv_layout


def unpack_paged_kv_cache(paged_kv_cache, kv_layout: str, name: str = "paged_kv_cache") -> KVView:
    """Accept ``[num_pages, 2, page_size, H_kv, D]`` (NHD) / ``[num_pages, 2, H_kv, page_size, D]``
    (HND), or a ``(k_cache, v_cache)`` tuple of 4-D tensors in the same layout."""
    if isinstance(paged_kv_cache, (tuple, list)):
        if len(paged_kv_cache) != 2:
            raise ValueError(f"{name}: a tuple must be (k_cache, v_cache), got {len(paged_kv_cache)} entries")
        k, v = paged_kv_cache
        check_tensor(f"{name}[0] (k_cache)", k, dtypes=KV_DTYPES, ndim=4, last_dim_contiguous=True)
        check_tensor(f"{name}[1] (v_cache)", v, dtypes=(k.dtype,), ndim=4, device=k.device, last_dim_contiguous=True)
        if k.shape[:3] != v.shape[:3]:
            raise ValueError(f"{name}: k_cache {tuple(k.shape)} and v_cache {tuple(v.shape)} differ in pages/heads/slots")
        kp, kt, kh = (k.stride(0), k.stride(1), k.stride(2)) if kv_layout == "NHD" else (k.stride(0), k.stride(2), k.stride(1))
        vp, vt, vh = (v.stride(0), v.stride(1), v.stride(2)) if kv_layout == "NHD" else (v.stride(0), v.stride(2), v.stride(1))
    else:
        check_tensor(name, paged_kv_cache, dtypes=KV_DTYPES, ndim=5, last_dim_contiguous=True)
        if paged_kv_cache.shape[1] != 2:
            raise ValueError(f"{name}: expected dimension 1 of size 2 (K and V), got shape {tuple(paged_kv_cache.shape)}")
        k, v = paged_kv_cache[:, 0], paged_kv_cache[:, 1]
        kp, kt, kh = (k.stride(0), k.stride(1), k.stride(2)) if kv_layout == "NHD" else (k.stride(0), k.stride(2), k.stride(1))
        vp, vt, vh = kp, kt, kh
    if kv_layout == "NHD":
        num_pages, page_size, h_kv, d = k.shape
    else:
        num_pages, h_kv, page_size, d = k.shape
    return KVView(k, v, kp, kt, kh, vp, vt, vh, page_size, h_kv, d, v.shape[-1], num_pages)


def unpack_ragged_kv(k: torch.Tensor, v: torch.Tensor, kv_layout: str) -> KVView:
    """Contiguous-token K/V: ``[kv_len, H_kv, D]`` (NHD) or ``[H_kv, kv_len, D]`` (HND)."""
    check_tensor("k", k, dtypes=KV_DTYPES, ndim=3, last_dim_contiguous=True)
    check_tensor("v", v, dtypes=(k.dtype,), ndim=3, device=k.device, last_dim_contiguous=True)
    if kv_layout == "NHD":
        n, h, d = k.shape
        kt, kh, vt, vh = k.stride(0), k.stride(1), v.stride(0), v.stride(1)
        nv, hv = v.shape[0], v.shape[1]
    else:
        h, n, d = k.shape
        kt, kh, vt, vh = k.stride(1), k.stride(0), v.stride(1), v.stride(0)
        hv, nv = v.shape[0], v.shape[1]
    if (nv, hv) != (n, h):
        raise ValueError(f"v: expected {n} tokens and {h} heads like k, got shape {tuple(v.shape)}")
    return KVView(k, v, 0, kt, kh, 0, vt, vh, 1, h, d, v.shape[-1], 1)


@functools.lru_cache(maxsize=None)
def _dummy(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(1, dtype=dtype, device=device)


@dataclass
class AttentionParams:
    """Everything run() needs besides tensors: constexprs and scalar arguments, fixed at plan()."""

    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    head_dim_vo: int
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    paged: bool
    causal: bool
    window_left: int
    logits_soft_cap: float
    sm_scale: float
    pos_enc: int
    rope_scale: float
    rope_theta: float
    custom_mask: bool

    @property
    def group(self) -> int:
        return self.num_qo_heads // self.num_kv_heads

    @property
    def tile_q(self) -> int:
        return self.block_m // self.group

    def constexprs(self, has_window: bool, write_lse: bool, fp32: bool) -> Dict[str, object]:
        key = (has_window, write_lse, fp32)
        cache = self.__dict__.setdefault("_constexpr_cache", {})
        if key not in cache:
            cx = attention_constexprs(self.group, self.block_m, self.block_n, self.head_dim, self.head_dim_vo, self.paged,
                                      self.causal, has_window, self.logits_soft_cap > 0, self.pos_enc, self.custom_mask,
                                      write_lse)
            if fp32:
                # float32 operands (an extension over FlashInfer, for exact references) take four times
                # the shared memory of bf16: small KV blocks, one stage, fit MI300X's 64 KB LDS.
                cx["BLOCK_N"] = FP32_BLOCK_N
            cx["DOT_PRECISION"] = "ieee" if fp32 else "tf32"
            cache[key] = cx
        return cache[key]


class AttentionLauncher:
    """The launch of one plan: everything that does not change between run() calls (metadata views,
    partial buffers, grids, constexprs, the alignment part of the specialization key) is fixed here
    at plan() time, so run() only adds the per-call tensors, strides and scales."""

    def __init__(self, p: AttentionParams, meta: Dict[str, torch.Tensor], kv_indices: Optional[torch.Tensor],
                 part_o: torch.Tensor, part_lse: torch.Tensor, grid_items: int, grid_merge: int,
                 mask: Optional[torch.Tensor] = None, mask_indptr: Optional[torch.Tensor] = None,
                 alibi: Optional[torch.Tensor] = None):
        device = part_o.device
        i32 = _dummy(device, torch.int32)
        self.p = p
        self.grid = (grid_items, p.num_kv_heads, 1)
        self.lse_dummy = _dummy(device, torch.float32)
        self.mid = (part_o, part_lse,
                    meta["item_req"], meta["item_q_start"], meta["item_kv_start"], meta["item_kv_end"], meta["item_chunk"],
                    meta["qo_indptr"], meta["kv_begin"], meta["kv_len"], meta["part_base"],
                    kv_indices if kv_indices is not None else i32,
                    mask if mask is not None else _dummy(device, torch.uint8),
                    mask_indptr if mask_indptr is not None else i32,
                    alibi if alibi is not None else self.lse_dummy)
        self.rope = (1.0 / p.rope_scale, -math.log2(p.rope_theta))
        # Everything fixed for this plan, folded into one hash: the per-call key stays short.
        self.static_key = hash((id(attention_fwd_kernel), p.num_warps, p.num_stages, p.group, p.block_m, p.block_n,
                                p.head_dim, p.head_dim_vo, p.paged, p.causal, p.logits_soft_cap > 0, p.pos_enc,
                                p.custom_mask, p.num_qo_heads) + tuple(t.data_ptr() & 15 == 0 for t in self.mid))
        self.merge_grid = None
        if grid_merge > 0:
            block_c, warps = merge_block_config(p.num_qo_heads, p.head_dim_vo)
            self.merge_grid = (grid_merge, p.num_qo_heads, 1)
            self.merge_meta = (meta["merge_out_row"], meta["merge_part_row"], meta["merge_stride"], meta["merge_count"])
            self.merge_cx = {w: dict(HEAD_DIM_VO=p.head_dim_vo, BLOCK_DV=_pow2(p.head_dim_vo), BLOCK_C=block_c, WRITE_LSE=w)
                             for w in (False, True)}
            self.merge_warps = warps
            self.merge_key = hash((id(merge_partials_kernel), p.num_qo_heads, p.head_dim_vo, block_c, warps)
                                  + tuple(t.data_ptr() & 15 == 0 for t in (part_o, part_lse) + self.merge_meta))

    def __call__(self, q: torch.Tensor, kv: KVView, out: torch.Tensor, lse: Optional[torch.Tensor],
                 q_scale: float = 1.0, k_scale: float = 1.0, v_scale: float = 1.0,
                 window_left: Optional[int] = None) -> None:
        """``q`` [N_q, H_qo, D]; ``out`` [N_q, H_qo, D_vo]; ``lse`` [N_q, H_qo] float32 (base 2) or None."""
        p = self.p
        write_lse = lse is not None
        lse_arg = lse if write_lse else self.lse_dummy
        window = p.window_left if window_left is None else window_left
        scale = p.sm_scale * q_scale * k_scale
        scale_arg = scale / p.logits_soft_cap if p.logits_soft_cap > 0 else scale * LOG2E
        ints = (q.stride(0), q.stride(1), kv.stride_kp, kv.stride_kt, kv.stride_kh, kv.stride_vp, kv.stride_vt,
                kv.stride_vh, out.stride(0), out.stride(1), p.num_qo_heads, kv.page_size)
        fp32 = q.dtype == torch.float32
        if self.grid[0] > 0:
            ptrs = (q, kv.k, kv.v, out, lse_arg)
            # Pointer dtypes are part of the signature: a float16 call must never reuse a bfloat16 binary.
            key = (self.static_key, ints, window, write_lse, q.dtype, kv.k.dtype, out.dtype,
                   tuple(t.data_ptr() & 15 == 0 for t in ptrs))
            launch(attention_fwd_kernel, self.grid, ptrs + self.mid + ints
                   + (scale_arg, p.logits_soft_cap, window) + self.rope + (v_scale,),
                   p.constexprs(window >= 0, write_lse, fp32), p.num_warps, 1 if fp32 else p.num_stages, key,
                   prehashed=True)
        if self.merge_grid is not None:
            ints = (out.stride(0), out.stride(1), p.num_qo_heads)
            key = (self.merge_key, ints, write_lse, out.dtype, out.data_ptr() & 15 == 0, lse_arg.data_ptr() & 15 == 0)
            launch(merge_partials_kernel, self.merge_grid, self.mid[:2] + (out, lse_arg) + self.merge_meta + ints + (v_scale,),
                   self.merge_cx[write_lse], self.merge_warps, 1, key, prehashed=True)


def launch_attention(p: AttentionParams, q, kv: KVView, out, lse, meta, kv_indices, part_o, part_lse, grid_items: int,
                     grid_merge: int, mask=None, mask_indptr=None, alibi=None, q_scale: float = 1.0,
                     k_scale: float = 1.0, v_scale: float = 1.0, window_left: Optional[int] = None) -> None:
    """One-shot form of ``AttentionLauncher`` (single-request APIs and the torch.compile op)."""
    AttentionLauncher(p, meta, kv_indices, part_o, part_lse, grid_items, grid_merge, mask, mask_indptr, alibi)(
        q, kv, out, lse, q_scale, k_scale, v_scale, window_left)


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def partial_buffers(workspace: torch.Tensor, rows: int, num_qo_heads: int, head_dim_vo: int):
    """Carve float32 partial (o, lse) for ``rows`` query rows out of the float workspace buffer
    (views of it; the same request returns the same views)."""
    key = (workspace.data_ptr(), workspace.numel(), rows, num_qo_heads, head_dim_vo)
    cached = _PARTIALS.get(key)
    if cached is not None:
        return cached
    n_o = rows * num_qo_heads * head_dim_vo
    n_lse = rows * num_qo_heads
    need = 4 * (n_o + n_lse)
    have = workspace.numel() * workspace.element_size()
    if need > have:
        raise ValueError(f"float_workspace_buffer: this plan needs {need} bytes for split-KV partials, "
                         f"the buffer has {have}; pass a larger buffer (FlashInfer uses 128 MB) or disable_split_kv=True")
    flat = workspace.view(torch.uint8).view(-1)[: max(need, 8)].view(torch.float32)
    if len(_PARTIALS) > 64:
        _PARTIALS.clear()
    _PARTIALS[key] = (flat[:n_o], flat[n_o:n_o + n_lse])
    return _PARTIALS[key]


_PARTIALS: Dict[tuple, tuple] = {}
