"""Decode attention against the float64 reference: paged batches, every layout and option."""

import math

import pytest
import torch

import flashinfer_triton as flashinfer
from tests.helpers import DEVICE, LOW_DTYPES, ON_GPU, assert_close_to_reference, gpu_or_cpu, poisoned, requires_gpu
from tests.reference.attention import attention_ref, build_paged_cache

WS_BYTES = gpu_or_cpu(16 << 20, 128 << 20)


def _workspace():
    return torch.empty(WS_BYTES, dtype=torch.uint8, device=DEVICE)


def _kv_lens(batch, max_len, page_size, gen):
    # Mixed lengths: 1 token, exactly one full page, partial pages, several pages.
    fixed = [1, page_size, page_size + 1, max_len]
    rand = torch.randint(1, max_len + 1, (max(0, batch - len(fixed)),), generator=gen).tolist()
    return (fixed + rand)[:batch]


def _check_decode(out, lse, q, ks, vs, dtype, **opts):
    for i in range(q.shape[0]):
        ref, ref_lse = attention_ref(q[i:i + 1], ks[i], vs[i], **opts)
        low, low_lse = attention_ref(q[i:i + 1], ks[i], vs[i], compute_dtype=dtype, **opts)
        assert_close_to_reference(out[i:i + 1], ref, low, name=f"out[{i}]")
        assert_close_to_reference(lse[i:i + 1], ref_lse, low_lse, name=f"lse[{i}]")


CASES = [
    # (layout, page_size, num_qo_heads, num_kv_heads, head_dim)
    pytest.param("NHD", 16, 8, 2, 64, id="nhd-p16-g4-d64"),
    pytest.param("HND", 16, 8, 2, 64, id="hnd-p16-g4-d64"),
    pytest.param("NHD", 1, 4, 4, 64, id="nhd-p1-mha"),
    pytest.param("NHD", 5, 6, 1, 96, id="nhd-p5-mqa6-d96"),
    pytest.param("HND", 7, 16, 1, 128, id="hnd-p7-g16-d128"),
]


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("layout,page_size,hq,hkv,d", CASES)
def test_batch_decode_matches_reference(dtype, layout, page_size, hq, hkv, d):
    gen = torch.Generator().manual_seed(torch.initial_seed())
    batch = gpu_or_cpu(5, 33)
    kv_lens = _kv_lens(batch, gpu_or_cpu(70, 3000), page_size, gen)
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, layout, generator=gen)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(), kv_layout=layout)
    w.plan(indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype)
    q = torch.randn(batch, hq, d, generator=gen).to(dtype).to(DEVICE)
    out, lse = w.run(q, cache, return_lse=True)
    _check_decode(out, lse, q, ks, vs, dtype)
    # One plan serves a second run() (another layer): fresh q, same metadata.
    q2 = torch.randn(batch, hq, d, generator=gen).to(dtype).to(DEVICE)
    out2 = w.run(q2, cache)
    for i in range(batch):
        ref, _ = attention_ref(q2[i:i + 1], ks[i], vs[i])
        low, _ = attention_ref(q2[i:i + 1], ks[i], vs[i], compute_dtype=dtype)
        assert_close_to_reference(out2[i:i + 1], ref, low, name=f"second run out[{i}]")


OPTIONS = [
    pytest.param(dict(logits_soft_cap=30.0), id="softcap"),
    pytest.param(dict(window_left=20), id="window"),
    pytest.param(dict(pos_encoding_mode="ROPE_LLAMA", rope_scale=2.0, rope_theta=5e4), id="rope"),
    pytest.param(dict(pos_encoding_mode="ALIBI"), id="alibi"),
    pytest.param(dict(sm_scale=0.3), id="sm_scale"),
]


