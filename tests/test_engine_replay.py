"""Replays of vLLM's and SGLang's FlashInfer call sequences, through ``import flashinfer`` (the alias).

Each test makes the calls the engine makes, with the engine's arguments and buffers, in its order
(sources named in each docstring; read at vLLM and SGLang main), and checks every output row against
the float64 reference. Engine-side helpers (vLLM's ``fast_plan_decode``, SGLang's index building)
are re-stated here as the engines write them, since the library must work under them unchanged.

CUDA graphs: on the GPU, ``run()`` is captured once and replayed after each re-plan; on the CPU
(interpreter tier) the same call is repeated with the same static tensors, so the re-plan must still
go through the buffers the wrapper was built with.
"""

from __future__ import annotations

import functools
import math
from typing import List

import pytest
import torch

from tests.alias_support import flashinfer_alias
from tests.helpers import DEVICE, LOW_DTYPES, ON_GPU, assert_close_to_reference, gpu_or_cpu, poisoned
from tests.reference.attention import attention_ref
from tests.reference.page_cascade import batch_indices_positions
from tests.reference.sampling import min_p_keep, sampling_target, top_k_renorm_probs, top_p_renorm_probs

H_QO, H_KV, D = 4, 2, 64
DTYPE = LOW_DTYPES[0]
SCALE = 1.0 / math.sqrt(D)
WS_BYTES = gpu_or_cpu(32 << 20, 256 << 20)
I32 = dict(dtype=torch.int32)


@pytest.fixture(scope="module")
def fi():
    with flashinfer_alias() as module:
        yield module


def _ws():
    return torch.zeros(WS_BYTES, dtype=torch.uint8, device=DEVICE)


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen).to(DTYPE).to(DEVICE)


def _check(out, q, k, v, name, lse=None, **opts):
    """out [L, H_QO, D] (and lse [L, H_QO]) of one request against the float64 reference."""
    ref, ref_lse = attention_ref(q, k, v, **opts)
    low, low_lse = attention_ref(q, k, v, compute_dtype=DTYPE, **opts)
    assert_close_to_reference(out, ref, low, name=name)
    if lse is not None:
        assert_close_to_reference(lse, ref_lse, low_lse, name=name + " lse")


class Graph:
    """Capture ``fn`` in a CUDA graph on the GPU and replay it; on the CPU call it again."""

    def __init__(self, fn):
        self.fn = fn
        self.graph = None
        if ON_GPU:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn()  # warm-up: compile outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                fn()
        self.replay()

    def replay(self):
        if self.graph is None:
            self.fn()
        else:
            self.graph.replay()
            torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------
# vLLM: a block pool, a block table per request, the backend's page-table arithmetic


