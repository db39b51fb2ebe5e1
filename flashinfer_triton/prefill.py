"""Prefill and append attention: FlashInfer's prefill API on the shared attention kernel.

``single_prefill_with_kv_cache`` (one request, contiguous K/V), ``BatchPrefillWithRaggedKVCacheWrapper``
(K/V of every request contiguous in one ragged tensor) and ``BatchPrefillWithPagedKVCacheWrapper``
(paged KV cache: chunked prefill, append, mixed batches with one-token requests).

Causal masks align bottom-right: query row ``i`` of a request with ``qo_len`` queries and ``kv_len``
keys sees key ``j`` iff ``j <= i + kv_len - qo_len``. A custom mask replaces the causal mask
(``causal`` is ignored when one is given, as in FlashInfer).

Custom masks: the boolean form is request ``b``'s ``[qo_len_b, kv_len_b]`` mask flattened row-major,
the requests concatenated. The packed form (``packed_custom_mask``) is that mask bit-packed per
request with ``bitorder="little"``, each request's segment starting on a byte boundary: exactly
``flashinfer.segment_packbits(custom_mask, indptr, bitorder="little")[0]`` with ``indptr`` the
cumulative ``qo_len_b * kv_len_b`` (for one request, ``packbits(mask.view(-1), bitorder="little")``).

LSE convention (every function here that returns one): base 2, ``log2(sum_j 2^(s_j * log2 e))``
over the scaled logits ``s_j`` (after soft cap and ALiBi), float32.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._utils import check_int32_index, check_tensor
from .attention.config import select_config
from .attention.device import device_info
from .attention.kv import KVView, check_csr, check_layout, host_int64, ragged_kv_len, read_page_table, \
    unpack_paged_kv_cache, unpack_ragged_kv
from .attention.ops import run_attention
from .attention.options import Q_DTYPES, check_backend, make_options, scale_arg
from .attention.plan import graph_bounds, plan_attention
from .attention.scheduler import DeviceMetadata
from .attention.state import DeviceCopy, WrapperState
from .attention.variant import AttentionVariant, check_variant, run_params
from .attention.workspace import Workspace, single_request_workspace
from .decode import check_sinks
from .quantization import segment_packbits

__all__ = [
    "BatchPrefillWithPagedKVCacheWrapper",
    "BatchPrefillWithRaggedKVCacheWrapper",
    "single_prefill_with_kv_cache",
    "single_prefill_with_kv_cache_return_lse",
]

# Block-shape key used with ``fixed_split_size``: any long prefill, whatever the batch holds.
_BATCH_INVARIANT_QO_LEN = 1 << 20


def _prefill_options(num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo, paged, causal, has_mask,
                     pos_encoding_mode, use_fp16_qk_reduction, window_left, logits_soft_cap, sm_scale, rope_scale,
                     rope_theta, q_data_type, kv_data_type=None, o_data_type=None, variant=None):
    return make_options(num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim_qk,
                        head_dim_vo=head_dim_vo, q_data_type=q_data_type, kv_data_type=kv_data_type,
                        o_data_type=o_data_type, paged=paged, causal=causal, custom_mask=has_mask,
                        pos_encoding_mode=pos_encoding_mode, window_left=window_left,
                        logits_soft_cap=logits_soft_cap, sm_scale=sm_scale, rope_scale=rope_scale,
                        rope_theta=rope_theta, use_fp16_qk_reduction=use_fp16_qk_reduction, head_dim_name="head_dim_qk",
                        variant=variant)


def _mask_byte_indptr(qo_len: np.ndarray, kv_len: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Bit and byte offsets of each request's mask segment: ``[B+1]`` int64 arrays."""
    bits = qo_len.astype(np.int64) * kv_len.astype(np.int64)
    bit_indptr = np.zeros(bits.shape[0] + 1, dtype=np.int64)
    bit_indptr[1:] = np.cumsum(bits)
    byte_indptr = np.zeros(bits.shape[0] + 1, dtype=np.int64)
    byte_indptr[1:] = np.cumsum((bits + 7) // 8)
    return bit_indptr, byte_indptr


def _prepare_mask(custom_mask, packed_custom_mask, qo_len: np.ndarray, kv_len: np.ndarray, device):
    """Returns (packed uint8 mask on ``device``, byte indptr ``[B+1]`` int64 numpy) or (None, None).
    ``packed_custom_mask`` wins over ``custom_mask`` (FlashInfer's rule)."""
    if custom_mask is None and packed_custom_mask is None:
        return None, None
    bit_indptr, byte_indptr = _mask_byte_indptr(qo_len, kv_len)
    if packed_custom_mask is not None:
        check_tensor("packed_custom_mask", packed_custom_mask, dtypes=(torch.uint8,), ndim=1)
        if packed_custom_mask.numel() != byte_indptr[-1]:
            raise ValueError(f"packed_custom_mask: expected {int(byte_indptr[-1])} bytes (each request's "
                             f"qo_len * kv_len bits packed little-endian, byte-aligned per request), got "
                             f"{packed_custom_mask.numel()}")
        return packed_custom_mask.to(device).contiguous(), byte_indptr
    check_tensor("custom_mask", custom_mask, dtypes=(torch.bool,))
    if custom_mask.numel() != bit_indptr[-1]:
        raise ValueError(f"custom_mask: expected sum(qo_len * kv_len) = {int(bit_indptr[-1])} elements, got "
                         f"{custom_mask.numel()} (shape {list(custom_mask.shape)})")
    flat = custom_mask.reshape(-1).to(device)
    if flat.numel() == 0:
        return torch.zeros(max(int(byte_indptr[-1]), 1), dtype=torch.uint8, device=device), byte_indptr
    packed, _ = segment_packbits(flat, torch.from_numpy(bit_indptr.astype(np.int32)).to(device), bitorder="little")
    return packed, byte_indptr


# ---------------------------------------------------------------------------------------------
# Single request.

def single_prefill_with_kv_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale_q: Optional[torch.Tensor] = None,
    scale_k: Optional[torch.Tensor] = None,
    scale_v: Optional[torch.Tensor] = None,
    o_dtype: Optional[torch.dtype] = None,
    custom_mask: Optional[torch.Tensor] = None,
    packed_custom_mask: Optional[torch.Tensor] = None,
    causal: bool = False,
    kv_layout: str = "NHD",
    pos_encoding_mode: str = "NONE",
    use_fp16_qk_reduction: bool = False,
    sm_scale: Optional[float] = None,
    window_left: int = -1,
    logits_soft_cap: Optional[float] = None,
    rope_scale: Optional[float] = None,
    rope_theta: Optional[float] = None,
    backend: str = "auto",
    return_lse: bool = False,
    kv_cache_sf: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    k_scale: Optional[float] = None,
    v_scale: Optional[float] = None,
    variant: Optional[AttentionVariant] = None,
    variant_args: Sequence = (),
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Prefill/append attention of one request over contiguous K/V.

    Parameters
    ----------
    q : ``[qo_len, num_qo_heads, head_dim_qk]``, dtype float16, bfloat16 (or float32).
    k : ``[kv_len, num_kv_heads, head_dim_qk]`` (NHD) or ``[num_kv_heads, kv_len, head_dim_qk]`` (HND),
        dtype float16/bfloat16/float32 or float8 (then ``k_scale``/``v_scale`` dequantize).
    v : like ``k`` with last dimension ``head_dim_vo``.
    scale_q, scale_k, scale_v : per-head FP8 scale tensors: not supported (NotImplementedError).
    o_dtype : output dtype, default q's.
    custom_mask : bool ``[qo_len, kv_len]`` (any shape with qo_len * kv_len elements, row-major);
        False masks an element out. Replaces the causal mask.
    packed_custom_mask : uint8 ``[(qo_len * kv_len + 7) // 8]``, the mask packed with
        ``packbits(mask.view(-1), bitorder="little")``; wins over ``custom_mask``.
    causal : bottom-right aligned causal mask (``j <= i + kv_len - qo_len``); needs qo_len <= kv_len.
    kv_layout : "NHD" or "HND".
    pos_encoding_mode : "NONE", "ROPE_LLAMA" (rotary on q at positions ``kv_len - qo_len + i`` and on
        k at ``j``; ``rope_scale`` default 1, ``rope_theta`` default 1e4) or "ALIBI".
    use_fp16_qk_reduction : must be False (NotImplementedError otherwise).
    sm_scale : default ``1 / sqrt(head_dim_qk)``.
    window_left : -1, or w >= 0: keys with ``j >= i + kv_len - qo_len - w`` only.
    logits_soft_cap : None/0, or c > 0: ``c * tanh(x / c)`` on scaled logits x.
    backend : "auto", "fa2", "fa3" or "triton": all run this library's Triton kernel.
    return_lse : also return the LSE.
    kv_cache_sf : NVFP4 scale factors: not supported (NotImplementedError).
    k_scale, v_scale : Python floats; k_scale multiplies sm_scale, v_scale the output.
    variant : optional ``flashinfer_triton.AttentionVariant`` (an extension: Triton hooks compiled
        into the kernel); ``variant_args`` its tensors then scalars, in declaration order.

    Returns
    -------
    out : ``[qo_len, num_qo_heads, head_dim_vo]`` in ``o_dtype``; with ``return_lse`` also
    lse : ``[qo_len, num_qo_heads]`` float32, base 2.
    """
    check_backend(backend)
    for name, value in (("scale_q", scale_q), ("scale_k", scale_k), ("scale_v", scale_v), ("kv_cache_sf", kv_cache_sf)):
        if value is not None:
            raise NotImplementedError(f"{name}: per-head FP8 / NVFP4 scale tensors are not supported; pass "
                                      f"k_scale/v_scale floats with a float8 KV")
    check_layout(kv_layout)
    check_tensor("q", q, dtypes=Q_DTYPES, ndim=3, last_dim_contiguous=True)
    kv = unpack_ragged_kv(k, v, kv_layout)
    if k.device != q.device:
        raise ValueError(f"k: expected a tensor on {q.device} like q, got one on {k.device}")
    qo_len, num_qo_heads, head_dim = q.shape
    if head_dim != kv.head_dim:
        raise ValueError(f"q: head_dim {head_dim} differs from k's {kv.head_dim}")
    kv_len = ragged_kv_len(kv, kv_layout)
    has_mask = custom_mask is not None or packed_custom_mask is not None
    if causal and not has_mask and qo_len > kv_len:
        raise ValueError(f"q: causal attention needs qo_len <= kv_len, got qo_len {qo_len} > kv_len {kv_len}")
    opts = _prefill_options(num_qo_heads, kv.num_kv_heads, head_dim, kv.head_dim_vo, False, causal, has_mask,
                            pos_encoding_mode, use_fp16_qk_reduction, window_left, logits_soft_cap, sm_scale,
                            rope_scale, rope_theta, q.dtype, k.dtype, o_dtype, variant)
    params = run_params(opts.variant, tuple(variant_args), q.device, want_lse=return_lse)
    qo_h = np.array([0, qo_len], dtype=np.int64)
    kv_h = np.array([kv_len], dtype=np.int64)
    mask, mask_indptr_h = _prepare_mask(custom_mask, packed_custom_mask, qo_h[1:], kv_h, q.device)
    mask_indptr = None if mask is None else torch.from_numpy(mask_indptr_h.astype(np.int32)).to(q.device)
    planned = plan_attention(opts, single_request_workspace(q.device), DeviceMetadata(q.device, fixed=False), qo_h, kv_h,
                             np.zeros(1, dtype=np.int64), None, 1, mask=mask, mask_indptr=mask_indptr)
    out = torch.empty((qo_len, num_qo_heads, kv.head_dim_vo), dtype=opts.o_dtype, device=q.device)
    lse = torch.empty((qo_len, num_qo_heads), dtype=torch.float32, device=q.device) if return_lse else None
    run_attention(planned.launcher, q, kv, out, lse, 1.0, scale_arg("k_scale", k_scale), scale_arg("v_scale", v_scale),
                  params=params)
    return (out, lse) if return_lse else out


single_prefill_with_kv_cache_return_lse = functools.partial(single_prefill_with_kv_cache, return_lse=True)
single_prefill_with_kv_cache_return_lse.__doc__ = (
    "``single_prefill_with_kv_cache(..., return_lse=True)``: returns (out ``[qo_len, num_qo_heads, "
    "head_dim_vo]``, lse ``[qo_len, num_qo_heads]`` float32, base 2).")


# ---------------------------------------------------------------------------------------------
# Batch wrappers.

class _BatchPrefillBase(WrapperState):
    """Plan/run machinery shared by the ragged and paged wrappers.

    FlashInfer's private state is kept as FlashInfer keeps it, for the serving engines that read
    and write it: after plan(), ``_causal``, ``_pos_encoding_mode``, ``_use_fp16_qk_reduction``,
    ``_window_left``, ``_logits_soft_cap`` (0.0 for None), ``_sm_scale``, ``_rope_scale``,
    ``_rope_theta`` (as passed; None means the default), ``_backend`` ("auto" resolved to "fa2");
    from the constructor ``_fixed_batch_size`` (0 without CUDA graphs), the index buffers,
    ``_float_workspace_buffer``, ``_int_workspace_buffer``, ``_pin_memory_int_workspace_buffer``.
    run() reads the option attributes, so a change after plan() (the legacy ``forward``, which
    SGLang calls with ``causal=True`` over a plan without it) takes effect.
    """

    _paged = False
    _RUN_OPTIONS = ("causal", "pos_encoding_mode", "use_fp16_qk_reduction", "logits_soft_cap", "sm_scale",
                    "rope_scale", "rope_theta")
    _qo_indptr_buf = DeviceCopy()

    def _run_key(self) -> tuple:
        return (self._causal, self._pos_encoding_mode, self._use_fp16_qk_reduction, self._logits_soft_cap,
                self._sm_scale, self._rope_scale, self._rope_theta)

    def _init_common(self, float_workspace_buffer, kv_layout, use_cuda_graph, backend, jit_args, jit_kwargs,
                     custom_mask_buf, mask_indptr_buf, variant=None):
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
        self._use_cuda_graph = bool(use_cuda_graph)
        self._init_state(backend)
        self._fixed_batch_size = 0
        if use_cuda_graph:
            if custom_mask_buf is not None:
                check_tensor("custom_mask_buf", custom_mask_buf, dtypes=(torch.uint8,), ndim=1, device=self.device)
            if mask_indptr_buf is not None:
                check_int32_index("mask_indptr_buf", mask_indptr_buf, device=self.device)
        self._custom_mask_buf = custom_mask_buf
        self._mask_indptr_buf = mask_indptr_buf
        self._meta = DeviceMetadata(self.device, fixed=self._use_cuda_graph)
        self._max_total_num_rows: Optional[int] = None
        self._bounds = None  # (options, config, GraphBounds) of a CUDA-graph wrapper

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    @property
    def total_rows(self) -> int:
        """Query rows of the planned batch (``qo_indptr[-1]``)."""
        return self._total_rows

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer=None) -> None:
        """Swap the float workspace (the int workspace is kept as ``_int_workspace_buffer`` and not
        used: metadata has its own buffer). Takes effect at the next plan()."""
        check_tensor("float_workspace_buffer", float_workspace_buffer, device=self.device)
        self._float_workspace_buffer = float_workspace_buffer
        self._workspace = Workspace(float_workspace_buffer)
        if int_workspace_buffer is not None:
            self._int_workspace_buffer = int_workspace_buffer

    def _use_workspace(self, workspace: Workspace) -> None:
        """Plan into a region of a shared workspace (cascade levels take disjoint regions)."""
        self._workspace = workspace

    def end_forward(self) -> None:
        """Kept for FlashInfer compatibility: nothing to release."""

    def _check_fixed_batch(self, batch: int, name: str) -> None:
        if self._use_cuda_graph and batch != self._fixed_batch_size:
            raise ValueError(f"{name}: under CUDA graphs the batch size is fixed at {self._fixed_batch_size} by the "
                             f"buffers given to the constructor, got {batch}")

    def _plan_common(self, qo_indptr_h, kv_len_h, kv_begin_h, kv_indices, page_size, num_qo_heads, num_kv_heads,
                     head_dim_qk, head_dim_vo, custom_mask, packed_custom_mask, causal, pos_encoding_mode,
                     use_fp16_qk_reduction, window_left, logits_soft_cap, sm_scale, rope_scale, rope_theta,
                     q_data_type, kv_data_type, o_data_type, non_blocking, fixed_split_size, disable_split_kv):
        """Everything after the index arrays have reached the host: options, masks, work list, launcher."""
        batch = kv_len_h.shape[0]
        if fixed_split_size is not None and (not isinstance(fixed_split_size, int) or fixed_split_size < -1):
            raise ValueError(f"fixed_split_size: expected None, -1 or a positive int, got {fixed_split_size!r}")
        qo_len_h = check_csr("qo_indptr", qo_indptr_h)
        total_rows = int(qo_indptr_h[-1])
        has_mask = custom_mask is not None or packed_custom_mask is not None
        opts = _prefill_options(num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo, self._paged, causal, has_mask,
                                pos_encoding_mode, use_fp16_qk_reduction, window_left, logits_soft_cap, sm_scale,
                                rope_scale, rope_theta, q_data_type, kv_data_type, o_data_type, self._variant)
        fixed = fixed_split_size is not None and fixed_split_size > 0
        # Batch-invariant results (a fixed split) need a block shape that does not depend on the batch.
        shape_qo_len = shape_rows = _BATCH_INVARIANT_QO_LEN if fixed else None
        cfg = bounds = None
        if self._use_cuda_graph:
            # FlashInfer's rule: the first plan fixes the largest total query count the graph serves.
            if self._max_total_num_rows is None:
                self._max_total_num_rows = total_rows
            elif total_rows > self._max_total_num_rows:
                raise ValueError(f"qo_indptr: {total_rows} query rows exceed the {self._max_total_num_rows} that the "
                                 f"first plan() of this CUDA-graph wrapper fixed")
            if self._bounds is None or self._bounds[0] != opts:
                rows = max(self._max_total_num_rows, 1)
                cfg = select_config(opts, device_info(self.device), shape_qo_len or rows, shape_rows or rows, page_size)
                self._bounds = (opts, cfg, graph_bounds(opts, cfg, self.device, batch, rows))
            _, cfg, bounds = self._bounds
        mask, mask_indptr_h = _prepare_mask(custom_mask, packed_custom_mask, qo_len_h, kv_len_h, self.device)
        mask_indptr = None
        if mask is not None:
            mask_indptr = torch.from_numpy(mask_indptr_h.astype(np.int32))
            if self._use_cuda_graph:
                if self._custom_mask_buf is None or self._mask_indptr_buf is None:
                    raise ValueError("custom_mask_buf/mask_indptr_buf: required by a custom mask when use_cuda_graph=True")
                if mask.numel() > self._custom_mask_buf.numel():
                    raise ValueError(f"custom_mask_buf: the packed mask needs {mask.numel()} bytes, the buffer has "
                                     f"{self._custom_mask_buf.numel()}")
                if self._mask_indptr_buf.numel() != batch + 1:
                    raise ValueError(f"mask_indptr_buf: expected batch_size + 1 = {batch + 1} entries, got "
                                     f"{self._mask_indptr_buf.numel()}")
                self._custom_mask_buf[: mask.numel()].copy_(mask, non_blocking=non_blocking)
                self._mask_indptr_buf.copy_(mask_indptr, non_blocking=non_blocking)
                mask, mask_indptr = self._custom_mask_buf, self._mask_indptr_buf
            else:
                mask_indptr = mask_indptr.to(self.device, non_blocking=non_blocking)
        split = fixed_split_size * page_size if fixed else None  # FlashInfer counts it in pages
        planned = plan_attention(
            opts, self._workspace, self._meta, qo_indptr_h, kv_len_h, kv_begin_h, kv_indices, page_size,
            config_qo_len=shape_qo_len, config_rows=shape_rows, cfg=cfg, disable_split_kv=bool(disable_split_kv),
            fixed_split_tokens=split, bounds=bounds, mask=mask, mask_indptr=mask_indptr, non_blocking=non_blocking)
        self._batch_size = batch
        self._total_rows = total_rows
        self._set_run_options(bool(causal), pos_encoding_mode, use_fp16_qk_reduction, window_left,
                              0.0 if logits_soft_cap is None else logits_soft_cap, sm_scale, rope_scale, rope_theta)
        self._set_plan(planned, exact=True)

    def _run_common(self, q, kv: KVView, out, lse, return_lse, q_scale, k_scale, v_scale, window_left, sinks,
                    kv_name, args=()):
        last = self._last  # the launcher of the last run(), valid while plan and options are unchanged
        launcher = last[2] if last[0] is self._plan_info and last[1] == self._run_key() else self._launcher()
        opts = launcher.opts
        n = self._total_rows
        if not isinstance(q, torch.Tensor):
            raise TypeError(f"q: expected a torch.Tensor, got {type(q).__name__}")
        if q.dim() != 3 or q.shape[0] != n or q.shape[1] != opts.num_qo_heads or q.shape[2] != opts.head_dim:
            raise ValueError(f"q: expected shape [{n}, {opts.num_qo_heads}, {opts.head_dim}] (qo_indptr[-1], heads, "
                             f"head_dim_qk as planned), got {list(q.shape)}")
        if q.dtype != opts.q_dtype:
            raise TypeError(f"q: expected dtype {opts.q_dtype} (plan's q_data_type), got {q.dtype}")
        if q.stride(-1) != 1:
            raise ValueError("q: the last dimension must be contiguous")
        if q.device != self.device:
            raise ValueError(f"q: expected a tensor on {self.device}, got one on {q.device}")
        if kv.k.dtype != opts.kv_dtype:
            raise TypeError(f"{kv_name}: expected dtype {opts.kv_dtype} (plan's kv_data_type), got {kv.k.dtype}")
        if kv.k.device != self.device:
            raise ValueError(f"{kv_name}: expected tensors on {self.device}, got {kv.k.device}")
        if kv.num_kv_heads != opts.num_kv_heads or kv.head_dim != opts.head_dim or kv.head_dim_vo != opts.head_dim_vo:
            raise ValueError(f"{kv_name}: expected {opts.num_kv_heads} KV heads, head_dim_qk {opts.head_dim} and "
                             f"head_dim_vo {opts.head_dim_vo} in {self._kv_layout} layout (planned), got K "
                             f"{tuple(kv.k.shape)}, V {tuple(kv.v.shape)}")
        if window_left is None:
            window_left = self._window_left
        elif not isinstance(window_left, int) or isinstance(window_left, bool):
            raise TypeError(f"window_left: expected an int or None, got {type(window_left).__name__}")
        shape_o = (n, opts.num_qo_heads, opts.head_dim_vo)
        if out is None:
            out = torch.empty(shape_o, dtype=opts.o_dtype, device=self.device)
        else:
            check_tensor("out", out, dtypes=(opts.o_dtype,), device=self.device, last_dim_contiguous=True)
            if tuple(out.shape) != shape_o:
                raise ValueError(f"out: expected shape {list(shape_o)}, got {list(out.shape)}")
        if lse is not None:
            check_tensor("lse", lse, dtypes=(torch.float32,), device=self.device)
            if tuple(lse.shape) != (n, opts.num_qo_heads) or not lse.is_contiguous():
                raise ValueError(f"lse: expected a contiguous [{n}, {opts.num_qo_heads}] float32 tensor, got "
                                 f"{list(lse.shape)}")
            return_lse = True
        elif return_lse:
            lse = torch.empty((n, opts.num_qo_heads), dtype=torch.float32, device=self.device)
        if sinks is not None:
            check_sinks(sinks, opts.num_qo_heads, self.device)
        params = run_params(opts.variant, args, self.device, sinks, return_lse)
        run_attention(launcher, q, kv, out, lse, scale_arg("q_scale", q_scale), scale_arg("k_scale", k_scale),
                      scale_arg("v_scale", v_scale), window_left, sinks, params)
        return (out, lse) if return_lse else out

    def _set_run_options(self, causal, pos_encoding_mode, use_fp16_qk_reduction, window_left, logits_soft_cap,
                            sm_scale, rope_scale, rope_theta) -> None:
        """FlashInfer's run-option attributes, as plan() and the legacy ``forward`` set them."""
        self._causal = causal
        self._pos_encoding_mode = pos_encoding_mode
        self._use_fp16_qk_reduction = use_fp16_qk_reduction
        self._window_left = window_left
        self._logits_soft_cap = logits_soft_cap
        self._sm_scale = sm_scale
        self._rope_scale = rope_scale
        self._rope_theta = rope_theta


class BatchPrefillWithRaggedKVCacheWrapper(_BatchPrefillBase):
    """Batch prefill/append attention with K/V stored as ragged tensors, FlashInfer's wrapper.

    ``plan()`` once per batch (host work, one asynchronous copy of the metadata); ``run()`` once per
    layer. Request ``b`` owns query rows ``qo_indptr[b]:qo_indptr[b+1]`` of q and key/value tokens
    ``kv_indptr[b]:kv_indptr[b+1]`` of k/v. With ``use_cuda_graph=True`` the grids are sized at the
    first ``plan()`` (batch size from ``qo_indptr_buf``, total query rows from that plan) and ``run()``
    captured in a graph replays correctly after later plans with no more rows.

    Parameters
    ----------
    float_workspace_buffer : uint8 (any dtype accepted) on the device; holds split-KV partials (128 MB).
    kv_layout : "NHD" (k ``[kv_indptr[-1], num_kv_heads, head_dim]``) or "HND" (``[num_kv_heads,
        kv_indptr[-1], head_dim]``).
    use_cuda_graph : bool
    qo_indptr_buf, kv_indptr_buf : ``[batch_size + 1]`` int32, required with ``use_cuda_graph``.
    custom_mask_buf : ``[max_mask_bytes]`` uint8, with ``use_cuda_graph`` and a custom mask.
    mask_indptr_buf : ``[batch_size + 1]`` int32, with ``use_cuda_graph`` and a custom mask.
    backend : "auto", "fa2", "fa3" or "triton": all run this library's Triton kernel.
    variant : optional ``flashinfer_triton.AttentionVariant`` (an extension replacing FlashInfer's
        C++ ``jit_args``): Triton hooks compiled into the kernel; run() then takes its tensors and
        scalars as extra positional arguments after the KV arguments.
    """

    _kv_indptr_buf = DeviceCopy()

    def __init__(
        self,
        float_workspace_buffer: torch.Tensor,
        kv_layout: str = "NHD",
        use_cuda_graph: bool = False,
        qo_indptr_buf: Optional[torch.Tensor] = None,
        kv_indptr_buf: Optional[torch.Tensor] = None,
        custom_mask_buf: Optional[torch.Tensor] = None,
        mask_indptr_buf: Optional[torch.Tensor] = None,
        backend: str = "auto",
        jit_args=None,
        jit_kwargs=None,
        variant: Optional[AttentionVariant] = None,
    ) -> None:
        self._init_common(float_workspace_buffer, kv_layout, use_cuda_graph, backend, jit_args, jit_kwargs,
                          custom_mask_buf, mask_indptr_buf, variant)
        if use_cuda_graph:
            for name, buf in (("qo_indptr_buf", qo_indptr_buf), ("kv_indptr_buf", kv_indptr_buf)):
                if buf is None:
                    raise ValueError(f"{name}: required when use_cuda_graph=True")
                check_int32_index(name, buf, device=self.device)
            if kv_indptr_buf.numel() != qo_indptr_buf.numel():
                raise ValueError(f"kv_indptr_buf: expected {qo_indptr_buf.numel()} entries like qo_indptr_buf, got "
                                 f"{kv_indptr_buf.numel()}")
            self._fixed_batch_size = qo_indptr_buf.numel() - 1
        self._qo_indptr_buf = qo_indptr_buf
        self._kv_indptr_buf = kv_indptr_buf

    def plan(
        self,
        qo_indptr: torch.Tensor,
        kv_indptr: torch.Tensor,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim_qk: int,
        head_dim_vo: Optional[int] = None,
        custom_mask: Optional[torch.Tensor] = None,
        packed_custom_mask: Optional[torch.Tensor] = None,
        causal: bool = False,
        pos_encoding_mode: str = "NONE",
        use_fp16_qk_reduction: bool = False,
        window_left: int = -1,
        logits_soft_cap: Optional[float] = None,
        sm_scale: Optional[float] = None,
        rope_scale: Optional[float] = None,
        rope_theta: Optional[float] = None,
        q_data_type: Union[str, torch.dtype] = "float16",
        kv_data_type: Optional[Union[str, torch.dtype]] = None,
        o_data_type: Optional[Union[str, torch.dtype]] = None,
        non_blocking: bool = True,
        prefix_len_ptr: Optional[torch.Tensor] = None,
        token_pos_in_items_ptr: Optional[torch.Tensor] = None,
        token_pos_in_items_len: int = 0,
        max_item_len_ptr: Optional[torch.Tensor] = None,
        fixed_split_size: Optional[int] = None,
        disable_split_kv: bool = False,
        seq_lens: Optional[torch.Tensor] = None,
        seq_lens_q: Optional[torch.Tensor] = None,
        max_token_per_sequence: Optional[int] = None,
        max_sequence_kv: Optional[int] = None,
        v_indptr: Optional[torch.Tensor] = None,
        o_indptr: Optional[torch.Tensor] = None,
    ) -> None:
        """Plan ragged prefill for one batch.

        Parameters
        ----------
        qo_indptr : ``[batch_size + 1]`` int32, query row offsets (starts at 0).
        kv_indptr : ``[batch_size + 1]`` int32, key/value token offsets into k/v.
        num_qo_heads, num_kv_heads : ints, num_qo_heads % num_kv_heads == 0.
        head_dim_qk : q/k head dim; head_dim_vo : v/out head dim (default head_dim_qk).
        custom_mask : bool ``[sum(qo_len[b] * kv_len[b])]``, request b's ``[qo_len, kv_len]`` mask
            row-major, requests concatenated; False masks out. Replaces the causal mask.
        packed_custom_mask : uint8, that mask packed per request (``segment_packbits(custom_mask, indptr,
            bitorder="little")``, byte-aligned segments); wins over ``custom_mask``.
        causal : bottom-right aligned causal mask, ``j <= i + kv_len - qo_len``.
        pos_encoding_mode : "NONE", "ROPE_LLAMA" or "ALIBI".
        use_fp16_qk_reduction : must be False.
        window_left : -1, or w >= 0: keys ``j >= i + kv_len - qo_len - w`` only.
        logits_soft_cap : None/0 or c > 0. sm_scale : default ``1 / sqrt(head_dim_qk)``.
        rope_scale, rope_theta : RoPE options (defaults 1 and 1e4).
        q_data_type, kv_data_type, o_data_type : dtypes or names; kv and o default to q's.
        fixed_split_size : KV chunk in tokens for every request (rounded up to the kernel's KV block);
            results are then batch-invariant (the block shape no longer depends on the batch either).
        disable_split_kv : never split a request's KV.
        prefix_len_ptr, token_pos_in_items_ptr, max_item_len_ptr, seq_lens, seq_lens_q,
        max_token_per_sequence, max_sequence_kv, v_indptr, o_indptr : other FlashInfer backends'
            options: NotImplementedError when given.
        """
        for name, value in (("prefix_len_ptr", prefix_len_ptr), ("token_pos_in_items_ptr", token_pos_in_items_ptr),
                            ("max_item_len_ptr", max_item_len_ptr), ("seq_lens", seq_lens), ("seq_lens_q", seq_lens_q),
                            ("max_token_per_sequence", max_token_per_sequence), ("max_sequence_kv", max_sequence_kv),
                            ("v_indptr", v_indptr), ("o_indptr", o_indptr)):
            if value is not None:
                raise NotImplementedError(f"{name}: not supported by the triton backend")
        check_int32_index("qo_indptr", qo_indptr)
        check_int32_index("kv_indptr", kv_indptr, numel=qo_indptr.numel())
        batch = qo_indptr.numel() - 1
        self._check_fixed_batch(batch, "qo_indptr")
        host = host_int64([qo_indptr, kv_indptr])
        qo_h, kv_indptr_h = host[: batch + 1], host[batch + 1:]
        kv_len_h = np.diff(kv_indptr_h)
        if (kv_len_h < 0).any() or (batch >= 0 and kv_indptr_h[0] < 0):
            raise ValueError("kv_indptr: expected a non-decreasing, non-negative CSR offset array")
        self._plan_common(qo_h, kv_len_h, kv_indptr_h[:-1], None, 1, num_qo_heads, num_kv_heads, head_dim_qk,
                          head_dim_vo, custom_mask, packed_custom_mask, causal, pos_encoding_mode,
                          use_fp16_qk_reduction, window_left, logits_soft_cap, sm_scale, rope_scale, rope_theta,
                          q_data_type, kv_data_type, o_data_type, non_blocking, fixed_split_size, disable_split_kv)
        self._kv_tokens = int(kv_indptr_h[-1])
        if self._use_cuda_graph:
            self._qo_indptr_buf.copy_(qo_indptr, non_blocking=non_blocking)
            self._kv_indptr_buf.copy_(kv_indptr, non_blocking=non_blocking)
        else:  # FlashInfer's device copies (made when first read)
            self._qo_indptr_buf, self._kv_indptr_buf = qo_h, kv_indptr_h

    begin_forward = plan

    def run(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *args,
        q_scale: Optional[float] = None,
        k_scale: Optional[float] = None,
        v_scale: Optional[float] = None,
        o_scale: Optional[float] = None,
        out: Optional[torch.Tensor] = None,
        lse: Optional[torch.Tensor] = None,
        return_lse: bool = False,
        enable_pdl: Optional[bool] = None,
        kv_cache_sf=None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Prefill attention for the planned batch.

        Parameters
        ----------
        q : ``[qo_indptr[-1], num_qo_heads, head_dim_qk]``, the planned q dtype.
        k : ``[n_kv, num_kv_heads, head_dim_qk]`` (NHD) or ``[num_kv_heads, n_kv, head_dim_qk]`` (HND),
            ``n_kv >= kv_indptr[-1]``; v : like k with last dimension head_dim_vo.
        *args : the variant's tensors then scalars, in declaration order (``variant.args(**by_name)``).
        q_scale, k_scale, v_scale : Python floats; q_scale * k_scale multiplies sm_scale, v_scale the output.
        out : optional ``[qo_indptr[-1], num_qo_heads, head_dim_vo]`` output buffer (o_data_type).
        lse : optional ``[qo_indptr[-1], num_qo_heads]`` float32 buffer (implies returning it).

        Returns
        -------
        out, or (out, lse) with lse ``[qo_indptr[-1], num_qo_heads]`` float32 in base 2.
        """
        if enable_pdl:
            raise NotImplementedError("enable_pdl=True: programmatic dependent launch is not available through Triton")
        if kv_cache_sf is not None:
            raise NotImplementedError("kv_cache_sf: NVFP4 KV is not supported")
        if o_scale is not None and o_scale != 1.0:
            raise NotImplementedError("o_scale: output quantization scales are not supported")
        kv = unpack_ragged_kv(k, v, self._kv_layout)
        if self._plan_info is not None:
            n_kv = ragged_kv_len(kv, self._kv_layout)
            if n_kv < self._kv_tokens:
                raise ValueError(f"k: kv_indptr[-1] = {self._kv_tokens} tokens planned, k has {n_kv}")
        return self._run_common(q, kv, out, lse, return_lse, q_scale, k_scale, v_scale, None, None, "k/v", args)

    def run_return_lse(self, q, k, v, *args, **kwargs):
        kwargs["return_lse"] = True
        return self.run(q, k, v, *args, **kwargs)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False, window_left: int = -1,
                logits_soft_cap: Optional[float] = None, sm_scale: Optional[float] = None,
                rope_scale: Optional[float] = None, rope_theta: Optional[float] = None) -> torch.Tensor:
        """FlashInfer's legacy per-call API: sets ``_causal``, ``_pos_encoding_mode``,
        ``_use_fp16_qk_reduction``, ``_window_left``, ``_logits_soft_cap``, ``_sm_scale``,
        ``_rope_scale``, ``_rope_theta`` to these values (they stay set, as in FlashInfer; note
        ``causal`` defaults to False whatever plan() had), then ``run(q, k, v)``. The positional
        encoding must be the planned one (NotImplementedError otherwise)."""
        self._set_run_options(causal, pos_encoding_mode, use_fp16_qk_reduction, window_left, logits_soft_cap,
                              sm_scale, rope_scale, rope_theta)
        return self.run(q, k, v)

    def forward_return_lse(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                           pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
                           window_left: int = -1, logits_soft_cap: Optional[float] = None,
                           sm_scale: Optional[float] = None, rope_scale: Optional[float] = None,
                           rope_theta: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``forward`` returning (out, lse), lse base 2."""
        self._set_run_options(causal, pos_encoding_mode, use_fp16_qk_reduction, window_left, logits_soft_cap,
                              sm_scale, rope_scale, rope_theta)
        return self.run_return_lse(q, k, v)


class BatchPrefillWithPagedKVCacheWrapper(_BatchPrefillBase):
    """Batch prefill/append attention over a paged KV cache, FlashInfer's wrapper.

    Request ``b`` owns query rows ``qo_indptr[b]:qo_indptr[b+1]`` and the KV pages
    ``paged_kv_indices[paged_kv_indptr[b]:paged_kv_indptr[b+1]]`` (``kv_len = page_size * (pages - 1) +
    last_page_len``); its queries are its last ``qo_len`` tokens (chunked prefill / append, causal
    aligned bottom-right). Requests with one query token mix freely with long prefills.
    With ``use_cuda_graph=True`` the page table lives in the fixed buffers given here, the grids are
    sized at the first ``plan()`` (batch size from the buffers, total query rows from that plan), and
    ``run()`` captured in a graph replays correctly after later plans with no more rows.

    Parameters
    ----------
    float_workspace_buffer : uint8 (any dtype accepted) on the device; holds split-KV partials (128 MB).
    kv_layout : "NHD" or "HND".
    use_cuda_graph : bool
    qo_indptr_buf, paged_kv_indptr_buf : ``[batch_size + 1]`` int32, required with ``use_cuda_graph``.
    paged_kv_indices_buf : ``[max_num_pages]`` int32, required with ``use_cuda_graph``.
    paged_kv_last_page_len_buf : ``[batch_size]`` int32, required with ``use_cuda_graph``.
    custom_mask_buf : ``[max_mask_bytes]`` uint8, with ``use_cuda_graph`` and a custom mask.
    mask_indptr_buf : ``[batch_size + 1]`` int32, with ``use_cuda_graph`` and a custom mask.
    backend : "auto", "fa2", "fa3" or "triton": all run this library's Triton kernel.
    variant : optional ``flashinfer_triton.AttentionVariant`` (an extension replacing FlashInfer's
        C++ ``jit_args``): Triton hooks compiled into the kernel; run() then takes its tensors and
        scalars as extra positional arguments after the KV arguments.
    """

    _paged = True
    _paged_kv_indptr_buf = DeviceCopy()
    _paged_kv_last_page_len_buf = DeviceCopy()

    def __init__(
        self,
        float_workspace_buffer: torch.Tensor,
        kv_layout: str = "NHD",
        use_cuda_graph: bool = False,
        qo_indptr_buf: Optional[torch.Tensor] = None,
        paged_kv_indptr_buf: Optional[torch.Tensor] = None,
        paged_kv_indices_buf: Optional[torch.Tensor] = None,
        paged_kv_last_page_len_buf: Optional[torch.Tensor] = None,
        custom_mask_buf: Optional[torch.Tensor] = None,
        mask_indptr_buf: Optional[torch.Tensor] = None,
        backend: str = "auto",
        jit_args=None,
        jit_kwargs=None,
        variant: Optional[AttentionVariant] = None,
    ) -> None:
        self._init_common(float_workspace_buffer, kv_layout, use_cuda_graph, backend, jit_args, jit_kwargs,
                          custom_mask_buf, mask_indptr_buf, variant)
        if use_cuda_graph:
            for name, buf in (("qo_indptr_buf", qo_indptr_buf), ("paged_kv_indptr_buf", paged_kv_indptr_buf),
                              ("paged_kv_indices_buf", paged_kv_indices_buf),
                              ("paged_kv_last_page_len_buf", paged_kv_last_page_len_buf)):
                if buf is None:
                    raise ValueError(f"{name}: required when use_cuda_graph=True")
                check_int32_index(name, buf, device=self.device)
            self._fixed_batch_size = qo_indptr_buf.numel() - 1
            if paged_kv_indptr_buf.numel() != self._fixed_batch_size + 1:
                raise ValueError(f"paged_kv_indptr_buf: expected batch_size + 1 = {self._fixed_batch_size + 1} entries "
                                 f"like qo_indptr_buf, got {paged_kv_indptr_buf.numel()}")
            if paged_kv_last_page_len_buf.numel() != self._fixed_batch_size:
                raise ValueError(f"paged_kv_last_page_len_buf: expected batch_size = {self._fixed_batch_size} entries, "
                                 f"got {paged_kv_last_page_len_buf.numel()}")
        self._qo_indptr_buf = qo_indptr_buf
        self._paged_kv_indptr_buf = paged_kv_indptr_buf
        self._paged_kv_indices_buf = paged_kv_indices_buf
        self._paged_kv_last_page_len_buf = paged_kv_last_page_len_buf

    def plan(
        self,
        qo_indptr: torch.Tensor,
        paged_kv_indptr: torch.Tensor,
        paged_kv_indices: torch.Tensor,
        paged_kv_last_page_len: torch.Tensor,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim_qk: int,
        page_size: int,
        head_dim_vo: Optional[int] = None,
        custom_mask: Optional[torch.Tensor] = None,
        packed_custom_mask: Optional[torch.Tensor] = None,
        causal: bool = False,
        pos_encoding_mode: str = "NONE",
        use_fp16_qk_reduction: bool = False,
        sm_scale: Optional[float] = None,
        window_left: int = -1,
        logits_soft_cap: Optional[float] = None,
        rope_scale: Optional[float] = None,
        rope_theta: Optional[float] = None,
        q_data_type: Union[str, torch.dtype] = "float16",
        kv_data_type: Optional[Union[str, torch.dtype]] = None,
        o_data_type: Optional[Union[str, torch.dtype]] = None,
        non_blocking: bool = True,
        prefix_len_ptr: Optional[torch.Tensor] = None,
        token_pos_in_items_ptr: Optional[torch.Tensor] = None,
        token_pos_in_items_len: int = 0,
        max_item_len_ptr: Optional[torch.Tensor] = None,
        seq_lens: Optional[torch.Tensor] = None,
        seq_lens_q: Optional[torch.Tensor] = None,
        block_tables: Optional[torch.Tensor] = None,
        max_token_per_sequence: Optional[int] = None,
        max_sequence_kv: Optional[int] = None,
        fixed_split_size: Optional[int] = None,
        disable_split_kv: bool = False,
    ) -> None:
        """Plan paged prefill/append for one batch.

        Parameters
        ----------
        qo_indptr : ``[batch_size + 1]`` int32, query row offsets (starts at 0).
        paged_kv_indptr : ``[batch_size + 1]`` int32, page-table CSR offsets.
        paged_kv_indices : ``[paged_kv_indptr[-1]]`` int32, page ids.
        paged_kv_last_page_len : ``[batch_size]`` int32, tokens in each request's last page, in
            [1, page_size] (a request with no pages has length 0).
        num_qo_heads, num_kv_heads, head_dim_qk, page_size : ints; num_qo_heads % num_kv_heads == 0.
        head_dim_vo : v/out head dim (default head_dim_qk; differs only with a (k, v) tuple cache).
        custom_mask : bool ``[sum(qo_len[b] * kv_len[b])]``, request b's ``[qo_len, kv_len]`` mask
            row-major, requests concatenated; False masks out. Replaces the causal mask.
        packed_custom_mask : uint8, that mask packed per request (``segment_packbits(custom_mask, indptr,
            bitorder="little")``, byte-aligned segments); wins over ``custom_mask``.
        causal : bottom-right aligned causal mask, ``j <= i + kv_len - qo_len``.
        pos_encoding_mode : "NONE", "ROPE_LLAMA" or "ALIBI".
        use_fp16_qk_reduction : must be False.
        sm_scale : default ``1 / sqrt(head_dim_qk)``. window_left : -1 or w >= 0 (see ragged).
        logits_soft_cap : None/0 or c > 0. rope_scale, rope_theta : RoPE options (1 and 1e4).
        q_data_type, kv_data_type, o_data_type : dtypes or names; kv and o default to q's.
        fixed_split_size : KV chunk in pages for every request (rounded up to the kernel's KV block);
            results are then batch-invariant (the block shape no longer depends on the batch either).
        disable_split_kv : never split a request's KV.
        prefix_len_ptr, token_pos_in_items_ptr, max_item_len_ptr, seq_lens, seq_lens_q, block_tables,
        max_token_per_sequence, max_sequence_kv : other FlashInfer backends' options:
            NotImplementedError when given.
        """
        for name, value in (("prefix_len_ptr", prefix_len_ptr), ("token_pos_in_items_ptr", token_pos_in_items_ptr),
                            ("max_item_len_ptr", max_item_len_ptr), ("seq_lens", seq_lens), ("seq_lens_q", seq_lens_q),
                            ("block_tables", block_tables), ("max_token_per_sequence", max_token_per_sequence),
                            ("max_sequence_kv", max_sequence_kv)):
            if value is not None:
                raise NotImplementedError(f"{name}: not supported by the triton backend; pass the CSR page table")
        check_int32_index("qo_indptr", qo_indptr)
        check_int32_index("paged_kv_indptr", paged_kv_indptr, numel=qo_indptr.numel())
        table = read_page_table(paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, page_size, self.device,
                                names=("paged_kv_indptr", "paged_kv_indices", "paged_kv_last_page_len"),
                                extra=[qo_indptr])
        batch = table.kv_len.shape[0]
        self._check_fixed_batch(batch, "qo_indptr")
        kv_indices = table.indices
        if self._use_cuda_graph:
            n_ids = paged_kv_indices.numel()
            if n_ids > self._paged_kv_indices_buf.numel():
                raise ValueError(f"paged_kv_indices: {n_ids} page ids exceed paged_kv_indices_buf "
                                 f"({self._paged_kv_indices_buf.numel()})")
        self._plan_common(table.extra[0], table.kv_len, table.indptr[:-1],
                          self._paged_kv_indices_buf if self._use_cuda_graph else kv_indices, page_size, num_qo_heads,
                          num_kv_heads, head_dim_qk, head_dim_vo, custom_mask, packed_custom_mask, causal,
                          pos_encoding_mode, use_fp16_qk_reduction, window_left, logits_soft_cap, sm_scale, rope_scale,
                          rope_theta, q_data_type, kv_data_type, o_data_type, non_blocking, fixed_split_size,
                          disable_split_kv)
        if self._use_cuda_graph:
            self._qo_indptr_buf.copy_(qo_indptr, non_blocking=non_blocking)
            self._paged_kv_indptr_buf.copy_(paged_kv_indptr, non_blocking=non_blocking)
            self._paged_kv_last_page_len_buf.copy_(paged_kv_last_page_len, non_blocking=non_blocking)
            self._paged_kv_indices_buf[: kv_indices.numel()].copy_(kv_indices, non_blocking=non_blocking)
        else:  # FlashInfer's device copies of the page table (made when first read)
            self._qo_indptr_buf, self._paged_kv_indptr_buf = table.extra[0], table.indptr
            self._paged_kv_indices_buf, self._paged_kv_last_page_len_buf = kv_indices, table.last_page_len
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
        kv_cache_sf=None,
        skip_softmax_threshold_scale_factor: Optional[float] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Prefill/append attention for the planned batch.

        Parameters
        ----------
        q : ``[qo_indptr[-1], num_qo_heads, head_dim_qk]``, the planned q dtype.
        paged_kv_cache : ``[num_pages, 2, page_size, num_kv_heads, head_dim]`` (NHD) or
            ``[num_pages, 2, num_kv_heads, page_size, head_dim]`` (HND), or a (k_cache, v_cache) tuple
            of 4-D tensors in the same layout.
        *args : the variant's tensors then scalars, in declaration order (``variant.args(**by_name)``).
        q_scale, k_scale, v_scale : Python floats; q_scale * k_scale multiplies sm_scale, v_scale the output.
        out : optional ``[qo_indptr[-1], num_qo_heads, head_dim_vo]`` output buffer (o_data_type).
        lse : optional ``[qo_indptr[-1], num_qo_heads]`` float32 buffer (implies returning it).
        window_left : overrides the planned window for this call.
        sinks : optional float32 ``[num_qo_heads]`` attention-sink logits (gpt-oss): each head's
            softmax denominator gains ``exp(sink)``; the returned LSE includes it.

        Returns
        -------
        out, or (out, lse) with lse ``[qo_indptr[-1], num_qo_heads]`` float32 in base 2.
        """
        if enable_pdl:
            raise NotImplementedError("enable_pdl=True: programmatic dependent launch is not available through Triton")
        if kv_cache_sf is not None:
            raise NotImplementedError("kv_cache_sf: NVFP4 KV is not supported")
        if skip_softmax_threshold_scale_factor is not None:
            raise NotImplementedError("skip_softmax_threshold_scale_factor: skip-softmax sparsity is not supported")
        kv = unpack_paged_kv_cache(paged_kv_cache, self._kv_layout)
        if self._plan_info is not None:
            if kv.page_size != self._page_size:
                raise ValueError(f"paged_kv_cache: expected page_size {self._page_size} (planned) in {self._kv_layout} "
                                 f"layout, got shape {tuple(kv.k.shape)} per K/V")
            if self._max_page_id is not None and self._max_page_id >= kv.num_pages:
                raise ValueError(f"paged_kv_indices: page id {self._max_page_id} is out of range for a cache of "
                                 f"{kv.num_pages} pages")
        return self._run_common(q, kv, out, lse, return_lse, q_scale, k_scale, v_scale, window_left, sinks,
                                "paged_kv_cache", args)

    def run_return_lse(self, q, paged_kv_cache, *args, **kwargs):
        kwargs["return_lse"] = True
        return self.run(q, paged_kv_cache, *args, **kwargs)

    def forward(self, q: torch.Tensor, paged_kv_cache, causal: bool = False, pos_encoding_mode: str = "NONE",
                use_fp16_qk_reduction: bool = False, k_scale: Optional[float] = None, v_scale: Optional[float] = None,
                window_left: int = -1, logits_soft_cap: Optional[float] = None, sm_scale: Optional[float] = None,
                rope_scale: Optional[float] = None, rope_theta: Optional[float] = None) -> torch.Tensor:
        """FlashInfer's legacy per-call API: sets ``_causal``, ``_pos_encoding_mode``,
        ``_use_fp16_qk_reduction``, ``_window_left``, ``_logits_soft_cap``, ``_sm_scale``,
        ``_rope_scale``, ``_rope_theta`` to these values (they stay set, as in FlashInfer; note
        ``causal`` defaults to False whatever plan() had), then ``run(q, paged_kv_cache, k_scale=,
        v_scale=)``. The positional encoding must be the planned one (NotImplementedError otherwise)."""
        self._set_run_options(causal, pos_encoding_mode, use_fp16_qk_reduction, window_left, logits_soft_cap,
                              sm_scale, rope_scale, rope_theta)
        return self.run(q, paged_kv_cache, k_scale=k_scale, v_scale=v_scale)

    def forward_return_lse(self, q: torch.Tensor, paged_kv_cache, causal: bool = False,
                           pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
                           k_scale: Optional[float] = None, v_scale: Optional[float] = None, window_left: int = -1,
                           logits_soft_cap: Optional[float] = None, sm_scale: Optional[float] = None,
                           rope_scale: Optional[float] = None,
                           rope_theta: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``forward`` returning (out, lse), lse base 2."""
        self._set_run_options(causal, pos_encoding_mode, use_fp16_qk_reduction, window_left, logits_soft_cap,
                              sm_scale, rope_scale, rope_theta)
        return self.run(q, paged_kv_cache, k_scale=k_scale, v_scale=v_scale, return_lse=True)
