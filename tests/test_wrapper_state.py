"""FlashInfer's wrapper state as serving engines use it: the private attributes run() honours after
plan(), the legacy ``forward``, ``fast_decode_plan`` and ``_cached_module.plan``, page tables with an
offset ``indptr`` and spare entries, page-size-1 caches without the slot dimension, preallocated
``get_batch_indices_positions`` outputs. Every output against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flashinfer_triton as flashinfer
from flashinfer_triton.attention.kv import read_page_table
from tests.helpers import DEVICE, LOW_DTYPES, ON_GPU, assert_close_to_reference, gpu_or_cpu, poisoned, requires_gpu
from tests.reference.attention import attention_ref, build_paged_cache

DTYPE = LOW_DTYPES[0]
H_QO, H_KV, D, PAGE = 4, 2, 64, 4
WS_BYTES = gpu_or_cpu(16 << 20, 128 << 20)
I32 = dict(dtype=torch.int32)


def _ws():
    return torch.zeros(WS_BYTES, dtype=torch.uint8, device=DEVICE)


def _gen():
    return torch.Generator().manual_seed(torch.initial_seed())


def _randn(gen, *shape, dtype=DTYPE):
    return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)


def _check(out, q, ks, vs, name, lse=None, qo_lens=None, **opts):
    """Rows of request i (one per request, or ``qo_lens[i]``) against the float64 reference."""
    start = 0
    for i, (k, v) in enumerate(zip(ks, vs)):
        n = 1 if qo_lens is None else qo_lens[i]
        rows = slice(start, start + n)
        start += n
        ref, ref_lse = attention_ref(q[rows], k, v, **opts)
        low, low_lse = attention_ref(q[rows], k, v, compute_dtype=q.dtype, **opts)
        assert_close_to_reference(out[rows], ref, low, name=f"{name} req {i}")
        if lse is not None:
            assert_close_to_reference(lse[rows], ref_lse, low_lse, name=f"{name} lse req {i}")


def _decode_batch(gen, kv_lens, page_size=PAGE, layout="NHD"):
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, H_KV, D, DTYPE, DEVICE, layout,
                                                             generator=gen)
    return cache, indptr.cpu(), indices, last.cpu(), ks, vs


# ------------------------------------------------------------------------------------------------
# Run options read from the attributes


def test_decode_run_honours_attributes_changed_after_plan():
    """vLLM's fast plan and FlashInfer's legacy forward write _sm_scale / _logits_soft_cap /
    _window_left after plan(): run() uses the new values (soft cap switched on needs another kernel
    configuration: a derived launcher, kept per value tuple), and plan()'s values again its launcher."""
    gen = _gen()
    cache, indptr, indices, last, ks, vs = _decode_batch(gen, [9, 21])
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_ws())
    w.plan(indptr, indices, last, H_QO, H_KV, D, PAGE, sm_scale=0.3, q_data_type=DTYPE)
    assert (w._sm_scale, w._logits_soft_cap, w._window_left) == (0.3, 0.0, -1)
    q = _randn(gen, 2, H_QO, D)
    _check(w.run(q, cache), q, ks, vs, "planned", sm_scale=0.3)
    w._sm_scale, w._logits_soft_cap, w._window_left = 0.2, 5.0, 6
    derived = w._launcher()
    assert derived is not w.planned.launcher and w._launcher() is derived
    _check(w.run(q, cache), q, ks, vs, "changed", sm_scale=0.2, logits_soft_cap=5.0, window_left=6)
    w._sm_scale, w._logits_soft_cap, w._window_left = 0.3, 0.0, -1
    assert w._launcher() is w.planned.launcher
    w._sm_scale = None  # FlashInfer's default: 1 / sqrt(head_dim)
    out, lse = w.forward_return_lse(q, cache, logits_soft_cap=None)
    _check(out, q, ks, vs, "default scale", lse=lse)
    assert w._logits_soft_cap is None and w._window_left == -1  # the legacy forward's values stay set