class BlockPool:
    """vLLM's KV cache: per layer ``[num_blocks, 2, block_size, H_kv, D]`` logically, stored in the
    layout's order (what ``kv_cache.permute(*get_kv_cache_stride_order())`` hands the wrappers)."""

    def __init__(self, gen, max_tokens: List[int], block_size: int, layout: str, num_layers: int = 2):
        self.block_size, self.layout = block_size, layout
        blocks = [-(-n // block_size) for n in max_tokens]
        perm = torch.randperm(sum(blocks) + 3, generator=gen).tolist()
        self.block_table, start = [], 0
        for b in blocks:
            self.block_table.append(perm[start:start + b])
            start += b
        n = len(perm)
        shape = (n, 2, block_size, H_KV, D) if layout == "NHD" else (n, 2, H_KV, block_size, D)
        self.caches = [_randn(gen, *shape) for _ in range(num_layers)]

    def kv(self, layer: int, req: int, length: int):
        c = self.caches[layer][torch.tensor(self.block_table[req], device=DEVICE)]
        if self.layout == "HND":
            c = c.transpose(2, 3)
        c = c.permute(1, 0, 2, 3, 4).reshape(2, -1, H_KV, D)
        return c[0, :length], c[1, :length]

    def metadata(self, seq_lens: List[int]):
        return vllm_kv_metadata(self.block_table, seq_lens, self.block_size)


def vllm_kv_metadata(block_table, seq_lens: List[int], block_size: int):
    """vLLM's _compute_flashinfer_kv_metadata: CPU indptr and last_page_len (0 for an empty padding
    request), device indices."""
    nblocks = [-(-n // block_size) for n in seq_lens]
    indptr = torch.tensor([0] + torch.tensor(nblocks).cumsum(0).tolist(), **I32)
    indices = torch.tensor([p for r, nb in enumerate(nblocks) for p in block_table[r][:nb]], device=DEVICE, **I32)
    last = torch.tensor([(n % block_size) or (block_size if n else 0) for n in seq_lens], **I32)
    return indptr, indices, last


def vllm_fast_plan_decode(self, indptr_cpu, indices, last_page_len_cpu, seq_lens_cpu, num_qo_heads, num_kv_heads,
                          head_dim, page_size, pos_encoding_mode="NONE", window_left=-1, logits_soft_cap=None,
                          q_data_type="float16", kv_data_type=None, o_data_type=None, data_type=None, sm_scale=None,
                          rope_scale=None, rope_theta=None, non_blocking=True, fixed_split_size=-1,
                          disable_split_kv=False):
    """vLLM's ``fast_plan_decode`` (v1/attention/backends/flashinfer.py): the first call (and every call
    without CUDA graphs) is ``plan()`` with positional options; later calls under CUDA graphs copy
    indptr/last_page_len into the wrapper's buffers and call ``_cached_module.plan`` directly."""
    from flashinfer.decode import _get_range_buf

    if not self.is_cuda_graph_enabled or getattr(self, "vllm_first_call", True):
        self.plan(indptr_cpu, indices, last_page_len_cpu, num_qo_heads, num_kv_heads, head_dim, page_size,
                  pos_encoding_mode, window_left, logits_soft_cap, q_data_type, kv_data_type, o_data_type, data_type,
                  sm_scale, rope_scale, rope_theta, non_blocking, None, None, fixed_split_size, disable_split_kv)
        self.vllm_first_call = False
        return
    batch_size = len(last_page_len_cpu)
    if logits_soft_cap is None:
        logits_soft_cap = 0.0
    if batch_size != self._fixed_batch_size:
        raise ValueError("The batch size should be fixed in cudagraph mode")
    if len(indices) > len(self._paged_kv_indices_buf):
        raise ValueError("The size of indices should be less than or equal to the allocated buffer")
    self._paged_kv_indptr_buf.copy_(indptr_cpu, non_blocking=True)
    self._paged_kv_last_page_len_buf.copy_(last_page_len_cpu, non_blocking=True)
    qo_indptr_host = _get_range_buf(batch_size + 1, "cpu")
    args = [self._float_workspace_buffer, self._int_workspace_buffer, self._pin_memory_int_workspace_buffer,
            qo_indptr_host, indptr_cpu, seq_lens_cpu, batch_size, batch_size, num_qo_heads, num_kv_heads, page_size,
            self.is_cuda_graph_enabled, head_dim, head_dim, False, window_left]
    if self._backend == "fa2":
        args += [fixed_split_size, disable_split_kv, 0]
    self._plan_info = self._cached_module.plan(*args)
    self._pos_encoding_mode = pos_encoding_mode
    self._window_left = window_left
    self._logits_soft_cap = logits_soft_cap
    self._sm_scale = sm_scale
    self._rope_scale = rope_scale
    self._rope_theta = rope_theta


VLLM_CASES = [
    pytest.param("NHD", 16, -1, None, id="nhd-p16"),
    pytest.param("HND", 16, 10, 20.0, id="hnd-p16-window10-softcap20"),
]


@pytest.mark.parametrize("layout,page_size,window_left,soft_cap", VLLM_CASES)
def test_vllm_mixed_batch_two_steps(fi, layout, page_size, window_left, soft_cap):
    """vLLM FlashInferMetadataBuilder.build + FlashInferImpl.forward, no CUDA graph: decodes first, then
    chunked prefills; one prefill plan over ``indptr[num_decodes:]`` and all requests' indices, one
    decode plan through fast_plan_decode; per layer the asserts on the wrappers' private attributes,
    then run(..., k_scale=, v_scale=, out=output slice). Two steps: the same wrappers re-planned."""
    gen = torch.Generator().manual_seed(1201)
    import flashinfer

    steps = [([23, 1 + page_size, 9, 40], [1, 1, 9, 7]), ([24, 2 + page_size, 13, 42], [1, 1, 4, 2])]
    num_decodes = 2  # requests 0 and 1 decode: the batch is ordered decodes first
    pool = BlockPool(gen, [48, 48, 48, 48], page_size, layout)
    ws = _ws()
    prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, layout)
    decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, layout, use_cuda_graph=False,
                                                          paged_kv_indptr_buffer=None, paged_kv_indices_buffer=None,
                                                          paged_kv_last_page_len_buffer=None, use_tensor_cores=True)
    opts = dict(window_left=window_left, logits_soft_cap=soft_cap or 0.0, sm_scale=SCALE)
    for seq_lens, query_lens in steps:
        indptr, indices, last = pool.metadata(seq_lens)
        qo = torch.tensor([0] + torch.tensor(query_lens).cumsum(0).tolist(), **I32)
        qo_prefill = qo[num_decodes:] - qo[num_decodes]
        prefill.plan(qo_prefill, indptr[num_decodes:], indices, last[num_decodes:], H_QO, H_KV, D, page_size,
                     causal=True, sm_scale=SCALE, window_left=window_left, logits_soft_cap=soft_cap,
                     q_data_type=DTYPE, kv_data_type=DTYPE, o_data_type=DTYPE, fixed_split_size=-1,
                     disable_split_kv=False)
        vllm_fast_plan_decode(decode, indptr[:num_decodes + 1], indices, last[:num_decodes],
                              torch.tensor(seq_lens[:num_decodes], **I32), H_QO, H_KV, D, page_size,
                              pos_encoding_mode="NONE", sm_scale=SCALE, window_left=window_left,
                              logits_soft_cap=soft_cap, q_data_type=DTYPE, kv_data_type=DTYPE, o_data_type=DTYPE,
                              fixed_split_size=-1, disable_split_kv=False)
        num_tokens = int(qo[-1])
        for layer in range(2):
            query = _randn(gen, num_tokens + 3, H_QO, D)[:num_tokens]  # inputs padded for CUDA graphs
            output = poisoned((num_tokens + 3, H_QO, D), DTYPE)
            out = output[:num_tokens]
            nd_tok = int(qo[num_decodes])
            assert prefill._causal
            assert prefill._window_left == window_left
            assert prefill._logits_soft_cap == (soft_cap or 0.0)
            assert prefill._sm_scale == SCALE
            prefill.run(query[nd_tok:], pool.caches[layer], k_scale=1.0, v_scale=1.0, out=out[nd_tok:])
            assert decode._window_left == window_left
            assert decode._logits_soft_cap == (soft_cap or 0.0)
            assert decode._sm_scale == SCALE
            decode.run(query[:nd_tok], pool.caches[layer], k_scale=1.0, v_scale=1.0, out=out[:nd_tok])
            for r, n in enumerate(seq_lens):
                k, v = pool.kv(layer, r, n)
                rows = slice(int(qo[r]), int(qo[r + 1]))
                _check(out[rows], query[rows], k, v, f"step L={n} layer {layer} req {r}", causal=True, **opts)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_vllm_cuda_graph_decode_replans(fi, layout):
    """vLLM full-CUDA-graph decode: one wrapper per padded batch size over slices of persistent
    indptr/indices/last_page_len buffers, use_tensor_cores=True; the first fast_plan_decode is plan(),
    the run is captured; each later step rewrites the buffers, re-plans through
    ``_cached_module.plan`` and replays. The padding request has seq_len 0 (no pages)."""
    gen = torch.Generator().manual_seed(1202)
    import flashinfer

    page_size, bs = 16, 4
    pool = BlockPool(gen, [70, 70, 70, 70], page_size, layout, num_layers=1)
    max_pages = 5 * 4
    indptr_gpu = torch.zeros(9, device=DEVICE, **I32)
    indices_gpu = torch.zeros(max_pages, device=DEVICE, **I32)
    last_gpu = torch.zeros(8, device=DEVICE, **I32)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_ws(), layout, use_cuda_graph=True,
                                                     paged_kv_indptr_buffer=indptr_gpu[:bs + 1],
                                                     paged_kv_indices_buffer=indices_gpu,
                                                     paged_kv_last_page_len_buffer=last_gpu[:bs],
                                                     use_tensor_cores=True)
    q = torch.empty(bs, H_QO, D, dtype=DTYPE, device=DEVICE)
    out = poisoned((bs, H_QO, D), DTYPE)
    graph = None
    for seq_lens in ([5, 17, 33, 0], [6, 18, 70, 0], [64, 1, 2, 0]):
        indptr, indices, last = pool.metadata(seq_lens)
        indptr_gpu[:bs + 1].copy_(indptr)
        indices_gpu[:indices.numel()].copy_(indices)  # vLLM's _copy_page_indices_kernel
        vllm_fast_plan_decode(w, indptr, indices_gpu[:indices.numel()], last, torch.tensor(seq_lens, **I32), H_QO,
                              H_KV, D, page_size, pos_encoding_mode="NONE", sm_scale=SCALE, window_left=-1,
                              logits_soft_cap=None, q_data_type=DTYPE, kv_data_type=DTYPE, o_data_type=DTYPE,
                              fixed_split_size=-1, disable_split_kv=False)
        q.copy_(_randn(gen, bs, H_QO, D))
        out.fill_(float("nan"))
        if graph is None:
            graph = Graph(lambda: w.run(q, pool.caches[0], k_scale=1.0, v_scale=1.0, out=out))
        else:
            graph.replay()
        for r, n in enumerate(seq_lens[:3]):
            k, v = pool.kv(0, r, n)
            _check(out[r:r + 1], q[r:r + 1], k, v, f"graph step L={n} req {r}", sm_scale=SCALE)


def test_vllm_cascade_shared_prefix(fi):
    """vLLM cascade path (FlashInferMetadataBuilder.build, use_cascade): MultiLevelCascadeAttentionWrapper(2)
    planned with the shared prefix's pages as level 0 (qo [0, num_tokens]) and the per-request rest as
    level 1, causal=True; run(query, kv_cache)."""
    gen = torch.Generator().manual_seed(1203)
    import flashinfer

    page_size, shared_blocks = 16, 2
    seq_lens, query_lens = [40, 35, 50], [1, 3, 6]
    pool = BlockPool(gen, seq_lens, page_size, "NHD", num_layers=1)
    for r in range(1, 3):  # every request starts with request 0's first two blocks
        pool.block_table[r][:shared_blocks] = pool.block_table[0][:shared_blocks]
    common = shared_blocks * page_size
    indptr, indices, last = vllm_kv_metadata([bt[shared_blocks:] for bt in pool.block_table],
                                             [n - common for n in seq_lens], page_size)
    qo = torch.tensor([0] + torch.tensor(query_lens).cumsum(0).tolist(), **I32)
    num_tokens = int(qo[-1])
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, _ws(), "NHD")
    w.plan([torch.tensor([0, num_tokens], **I32), qo], [torch.tensor([0, shared_blocks], **I32), indptr],
           [torch.tensor(pool.block_table[0][:shared_blocks], device=DEVICE, **I32), indices],
           [torch.tensor([page_size], **I32), last], H_QO, H_KV, D, page_size, causal=True, sm_scale=SCALE,
           window_left=-1, logits_soft_cap=None, q_data_type=DTYPE, kv_data_type=DTYPE)
    query = _randn(gen, num_tokens, H_QO, D)
    output = poisoned((num_tokens, H_QO, D), DTYPE)
    output.copy_(w.run(query, pool.caches[0]))
    for r, n in enumerate(seq_lens):
        k, v = pool.kv(0, r, n)
        rows = slice(int(qo[r]), int(qo[r + 1]))
        _check(output[rows], query[rows], k, v, f"cascade req {r}", causal=True, sm_scale=SCALE)


