"""Prefill and append attention against the float64 reference: single request, ragged and paged
batches, masks, every option, split-KV, CUDA graphs and torch.compile (GPU tier)."""

import numpy as np
import pytest
import torch

import flashinfer_triton as flashinfer
from tests.helpers import DEVICE, LOW_DTYPES, assert_close_to_reference, gpu_or_cpu, poisoned, requires_gpu
from tests.reference.attention import attention_ref, build_paged_cache

WS_BYTES = gpu_or_cpu(16 << 20, 256 << 20)


def _workspace():
    return torch.empty(WS_BYTES, dtype=torch.uint8, device=DEVICE)


def _gen():
    return torch.Generator().manual_seed(torch.initial_seed())


def _randn(gen, dtype, *shape):
    return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)


def _i32(values):
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


def _indptr(lens):
    return [0] + np.cumsum(lens).tolist()


def _to_hnd(x):
    return x.transpose(0, 1).contiguous()


def _check_batch(out, lse, q, ks, vs, qo_lens, dtype, masks=None, name="", **opts):
    """Compare every request's rows with the float64 reference (and its low-precision twin)."""
    start = 0
    for b, n in enumerate(qo_lens):
        rows = slice(start, start + n)
        start += n
        if n == 0:
            continue
        m = None if masks is None else masks[b]
        ref, ref_lse = attention_ref(q[rows], ks[b], vs[b], custom_mask=m, **opts)
        low, low_lse = attention_ref(q[rows], ks[b], vs[b], custom_mask=m, compute_dtype=dtype, **opts)
        assert_close_to_reference(out[rows], ref, low, name=f"{name}out[request {b}]")
        if lse is not None:
            assert_close_to_reference(lse[rows], ref_lse, low_lse, name=f"{name}lse[request {b}]")


def _ragged_batch(qo_lens, kv_lens, hq, hkv, d, dtype, gen, d_vo=None):
    d_vo = d_vo or d
    q = _randn(gen, dtype, sum(qo_lens), hq, d)
    k = _randn(gen, dtype, sum(kv_lens), hkv, d)
    v = _randn(gen, dtype, sum(kv_lens), hkv, d_vo)
    kv_ptr = _indptr(kv_lens)
    ks = [k[kv_ptr[b]:kv_ptr[b + 1]] for b in range(len(kv_lens))]
    vs = [v[kv_ptr[b]:kv_ptr[b + 1]] for b in range(len(kv_lens))]
    return q, k, v, _i32(_indptr(qo_lens)), _i32(kv_ptr), ks, vs


def _random_masks(qo_lens, kv_lens, gen, p=0.7):
    return [(torch.rand(n, m, generator=gen) < p).to(DEVICE) for n, m in zip(qo_lens, kv_lens)]


def _pack_little(masks):
    """Reference packing, independent of the library: numpy's packbits per request, little bit order."""
    parts = [np.packbits(m.cpu().numpy().reshape(-1), bitorder="little") for m in masks]
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.uint8)).to(DEVICE)


# ---------------------------------------------------------------------------------------------- single

SINGLE_CASES = [
    # (layout, causal, qo_len, kv_len, num_qo_heads, num_kv_heads, head_dim)
    pytest.param("NHD", True, 17, 45, 8, 2, 64, id="nhd-causal-append-g4"),
    pytest.param("HND", False, 45, 45, 4, 4, 64, id="hnd-noncausal-mha"),
    pytest.param("NHD", True, 1, 30, 6, 1, 96, id="nhd-causal-q1-mqa6-d96"),
    pytest.param("HND", True, 33, 33, 4, 1, 128, id="hnd-causal-square-mqa4-d128"),
]


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("layout,causal,qo_len,kv_len,hq,hkv,d", SINGLE_CASES)
def test_single_prefill_matches_reference(dtype, layout, causal, qo_len, kv_len, hq, hkv, d):
    gen = _gen()
    qo_len, kv_len = gpu_or_cpu(qo_len, qo_len * 40), gpu_or_cpu(kv_len, kv_len * 40)
    q = _randn(gen, dtype, qo_len, hq, d)
    k = _randn(gen, dtype, kv_len, hkv, d)
    v = _randn(gen, dtype, kv_len, hkv, d)
    kk, vv = (k, v) if layout == "NHD" else (_to_hnd(k), _to_hnd(v))
    out, lse = flashinfer.single_prefill_with_kv_cache(q, kk, vv, causal=causal, kv_layout=layout, return_lse=True)
    assert out.shape == (qo_len, hq, d) and out.dtype == dtype and lse.shape == (qo_len, hq)
    _check_batch(out, lse, q, [k], [v], [qo_len], dtype, causal=causal)
    out2, lse2 = flashinfer.single_prefill_with_kv_cache_return_lse(q, kk, vv, causal=causal, kv_layout=layout)
    assert torch.equal(out2, out) and torch.equal(lse2, lse)


