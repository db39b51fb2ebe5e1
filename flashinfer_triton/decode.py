"""Decode attention over a paged KV cache: FlashInfer's decode API on the shared attention engine.

LSE convention (every function here that returns one): base 2, ``log2(sum_j 2^(s_j * log2 e))``
over the scaled logits ``s_j`` (after soft cap and ALiBi), float32.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._utils import check_int32_index, check_tensor
from .attention.kv import KVView, check_layout, read_page_table, unpack_paged_kv_cache, unpack_ragged_kv, ragged_kv_len
from .attention.ops import run_attention
from .attention.options import Q_DTYPES, check_backend, make_options, scale_arg
from .attention.plan import PlannedAttention, graph_bounds, plan_attention
from .attention.scheduler import DeviceMetadata
from .attention.variant import AttentionVariant, check_variant, run_params
from .attention.workspace import Workspace, single_request_workspace
from .attention.config import select_config
from .attention.device import device_info


def check_sinks(sinks: Optional[torch.Tensor], num_qo_heads: int, device: torch.device) -> Optional[torch.Tensor]:
    """``sinks``: float32 ``[num_qo_heads]`` learned logits (natural units), or None."""
    if sinks is None:
        return None
    check_tensor("sinks", sinks, dtypes=(torch.float32,), ndim=1, device=device)
    if sinks.numel() != num_qo_heads or not sinks.is_contiguous():
        raise ValueError(f"sinks: expected a contiguous float32 tensor of num_qo_heads = {num_qo_heads} entries, "
                         f"got shape {list(sinks.shape)}")
    return sinks


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
    variant: Optional[AttentionVariant] = None,
    variant_args: Sequence = (),
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Decode attention of one request over a contiguous KV cache.

    Parameters
    ----------
    q : torch.Tensor
        shape: ``[num_qo_heads, head_dim]``, dtype: float16 or bfloat16 (float32 as an extension).
    k, v : torch.Tensor
        shape: ``[kv_len, num_kv_heads, head_dim]`` (NHD) or ``[num_kv_heads, kv_len, head_dim]`` (HND),
        dtype: float16, bfloat16 or float8 (then ``k_scale``/``v_scale`` dequantize).
    pos_encoding_mode : "NONE", "ROPE_LLAMA" (rotary applied to q at position kv_len - 1 and to k
        in the kernel, ``rope_scale`` default 1, ``rope_theta`` default 1e4) or "ALIBI".
    use_tensor_cores : accepted for compatibility (the kernel always uses the matrix units).
    window_left : int, -1 for no sliding window; otherwise keys at position >= kv_len - 1 - window_left.
    logits_soft_cap : c > 0 maps a scaled logit x to ``c * tanh(x / c)``.
    sm_scale : default ``1 / sqrt(head_dim)``.
    variant : optional ``flashinfer_triton.AttentionVariant`` (an extension: Triton hooks compiled
        into the kernel); ``variant_args`` its tensors then scalars, in declaration order.

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
    opts = make_options(num_qo_heads=num_qo_heads, num_kv_heads=kv.num_kv_heads, head_dim=head_dim,
                        head_dim_vo=kv.head_dim_vo, q_data_type=q.dtype, kv_data_type=k.dtype, paged=False,
                        pos_encoding_mode=pos_encoding_mode, window_left=window_left, logits_soft_cap=logits_soft_cap,
                        sm_scale=sm_scale, rope_scale=rope_scale, rope_theta=rope_theta, variant=variant)
    params = run_params(opts.variant, tuple(variant_args), q.device, want_lse=return_lse)
    kv_len = ragged_kv_len(kv, kv_layout)
    planned = plan_attention(opts, single_request_workspace(q.device), DeviceMetadata(q.device, fixed=False),
                             np.array([0, 1], dtype=np.int64), np.array([kv_len], dtype=np.int64),
                             np.zeros(1, dtype=np.int64), None, 1)
    out = torch.empty((1, num_qo_heads, kv.head_dim_vo), dtype=q.dtype, device=q.device)
    lse = torch.empty((1, num_qo_heads), dtype=torch.float32, device=q.device) if return_lse else None
    run_attention(planned.launcher, q.unsqueeze(0), kv, out, lse, scale_arg("q_scale", q_scale),
                  scale_arg("k_scale", k_scale), scale_arg("v_scale", v_scale), params=params)
    if return_lse:
        return out[0], lse[0]
    return out[0]


class BatchDecodeWithPagedKVCacheWrapper:
    """Batch decode (one query token per request) over a paged KV cache, FlashInfer's wrapper.

    ``plan()`` once per batch (host work, one async copy of the metadata); ``run()`` once per layer.
    With ``use_cuda_graph=True`` the page table lives in the fixed buffers given here, the grid is
    sized for the buffers' batch size, and ``run()`` captured in a graph replays correctly after a
    new ``plan()`` with other lengths.

    Parameters
    ----------
    float_workspace_buffer : torch.Tensor
        uint8 (any dtype accepted), contiguous, on the device; holds split-KV partials and merge
        counters (128 MB is plenty).
    kv_layout : "NHD" or "HND".
    use_cuda_graph : bool
    use_tensor_cores : bool
        Accepted for compatibility: the Triton kernel always uses the matrix units.
    paged_kv_indptr_buffer : ``[batch_size + 1]`` int32, required with ``use_cuda_graph``.
    paged_kv_indices_buffer : ``[max_num_pages]`` int32, required with ``use_cuda_graph``.
    paged_kv_last_page_len_buffer : ``[batch_size]`` int32, required with ``use_cuda_graph``.
    backend : "auto", "fa2", "fa3" or "triton": all run this library's Triton kernel.
    variant : optional ``flashinfer_triton.AttentionVariant`` (an extension replacing FlashInfer's
        C++ ``jit_args``): Triton hooks compiled into the kernel; run() then takes its tensors and
        scalars as extra positional arguments after ``paged_kv_cache``.
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
        variant: Optional[AttentionVariant] = None,
    ) -> None:
        check_layout(kv_layout)
        check_tensor("float_workspace_buffer", float_workspace_buffer)
        check_backend(backend)
        if jit_args is not None or jit_kwargs is not None:
            raise NotImplementedError("jit_args/jit_kwargs: custom JIT variants are written as Triton functions here "
                                      "(variant=flashinfer_triton.AttentionVariant(...))")
        self._variant = check_variant(variant)
        self._float_workspace_buffer = float_workspace_buffer
        self._workspace = Workspace(float_workspace_buffer)
        self.device = float_workspace_buffer.device
        self._kv_layout = kv_layout
        self._use_cuda_graph = use_cuda_graph
        self._use_tensor_cores = use_tensor_cores
        self._backend = backend
        if use_cuda_graph:
            for name, buf in (("paged_kv_indptr_buffer", paged_kv_indptr_buffer),
                              ("paged_kv_indices_buffer", paged_kv_indices_buffer),
                              ("paged_kv_last_page_len_buffer", paged_kv_last_page_len_buffer)):
                if buf is None:
                    raise ValueError(f"{name}: required when use_cuda_graph=True")
                check_int32_index(name, buf, device=self.device)
                if not buf.is_contiguous():
                    raise ValueError(f"{name}: expected a contiguous buffer")
            if paged_kv_last_page_len_buffer.numel() != paged_kv_indptr_buffer.numel() - 1:
                raise ValueError("paged_kv_last_page_len_buffer: expected batch_size entries, where "
                                 "paged_kv_indptr_buffer has batch_size + 1")
            self._fixed_batch_size = paged_kv_indptr_buffer.numel() - 1
        else:
            self._fixed_batch_size = None
        self._paged_kv_indptr_buf = paged_kv_indptr_buffer
        self._paged_kv_indices_buf = paged_kv_indices_buffer
        self._paged_kv_last_page_len_buf = paged_kv_last_page_len_buffer
        self._meta = DeviceMetadata(self.device, fixed=use_cuda_graph)
        self._bounds = None  # (options, config, GraphBounds) of a CUDA-graph wrapper, fixed at its first plan
        self._planned: Optional[PlannedAttention] = None
        self._kv_cache = {}

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    @property
    def use_tensor_cores(self) -> bool:
        return self._use_tensor_cores

    @property
    def planned(self) -> Optional[PlannedAttention]:
        """The engine's plan of the current batch (options, kernel config, work list), or None."""
        return self._planned

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer: Optional[torch.Tensor] = None) -> None:
        """Swap the float workspace (the int workspace is accepted and unused: metadata has its own
        buffer). Takes effect at the next plan()."""
        check_tensor("float_workspace_buffer", float_workspace_buffer, device=self.device)
        self._float_workspace_buffer = float_workspace_buffer
        self._workspace = Workspace(float_workspace_buffer)

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
        indptr : ``[batch_size + 1]`` int32, page-table CSR offsets (host or device).
        indices : ``[indptr[-1]]`` int32, page ids (host or device; a strided view is made contiguous).
        last_page_len : ``[batch_size]`` int32, tokens in each request's last page, in [1, page_size]
            (0 for a request with no pages).
        num_qo_heads, num_kv_heads, head_dim, page_size : ints; num_qo_heads % num_kv_heads == 0.
        pos_encoding_mode : "NONE", "ROPE_LLAMA" or "ALIBI".
        window_left : -1 or the sliding-window size (keys at position >= kv_len - 1 - window_left).
        logits_soft_cap : None/0 or c > 0 (``c * tanh(x / c)`` on scaled logits x).
        q_data_type, kv_data_type, o_data_type : dtypes or names; kv defaults to q, o to q
            (``data_type`` is FlashInfer's older name for kv_data_type).
        fixed_split_size : KV chunk size in pages for every request (FlashInfer's unit; batch-invariant results).
        disable_split_kv : never split a request's KV.

        With indptr and last_page_len on the host, plan() does no device synchronization.
        """
        if block_tables is not None or seq_lens is not None:
            raise NotImplementedError("block_tables/seq_lens: these belong to FlashInfer's trtllm-gen backend; pass the CSR page table")
        if fixed_split_size is not None and (not isinstance(fixed_split_size, int) or fixed_split_size < -1):
            raise ValueError(f"fixed_split_size: expected None, -1 or a positive int, got {fixed_split_size!r}")
        table = read_page_table(indptr, indices, last_page_len, page_size, self.device)
        batch = table.kv_len.shape[0]
        if self._fixed_batch_size is not None and batch != self._fixed_batch_size:
            raise ValueError(f"indptr: under CUDA graphs the batch size is fixed at {self._fixed_batch_size} by "
                             f"paged_kv_indptr_buffer, got {batch}")
        opts = make_options(num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                            q_data_type=q_data_type, kv_data_type=kv_data_type or data_type, o_data_type=o_data_type,
                            paged=True, pos_encoding_mode=pos_encoding_mode, window_left=window_left,
                            logits_soft_cap=logits_soft_cap, sm_scale=sm_scale, rope_scale=rope_scale,
                            rope_theta=rope_theta, variant=self._variant)
        kv_indices = table.indices
        cfg = bounds = None
        if self._use_cuda_graph:
            if indices.numel() > self._paged_kv_indices_buf.numel():
                raise ValueError(f"indices: {indices.numel()} page ids exceed paged_kv_indices_buffer "
                                 f"({self._paged_kv_indices_buf.numel()})")
            if self._bounds is None or self._bounds[0] != opts:
                cfg = select_config(opts, device_info(self.device), 1, batch, page_size)
                self._bounds = (opts, cfg, graph_bounds(opts, cfg, self.device, batch, batch))
            _, cfg, bounds = self._bounds
            self._paged_kv_indptr_buf.copy_(indptr, non_blocking=non_blocking)
            self._paged_kv_last_page_len_buf.copy_(last_page_len, non_blocking=non_blocking)
            self._paged_kv_indices_buf[: indices.numel()].copy_(indices, non_blocking=non_blocking)
            kv_indices = self._paged_kv_indices_buf
        split = None if fixed_split_size is None or fixed_split_size <= 0 else fixed_split_size * page_size
        self._planned = plan_attention(
            opts, self._workspace, self._meta, np.arange(batch + 1, dtype=np.int64), table.kv_len, table.indptr[:-1],
            kv_indices, page_size, config_qo_len=1, cfg=cfg, disable_split_kv=disable_split_kv,
            fixed_split_tokens=split, bounds=bounds, non_blocking=non_blocking)
        self._batch_size = batch
        self._page_size = page_size
        self._max_page_id = table.max_page_id

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
        *args : the variant's tensors then scalars, in declaration order (``variant.args(**by_name)``).
        q_scale, k_scale, v_scale : Python floats; q_scale * k_scale multiplies sm_scale, v_scale the output.
        out : optional ``[batch_size, num_qo_heads, head_dim]`` output buffer.
        lse : optional ``[batch_size, num_qo_heads]`` float32 buffer (implies returning it).
        window_left : overrides the planned window for this call.
        sinks : optional float32 ``[num_qo_heads]`` attention-sink logits (gpt-oss): each head's
            softmax denominator gains ``exp(sink)``; the returned LSE includes it.

        Returns
        -------
        out, or (out, lse) with lse ``[batch_size, num_qo_heads]`` float32 in base 2.
        """
        planned = self._planned
        if planned is None:
            raise RuntimeError("run(): call plan() first")
        if enable_pdl:
            raise NotImplementedError("enable_pdl=True: programmatic dependent launch is not available through Triton")
        opts = planned.opts
        kv = self._kv_view(paged_kv_cache)
        b = self._batch_size
        if q.shape != (b, opts.num_qo_heads, opts.head_dim) or q.dtype != opts.q_dtype or q.device != self.device \
                or q.stride(-1) != 1:
            self._raise_bad_q(q)
        if out is None:
            out = torch.empty((b, opts.num_qo_heads, opts.head_dim), dtype=opts.o_dtype, device=q.device)
        else:
            check_tensor("out", out, dtypes=(opts.o_dtype,), device=self.device, last_dim_contiguous=True)
            if out.shape != (b, opts.num_qo_heads, opts.head_dim):
                raise ValueError(f"out: expected shape [{b}, {opts.num_qo_heads}, {opts.head_dim}], got {list(out.shape)}")
        if lse is not None:
            check_tensor("lse", lse, dtypes=(torch.float32,), device=self.device)
            if lse.shape != (b, opts.num_qo_heads) or not lse.is_contiguous():
                raise ValueError(f"lse: expected a contiguous [{b}, {opts.num_qo_heads}] float32 tensor, got {list(lse.shape)}")
            return_lse = True
        elif return_lse:
            lse = torch.empty((b, opts.num_qo_heads), dtype=torch.float32, device=q.device)
        if window_left is not None and (not isinstance(window_left, int) or isinstance(window_left, bool)):
            raise TypeError(f"window_left: expected an int or None, got {type(window_left).__name__}")
        if sinks is not None:
            check_sinks(sinks, opts.num_qo_heads, self.device)
        params = run_params(opts.variant, args, self.device, sinks, return_lse)
        run_attention(planned.launcher, q, kv, out, lse, scale_arg("q_scale", q_scale), scale_arg("k_scale", k_scale),
                      scale_arg("v_scale", v_scale), window_left, sinks, params)
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
        opts = self._planned.opts
        expect = (opts.kv_dtype, self._page_size, opts.num_kv_heads, opts.head_dim)
        hit = self._kv_cache.get(key)
        if hit is not None and hit[0] == ptr and hit[2] == expect:
            kv = hit[1]
        else:
            kv = unpack_paged_kv_cache(paged_kv_cache, self._kv_layout)
            if kv.k.dtype != opts.kv_dtype:
                raise TypeError(f"paged_kv_cache: expected dtype {opts.kv_dtype} (plan's kv_data_type), got {kv.k.dtype}")
            if kv.page_size != self._page_size or kv.num_kv_heads != opts.num_kv_heads or kv.head_dim != opts.head_dim:
                raise ValueError(f"paged_kv_cache: expected page_size {self._page_size}, {opts.num_kv_heads} KV heads, "
                                 f"head_dim {opts.head_dim} in {self._kv_layout} layout (planned), got shape "
                                 f"{tuple(kv.k.shape)} per K/V")
            if kv.k.device != self.device:
                raise ValueError(f"paged_kv_cache: expected a tensor on {self.device}, got one on {kv.k.device}")
            if len(self._kv_cache) > 256:
                self._kv_cache.clear()
            # Holding the cache object keeps id() unique while the entry lives.
            self._kv_cache[key] = (ptr, kv, expect, paged_kv_cache)
        if self._max_page_id is not None and self._max_page_id >= kv.num_pages:
            raise ValueError(f"indices: page id {self._max_page_id} is out of range for a cache of {kv.num_pages} pages")
        return kv

    def _raise_bad_q(self, q) -> None:
        opts = self._planned.opts
        check_tensor("q", q, dtypes=(opts.q_dtype,), device=self.device, last_dim_contiguous=True)
        raise ValueError(f"q: expected shape [{self._batch_size}, {opts.num_qo_heads}, {opts.head_dim}] (planned), "
                         f"got {list(q.shape)}")

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