def test_vllm_topk_topp_sampler(fi):
    """vLLM's flashinfer_sample (v1/sample/ops/topk_topp_sampler.py): the version check, then per case
    top_p_sampling_from_probs / top_k_sampling_from_probs on softmax(logits) or
    top_k_top_p_sampling_from_logits, all deterministic=True; every sample lies in the kept set."""
    import flashinfer

    assert tuple(int(x) for x in flashinfer.__version__.split(".")[:3]) >= (0, 2, 3)
    gen = torch.Generator().manual_seed(1204)
    batch, vocab = 6, 300
    logits = (3 * torch.randn(batch, vocab, generator=gen)).to(DEVICE)
    k = torch.tensor([1, 5, 20, 300, 2, 64], device=DEVICE, **I32)
    p = torch.tensor([0.5, 0.9, 1.0, 0.3, 0.99, 0.7], device=DEVICE)
    probs = logits.softmax(dim=-1, dtype=torch.float32)
    cases = [
        (flashinfer.sampling.top_p_sampling_from_probs(probs, p, deterministic=True), dict(top_p=p)),
        (flashinfer.sampling.top_k_sampling_from_probs(probs, k, deterministic=True), dict(top_k=k)),
        (flashinfer.sampling.top_k_top_p_sampling_from_logits(logits.contiguous(), k, p, deterministic=True),
         dict(top_k=k, top_p=p)),
    ]
    for ids, opts in cases:
        _, keep = sampling_target(logits.cpu(), is_logits=True, **{n: t.cpu() for n, t in opts.items()})
        ids = ids.view(-1).cpu().long()
        assert ids.shape == (batch,)
        assert keep[torch.arange(batch), ids].all(), f"{opts.keys()}: a sample outside the kept set"