SINGLE_OPTIONS = [
    pytest.param(dict(causal=True, logits_soft_cap=30.0), id="softcap"),
    pytest.param(dict(causal=True, window_left=9), id="causal-window"),
    pytest.param(dict(causal=False, window_left=5), id="noncausal-window"),
    pytest.param(dict(causal=True, pos_encoding_mode="ROPE_LLAMA", rope_scale=2.0, rope_theta=5e4), id="rope"),
    pytest.param(dict(causal=True, pos_encoding_mode="ALIBI"), id="alibi"),
    pytest.param(dict(causal=False, sm_scale=0.3), id="sm_scale"),
]


@pytest.mark.parametrize("opts", SINGLE_OPTIONS)
def test_single_prefill_options(opts):
    dtype = LOW_DTYPES[0]
    gen = _gen()
    qo_len, kv_len, hq, hkv, d = gpu_or_cpu(21, 700), gpu_or_cpu(40, 1500), 8, 2, 64
    q = _randn(gen, dtype, qo_len, hq, d)
    k = _randn(gen, dtype, kv_len, hkv, d)
    v = _randn(gen, dtype, kv_len, hkv, d)
    out, lse = flashinfer.single_prefill_with_kv_cache(q, k, v, return_lse=True, **opts)
    _check_batch(out, lse, q, [k], [v], [qo_len], dtype, **opts)


def test_single_prefill_custom_mask_bool_packed_and_head_dim_vo():
    """A boolean mask, the same mask packed (little bit order), causal ignored next to a mask; v with
    a smaller head dim than q/k; o_dtype and k_scale/v_scale."""
    dtype = LOW_DTYPES[0]
    gen = _gen()
    qo_len, kv_len, hq, hkv, d, d_vo = gpu_or_cpu(19, 300), gpu_or_cpu(37, 900), 4, 2, 192, 128
    q = _randn(gen, dtype, qo_len, hq, d)
    k = _randn(gen, dtype, kv_len, hkv, d)
    v = _randn(gen, dtype, kv_len, hkv, d_vo)
    mask = _random_masks([qo_len], [kv_len], gen)[0]
    out, lse = flashinfer.single_prefill_with_kv_cache(q, k, v, custom_mask=mask, causal=True, return_lse=True)
    assert out.shape == (qo_len, hq, d_vo)
    _check_batch(out, lse, q, [k], [v], [qo_len], dtype, masks=[mask])
    packed = _pack_little([mask])
    out_p, lse_p = flashinfer.single_prefill_with_kv_cache(q, k, v, packed_custom_mask=packed, return_lse=True)
    assert torch.equal(out_p, out) and torch.equal(lse_p, lse)
    out_s = flashinfer.single_prefill_with_kv_cache(q, k, v, custom_mask=mask, o_dtype=torch.float32, k_scale=0.5,
                                                    v_scale=2.0)
    assert out_s.dtype == torch.float32
    ref, _ = attention_ref(q, k, v, custom_mask=mask, sm_scale=0.5 / d ** 0.5)
    low, _ = attention_ref(q, k, v, custom_mask=mask, sm_scale=0.5 / d ** 0.5, compute_dtype=dtype)
    assert_close_to_reference(out_s / 2.0, ref, low, name="k_scale/v_scale out")


def test_single_prefill_default_split_agrees():
    """A long KV with one query tile is split by default; the merged result matches the reference."""
    dtype = LOW_DTYPES[0]
    gen = _gen()
    qo_len, kv_len = gpu_or_cpu(9, 64), gpu_or_cpu(700, 40000)
    q = _randn(gen, dtype, qo_len, 8, 64)
    k = _randn(gen, dtype, kv_len, 2, 64)
    v = _randn(gen, dtype, kv_len, 2, 64)
    out, lse = flashinfer.single_prefill_with_kv_cache(q, k, v, causal=True, return_lse=True)
    _check_batch(out, lse, q, [k], [v], [qo_len], dtype, causal=True)


# ---------------------------------------------------------------------------------------------- ragged

RAGGED_CASES = [
    # (layout, causal, num_qo_heads, num_kv_heads, head_dim)
    pytest.param("NHD", True, 8, 2, 64, id="nhd-causal-g4-d64"),
    pytest.param("HND", True, 4, 4, 64, id="hnd-causal-mha"),
    pytest.param("NHD", False, 4, 1, 128, id="nhd-noncausal-mqa-d128"),
    pytest.param("NHD", True, 6, 1, 96, id="nhd-causal-mqa6-d96"),
]


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("layout,causal,hq,hkv,d", RAGGED_CASES)
def test_batch_ragged_matches_reference(dtype, layout, causal, hq, hkv, d):
    gen = _gen()
    # Mixed batch: one-token request, prefill, append (qo < kv), an empty query, a long prefill.
    qo_lens = gpu_or_cpu([1, 17, 5, 0, 45], [1, 700, 33, 0, 2100])
    kv_lens = gpu_or_cpu([9, 17, 31, 12, 45], [900, 700, 2000, 12, 2100])
    q, k, v, qo_indptr, kv_indptr, ks, vs = _ragged_batch(qo_lens, kv_lens, hq, hkv, d, dtype, gen)
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_workspace(), kv_layout=layout)
    w.plan(qo_indptr, kv_indptr, hq, hkv, d, causal=causal, q_data_type=dtype)
    kk, vv = (k, v) if layout == "NHD" else (_to_hnd(k), _to_hnd(v))
    out = poisoned((sum(qo_lens), hq, d), dtype)
    lse = poisoned((sum(qo_lens), hq), torch.float32)
    res = w.run(q, kk, vv, out=out, lse=lse)
    assert res[0] is out and res[1] is lse
    _check_batch(out, lse, q, ks, vs, qo_lens, dtype, causal=causal)
    # One plan serves a second run (another layer): fresh q/k/v, same metadata.
    q2, k2, v2, _, _, ks2, vs2 = _ragged_batch(qo_lens, kv_lens, hq, hkv, d, dtype, gen)
    kk2, vv2 = (k2, v2) if layout == "NHD" else (_to_hnd(k2), _to_hnd(v2))
    out2 = w.run(q2, kk2, vv2)
    _check_batch(out2, None, q2, ks2, vs2, qo_lens, dtype, name="second run ", causal=causal)