@pytest.mark.parametrize("opts", OPTIONS)
def test_batch_decode_options(opts):
    dtype = LOW_DTYPES[0]
    gen = torch.Generator().manual_seed(torch.initial_seed())
    page_size, hq, hkv, d = 16, 8, 2, 64
    kv_lens = _kv_lens(gpu_or_cpu(4, 17), gpu_or_cpu(90, 2000), page_size, gen)
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, generator=gen)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    w.plan(indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype, **opts)
    q = torch.randn(len(kv_lens), hq, d, generator=gen).to(dtype).to(DEVICE)
    out, lse = w.run(q, cache, return_lse=True)
    ref_opts = {k: v for k, v in opts.items()}
    _check_decode(out, lse, q, ks, vs, dtype, **ref_opts)


@pytest.mark.parametrize("hq,hkv", [(4, 2), (16, 2)], ids=["g2", "g8"])  # in-kernel merge over 4 or 16 rows
def test_split_kv_batch_invariant_and_tuple_cache(hq, hkv):
    """A fixed split size gives results independent of the rest of the batch (bit-equal to
    per-request runs); the (k, v) tuple form gives the same answer as the 5-D tensor."""
    dtype = LOW_DTYPES[0]
    gen = torch.Generator().manual_seed(torch.initial_seed())
    page_size, d = 4, 64
    kv_lens = _kv_lens(gpu_or_cpu(4, 9), gpu_or_cpu(150, 5000), page_size, gen)
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, generator=gen)
    q = torch.randn(len(kv_lens), hq, d, generator=gen).to(dtype).to(DEVICE)
    split = gpu_or_cpu(64, 512) // page_size  # pages, FlashInfer's unit
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    w.plan(indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype, fixed_split_size=split)
    assert w.planned.plan.num_split_requests > 0, "the test must exercise the split/merge path"
    out = poisoned((len(kv_lens), hq, d), dtype)
    lse = poisoned((len(kv_lens), hq), torch.float32)
    res = w.run(q, cache, out=out, lse=lse)
    assert res[0] is out and res[1] is lse
    _check_decode(out, lse, q, ks, vs, dtype)
    out_t = w.run(q, (cache[:, 0], cache[:, 1]))
    assert torch.equal(out_t, out)
    indptr_h, last_h, indices_h = indptr.cpu(), last.cpu(), indices.cpu()
    for i in range(len(kv_lens)):
        a, b = int(indptr_h[i]), int(indptr_h[i + 1])
        wi = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace())
        wi.plan(torch.tensor([0, b - a], dtype=torch.int32, device=DEVICE), indices_h[a:b].to(DEVICE),
                last_h[i:i + 1].to(DEVICE), hq, hkv, d, page_size, q_data_type=dtype, fixed_split_size=split)
        oi, li = wi.run(q[i:i + 1], cache, return_lse=True)
        assert torch.equal(oi[0], out[i]), f"request {i}: batched result differs from per-request result"
        assert torch.equal(li[0], lse[i])


