"""Context-parallel decode: each request's KV pages are split across the ranks of a
``torch.distributed`` process group, every rank attends over its shard, and the partial states
``(o, lse)`` are exchanged and merged exactly with the library's LSE merge (``merge_states``).

Use it when one request's context does not fit one GPU's memory or bandwidth budget (1M tokens of
32/8-head, D 128 bf16 KV are 4 GiB per layer). Decode attention over a KV set is the merge of the
attention states over any partition of it, in any order: the shards need not be contiguous, equal,
or non-empty. LSE is base 2 throughout (FlashInfer's convention).

Setup. One process per GPU; NVLink multicast stays off, so ``NCCL_NVLS_ENABLE=0`` (and
``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``, ``NVSHMEM_DISABLE_NVLS=1``) are in the environment before
``init_process_group``: on the shared device machines a program that uses multicast can take the
host's GPUs out of service, and these small exchanges gain nothing from it. This module reads no
environment variable itself. gloo works on the CPU (the tests use it with ``TRITON_INTERPRET=1``)::

    dist.init_process_group("nccl")                      # NCCL_NVLS_ENABLE=0 set by the launcher
    cp = ContextParallelDecodeWrapper(workspace, group=cp_group)
    cp.plan(indptr, indices, last_page_len, 32, 8, 128, 16, q_data_type=torch.bfloat16)  # this rank's shard
    out = cp.run(q, local_paged_kv_cache)               # every rank gets the full [B, 32, 128] output

Collectives (``collective=``), one to pick by measurement (``benchmarks/bench_distributed.py``):

* ``"all_gather"``: one all-gather of every rank's packed ``(o, lse)``, then each rank merges all
  ``W`` states for every head. One collective; the local decode writes into the send buffer and the
  merge reads the receive buffer in place; each rank receives ``(W - 1) * B * H`` states. Suits
  decode batches, where the exchange is bound by latency, not bytes.
* ``"reduce_scatter"``: a reduce-scatter by heads (an all-to-all, then rank ``r`` merges the ``W``
  states of its ``H / W`` heads) followed by an all-gather of the merged heads. Two collectives and
  a few small copies, but ``2 (W - 1) / W`` of the bytes per rank and ``1 / W`` of the merge work:
  for large ``B * H`` on many ranks. Needs ``num_qo_heads % W == 0``.

CUDA graphs. ``plan()`` allocates the exchange buffers (kept across plans of the same batch size,
heads and dtype, so a captured ``run()`` replays correctly after a new ``plan()`` with
``use_cuda_graph=True``); ``run()`` does no host work that depends on tensor values and never
synchronizes with the host. NCCL collectives are captured like kernels (the communicator must have
run one collective before capture: the first ``plan()`` does). The merge writes a new tensor that
``run()`` copies into ``out`` when one is given (``merge_states`` has no ``out=`` argument).

Overlap. ``run_async()`` computes the local partial on the current stream, then forks a side stream
for the exchange and the merge and returns a handle; the caller enqueues work that does not read
this layer's attention output, then ``handle.wait()`` joins the streams (also inside a graph
capture). In a sequential decoder the next layer needs this output, so the independent work comes
from elsewhere: the other half of the batch in two-micro-batch overlap (plan two wrappers, one per
half: ``a = cp0.run_async(...)``, ``cp1.run(...)`` or its layer's MLP, ``a.wait()``), the MLP of a
parallel attention/MLP block, a MoE layer's shared expert, or the next layer's KV append for the
other micro-batch. On the CPU (gloo) the exchange runs inside ``run_async()``.

Tensor parallelism over heads needs no new kernel. On a ``tp x cp`` mesh each rank holds
``H / tp`` query heads and ``H_kv / tp`` KV heads (its TP slice) for the tokens of its CP shard;
the CP group is the ``cp`` ranks that share a TP index (``DeviceMesh(...)["cp"].get_group()`` or
``dist.new_group``), and the wrapper is planned with the TP-local head counts. The TP collectives
(QKV column-parallel, o_proj row-parallel all-reduce) are unchanged. When the same ranks do both
(vLLM's decode context parallelism: TP ranks that would hold copies of the same KV heads hold token
shards instead, and all-gather their query heads before attention), the reduce-scatter phase of
``collective="reduce_scatter"`` already leaves rank ``r`` the merged output of heads
``[r H / W, (r + 1) H / W)``, its own TP slice for the row-parallel o_proj; the final all-gather
is then the step such a layer would drop.

Positions. ROPE_LLAMA and ALiBi in the kernel, and sliding windows, number tokens from the start of
the KV the kernel sees, which on a shard is not the request's start: they raise
``NotImplementedError``. Apply RoPE to q and k before writing the cache (``apply_rope*``) and plan
with ``pos_encoding_mode="NONE"``.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.distributed as dist

from . import BatchDecodeWithPagedKVCacheWrapper, merge_states

COLLECTIVES = ("all_gather", "reduce_scatter")
_O_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# torch >= 2.13 names the flat all-gather all_gather_single (all_gather_into_tensor is deprecated).
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _align16(nbytes: int) -> int:
    return -(-nbytes // 16) * 16


def _as_dtype(value, name: str) -> Optional[torch.dtype]:
    """FlashInfer's dtype spellings for q/o (the decode wrapper's plan() has validated them)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{name}: unknown dtype {value!r}")
    return dtype