def test_batch_ragged_head_dim_vo_and_legacy_forward():
    dtype = LOW_DTYPES[0]
    gen = _gen()
    qo_lens, kv_lens = gpu_or_cpu([3, 20], [300, 1000]), gpu_or_cpu([25, 20], [900, 1000])
    hq, hkv, d, d_vo = 8, 2, 192, 128
    q, k, v, qo_indptr, kv_indptr, ks, vs = _ragged_batch(qo_lens, kv_lens, hq, hkv, d, dtype, gen, d_vo=d_vo)
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_workspace())
    w.begin_forward(qo_indptr, kv_indptr, hq, hkv, d, head_dim_vo=d_vo, causal=True, q_data_type=dtype)
    out, lse = w.run_return_lse(q, k, v)
    assert out.shape == (sum(qo_lens), hq, d_vo)
    _check_batch(out, lse, q, ks, vs, qo_lens, dtype, causal=True)
    assert torch.equal(w.forward(q, k, v, causal=True), out)
    # FlashInfer's legacy forward sets the run options (causal=False by default) and they stay set.
    non_causal = w.forward(q, k, v)
    assert w._causal is False
    _check_batch(non_causal, None, q, ks, vs, qo_lens, dtype, name="legacy forward ", causal=False)
    assert torch.equal(w.run(q, k, v), non_causal)


# ---------------------------------------------------------------------------------------------- paged

PAGED_CASES = [
    # (layout, page_size, num_qo_heads, num_kv_heads, head_dim, causal)
    pytest.param("NHD", 16, 8, 2, 64, True, id="nhd-p16-g4-causal"),
    pytest.param("HND", 5, 4, 4, 64, True, id="hnd-p5-mha-causal"),
    pytest.param("NHD", 1, 4, 1, 128, False, id="nhd-p1-mqa-d128-noncausal"),
    pytest.param("HND", 7, 16, 2, 64, True, id="hnd-p7-g8-causal"),
]


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("layout,page_size,hq,hkv,d,causal", PAGED_CASES)
def test_batch_paged_matches_reference(dtype, layout, page_size, hq, hkv, d, causal):
    gen = _gen()
    # Chunked prefill over a prefix, decode-like requests (one query), a full prefill, odd lengths.
    qo_lens = gpu_or_cpu([1, 17, 1, 45, 8], [1, 512, 1, 2100, 300])
    kv_lens = gpu_or_cpu([23, 60, 1, 45, 8], [3000, 2560, 1, 2100, 1000])
    cache, kv_indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, layout,
                                                                generator=gen)
    q = _randn(gen, dtype, sum(qo_lens), hq, d)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace(), kv_layout=layout)
    w.plan(_i32(_indptr(qo_lens)), kv_indptr, indices, last, hq, hkv, d, page_size, causal=causal, q_data_type=dtype)
    out, lse = w.run(q, cache, return_lse=True)
    _check_batch(out, lse, q, ks, vs, qo_lens, dtype, causal=causal)
    # The (k_cache, v_cache) tuple gives the same answer as the 5-D tensor.
    out_t = w.run(q, (cache[:, 0], cache[:, 1]))
    assert torch.equal(out_t, out)


def test_batch_paged_all_single_token_uses_decode_config():
    """Every request with qo_len * group <= 16 takes the decode block shape; results still exact."""
    dtype = LOW_DTYPES[0]
    gen = _gen()
    hq, hkv, d, page_size = 8, 2, 64, 4
    qo_lens, kv_lens = [1, 2, 4, 1], [1, 9, 40, 17]
    cache, kv_indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, generator=gen)
    q = _randn(gen, dtype, sum(qo_lens), hq, d)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace())
    w.plan(_i32(_indptr(qo_lens)), kv_indptr, indices, last, hq, hkv, d, page_size, causal=True, q_data_type=dtype)
    assert w.planned.cfg.decode
    out, lse = w.run(q, cache, return_lse=True)
    _check_batch(out, lse, q, ks, vs, qo_lens, dtype, causal=True)


