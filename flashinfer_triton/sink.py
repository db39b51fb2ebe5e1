"""Attention sinks (gpt-oss), FlashInfer's ``BatchAttentionWithAttentionSinkWrapper``.

A sink is a learned logit per query head that joins every row's softmax with a zero value vector:
with scaled logits ``x_j`` (natural units) and sink ``s_h``,

    out = sum_j exp(x_j) v_j / (exp(s_h) + sum_j exp(x_j)),
    lse = log2(2^(s_h * log2 e) + sum_j 2^(x_j * log2 e))          (base 2, the sink included)

exactly FlashInfer's ``AttentionSink`` variant (fa2 ``M_D_UPDATE`` / fa3 ``OnlineSoftmaxWithSink``):
a row whose keys are all masked gives ``out = 0`` and ``lse = s_h * log2 e``. The same sinks are
available as ``run(..., sinks=)`` on the decode and prefill wrappers; here they are the positional
argument FlashInfer's sink wrapper takes (``run(q, paged_kv_cache, sink, sm_scale)``). The kernel
applies the sink once per row, after any split-KV merge.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Optional

import torch

from .attention.options import pos_encoding_code
from .prefill import BatchPrefillWithPagedKVCacheWrapper

_PLAN_SIGNATURE = inspect.signature(BatchPrefillWithPagedKVCacheWrapper.plan)


class BatchAttentionWithAttentionSinkWrapper(BatchPrefillWithPagedKVCacheWrapper):
    """Paged prefill and decode attention with attention sinks, FlashInfer's wrapper.

    ``plan()`` is ``BatchPrefillWithPagedKVCacheWrapper.plan`` (causal, ``window_left``, mixed
    prefill/decode batches, CUDA graphs); the dtypes, ``head_dim_vo`` and ``pos_encoding_mode``
    default to the constructor's, as FlashInfer's JIT module fixes them there.

    Parameters
    ----------
    float_workspace_buffer, kv_layout, use_cuda_graph, qo_indptr_buf, paged_kv_indptr_buf,
    paged_kv_indices_buf, paged_kv_last_page_len_buf, custom_mask_buf, mask_indptr_buf, backend :
        as ``BatchPrefillWithPagedKVCacheWrapper``.
    pos_encoding_mode : "NONE", "ROPE_LLAMA" or "ALIBI" (plan's default).
    use_fp16_qk_reduction : must be False.
    q_data_type, kv_data_type : default dtypes of plan() (bfloat16).
    head_dim_qk, head_dim_vo : 128 by default; ``head_dim_vo`` is plan's default.
    window_left : accepted for compatibility (FlashInfer compiles a sliding-window kernel when it is
        >= 0); the window applied is plan()'s ``window_left`` (or run()'s), as in FlashInfer.

    ``logits_soft_cap`` given to plan() applies (FlashInfer's sink variant has no soft cap and
    ignores it).
    """

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
        pos_encoding_mode: str = "NONE",
        use_fp16_qk_reduction: bool = False,
        q_data_type: torch.dtype = torch.bfloat16,
        kv_data_type: torch.dtype = torch.bfloat16,
        head_dim_qk: int = 128,
        head_dim_vo: int = 128,
        window_left: int = -1,
    ) -> None:
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph, qo_indptr_buf, paged_kv_indptr_buf,
                         paged_kv_indices_buf, paged_kv_last_page_len_buf, custom_mask_buf, mask_indptr_buf, backend)
        pos_encoding_code(pos_encoding_mode)
        if use_fp16_qk_reduction:
            raise NotImplementedError("use_fp16_qk_reduction=True: q.k products always accumulate in float32 here")
        if not isinstance(window_left, int) or isinstance(window_left, bool):
            raise TypeError(f"window_left: expected an int, got {type(window_left).__name__}")
        self._plan_defaults = dict(q_data_type=q_data_type, kv_data_type=kv_data_type, head_dim_vo=head_dim_vo,
                                   pos_encoding_mode=pos_encoding_mode)

    def plan(self, *args, **kwargs) -> None:
        """``BatchPrefillWithPagedKVCacheWrapper.plan``, with the constructor's dtypes, head_dim_vo
        and pos_encoding_mode where not given."""
        given = _PLAN_SIGNATURE.bind_partial(self, *args, **kwargs).arguments
        for name, value in self._plan_defaults.items():
            if name not in given:
                kwargs[name] = value
        super().plan(*args, **kwargs)

    begin_forward = plan

    def run(self, q: torch.Tensor, paged_kv_cache, *args, **kwargs):
        """Attention with sinks for the planned batch: ``run(q, paged_kv_cache, sink[, sm_scale])``.

        Parameters
        ----------
        q : ``[qo_indptr[-1], num_qo_heads, head_dim_qk]``, the planned q dtype.
        paged_kv_cache : as ``BatchPrefillWithPagedKVCacheWrapper.run``.
        sink : float32 ``[num_qo_heads]``, each head's sink logit (natural units, compared with
            ``sm_scale * q.k``).
        sm_scale : optional float; overrides the planned ``sm_scale`` for this call (FlashInfer
            passes it here; default the planned one).
        **kwargs : ``q_scale``, ``k_scale``, ``v_scale``, ``out``, ``lse``, ``return_lse``,
            ``window_left``, ... as ``BatchPrefillWithPagedKVCacheWrapper.run``.

        Returns
        -------
        out, or (out, lse) with lse ``[qo_indptr[-1], num_qo_heads]`` float32, base 2, the sink
        included.
        """
        if not 1 <= len(args) <= 2:
            raise TypeError(f"run(): expected run(q, paged_kv_cache, sink[, sm_scale]), got {len(args)} extra "
                            f"positional argument(s)")
        if "sinks" in kwargs:
            raise TypeError("run(): this wrapper takes the sink positionally, run(q, paged_kv_cache, sink)")
        sink = args[0]
        if sink is None:
            raise TypeError("sink: expected a float32 [num_qo_heads] tensor, got None")
        if len(args) == 2 and args[1] is not None and self._plan_info is not None:
            sm_scale = args[1]
            if isinstance(sm_scale, torch.Tensor) or not isinstance(sm_scale, numbers.Real):
                raise TypeError(f"sm_scale: expected a Python float, got {type(sm_scale).__name__}")
            # q_scale multiplies the sm_scale of the current run options (plan()'s unless changed since).
            q_scale = kwargs.pop("q_scale", None)
            kwargs["q_scale"] = (1.0 if q_scale is None else float(q_scale)) * float(sm_scale) / self._launcher().opts.sm_scale
        return super().run(q, paged_kv_cache, sinks=sink, **kwargs)

    forward = run