class _AllGatherBuffers:
    """One all-gather of a packed ``[o (B, H, D) | lse (B, H)]`` byte row per rank; the local
    decode writes straight into the send row and ``merge_states`` reads the received rows in place."""

    def __init__(self, world, batch, num_heads, head_dim, o_dtype, device):
        o_bytes = batch * num_heads * head_dim * o_dtype.itemsize
        lse_at = _align16(o_bytes)
        lse_bytes = batch * num_heads * 4
        row = lse_at + _align16(lse_bytes)
        self.send = torch.empty(row, dtype=torch.uint8, device=device)
        self.recv = torch.empty(world * row, dtype=torch.uint8, device=device)
        self.local_o = self.send[:o_bytes].view(o_dtype).view(batch, num_heads, head_dim)
        self.local_lse = self.send[lse_at:lse_at + lse_bytes].view(torch.float32).view(batch, num_heads)
        rows = self.recv.view(world, row)
        # [B, W, H, D] and [B, W, H]: state w of each (request, head), as merge_states takes them.
        o_rows = rows[:, :o_bytes].view(o_dtype).view(world, batch, num_heads, head_dim)
        lse_rows = rows[:, lse_at:lse_at + lse_bytes].view(torch.float32).view(world, batch, num_heads)
        self.states_o = o_rows.permute(1, 0, 2, 3)
        self.states_lse = lse_rows.permute(1, 0, 2)
        self.bytes_received = (world - 1) * row

    def exchange(self, group, out, lse) -> Tuple[torch.Tensor, torch.Tensor]:
        _all_gather_flat(self.recv, self.send, group=group)
        o, s = merge_states(self.states_o, self.states_lse)
        if out is not None:
            out.copy_(o)
            o = out
        if lse is not None:
            lse.copy_(s)
            s = lse
        return o, s