BATCH_OPTIONS = [
    pytest.param(dict(causal=True, logits_soft_cap=20.0), id="softcap"),
    pytest.param(dict(causal=True, window_left=7), id="window"),
    pytest.param(dict(causal=True, pos_encoding_mode="ROPE_LLAMA", rope_scale=2.0, rope_theta=5e4), id="rope"),
    pytest.param(dict(causal=True, pos_encoding_mode="ALIBI"), id="alibi"),
    pytest.param(dict(causal=False, sm_scale=0.3), id="sm_scale"),
]


@pytest.mark.parametrize("kind", ["ragged", "paged"])
@pytest.mark.parametrize("opts", BATCH_OPTIONS)
def test_batch_options(kind, opts):
    dtype = LOW_DTYPES[0]
    gen = _gen()
    hq, hkv, d, page_size = 8, 2, 64, 16
    qo_lens = gpu_or_cpu([1, 13, 30], [1, 400, 1200])
    kv_lens = gpu_or_cpu([20, 41, 30], [800, 1900, 1200])
    q = _randn(gen, dtype, sum(qo_lens), hq, d)
    if kind == "ragged":
        q, k, v, qo_indptr, kv_indptr, ks, vs = _ragged_batch(qo_lens, kv_lens, hq, hkv, d, dtype, gen)
        w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_workspace())
        w.plan(qo_indptr, kv_indptr, hq, hkv, d, q_data_type=dtype, **opts)
        out, lse = w.run(q, k, v, return_lse=True)
    else:
        cache, kv_indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE,
                                                                    generator=gen)
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace())
        w.plan(_i32(_indptr(qo_lens)), kv_indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype, **opts)
        out, lse = w.run(q, cache, return_lse=True)
    _check_batch(out, lse, q, ks, vs, qo_lens, dtype, **opts)


def test_paged_window_override_at_run():
    dtype = LOW_DTYPES[0]
    gen = _gen()
    hq, hkv, d, page_size = 4, 2, 64, 8
    qo_lens, kv_lens = [9, 1], [33, 20]
    cache, kv_indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, generator=gen)
    q = _randn(gen, dtype, sum(qo_lens), hq, d)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace())
    w.plan(_i32(_indptr(qo_lens)), kv_indptr, indices, last, hq, hkv, d, page_size, causal=True, q_data_type=dtype)
    out = w.run(q, cache, window_left=4)
    _check_batch(out, None, q, ks, vs, qo_lens, dtype, causal=True, window_left=4)


# ---------------------------------------------------------------------------------------------- masks

@pytest.mark.parametrize("kind", ["ragged", "paged"])
def test_batch_custom_mask_bool_and_packed(kind):
    """Boolean mask flattened over the batch, and the same mask packed per request in little bit order
    (numpy's packbits, not the library's): identical results, matching the reference; causal=True is
    ignored next to a mask (FlashInfer's rule)."""
    dtype = LOW_DTYPES[0]
    gen = _gen()
    hq, hkv, d, page_size = 8, 2, 64, 4
    # Segment sizes 1*13, 11*11, 5*29, 0*3 bits: none a multiple of 8, so byte alignment matters.
    qo_lens = gpu_or_cpu([1, 11, 5, 0, 3], [1, 300, 77, 0, 900])
    kv_lens = gpu_or_cpu([13, 11, 29, 3, 7], [501, 300, 1999, 3, 901])
    masks = _random_masks(qo_lens, kv_lens, gen)
    flat = torch.cat([m.reshape(-1) for m in masks])
    packed = _pack_little(masks)
    if kind == "ragged":
        q, k, v, qo_indptr, kv_indptr, ks, vs = _ragged_batch(qo_lens, kv_lens, hq, hkv, d, dtype, gen)
        w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_workspace())

        def plan_run(**kw):
            w.plan(qo_indptr, kv_indptr, hq, hkv, d, q_data_type=dtype, **kw)
            return w.run(q, k, v, return_lse=True)
    else:
        cache, kv_indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE,
                                                                    generator=gen)
        q = _randn(gen, dtype, sum(qo_lens), hq, d)
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace())

        def plan_run(**kw):
            w.plan(_i32(_indptr(qo_lens)), kv_indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype, **kw)
            return w.run(q, cache, return_lse=True)

    out, lse = plan_run(custom_mask=flat, causal=True)
    _check_batch(out, lse, q, ks, vs, qo_lens, dtype, masks=masks)
    out_p, lse_p = plan_run(packed_custom_mask=packed)
    assert torch.equal(out_p, out) and torch.equal(lse_p, lse)
    # A causal mask written as a custom mask equals causal=True.
    causal_masks = [torch.ones(n, m, dtype=torch.bool, device=DEVICE).tril(m - n) for n, m in zip(qo_lens, kv_lens)]
    out_c, _ = plan_run(custom_mask=torch.cat([m.reshape(-1) for m in causal_masks]))
    out_ref, _ = plan_run(causal=True)
    # Masked and unmasked blocks accumulate in another order: one rounding of the output dtype apart.
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out_c, out_ref, atol=eps, rtol=eps)