def test_prefill_legacy_forward_overrides_causal_and_soft_cap():
    """SGLang plans the paged prefill without causal and calls forward(causal=True, sm_scale=,
    logits_soft_cap=); a plan with a soft cap run with none; the values stay for later run() calls."""
    gen = _gen()
    kv_lens, qo_lens = [11, 6], [3, 6]
    cache, indptr, indices, last, ks, vs = _decode_batch(gen, kv_lens)
    qo = torch.tensor([0, 3, 9], **I32)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_ws(), backend="fa2")
    w.plan(qo, indptr, indices, last, H_QO, H_KV, D, PAGE, logits_soft_cap=8.0, q_data_type=DTYPE)
    assert (w._causal, w._logits_soft_cap, w._use_fp16_qk_reduction, w._backend) == (False, 8.0, False, "fa2")
    q = _randn(gen, 9, H_QO, D)
    _check(w.run(q, cache), q, ks, vs, "planned", qo_lens=qo_lens, logits_soft_cap=8.0)
    out = w.forward(q, cache, causal=True, sm_scale=0.25, logits_soft_cap=0.0)
    _check(out, q, ks, vs, "forward", qo_lens=qo_lens, causal=True, sm_scale=0.25)
    assert w._causal is True
    out, lse = w.run_return_lse(q, cache)
    _check(out, q, ks, vs, "run after forward", lse=lse, qo_lens=qo_lens, causal=True, sm_scale=0.25)
    out, lse = w.forward_return_lse(q, cache, causal=False, window_left=2, logits_soft_cap=3.0)
    _check(out, q, ks, vs, "forward_return_lse", lse=lse, qo_lens=qo_lens, window_left=2, logits_soft_cap=3.0)


def test_ragged_legacy_forward_causal_over_non_causal_plan():
    gen = _gen()
    lens = [5, 2]
    qo = torch.tensor([0, 5, 7], **I32)
    q, k, v = _randn(gen, 7, H_QO, D), _randn(gen, 7, H_KV, D), _randn(gen, 7, H_KV, D)
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_ws(), backend="auto")
    w.plan(qo, qo, H_QO, H_KV, D, q_data_type=DTYPE)
    assert w._backend == "fa2"
    out, lse = w.forward_return_lse(q, k, v, causal=True, sm_scale=0.2)
    _check(out, q, [k[:5], k[5:]], [v[:5], v[5:]], "ragged", lse=lse, qo_lens=lens, causal=True, sm_scale=0.2)


def test_run_options_the_plan_fixes_raise():
    gen = _gen()
    cache, indptr, indices, last, ks, vs = _decode_batch(gen, [5])
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_ws())
    w.plan(indptr, indices, last, H_QO, H_KV, D, PAGE, q_data_type=DTYPE)
    q = _randn(gen, 1, H_QO, D)
    with pytest.raises(NotImplementedError, match="pos_encoding_mode='ROPE_LLAMA' after plan"):
        w.forward(q, cache, pos_encoding_mode="ROPE_LLAMA")
    w._pos_encoding_mode = "NONE"
    _check(w.run(q, cache), q, ks, vs, "after reset")
    p = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_ws())
    p.plan(torch.tensor([0, 1], **I32), indptr, indices, last, H_QO, H_KV, D, PAGE, q_data_type=DTYPE)
    with pytest.raises(NotImplementedError, match="use_fp16_qk_reduction"):
        p.forward(q, cache, use_fp16_qk_reduction=True)
    w._logits_soft_cap = -1.0
    with pytest.raises(ValueError, match="logits_soft_cap"):
        w.run(q, cache)


def test_run_with_changed_options_under_torch_compile():
    """run() traces with fullgraph=True once the options' launcher exists (the legacy forward made
    it eagerly); a change inside a compiled region derives its launcher outside the trace (one graph
    break), so the compiled result follows the attributes."""
    gen = _gen()
    cache, indptr, indices, last, ks, vs = _decode_batch(gen, [9, 3])
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_ws())
    w.plan(indptr, indices, last, H_QO, H_KV, D, PAGE, q_data_type=DTYPE)
    q = _randn(gen, 2, H_QO, D)
    eager = w.forward(q, cache, sm_scale=0.2, logits_soft_cap=5.0)
    backend = "inductor" if ON_GPU else "aot_eager"
    traced = torch.compile(lambda q, cache: w.run(q, cache), fullgraph=True, backend=backend)(q, cache)
    torch.testing.assert_close(traced, eager, rtol=0, atol=0)

    def legacy(q, cache):
        return w.forward(q, cache, sm_scale=0.3) * 2.0

    out = torch.compile(legacy, backend=backend)(q, cache)
    _check(out / 2.0, q, ks, vs, "compiled legacy forward", sm_scale=0.3)


