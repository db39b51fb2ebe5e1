"""Block-sparse attention: FlashInfer's sparse wrappers on the shared attention engine.

``BlockSparseAttentionWrapper``: an ``M x N`` attention matrix given as a BSR matrix of ``R x C``
blocks (SciPy's ``bsr_matrix`` layout: ``indptr [MB + 1]``, ``indices [nnz]`` block column indices,
``MB = ceil(M / R)``, ``NB = N / C``), optionally with an element mask inside each stored block.
``VariableBlockSparseAttentionWrapper``: a block pattern per KV head whose row and column blocks
have sizes of their own (``block_row_sz``, ``block_col_sz``), on HND tensors.

Both are work lists of the one attention kernel (``attention/block_sparse.py``): row blocks are
requests whose keys are their stored blocks, read through a page table, so the time goes with the
number of stored blocks, long rows are split and merged like split-KV, and CUDA graphs and
``torch.compile`` work as for the other wrappers.

What FlashInfer 0.6 computes, and so these do:

- Row block ``b``'s keys are its stored blocks in ``indices`` order. ``causal`` aligns bottom-right
  in that list: row ``i`` (of ``qo_len`` rows) sees list entry ``p`` (of ``kv_len``) iff
  ``p <= i + kv_len - qo_len``. That is causal over the sequence when every row lists its blocks in
  ascending order and ends with the block holding its own positions (square blocks ``j <= b``, or
  vertical-slash lists ending at the diagonal).
- An element mask replaces ``causal``. A column listed twice in one row counts twice.
- A row with no visible key (no stored block, or all masked) gives zeros and LSE ``-inf``.

The LSE (``return_lse``) is base 2, ``log2(sum_j 2^(s_j * log2 e))`` over the scaled logits, float32.

A ``variant=`` (``flashinfer_triton.AttentionVariant``, an extension) applies on top: its hooks see
positions in that compacted key list (``kv_pos`` is the entry ``p``, ``q_pos`` the bottom-right
aligned row) and ``req`` the scheduler's request (a row block; for the variable wrapper, a (KV head,
row block) pair), so position-free hooks (soft caps, per-head biases, value-based masks) are the
ones that mean the same as on dense attention. ``run(..., variant_args=(...))`` passes its tensors
then scalars.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._utils import check_tensor
from .attention.block_sparse import (
    SparseBatch, bsr_batch, expand_pages, max_page_id_fits, plan_block_sparse, variable_batch,
)
from .attention.kv import KVView, check_csr, host_int64, unpack_paged_kv_cache
from .attention.ops import run_attention
from .attention.options import Q_DTYPES, check_backend, make_options, pos_encoding_code
from .attention.variant import AttentionVariant, check_variant, run_params
from .attention.plan import PlannedAttention
from .attention.scheduler import DeviceMetadata
from .attention.workspace import Workspace
from .prefill import _mask_byte_indptr, _prepare_mask

__all__ = ["BlockSparseAttentionWrapper", "VariableBlockSparseAttentionWrapper", "convert_bsr_mask_layout"]

INDEX_DTYPES = (torch.int32, torch.int64)
# FlashInfer's VSA backends (CuTe-DSL / C++ kernels for Blackwell) and their older names.
_VSA_BACKENDS = ("vsa_sm100_blk128", "vsa_sm100_blk64", "vsa_sm120_blk64", "vsa_blackwell", "vsa_blackwell_blk64")


def _check_sparse_backend(backend: str) -> str:
    if backend in _VSA_BACKENDS:
        raise NotImplementedError(f"backend={backend!r}: FlashInfer's VSA kernels (NVIDIA Blackwell) are not built "
                                  f"here; backend='auto' runs block-sparse attention on the Triton kernel")
    return check_backend(backend)


def _size_arg(name: str, value, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def _no_positions(pos_encoding_mode: str) -> None:
    pos_encoding_code(pos_encoding_mode)  # a ValueError for a name FlashInfer does not have either
    if pos_encoding_mode != "NONE":
        raise NotImplementedError(
            f"pos_encoding_mode={pos_encoding_mode!r}: inside a block-sparse row FlashInfer measures positions in "
            f"the row's compacted key list, not in the sequence; apply RoPE to q and k before run() "
            f"(flashinfer_triton.apply_rope_pos_ids) instead")


def _no_pdl(enable_pdl) -> None:
    if enable_pdl:
        raise NotImplementedError("enable_pdl=True: programmatic dependent launch is not available through Triton")


def convert_bsr_mask_layout(mask: torch.Tensor, indptr: torch.Tensor) -> torch.Tensor:
    """A BSR element mask in FlashInfer's flattened layout (FlashInfer's function of that name).

    Parameters
    ----------
    mask : bool ``[nnz, R, C]``, the mask of each stored block (``bsr_matrix`` data order).
    indptr : ``[MB + 1]`` int32/int64, the BSR row offsets (``indptr[-1] == nnz``).

    Returns
    -------
    ``[nnz * R * C]`` of ``mask``'s dtype: row block ``b``'s ``[R, nnz_b * C]`` mask (its blocks side by
    side, in ``indices`` order) row-major from ``indptr[b] * R * C``.
    """
    check_tensor("mask", mask, ndim=3)
    check_tensor("indptr", indptr, dtypes=INDEX_DTYPES, ndim=1)
    nnz, R, C = mask.shape
    offsets = indptr.tolist()
    if offsets and (offsets[0] != 0 or offsets[-1] != nnz):
        raise ValueError(f"indptr: expected offsets from 0 to nnz = mask.shape[0] = {nnz}, got {offsets[0]}..{offsets[-1]}")
    out = torch.empty(nnz * R * C, dtype=mask.dtype, device=mask.device)
    for start, end in zip(offsets[:-1], offsets[1:]):  # one copy per row block (as FlashInfer), no index tensor
        if end > start:
            out[start * R * C:end * R * C] = mask[start:end].transpose(0, 1).reshape(-1)
    return out


class _SparseWrapperBase:
    """Workspace, plan state and the launch shared by both wrappers."""

    def __init__(self, float_workspace_buffer: torch.Tensor, backend: str,
                 variant: Optional[AttentionVariant] = None) -> None:
        check_tensor("float_workspace_buffer", float_workspace_buffer)
        self._variant = check_variant(variant)
        self._backend = _check_sparse_backend(backend)
        self._float_workspace_buffer = float_workspace_buffer
        self._workspace = Workspace(float_workspace_buffer)
        self.device = float_workspace_buffer.device
        self._meta = DeviceMetadata(self.device, fixed=False)
        self._planned: Optional[PlannedAttention] = None
        self._inputs = None  # (batch, kv_indices, dense_qo_len, mask, mask_indptr): what a re-plan reuses
        self._options = None  # the make_options keywords of the current plan

    @property
    def planned(self) -> Optional[PlannedAttention]:
        """The engine's plan (options, kernel config, work list), or None before plan()."""
        return self._planned

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer=None) -> None:
        """Swap the float workspace (the int workspace is accepted and unused: the work list has its
        own buffer). Takes effect at the next plan()."""
        check_tensor("float_workspace_buffer", float_workspace_buffer, device=self.device)
        self._float_workspace_buffer = float_workspace_buffer
        self._workspace = Workspace(float_workspace_buffer)

    def end_forward(self) -> None:
        """Kept for FlashInfer compatibility: nothing to release."""

    def _plan(self, options: dict, batch: SparseBatch, kv_indices: torch.Tensor, dense_qo_len: int, mask,
              mask_indptr, non_blocking: bool) -> None:
        opts = make_options(paged=True, variant=self._variant, **options)
        self._planned = plan_block_sparse(opts, self._workspace, self._meta, batch, kv_indices, dense_qo_len,
                                          mask=mask, mask_indptr=mask_indptr, non_blocking=non_blocking)
        self._inputs = (batch, kv_indices, dense_qo_len, mask, mask_indptr)
        self._options = options

    def _replan_for_forward(self, pos_encoding_mode, use_fp16_qk_reduction, logits_soft_cap, sm_scale, rope_scale,
                            rope_theta) -> None:
        """The deprecated forward() sets these options for the call (FlashInfer's behaviour):
        plan again with them when they differ from the plan's."""
        if self._planned is None:
            raise RuntimeError("forward(): call plan() first")
        _no_positions(pos_encoding_mode)
        options = dict(self._options, use_fp16_qk_reduction=use_fp16_qk_reduction, logits_soft_cap=logits_soft_cap,
                       sm_scale=sm_scale, rope_scale=rope_scale, rope_theta=rope_theta)
        if options != self._options:
            self._plan(options, *self._inputs, non_blocking=True)

    def _check_q(self, q: torch.Tensor, shape) -> None:
        opts = self._planned.opts
        check_tensor("q", q, dtypes=Q_DTYPES, ndim=3, device=self.device, last_dim_contiguous=True)
        if tuple(q.shape) != shape:
            raise ValueError(f"q: expected shape {list(shape)} (as planned), got {list(q.shape)}")
        if q.dtype != opts.q_dtype:
            raise TypeError(f"q: expected dtype {opts.q_dtype} (plan's q_data_type), got {q.dtype}")

    def _check_kv(self, k: torch.Tensor, v: torch.Tensor, shape) -> None:
        opts = self._planned.opts
        for name, t in (("k", k), ("v", v)):
            check_tensor(name, t, ndim=3, device=self.device, last_dim_contiguous=True)
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected shape {list(shape)} (as planned), got {list(t.shape)}")
            if t.dtype != opts.kv_dtype:
                raise TypeError(f"{name}: expected dtype {opts.kv_dtype} (plan's kv_data_type), got {t.dtype}")

    def _outputs(self, out, lse, return_lse, shape_o):
        opts = self._planned.opts
        if out is None:
            out = torch.empty(shape_o, dtype=opts.o_dtype, device=self.device)
        else:
            check_tensor("out", out, dtypes=(opts.o_dtype,), device=self.device, last_dim_contiguous=True)
            if tuple(out.shape) != shape_o:
                raise ValueError(f"out: expected shape {list(shape_o)}, got {list(out.shape)}")
        if lse is not None:
            check_tensor("lse", lse, dtypes=(torch.float32,), device=self.device)
            if tuple(lse.shape) != shape_o[:2] or not lse.is_contiguous():
                raise ValueError(f"lse: expected a contiguous {list(shape_o[:2])} float32 tensor, got {list(lse.shape)}")
            return_lse = True
        elif return_lse:
            lse = torch.empty(shape_o[:2], dtype=torch.float32, device=self.device)
        return out, lse, return_lse

    def _launch(self, q: torch.Tensor, kv: KVView, out: torch.Tensor, lse: Optional[torch.Tensor],
                variant_args: Sequence = ()) -> None:
        params = run_params(self._planned.opts.variant, tuple(variant_args), self.device, want_lse=lse is not None)
        run_attention(self._planned.launcher, q, kv, out, lse, params=params)