def test_sglang_sampler(fi):
    """SGLang's Sampler (srt/layers/sampler.py), flashinfer backend: min-p batches renormalize with
    top_k_renorm_prob / top_p_renorm_prob then min_p_sampling_from_probs; others
    top_k_top_p_sampling_from_probs(probs.contiguous(), top_ks, top_ps, filter_apply_order="joint")."""
    from flashinfer.sampling import (min_p_sampling_from_probs, top_k_renorm_prob, top_k_top_p_sampling_from_probs,
                                     top_p_renorm_prob)

    gen = torch.Generator().manual_seed(1205)
    batch, vocab = 5, 257
    probs = torch.softmax(2 * torch.randn(batch, vocab, generator=gen), -1).to(DEVICE)
    top_ks = torch.tensor([1, 10, 1 << 30, 3, 50], device=DEVICE, **I32)  # 1 << 30: SGLang's TOP_K_ALL
    top_ps = torch.tensor([1.0, 0.8, 0.5, 1.0, 0.95], device=DEVICE)
    min_ps = torch.tensor([0.0, 0.1, 0.05, 0.5, 0.2], device=DEVICE)
    renorm_k = top_k_renorm_prob(probs, top_ks)
    renorm = top_p_renorm_prob(renorm_k, top_ps)
    ref_k = top_k_renorm_probs(probs.cpu(), top_ks.cpu())
    assert torch.allclose(renorm_k.cpu().double(), ref_k, atol=1e-6)
    assert torch.allclose(renorm.cpu().double(), top_p_renorm_probs(renorm_k.cpu(), top_ps.cpu()), atol=1e-6)
    ids = min_p_sampling_from_probs(renorm, min_ps).cpu().long()
    assert min_p_keep(renorm.cpu(), min_ps.cpu())[torch.arange(batch), ids].all()
    ids = top_k_top_p_sampling_from_probs(probs.contiguous(), top_ks, top_ps, filter_apply_order="joint",
                                          check_nan=False).cpu().long()
    _, keep = sampling_target(probs.cpu(), top_k=top_ks.cpu(), top_p=top_ps.cpu(), joint=True)
    assert keep[torch.arange(batch), ids].all()