# ------------------------------------------------------------------------------------------------
# Fast plans


def _cached_module_args(w, form, indptr, kv_lens, window_left=-1):
    """The argument lists FlashInfer's modules take, as FlashInfer's / vLLM's / SGLang's fast plans
    build them (the workspaces first)."""
    batch = len(kv_lens)
    head = [w._float_workspace_buffer, w._int_workspace_buffer, w._pin_memory_int_workspace_buffer]
    if form == 15:  # decode module (use_tensor_cores=False)
        return head + [indptr, batch, H_QO, H_KV, PAGE, w.is_cuda_graph_enabled, window_left, 0.0, D, D,
                       torch.empty(0, dtype=DTYPE), torch.empty(0, dtype=DTYPE)]
    args = head + [torch.arange(batch + 1, **I32), indptr, torch.tensor(kv_lens, **I32), batch, batch, H_QO, H_KV,
                   PAGE, w.is_cuda_graph_enabled, D, D, False, window_left]
    return args + [-1, False, 0, 0][: form - 16]


@pytest.mark.parametrize("form", [15, 16, 18, 19, 20])
def test_cached_module_plan_forms(form):
    """``_cached_module.plan(*args)`` in each argument form re-plans a CUDA-graph wrapper's batch from
    its buffers (the engines write the page table there first); the result goes to _plan_info."""
    gen = _gen()
    cache, indptr, indices, last, ks, vs = _decode_batch(gen, [13, 3, 30])
    indptr_buf, last_buf = torch.zeros(4, device=DEVICE, **I32), torch.zeros(3, device=DEVICE, **I32)
    indices_buf = torch.full((40,), -7, device=DEVICE, **I32)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_ws(), use_cuda_graph=True, use_tensor_cores=form != 15,
                                                     paged_kv_indptr_buffer=indptr_buf,
                                                     paged_kv_indices_buffer=indices_buf,
                                                     paged_kv_last_page_len_buffer=last_buf)
    w.plan(torch.tensor([0, 1, 2, 3], **I32), indices[:3], torch.ones(3, **I32), H_QO, H_KV, D, PAGE,
           q_data_type=DTYPE)
    assert w._backend == "fa2" and w._fixed_batch_size == 3
    indptr_buf.copy_(indptr)
    last_buf.copy_(last)
    indices_buf[: indices.numel()].copy_(indices)
    w._plan_info = w._cached_module.plan(*_cached_module_args(w, form, indptr, [13, 3, 30]))
    q = _randn(gen, 3, H_QO, D)
    out = poisoned((3, H_QO, D), DTYPE)
    w.run(q, cache, out=out)
    _check(out, q, ks, vs, f"{form}-argument plan")


def test_cached_module_plan_refuses_other_problems():
    gen = _gen()
    cache, indptr, indices, last, ks, vs = _decode_batch(gen, [6, 2])
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_ws(), use_tensor_cores=True)
    w.plan(indptr, indices, last, H_QO, H_KV, D, PAGE, q_data_type=DTYPE)
    args = _cached_module_args(w, 19, indptr, [6, 2])
    with pytest.raises(TypeError, match="got 14"):
        w._cached_module.plan(*args[:14])
    bad = list(args)
    bad[8] = 8  # num_qo_heads
    with pytest.raises(ValueError, match="differ from plan"):
        w._cached_module.plan(*bad)
    bad = list(args)
    bad[6] = 4  # total_num_rows = batch * q_len_per_req
    with pytest.raises(NotImplementedError, match="q_len_per_req"):
        w._cached_module.plan(*bad)
    bad = list(args)
    bad[5] = torch.tensor([6, 9], **I32)  # 9 tokens do not fit the second request's page
    with pytest.raises(ValueError, match="request 1 has 9 tokens"):
        w._cached_module.plan(*bad)