# ---------------------------------------------------------------------------------------------- split-KV

def test_split_kv_batch_invariant():
    """A fixed split size gives results independent of the rest of the batch: bit-equal to
    per-request runs; the split/merge path matches the reference and writes every poisoned element."""
    dtype = LOW_DTYPES[0]
    gen = _gen()
    hq, hkv, d, page_size = 8, 2, 64, 4
    qo_lens = gpu_or_cpu([1, 14, 5], [1, 300, 64])
    kv_lens = gpu_or_cpu([150, 300, 5], [5000, 3000, 64])
    split_pages = gpu_or_cpu(6, 128)
    cache, kv_indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, generator=gen)
    q = _randn(gen, dtype, sum(qo_lens), hq, d)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace())
    w.plan(_i32(_indptr(qo_lens)), kv_indptr, indices, last, hq, hkv, d, page_size, causal=True, q_data_type=dtype,
           fixed_split_size=split_pages)
    # The chunk is the split in tokens rounded up to the kernel's KV block.
    assert w.planned.plan.num_split_requests > 0 and w.planned.plan.chunk_size >= split_pages * page_size
    out = poisoned((sum(qo_lens), hq, d), dtype)
    lse = poisoned((sum(qo_lens), hq), torch.float32)
    w.run(q, cache, out=out, lse=lse)
    _check_batch(out, lse, q, ks, vs, qo_lens, dtype, causal=True)
    indptr_h, last_h, indices_h = kv_indptr.cpu(), last.cpu(), indices.cpu()
    qo_ptr = _indptr(qo_lens)
    for i in range(len(qo_lens)):
        a, b = int(indptr_h[i]), int(indptr_h[i + 1])
        wi = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace())
        wi.plan(_i32([0, qo_lens[i]]), _i32([0, b - a]), indices_h[a:b].to(DEVICE), last_h[i:i + 1].to(DEVICE),
                hq, hkv, d, page_size, causal=True, q_data_type=dtype, fixed_split_size=split_pages)
        oi, li = wi.run(q[qo_ptr[i]:qo_ptr[i + 1]], cache, return_lse=True)
        assert torch.equal(oi, out[qo_ptr[i]:qo_ptr[i + 1]]), f"request {i}: batched result differs from per-request"
        assert torch.equal(li, lse[qo_ptr[i]:qo_ptr[i + 1]])


def test_ragged_split_and_unsplit_agree():
    dtype = LOW_DTYPES[0]
    gen = _gen()
    qo_lens, kv_lens = gpu_or_cpu([20, 2], [128, 3]), gpu_or_cpu([600, 3], [30000, 3])
    q, k, v, qo_indptr, kv_indptr, ks, vs = _ragged_batch(qo_lens, kv_lens, 4, 1, 128, dtype, gen)
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_workspace())
    w.plan(qo_indptr, kv_indptr, 4, 1, 128, causal=True, q_data_type=dtype)
    assert w.planned.plan.chunk_size > 0, "a long request in a small batch should be split by default"
    out, lse = w.run(q, k, v, return_lse=True)
    _check_batch(out, lse, q, ks, vs, qo_lens, dtype, causal=True)
    w.plan(qo_indptr, kv_indptr, 4, 1, 128, causal=True, q_data_type=dtype, disable_split_kv=True)
    assert w.planned.plan.chunk_size == 0
    out2, lse2 = w.run(q, k, v, return_lse=True)
    _check_batch(out2, lse2, q, ks, vs, qo_lens, dtype, causal=True)
    # A workspace too small for the partials: plan() falls back to one chunk per request.
    small = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1024, dtype=torch.uint8, device=DEVICE))
    small.plan(qo_indptr, kv_indptr, 4, 1, 128, causal=True, q_data_type=dtype)
    assert small.planned.plan.chunk_size == 0
    assert torch.equal(small.run(q, k, v), out2)


# ---------------------------------------------------------------------------------------------- graph mode