class _ReduceScatterBuffers:
    """Reduce-scatter by heads, then all-gather. Rows are ``[D values | lse]`` (the float32 LSE in
    the first 4 of 16 padding bytes after the D values), so one head's rows for every request are
    contiguous and the head-major send buffer splits into the W per-rank chunks of one all-to-all
    with the decode writing its output straight into it (only the B x H LSE is copied in)."""

    def __init__(self, world, batch, num_heads, head_dim, o_dtype, device):
        hs = num_heads // world
        pad = 16 // o_dtype.itemsize
        row = head_dim + pad
        self.world, self.hs = world, hs
        send = torch.empty(num_heads, batch, row, dtype=o_dtype, device=device)
        recv = torch.empty_like(send)
        self.send, self.recv = send, recv
        self.local_o = send[:, :, :head_dim].permute(1, 0, 2)           # [B, H, D], head-major storage
        self.local_lse = torch.empty(batch, num_heads, dtype=torch.float32, device=device)
        self.send_lse = send[:, :, head_dim:].view(torch.float32)[:, :, 0]  # [H, B]
        chunks = recv.view(world, hs, batch, row)                         # chunk w: rank w's states of my heads
        self.states_o = chunks[..., :head_dim].permute(2, 0, 1, 3)      # [B, W, hs, D]
        self.states_lse = chunks[..., head_dim:].view(torch.float32)[..., 0].permute(2, 0, 1)  # [B, W, hs]
        gsend = torch.empty(batch, hs, row, dtype=o_dtype, device=device)
        grecv = torch.empty(world, batch, hs, row, dtype=o_dtype, device=device)
        self.gsend, self.grecv = gsend, grecv
        self.gsend_o = gsend[..., :head_dim]
        self.gsend_lse = gsend[..., head_dim:].view(torch.float32)[..., 0]
        self.gathered_o = grecv[..., :head_dim].permute(1, 0, 2, 3)     # [B, W, hs, D]
        self.gathered_lse = grecv[..., head_dim:].view(torch.float32)[..., 0].permute(1, 0, 2)  # [B, W, hs]
        self.bytes_received = (send.numel() * send.element_size() * (world - 1) // world
                               + (world - 1) * gsend.numel() * gsend.element_size())

    def exchange(self, group, out, lse) -> Tuple[torch.Tensor, torch.Tensor]:
        self.send_lse.copy_(self.local_lse.t())
        dist.all_to_all_single(self.recv, self.send, group=group)
        o, s = merge_states(self.states_o, self.states_lse)             # [B, hs, D], [B, hs]
        self.gsend_o.copy_(o)
        self.gsend_lse.copy_(s)
        _all_gather_flat(self.grecv.view(-1), self.gsend.view(-1), group=group)
        out.unflatten(1, (self.world, self.hs)).copy_(self.gathered_o)
        if lse is not None:
            lse.unflatten(1, (self.world, self.hs)).copy_(self.gathered_lse)
        return out, lse