def test_fast_decode_plan_without_cuda_graph():
    """FlashInfer's fast_decode_plan on an eager wrapper: it takes the tensors as its buffers, reads
    the KV lengths from last_page_len (page size > 1) and sets the run options it is given."""
    gen = _gen()
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_ws(), backend="fa2")
    with pytest.raises(RuntimeError, match="call plan"):
        flashinfer.fast_decode_plan(w, torch.tensor([0, 1], **I32), torch.zeros(1, device=DEVICE, **I32),
                                    torch.ones(1, **I32), H_QO, H_KV, D, PAGE)
    cache, indptr, indices, last, ks, vs = _decode_batch(gen, [7])
    w.plan(indptr, indices, last, H_QO, H_KV, D, PAGE, q_data_type=DTYPE)
    cache, indptr, indices, last, ks, vs = _decode_batch(gen, [17, 1, 8])
    flashinfer.fast_decode_plan(w, indptr.to(DEVICE), indices, last.to(DEVICE), H_QO, H_KV, D, PAGE,
                                q_data_type=DTYPE, sm_scale=0.2, logits_soft_cap=7.0,
                                global_override_indptr_cpu=indptr)
    assert w._paged_kv_indices_buf is indices and (w._sm_scale, w._logits_soft_cap) == (0.2, 7.0)
    q = _randn(gen, 3, H_QO, D)
    _check(w.run(q, cache), q, ks, vs, "fast plan", sm_scale=0.2, logits_soft_cap=7.0)
    with pytest.raises(ValueError, match="differ from plan"):
        flashinfer.fast_decode_plan(w, indptr, indices, last, H_QO, H_KV, 128, PAGE, q_data_type=DTYPE)
    with pytest.raises(ValueError, match="dtypes"):
        flashinfer.fast_decode_plan(w, indptr, indices, last, H_QO, H_KV, D, PAGE, q_data_type=torch.float64)
    with pytest.raises(NotImplementedError, match="q_len_per_req"):
        flashinfer.fast_decode_plan(w, indptr, indices, last, H_QO, H_KV, D, PAGE, q_data_type=DTYPE,
                                    q_len_per_req=2)


# ------------------------------------------------------------------------------------------------
# Page tables, caches, state


def test_page_table_offset_and_spare_entries():
    """Request b reads indices[indptr[b]:indptr[b+1]]: indptr may start above 0, indices may run
    past indptr[-1] (vLLM: a slice of indptr over all indices; SGLang: 256 spare entries). Entries
    outside the range are never checked nor read; those inside are."""
    gen = _gen()
    cache, indptr, indices, last, ks, vs = _decode_batch(gen, [10, 5])
    ids = indices.cpu()
    spare = torch.tensor([-5, 10 ** 6], **I32)
    table = torch.cat([spare, ids, spare])  # host page ids: checked on the host, inside the range only
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_ws())
    w.plan(indptr + 2, table, last, H_QO, H_KV, D, PAGE, q_data_type=DTYPE)
    q = _randn(gen, 2, H_QO, D)
    _check(w.run(q, cache), q, ks, vs, "offset table")
    bad = table.clone()
    bad[3] = cache.shape[0]
    w.plan(indptr + 2, bad, last, H_QO, H_KV, D, PAGE, q_data_type=DTYPE)
    with pytest.raises(ValueError, match="out of range"):
        w.run(q, cache)
    with pytest.raises(ValueError, match="indices: expected at least"):
        w.plan(indptr + 5, table, last, H_QO, H_KV, D, PAGE, q_data_type=DTYPE)
    with pytest.raises(ValueError, match="non-negative offset"):
        w.plan(indptr - 1, table, last, H_QO, H_KV, D, PAGE, q_data_type=DTYPE)
    assert read_page_table(indptr + 2, table, last, PAGE, DEVICE).max_page_id == int(ids.max())
    # The shared-prefix split reads such tables too: both requests start with the same page.
    ids[3] = ids[0]
    plain = flashinfer.split_shared_prefix(indptr, ids, last, PAGE)
    offset = flashinfer.split_shared_prefix(indptr + 2, torch.cat([spare, ids, spare]), last, PAGE)
    assert plain.paged_kv_indptr_arr[0].tolist() == [0, 1]
    for a, b in zip(plain, offset):
        assert all(torch.equal(x.cpu(), y.cpu()) for x, y in zip(a, b))


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_page_size_one_cache_without_slot_dimension(layout):
    """FlashInfer's page-size-1 forms: a (k, v) tuple of 3-D [slots, H_kv, D] tensors (SGLang's token
    pool) and one 4-D [slots, 2, H_kv, D] tensor, in either layout (the slot axis is inserted)."""
    gen = _gen()
    kv = _randn(gen, 20, 2, H_KV, D)
    slots = torch.tensor([4, 17, 0, 9, 11, 3], device=DEVICE, **I32)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_ws(), layout)
    w.plan(torch.tensor([0, 2, 6], **I32), slots, torch.ones(2, **I32), H_QO, H_KV, D, 1, q_data_type=DTYPE)
    q = _randn(gen, 2, H_QO, D)
    k, v = kv[:, 0][slots.long()], kv[:, 1][slots.long()]
    ks, vs = [k[:2], k[2:]], [v[:2], v[2:]]
    _check(w.run(q, (kv[:, 0], kv[:, 1])), q, ks, vs, "3-D tuple")
    _check(w.run(q, kv), q, ks, vs, "4-D tensor")


