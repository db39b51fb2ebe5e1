"""Decode attention over a paged KV cache: FlashInfer's decode API on the shared attention engine.

LSE convention (every function here that returns one): base 2, ``log2(sum_j 2^(s_j * log2 e))``
over the scaled logits ``s_j`` (after soft cap and ALiBi), float32.
"""

from __future__ import annotations

import weakref
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._utils import canonicalize_dtype, check_int32_index, check_tensor
from .attention.kv import KVView, check_csr, check_layout, host_int64, read_page_table, unpack_paged_kv_cache, \
    unpack_ragged_kv, ragged_kv_len
from .attention.ops import run_attention
from .attention.options import AttentionOptions, Q_DTYPES, check_backend, make_options, scale_arg
from .attention.plan import PlannedAttention, graph_bounds, plan_attention
from .attention.scheduler import DeviceMetadata
from .attention.state import DeviceCopy, WrapperState
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


def _check_split(fixed_split_size) -> None:
    if fixed_split_size is not None and (not isinstance(fixed_split_size, int) or fixed_split_size < -1):
        raise ValueError(f"fixed_split_size: expected None, -1 or a positive int, got {fixed_split_size!r}")


class BatchDecodeWithPagedKVCacheWrapper(WrapperState):
    """Batch decode (one query token per request) over a paged KV cache, FlashInfer's wrapper.

    ``plan()`` once per batch (host work, one async copy of the metadata); ``run()`` once per layer.
    With ``use_cuda_graph=True`` the page table lives in the fixed buffers given here, the grid is
    sized for the buffers' batch size, and ``run()`` captured in a graph replays correctly after a
    new ``plan()`` (or ``fast_decode_plan``) with other lengths.

    FlashInfer's private state is kept as FlashInfer keeps it, for the serving engines that read
    and write it: after plan(), ``_pos_encoding_mode``, ``_window_left``, ``_logits_soft_cap``
    (0.0 for None), ``_sm_scale``, ``_rope_scale``, ``_rope_theta`` (as passed; None means the
    default), ``_backend`` ("auto" resolved to "fa2"), ``_plan_info``, ``_cached_module``; from
    the constructor ``_fixed_batch_size`` (0 without CUDA graphs), ``_paged_kv_*_buf``,
    ``_float_workspace_buffer``, ``_int_workspace_buffer``, ``_pin_memory_int_workspace_buffer``.
    run() reads the option attributes, so a change after plan() (the legacy ``forward``, an
    engine's fast plan) takes effect.

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

    _RUN_OPTIONS = ("pos_encoding_mode", "logits_soft_cap", "sm_scale", "rope_scale", "rope_theta")
    _paged_kv_indptr_buf = DeviceCopy()
    _paged_kv_last_page_len_buf = DeviceCopy()

    def _run_key(self) -> tuple:
        return self._pos_encoding_mode, self._logits_soft_cap, self._sm_scale, self._rope_scale, self._rope_theta

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
        self._init_state(backend)
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
            self._fixed_batch_size = 0
        self._paged_kv_indptr_buf = paged_kv_indptr_buffer
        self._paged_kv_indices_buf = paged_kv_indices_buffer
        self._paged_kv_last_page_len_buf = paged_kv_last_page_len_buffer
        self._meta = DeviceMetadata(self.device, fixed=use_cuda_graph)
        self._bounds = None  # (options, config, GraphBounds) of a CUDA-graph wrapper, fixed at its first plan
        self._kv_cache = {}

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    @property
    def use_tensor_cores(self) -> bool:
        return self._use_tensor_cores

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer: Optional[torch.Tensor] = None) -> None:
        """Swap the float workspace (the int workspace is kept as ``_int_workspace_buffer`` and not
        used: metadata has its own buffer). Takes effect at the next plan()."""
        check_tensor("float_workspace_buffer", float_workspace_buffer, device=self.device)
        self._float_workspace_buffer = float_workspace_buffer
        self._workspace = Workspace(float_workspace_buffer)
        if int_workspace_buffer is not None:
            self._int_workspace_buffer = int_workspace_buffer

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
        q_len_per_req: int = 1,
        *,
        window_right: int = 0,
    ) -> None:
        """Plan decode for one batch.

        Parameters
        ----------
        indptr : ``[batch_size + 1]`` int32, page-table CSR offsets (host or device); request b's
            pages are ``indices[indptr[b]:indptr[b+1]]`` (``indptr[0]`` may be above 0).
        indices : int32 page ids, at least ``indptr[-1]`` of them (host or device; entries outside
            ``[indptr[0], indptr[-1])`` are not read; a strided view is made contiguous).
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
        q_len_per_req : 1 (multi-token decode raises NotImplementedError; plan it as a causal prefill).
        block_tables, seq_lens, window_right : FlashInfer's trtllm-gen / cute-dsl options: raise
            NotImplementedError when given.

        With indptr and last_page_len on the host, plan() does no device synchronization.
        """
        if block_tables is not None or seq_lens is not None:
            raise NotImplementedError("block_tables/seq_lens: these belong to FlashInfer's trtllm-gen backend; pass the CSR page table")
        if q_len_per_req != 1:
            raise NotImplementedError(f"q_len_per_req={q_len_per_req}: multi-token decode is not supported; plan it "
                                      f"with BatchPrefillWithPagedKVCacheWrapper (causal=True)")
        if window_right != 0:
            raise NotImplementedError("window_right: a right window bound is FlashInfer's cute-dsl backend only")
        _check_split(fixed_split_size)
        table = read_page_table(indptr, indices, last_page_len, page_size, self.device)
        batch = table.kv_len.shape[0]
        if self._use_cuda_graph and batch != self._fixed_batch_size:
            raise ValueError(f"indptr: under CUDA graphs the batch size is fixed at {self._fixed_batch_size} by "
                             f"paged_kv_indptr_buffer, got {batch}")
        opts = make_options(num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                            q_data_type=q_data_type, kv_data_type=kv_data_type or data_type, o_data_type=o_data_type,
                            paged=True, pos_encoding_mode=pos_encoding_mode, window_left=window_left,
                            logits_soft_cap=logits_soft_cap, sm_scale=sm_scale, rope_scale=rope_scale,
                            rope_theta=rope_theta, variant=self._variant)
        kv_indices = table.indices
        if self._use_cuda_graph:
            if indices.numel() > self._paged_kv_indices_buf.numel():
                raise ValueError(f"indices: {indices.numel()} page ids exceed paged_kv_indices_buffer "
                                 f"({self._paged_kv_indices_buf.numel()})")
            self._paged_kv_indptr_buf.copy_(indptr, non_blocking=non_blocking)
            self._paged_kv_last_page_len_buf.copy_(last_page_len, non_blocking=non_blocking)
            self._paged_kv_indices_buf[: indices.numel()].copy_(indices, non_blocking=non_blocking)
            kv_indices = self._paged_kv_indices_buf
        else:  # FlashInfer's device copies of the page table (made when first read)
            self._paged_kv_indptr_buf, self._paged_kv_last_page_len_buf = table.indptr, table.last_page_len
            self._paged_kv_indices_buf = kv_indices
        self._page_size = page_size
        self._plan_opts = opts
        planned = self._plan_batch(opts, table.indptr, table.kv_len, kv_indices, fixed_split_size, disable_split_kv,
                                   non_blocking)
        self._max_page_id = table.max_page_id
        self._set_run_options(pos_encoding_mode, window_left, 0.0 if logits_soft_cap is None else logits_soft_cap,
                              sm_scale, rope_scale, rope_theta)
        self._set_plan(planned, exact=True)
        if getattr(self, "_cached_module", None) is None:
            self._cached_module = _DecodePlanModule(self)

    begin_forward = plan

    def _plan_batch(self, opts: AttentionOptions, indptr_h: np.ndarray, kv_len_h: np.ndarray,
                    kv_indices: torch.Tensor, fixed_split_size, disable_split_kv, non_blocking) -> PlannedAttention:
        """The engine's plan of a batch: request b reads ``kv_len_h[b]`` tokens from the pages at
        ``kv_indices[indptr_h[b]:]`` (host int64 arrays)."""
        batch = kv_len_h.shape[0]
        cfg = bounds = None
        if self._use_cuda_graph:
            if self._bounds is None or self._bounds[0] != opts:
                cfg = select_config(opts, device_info(self.device), 1, batch, self._page_size)
                self._bounds = (opts, cfg, graph_bounds(opts, cfg, self.device, batch, batch))
            _, cfg, bounds = self._bounds
        split = None if fixed_split_size is None or fixed_split_size <= 0 else fixed_split_size * self._page_size
        planned = plan_attention(
            opts, self._workspace, self._meta, np.arange(batch + 1, dtype=np.int64), kv_len_h, indptr_h[:-1],
            kv_indices, self._page_size, config_qo_len=1, cfg=cfg, disable_split_kv=bool(disable_split_kv),
            fixed_split_tokens=split, bounds=bounds, non_blocking=non_blocking)
        self._batch_size = batch
        return planned

    def _check_problem(self, num_qo_heads, num_kv_heads, head_dim, page_size, dtypes=None) -> None:
        """A fast plan re-plans the problem of the last plan(): the same heads, head dim, page size
        and dtypes."""
        opts = getattr(self, "_plan_opts", None)
        if opts is None:
            raise RuntimeError("fast plan: call plan() first (it fixes the problem the fast plans re-plan)")
        planned = (opts.num_qo_heads, opts.num_kv_heads, opts.head_dim, self._page_size)
        if (num_qo_heads, num_kv_heads, head_dim, page_size) != planned:
            raise ValueError(f"fast plan: (num_qo_heads, num_kv_heads, head_dim, page_size) = "
                             f"{(num_qo_heads, num_kv_heads, head_dim, page_size)} differ from plan()'s {planned}; "
                             f"call plan() for another problem")
        if dtypes is not None and tuple(dtypes) != (opts.q_dtype, opts.kv_dtype):
            raise ValueError(f"fast plan: q/kv dtypes {tuple(dtypes)} differ from plan()'s "
                             f"{(opts.q_dtype, opts.kv_dtype)}; call plan() for another problem")

    def _replan(self, indptr_h: np.ndarray, kv_len_h: Optional[np.ndarray], last_page_len: Optional[torch.Tensor],
                fixed_split_size, disable_split_kv, non_blocking: bool = True) -> PlannedAttention:
        """The fast plans' re-plan of the last plan()'s problem for new lengths, over the page ids
        in ``_paged_kv_indices_buf``: ``indptr_h`` [B+1] host offsets into it, ``kv_len_h`` [B]
        host KV lengths, or None to derive them from ``last_page_len`` (not read for page size 1)."""
        opts = self._plan_opts
        _check_split(fixed_split_size)
        indices = self._paged_kv_indices_buf
        check_int32_index("indices", indices, device=self.device)
        if not indices.is_contiguous():
            indices = self._paged_kv_indices_buf = indices.contiguous()
        page_size = self._page_size
        pages = check_csr("indptr", indptr_h, indices.numel(), "indices", offset=True)
        if kv_len_h is None:
            last = pages.clip(max=1) if page_size == 1 else host_int64([last_page_len])
            kv_len_h = np.where(pages > 0, (pages - 1) * page_size + last, 0)
        if kv_len_h.shape != pages.shape:
            raise ValueError(f"kv lengths: expected {pages.shape[0]} (the batch of indptr), got {kv_len_h.shape[0]}")
        bad = np.where(pages > 0, (kv_len_h > pages * page_size) | (kv_len_h <= (pages - 1) * page_size), kv_len_h != 0)
        if bad.any():
            b = int(np.argmax(bad))
            raise ValueError(f"kv lengths: request {b} has {int(kv_len_h[b])} tokens, which {int(pages[b])} pages of "
                             f"{page_size} cannot hold as a last page of 1 to {page_size} tokens")
        if self._use_cuda_graph and pages.shape[0] != self._fixed_batch_size:
            raise ValueError(f"indptr: under CUDA graphs the batch size is fixed at {self._fixed_batch_size}, got "
                             f"{pages.shape[0]}")
        planned = self._plan_batch(opts, indptr_h, kv_len_h, indices, fixed_split_size, disable_split_kv, non_blocking)
        self._max_page_id = None  # device page ids: checked in checked mode only
        return planned

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
        q_len_per_req: Optional[int] = None,
        skip_softmax_threshold_scale_factor: Optional[float] = None,
        kv_cache_sf=None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Decode attention for the planned batch.

        Parameters
        ----------
        q : ``[batch_size, num_qo_heads, head_dim]``, the planned q dtype.
        paged_kv_cache : ``[num_pages, 2, page_size, num_kv_heads, head_dim]`` (NHD) or
            ``[num_pages, 2, num_kv_heads, page_size, head_dim]`` (HND), or a (k_cache, v_cache) tuple;
            for page size 1 also ``[num_pages, 2, num_kv_heads, head_dim]`` or a tuple of
            ``[num_slots, num_kv_heads, head_dim]`` tensors.
        *args : the variant's tensors then scalars, in declaration order (``variant.args(**by_name)``).
        q_scale, k_scale, v_scale : Python floats; q_scale * k_scale multiplies sm_scale, v_scale the output.
        out : optional ``[batch_size, num_qo_heads, head_dim]`` output buffer.
        lse : optional ``[batch_size, num_qo_heads]`` float32 buffer (implies returning it).
        window_left : overrides ``_window_left`` (the planned window) for this call.
        sinks : optional float32 ``[num_qo_heads]`` attention-sink logits (gpt-oss): each head's
            softmax denominator gains ``exp(sink)``; the returned LSE includes it.
        q_len_per_req, skip_softmax_threshold_scale_factor, kv_cache_sf : None (or q_len_per_req 1);
            other values raise NotImplementedError.

        The softmax scale, soft cap and RoPE scale/theta are the wrapper's ``_sm_scale``,
        ``_logits_soft_cap``, ``_rope_scale``, ``_rope_theta`` (plan()'s values unless changed since).

        Returns
        -------
        out, or (out, lse) with lse ``[batch_size, num_qo_heads]`` float32 in base 2.
        """
        last = self._last  # the launcher of the last run(), valid while plan and options are unchanged
        launcher = last[2] if last[0] is self._plan_info and last[1] == self._run_key() else self._launcher()
        if enable_pdl:
            raise NotImplementedError("enable_pdl=True: programmatic dependent launch is not available through Triton")
        if q_len_per_req not in (None, 1) or skip_softmax_threshold_scale_factor is not None or kv_cache_sf is not None:
            raise NotImplementedError("q_len_per_req > 1 / skip_softmax_threshold_scale_factor / kv_cache_sf: multi-token "
                                      "decode, skip-softmax sparsity and NVFP4 KV are not supported")
        opts = launcher.opts
        kv = self._kv_view(paged_kv_cache)
        b = self._batch_size
        if not isinstance(q, torch.Tensor) or q.shape != (b, opts.num_qo_heads, opts.head_dim) or q.dtype != opts.q_dtype or q.device != self.device \
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
        if window_left is None:
            window_left = self._window_left
        elif not isinstance(window_left, int) or isinstance(window_left, bool):
            raise TypeError(f"window_left: expected an int or None, got {type(window_left).__name__}")
        if sinks is not None:
            check_sinks(sinks, opts.num_qo_heads, self.device)
        params = run_params(opts.variant, args, self.device, sinks, return_lse)
        run_attention(launcher, q, kv, out, lse, scale_arg("q_scale", q_scale), scale_arg("k_scale", k_scale),
                      scale_arg("v_scale", v_scale), window_left, sinks, params)
        return (out, lse) if return_lse else out

    def forward(self, q: torch.Tensor, paged_kv_cache, pos_encoding_mode: str = "NONE", q_scale: Optional[float] = None,
                k_scale: Optional[float] = None, v_scale: Optional[float] = None, window_left: int = -1,
                logits_soft_cap: Optional[float] = None, sm_scale: Optional[float] = None,
                rope_scale: Optional[float] = None, rope_theta: Optional[float] = None) -> torch.Tensor:
        """FlashInfer's legacy per-call API: sets ``_pos_encoding_mode``, ``_window_left``,
        ``_logits_soft_cap``, ``_sm_scale``, ``_rope_scale``, ``_rope_theta`` to these values (they
        stay set, as in FlashInfer), then ``run(q, paged_kv_cache, q_scale=, k_scale=, v_scale=)``.
        The positional encoding must be the planned one (NotImplementedError otherwise)."""
        self._set_run_options(pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale, rope_theta)
        return self.run(q, paged_kv_cache, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale)

    def forward_return_lse(self, q: torch.Tensor, paged_kv_cache, pos_encoding_mode: str = "NONE",
                           q_scale: Optional[float] = None, k_scale: Optional[float] = None,
                           v_scale: Optional[float] = None, window_left: int = -1,
                           logits_soft_cap: Optional[float] = None, sm_scale: Optional[float] = None,
                           rope_scale: Optional[float] = None,
                           rope_theta: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``forward`` returning (out, lse), lse base 2."""
        self._set_run_options(pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale, rope_theta)
        return self.run(q, paged_kv_cache, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, return_lse=True)

    def _set_run_options(self, pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale, rope_theta):
        """FlashInfer's run-option attributes, as plan(), the legacy forward and the fast plans set them."""
        self._pos_encoding_mode = pos_encoding_mode
        self._window_left = window_left
        self._logits_soft_cap = logits_soft_cap
        self._sm_scale = sm_scale
        self._rope_scale = rope_scale
        self._rope_theta = rope_theta

    def _kv_view(self, paged_kv_cache) -> KVView:
        """Unpack and validate the cache once per cache object (run() sees the same per-layer
        tensors every step); a new object, or one whose storage moved, is checked again. While
        Dynamo traces (once per graph) there is no cache: data pointers are not traceable."""
        opts = self._plan_info.opts
        expect = (opts.kv_dtype, self._page_size, opts.num_kv_heads, opts.head_dim)
        if torch.compiler.is_dynamo_compiling():
            kv = self._unpack_kv(paged_kv_cache)
        else:
            if isinstance(paged_kv_cache, torch.Tensor):
                key = id(paged_kv_cache)
                ptr = paged_kv_cache.data_ptr()
            else:
                key = tuple(id(t) for t in paged_kv_cache)
                ptr = tuple(t.data_ptr() for t in paged_kv_cache)
            hit = self._kv_cache.get(key)
            if hit is not None and hit[0] == ptr and hit[2] == expect:
                kv = hit[1]
            else:
                kv = self._unpack_kv(paged_kv_cache)
                if len(self._kv_cache) > 256:
                    self._kv_cache.clear()
                # Holding the cache object keeps id() unique while the entry lives.
                self._kv_cache[key] = (ptr, kv, expect, paged_kv_cache)
        if self._max_page_id is not None and self._max_page_id >= kv.num_pages:
            raise ValueError(f"indices: page id {self._max_page_id} is out of range for a cache of {kv.num_pages} pages")
        return kv

    def _unpack_kv(self, paged_kv_cache) -> KVView:
        opts = self._plan_info.opts
        kv = unpack_paged_kv_cache(paged_kv_cache, self._kv_layout)
        if kv.k.dtype != opts.kv_dtype:
            raise TypeError(f"paged_kv_cache: expected dtype {opts.kv_dtype} (plan's kv_data_type), got {kv.k.dtype}")
        if kv.page_size != self._page_size or kv.num_kv_heads != opts.num_kv_heads or kv.head_dim != opts.head_dim:
            raise ValueError(f"paged_kv_cache: expected page_size {self._page_size}, {opts.num_kv_heads} KV heads, "
                             f"head_dim {opts.head_dim} in {self._kv_layout} layout (planned), got shape "
                             f"{tuple(kv.k.shape)} per K/V")
        if kv.k.device != self.device:
            raise ValueError(f"paged_kv_cache: expected a tensor on {self.device}, got one on {kv.k.device}")
        return kv

    def _raise_bad_q(self, q) -> None:
        opts = self._plan_info.opts
        check_tensor("q", q, dtypes=(opts.q_dtype,), device=self.device, last_dim_contiguous=True)
        raise ValueError(f"q: expected shape [{self._batch_size}, {opts.num_qo_heads}, {opts.head_dim}] (planned), "
                         f"got {list(q.shape)}")

    def run_return_lse(self, q, paged_kv_cache, *args, **kwargs):
        kwargs["return_lse"] = True
        return self.run(q, paged_kv_cache, *args, **kwargs)

    def end_forward(self) -> None:
        """Kept for FlashInfer compatibility: nothing to release."""


class _DecodePlanModule:
    """``wrapper._cached_module`` as the engines' fast plans use it: ``plan(*args)`` takes the
    argument lists of FlashInfer's compiled modules (the decode module's 15; the prefill module's
    16 for fa3 and 18 to 20 for fa2, as vLLM and SGLang pass them), re-plans the wrapper's batch
    from the host offsets and lengths in them and returns the plan to store in ``_plan_info``. The
    workspaces passed are not used (the metadata has its own buffer); window and soft cap come from
    the wrapper's attributes at run(), which the fast plans set after this call, as in FlashInfer."""

    def __init__(self, wrapper: BatchDecodeWithPagedKVCacheWrapper):
        self._wrapper = weakref.ref(wrapper)

    def plan(self, *args) -> PlannedAttention:
        w = self._wrapper()
        n = len(args)
        if n == 15:  # (float_ws, int_ws, pinned_ws, indptr, batch, H_qo, H_kv, page_size, cuda_graph, window, cap, D, D, q, kv)
            indptr, batch, hqo, hkv, page_size, _graph, _window, _cap, hd, hd_vo, empty_q, empty_kv = args[3:]
            kv_len, total_rows, causal, dtypes = None, batch, False, (empty_q.dtype, empty_kv.dtype)
            fixed_split_size, disable_split_kv, uniform_q_len = None, False, 0
        elif 16 <= n <= 20:  # (..., qo_indptr, indptr, kv_lens, rows, batch, H_qo, H_kv, page_size, cuda_graph, D, D, causal, window[, split, no_split, ctas, q_len])
            _qo, indptr, kv_len, total_rows, batch, hqo, hkv, page_size, _graph, hd, hd_vo, causal, _window = args[3:16]
            fixed_split_size, disable_split_kv, _ctas, uniform_q_len = tuple(args[16:]) + (-1, False, 0, 0)[n - 16:]
            dtypes = None
        else:
            raise TypeError(f"_cached_module.plan: expected the 15 arguments of FlashInfer's decode module or the 16 to "
                            f"20 of its prefill module, got {n}")
        if total_rows != batch or causal or uniform_q_len > 1:
            raise NotImplementedError("_cached_module.plan: multi-token decode (q_len_per_req > 1) is not supported")
        w._check_problem(hqo, hkv, hd, page_size, dtypes)
        if hd_vo != hd:
            raise ValueError(f"_cached_module.plan: head_dim_vo {hd_vo} differs from head_dim {hd}")
        indptr_h = host_int64([indptr])[: batch + 1]
        kv_len_h = None if kv_len is None else host_int64([kv_len])[:batch]
        return w._replan(indptr_h, kv_len_h, w._paged_kv_last_page_len_buf, fixed_split_size, disable_split_kv)


def fast_decode_plan(
    self: BatchDecodeWithPagedKVCacheWrapper,
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
    q_data_type: Optional[Union[str, torch.dtype]] = None,
    kv_data_type: Optional[Union[str, torch.dtype]] = None,
    data_type: Optional[Union[str, torch.dtype]] = None,
    sm_scale: Optional[float] = None,
    rope_scale: Optional[float] = None,
    rope_theta: Optional[float] = None,
    non_blocking: bool = True,
    fixed_split_size: Optional[int] = None,
    disable_split_kv: bool = False,
    q_len_per_req: int = 1,
    global_override_indptr_cpu: Optional[torch.Tensor] = None,
) -> None:
    """FlashInfer's ``fast_decode_plan``: ``wrapper.plan()`` for a new batch of the problem the last
    plan() fixed, with less host work (SGLang installs it as ``wrapper.begin_forward =
    functools.partial(fast_decode_plan, wrapper)`` after the first plan of a CUDA-graph wrapper).

    Under CUDA graphs nothing is copied: the caller has written the page table into the wrapper's
    buffers (``indptr``, ``indices``, ``last_page_len`` are those buffers or views of them), and a
    captured run() replays the new plan (its grid stays within the bounds of the first plan).
    Without CUDA graphs the wrapper takes these tensors as its buffers (``indices`` on the device).
    The host offsets come from ``global_override_indptr_cpu`` when given (no device read), else
    from ``indptr``; KV lengths from them and ``last_page_len`` (not read for page size 1).

    Parameters
    ----------
    self : the ``BatchDecodeWithPagedKVCacheWrapper``, planned with plan() before.
    indptr, indices, last_page_len, page_size : the page table, as for plan().
    num_qo_heads, num_kv_heads, head_dim, page_size, q_data_type, kv_data_type (``data_type``):
        must be the planned ones (ValueError otherwise; q defaults to float16, kv to q).
    pos_encoding_mode, window_left, logits_soft_cap, sm_scale, rope_scale, rope_theta : stored in
        the wrapper's attributes as FlashInfer does (soft cap None as 0.0); run() honours them
        (the positional encoding must be the planned one).
    fixed_split_size, disable_split_kv : as for plan().
    q_len_per_req : 1 (NotImplementedError otherwise).
    global_override_indptr_cpu : optional host int32 copy of ``indptr`` (its first batch_size + 1 entries).
    """
    if q_len_per_req != 1:
        raise NotImplementedError(f"q_len_per_req={q_len_per_req}: multi-token decode is not supported")
    q_dtype = canonicalize_dtype(q_data_type or data_type or "float16", "q_data_type")
    kv_dtype = canonicalize_dtype(kv_data_type or data_type, "kv_data_type") or q_dtype
    self._check_problem(num_qo_heads, num_kv_heads, head_dim, page_size, (q_dtype, kv_dtype))
    batch = len(last_page_len)
    if self.is_cuda_graph_enabled:
        if batch != self._fixed_batch_size:
            raise ValueError(f"last_page_len: under CUDA graphs the batch size is fixed at {self._fixed_batch_size}, "
                             f"got {batch}")
        if len(indices) > len(self._paged_kv_indices_buf):
            raise ValueError(f"indices: {len(indices)} page ids exceed paged_kv_indices_buffer "
                             f"({len(self._paged_kv_indices_buf)})")
    else:
        self._paged_kv_indptr_buf = indptr
        self._paged_kv_indices_buf = indices
        self._paged_kv_last_page_len_buf = last_page_len
    host = indptr if global_override_indptr_cpu is None else global_override_indptr_cpu
    planned = self._replan(host_int64([host])[: batch + 1], None, last_page_len, fixed_split_size, disable_split_kv,
                           non_blocking)
    self._set_run_options(pos_encoding_mode, window_left, 0.0 if logits_soft_cap is None else logits_soft_cap,
                          sm_scale, rope_scale, rope_theta)
    self._set_plan(planned, exact=False)


class CUDAGraphBatchDecodeWithPagedKVCacheWrapper(BatchDecodeWithPagedKVCacheWrapper):
    """``BatchDecodeWithPagedKVCacheWrapper`` with ``use_cuda_graph=True`` and the fixed buffers
    ``indptr_buffer [batch_size + 1]``, ``indices_buffer [max_pages]``, ``last_page_len_buffer
    [batch_size]`` (int32) holding the page table across plans."""

    def __init__(self, workspace_buffer, indptr_buffer, indices_buffer, last_page_len_buffer,
                 kv_layout: str = "NHD", use_tensor_cores: bool = False) -> None:
        super().__init__(workspace_buffer, kv_layout, use_cuda_graph=True, use_tensor_cores=use_tensor_cores,
                         paged_kv_indptr_buffer=indptr_buffer, paged_kv_indices_buffer=indices_buffer,
                         paged_kv_last_page_len_buffer=last_page_len_buffer)