@pytest.mark.parametrize("split", [False, True], ids=["unsplit", "split"])
def test_attention_sinks(split):
    """sinks=: a per-head logit in every row's softmax denominator (gpt-oss); the LSE includes it.
    Split requests apply it once, after the in-kernel merge."""
    dtype = LOW_DTYPES[0]
    gen = torch.Generator().manual_seed(torch.initial_seed())
    page_size, hq, hkv, d = 4, 4, 2, 64
    kv_lens = _kv_lens(gpu_or_cpu(4, 9), gpu_or_cpu(150, 5000), page_size, gen)
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, generator=gen)
    q = torch.randn(len(kv_lens), hq, d, generator=gen).to(dtype).to(DEVICE)
    sinks = (torch.randn(hq, generator=gen) * 2).to(DEVICE)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    w.plan(indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype,
           fixed_split_size=(gpu_or_cpu(32, 512) // page_size) if split else None, disable_split_kv=not split)
    assert (w.planned.plan.num_split_requests > 0) == split
    out, lse = w.run(q, cache, return_lse=True, sinks=sinks)
    _check_decode(out, lse, q, ks, vs, dtype, sinks=sinks)


def test_split_and_unsplit_agree():
    dtype = LOW_DTYPES[0]
    gen = torch.Generator().manual_seed(torch.initial_seed())
    kv_lens = [gpu_or_cpu(1300, 30000), 3]
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, 16, 1, 128, dtype, DEVICE, generator=gen)
    q = torch.randn(2, 4, 128, generator=gen).to(dtype).to(DEVICE)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    w.plan(indptr, indices, last, 4, 1, 128, 16, q_data_type=dtype)
    assert w.planned.plan.chunk_size > 0, "a long request in a small batch should be split by default"
    out, lse = w.run(q, cache, return_lse=True)
    _check_decode(out, lse, q, ks, vs, dtype)
    w.plan(indptr, indices, last, 4, 1, 128, 16, q_data_type=dtype, disable_split_kv=True)
    assert w.planned.plan.chunk_size == 0
    out2, lse2 = w.run(q, cache, return_lse=True)
    _check_decode(out2, lse2, q, ks, vs, dtype)


def test_replans_reuse_merge_counters_the_kernel_reset():
    """plan() zeroes only merge counters its workspace has not handed out before (the kernel resets
    those it used): split plans of growing batches over a poisoned buffer stay exact, and every
    counter is back at zero after each run."""
    from flashinfer_triton.attention.workspace import counter_reserve

    dtype = LOW_DTYPES[0]
    gen = torch.Generator().manual_seed(torch.initial_seed())
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.full((WS_BYTES,), 0x7F, dtype=torch.uint8, device=DEVICE))
    ws = w._workspace
    end = ws.offset + ws.size
    counters = ws._bytes[end - counter_reserve(ws.size): end].view(torch.int32)
    long = gpu_or_cpu(1300, 30000)
    for kv_lens in ([long, 3], [long, long, 5, long], [long, 3]):
        cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, 16, 2, 64, dtype, DEVICE, generator=gen)
        q = torch.randn(len(kv_lens), 4, 64, generator=gen).to(dtype).to(DEVICE)
        w.plan(indptr, indices, last, 4, 2, 64, 16, q_data_type=dtype)
        assert w.planned.plan.num_split_requests == sum(n == long for n in kv_lens)
        out, lse = w.run(q, cache, return_lse=True)
        _check_decode(out, lse, q, ks, vs, dtype)
        assert int(counters[: ws._zeroed].abs().sum()) == 0


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_single_decode(layout):
    dtype = LOW_DTYPES[0]
    gen = torch.Generator().manual_seed(torch.initial_seed())
    kv_len, hq, hkv, d = gpu_or_cpu(77, 9000), 8, 2, 128
    k = torch.randn(kv_len, hkv, d, generator=gen).to(dtype).to(DEVICE)
    v = torch.randn(kv_len, hkv, d, generator=gen).to(dtype).to(DEVICE)
    q = torch.randn(hq, d, generator=gen).to(dtype).to(DEVICE)
    kk, vv = (k, v) if layout == "NHD" else (k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous())
    out, lse = flashinfer.single_decode_with_kv_cache(q, kk, vv, kv_layout=layout, logits_soft_cap=20.0, return_lse=True)
    ref, ref_lse = attention_ref(q[None], k, v, logits_soft_cap=20.0)
    low, low_lse = attention_ref(q[None], k, v, logits_soft_cap=20.0, compute_dtype=dtype)
    assert_close_to_reference(out[None], ref, low)
    assert_close_to_reference(lse[None], ref_lse, low_lse, name="lse")


def test_empty_request_gives_zero_and_neg_inf_lse():
    dtype = LOW_DTYPES[0]
    cache, indptr, indices, last, ks, vs = build_paged_cache([5, 0, 9], 4, 1, 64, dtype, DEVICE)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    w.plan(indptr, indices, last, 2, 1, 64, 4, q_data_type=dtype)
    q = torch.randn(3, 2, 64).to(dtype).to(DEVICE)
    out, lse = w.run(q, cache, return_lse=True)
    assert torch.all(out[1] == 0) and torch.all(lse[1] == float("-inf"))
    _ = [attention_ref(q[i:i + 1], ks[i], vs[i]) for i in (0, 2)]