@pytest.mark.parametrize("kind", ["ragged-mask", "paged"])
def test_cuda_graph_mode_fixed_buffers_across_replans(kind):
    """use_cuda_graph=True without a capture (so it runs on the CPU tier too): fixed buffers, grids
    padded to the first plan's size, later plans with other lengths and fewer rows stay exact."""
    dtype = LOW_DTYPES[0]
    gen = _gen()
    batch, hq, hkv, d, page_size = 3, 8, 2, 64, 4
    i32buf = lambda n: torch.zeros(n, dtype=torch.int32, device=DEVICE)  # noqa: E731
    if kind == "paged":
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
            _workspace(), use_cuda_graph=True, qo_indptr_buf=i32buf(batch + 1), paged_kv_indptr_buf=i32buf(batch + 1),
            paged_kv_indices_buf=i32buf(4096), paged_kv_last_page_len_buf=i32buf(batch))
    else:
        w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(
            _workspace(), use_cuda_graph=True, qo_indptr_buf=i32buf(batch + 1), kv_indptr_buf=i32buf(batch + 1),
            custom_mask_buf=torch.zeros(gpu_or_cpu(1 << 16, 1 << 24), dtype=torch.uint8, device=DEVICE), mask_indptr_buf=i32buf(batch + 1))
    first = gpu_or_cpu(([20, 20, 20], [20, 40, 60]), ([500, 500, 500], [500, 3000, 6000]))
    later = gpu_or_cpu([([1, 30, 2], [1, 200, 9]), ([1, 1, 1], [5, 1, 300])],
                       [([1, 1400, 3], [1, 1500, 4000]), ([1, 1, 1], [5, 1, 9000])])
    grid = None
    for qo_lens, kv_lens in [first] + later:
        n = sum(qo_lens)
        if kind == "paged":
            cache, kv_indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE,
                                                                        generator=gen)
            q = _randn(gen, dtype, n, hq, d)
            w.plan(_i32(_indptr(qo_lens)), kv_indptr, indices, last, hq, hkv, d, page_size, causal=True,
                   q_data_type=dtype)
            out, lse = w.run(q, cache, return_lse=True)
            _check_batch(out, lse, q, ks, vs, qo_lens, dtype, causal=True)
        else:
            q, k, v, qo_indptr, kv_indptr, ks, vs = _ragged_batch(qo_lens, kv_lens, hq, hkv, d, dtype, gen)
            masks = _random_masks(qo_lens, kv_lens, gen)
            w.plan(qo_indptr, kv_indptr, hq, hkv, d, q_data_type=dtype, custom_mask=torch.cat([m.reshape(-1) for m in masks]))
            out, lse = w.run(q, k, v, return_lse=True)
            _check_batch(out, lse, q, ks, vs, qo_lens, dtype, masks=masks)
        grid = grid or w.planned.plan.grid_items
        assert w.planned.plan.grid_items == grid, "the grid must not change across plans"
    big = sum(first[0]) + 100  # more query rows than the graph was sized for
    with pytest.raises(ValueError, match="qo_indptr"):
        if kind == "paged":
            w.plan(_i32([0, big, big + 1, big + 2]), kv_indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype)
        else:
            w.plan(_i32([0, big, big + 1, big + 2]), _i32([0, big, big + 1, big + 2]), hq, hkv, d, q_data_type=dtype)


# ---------------------------------------------------------------------------------------------- errors

