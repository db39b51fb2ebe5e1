"""Cascade inference, FlashInfer 0.6.x API.

Cascade attention for shared prefixes: ``MultiLevelCascadeAttentionWrapper`` (any number of levels
over one paged KV cache), the legacy ``BatchDecodeWithSharedPrefixPagedKVCacheWrapper`` and
``BatchPrefillWithSharedPrefixPagedKVCacheWrapper`` (the shared prefix as contiguous K/V), and
``split_shared_prefix`` (an extension: finds the pages every request shares and builds the two
levels). Each level is attention over one KV segment; the levels' (output, LSE) states are merged.

Attention-state merging: ``merge_state``, ``merge_state_in_place``, ``merge_states``. An attention
state is ``(v, s)``: the attention output over a KV segment and its log-sum-exp, **base 2**
(FlashInfer's convention): ``s = log2(sum_j 2^(x_j * log2(e)))`` over the scaled logits ``x_j``.
A state with ``s = -inf`` is an empty segment: it contributes nothing (its ``v`` is not read into the
sum); merging only empty states gives ``v = 0`` and ``s = -inf``, never NaN.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

from ._utils import check_int32_index, check_tensor
from .attention.kv import check_csr, check_layout, read_page_table, unpack_paged_kv_cache
from .attention.merge import (check_s, check_v, launch_merge_state, launch_merge_states, last_contiguous, merge_into,
                              merge_state_in_place_op, merge_state_new, merge_state_op, merge_states_op)
from .attention.options import plan_dtypes, pos_encoding_code
from .attention.variant import AttentionVariant, check_variant
from .attention.workspace import Workspace
from .decode import BatchDecodeWithPagedKVCacheWrapper
from .prefill import BatchPrefillWithPagedKVCacheWrapper, single_prefill_with_kv_cache


def merge_state(
    v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Merge two attention states: the output and LSE of attention over KV segments ``[A: B]``.

    Parameters
    ----------
    v_a : torch.Tensor
        Attention output over segment A, shape ``[seq_len, num_heads, head_dim]``, dtype float16,
        bfloat16 or float32.
    s_a : torch.Tensor
        Base-2 log-sum-exp over segment A, shape ``[seq_len, num_heads]``, dtype float32 (other
        float dtypes are converted). ``-inf`` marks an empty segment.
    v_b : torch.Tensor
        Attention output over segment B, same shape and dtype as ``v_a``.
    s_b : torch.Tensor
        Base-2 log-sum-exp over segment B, shape ``[seq_len, num_heads]``, float32.

    Returns
    -------
    V : torch.Tensor
        Merged output, shape ``[seq_len, num_heads, head_dim]``, ``v_a``'s dtype.
    S : torch.Tensor
        Merged base-2 log-sum-exp, shape ``[seq_len, num_heads]``, dtype float32
        (``log2(2^s_a + 2^s_b)``; ``-inf`` where both are empty, with ``V = 0`` there).
    """
    check_v("v_a", v_a, 3)
    device = v_a.device
    check_v("v_b", v_b, 3, device)
    if v_b.shape != v_a.shape or v_b.dtype != v_a.dtype:
        raise ValueError(f"v_b: expected shape {list(v_a.shape)} and dtype {v_a.dtype} (v_a's), got {list(v_b.shape)}, {v_b.dtype}")
    s_a = check_s("s_a", s_a, v_a.shape[:2], device)
    s_b = check_s("s_b", s_b, v_a.shape[:2], device)
    v_a, v_b = last_contiguous(v_a), last_contiguous(v_b)
    if torch.compiler.is_compiling():
        return merge_state_op(v_a, s_a, v_b, s_b)
    return merge_state_new(v_a, s_a, v_b, s_b)