def test_sampler_seed_offset_for_cuda_graphs(fi):
    """seed=/offset= as ints and as int64 tensors (fixed buffers under CUDA graphs): the same pair
    draws the same tokens, another offset other tokens, every sample in the kept set."""
    import flashinfer

    gen = torch.Generator().manual_seed(1206)
    batch, vocab = 8, 96
    logits = torch.randn(batch, vocab, generator=gen).to(DEVICE)
    k = torch.full((batch,), 40, device=DEVICE, **I32)
    p = torch.full((batch,), 0.9, device=DEVICE)
    f = functools.partial(flashinfer.sampling.top_k_top_p_sampling_from_logits, logits, k, p)
    a, b, c = f(seed=7, offset=0), f(seed=7, offset=0), f(seed=7, offset=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    seed = torch.tensor([7], dtype=torch.int64, device=DEVICE)
    offset = torch.tensor([0], dtype=torch.int64, device=DEVICE)
    t1 = f(seed=seed, offset=offset)
    offset += 4  # a captured graph re-reads the buffer
    t2 = f(seed=seed, offset=offset)
    assert torch.equal(t1, a) and torch.equal(t2, c)
    rows = f(seed=torch.arange(batch, dtype=torch.int64, device=DEVICE), offset=torch.zeros(batch, dtype=torch.int64,
                                                                                          device=DEVICE))
    _, keep = sampling_target(logits.cpu(), is_logits=True, top_k=k.cpu(), top_p=p.cpu())
    for ids in (a, c, t1, rows):
        assert keep[torch.arange(batch), ids.cpu().long()].all()


def test_get_batch_indices_positions_preallocated(fi):
    """get_batch_indices_positions(append_indptr, seq_lens, nnz, batch_indices=, positions=) writes the
    given int32 buffers (CUDA-graph-sized: rows past append_indptr[-1] get batch index -1, position 0)."""
    import flashinfer

    append_indptr = torch.tensor([0, 1, 3, 6, 10], device=DEVICE, **I32)
    seq_lens = torch.tensor([5, 5, 5, 7], device=DEVICE, **I32)
    nnz = 13
    bi = torch.full((nnz,), 99, device=DEVICE, **I32)
    pos = torch.full((nnz,), 99, device=DEVICE, **I32)
    out_bi, out_pos = flashinfer.get_batch_indices_positions(append_indptr, seq_lens, nnz, batch_indices=bi,
                                                              positions=pos)
    assert out_bi.data_ptr() == bi.data_ptr() and out_pos.data_ptr() == pos.data_ptr()
    ref_bi, ref_pos = batch_indices_positions(append_indptr.cpu(), seq_lens.cpu(), nnz)
    assert torch.equal(bi[:10].cpu(), ref_bi) and torch.equal(pos[:10].cpu(), ref_pos)
    assert (bi[10:] == -1).all() and (pos[10:] == 0).all()


# ---------------------------------------------------------------------------------------------------
# SGLang: req_to_token + a token pool (page size 1), wrappers built with backend="fa2"


class TokenPool:
    """SGLang's ReqToTokenPool + MHATokenToKVPool: req_to_token[req, pos] is a slot; per layer
    k_buffer/v_buffer [num_slots, H_kv, D]; get_kv_buffer(layer) is the (k, v) tuple of 3-D tensors."""

    def __init__(self, gen, num_reqs, max_ctx, num_layers=2):
        slots = torch.randperm(num_reqs * max_ctx + 7, generator=gen)
        self.req_to_token = slots[: num_reqs * max_ctx].view(num_reqs, max_ctx).to(torch.int32).to(DEVICE)
        n = slots.numel()
        self.k = [_randn(gen, n, H_KV, D) for _ in range(num_layers)]
        self.v = [_randn(gen, n, H_KV, D) for _ in range(num_layers)]

    def get_kv_buffer(self, layer):
        return self.k[layer], self.v[layer]

    def set_kv_buffer(self, layer, loc, k, v):
        self.k[layer][loc.long()] = k
        self.v[layer][loc.long()] = v

    def kv(self, layer, req, start, end):
        slots = self.req_to_token[req, start:end].long()
        return self.k[layer][slots], self.v[layer][slots]

    def kv_indices(self, req_pool_indices, lens, start=None, pad=0, out=None):
        """create_flashinfer_kv_indices_triton: the slots of each request's KV, concatenated."""
        start = start or [0] * len(lens)
        parts = [self.req_to_token[r, s:s + n] for r, s, n in zip(req_pool_indices, start, lens)]
        flat = torch.cat(parts) if parts else torch.empty(0, device=DEVICE, **I32)
        if out is None:
            out = torch.empty(flat.numel() + pad, device=DEVICE, **I32)
        out[:flat.numel()] = flat
        return out


@pytest.mark.parametrize("use_tensor_cores", [True, False], ids=["tensor-cores", "cuda-cores"])
def test_sglang_decode_eager(fi, use_tensor_cores):
    """SGLang FlashInferAttnBackend decode (no CUDA graph): BatchDecodeWithPagedKVCacheWrapper(ws, "NHD",
    backend="fa2", use_tensor_cores=...); FlashInferIndicesUpdaterDecode.call_begin_forward writes
    kv_indptr[1:bs+1] = cumsum(seq_lens) and the slots into kv_indices, then begin_forward(..., page
    size 1, data_type=, q_data_type=, non_blocking=True, fixed_split_size=None, disable_split_kv=False);
    forward_decode: forward(q, (k_buffer, v_buffer), sm_scale=, logits_soft_cap=, k_scale=, v_scale=)."""
    gen = torch.Generator().manual_seed(1207)
    import flashinfer

    pool = TokenPool(gen, 4, 48)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_ws(), "NHD", backend="fa2", use_tensor_cores=use_tensor_cores)
    kv_indptr = torch.zeros(9, device=DEVICE, **I32)
    kv_last_page_len = torch.ones(8, device=DEVICE, **I32)
    req_pool_indices, seq_lens = [2, 0, 3], [17, 1, 48]
    bs = len(seq_lens)
    kv_indptr[1:bs + 1] = torch.tensor(seq_lens, device=DEVICE).cumsum(0)
    kv_indices = pool.kv_indices(req_pool_indices, seq_lens)
    w.begin_forward(kv_indptr[:bs + 1], kv_indices, kv_last_page_len[:bs], H_QO, H_KV, D, 1, data_type=DTYPE,
                    q_data_type=DTYPE, non_blocking=True, fixed_split_size=None, disable_split_kv=False)
    for layer in range(2):
        q = _randn(gen, bs, H_QO * D)
        o = w.forward(q.contiguous().view(-1, H_QO, D), pool.get_kv_buffer(layer), sm_scale=SCALE,
                      logits_soft_cap=0.0, k_scale=None, v_scale=None)
        o = o.view(-1, H_QO * D)
        for i, (r, n) in enumerate(zip(req_pool_indices, seq_lens)):
            k, v = pool.kv(layer, r, 0, n)
            _check(o[i].view(1, H_QO, D), q[i].view(1, H_QO, D), k, v, f"decode layer {layer} req {r}",
                   sm_scale=SCALE)