def test_bad_inputs_raise_clear_errors():
    dtype = LOW_DTYPES[0]
    gen = _gen()
    hq, hkv, d, page_size = 4, 2, 64, 4
    qo_lens, kv_lens = [3, 5], [7, 5]
    cache, kv_indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, generator=gen)
    qo_indptr = _i32(_indptr(qo_lens))
    q = _randn(gen, dtype, sum(qo_lens), hq, d)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace())
    with pytest.raises(RuntimeError, match="plan"):
        w.run(q, cache)
    with pytest.raises(TypeError, match="qo_indptr"):
        w.plan(qo_indptr.long(), kv_indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(TypeError, match="paged_kv_indices"):
        w.plan(qo_indptr, kv_indptr, indices.long(), last, hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(ValueError, match="paged_kv_indptr"):
        w.plan(qo_indptr, kv_indptr[:2], indices, last, hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(ValueError, match="paged_kv_last_page_len"):
        w.plan(qo_indptr, kv_indptr, indices, last + page_size, hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(ValueError, match="qo_indptr"):
        w.plan(_i32([0, 5, 3]), kv_indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(ValueError, match="num_qo_heads"):
        w.plan(qo_indptr, kv_indptr, indices, last, 3, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(NotImplementedError, match="head_dim_qk"):
        w.plan(qo_indptr, kv_indptr, indices, last, hq, hkv, 72, page_size, q_data_type=dtype)
    with pytest.raises(NotImplementedError, match="use_fp16_qk_reduction"):
        w.plan(qo_indptr, kv_indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype, use_fp16_qk_reduction=True)
    with pytest.raises(ValueError, match="pos_encoding_mode"):
        w.plan(qo_indptr, kv_indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype, pos_encoding_mode="ROPE")
    with pytest.raises(ValueError, match="custom_mask: expected sum"):
        w.plan(qo_indptr, kv_indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype,
               custom_mask=torch.ones(3 * 7 + 5 * 5 - 1, dtype=torch.bool, device=DEVICE))
    with pytest.raises(TypeError, match="custom_mask"):
        w.plan(qo_indptr, kv_indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype,
               custom_mask=torch.ones(3 * 7 + 5 * 5, dtype=torch.float32, device=DEVICE))
    with pytest.raises(ValueError, match="packed_custom_mask"):
        # Packed per request: 3 + 4 bytes, not the 6 of one packed stream.
        w.plan(qo_indptr, kv_indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype,
               packed_custom_mask=torch.zeros(6, dtype=torch.uint8, device=DEVICE))
    with pytest.raises(NotImplementedError, match="backend"):
        flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace(), backend="cudnn")
    with pytest.raises(ValueError, match="kv_layout"):
        flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace(), kv_layout="NDH")
    with pytest.raises(ValueError, match="qo_indptr_buf"):
        flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace(), use_cuda_graph=True)
    # Page ids on the device are range-checked in checked mode (FlashInfer checks none).
    with flashinfer.checked():
        w.plan(qo_indptr, kv_indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(ValueError, match="q: expected shape"):
        w.run(q[:-1], cache)
    with pytest.raises(TypeError, match="q: expected dtype"):
        w.run(q.double(), cache)
    with pytest.raises(ValueError, match="paged_kv_cache"):
        w.run(q, cache[:, :, :2])
    with pytest.raises(ValueError, match="out of range"):
        w.run(q, cache[:2])
    with pytest.raises(ValueError, match="out: expected shape"):
        w.run(q, cache, out=torch.empty(sum(qo_lens), hq, 32, dtype=dtype, device=DEVICE))
    with pytest.raises(ValueError, match="lse"):
        w.run(q, cache, lse=torch.empty(sum(qo_lens), hq + 1, dtype=torch.float32, device=DEVICE))
    with pytest.raises(ValueError, match="sinks"):
        w.run(q, cache, sinks=torch.zeros(hq + 1, device=DEVICE))
    with pytest.raises(NotImplementedError, match="k_scale"):
        w.run(q, cache, k_scale=torch.ones(1))

    # Ragged and single-request checks.
    r = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_workspace())
    with pytest.raises(ValueError, match="kv_indptr"):
        r.plan(qo_indptr, _i32([0, 7]), hq, hkv, d)
    r.plan(qo_indptr, _i32([0, 7, 12]), hq, hkv, d, q_data_type=dtype)
    k = _randn(gen, dtype, 12, hkv, d)
    with pytest.raises(ValueError, match="k: kv_indptr"):
        r.run(q, k[:10], k[:10])
    with pytest.raises(ValueError, match="v: expected"):
        r.run(q, k, k[:11])
    with pytest.raises(ValueError, match="k/v"):
        r.run(q, k.repeat(1, 2, 1), k.repeat(1, 2, 1))
    with pytest.raises(NotImplementedError, match="o_scale"):
        r.run(q, k, k, o_scale=2.0)
    with pytest.raises(ValueError, match="causal attention needs qo_len <= kv_len"):
        flashinfer.single_prefill_with_kv_cache(q, k[:2], k[:2], causal=True)
    with pytest.raises(ValueError, match="q: head_dim"):
        flashinfer.single_prefill_with_kv_cache(q[..., :32].contiguous(), k, k)
    with pytest.raises(NotImplementedError, match="scale_q"):
        flashinfer.single_prefill_with_kv_cache(q, k, k, scale_q=torch.ones(hq))
    with pytest.raises(NotImplementedError, match="use_fp16_qk_reduction"):
        flashinfer.single_prefill_with_kv_cache(q, k, k, use_fp16_qk_reduction=True)
    with pytest.raises(ValueError, match="packed_custom_mask"):
        flashinfer.single_prefill_with_kv_cache(q, k, k, packed_custom_mask=torch.zeros(3, dtype=torch.uint8,
                                                                                        device=DEVICE))


# ---------------------------------------------------------------------------------------------- GPU tier

@requires_gpu
@pytest.mark.parametrize("kind", ["ragged", "paged"])
def test_gpu_realistic_bf16(kind):
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(11)
    hq, hkv, d, page_size = 32, 8, 128, 16
    qo_lens, kv_lens = [1000, 2999, 1, 512], [1000, 2999, 1700, 3000]
    if kind == "ragged":
        q, k, v, qo_indptr, kv_indptr, ks, vs = _ragged_batch(qo_lens, kv_lens, hq, hkv, d, dtype, gen)
        w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_workspace())
        w.plan(qo_indptr, kv_indptr, hq, hkv, d, causal=True, q_data_type=dtype)
        out, lse = w.run(q, k, v, return_lse=True)
    else:
        cache, kv_indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE,
                                                                    generator=gen)
        q = _randn(gen, dtype, sum(qo_lens), hq, d)
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace())
        w.plan(_i32(_indptr(qo_lens)), kv_indptr, indices, last, hq, hkv, d, page_size, causal=True, q_data_type=dtype)
        out, lse = w.run(q, cache, return_lse=True)
    _check_batch(out, lse, q, ks, vs, qo_lens, dtype, causal=True)


@requires_gpu
@pytest.mark.parametrize("d", [64, 256])
def test_gpu_single_prefill_head_dims(d):
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(d)
    q = _randn(gen, dtype, 1500, 16, d)
    k = _randn(gen, dtype, 2500, 4, d)
    v = _randn(gen, dtype, 2500, 4, d)
    out, lse = flashinfer.single_prefill_with_kv_cache(q, k, v, causal=True, return_lse=True)
    _check_batch(out, lse, q, [k], [v], [1500], dtype, causal=True)


