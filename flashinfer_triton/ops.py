"""torch.library registrations for torch.compile: one op per attention hot path, with fake impls.

Eager calls go straight to the launchers (a custom-op boundary costs several microseconds of host
time per call); under ``torch.compile`` the API layer routes through these ops so that
``fullgraph=True`` traces with no graph break.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ._attention import AttentionParams, KVView, launch_attention

_META_FIELDS = ("item_req", "item_q_start", "item_kv_start", "item_kv_end", "item_chunk",
                "qo_indptr", "kv_begin", "kv_len", "part_base",
                "merge_out_row", "merge_part_row", "merge_stride", "merge_count")


@torch.library.custom_op("flashinfer_triton::attention", mutates_args=("out", "lse", "part_o", "part_lse"))
def attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    meta: List[torch.Tensor],
    kv_indices: Optional[torch.Tensor],
    part_o: torch.Tensor,
    part_lse: torch.Tensor,
    alibi: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    mask_indptr: Optional[torch.Tensor],
    ints: List[int],
    floats: List[float],
) -> None:
    (num_qo_heads, num_kv_heads, head_dim, head_dim_vo, block_m, block_n, num_warps, num_stages, paged, causal,
     window_left, pos_enc, custom_mask, write_lse, grid_items, grid_merge,
     kp, kt, kh, vp, vt, vh, page_size, num_pages, call_window) = ints
    logits_soft_cap, sm_scale, rope_scale, rope_theta, q_scale, k_scale, v_scale = floats
    p = AttentionParams(num_qo_heads, num_kv_heads, head_dim, head_dim_vo, block_m, block_n, num_warps, num_stages,
                        bool(paged), bool(causal), window_left, logits_soft_cap, sm_scale, pos_enc, rope_scale,
                        rope_theta, bool(custom_mask))
    kv = KVView(k, v, kp, kt, kh, vp, vt, vh, page_size, num_kv_heads, head_dim, head_dim_vo, num_pages)
    launch_attention(p, q, kv, out, lse if write_lse else None, dict(zip(_META_FIELDS, meta)), kv_indices,
                     part_o, part_lse, grid_items, grid_merge, mask=mask, mask_indptr=mask_indptr, alibi=alibi,
                     q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, window_left=call_window)


@attention_op.register_fake
def _(q, k, v, out, lse, meta, kv_indices, part_o, part_lse, alibi, mask, mask_indptr, ints, floats) -> None:
    return None


def attention_via_op(p: AttentionParams, q, kv: KVView, out, lse, meta, kv_indices, part_o, part_lse, grid_items,
                     grid_merge, mask=None, mask_indptr=None, alibi=None, q_scale=1.0, k_scale=1.0, v_scale=1.0,
                     window_left=None):
    """Same arguments as ``launch_attention``; goes through the registered op (for torch.compile)."""
    write_lse = lse is not None
    if lse is None:
        lse = out.new_empty((0,), dtype=torch.float32)
    ints = [p.num_qo_heads, p.num_kv_heads, p.head_dim, p.head_dim_vo, p.block_m, p.block_n, p.num_warps,
            p.num_stages, int(p.paged), int(p.causal), p.window_left, p.pos_enc, int(p.custom_mask), int(write_lse),
            grid_items, grid_merge, kv.stride_kp, kv.stride_kt, kv.stride_kh, kv.stride_vp, kv.stride_vt,
            kv.stride_vh, kv.page_size, kv.num_pages, p.window_left if window_left is None else window_left]
    floats = [p.logits_soft_cap, p.sm_scale, p.rope_scale, p.rope_theta, q_scale, k_scale, v_scale]
    attention_op(q, kv.k, kv.v, out, lse, [meta[f] for f in _META_FIELDS], kv_indices, part_o, part_lse, alibi,
                 mask, mask_indptr, ints, floats)


def attention(*args, **kwargs):
    """Dispatch: the registered op while torch.compile traces, the direct launcher otherwise."""
    if torch.compiler.is_compiling():
        return attention_via_op(*args, **kwargs)
    return launch_attention(*args, **kwargs)