@pytest.mark.parametrize("use_tensor_cores", [True, False], ids=["tensor-cores", "cuda-cores"])
def test_sglang_cuda_graph_decode_fast_decode_plan(fi, use_tensor_cores):
    """SGLang decode under CUDA graphs: a wrapper per batch size with use_cuda_graph=True over
    kv_indptr[:bs+1], the shared cuda_graph_kv_indices buffer and kv_last_page_len[:bs]; at capture
    the indices are written straight into ``wrapper._paged_kv_indices_buf`` and begin_forward is the
    real plan, after which ``begin_forward = partial(fast_decode_plan, wrapper)``; each replay
    re-plans with global_override_indptr_cpu and replays the captured forward."""
    gen = torch.Generator().manual_seed(1208)
    import flashinfer
    from flashinfer import fast_decode_plan

    pool = TokenPool(gen, 4, 64, num_layers=1)
    bs = 3
    kv_indptr = torch.zeros(9, device=DEVICE, **I32)
    kv_last_page_len = torch.ones(8, device=DEVICE, **I32)
    cuda_graph_kv_indices = torch.zeros(8 * 64, device=DEVICE, **I32)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_ws(), "NHD", backend="fa2", use_cuda_graph=True,
                                                     use_tensor_cores=use_tensor_cores,
                                                     paged_kv_indptr_buffer=kv_indptr[:bs + 1],
                                                     paged_kv_indices_buffer=cuda_graph_kv_indices,
                                                     paged_kv_last_page_len_buffer=kv_last_page_len[:bs])
    q = torch.empty(bs, H_QO, D, dtype=DTYPE, device=DEVICE)
    out = poisoned((bs, H_QO, D), DTYPE)
    graph = None
    for req_pool_indices, seq_lens in (([1, 0, 3], [9, 30, 2]), ([1, 0, 3], [10, 31, 3]), ([2, 3, 0], [64, 5, 1])):
        kv_indptr[1:bs + 1] = torch.tensor(seq_lens, device=DEVICE).cumsum(0)
        pool.kv_indices(req_pool_indices, seq_lens, out=w._paged_kv_indices_buf)
        args = (kv_indptr[:bs + 1], w._paged_kv_indices_buf, kv_last_page_len[:bs], H_QO, H_KV, D, 1)
        kwargs = dict(data_type=DTYPE, q_data_type=DTYPE, non_blocking=True, fixed_split_size=None,
                      disable_split_kv=False)
        if getattr(w.begin_forward, "func", None) is fast_decode_plan:
            indptr_cpu = torch.tensor([0] + torch.tensor(seq_lens).cumsum(0).tolist(), **I32)
            w.begin_forward(*args, **kwargs, global_override_indptr_cpu=indptr_cpu)
        else:
            w.begin_forward(*args, **kwargs)
        q.copy_(_randn(gen, bs, H_QO, D))
        out.fill_(float("nan"))
        if graph is None:
            graph = Graph(lambda: out.copy_(w.forward(q, pool.get_kv_buffer(0), sm_scale=SCALE, logits_soft_cap=0.0,
                                                      k_scale=None, v_scale=None)))
            w.begin_forward = functools.partial(fast_decode_plan, w)
        else:
            graph.replay()
        for i, (r, n) in enumerate(zip(req_pool_indices, seq_lens)):
            k, v = pool.kv(0, r, 0, n)
            _check(out[i:i + 1], q[i:i + 1], k, v, f"graph decode L={n} req {r}", sm_scale=SCALE)


# (req_pool_indices, prefix_lens, seq_lens): a fresh prompt, a long prefix with a short extension, a
# short prefix with a long one.
SGLANG_EXTEND = ([3, 1, 0], [0, 20, 7], [9, 26, 19])


def test_sglang_extend_paged(fi):
    """SGLang extend through the paged wrapper only (use_ragged=False: multimodal / multi-item models):
    BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", backend="fa2"); call_begin_forward with kv_indices
    padded by 256 and the multi-item options at their defaults; per layer set_kv_buffer, then
    forward(q, (k_buffer, v_buffer), causal=True, sm_scale=, window_left=-1, logits_soft_cap=0.0,
    k_scale=None, v_scale=None)."""
    gen = torch.Generator().manual_seed(1209)
    import flashinfer

    pool = TokenPool(gen, 4, 32)
    req_pool_indices, prefix_lens, seq_lens = SGLANG_EXTEND
    bs = len(seq_lens)
    ext = [s - p for s, p in zip(seq_lens, prefix_lens)]
    kv_indptr = torch.zeros(9, device=DEVICE, **I32)
    qo_indptr = torch.zeros(9, device=DEVICE, **I32)
    kv_last_page_len = torch.ones(8, device=DEVICE, **I32)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_ws(), "NHD", backend="fa2")
    kv_indptr[1:bs + 1] = torch.tensor(seq_lens, device=DEVICE).cumsum(0)
    kv_indices = pool.kv_indices(req_pool_indices, seq_lens, pad=256)
    qo_indptr[1:bs + 1] = torch.tensor(ext, device=DEVICE).cumsum(0)
    w.begin_forward(qo_indptr[:bs + 1], kv_indptr[:bs + 1], kv_indices, kv_last_page_len[:bs], H_QO, H_KV, D, 1,
                    q_data_type=DTYPE, kv_data_type=DTYPE, custom_mask=None, non_blocking=True,
                    fixed_split_size=None, prefix_len_ptr=None, token_pos_in_items_ptr=None, token_pos_in_items_len=0,
                    max_item_len_ptr=None)
    out_cache_loc = torch.cat([pool.req_to_token[r, p:s] for r, p, s in zip(req_pool_indices, prefix_lens, seq_lens)])
    n = sum(ext)
    for layer in range(2):
        q, k, v = _randn(gen, n, H_QO * D), _randn(gen, n, H_KV, D), _randn(gen, n, H_KV, D)
        pool.set_kv_buffer(layer, out_cache_loc, k, v)
        o = w.forward(q.view(-1, H_QO, D), pool.get_kv_buffer(layer), causal=True, sm_scale=SCALE, window_left=-1,
                      logits_soft_cap=0.0, k_scale=None, v_scale=None).view(-1, H_QO * D)
        q3 = q.view(-1, H_QO, D)
        for i, r in enumerate(req_pool_indices):
            rows = slice(int(qo_indptr[i]), int(qo_indptr[i + 1]))
            kk, vv = pool.kv(layer, r, 0, seq_lens[i])
            _check(o[rows].view(-1, H_QO, D), q3[rows], kk, vv, f"paged extend layer {layer} req {r}", causal=True,
                   sm_scale=SCALE)