@requires_gpu
def test_gpu_cuda_graph_replay_across_replans_paged():
    dtype = torch.bfloat16
    batch, hq, hkv, d, page_size = 4, 32, 8, 128, 16
    total_pages = 2048
    gen = torch.Generator().manual_seed(1)
    cache = _randn(gen, dtype, total_pages, 2, page_size, hkv, d)
    bufs = dict(qo_indptr_buf=torch.zeros(batch + 1, dtype=torch.int32, device=DEVICE),
                paged_kv_indptr_buf=torch.zeros(batch + 1, dtype=torch.int32, device=DEVICE),
                paged_kv_indices_buf=torch.zeros(total_pages, dtype=torch.int32, device=DEVICE),
                paged_kv_last_page_len_buf=torch.zeros(batch, dtype=torch.int32, device=DEVICE))
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace(), use_cuda_graph=True, **bufs)
    max_rows = 2048
    q = _randn(gen, dtype, max_rows, hq, d)
    out = torch.empty(max_rows, hq, d, dtype=dtype, device=DEVICE)

    def plan(qo_lens, kv_lens, target=w):
        pages = [(n + page_size - 1) // page_size for n in kv_lens]
        ids = torch.randperm(total_pages, generator=gen)[: sum(pages)].to(torch.int32).to(DEVICE)
        last = _i32([n - (p - 1) * page_size for n, p in zip(kv_lens, pages)])
        args = (_i32(_indptr(qo_lens)), _i32(_indptr(pages)), ids, last, hq, hkv, d, page_size)
        target.plan(*args, causal=True, q_data_type=dtype)
        return args

    plan([512] * batch, [1024] * batch)
    w.run(q, cache, out=out)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        w.run(q, cache, out=out)
    for qo_lens, kv_lens in (([1, 1, 1, 1], [10, 3000, 7, 1]), ([2000, 16, 1, 31], [2000, 9000, 5, 31]),
                             ([100, 200, 300, 400], [4000, 200, 16000, 401])):
        args = plan(qo_lens, kv_lens)
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        ref_w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace())
        ref_w.plan(*args, causal=True, q_data_type=dtype)
        n = sum(qo_lens)
        expect = ref_w.run(q[:n], cache)
        torch.testing.assert_close(out[:n], expect, atol=2e-2, rtol=2e-2)


@requires_gpu
def test_gpu_cuda_graph_replay_ragged_with_mask():
    dtype = torch.bfloat16
    batch, hq, hkv, d = 3, 16, 4, 128
    gen = torch.Generator().manual_seed(2)
    max_kv, max_rows = 6000, 1500
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(
        _workspace(), use_cuda_graph=True, qo_indptr_buf=torch.zeros(batch + 1, dtype=torch.int32, device=DEVICE),
        kv_indptr_buf=torch.zeros(batch + 1, dtype=torch.int32, device=DEVICE),
        custom_mask_buf=torch.zeros(4 << 20, dtype=torch.uint8, device=DEVICE),
        mask_indptr_buf=torch.zeros(batch + 1, dtype=torch.int32, device=DEVICE))
    q = _randn(gen, dtype, max_rows, hq, d)
    k = _randn(gen, dtype, max_kv, hkv, d)
    v = _randn(gen, dtype, max_kv, hkv, d)
    out = torch.empty(max_rows, hq, d, dtype=dtype, device=DEVICE)

    def plan(qo_lens, kv_lens, target):
        masks = _random_masks(qo_lens, kv_lens, gen, p=0.9)
        target.plan(_i32(_indptr(qo_lens)), _i32(_indptr(kv_lens)), hq, hkv, d, q_data_type=dtype,
                    custom_mask=torch.cat([m.reshape(-1) for m in masks]))

    plan([500, 500, 500], [2000, 2000, 2000], w)
    w.run(q, k, v, out=out)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        w.run(q, k, v, out=out)
    for qo_lens, kv_lens in (([1, 700, 3], [1, 1000, 4000]), ([400, 400, 400], [400, 1000, 1000])):
        state = torch.random.get_rng_state(), gen.get_state()
        plan(qo_lens, kv_lens, w)
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        gen.set_state(state[1])
        ref_w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_workspace())
        plan(qo_lens, kv_lens, ref_w)
        n = sum(qo_lens)
        expect = ref_w.run(q[:n], k, v)
        torch.testing.assert_close(out[:n], expect, atol=2e-2, rtol=2e-2)


@requires_gpu
def test_gpu_torch_compile_fullgraph():
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(5)
    hq, hkv, d, page_size = 32, 8, 128, 16
    qo_lens, kv_lens = [300, 1, 77], [300, 4000, 1000]
    cache, kv_indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, generator=gen)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace())
    w.plan(_i32(_indptr(qo_lens)), kv_indptr, indices, last, hq, hkv, d, page_size, causal=True, q_data_type=dtype)
    q = _randn(gen, dtype, sum(qo_lens), hq, d)

    @torch.compile(fullgraph=True)
    def step(q, cache):
        return w.run(q, cache, return_lse=True)

    out, lse = step(q, cache)
    eager, eager_lse = w.run(q, cache, return_lse=True)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(lse, eager_lse)