class PendingDecode:
    """The handle ``ContextParallelDecodeWrapper.run_async`` returns; ``wait()`` makes the current
    stream wait for the exchange and merge (no host synchronization) and returns the result."""

    def __init__(self, wrapper, out, lse, stream):
        self._wrapper, self._out, self._lse, self._stream = wrapper, out, lse, stream

    def wait(self) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Returns
        -------
        out ``[batch_size, num_qo_heads, head_dim]``, or ``(out, lse)`` with lse
        ``[batch_size, num_qo_heads]`` float32 (base 2) when ``run_async`` was asked for it.
        """
        if self._stream is not None:
            torch.cuda.current_stream(self._stream.device).wait_stream(self._stream)
            self._stream = None
        if self._wrapper._pending is self:
            self._wrapper._pending = None
        return self._out if self._lse is None else (self._out, self._lse)


class ContextParallelDecodeWrapper:
    """Batch decode over a paged KV cache whose pages are split across the ranks of a process group.

    Every rank holds the same batch of requests and the same queries; each holds the pages of its
    shard of every request in its own paged cache, described by its own page table (a rank may hold
    none of a request's pages; a request may have no pages at all, giving output 0 and LSE -inf).
    ``plan()`` and ``run()`` are collective: every rank of the group calls them, in the same order.
    The local partial comes from :class:`flashinfer_triton.BatchDecodeWithPagedKVCacheWrapper` with
    ``return_lse``; states travel in the output dtype and are merged by ``merge_states`` (float32
    math), so the result carries one rounding of the output dtype more than single-GPU decode.

    Parameters
    ----------
    float_workspace_buffer : torch.Tensor
        uint8 (any dtype accepted) on this rank's device; the local decode's split-KV partials.
    group : Optional[torch.distributed.ProcessGroup]
        The context-parallel group (default: the world). NCCL on GPUs, gloo on the CPU.
    kv_layout : "NHD" or "HND".
    collective : "all_gather" or "reduce_scatter" (see the module docstring).
    use_cuda_graph : bool
        Fixed page-table buffers for the local decode, so a captured ``run()`` replays after a new
        ``plan()`` with the same batch size.
    paged_kv_indptr_buffer : ``[batch_size + 1]`` int32, required with ``use_cuda_graph``.
    paged_kv_indices_buffer : ``[max_num_pages]`` int32 (this rank's pages), required with ``use_cuda_graph``.
    paged_kv_last_page_len_buffer : ``[batch_size]`` int32, required with ``use_cuda_graph``.
    """

    def __init__(
        self,
        float_workspace_buffer: torch.Tensor,
        group: Optional["dist.ProcessGroup"] = None,
        kv_layout: str = "NHD",
        collective: str = "all_gather",
        use_cuda_graph: bool = False,
        paged_kv_indptr_buffer: Optional[torch.Tensor] = None,
        paged_kv_indices_buffer: Optional[torch.Tensor] = None,
        paged_kv_last_page_len_buffer: Optional[torch.Tensor] = None,
    ) -> None:
        if collective not in COLLECTIVES:
            raise ValueError(f"collective: expected one of {COLLECTIVES}, got {collective!r}")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ContextParallelDecodeWrapper: torch.distributed is not initialized "
                               "(call torch.distributed.init_process_group first)")
        self._rank = dist.get_rank(group)
        if self._rank < 0:
            raise ValueError("group: this process is not a member of the group")
        self._world = dist.get_world_size(group)
        self._group = group
        self._collective = collective
        self._decode = BatchDecodeWithPagedKVCacheWrapper(
            float_workspace_buffer, kv_layout, use_cuda_graph=use_cuda_graph,
            paged_kv_indptr_buffer=paged_kv_indptr_buffer, paged_kv_indices_buffer=paged_kv_indices_buffer,
            paged_kv_last_page_len_buffer=paged_kv_last_page_len_buffer)
        self.device = float_workspace_buffer.device
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._buffers = None
        self._buffers_key = None
        self._pending: Optional[PendingDecode] = None
        self._planned = False

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world

    @property
    def collective(self) -> str:
        return self._collective

    @property
    def exchange_bytes(self) -> int:
        """Bytes this rank receives from the others per ``run()`` of the planned batch (as many as
        it sends)."""
        if self._buffers is None:
            raise RuntimeError("exchange_bytes: call plan() first")
        return self._buffers.bytes_received

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
        non_blocking: bool = True,
        fixed_split_size: Optional[int] = None,
        disable_split_kv: bool = False,
    ) -> None:
        """Plan decode of this rank's shard; collective over the group.

        Every rank passes its own page table for the same ``batch_size`` requests in the same order
        and the same head counts, head dim, page size, dtypes, ``sm_scale`` and soft cap; plan()
        checks that with one small all-gather (a host synchronization, as plan() is allowed) and
        raises ``ValueError`` on every rank when they differ.

        Parameters
        ----------
        indptr : ``[batch_size + 1]`` int32, CSR offsets of this rank's page table.
        indices : ``[indptr[-1]]`` int32, page ids into this rank's paged cache.
        last_page_len : ``[batch_size]`` int32, tokens in the last page of each request's shard on
            this rank, in [1, page_size] (0 where this rank holds none of the request).
        num_qo_heads, num_kv_heads, head_dim, page_size : ints, as for the decode wrapper
            (``num_qo_heads % world_size == 0`` with ``collective="reduce_scatter"``).
        pos_encoding_mode : "NONE" only (ROPE_LLAMA and ALIBI need global token positions).
        window_left : -1 only (a window is relative to the request's last token).
        logits_soft_cap, q_data_type, kv_data_type, o_data_type, data_type, sm_scale :
            as for ``BatchDecodeWithPagedKVCacheWrapper.plan``.
        fixed_split_size, disable_split_kv : the local decode's split-KV choice (pages).
        """
        if pos_encoding_mode != "NONE":
            raise NotImplementedError(f"pos_encoding_mode={pos_encoding_mode!r}: in-kernel positions would restart at "
                                      "each shard; apply RoPE before the cache and plan with 'NONE'")
        if window_left != -1:
            raise NotImplementedError(f"window_left={window_left}: sliding windows are not supported across shards")
        if self._collective == "reduce_scatter" and num_qo_heads % self._world:
            raise NotImplementedError(f"num_qo_heads={num_qo_heads}: collective='reduce_scatter' needs a multiple of "
                                      f"the group size {self._world}; use collective='all_gather'")
        if self._pending is not None:
            raise RuntimeError("plan(): wait() on the pending run_async() handle first")
        self._planned = False  # until every check below has passed on every rank
        self._decode.plan(indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size,
                          logits_soft_cap=logits_soft_cap, q_data_type=q_data_type, kv_data_type=kv_data_type,
                          o_data_type=o_data_type, data_type=data_type, sm_scale=sm_scale, non_blocking=non_blocking,
                          fixed_split_size=fixed_split_size, disable_split_kv=disable_split_kv)
        batch = indptr.numel() - 1
        q_dtype = _as_dtype(q_data_type, "q_data_type")
        o_dtype = _as_dtype(o_data_type, "o_data_type") or q_dtype
        if o_dtype not in _O_DTYPES:
            raise TypeError(f"o_data_type: expected float16, bfloat16 or float32, got {o_dtype}")
        self._check_same_on_all_ranks(batch=batch, num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads,
                                      head_dim=head_dim, page_size=page_size,
                                      q_data_type=_O_DTYPES.index(q_dtype) if q_dtype in _O_DTYPES else -1,
                                      o_data_type=_O_DTYPES.index(o_dtype),
                                      sm_scale=-1.0 if sm_scale is None else float(sm_scale),
                                      logits_soft_cap=float(logits_soft_cap or 0.0))
        key = (batch, num_qo_heads, head_dim, o_dtype)
        if key != self._buffers_key:
            kind = _AllGatherBuffers if self._collective == "all_gather" else _ReduceScatterBuffers
            self._buffers = kind(self._world, batch, num_qo_heads, head_dim, o_dtype, self.device)
            self._buffers_key = key
        self._shape = (batch, num_qo_heads, head_dim)
        self._o_dtype = o_dtype
        self._planned = True

    begin_forward = plan

    def _check_same_on_all_ranks(self, **fields) -> None:
        mine = torch.tensor([float(v) for v in fields.values()], dtype=torch.float64, device=self.device)
        every = torch.empty(self._world * mine.numel(), dtype=torch.float64, device=self.device)
        _all_gather_flat(every, mine, group=self._group)
        rows = every.view(self._world, -1).tolist()
        for i, name in enumerate(fields):
            values = [r[i] for r in rows]
            if len(set(values)) > 1:
                shown = ", ".join(f"rank {r}: {v:g}" for r, v in enumerate(values))
                raise ValueError(f"plan(): {name} must be the same on every rank of the group, got {shown}")

    def run(
        self,
        q: torch.Tensor,
        paged_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
        *,
        q_scale: Optional[float] = None,
        k_scale: Optional[float] = None,
        v_scale: Optional[float] = None,
        out: Optional[torch.Tensor] = None,
        lse: Optional[torch.Tensor] = None,
        return_lse: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Decode attention over the whole (sharded) KV of the planned batch; collective.

        Parameters
        ----------
        q : ``[batch_size, num_qo_heads, head_dim]``, the planned q dtype, the same on every rank.
        paged_kv_cache : this rank's cache, ``[num_pages, 2, page_size, num_kv_heads, head_dim]``
            (NHD) or ``[num_pages, 2, num_kv_heads, page_size, head_dim]`` (HND), or a (k, v) tuple.
        q_scale, k_scale, v_scale : Python floats, as for the decode wrapper.
        out : optional ``[batch_size, num_qo_heads, head_dim]`` output buffer (the output dtype).
        lse : optional ``[batch_size, num_qo_heads]`` float32 buffer (implies returning it).

        Returns
        -------
        out ``[batch_size, num_qo_heads, head_dim]`` over the KV of all ranks (the same on every
        rank), or ``(out, lse)`` with lse ``[batch_size, num_qo_heads]`` float32, base 2.
        """
        out, lse, want_lse = self._start(q, paged_kv_cache, q_scale, k_scale, v_scale, out, lse, return_lse,
                                         materialize=self._collective == "reduce_scatter")
        o, s = self._exchange_into(out, lse)
        return (o, s) if want_lse else o

    forward = run

    def run_async(
        self,
        q: torch.Tensor,
        paged_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
        *,
        q_scale: Optional[float] = None,
        k_scale: Optional[float] = None,
        v_scale: Optional[float] = None,
        out: Optional[torch.Tensor] = None,
        lse: Optional[torch.Tensor] = None,
        return_lse: bool = False,
    ) -> PendingDecode:
        """``run()`` with the exchange and merge on a side stream, so that work the caller enqueues
        before ``wait()`` overlaps them (capturable in a CUDA graph). Arguments as for ``run()``;
        ``out`` (and ``lse``) must stay alive until ``wait()``, and the next ``plan()``/``run()`` of
        this wrapper needs ``wait()`` first. On the CPU the exchange runs here.

        Returns
        -------
        PendingDecode, whose ``wait()`` returns what ``run()`` would.
        """
        out, lse, want_lse = self._start(q, paged_kv_cache, q_scale, k_scale, v_scale, out, lse, return_lse,
                                         materialize=True)
        stream = self._stream
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self._exchange_into(out, lse)
        else:
            self._exchange_into(out, lse)
        self._pending = PendingDecode(self, out, lse if want_lse else None, stream)
        return self._pending

    def _start(self, q, paged_kv_cache, q_scale, k_scale, v_scale, out, lse, return_lse, materialize):
        """Check the outputs (allocate missing ones with ``materialize``: the exchange then writes
        into them) and compute this rank's partial state into the send buffer."""
        if not self._planned:
            raise RuntimeError("run(): call plan() first")
        if self._pending is not None:
            raise RuntimeError("run(): wait() on the pending run_async() handle first")
        b, h, d = self._shape
        if out is not None:
            if not isinstance(out, torch.Tensor) or out.dtype != self._o_dtype or out.device != self.device:
                raise TypeError(f"out: expected a {self._o_dtype} tensor on {self.device}")
            if tuple(out.shape) != (b, h, d) or (out.stride(-1) != 1 and d > 1):
                raise ValueError(f"out: expected shape [{b}, {h}, {d}] with a contiguous last dimension, "
                                 f"got {list(out.shape)} strides {out.stride()}")
        if lse is not None:
            if not isinstance(lse, torch.Tensor) or lse.dtype != torch.float32 or lse.device != self.device:
                raise TypeError(f"lse: expected a float32 tensor on {self.device}")
            if tuple(lse.shape) != (b, h):
                raise ValueError(f"lse: expected shape [{b}, {h}], got {list(lse.shape)}")
            return_lse = True
        if materialize:
            if out is None:
                out = torch.empty((b, h, d), dtype=self._o_dtype, device=self.device)
            if lse is None and return_lse:
                lse = torch.empty((b, h), dtype=torch.float32, device=self.device)
        bufs = self._buffers
        self._decode.run(q, paged_kv_cache, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale,
                         out=bufs.local_o, lse=bufs.local_lse)
        return out, lse, return_lse

    def _exchange_into(self, out, lse):
        """Exchange the partial states in the send buffer and merge them (into ``out``/``lse`` when
        given). The benchmark times this part on its own."""
        return self._buffers.exchange(self._group, out, lse)

    def end_forward(self) -> None:
        """Kept for FlashInfer compatibility: nothing to release."""