def merge_state_in_place(
    v: torch.Tensor,
    s: torch.Tensor,
    v_other: torch.Tensor,
    s_other: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> None:
    r"""Merge the state ``(v_other, s_other)`` into ``(v, s)``, in place.

    Parameters
    ----------
    v : torch.Tensor
        Attention output, updated in place, shape ``[seq_len, num_heads, head_dim]``, dtype
        float16, bfloat16 or float32, last dimension contiguous.
    s : torch.Tensor
        Base-2 log-sum-exp, updated in place, shape ``[seq_len, num_heads]``, dtype float32.
    v_other : torch.Tensor
        The other attention output, same shape and dtype as ``v``.
    s_other : torch.Tensor
        The other base-2 log-sum-exp, shape ``[seq_len, num_heads]``, float32.
    mask : Optional[torch.Tensor]
        shape ``[seq_len]``, dtype ``torch.bool``: only rows where it is True are merged, the
        others are left untouched (useful under CUDA graphs). None (default) merges every row.
    """
    check_v("v", v, 3)
    device = v.device
    if v.stride(-1) != 1 and v.shape[-1] > 1:
        raise ValueError(f"v: the last dimension must be contiguous (stride 1), got strides {v.stride()}")
    check_v("v_other", v_other, 3, device)
    if v_other.shape != v.shape or v_other.dtype != v.dtype:
        raise ValueError(f"v_other: expected shape {list(v.shape)} and dtype {v.dtype} (v's), got {list(v_other.shape)}, {v_other.dtype}")
    s = check_s("s", s, v.shape[:2], device, in_place=True)
    s_other = check_s("s_other", s_other, v.shape[:2], device)
    v_other = last_contiguous(v_other)
    if mask is not None:
        check_tensor("mask", mask, dtypes=(torch.bool,), ndim=1, device=device)
        if mask.numel() != v.shape[0]:
            raise ValueError(f"mask: expected {v.shape[0]} entries (seq_len), got {mask.numel()}")
    if torch.compiler.is_compiling():
        merge_state_in_place_op(v, s, v_other, s_other, mask)
    else:
        launch_merge_state(v, s, v_other, s_other, v, s, None if mask is None else mask.contiguous().view(torch.uint8))


def merge_states(v: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Merge ``num_states`` attention states per row and head.

    Parameters
    ----------
    v : torch.Tensor
        Attention outputs, shape ``[seq_len, num_states, num_heads, head_dim]``, dtype float16,
        bfloat16 or float32.
    s : torch.Tensor
        Base-2 log-sum-exps, shape ``[seq_len, num_states, num_heads]``, dtype float32 (other
        float dtypes are converted); ``-inf`` marks an empty state.

    Returns
    -------
    V : torch.Tensor
        Merged output, shape ``[seq_len, num_heads, head_dim]``, ``v``'s dtype.
    S : torch.Tensor
        Merged base-2 log-sum-exp ``log2(sum_i 2^s_i)``, shape ``[seq_len, num_heads]``, dtype
        float32; ``-inf`` (with ``V = 0``) where every state is empty.
    """
    check_v("v", v, 4)
    s = check_s("s", s, v.shape[:3], v.device)
    v = last_contiguous(v)
    if torch.compiler.is_compiling():
        return merge_states_op(v, s)
    return launch_merge_states(v, s)


# ---------------------------------------------------------------------------------------------
# Cascade attention: multi-level wrapper, legacy shared-prefix wrappers, shared-prefix finder
# ---------------------------------------------------------------------------------------------


def _check_level_list(name: str, arr, num_levels: int) -> list:
    if not isinstance(arr, (list, tuple)):
        raise TypeError(f"{name}: expected a list of {num_levels} tensors (one per level), got {type(arr).__name__}")
    if len(arr) != num_levels:
        raise ValueError(f"{name}: expected {num_levels} entries (num_levels), got {len(arr)}")
    for i, t in enumerate(arr):
        check_int32_index(f"{name}[{i}]", t)
    return list(arr)


class MultiLevelCascadeAttentionWrapper:
    r"""Multi-level cascade attention over one paged KV cache, FlashInfer's wrapper.

    The KV of every query row is the concatenation of one segment per level. Level ``i`` groups the
    ``N`` query rows into requests by ``qo_indptr_arr[i]`` and gives each request its pages by
    ``paged_kv_indptr_arr[i]`` / ``paged_kv_indices_arr[i]`` / ``paged_kv_last_page_len[i]`` (the
    CSR page table of :class:`BatchPrefillWithPagedKVCacheWrapper`). Typically level 0 has one
    request holding all ``N`` rows and the shared prefix's pages, and the last level has one request
    per sequence with its own pages. Each level runs one batch prefill (non-causal except the last
    level, where ``causal`` applies, as in FlashInfer), and the levels' states are merged with
    ``merge_state_in_place`` (LSE base 2).

    Why it is faster: the attention kernel packs all query rows of a request (times the query heads
    of a KV head) into the M dimension of its tiles, so a level-0 request with ``N`` rows reads the
    shared prefix's KV once per tile of rows and KV head instead of once per sequence; the scheduler
    cuts that long KV into chunks spread over the whole GPU and merges the partials.

    Parameters
    ----------
    num_levels : int
        Number of levels, >= 1.
    float_workspace_buffer : torch.Tensor
        uint8 (any dtype accepted) on the device; split-KV partials (128 MB recommended). The levels
        run one after another on the stream and share it.
    kv_layout : str
        "NHD" or "HND".
    use_cuda_graph : bool
        Fixed metadata buffers per level, so that ``run()`` can be captured in a CUDA graph and
        replayed after a new ``plan()`` with the same batch sizes per level and no more query rows
        than the first plan.
    qo_indptr_buf_arr, paged_kv_indptr_buf_arr : List[torch.Tensor]
        With ``use_cuda_graph``: per level, ``[batch_size_i + 1]`` int32 buffers.
    paged_kv_indices_buf_arr : List[torch.Tensor]
        With ``use_cuda_graph``: per level, ``[max_num_pages_i]`` int32 buffers.
    paged_kv_last_page_len_buf_arr : List[torch.Tensor]
        With ``use_cuda_graph``: per level, ``[batch_size_i]`` int32 buffers.
    variant : Optional[AttentionVariant]
        Extension: Triton hooks compiled into every level's kernel (run() takes the variant's
        tensors and scalars after ``paged_kv_cache``). A hook sees positions counted from the start
        of each level's KV segment and ``req`` indexing that level's requests; it needs a softmax
        (the levels merge by LSE).
    """

    def __init__(
        self,
        num_levels: int,
        float_workspace_buffer: torch.Tensor,
        kv_layout: str = "NHD",
        use_cuda_graph: bool = False,
        qo_indptr_buf_arr: Optional[List[torch.Tensor]] = None,
        paged_kv_indptr_buf_arr: Optional[List[torch.Tensor]] = None,
        paged_kv_indices_buf_arr: Optional[List[torch.Tensor]] = None,
        paged_kv_last_page_len_buf_arr: Optional[List[torch.Tensor]] = None,
        variant: Optional[AttentionVariant] = None,
    ) -> None:
        if not isinstance(num_levels, (int, np.integer)) or isinstance(num_levels, bool):
            raise TypeError(f"num_levels: expected an int, got {type(num_levels).__name__}")
        if num_levels < 1:
            raise ValueError(f"num_levels: expected at least 1 level, got {num_levels}")
        check_layout(kv_layout)
        check_tensor("float_workspace_buffer", float_workspace_buffer)
        if check_variant(variant) is not None and not variant.use_softmax:
            raise NotImplementedError(f"variant {variant.name!r}: use_softmax=False has no log-sum-exp, and cascade "
                                      f"levels merge by it")
        self._num_levels = int(num_levels)
        self._kv_layout = kv_layout
        self._use_cuda_graph = bool(use_cuda_graph)
        self.device = float_workspace_buffer.device
        if use_cuda_graph:
            bufs = []
            for name, arr in (("qo_indptr_buf_arr", qo_indptr_buf_arr), ("paged_kv_indptr_buf_arr", paged_kv_indptr_buf_arr),
                              ("paged_kv_indices_buf_arr", paged_kv_indices_buf_arr),
                              ("paged_kv_last_page_len_buf_arr", paged_kv_last_page_len_buf_arr)):
                if arr is None:
                    raise ValueError(f"{name}: required when use_cuda_graph=True (one buffer per level)")
                bufs.append(_check_level_list(name, arr, self._num_levels))
            self._batch_prefill_wrappers = [
                BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout, use_cuda_graph=True,
                                                    qo_indptr_buf=a, paged_kv_indptr_buf=b, paged_kv_indices_buf=c,
                                                    paged_kv_last_page_len_buf=d, variant=variant)
                for a, b, c, d in zip(*bufs)
            ]
        else:
            self._batch_prefill_wrappers = [BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout,
                                                                                variant=variant)
                                            for _ in range(self._num_levels)]
        self._split_workspace(float_workspace_buffer)
        self._scratch = None  # (level output, level lse, own lse) buffers, sized at plan()
        self._planned = False

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor,
                               int_workspace_buffers: Optional[List[torch.Tensor]] = None) -> None:
        """Swap the float workspace of every level (the int workspaces are accepted and unused)."""
        check_tensor("float_workspace_buffer", float_workspace_buffer, device=self.device)
        self._split_workspace(float_workspace_buffer)

    def _split_workspace(self, float_workspace_buffer: torch.Tensor) -> None:
        # Each level plans into its own region: levels never share partials or merge counters.
        for w, region in zip(self._batch_prefill_wrappers, Workspace(float_workspace_buffer).split(self._num_levels)):
            w._use_workspace(region)

    def plan(
        self,
        qo_indptr_arr: List[torch.Tensor],
        paged_kv_indptr_arr: List[torch.Tensor],
        paged_kv_indices_arr: List[torch.Tensor],
        paged_kv_last_page_len: List[torch.Tensor],
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        page_size: int,
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
    ) -> None:
        r"""Plan every level for one batch (host work; one metadata copy per level).

        Parameters
        ----------
        qo_indptr_arr : List[torch.Tensor]
            Per level ``i``: ``[batch_size_i + 1]`` int32, the query-row offsets of level i's requests;
            every level's last entry is the same total ``N`` of query rows.
        paged_kv_indptr_arr : List[torch.Tensor]
            Per level: ``[batch_size_i + 1]`` int32 page-table CSR offsets.
        paged_kv_indices_arr : List[torch.Tensor]
            Per level: ``[paged_kv_indptr_arr[i][-1]]`` int32 page ids.
        paged_kv_last_page_len : List[torch.Tensor]
            Per level: ``[batch_size_i]`` int32, tokens in each request's last page, in
            ``[1, page_size]`` (0 for a request with no pages at that level).
        num_qo_heads, num_kv_heads, head_dim, page_size : int
            ``num_qo_heads % num_kv_heads == 0``.
        causal : bool
            Bottom-right causal mask on the last level only (the earlier levels hold KV that comes
            before every query token, so they are fully visible). A request's query tokens must then
            lie in its last-level segment.
        pos_encoding_mode : str
            "NONE" only: RoPE/ALiBi positions would be counted from the start of each level's
            segment, not of the sequence (NotImplementedError otherwise).
        use_fp16_qk_reduction : bool
            Must be False.
        sm_scale : Optional[float]
            Default ``1 / sqrt(head_dim)``.
        window_left : int
            -1 only (a window would be measured inside each level's segment; NotImplementedError).
        logits_soft_cap : Optional[float]
            None/0, or ``c > 0``: ``c * tanh(x / c)`` on the scaled logits.
        rope_scale, rope_theta : Optional[float]
            Accepted for FlashInfer compatibility (only used with RoPE, which is not supported here).
        q_data_type, kv_data_type : dtype or name
            float16, bfloat16 or float32 queries; KV defaults to the query dtype.
        """
        n_lv = self._num_levels
        qo_arr = _check_level_list("qo_indptr_arr", qo_indptr_arr, n_lv)
        indptr_arr = _check_level_list("paged_kv_indptr_arr", paged_kv_indptr_arr, n_lv)
        indices_arr = _check_level_list("paged_kv_indices_arr", paged_kv_indices_arr, n_lv)
        last_arr = _check_level_list("paged_kv_last_page_len", paged_kv_last_page_len, n_lv)
        for i in range(n_lv):
            if indptr_arr[i].numel() != qo_arr[i].numel():
                raise ValueError(f"paged_kv_indptr_arr[{i}]: expected {qo_arr[i].numel()} entries like qo_indptr_arr[{i}], "
                                 f"got {indptr_arr[i].numel()}")
            if last_arr[i].numel() != qo_arr[i].numel() - 1:
                raise ValueError(f"paged_kv_last_page_len[{i}]: expected {qo_arr[i].numel() - 1} entries (batch size "
                                 f"of level {i}), got {last_arr[i].numel()}")
        if pos_encoding_code(pos_encoding_mode) != 0:
            raise NotImplementedError(f"pos_encoding_mode={pos_encoding_mode!r}: cascade levels would count positions "
                                      f"from the start of each level's KV; apply RoPE to q/k before attention")
        if not isinstance(window_left, (int, np.integer)) or isinstance(window_left, bool):
            raise TypeError(f"window_left: expected an int, got {type(window_left).__name__}")
        if window_left != -1:
            raise NotImplementedError(f"window_left={window_left}: a sliding window would be measured inside each "
                                      f"level's KV segment, not the whole sequence")
        q_dtype = plan_dtypes(q_data_type, kv_data_type, None)[0]
        totals = []
        for i, w in enumerate(self._batch_prefill_wrappers):
            try:
                w.plan(qo_arr[i], indptr_arr[i], indices_arr[i], last_arr[i], num_qo_heads, num_kv_heads, head_dim,
                       page_size, causal=bool(causal) and i == n_lv - 1, use_fp16_qk_reduction=use_fp16_qk_reduction,
                       sm_scale=sm_scale, logits_soft_cap=logits_soft_cap, q_data_type=q_dtype,
                       kv_data_type=kv_data_type)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"level {i}: {exc}") from None
            totals.append(w.total_rows)
            if totals[i] != totals[0]:
                raise ValueError(f"qo_indptr_arr[{i}]: its last entry ({totals[i]} query rows) differs from "
                                 f"qo_indptr_arr[0]'s ({totals[0]}); every level covers all query rows")
        n = totals[0]
        base = self._batch_prefill_wrappers[-1]
        shape = (n, num_qo_heads, base.planned.opts.head_dim_vo)
        o_dtype = base.planned.opts.o_dtype
        sc = self._scratch
        if self._use_cuda_graph:
            # Sized at the first plan (its row count bounds every later one: the level wrappers enforce it).
            if sc is None or sc[0].dtype != o_dtype or sc[0].shape[1:] != shape[1:]:
                sc = self._alloc_scratch(shape, o_dtype)
        elif sc is None or sc[0].dtype != o_dtype or tuple(sc[0].shape) != shape:
            sc = self._alloc_scratch(shape, o_dtype)
        self._scratch = sc
        self._views = tuple(t[:n] for t in sc)
        self._total_rows = n
        self._planned = True

    begin_forward = plan

    def _alloc_scratch(self, shape, o_dtype):
        levels = self._num_levels > 1
        tmp_o = torch.empty(shape if levels else (0,) + tuple(shape[1:]), dtype=o_dtype, device=self.device)
        tmp_lse = torch.empty((shape[0] if levels else 0, shape[1]), dtype=torch.float32, device=self.device)
        own_lse = torch.empty(shape[:2], dtype=torch.float32, device=self.device)
        return tmp_o, tmp_lse, own_lse

    def run(
        self,
        q: torch.Tensor,
        paged_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
        *args,
        out: Optional[torch.Tensor] = None,
        lse: Optional[torch.Tensor] = None,
        return_lse: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        r"""Multi-level cascade attention for the planned batch.

        Parameters
        ----------
        q : torch.Tensor
            ``[N, num_qo_heads, head_dim]`` (``N = qo_indptr_arr[i][-1]``), the planned q dtype.
        paged_kv_cache : torch.Tensor or Tuple[torch.Tensor, torch.Tensor]
            ``[num_pages, 2, page_size, num_kv_heads, head_dim]`` (NHD) or
            ``[num_pages, 2, num_kv_heads, page_size, head_dim]`` (HND), or a ``(k_cache, v_cache)``
            tuple of 4-D tensors in the same layout; one cache holds every level's pages.
        *args
            The variant's tensors then scalars (the same for every level).
        out : Optional[torch.Tensor]
            Extension: ``[N, num_qo_heads, head_dim]`` output buffer in the q dtype.
        lse : Optional[torch.Tensor]
            Extension: contiguous ``[N, num_qo_heads]`` float32 buffer for the merged LSE (implies
            returning it).
        return_lse : bool
            Extension: also return the merged LSE.

        Returns
        -------
        out : ``[N, num_qo_heads, head_dim]``; with ``return_lse`` (or ``lse``) also
        lse : ``[N, num_qo_heads]`` float32, base 2 (``log2`` of the softmax denominator over the
        whole concatenated KV).
        """
        if not self._planned:
            raise RuntimeError("run(): call plan() first")
        tmp_o, tmp_lse, own_lse = self._views
        want_lse = return_lse or lse is not None
        if lse is None:
            lse = torch.empty_like(own_lse) if return_lse else own_lse
        wrappers = self._batch_prefill_wrappers
        out, lse = wrappers[-1].run(q, paged_kv_cache, *args, out=out, lse=lse)
        for w in wrappers[:-1]:
            w.run(q, paged_kv_cache, *args, out=tmp_o, lse=tmp_lse)
            merge_into(out, lse, tmp_o, tmp_lse)
        return (out, lse) if want_lse else out

    forward = run

    def end_forward(self) -> None:
        """Kept for FlashInfer compatibility: nothing to release."""


class BatchDecodeWithSharedPrefixPagedKVCacheWrapper:
    r"""Batch decode with a shared prefix given as contiguous K/V (FlashInfer's legacy wrapper;
    :class:`MultiLevelCascadeAttentionWrapper` is the general form).

    ``forward`` runs attention of all ``batch_size`` queries over the shared prefix as one request
    (its KV read once per tile of queries), batch decode over each request's unique pages, and
    merges the two states (LSE base 2).

    Parameters
    ----------
    float_workspace_buffer : torch.Tensor
        uint8 (any dtype accepted) on the device (128 MB recommended).
    kv_layout : str
        "NHD" or "HND", for both ``k_shared``/``v_shared`` and the unique paged cache.
    """

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD") -> None:
        self._batch_decode_wrapper = BatchDecodeWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout)
        self._kv_layout = kv_layout

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer=None) -> None:
        """Swap the float workspace (the int workspace is accepted and unused)."""
        self._batch_decode_wrapper.reset_workspace_buffer(float_workspace_buffer, int_workspace_buffer)

    def begin_forward(
        self,
        unique_kv_indptr: torch.Tensor,
        unique_kv_indices: torch.Tensor,
        unique_kv_last_page_len: torch.Tensor,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        page_size: int,
        data_type: Union[str, torch.dtype] = "float16",
    ) -> None:
        r"""Plan the unique part.

        Parameters
        ----------
        unique_kv_indptr : ``[batch_size + 1]`` int32, CSR offsets of each request's unique pages.
        unique_kv_indices : ``[unique_kv_indptr[-1]]`` int32 page ids.
        unique_kv_last_page_len : ``[batch_size]`` int32, in ``[1, page_size]`` (0 for no pages).
        num_qo_heads, num_kv_heads, head_dim, page_size : int
        data_type : dtype or name of q and the KV (float16, bfloat16 or float32).
        """
        self._batch_decode_wrapper.plan(unique_kv_indptr, unique_kv_indices, unique_kv_last_page_len, num_qo_heads,
                                        num_kv_heads, head_dim, page_size, pos_encoding_mode="NONE",
                                        q_data_type=data_type, kv_data_type=data_type)

    plan = begin_forward

    def forward(self, q: torch.Tensor, k_shared: torch.Tensor, v_shared: torch.Tensor, unique_kv_cache) -> torch.Tensor:
        r"""Decode attention over ``[shared prefix] + [unique pages]``.

        Parameters
        ----------
        q : ``[batch_size, num_qo_heads, head_dim]``, the planned dtype.
        k_shared, v_shared : ``[shared_prefix_len, num_kv_heads, head_dim]`` (NHD) or
            ``[num_kv_heads, shared_prefix_len, head_dim]`` (HND), the KV dtype.
        unique_kv_cache : ``[num_pages, 2, page_size, num_kv_heads, head_dim]`` (NHD) /
            ``[num_pages, 2, num_kv_heads, page_size, head_dim]`` (HND), or a (k_cache, v_cache) tuple.

        Returns
        -------
        V : ``[batch_size, num_qo_heads, head_dim]`` in q's dtype.
        """
        dw = self._batch_decode_wrapper
        if dw.planned is None:
            raise RuntimeError("forward(): call begin_forward() first")
        v_shared_out, s_shared = single_prefill_with_kv_cache(q, k_shared, v_shared, causal=False,
                                                              kv_layout=self._kv_layout, sm_scale=dw.planned.opts.sm_scale,
                                                              return_lse=True)
        v_unique, s_unique = dw.run(q, unique_kv_cache, return_lse=True)
        merge_into(v_shared_out, s_shared, v_unique, s_unique)
        return v_shared_out

    run = forward

    def end_forward(self) -> None:
        """Kept for FlashInfer compatibility: nothing to release."""


class BatchPrefillWithSharedPrefixPagedKVCacheWrapper:
    r"""Batch prefill/append with a shared prefix given as contiguous K/V (FlashInfer's legacy
    wrapper; :class:`MultiLevelCascadeAttentionWrapper` is the general form).

    ``forward`` runs attention of all query rows over the shared prefix as one non-causal request,
    batch prefill over each request's unique pages (causal there if asked), and merges the two
    states (LSE base 2). ``forward`` takes the mask and scale options, so it plans the unique part
    again (host work, a device-to-host copy) when they or the dtypes differ from the last plan.

    Parameters
    ----------
    float_workspace_buffer : torch.Tensor
        uint8 (any dtype accepted) on the device (128 MB recommended).
    kv_layout : str
        "NHD" or "HND", for both ``k_shared``/``v_shared`` and the unique paged cache.
    """

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD") -> None:
        self._batch_prefill_wrapper = BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout)
        self._kv_layout = kv_layout
        self._tables = None
        self._planned_key = None

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer=None) -> None:
        """Swap the float workspace (the int workspace is accepted and unused)."""
        self._batch_prefill_wrapper.reset_workspace_buffer(float_workspace_buffer, int_workspace_buffer)

    def begin_forward(
        self,
        qo_indptr: torch.Tensor,
        paged_kv_indptr: torch.Tensor,
        paged_kv_indices: torch.Tensor,
        paged_kv_last_page_len: torch.Tensor,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        page_size: int,
    ) -> None:
        r"""Plan the unique part (non-causal, float16; ``forward`` re-plans for other options).

        Parameters
        ----------
        qo_indptr : ``[batch_size + 1]`` int32 query-row offsets.
        paged_kv_indptr : ``[batch_size + 1]`` int32, CSR offsets of each request's unique pages.
        paged_kv_indices : ``[paged_kv_indptr[-1]]`` int32 page ids.
        paged_kv_last_page_len : ``[batch_size]`` int32, in ``[1, page_size]`` (0 for no pages).
        num_qo_heads, num_kv_heads, head_dim, page_size : int
        """
        self._tables = (qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads,
                        num_kv_heads, head_dim, page_size)
        self._planned_key = None
        self._plan_unique((False, False, None, None, None, torch.float16, torch.float16))

    plan = begin_forward

    def _plan_unique(self, key) -> None:
        causal, fp16_red, sm_scale, rope_scale, rope_theta, q_dtype, kv_dtype = key
        self._batch_prefill_wrapper.plan(*self._tables, causal=causal, use_fp16_qk_reduction=fp16_red,
                                         sm_scale=sm_scale, rope_scale=rope_scale, rope_theta=rope_theta,
                                         q_data_type=q_dtype, kv_data_type=kv_dtype)
        self._planned_key = key

    def forward(
        self,
        q: torch.Tensor,
        k_shared: torch.Tensor,
        v_shared: torch.Tensor,
        unique_kv_cache,
        causal: bool = False,
        use_fp16_qk_reduction: bool = False,
        sm_scale: Optional[float] = None,
        rope_scale: Optional[float] = None,
        rope_theta: Optional[float] = None,
    ) -> torch.Tensor:
        r"""Prefill/append attention over ``[shared prefix] + [unique pages]``.

        Parameters
        ----------
        q : ``[qo_indptr[-1], num_qo_heads, head_dim]``, float16, bfloat16 or float32.
        k_shared, v_shared : ``[shared_prefix_len, num_kv_heads, head_dim]`` (NHD) or
            ``[num_kv_heads, shared_prefix_len, head_dim]`` (HND), the KV dtype.
        unique_kv_cache : ``[num_pages, 2, page_size, num_kv_heads, head_dim]`` (NHD) /
            ``[num_pages, 2, num_kv_heads, page_size, head_dim]`` (HND), or a (k_cache, v_cache) tuple.
        causal : bottom-right causal mask inside each request's unique part (the prefix is fully
            visible); a request's query tokens are the last ones of its unique part.
        use_fp16_qk_reduction : must be False.
        sm_scale : default ``1 / sqrt(head_dim)``.
        rope_scale, rope_theta : accepted (no positional encoding is applied).

        Returns
        -------
        V : ``[qo_indptr[-1], num_qo_heads, head_dim]`` in q's dtype.
        """
        if self._tables is None:
            raise RuntimeError("forward(): call begin_forward() first")
        check_tensor("q", q)
        kv = unpack_paged_kv_cache(unique_kv_cache, self._kv_layout, "unique_kv_cache")
        key = (bool(causal), bool(use_fp16_qk_reduction), sm_scale, rope_scale, rope_theta, q.dtype, kv.k.dtype)
        if key != self._planned_key:
            self._plan_unique(key)
        v_shared_out, s_shared = single_prefill_with_kv_cache(q, k_shared, v_shared, causal=False,
                                                              kv_layout=self._kv_layout,
                                                              use_fp16_qk_reduction=use_fp16_qk_reduction,
                                                              sm_scale=sm_scale, rope_scale=rope_scale,
                                                              rope_theta=rope_theta, return_lse=True)
        v_unique, s_unique = self._batch_prefill_wrapper.run(q, unique_kv_cache, return_lse=True)
        merge_into(v_shared_out, s_shared, v_unique, s_unique)
        return v_shared_out

    run = forward

    def end_forward(self) -> None:
        """Kept for FlashInfer compatibility: nothing to release."""


class SharedPrefixLevels(NamedTuple):
    """The two levels that :func:`split_shared_prefix` builds, in the order of
    ``MultiLevelCascadeAttentionWrapper.plan``'s first four arguments (``wrapper.plan(*levels, ...)``).
    Each field is a list ``[level 0 (shared prefix), level 1 (per-request rest)]`` of int32 tensors."""

    qo_indptr_arr: List[torch.Tensor]
    paged_kv_indptr_arr: List[torch.Tensor]
    paged_kv_indices_arr: List[torch.Tensor]
    paged_kv_last_page_len_arr: List[torch.Tensor]

    @property
    def num_shared_pages(self) -> int:
        """Pages in the shared prefix (0 when the requests share nothing); no device sync."""
        return self.paged_kv_indices_arr[0].numel()


def split_shared_prefix(
    paged_kv_indptr: torch.Tensor,
    paged_kv_indices: torch.Tensor,
    paged_kv_last_page_len: torch.Tensor,
    page_size: int,
    qo_indptr: Optional[torch.Tensor] = None,
) -> SharedPrefixLevels:
    r"""Find the shared prefix of a paged batch and build the 2-level cascade for it (an extension
    over FlashInfer).

    The shared prefix is the longest leading run of **full** pages that every request has, with the
    same page ids in the same order (what a prefix cache such as a radix tree gives requests that
    start with the same system prompt). It is shortened so that every request's query tokens (its
    last ``qo_len`` tokens; one per request when ``qo_indptr`` is None) stay out of it, which keeps
    ``causal=True`` exact at the last level. Level 0 is one request holding all ``N`` query rows and
    the shared pages; level 1 is each request with its remaining pages. With fewer than two requests,
    or nothing shared, level 0 has no pages (its state is empty and the merge leaves level 1's
    result unchanged) and ``num_shared_pages`` is 0.

    When cascade pays off: decode and short appends are bound by reading KV. Without cascade each
    of ``B`` requests reads the ``P`` shared prefix tokens itself (``B * P`` token reads, from L2 at
    best, from HBM at batch sizes that matter); with it the prefix is read once per tile of query
    rows and KV head (``ceil(B * group / BLOCK_M) * P``). Large gains need many requests times a long
    shared prefix (e.g. 64 requests x 8k tokens). For short prefixes (a few pages) or few requests the
    saving is smaller than the cost of a second attention launch and the merge (a few microseconds)
    and a plain batch decode/prefill is as fast or faster. Prefill with a tile or more of query rows
    per request (``BLOCK_M / group``, 32 rows at 32/8 heads) gains little either: each tile of rows
    reads the prefix once with or without cascade, and the work is bound by compute.

    Parameters
    ----------
    paged_kv_indptr : torch.Tensor
        ``[batch_size + 1]`` int32 CSR offsets of the full page tables.
    paged_kv_indices : torch.Tensor
        ``[paged_kv_indptr[-1]]`` int32 page ids.
    paged_kv_last_page_len : torch.Tensor
        ``[batch_size]`` int32, in ``[1, page_size]`` (0 for a request with no pages).
    page_size : int
    qo_indptr : Optional[torch.Tensor]
        ``[batch_size + 1]`` int32 query-row offsets; None means one query per request (decode).

    Returns
    -------
    SharedPrefixLevels
        ``(qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr, paged_kv_last_page_len_arr)``,
        two int32 tensors each, on ``paged_kv_indices``' device: level 0 ``qo_indptr [0, N]``,
        ``indptr [0, S]``, ``indices [S]``, ``last_page_len [page_size]`` (``[0]`` when ``S = 0``);
        level 1 the request's own ``qo_indptr`` and its pages after the first ``S``.
    """
    check_int32_index("paged_kv_indptr", paged_kv_indptr)
    batch = paged_kv_indptr.numel() - 1
    if qo_indptr is not None:
        check_int32_index("qo_indptr", qo_indptr, numel=batch + 1)
    check_tensor("paged_kv_indices", paged_kv_indices)
    device = paged_kv_indices.device
    table = read_page_table(paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, page_size, device,
                            names=("paged_kv_indptr", "paged_kv_indices", "paged_kv_last_page_len"),
                            extra=[] if qo_indptr is None else [qo_indptr], read_ids=True)
    indptr, indices, kv_len, last = table.indptr, table.ids, table.kv_len, table.last_page_len
    qo = np.arange(batch + 1, dtype=np.int64) if qo_indptr is None else table.extra[0]
    qo_len = check_csr("qo_indptr", qo)
    num_pages = np.diff(indptr)

    shared = 0
    if batch >= 2:
        # Pages that lie wholly before every request's first query token (full pages by construction).
        limit = int((np.maximum(kv_len - qo_len, 0) // page_size).min())
        if limit > 0:
            cols = indptr[:-1, None] + np.arange(limit, dtype=np.int64)[None, :]
            ids = indices[cols]                                   # [batch, limit]
            same = (ids == ids[:1]).all(axis=0)
            shared = limit if same.all() else int(np.argmin(same))

    rest_pages = num_pages - shared
    rest_indptr = np.zeros(batch + 1, dtype=np.int64)
    rest_indptr[1:] = np.cumsum(rest_pages)
    keep = np.zeros(indices.shape[0], dtype=bool)
    if batch:
        keep[indptr[0]: indptr[-1]] = True  # entries outside the table's range are not its pages
    if shared:
        drop = (indptr[:-1, None] + np.arange(shared, dtype=np.int64)[None, :]).reshape(-1)
        keep[drop] = False
    rest_last = np.where(rest_pages > 0, last, 0)

    def i32(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32)).to(device)

    n_rows = int(qo[-1])
    lvl0 = (i32([0, n_rows]), i32([0, shared]), i32(indices[indptr[0]: indptr[0] + shared] if batch else []),
            i32([page_size if shared else 0]))
    lvl1 = (i32(qo), i32(rest_indptr), i32(indices[keep]), i32(rest_last))
    return SharedPrefixLevels(*([a, b] for a, b in zip(lvl0, lvl1)))