def test_flashinfer_private_state():
    """What the engines read off a wrapper besides the run options."""
    gen = _gen()
    cache, indptr, indices, last, ks, vs = _decode_batch(gen, [9, 2])
    ws = _ws()
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, backend="fa3")
    assert w._fixed_batch_size == 0 and w._float_workspace_buffer is ws
    assert w._int_workspace_buffer.device == ws.device and w._pin_memory_int_workspace_buffer.device.type == "cpu"
    host_indptr = indptr.clone()
    w.plan(host_indptr, indices, last, H_QO, H_KV, D, PAGE, q_data_type=DTYPE)
    assert w._backend == "fa3"  # only "auto" resolves
    host_indptr.fill_(0)  # FlashInfer copied the plan's values
    assert w._paged_kv_indptr_buf.device == ws.device and torch.equal(w._paged_kv_indptr_buf.cpu(), indptr)
    assert w._paged_kv_last_page_len_buf.dtype == torch.int32 and torch.equal(w._paged_kv_last_page_len_buf.cpu(), last)
    assert w._paged_kv_indices_buf.device == ws.device
    int_ws = torch.empty(64, dtype=torch.uint8, device=DEVICE)
    w.reset_workspace_buffer(ws, int_ws)
    assert w._int_workspace_buffer is int_ws
    w.vllm_first_call = False  # engines add attributes of their own
    p = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws)
    p.plan(torch.tensor([0, 2, 3], **I32), indptr, indices, last, H_QO, H_KV, D, PAGE, q_data_type=DTYPE)
    assert torch.equal(p._qo_indptr_buf.cpu(), torch.tensor([0, 2, 3], **I32)) and p._fixed_batch_size == 0
    r = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws)
    r.plan(torch.tensor([0, 2, 3], **I32), torch.tensor([0, 4, 9], **I32), H_QO, H_KV, D, q_data_type=DTYPE)
    assert torch.equal(r._kv_indptr_buf.cpu(), torch.tensor([0, 4, 9], **I32))