def _planned(dtype=None, **kw):
    dtype = dtype or LOW_DTYPES[0]
    cache, indptr, indices, last, ks, vs = build_paged_cache([5, 9], 4, 2, 64, dtype, DEVICE)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    w.plan(indptr, indices, last, 4, 2, 64, 4, q_data_type=dtype, **kw)
    return w, cache, indptr, indices, last


def test_bad_inputs_raise_clear_errors():
    dtype = LOW_DTYPES[0]
    w, cache, indptr, indices, last = _planned()
    with pytest.raises(TypeError, match="indptr"):
        w.plan(indptr.long(), indices, last, 4, 2, 64, 4, q_data_type=dtype)
    with pytest.raises(TypeError, match="indices"):
        w.plan(indptr, indices.long(), last, 4, 2, 64, 4, q_data_type=dtype)
    with pytest.raises(ValueError, match="last_page_len"):
        w.plan(indptr, indices, last + 4, 4, 2, 64, 4, q_data_type=dtype)
    with pytest.raises(ValueError, match="last_page_len"):
        w.plan(indptr, indices, last[:1], 4, 2, 64, 4, q_data_type=dtype)
    with pytest.raises(ValueError, match="num_qo_heads"):
        w.plan(indptr, indices, last, 3, 2, 64, 4, q_data_type=dtype)
    with pytest.raises(NotImplementedError, match="head_dim"):
        w.plan(indptr, indices, last, 4, 2, 72, 4, q_data_type=dtype)
    with pytest.raises(ValueError, match="pos_encoding_mode"):
        w.plan(indptr, indices, last, 4, 2, 64, 4, q_data_type=dtype, pos_encoding_mode="ROPE")
    with pytest.raises(ValueError, match="kv_layout"):
        flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(), kv_layout="NDH")
    # Page ids on the device are range-checked in checked mode (FlashInfer checks none).
    with flashinfer.checked():
        w.plan(indptr, indices, last, 4, 2, 64, 4, q_data_type=dtype)
    q = torch.randn(2, 4, 64).to(dtype).to(DEVICE)
    with pytest.raises(ValueError, match="q: expected shape"):
        w.run(q[:1], cache)
    with pytest.raises(TypeError, match="q: expected dtype"):
        w.run(q.float(), cache)
    with pytest.raises(ValueError, match="paged_kv_cache"):
        w.run(q, cache[:, :, :2])
    with pytest.raises(ValueError, match="out of range"):
        w.run(q, cache[:2])
    with pytest.raises(NotImplementedError, match="enable_pdl"):
        w.run(q, cache, enable_pdl=True)
    with pytest.raises(ValueError, match="out: expected shape"):
        w.run(q, cache, out=torch.empty(2, 4, 32, dtype=dtype, device=DEVICE))
    with pytest.raises(ValueError, match="indices"), flashinfer.checked():
        w.plan(indptr, indices - 100, last, 4, 2, 64, 4, q_data_type=dtype)