class BlockSparseAttentionWrapper(_SparseWrapperBase):
    """Attention with a block-sparse (BSR) matrix as its mask, FlashInfer's wrapper.

    Row block ``b`` (query rows ``b * R`` to ``min((b + 1) * R, M)``) attends to the key blocks
    ``indices[indptr[b]:indptr[b + 1]]`` (block ``j`` = keys ``j * C`` to ``(j + 1) * C``), optionally
    masked element-wise; see the module docstring for causal and empty rows.

    Parameters
    ----------
    float_workspace_buffer : torch.Tensor
        uint8 (any dtype accepted) on the device; holds split-KV partials (FlashInfer uses 128 MB).
    backend : str
        ``"auto"``, ``"fa2"``, ``"fa3"`` or ``"triton"``: all run this library's Triton kernel. FlashInfer's
        VSA backends (``"vsa_sm100_blk128"``, ``"vsa_sm100_blk64"``, ``"vsa_sm120_blk64"``) raise
        NotImplementedError.
    variant : Optional[AttentionVariant]
        Extension: Triton hooks compiled into the kernel (see the module docstring for what their
        positions mean here); run() takes its tensors and scalars as ``variant_args``.
    """

    def __init__(self, float_workspace_buffer: torch.Tensor, backend: str = "auto",
                 variant: Optional[AttentionVariant] = None) -> None:
        super().__init__(float_workspace_buffer, backend, variant)
        self.M: Optional[int] = None
        self.N: Optional[int] = None
        self.R: Optional[int] = None
        self.C: Optional[int] = None

    def plan(
        self,
        indptr: Optional[torch.Tensor],
        indices: Optional[torch.Tensor],
        M: int,
        N: int,
        R: int,
        C: int,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        mask: Optional[torch.Tensor] = None,
        packed_mask: Optional[torch.Tensor] = None,
        causal: bool = False,
        pos_encoding_mode: str = "NONE",
        use_fp16_qk_reduction: bool = False,
        logits_soft_cap: Optional[float] = None,
        sm_scale: Optional[float] = None,
        rope_scale: Optional[float] = None,
        rope_theta: Optional[float] = None,
        q_data_type: Union[str, torch.dtype] = "float16",
        kv_data_type: Optional[Union[str, torch.dtype]] = None,
        o_data_type: Union[str, torch.dtype] = "float16",
        non_blocking: bool = True,
        block_mask: Optional[torch.Tensor] = None,
    ) -> None:
        """Plan block-sparse attention for one sparsity pattern (host work: reads ``indptr`` and
        ``indices`` once, in one copy when they live on the device).

        Parameters
        ----------
        indptr : ``[MB + 1]`` int32 (or int64), block row offsets, ``MB = ceil(M / R)``.
        indices : ``[nnz]`` int32 (or int64), block column indices, each in ``[0, N / C)``.
        M, N : query rows and key columns; ``M`` may end in a partial row block, ``N`` must be a
            multiple of ``C`` (K/V are read as ``N / C`` pages of ``C`` tokens, as in FlashInfer).
        R, C : block rows and columns.
        num_qo_heads, num_kv_heads, head_dim : ints; ``num_qo_heads % num_kv_heads == 0``.
        mask : optional bool ``[nnz, R, C]``, the mask inside each stored block (rows past ``M`` of
            the last row block are ignored); replaces ``causal``.
        packed_mask : optional uint8, that mask in FlashInfer's flattened layout
            (``convert_bsr_mask_layout``; the last row block cut to its rows) bit-packed per row block
            with ``bitorder="little"``, each row block's bits starting on a byte boundary
            (``segment_packbits``); for a single row block, ``packbits(flat_mask, bitorder="little")``.
            Wins over ``mask``.
        causal : bottom-right causal in each row's key list (module docstring).
        pos_encoding_mode : ``"NONE"`` (other modes raise NotImplementedError: positions would be
            measured in the compacted key list).
        use_fp16_qk_reduction : must be False.
        logits_soft_cap : None/0, or c > 0: ``c * tanh(x / c)`` on the scaled logits x.
        sm_scale : default ``1 / sqrt(head_dim)``. rope_scale, rope_theta : accepted, unused without RoPE.
        q_data_type, kv_data_type : dtypes or names; kv defaults to q's.
        o_data_type : output dtype, default ``"float16"`` (FlashInfer 0.6's default, whatever q's dtype).
        non_blocking : copy the work list to the device asynchronously.
        block_mask : FlashInfer's per-head block mask of its VSA backends: NotImplementedError (use
            ``VariableBlockSparseAttentionWrapper`` for a pattern per KV head).
        """
        if block_mask is not None:
            raise NotImplementedError("block_mask: per-head block masks are an option of FlashInfer's VSA backends; "
                                      "use VariableBlockSparseAttentionWrapper (block_mask_map per KV head)")
        if indptr is None or indices is None:
            raise ValueError("indptr, indices: both are required (block_mask is an option of FlashInfer's VSA backends)")
        _no_positions(pos_encoding_mode)
        M, N = _size_arg("M", M, 0), _size_arg("N", N, 0)
        R, C = _size_arg("R", R, 1), _size_arg("C", C, 1)
        if N % C != 0:
            raise ValueError(f"N: expected a multiple of C={C} (K/V are read as N / C pages of C tokens), got {N}")
        check_tensor("indptr", indptr, dtypes=INDEX_DTYPES, ndim=1)
        check_tensor("indices", indices, dtypes=INDEX_DTYPES, ndim=1)
        num_row_blocks = -(-M // R)
        if indptr.numel() != num_row_blocks + 1:
            raise ValueError(f"indptr: expected ceil(M / R) + 1 = {num_row_blocks + 1} entries (M={M}, R={R}), "
                             f"got {indptr.numel()}")
        host = host_int64([indptr, indices])
        indptr_h, ids = host[: num_row_blocks + 1], host[num_row_blocks + 1:]
        check_csr("indptr", indptr_h, indices.numel(), "indices")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= N // C):
            raise ValueError(f"indices: block column indices must be in [0, N / C = {N // C}), got values in "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        options = dict(num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                       q_data_type=q_data_type, kv_data_type=kv_data_type, o_data_type=o_data_type, causal=causal,
                       custom_mask=mask is not None or packed_mask is not None,
                       use_fp16_qk_reduction=use_fp16_qk_reduction, logits_soft_cap=logits_soft_cap,
                       sm_scale=sm_scale, rope_scale=rope_scale, rope_theta=rope_theta)
        make_options(paged=True, **options)  # argument errors before any mask work
        batch = bsr_batch(indptr_h, M, R, C)
        packed, mask_indptr = self._packed_mask(mask, packed_mask, indptr, batch, ids.size, R, C)
        kv_indices = indices.to(device=self.device, dtype=torch.int32, non_blocking=non_blocking).contiguous()
        self._plan(options, batch, kv_indices, M, packed, mask_indptr, non_blocking)
        self.M, self.N, self.R, self.C = M, N, R, C

    begin_forward = plan

    def _packed_mask(self, mask, packed_mask, indptr, batch: SparseBatch, nnz: int, R: int, C: int):
        """(packed uint8 mask, byte offsets per row block) on the device, or (None, None)."""
        if mask is None and packed_mask is None:
            return None, None
        qo_len, kv_len = batch.qo_len, batch.kv_len
        if packed_mask is not None:
            check_tensor("packed_mask", packed_mask, dtypes=(torch.uint8,), ndim=1)
            _, byte_indptr = _mask_byte_indptr(qo_len, kv_len)
            if packed_mask.numel() != byte_indptr[-1]:
                raise ValueError(f"packed_mask: expected {int(byte_indptr[-1])} bytes (each row block's qo_len * kv_len "
                                 f"bits packed little-endian, byte-aligned per row block), got {packed_mask.numel()}")
            packed = packed_mask.to(self.device).contiguous()
        else:
            check_tensor("mask", mask, dtypes=(torch.bool,), ndim=3)
            if tuple(mask.shape) != (nnz, R, C):
                raise ValueError(f"mask: expected shape [nnz={nnz}, R={R}, C={C}], got {list(mask.shape)}")
            flat = convert_bsr_mask_layout(mask, indptr)
            # Only the last row block can be short; its rows are the first of its [R, kv_len] segment.
            flat = flat[: int((qo_len * kv_len).sum())]
            packed, byte_indptr = _prepare_mask(flat, None, qo_len, kv_len, self.device)
        return packed, torch.from_numpy(byte_indptr.astype(np.int32)).to(self.device)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale_q=None, scale_k=None, scale_v=None,
                pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
                logits_soft_cap: Optional[float] = None, sm_scale: Optional[float] = None,
                rope_scale: Optional[float] = None, rope_theta: Optional[float] = None) -> torch.Tensor:
        """Deprecated (use run()): sets these options, as FlashInfer's forward() does, then runs."""
        self._replan_for_forward(pos_encoding_mode, use_fp16_qk_reduction, logits_soft_cap, sm_scale, rope_scale,
                                 rope_theta)
        return self.run(q, k, v, scale_q, scale_k, scale_v)

    def run(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale_q: Optional[torch.Tensor] = None,
        scale_k: Optional[torch.Tensor] = None,
        scale_v: Optional[torch.Tensor] = None,
        out: Optional[torch.Tensor] = None,
        lse: Optional[torch.Tensor] = None,
        return_lse: bool = False,
        enable_pdl: Optional[bool] = None,
        variant_args: Sequence = (),
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Block-sparse attention of the planned pattern.

        Parameters
        ----------
        q : ``[M, num_qo_heads, head_dim]``, the planned q dtype.
        k, v : ``[N, num_kv_heads, head_dim]``, the planned kv dtype (any token and head strides).
        scale_q, scale_k, scale_v : per-head FP8 scale tensors: NotImplementedError.
        out : optional ``[M, num_qo_heads, head_dim]`` output buffer (o_data_type).
        lse : optional ``[M, num_qo_heads]`` float32 buffer (implies returning it).
        return_lse : also return the LSE.
        enable_pdl : None/False (True raises NotImplementedError).
        variant_args : the variant's tensors then scalars (a wrapper built with ``variant=``).

        Returns
        -------
        out ``[M, num_qo_heads, head_dim]``, or (out, lse) with lse ``[M, num_qo_heads]`` float32, base 2.
        """
        for name, value in (("scale_q", scale_q), ("scale_k", scale_k), ("scale_v", scale_v)):
            if value is not None:
                raise NotImplementedError(f"{name}: per-head FP8 scale tensors are not supported")
        _no_pdl(enable_pdl)
        if self._planned is None:
            raise RuntimeError("run(): call plan() first")
        opts = self._planned.opts
        self._check_q(q, (self.M, opts.num_qo_heads, opts.head_dim))
        self._check_kv(k, v, (self.N, opts.num_kv_heads, opts.head_dim))
        pages = (self.N // self.C, self.C, opts.num_kv_heads, opts.head_dim)
        kv = unpack_paged_kv_cache((k.view(pages), v.view(pages)), "NHD", name="k/v")
        out, lse, return_lse = self._outputs(out, lse, return_lse, (self.M, opts.num_qo_heads, opts.head_dim))
        self._launch(q, kv, out, lse, variant_args)
        return (out, lse) if return_lse else out


class VariableBlockSparseAttentionWrapper(_SparseWrapperBase):
    """Block-sparse attention with variable block sizes and a pattern per KV head, FlashInfer's wrapper.

    For KV head ``h``, row block ``r`` (``block_row_sz[h, r]`` query rows, in order) attends to the
    column blocks ``c`` with ``block_mask_map[h, r, c]`` (``block_col_sz[h, c]`` keys each, in
    order); the query heads of a GQA group share their KV head's pattern. q/k/v/out are HND
    (``[heads, tokens, head_dim]``); see the module docstring for causal and empty rows.

    Parameters
    ----------
    float_workspace_buffer : torch.Tensor
        uint8 (any dtype accepted) on the device; holds split-KV partials (FlashInfer uses 128 MB).
    backend : str
        ``"auto"``, ``"fa2"``, ``"fa3"`` or ``"triton"``: all run this library's Triton kernel.
    variant : Optional[AttentionVariant]
        Extension: Triton hooks compiled into the kernel (see the module docstring for what their
        positions mean here); run() takes its tensors and scalars as ``variant_args``.
    """

    def __init__(self, float_workspace_buffer: torch.Tensor, backend: str = "auto",
                 variant: Optional[AttentionVariant] = None) -> None:
        super().__init__(float_workspace_buffer, backend, variant)
        self._shape = None  # (num_qo_heads, qo_len, num_kv_heads, kv_len, head_dim)
        self._lse_rows = None  # GQA: the LSE as the kernel writes it (head-major rows x group)

    def plan(
        self,
        block_mask_map: torch.Tensor,
        block_row_sz: torch.Tensor,
        block_col_sz: torch.Tensor,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        causal: bool = False,
        pos_encoding_mode: str = "NONE",
        use_fp16_qk_reduction: bool = False,
        logits_soft_cap: Optional[float] = None,
        sm_scale: Optional[float] = None,
        rope_scale: Optional[float] = None,
        rope_theta: Optional[float] = None,
        non_blocking: bool = True,
        q_data_type: Union[str, torch.dtype] = "float16",
        kv_data_type: Optional[Union[str, torch.dtype]] = None,
    ) -> None:
        """Plan variable-block sparse attention (host work: one read of the three pattern tensors).

        Parameters
        ----------
        block_mask_map : bool ``[num_kv_heads, MB, NB]``: row block r of head h attends to column block c.
        block_row_sz : ``[num_kv_heads, MB]`` int32/int64 >= 0, rows per row block; every head's sum is
            the same ``qo_len``.
        block_col_sz : ``[num_kv_heads, NB]`` int32/int64 >= 0, keys per column block; every head's sum
            is the same ``kv_len``.
        num_qo_heads, num_kv_heads, head_dim : ints; ``num_qo_heads % num_kv_heads == 0``.
        causal : bottom-right causal in each row's key list (module docstring).
        pos_encoding_mode : ``"NONE"`` (other modes raise NotImplementedError).
        use_fp16_qk_reduction : must be False.
        logits_soft_cap : None/0, or c > 0. sm_scale : default ``1 / sqrt(head_dim)``.
        rope_scale, rope_theta : accepted, unused without RoPE.
        non_blocking : copy the work list to the device asynchronously.
        q_data_type, kv_data_type : dtypes or names; kv defaults to q's; the output has q's dtype.
        """
        _no_positions(pos_encoding_mode)
        check_tensor("block_mask_map", block_mask_map, ndim=3)
        if block_mask_map.dtype.is_floating_point or block_mask_map.dtype.is_complex:
            raise TypeError(f"block_mask_map: expected a bool (or 0/1 integer) tensor, got {block_mask_map.dtype}")
        check_tensor("block_row_sz", block_row_sz, dtypes=INDEX_DTYPES, ndim=2)
        check_tensor("block_col_sz", block_col_sz, dtypes=INDEX_DTYPES, ndim=2)
        num_kv, num_rows, num_cols = block_mask_map.shape
        if num_kv != num_kv_heads:
            raise ValueError(f"block_mask_map: expected num_kv_heads = {num_kv_heads} patterns, got shape "
                             f"{list(block_mask_map.shape)}")
        for name, t, n in (("block_row_sz", block_row_sz, num_rows), ("block_col_sz", block_col_sz, num_cols)):
            if tuple(t.shape) != (num_kv, n):
                raise ValueError(f"{name}: expected shape [{num_kv}, {n}] (from block_mask_map), got {list(t.shape)}")
        options = dict(num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                       q_data_type=q_data_type, kv_data_type=kv_data_type, causal=causal,
                       use_fp16_qk_reduction=use_fp16_qk_reduction, logits_soft_cap=logits_soft_cap,
                       sm_scale=sm_scale, rope_scale=rope_scale, rope_theta=rope_theta)
        group = make_options(paged=True, **options).group
        host = host_int64([block_mask_map.reshape(-1).to(torch.int32), block_row_sz.reshape(-1).to(torch.int32),
                           block_col_sz.reshape(-1).to(torch.int32)])
        n_mask, n_row = block_mask_map.numel(), block_row_sz.numel()
        mask_h = host[:n_mask].reshape(num_kv, num_rows, num_cols)
        row_h = host[n_mask:n_mask + n_row].reshape(num_kv, num_rows)
        col_h = host[n_mask + n_row:].reshape(num_kv, num_cols)
        if ((mask_h != 0) & (mask_h != 1)).any():
            raise ValueError("block_mask_map: expected only 0/1 (False/True) entries")
        for name, sizes in (("block_row_sz", row_h), ("block_col_sz", col_h)):
            if (sizes < 0).any():
                raise ValueError(f"{name}: block sizes must be non-negative")
            sums = sizes.sum(axis=1)
            if (sums != sums[0]).any():
                raise ValueError(f"{name}: every KV head's blocks must cover the same length, got sums {sums.tolist()}")
        qo_len, kv_len = int(row_h[0].sum()), int(col_h[0].sum())
        batch, first, pages = variable_batch(mask_h.astype(bool), row_h, col_h, group)
        if not max_page_id_fits(num_kv * kv_len, batch.page_size):
            raise ValueError(f"block_col_sz: {num_kv} heads x {kv_len} keys exceed the int32 page ids of the kernel")
        kv_indices = expand_pages(first, pages, self.device)
        # The kernel sees one KV head and the GQA group as its query heads (attention/block_sparse.py).
        options.update(num_qo_heads=group, num_kv_heads=1)
        self._plan(options, batch, kv_indices, qo_len, None, None, non_blocking)
        self._shape = (num_qo_heads, qo_len, num_kv, kv_len, head_dim)
        # With GQA the kernel writes the LSE at (row, head) of the head-major rows: a fixed buffer
        # (run() allocates nothing when out/lse are given), gathered into [num_qo_heads, qo_len].
        self._lse_rows = None
        if group > 1:
            self._lse_rows = torch.empty(num_qo_heads * qo_len, group, dtype=torch.float32, device=self.device)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos_encoding_mode: str = "NONE",
                use_fp16_qk_reduction: bool = False, logits_soft_cap: Optional[float] = None,
                sm_scale: Optional[float] = None, rope_scale: Optional[float] = None,
                rope_theta: Optional[float] = None) -> torch.Tensor:
        """Deprecated (use run()): sets these options, as FlashInfer's forward() does, then runs."""
        self._replan_for_forward(pos_encoding_mode, use_fp16_qk_reduction, logits_soft_cap, sm_scale, rope_scale,
                                 rope_theta)
        return self.run(q, k, v)

    def run(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out: Optional[torch.Tensor] = None,
        lse: Optional[torch.Tensor] = None,
        return_lse: bool = False,
        enable_pdl: Optional[bool] = None,
        variant_args: Sequence = (),
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Variable-block sparse attention of the planned pattern.

        Parameters
        ----------
        q : ``[num_qo_heads, qo_len, head_dim]``, the planned q dtype.
        k, v : ``[num_kv_heads, kv_len, head_dim]``, the planned kv dtype.
            q, k and v are read in place when each head's tokens follow the previous head's (as in a
            contiguous tensor), otherwise copied first (FlashInfer always copies them).
        out : optional ``[num_qo_heads, qo_len, head_dim]`` buffer of q's dtype whose heads lie back
            to back (e.g. contiguous); the result is written into it.
        lse : optional contiguous ``[num_qo_heads, qo_len]`` float32 buffer (implies returning it).
        return_lse : also return the LSE.
        enable_pdl : None/False (True raises NotImplementedError).
        variant_args : the variant's tensors then scalars (a wrapper built with ``variant=``).

        Returns
        -------
        out ``[num_qo_heads, qo_len, head_dim]``, or (out, lse) with lse ``[num_qo_heads, qo_len]``
        float32, base 2.
        """
        _no_pdl(enable_pdl)
        if self._planned is None:
            raise RuntimeError("run(): call plan() first")
        num_qo, qo_len, num_kv, kv_len, head_dim = self._shape
        self._check_q(q, (num_qo, qo_len, head_dim))
        self._check_kv(k, v, (num_kv, kv_len, head_dim))
        page = self._inputs[0].page_size
        pages = (num_kv * kv_len // page, page, 1, head_dim)
        kv = unpack_paged_kv_cache((k.reshape(pages), v.reshape(pages)), "NHD", name="k/v")
        out, lse, return_lse = self._outputs(out, lse, return_lse, (num_qo, qo_len, head_dim))
        if out.stride(0) != qo_len * out.stride(1) and num_qo > 1:
            raise ValueError(f"out: expected its heads back to back (stride(0) == qo_len * stride(1)), got strides "
                             f"{out.stride()}")
        if q.stride(0) != qo_len * q.stride(1) and num_qo > 1:
            q = q.contiguous()
        if lse is None:
            lse_rows = None
        elif self._lse_rows is None:
            lse_rows = lse.view(num_qo * qo_len, 1)  # one query head per KV head: row h * qo_len + t is lse[h, t]
        else:
            lse_rows = self._lse_rows
        # Head-major q / out as the kernel's [rows, group, D]: row stride D, head stride qo_len * D.
        self._launch(q.transpose(0, 1), kv, out.transpose(0, 1), lse_rows, variant_args)
        if lse is not None and self._lse_rows is not None:
            group = num_qo // num_kv
            lse.view(num_kv, group, qo_len).copy_(
                self._lse_rows.view(num_kv, group * qo_len, group)[:, :qo_len].transpose(1, 2))
        return (out, lse) if return_lse else out