def test_get_batch_indices_positions_outputs():
    append_indptr = torch.tensor([0, 2, 3], device=DEVICE, **I32)
    seq_lens = torch.tensor([4, 1], device=DEVICE, **I32)
    b, p = flashinfer.get_batch_indices_positions(append_indptr, seq_lens, 5)
    assert b.tolist() == [0, 0, 1, -1, -1] and p.tolist() == [2, 3, 0, 0, 0]
    with pytest.raises(TypeError, match="batch_indices"):
        flashinfer.get_batch_indices_positions(append_indptr, seq_lens, 5,
                                               batch_indices=torch.empty(5, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="positions: expected 5 entries"):
        flashinfer.get_batch_indices_positions(append_indptr, seq_lens, 5,
                                               positions=torch.empty(4, device=DEVICE, **I32))


# ------------------------------------------------------------------------------------------------
# GPU: fast plans under CUDA-graph replay


@requires_gpu
@pytest.mark.parametrize("fast_plan", ["fast_decode_plan", "cached_module"])
def test_gpu_fast_plans_under_cuda_graph_replay(fast_plan):
    """A CUDA-graph decode wrapper captured once (through the legacy forward with a scale and soft
    cap of its own: a derived launcher inside the capture), then re-planned by SGLang's
    fast_decode_plan or vLLM's _cached_module.plan for batches from one token to a split-KV long
    request, each replay checked against the reference."""
    gen = torch.Generator().manual_seed(12)
    dtype, batch, hq, hkv, d, page_size, max_pages = torch.bfloat16, 16, 32, 8, 128, 16, 4096
    total_pages = 3000
    cache = _randn(gen, total_pages, 2, page_size, hkv, d, dtype=dtype)
    indptr_buf = torch.zeros(batch + 1, device=DEVICE, **I32)
    indices_buf = torch.zeros(max_pages, device=DEVICE, **I32)
    last_buf = torch.zeros(batch, device=DEVICE, **I32)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_ws(), backend="fa2", use_cuda_graph=True, use_tensor_cores=True,
                                                     paged_kv_indptr_buffer=indptr_buf,
                                                     paged_kv_indices_buffer=indices_buf,
                                                     paged_kv_last_page_len_buffer=last_buf)
    q = _randn(gen, batch, hq, d, dtype=dtype)
    out = torch.empty(batch, hq, d, dtype=dtype, device=DEVICE)

    def write_table(lens):
        """The engine's part: the page table straight into the wrapper's buffers."""
        pages = [-(-n // page_size) for n in lens]
        ids = torch.randperm(total_pages, generator=gen)[: sum(pages)].to(torch.int32)
        indptr = torch.tensor([0] + np.cumsum(pages).tolist(), **I32)
        last = torch.tensor([n - (p - 1) * page_size for n, p in zip(lens, pages)], **I32)
        indptr_buf.copy_(indptr)
        last_buf.copy_(last)
        indices_buf[: ids.numel()].copy_(ids)
        return indptr, ids, last

    indptr, ids, last = write_table([100] * batch)
    w.plan(indptr_buf, indices_buf[: ids.numel()], last_buf, hq, hkv, d, page_size, q_data_type=dtype)
    step = lambda: out.copy_(w.forward(q, cache, sm_scale=0.07, logits_soft_cap=30.0))  # noqa: E731
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for lens in ([1] * batch, [7000, 3] + [50] * (batch - 2), torch.randint(1, 2500, (batch,), generator=gen).tolist()):
        indptr, ids, last = write_table(lens)
        if fast_plan == "fast_decode_plan":
            flashinfer.fast_decode_plan(w, indptr_buf, indices_buf, last_buf, hq, hkv, d, page_size, data_type=dtype,
                                        q_data_type=dtype, global_override_indptr_cpu=indptr)
        else:
            w._plan_info = w._cached_module.plan(
                w._float_workspace_buffer, w._int_workspace_buffer, w._pin_memory_int_workspace_buffer,
                torch.arange(batch + 1, **I32), indptr, torch.tensor(lens, **I32), batch, batch, hq, hkv, page_size,
                True, d, d, False, -1, -1, False, 0)
            w._sm_scale, w._logits_soft_cap = 0.07, 30.0
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        cursor = 0
        for i, n in enumerate(lens):
            pages = ids[cursor: cursor + -(-n // page_size)].long().to(DEVICE)
            cursor += pages.numel()
            kv = cache[pages].transpose(0, 1).reshape(2, -1, hkv, d)[:, :n]
            ref, _ = attention_ref(q[i:i + 1], kv[0], kv[1], sm_scale=0.07, logits_soft_cap=30.0)
            low, _ = attention_ref(q[i:i + 1], kv[0], kv[1], sm_scale=0.07, logits_soft_cap=30.0, compute_dtype=dtype)
            assert_close_to_reference(out[i:i + 1], ref, low, name=f"{fast_plan} L={n} req {i}")
