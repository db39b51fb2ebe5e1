"""DeepSeek MLA (multi-head latent attention) on a paged cache: FlashInfer's ``BatchMLAPagedAttentionWrapper``.

The matrix-absorbed form (DeepSeek-V2/V3/R1, Kimi K2): request ``b``'s queries
``concat(q_nope, q_pe)`` (``[qo_len, num_heads, 512 + 64]``) attend to keys ``concat(ckv, kpe)`` and
values ``ckv`` of one compressed KV stream that every head shares; the output is
``[qo_len, num_heads, 512]``. Decode (one query per request) and multi-token queries (speculative
verification, chunked prefill) alike; with ``causal`` query ``i`` sees key ``j <= i + kv_len - qo_len``
(bottom-right aligned). ``sm_scale`` is the caller's (DeepSeek: ``1 / sqrt(128 + 64)``, the head
dimension before absorption).

Cache: ``ckv_cache [num_pages, page_size, 512]`` and ``kpe_cache [num_pages, page_size, 64]`` with
any page and slot strides (views of one ``[..., 576]`` cache, as SGLang passes them, work as they
are); request ``b`` owns pages ``kv_indices[kv_indptr[b]:kv_indptr[b+1]]``, of which its first
``kv_len_arr[b]`` tokens are its KV. Page ids go through a float8_e4m3fn cache too (``ckv_scale`` /
``kpe_scale`` dequantize: ``real = stored * scale``).

LSE: base 2 (``log2(sum_j 2^(s_j * log2 e))`` over scaled logits), float32; natural log with
``return_lse_base_on_e=True``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch

from ._utils import check_int32_index, check_tensor
from .attention.device import device_info
from .attention.config import select_mla_config
from .attention.kv import check_csr, check_page_size, host_int64
from .attention.mla import HEAD_DIM_CKV, HEAD_DIM_KPE, MLALauncher, make_mla_options, mla_graph_bounds, plan_mla, \
    run_mla
from .attention.options import check_backend
from .attention.scheduler import DeviceMetadata
from .attention.workspace import Workspace

__all__ = ["BatchMLAPagedAttentionWrapper"]

LN2 = math.log(2.0)


def _scale(name: str, value) -> float:
    """A dequantization scale: a finite positive Python float (default 1)."""
    if value is None:
        return 1.0
    if isinstance(value, torch.Tensor):
        raise NotImplementedError(f"{name} as a tensor: pass a Python float (a tensor would need a host sync)")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name}: expected a finite positive float, got {value}")
    return value


class BatchMLAPagedAttentionWrapper:
    """MLA attention over a paged compressed-KV cache, FlashInfer's wrapper (0.6.x API).

    ``plan()`` once per batch (host work, one asynchronous copy of the metadata); ``run()`` once per
    layer. With ``use_cuda_graph=True`` the index arrays live in the fixed buffers given here, the
    grid is sized at the first ``plan()`` (the batch size from ``qo_indptr``'s buffer, the most query
    tokens from that plan) and a ``run()`` captured in a graph replays correctly after later plans.

    Parameters
    ----------
    float_workspace_buffer : torch.Tensor
        uint8 (any dtype accepted) on the device; holds split-KV partials (FlashInfer's 128 MB).
    use_cuda_graph : bool
    qo_indptr, kv_indptr : torch.Tensor
        ``[batch_size + 1]`` int32 buffers, required with ``use_cuda_graph``.
    kv_indices : torch.Tensor
        ``[max_num_pages]`` int32 buffer, required with ``use_cuda_graph``.
    kv_len_arr : torch.Tensor
        ``[batch_size]`` int32 buffer, required with ``use_cuda_graph``.
    backend : str
        "auto", "fa2", "fa3" (or "triton"): all run this library's Triton kernel. "cutlass" (and
        FlashInfer's other MLA backends) raise NotImplementedError.
    """

    def __init__(
        self,
        float_workspace_buffer: torch.Tensor,
        use_cuda_graph: bool = False,
        qo_indptr: Optional[torch.Tensor] = None,
        kv_indptr: Optional[torch.Tensor] = None,
        kv_indices: Optional[torch.Tensor] = None,
        kv_len_arr: Optional[torch.Tensor] = None,
        backend: str = "auto",
    ) -> None:
        check_tensor("float_workspace_buffer", float_workspace_buffer)
        if backend == "cutlass":
            raise NotImplementedError("backend='cutlass': CUTLASS's MLA kernel (NVIDIA Blackwell, a block-table API) "
                                      "is not available; 'auto', 'fa2' and 'fa3' run the Triton kernel")
        check_backend(backend)
        self._backend = backend
        self._float_workspace_buffer = float_workspace_buffer
        self._workspace = Workspace(float_workspace_buffer)
        self.device = float_workspace_buffer.device
        self._use_cuda_graph = bool(use_cuda_graph)
        if self._use_cuda_graph:
            for name, buf in (("qo_indptr", qo_indptr), ("kv_indptr", kv_indptr), ("kv_indices", kv_indices),
                              ("kv_len_arr", kv_len_arr)):
                if buf is None:
                    raise ValueError(f"{name}: a buffer is required when use_cuda_graph=True")
                check_int32_index(name, buf, device=self.device)
            self._fixed_batch_size = qo_indptr.numel() - 1
            check_int32_index("kv_indptr", kv_indptr, numel=qo_indptr.numel())
            check_int32_index("kv_len_arr", kv_len_arr, numel=self._fixed_batch_size)
        self._qo_indptr_buf, self._kv_indptr_buf = qo_indptr, kv_indptr
        self._kv_indices_buf, self._kv_len_arr_buf = kv_indices, kv_len_arr
        self._meta = DeviceMetadata(self.device, fixed=self._use_cuda_graph)
        self._max_total_rows: Optional[int] = None
        self._bounds = None  # (options, config, GraphBounds) of a CUDA-graph wrapper
        self._launcher: Optional[MLALauncher] = None

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    @property
    def launcher(self) -> Optional[MLALauncher]:
        """The engine's plan of the current batch (options, kernel config, work list), or None."""
        return self._launcher

    def plan(
        self,
        qo_indptr: torch.Tensor,
        kv_indptr: torch.Tensor,
        kv_indices: torch.Tensor,
        kv_len_arr: torch.Tensor,
        num_heads: int,
        head_dim_ckv: int,
        head_dim_kpe: int,
        page_size: int,
        causal: bool,
        sm_scale: float,
        q_data_type: torch.dtype,
        kv_data_type: torch.dtype,
        use_profiler: bool = False,
    ) -> None:
        """Plan MLA attention for one batch.

        Parameters
        ----------
        qo_indptr : torch.Tensor
            ``[batch_size + 1]`` int32, query token offsets (``[0, 1, ..., batch_size]`` for decode).
        kv_indptr : torch.Tensor
            ``[batch_size + 1]`` int32, page-table offsets into ``kv_indices``.
        kv_indices : torch.Tensor
            ``[kv_indptr[-1]]`` (or more) int32 page ids.
        kv_len_arr : torch.Tensor
            ``[batch_size]`` int32, each request's KV length in tokens (at most its pages * page_size).
        num_heads : int
            Query (and output) heads; every head attends to the one compressed KV stream.
        head_dim_ckv, head_dim_kpe : int
            512 and 64 (DeepSeek's; other sizes raise NotImplementedError).
        page_size : int
            Tokens per page (any positive size: 1, 16, 64, ...).
        causal : bool
            Bottom-right aligned causal mask over each request's queries.
        sm_scale : float
            Softmax scale of the logits ``q_nope . ckv + q_pe . kpe``.
        q_data_type : torch.dtype
            float16 or bfloat16 (float32 as an extension, for exact references).
        kv_data_type : torch.dtype
            q's dtype, or float8_e4m3fn with float16/bfloat16 q.
        use_profiler : bool
            FlashInfer's intra-kernel profiler: True raises NotImplementedError.
        """
        if use_profiler:
            raise NotImplementedError("use_profiler=True: FlashInfer's intra-kernel profiler has no Triton counterpart")
        opts = make_mla_options(num_heads, head_dim_ckv, head_dim_kpe, causal, sm_scale, q_data_type, kv_data_type)
        page_size = check_page_size(page_size)
        check_int32_index("qo_indptr", qo_indptr)
        batch = qo_indptr.numel() - 1
        if batch < 0:
            raise ValueError("qo_indptr: expected at least one entry ([batch_size + 1])")
        check_int32_index("kv_indptr", kv_indptr, numel=batch + 1)
        check_int32_index("kv_indices", kv_indices)
        check_int32_index("kv_len_arr", kv_len_arr, numel=batch)
        if self._use_cuda_graph and batch != self._fixed_batch_size:
            raise ValueError(f"qo_indptr: under CUDA graphs the batch size is fixed at {self._fixed_batch_size} by the "
                             f"buffers given to the constructor, got {batch}")
        ids_on_host = kv_indices.device.type == "cpu"
        host = host_int64([qo_indptr, kv_indptr, kv_len_arr] + ([kv_indices] if ids_on_host else []))
        qo_h, kv_indptr_h = host[: batch + 1], host[batch + 1: 2 * batch + 2]
        kv_len_h = host[2 * batch + 2: 3 * batch + 2]
        check_csr("qo_indptr", qo_h)
        pages = np.diff(kv_indptr_h)
        if batch and (kv_indptr_h[0] < 0 or (pages < 0).any() or kv_indptr_h[-1] > kv_indices.numel()):
            raise ValueError(f"kv_indptr: expected non-decreasing, non-negative offsets ending at most at "
                             f"kv_indices' {kv_indices.numel()} entries")
        if (kv_len_h < 0).any() or (kv_len_h > pages * page_size).any():
            b = int(np.argmax((kv_len_h < 0) | (kv_len_h > pages * page_size)))
            raise ValueError(f"kv_len_arr[{b}] = {int(kv_len_h[b])}: expected a length in [0, pages * page_size = "
                             f"{int(pages[b]) * page_size}]")
        self._max_page_id = None
        if ids_on_host:
            ids = host[3 * batch + 2:]
            if ids.size and ids.min() < 0:
                raise ValueError(f"kv_indices: page ids must be non-negative, got {int(ids.min())}")
            self._max_page_id = int(ids.max()) if ids.size else -1
        total_rows = int(qo_h[-1])
        cfg = bounds = None
        if self._use_cuda_graph:
            n_ids = kv_indices.numel()
            if n_ids > self._kv_indices_buf.numel():
                raise ValueError(f"kv_indices: {n_ids} page ids exceed the kv_indices buffer "
                                 f"({self._kv_indices_buf.numel()})")
            # FlashInfer's rule: the first plan fixes the most query tokens the graph serves.
            if self._max_total_rows is None:
                self._max_total_rows = total_rows
            elif total_rows > self._max_total_rows:
                raise ValueError(f"qo_indptr: {total_rows} query tokens exceed the {self._max_total_rows} that the "
                                 f"first plan() of this CUDA-graph wrapper fixed")
            if self._bounds is None or self._bounds[0] != opts:
                cfg = select_mla_config(opts.q_dtype, opts.kv_dtype, device_info(self.device))
                self._bounds = (opts, cfg, mla_graph_bounds(opts, cfg, self.device, batch,
                                                            max(self._max_total_rows, 1)))
            _, cfg, bounds = self._bounds
            if kv_indices.data_ptr() != self._kv_indices_buf.data_ptr():  # SGLang fills the buffer itself
                self._kv_indices_buf[:n_ids].copy_(kv_indices, non_blocking=True)
            self._qo_indptr_buf.copy_(qo_indptr, non_blocking=True)
            self._kv_indptr_buf.copy_(kv_indptr, non_blocking=True)
            self._kv_len_arr_buf.copy_(kv_len_arr, non_blocking=True)
            device_ids = self._kv_indices_buf
        else:
            device_ids = kv_indices if kv_indices.is_contiguous() else kv_indices.contiguous()
            device_ids = device_ids.to(self.device, non_blocking=True)
        self._launcher = plan_mla(opts, self._workspace, self._meta, qo_h, kv_len_h, kv_indptr_h[:-1], device_ids,
                                  page_size, cfg=cfg, bounds=bounds)
        self._total_rows = total_rows
        self._page_size = page_size

    begin_forward = plan

    def run(
        self,
        q_nope: torch.Tensor,
        q_pe: torch.Tensor,
        ckv_cache: torch.Tensor,
        kpe_cache: torch.Tensor,
        out: Optional[torch.Tensor] = None,
        lse: Optional[torch.Tensor] = None,
        return_lse: bool = False,
        profiler_buffer: Optional[torch.Tensor] = None,
        kv_len: Optional[torch.Tensor] = None,
        page_table: Optional[torch.Tensor] = None,
        return_lse_base_on_e: bool = False,
        o_scale: Optional[float] = None,
        *,
        ckv_scale: Optional[float] = None,
        kpe_scale: Optional[float] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """MLA attention for the planned batch.

        Parameters
        ----------
        q_nope : torch.Tensor
            ``[qo_indptr[-1], num_heads, 512]``, the planned q dtype; token and head strides free,
            the last dimension contiguous.
        q_pe : torch.Tensor
            ``[qo_indptr[-1], num_heads, 64]``, like ``q_nope``.
        ckv_cache : torch.Tensor
            ``[num_pages, page_size, 512]``, the planned kv dtype, the last dimension contiguous.
        kpe_cache : torch.Tensor
            ``[num_pages, page_size, 64]``, like ``ckv_cache``.
        out : torch.Tensor, optional
            ``[qo_indptr[-1], num_heads, 512]`` output buffer in q's dtype.
        lse : torch.Tensor, optional
            ``[qo_indptr[-1], num_heads]`` contiguous float32 buffer; written when given.
        return_lse : bool
            Also return the LSE (allocated when ``lse`` is not given).
        profiler_buffer, kv_len, page_table, o_scale : FlashInfer's profiler and cutlass-backend
            inputs: NotImplementedError when given.
        return_lse_base_on_e : bool
            The LSE in natural log instead of base 2.
        ckv_scale, kpe_scale : float, optional
            Dequantization scales of a float8 cache (``real = stored * scale``; default 1).

        Returns
        -------
        out ``[qo_indptr[-1], num_heads, 512]`` in q's dtype, or (out, lse) with ``return_lse``;
        lse ``[qo_indptr[-1], num_heads]`` float32, base 2 (base e with ``return_lse_base_on_e``).
        """
        for name, value in (("profiler_buffer", profiler_buffer), ("kv_len", kv_len), ("page_table", page_table)):
            if value is not None:
                raise NotImplementedError(f"{name}: FlashInfer's profiler / cutlass-backend input, not used here")
        if o_scale is not None:
            raise NotImplementedError("o_scale: FP8 output is FlashInfer's cutlass backend's")
        launcher = self._launcher
        if launcher is None:
            raise RuntimeError("run(): call plan() first")
        opts = launcher.opts
        n, h = self._total_rows, opts.num_heads
        for name, t, d in (("q_nope", q_nope, HEAD_DIM_CKV), ("q_pe", q_pe, HEAD_DIM_KPE)):
            check_tensor(name, t, dtypes=(opts.q_dtype,), ndim=3, device=self.device, last_dim_contiguous=True)
            if tuple(t.shape) != (n, h, d):
                raise ValueError(f"{name}: expected shape [{n}, {h}, {d}] (qo_indptr[-1], num_heads, head dim as "
                                 f"planned), got {list(t.shape)}")
        for name, t, d in (("ckv_cache", ckv_cache, HEAD_DIM_CKV), ("kpe_cache", kpe_cache, HEAD_DIM_KPE)):
            check_tensor(name, t, dtypes=(opts.kv_dtype,), ndim=3, device=self.device, last_dim_contiguous=True)
            if t.shape[1] != self._page_size or t.shape[2] != d:
                raise ValueError(f"{name}: expected shape [num_pages, {self._page_size}, {d}] (page_size as planned), "
                                 f"got {list(t.shape)}")
        if kpe_cache.shape[0] != ckv_cache.shape[0]:
            raise ValueError(f"kpe_cache: expected {ckv_cache.shape[0]} pages like ckv_cache, got {kpe_cache.shape[0]}")
        if self._max_page_id is not None and self._max_page_id >= ckv_cache.shape[0]:
            raise ValueError(f"kv_indices: page id {self._max_page_id} is out of range for a cache of "
                             f"{ckv_cache.shape[0]} pages")
        if out is None:
            out = torch.empty((n, h, HEAD_DIM_CKV), dtype=opts.q_dtype, device=self.device)
        else:
            check_tensor("out", out, dtypes=(opts.q_dtype,), ndim=3, device=self.device, last_dim_contiguous=True)
            if tuple(out.shape) != (n, h, HEAD_DIM_CKV):
                raise ValueError(f"out: expected shape [{n}, {h}, {HEAD_DIM_CKV}], got {list(out.shape)}")
        if lse is not None:
            check_tensor("lse", lse, dtypes=(torch.float32,), device=self.device)
            if tuple(lse.shape) != (n, h) or not lse.is_contiguous():
                raise ValueError(f"lse: expected a contiguous [{n}, {h}] float32 tensor, got {list(lse.shape)}")
        elif return_lse:
            lse = torch.empty((n, h), dtype=torch.float32, device=self.device)
        run_mla(launcher, q_nope, q_pe, ckv_cache, kpe_cache, out, lse, _scale("ckv_scale", ckv_scale),
                _scale("kpe_scale", kpe_scale), LN2 if return_lse_base_on_e else 1.0)
        return (out, lse) if return_lse else out