@requires_gpu
def test_cuda_graph_replay_across_replans():
    dtype = torch.bfloat16
    batch, hq, hkv, d, page_size = 16, 32, 8, 128, 16
    max_pages = 4096
    gen = torch.Generator().manual_seed(1)
    indptr_buf = torch.zeros(batch + 1, dtype=torch.int32, device=DEVICE)
    indices_buf = torch.zeros(max_pages, dtype=torch.int32, device=DEVICE)
    last_buf = torch.zeros(batch, dtype=torch.int32, device=DEVICE)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(), use_cuda_graph=True, paged_kv_indptr_buffer=indptr_buf,
                                                      paged_kv_indices_buffer=indices_buf, paged_kv_last_page_len_buffer=last_buf)
    total_pages = 3000
    cache = torch.randn(total_pages, 2, page_size, hkv, d, generator=gen).to(dtype).to(DEVICE)
    q = torch.randn(batch, hq, d, generator=gen).to(dtype).to(DEVICE)
    out = torch.empty(batch, hq, d, dtype=dtype, device=DEVICE)

    def plan_random(lens):
        pages = [(n + page_size - 1) // page_size for n in lens]
        ids = torch.randperm(total_pages, generator=gen)[: sum(pages)].to(torch.int32)
        indptr = torch.tensor([0] + list(torch.tensor(pages).cumsum(0)), dtype=torch.int32)
        last = torch.tensor([n - (p - 1) * page_size for n, p in zip(lens, pages)], dtype=torch.int32)
        w.plan(indptr.to(DEVICE), ids.to(DEVICE), last.to(DEVICE), hq, hkv, d, page_size, q_data_type=dtype)
        return indptr, ids, last

    plan_random([100] * batch)
    w.run(q, cache, out=out)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        w.run(q, cache, out=out)
    for lens in ([1] * batch, [7000, 3] + [50] * (batch - 2), torch.randint(1, 2500, (batch,), generator=gen).tolist()):
        indptr, ids, last = plan_random(lens)
        g.replay()
        torch.cuda.synchronize()
        ref_w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace())
        ref_w.plan(indptr.to(DEVICE), ids.to(DEVICE), last.to(DEVICE), hq, hkv, d, page_size, q_data_type=dtype)
        expect = ref_w.run(q, cache)
        torch.testing.assert_close(out, expect, atol=2e-2, rtol=2e-2)


@requires_gpu
def test_torch_compile_fullgraph():
    dtype = torch.bfloat16
    cache, indptr, indices, last, ks, vs = build_paged_cache([300, 17, 4000], 16, 8, 128, dtype, DEVICE)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    w.plan(indptr, indices, last, 32, 8, 128, 16, q_data_type=dtype)
    q = torch.randn(3, 32, 128, dtype=dtype, device=DEVICE)

    @torch.compile(fullgraph=True)
    def step(q, cache):
        return w.run(q, cache, return_lse=True)

    out, lse = step(q, cache)
    eager, eager_lse = w.run(q, cache, return_lse=True)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(lse, eager_lse)


@requires_gpu
def test_fp8_kv_cache_with_scales():
    gen = torch.Generator().manual_seed(3)
    kv_lens = [333, 1000, 5]
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, 16, 2, 128, torch.bfloat16, DEVICE, generator=gen)
    k_scale, v_scale = 0.5, 2.0
    cache8 = (cache.float() / torch.tensor([k_scale, v_scale], device=DEVICE).view(1, 2, 1, 1, 1)).to(torch.float8_e4m3fn)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    w.plan(indptr, indices, last, 8, 2, 128, 16, q_data_type=torch.bfloat16, kv_data_type=torch.float8_e4m3fn)
    q = torch.randn(3, 8, 128, generator=gen).to(torch.bfloat16).to(DEVICE)
    out = w.run(q, cache8, k_scale=k_scale, v_scale=v_scale)
    deq = cache8.float() * torch.tensor([k_scale, v_scale], device=DEVICE).view(1, 2, 1, 1, 1)
    indptr_h = indptr.tolist()
    for i, n in enumerate(kv_lens):
        pages = deq[indices[indptr_h[i]:indptr_h[i + 1]].long()]
        k = pages[:, 0].reshape(-1, 2, 128)[:n]
        v = pages[:, 1].reshape(-1, 2, 128)[:n]
        ref, _ = attention_ref(q[i:i + 1], k, v)
        low, _ = attention_ref(q[i:i + 1].float(), k.to(torch.bfloat16), v.to(torch.bfloat16), compute_dtype=torch.bfloat16)
        assert_close_to_reference(out[i:i + 1], ref, low, name=f"fp8 out[{i}]")