def test_sglang_extend_ragged_with_prefix(fi):
    """SGLang's default extend: ragged wrapper over the new tokens (begin_forward(qo_indptr, qo_indptr,
    ...)) and the paged wrapper over the cached prefix only; per layer
    o1, s1 = ragged.forward_return_lse(q, k, v, causal=True, ...), o2, s2 =
    paged.forward_return_lse(q, (k_buffer, v_buffer), causal=False, ...), merge_state, then
    set_kv_buffer. A request with no prefix has an empty paged part (lse -inf)."""
    gen = torch.Generator().manual_seed(1210)
    import flashinfer
    from flashinfer.cascade import merge_state

    pool = TokenPool(gen, 4, 32)
    req_pool_indices, prefix_lens, seq_lens = SGLANG_EXTEND
    bs = len(seq_lens)
    ext = [s - p for s, p in zip(seq_lens, prefix_lens)]
    ws = _ws()
    ragged = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", backend="auto")
    paged = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", backend="fa2")
    kv_indptr = torch.zeros(9, device=DEVICE, **I32)
    qo_indptr = torch.zeros(9, device=DEVICE, **I32)
    kv_last_page_len = torch.ones(8, device=DEVICE, **I32)
    kv_indptr[1:bs + 1] = torch.tensor(prefix_lens, device=DEVICE).cumsum(0)
    kv_indices = pool.kv_indices(req_pool_indices, prefix_lens, pad=256)
    qo_indptr[1:bs + 1] = torch.tensor(ext, device=DEVICE).cumsum(0)
    ragged.begin_forward(qo_indptr[:bs + 1], qo_indptr[:bs + 1], H_QO, H_KV, D, q_data_type=DTYPE)
    paged.begin_forward(qo_indptr[:bs + 1], kv_indptr[:bs + 1], kv_indices, kv_last_page_len[:bs], H_QO, H_KV, D, 1,
                        q_data_type=DTYPE, kv_data_type=DTYPE, custom_mask=None, non_blocking=True,
                        fixed_split_size=None, prefix_len_ptr=None, token_pos_in_items_ptr=None,
                        token_pos_in_items_len=0, max_item_len_ptr=None)
    out_cache_loc = torch.cat([pool.req_to_token[r, p:s] for r, p, s in zip(req_pool_indices, prefix_lens, seq_lens)])
    n = sum(ext)
    for layer in range(2):
        q, k, v = _randn(gen, n, H_QO, D), _randn(gen, n, H_KV, D), _randn(gen, n, H_KV, D)
        o1, s1 = ragged.forward_return_lse(q, k, v, causal=True, sm_scale=SCALE, window_left=-1, logits_soft_cap=0.0)
        o2, s2 = paged.forward_return_lse(q, pool.get_kv_buffer(layer), causal=False, sm_scale=SCALE, window_left=-1,
                                          logits_soft_cap=0.0)
        o, _ = merge_state(o1, s1, o2, s2)
        pool.set_kv_buffer(layer, out_cache_loc, k, v)
        for i, r in enumerate(req_pool_indices):
            rows = slice(int(qo_indptr[i]), int(qo_indptr[i + 1]))
            kk, vv = pool.kv(layer, r, 0, seq_lens[i])
            _check(o[rows], q[rows], kk, vv, f"ragged+prefix layer {layer} req {r}", causal=True, sm_scale=SCALE)


def test_sglang_extend_ragged_no_prefix(fi):
    """SGLang extend with no cached prefix: ragged.forward(q, k, v, causal=True, sm_scale=,
    logits_soft_cap=) alone (the MLA backend makes the same call with causal=True)."""
    gen = torch.Generator().manual_seed(1211)
    import flashinfer

    ext = [5, 12, 1]
    qo_indptr = torch.tensor([0] + torch.tensor(ext).cumsum(0).tolist(), device=DEVICE, **I32)
    ragged = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_ws(), "NHD", backend="auto")
    ragged.begin_forward(qo_indptr, qo_indptr, H_QO, H_KV, D, q_data_type=DTYPE)
    n = sum(ext)
    q, k, v = _randn(gen, n, H_QO, D), _randn(gen, n, H_KV, D), _randn(gen, n, H_KV, D)
    o = ragged.forward(q, k, v, causal=True, sm_scale=SCALE, logits_soft_cap=0.0)
    for i in range(len(ext)):
        rows = slice(int(qo_indptr[i]), int(qo_indptr[i + 1]))
        _check(o[rows], q[rows], k[rows], v[rows], f"ragged req {i}", causal=True, sm_scale=SCALE)


