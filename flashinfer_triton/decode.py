"""Decode attention over a paged KV cache: FlashInfer's decode API on the shared attention kernel.

LSE convention (every function here that returns one): base 2, ``log2(sum_j 2^(s_j * log2 e))``
over the scaled logits ``s_j`` (after soft cap and ALiBi), float32.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch

from . import _scheduler, ops
from ._attention import (
    Q_DTYPES,
    AttentionLauncher,
    AttentionParams,
    KVView,
    check_layout,

    partial_buffers,
    unpack_paged_kv_cache,
    unpack_ragged_kv,
)
from ._utils import (
    alibi_slopes,
    canonicalize_dtype,
    check_int32_index,
    check_tensor,
    default_sm_scale,
    num_compute_units,
    pos_encoding_code,
)
from .kernels.attention import decode_block_config

SUPPORTED_HEAD_DIMS = (64, 80, 96, 112, 128, 192, 256)


def _check_common_options(num_qo_heads, num_kv_heads, head_dim, logits_soft_cap, rope_scale, rope_theta):
    if num_qo_heads <= 0 or num_kv_heads <= 0 or num_qo_heads % num_kv_heads != 0:
        raise ValueError(f"num_qo_heads ({num_qo_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise NotImplementedError(f"head_dim={head_dim}: supported head dims are {SUPPORTED_HEAD_DIMS}")
    if logits_soft_cap is not None and logits_soft_cap < 0:
        raise ValueError(f"logits_soft_cap: expected None, 0 or a positive value, got {logits_soft_cap}")
    if rope_scale is not None and rope_scale <= 0:
        raise ValueError(f"rope_scale: expected a positive value, got {rope_scale}")
    if rope_theta is not None and rope_theta <= 0:
        raise ValueError(f"rope_theta: expected a positive value, got {rope_theta}")


def _scale_arg(name, value) -> float:
    if value is None:
        return 1.0
    if isinstance(value, torch.Tensor):
        raise NotImplementedError(f"{name} as a tensor: pass a Python float (a tensor would need a host sync)")
    return float(value)


def single_decode_with_kv_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_layout: str = "NHD",
    pos_encoding_mode: str = "NONE",
    use_tensor_cores: bool = False,
    q_scale: Optional[float] = None,
    k_scale: Optional[float] = None,
    v_scale: Optional[float] = None,
    window_left: int = -1,
    logits_soft_cap: Optional[float] = None,
    sm_scale: Optional[float] = None,
    rope_scale: Optional[float] = None,
    rope_theta: Optional[float] = None,
    return_lse: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Decode attention of one request over a contiguous KV cache.

    Parameters
    ----------
    q : torch.Tensor
        shape: ``[num_qo_heads, head_dim]``, dtype: float16 or bfloat16.
    k, v : torch.Tensor
        shape: ``[kv_len, num_kv_heads, head_dim]`` (NHD) or ``[num_kv_heads, kv_len, head_dim]`` (HND),
        dtype: float16, bfloat16 or float8 (then ``k_scale``/``v_scale`` dequantize).
    pos_encoding_mode : "NONE", "ROPE_LLAMA" (rotary applied to q at position kv_len - 1 and to k
        in the kernel, ``rope_scale`` default 1, ``rope_theta`` default 1e4) or "ALIBI".
    window_left : int, -1 for no sliding window; otherwise keys at position >= kv_len - 1 - window_left.
    logits_soft_cap : c > 0 maps a scaled logit x to ``c * tanh(x / c)``.
    sm_scale : default ``1 / sqrt(head_dim)``.

    Returns
    -------
    out : ``[num_qo_heads, head_dim]`` in q's dtype; with ``return_lse`` also
    lse : ``[num_qo_heads]`` float32, base 2.
    """
    check_layout(kv_layout)
    check_tensor("q", q, dtypes=Q_DTYPES, ndim=2, last_dim_contiguous=True)
    kv = unpack_ragged_kv(k, v, kv_layout)
    if k.device != q.device:
        raise ValueError(f"k: expected a tensor on {q.device} like q, got one on {k.device}")
    num_qo_heads, head_dim = q.shape
    if head_dim != kv.head_dim:
        raise ValueError(f"q: head_dim {head_dim} differs from k's {kv.head_dim}")
    _check_common_options(num_qo_heads, kv.num_kv_heads, head_dim, logits_soft_cap, rope_scale, rope_theta)
    kv_len = kv.k.shape[0] if kv_layout == "NHD" else kv.k.shape[1]
    params = _make_params(num_qo_heads, kv.num_kv_heads, head_dim, kv.head_dim_vo, False, pos_encoding_mode,
                          window_left, logits_soft_cap, sm_scale, rope_scale, rope_theta)
    plan = _scheduler.plan_work(
        np.array([0, 1], dtype=np.int64), np.array([kv_len], dtype=np.int64), np.zeros(1, dtype=np.int64),
        1, params.block_n, kv.num_kv_heads, num_compute_units(), causal=False)
    meta = _scheduler.DeviceMetadata(q.device, fixed=False).upload(plan)
    part_o = torch.empty(plan.num_partial_rows * num_qo_heads * kv.head_dim_vo, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(plan.num_partial_rows * num_qo_heads, dtype=torch.float32, device=q.device)
    out = torch.empty((1, num_qo_heads, kv.head_dim_vo), dtype=q.dtype, device=q.device)
    lse = torch.empty((1, num_qo_heads), dtype=torch.float32, device=q.device) if return_lse else None
    alibi = alibi_slopes(num_qo_heads, q.device) if params.pos_enc == 2 else None
    ops.attention(params, q.unsqueeze(0), kv, out, lse, meta, None, part_o, part_lse,
                     plan.grid_items, plan.grid_merge_rows, alibi=alibi,
                     q_scale=_scale_arg("q_scale", q_scale), k_scale=_scale_arg("k_scale", k_scale),
                     v_scale=_scale_arg("v_scale", v_scale))
    if return_lse:
        return out[0], lse[0]
    return out[0]


def _make_params(num_qo_heads, num_kv_heads, head_dim, head_dim_vo, paged, pos_encoding_mode, window_left,
                 logits_soft_cap, sm_scale, rope_scale, rope_theta) -> AttentionParams:
    group = num_qo_heads // num_kv_heads
    block_m, block_n, warps, stages = decode_block_config(group, head_dim)
    if group > block_m:
        raise NotImplementedError(f"num_qo_heads / num_kv_heads = {group}: GQA groups above {block_m} are not supported")
    if not isinstance(window_left, int):
        raise TypeError(f"window_left: expected an int, got {type(window_left).__name__}")
    return AttentionParams(
        num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, head_dim_vo=head_dim_vo,
        block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages, paged=paged, causal=False,
        window_left=window_left, logits_soft_cap=float(logits_soft_cap or 0.0),
        sm_scale=default_sm_scale(head_dim, sm_scale), pos_enc=pos_encoding_code(pos_encoding_mode),
        rope_scale=1.0 if rope_scale is None else float(rope_scale),
        rope_theta=1e4 if rope_theta is None else float(rope_theta), custom_mask=False,
    )


class BatchDecodeWithPagedKVCacheWrapper:
    """Batch decode (one query token per request) over a paged KV cache, FlashInfer's wrapper.

    ``plan()`` once per batch (host work, one async copy of the metadata); ``run()`` once per layer.
    With ``use_cuda_graph=True`` the page table lives in the fixed buffers given here, the grids are
    sized for the buffers' batch size, and ``run()`` captured in a graph replays correctly after a
    new ``plan()`` with other lengths.

    Parameters
    ----------
    float_workspace_buffer : torch.Tensor
        uint8 (any dtype accepted), on the device; holds split-KV partials (128 MB is plenty).
    kv_layout : "NHD" or "HND".
    use_cuda_graph : bool
    use_tensor_cores : bool
        Accepted for compatibility: the Triton kernel always uses the matrix units.
    paged_kv_indptr_buffer : ``[batch_size + 1]`` int32, required with ``use_cuda_graph``.
    paged_kv_indices_buffer : ``[max_num_pages]`` int32, required with ``use_cuda_graph``.
    paged_kv_last_page_len_buffer : ``[batch_size]`` int32, required with ``use_cuda_graph``.
    backend : "auto" or "triton".
    """

    def __init__(
        self,
        float_workspace_buffer: torch.Tensor,
        kv_layout: str = "NHD",
        use_cuda_graph: bool = False,
        use_tensor_cores: bool = False,
        paged_kv_indptr_buffer: Optional[torch.Tensor] = None,
        paged_kv_indices_buffer: Optional[torch.Tensor] = None,
        paged_kv_last_page_len_buffer: Optional[torch.Tensor] = None,
        backend: str = "auto",
        jit_args=None,
        jit_kwargs=None,
    ) -> None:
        check_layout(kv_layout)
        check_tensor("float_workspace_buffer", float_workspace_buffer)
        if backend not in ("auto", "triton"):
            raise NotImplementedError(f"backend={backend!r}: flashinfer_triton has the 'triton' backend only ('auto' picks it)")
        if jit_args is not None or jit_kwargs is not None:
            raise NotImplementedError("jit_args/jit_kwargs: custom JIT variants are written as Triton functions here")
        self._float_workspace_buffer = float_workspace_buffer
        self.device = float_workspace_buffer.device
        self._kv_layout = kv_layout
        self._use_cuda_graph = use_cuda_graph
        self._use_tensor_cores = use_tensor_cores
        if use_cuda_graph:
            for name, buf in (("paged_kv_indptr_buffer", paged_kv_indptr_buffer),
                              ("paged_kv_indices_buffer", paged_kv_indices_buffer),
                              ("paged_kv_last_page_len_buffer", paged_kv_last_page_len_buffer)):
                if buf is None:
                    raise ValueError(f"{name}: required when use_cuda_graph=True")
                check_int32_index(name, buf, device=self.device)
            if paged_kv_last_page_len_buffer.numel() != paged_kv_indptr_buffer.numel() - 1:
                raise ValueError("paged_kv_last_page_len_buffer: expected batch_size entries, where "
                                 "paged_kv_indptr_buffer has batch_size + 1")
            self._fixed_batch_size = paged_kv_indptr_buffer.numel() - 1
        else:
            self._fixed_batch_size = None
        self._paged_kv_indptr_buf = paged_kv_indptr_buffer
        self._paged_kv_indices_buf = paged_kv_indices_buffer
        self._paged_kv_last_page_len_buf = paged_kv_last_page_len_buffer
        self._meta = _scheduler.DeviceMetadata(self.device, fixed=use_cuda_graph)
        self._planned = False
        self._kv_cache = {}

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    @property
    def use_tensor_cores(self) -> bool:
        return self._use_tensor_cores

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer: Optional[torch.Tensor] = None) -> None:
        """Swap the float workspace (the int workspace is accepted and unused: metadata has its own buffer)."""
        check_tensor("float_workspace_buffer", float_workspace_buffer, device=self.device)
        self._float_workspace_buffer = float_workspace_buffer

    def plan(
        self,
        indptr: torch.Tensor,
        indices: torch.Tensor,
        last_page_len: torch.Tensor,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        page_size: int,
        pos_encoding_mode: str = "NONE",
        window_left: int = -1,
        logits_soft_cap: Optional[float] = None,
        q_data_type: Union[str, torch.dtype] = "float16",
        kv_data_type: Optional[Union[str, torch.dtype]] = None,
        o_data_type: Optional[Union[str, torch.dtype]] = None,
        data_type: Optional[Union[str, torch.dtype]] = None,
        sm_scale: Optional[float] = None,
        rope_scale: Optional[float] = None,
        rope_theta: Optional[float] = None,
        non_blocking: bool = True,
        block_tables: Optional[torch.Tensor] = None,
        seq_lens: Optional[torch.Tensor] = None,
        fixed_split_size: Optional[int] = None,
        disable_split_kv: bool = False,
    ) -> None:
        """Plan decode for one batch.

        Parameters
        ----------
        indptr : ``[batch_size + 1]`` int32, page-table CSR offsets.
        indices : ``[indptr[-1]]`` int32, page ids.
        last_page_len : ``[batch_size]`` int32, tokens in each request's last page, in [1, page_size]
            (a request with no pages has length 0).
        num_qo_heads, num_kv_heads, head_dim, page_size : ints; num_qo_heads % num_kv_heads == 0.
        pos_encoding_mode : "NONE", "ROPE_LLAMA" or "ALIBI".
        window_left : -1 or the sliding-window size (keys at position >= kv_len - 1 - window_left).
        logits_soft_cap : None/0 or c > 0 (``c * tanh(x / c)`` on scaled logits x).
        q_data_type, kv_data_type, o_data_type : dtypes or names; kv defaults to q, o to q.
        fixed_split_size : KV chunk size in pages for every request (FlashInfer's unit; batch-invariant results).
        disable_split_kv : never split a request's KV.
        """
        if block_tables is not None or seq_lens is not None:
            raise NotImplementedError("block_tables/seq_lens: these belong to FlashInfer's trtllm-gen backend; pass the CSR page table")
        check_int32_index("indptr", indptr)
        check_int32_index("indices", indices)
        check_int32_index("last_page_len", last_page_len, numel=indptr.numel() - 1)
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size: expected a positive int, got {page_size!r}")
        _check_common_options(num_qo_heads, num_kv_heads, head_dim, logits_soft_cap, rope_scale, rope_theta)
        batch = indptr.numel() - 1
        if self._fixed_batch_size is not None and batch != self._fixed_batch_size:
            raise ValueError(f"indptr: under CUDA graphs the batch size is fixed at {self._fixed_batch_size} by "
                             f"paged_kv_indptr_buffer, got {batch}")
        q_dtype = canonicalize_dtype(q_data_type, "q_data_type")
        kv_dtype = canonicalize_dtype(kv_data_type or data_type, "kv_data_type") or q_dtype
        o_dtype = canonicalize_dtype(o_data_type, "o_data_type") or q_dtype

        # One device->host transfer for everything plan() must read (the page-id range included, so
        # run() can reject an out-of-range page id with no device work).
        if indices.device.type == "cpu" and indptr.device.type == "cpu" and last_page_len.device.type == "cpu":
            indptr_h = indptr.numpy().astype(np.int64)
            lpl_h = last_page_len.numpy().astype(np.int64)
            idx = indices.numpy()
            min_page_id, max_page_id = (int(idx.min()), int(idx.max())) if idx.size else (0, -1)
        else:
            if indices.numel():
                lo, hi = torch.aminmax(indices)
                idx_range = torch.stack([lo, hi])
            else:
                idx_range = torch.tensor([0, -1], dtype=torch.int32, device=indices.device)
            host = torch.cat([indptr.to(self.device), last_page_len.to(self.device), idx_range.to(self.device)]).cpu().numpy()
            indptr_h = host[: batch + 1].astype(np.int64)
            lpl_h = host[batch + 1: 2 * batch + 1].astype(np.int64)
            min_page_id, max_page_id = int(host[-2]), int(host[-1])
        num_pages = indptr_h[1:] - indptr_h[:-1]
        if indptr_h[0] != 0 or num_pages.min(initial=0) < 0:
            raise ValueError("indptr: expected a non-decreasing CSR offset array starting at 0")
        if indptr_h[-1] != indices.numel():
            raise ValueError(f"indices: expected indptr[-1] = {indptr_h[-1]} entries, got {indices.numel()}")
        if min_page_id < 0:
            raise ValueError(f"indices: page ids must be non-negative, got {min_page_id}")
        kv_len = np.where(num_pages > 0, (num_pages - 1) * page_size + lpl_h, 0)
        if lpl_h.max(initial=1) > page_size or ((lpl_h < 1) & (num_pages > 0)).any():
            raise ValueError(f"last_page_len: every entry must be in [1, page_size={page_size}] for a request with pages")

        params = _make_params(num_qo_heads, num_kv_heads, head_dim, head_dim, True, pos_encoding_mode,
                              window_left, logits_soft_cap, sm_scale, rope_scale, rope_theta)
        num_cus = num_compute_units(self.device.index or 0) if self.device.type == "cuda" else num_compute_units()
        pad_to = None
        if self._use_cuda_graph:
            target = -(-_scheduler.PROGRAMS_PER_CU * num_cus // num_kv_heads)
            pad_to = (batch + target, batch)
        plan = _scheduler.plan_decode(kv_len, indptr_h[:-1], params.block_n, num_kv_heads, num_cus,
                                      disable_split_kv=disable_split_kv,
                                      fixed_split_size=None if fixed_split_size is None else fixed_split_size * page_size,
                                      pad_to=pad_to)
        if self._use_cuda_graph:
            if indices.numel() > self._paged_kv_indices_buf.numel():
                raise ValueError(f"indices: {indices.numel()} page ids exceed paged_kv_indices_buffer "
                                 f"({self._paged_kv_indices_buf.numel()})")
            self._paged_kv_indptr_buf.copy_(indptr, non_blocking=non_blocking)
            self._paged_kv_last_page_len_buf.copy_(last_page_len, non_blocking=non_blocking)
            self._paged_kv_indices_buf[: indices.numel()].copy_(indices, non_blocking=non_blocking)
            self._kv_indices = self._paged_kv_indices_buf
            rows = pad_to[0]  # one partial row per item at most
        else:
            self._kv_indices = indices if indices.device == self.device else indices.to(self.device, non_blocking=non_blocking)
            rows = plan.num_partial_rows
        self._part_o, self._part_lse = partial_buffers(self._float_workspace_buffer, rows, num_qo_heads, head_dim)
        self._meta_views = self._meta.upload(plan, non_blocking=non_blocking)
        self._alibi = alibi_slopes(num_qo_heads, self.device) if params.pos_enc == 2 else None
        self._launcher = AttentionLauncher(params, self._meta_views, self._kv_indices, self._part_o, self._part_lse,
                                           plan.grid_items, plan.grid_merge_rows if (self._use_cuda_graph or plan.num_merge_rows) else 0,
                                           alibi=self._alibi)
        self._plan = plan
        self._params = params
        self._batch_size = batch
        self._page_size = page_size
        self._max_page_id = max_page_id
        self._q_dtype, self._kv_dtype, self._o_dtype = q_dtype, kv_dtype, o_dtype
        self._grid_merge = plan.grid_merge_rows if (self._use_cuda_graph or plan.num_merge_rows) else 0
        self._planned = True

    begin_forward = plan

    def run(
        self,
        q: torch.Tensor,
        paged_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
        *args,
        q_scale: Optional[float] = None,
        k_scale: Optional[float] = None,
        v_scale: Optional[float] = None,
        out: Optional[torch.Tensor] = None,
        lse: Optional[torch.Tensor] = None,
        return_lse: bool = False,
        enable_pdl: Optional[bool] = None,
        window_left: Optional[int] = None,
        sinks: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Decode attention for the planned batch.

        Parameters
        ----------
        q : ``[batch_size, num_qo_heads, head_dim]``, the planned q dtype.
        paged_kv_cache : ``[num_pages, 2, page_size, num_kv_heads, head_dim]`` (NHD) or
            ``[num_pages, 2, num_kv_heads, page_size, head_dim]`` (HND), or a (k_cache, v_cache) tuple.
        q_scale, k_scale, v_scale : Python floats; q_scale * k_scale multiplies sm_scale, v_scale the output.
        out : optional ``[batch_size, num_qo_heads, head_dim]`` output buffer.
        lse : optional ``[batch_size, num_qo_heads]`` float32 buffer (implies returning it).
        window_left : overrides the planned window for this call.

        Returns
        -------
        out, or (out, lse) with lse ``[batch_size, num_qo_heads]`` float32 in base 2.
        """
        if args:
            raise TypeError("run(): q_scale, k_scale, v_scale, out, lse, ... are keyword-only")
        if not self._planned:
            raise RuntimeError("run(): call plan() first")
        if enable_pdl:
            raise NotImplementedError("enable_pdl=True: programmatic dependent launch is not available through Triton")
        if sinks is not None:
            raise NotImplementedError("sinks: attention sinks are not supported yet")
        p = self._params
        kv = self._kv_view(paged_kv_cache)
        b = self._batch_size
        if q.shape != (b, p.num_qo_heads, p.head_dim) or q.dtype != self._q_dtype or q.device != self.device or q.stride(-1) != 1:
            self._raise_bad_q(q)
        if out is None:
            out = torch.empty((b, p.num_qo_heads, p.head_dim), dtype=self._o_dtype, device=q.device)
        else:
            check_tensor("out", out, dtypes=(self._o_dtype,), device=self.device, last_dim_contiguous=True)
            if out.shape != (b, p.num_qo_heads, p.head_dim):
                raise ValueError(f"out: expected shape [{b}, {p.num_qo_heads}, {p.head_dim}], got {list(out.shape)}")
        if lse is not None:
            check_tensor("lse", lse, dtypes=(torch.float32,), device=self.device)
            if lse.shape != (b, p.num_qo_heads) or not lse.is_contiguous():
                raise ValueError(f"lse: expected a contiguous [{b}, {p.num_qo_heads}] float32 tensor, got {list(lse.shape)}")
            return_lse = True
        elif return_lse:
            lse = torch.empty((b, p.num_qo_heads), dtype=torch.float32, device=q.device)
        qs = 1.0 if q_scale is None else _scale_arg("q_scale", q_scale)
        ks = 1.0 if k_scale is None else _scale_arg("k_scale", k_scale)
        vs = 1.0 if v_scale is None else _scale_arg("v_scale", v_scale)
        if torch.compiler.is_compiling():
            ops.attention_via_op(p, q, kv, out, lse, self._meta_views, self._kv_indices, self._part_o, self._part_lse,
                                 self._plan.grid_items, self._grid_merge, alibi=self._alibi, q_scale=qs, k_scale=ks,
                                 v_scale=vs, window_left=window_left)
        else:
            self._launcher(q, kv, out, lse, qs, ks, vs, window_left)
        return (out, lse) if return_lse else out

    forward = run

    def _kv_view(self, paged_kv_cache) -> KVView:
        """Unpack and validate the cache once per cache object (run() sees the same per-layer
        tensors every step); a new object, or one whose storage moved, is checked again."""
        if isinstance(paged_kv_cache, torch.Tensor):
            key = id(paged_kv_cache)
            ptr = paged_kv_cache.data_ptr()
        else:
            key = tuple(id(t) for t in paged_kv_cache)
            ptr = tuple(t.data_ptr() for t in paged_kv_cache)
        p = self._params
        expect = (self._kv_dtype, self._page_size, p.num_kv_heads, p.head_dim)
        hit = self._kv_cache.get(key)
        if hit is not None and hit[0] == ptr and hit[2] == expect:
            kv = hit[1]
            if self._max_page_id >= kv.num_pages:
                raise ValueError(f"indices: page id {self._max_page_id} is out of range for a cache of {kv.num_pages} pages")
            return kv
        kv = unpack_paged_kv_cache(paged_kv_cache, self._kv_layout)
        if kv.k.dtype != self._kv_dtype:
            raise TypeError(f"paged_kv_cache: expected dtype {self._kv_dtype} (plan's kv_data_type), got {kv.k.dtype}")
        if kv.page_size != self._page_size or kv.num_kv_heads != p.num_kv_heads or kv.head_dim != p.head_dim:
            raise ValueError(f"paged_kv_cache: expected page_size {self._page_size}, {p.num_kv_heads} KV heads, head_dim "
                             f"{p.head_dim} in {self._kv_layout} layout (planned), got shape {tuple(kv.k.shape)} per K/V")
        if kv.k.device != self.device:
            raise ValueError(f"paged_kv_cache: expected a tensor on {self.device}, got one on {kv.k.device}")
        if self._max_page_id >= kv.num_pages:
            raise ValueError(f"indices: page id {self._max_page_id} is out of range for a cache of {kv.num_pages} pages")
        if len(self._kv_cache) > 256:
            self._kv_cache.clear()
        # Holding the cache object keeps id() unique while the entry lives.
        self._kv_cache[key] = (ptr, kv, expect, paged_kv_cache)
        return kv

    def _raise_bad_q(self, q) -> None:
        p = self._params
        check_tensor("q", q, dtypes=(self._q_dtype,), device=self.device, last_dim_contiguous=True)
        raise ValueError(f"q: expected shape [{self._batch_size}, {p.num_qo_heads}, {p.head_dim}] (planned), got {list(q.shape)}")

    def run_return_lse(self, q, paged_kv_cache, *args, **kwargs):
        kwargs["return_lse"] = True
        return self.run(q, paged_kv_cache, *args, **kwargs)

    forward_return_lse = run_return_lse

    def end_forward(self) -> None:
        """Kept for FlashInfer compatibility: nothing to release."""


class CUDAGraphBatchDecodeWithPagedKVCacheWrapper(BatchDecodeWithPagedKVCacheWrapper):
    """``BatchDecodeWithPagedKVCacheWrapper`` with ``use_cuda_graph=True`` and the fixed buffers
    ``indptr_buffer [batch_size + 1]``, ``indices_buffer [max_pages]``, ``last_page_len_buffer
    [batch_size]`` (int32) holding the page table across plans."""

    def __init__(self, workspace_buffer, indptr_buffer, indices_buffer, last_page_len_buffer,
                 kv_layout: str = "NHD", use_tensor_cores: bool = False) -> None:
        super().__init__(workspace_buffer, kv_layout, use_cuda_graph=True, use_tensor_cores=use_tensor_cores,
                         paged_kv_indptr_buffer=indptr_buffer, paged_kv_indices_buffer=indices_buffer,
                         paged_kv_last_page_len_buffer=last_page_len_buffer)