# ---------------------------------------------------------------------------------------------------
# What the engines read off the wrappers, one behaviour per test


@pytest.mark.parametrize("name", ["BatchDecodeWithPagedKVCacheWrapper", "BatchPrefillWithPagedKVCacheWrapper",
                                  "BatchPrefillWithRaggedKVCacheWrapper"])
def test_backend_fa2_is_accepted(fi, name):
    """SGLang builds every wrapper with backend="fa2" (prefill_backend / decode_backend)."""
    w = getattr(fi, name)(_ws(), "NHD", backend="fa2")
    assert w._backend == "fa2"


def test_private_attributes_after_plan(fi):
    """FlashInfer stores the plan's options as given (logits_soft_cap None -> 0.0, sm_scale as passed,
    None included) on both wrappers; vLLM asserts on them before every run."""
    ws = _ws()
    indptr = torch.tensor([0, 1, 3], **I32)
    indices = torch.tensor([0, 1, 2], device=DEVICE, **I32)
    last = torch.tensor([4, 2], **I32)
    d = fi.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD")
    d.plan(indptr, indices, last, H_QO, H_KV, D, 4, window_left=5, logits_soft_cap=None, sm_scale=0.1,
           q_data_type=DTYPE)
    assert (d._window_left, d._logits_soft_cap, d._sm_scale) == (5, 0.0, 0.1)
    assert (d._pos_encoding_mode, d._rope_scale, d._rope_theta) == ("NONE", None, None)
    assert d._use_cuda_graph is False
    p = fi.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD")
    p.plan(torch.tensor([0, 1, 4], **I32), indptr, indices, last, H_QO, H_KV, D, 4, causal=True, sm_scale=None,
           logits_soft_cap=30.0, q_data_type=DTYPE)
    assert (p._causal, p._window_left, p._logits_soft_cap, p._sm_scale) == (True, -1, 30.0, None)
    assert (p._pos_encoding_mode, p._rope_scale, p._rope_theta) == ("NONE", None, None)


def test_cuda_graph_wrapper_internals(fi):
    """What vLLM's and SGLang's fast plans read before planning: the fixed batch size, the buffers
    given to the constructor, the workspaces, and after plan() the resolved backend and _cached_module."""
    ws = _ws()
    indptr_buf = torch.zeros(4, device=DEVICE, **I32)
    indices_buf = torch.zeros(16, device=DEVICE, **I32)
    last_buf = torch.zeros(3, device=DEVICE, **I32)
    w = fi.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_cuda_graph=True, use_tensor_cores=True,
                                             paged_kv_indptr_buffer=indptr_buf, paged_kv_indices_buffer=indices_buf,
                                             paged_kv_last_page_len_buffer=last_buf)
    assert w._fixed_batch_size == 3 and w._use_cuda_graph is True and w.is_cuda_graph_enabled
    assert w._paged_kv_indices_buf is indices_buf and w._paged_kv_indptr_buf is indptr_buf
    assert w._paged_kv_last_page_len_buf is last_buf and w._float_workspace_buffer is ws
    assert isinstance(w._int_workspace_buffer, torch.Tensor)
    assert isinstance(w._pin_memory_int_workspace_buffer, torch.Tensor)
    w.plan(torch.tensor([0, 1, 2, 3], **I32), indices_buf[:3], torch.tensor([1, 2, 3], **I32), H_QO, H_KV, D, 4,
           q_data_type=DTYPE)
    assert w._backend == "fa2" and callable(w._cached_module.plan)


def test_page_size_one_kv_tuple_3d(fi):
    """SGLang's token pool: the cache is (k_buffer, v_buffer), each [slots, H_kv, D], page size 1."""
    gen = torch.Generator().manual_seed(1212)
    k, v = _randn(gen, 20, H_KV, D), _randn(gen, 20, H_KV, D)
    slots = torch.tensor([7, 3, 19, 0, 11], device=DEVICE, **I32)
    w = fi.BatchDecodeWithPagedKVCacheWrapper(_ws(), "NHD")
    w.plan(torch.tensor([0, 5], **I32), slots, torch.tensor([1], **I32), H_QO, H_KV, D, 1, q_data_type=DTYPE)
    q = _randn(gen, 1, H_QO, D)
    out = w.run(q, (k, v))
    _check(out, q, k[slots.long()], v[slots.long()], "3-D tuple", sm_scale=SCALE)


def test_fixed_split_size_minus_one(fi):
    """vLLM passes fixed_split_size=-1 (no batch invariance) to decode plan() positionally."""
    gen = torch.Generator().manual_seed(1213)
    cache = _randn(gen, 6, 2, 4, H_KV, D)
    w = fi.BatchDecodeWithPagedKVCacheWrapper(_ws(), "NHD", use_tensor_cores=True)
    w.plan(torch.tensor([0, 3], **I32), torch.tensor([5, 0, 2], device=DEVICE, **I32), torch.tensor([3], **I32),
           H_QO, H_KV, D, 4, q_data_type=DTYPE, fixed_split_size=-1)
    q = _randn(gen, 1, H_QO, D)
    out = w.run(q, cache)
    k = cache[torch.tensor([5, 0, 2], device=DEVICE)][:, 0].reshape(-1, H_KV, D)[:11]
    v = cache[torch.tensor([5, 0, 2], device=DEVICE)][:, 1].reshape(-1, H_KV, D)[:11]
    _check(out, q, k, v, "fixed_split_size=-1", sm_scale=SCALE)
