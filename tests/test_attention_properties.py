"""Property tests (hypothesis) for the paged decode and prefill wrappers (issue 13): random small
batches (1-4 requests, KV lengths 0-70 with empty and 1-token requests, page sizes 1/3/16, GQA
groups 1/2/4, causal on/off, split off / default / a fixed split size) give the float64
reference answer within the data-derived tolerance of ``tests/helpers.py``; every output element
is written (outputs start as NaN); with a fixed split size (or no split) the batched result is
bit-equal to each request run alone (batch invariance).

Each example is deterministic (``derandomize=True``; tensors from a seed drawn by hypothesis) and
small, so the whole file runs in well under a minute on the interpreter.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flashinfer_triton as flashinfer
from tests.helpers import DEVICE, LOW_DTYPES, assert_close_to_reference, poisoned
from tests.reference.attention import attention_ref, build_paged_cache

D = 64
WS_BYTES = 16 << 20
_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _workspace():
    return torch.empty(WS_BYTES, dtype=torch.uint8, device=DEVICE)


@st.composite
def _batch(draw, prefill: bool):
    batch = draw(st.integers(1, 4))
    # Lengths biased to the edges: empty requests, one token, page boundaries, the maximum.
    kv_len = st.one_of(st.sampled_from([0, 1, 3, 16, 17, 70]), st.integers(0, 70))
    kv_lens = draw(st.lists(kv_len, min_size=batch, max_size=batch))
    if prefill:
        # Query lengths 0..kv_len (chunked prefill / append); a request with KV but no query too.
        qo_lens = [draw(st.integers(0, min(n, 9))) for n in kv_lens]
    else:
        qo_lens = [1] * batch
    return dict(
        kv_lens=kv_lens,
        qo_lens=qo_lens,
        page_size=draw(st.sampled_from([1, 3, 16])),
        hkv=draw(st.sampled_from([1, 2])),
        group=draw(st.sampled_from([1, 2, 4])),
        dtype=draw(st.sampled_from(LOW_DTYPES)),
        layout=draw(st.sampled_from(["NHD", "HND"])),
        causal=draw(st.booleans()) if prefill else False,
        # None: the default split policy; -1: no split; k > 0: fixed split of k pages.
        split=draw(st.sampled_from([None, -1, 1, 2, 5])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _split_kwargs(split):
    if split is None:
        return {}
    if split == -1:
        return dict(disable_split_kv=True)
    return dict(fixed_split_size=split)


def _check_rows(out, lse, q, ks, vs, qo_lens, dtype, causal):
    start = 0
    for b, n in enumerate(qo_lens):
        rows = slice(start, start + n)
        start += n
        if n == 0:
            continue
        ref, ref_lse = attention_ref(q[rows], ks[b], vs[b], causal=causal)
        low, low_lse = attention_ref(q[rows], ks[b], vs[b], causal=causal, compute_dtype=dtype)
        assert_close_to_reference(out[rows], ref, low, name=f"out[request {b}]")
        assert_close_to_reference(lse[rows], ref_lse, low_lse, name=f"lse[request {b}]")
        if ks[b].shape[0] == 0:  # an empty request: zeros and an empty LSE, exactly
            assert torch.all(out[rows] == 0) and torch.all(lse[rows] == float("-inf"))


def _sub_table(indptr, indices, last, i):
    """The page table of request i alone."""
    a, b = int(indptr[i]), int(indptr[i + 1])
    i32 = dict(dtype=torch.int32, device=DEVICE)
    return torch.tensor([0, b - a], **i32), indices[a:b].clone(), last[i:i + 1].clone()


@_SETTINGS
@given(_batch(prefill=False))
def test_property_batch_decode(case):
    gen = torch.Generator().manual_seed(case["seed"])
    kv_lens, ps, hkv, dtype, layout = case["kv_lens"], case["page_size"], case["hkv"], case["dtype"], case["layout"]
    hq = hkv * case["group"]
    batch = len(kv_lens)
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, ps, hkv, D, dtype, DEVICE, layout, generator=gen)
    q = torch.randn(batch, hq, D, generator=gen).to(dtype).to(DEVICE)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(), kv_layout=layout)
    w.plan(indptr, indices, last, hq, hkv, D, ps, q_data_type=dtype, **_split_kwargs(case["split"]))
    out = poisoned((batch, hq, D), dtype)
    lse = poisoned((batch, hq), torch.float32)
    w.run(q, cache, out=out, lse=lse)
    _check_rows(out, lse, q, ks, vs, [1] * batch, dtype, causal=False)
    if case["split"] is None or batch == 1:
        return
    # Batch invariance: with no split or a fixed split size, each request alone gives the same bits.
    for i in range(batch):
        sub_indptr, sub_indices, sub_last = _sub_table(indptr.cpu(), indices, last, i)
        wi = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(), kv_layout=layout)
        wi.plan(sub_indptr, sub_indices, sub_last, hq, hkv, D, ps, q_data_type=dtype, **_split_kwargs(case["split"]))
        oi, li = wi.run(q[i:i + 1], cache, return_lse=True)
        assert torch.equal(oi, out[i:i + 1]), f"request {i}: batched output differs from the request run alone"
        assert torch.equal(li, lse[i:i + 1]), f"request {i}: batched lse differs from the request run alone"


@_SETTINGS
@given(_batch(prefill=True))
def test_property_batch_paged_prefill(case):
    gen = torch.Generator().manual_seed(case["seed"])
    kv_lens, qo_lens, ps, hkv = case["kv_lens"], case["qo_lens"], case["page_size"], case["hkv"]
    dtype, layout, causal = case["dtype"], case["layout"], case["causal"]
    hq = hkv * case["group"]
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, ps, hkv, D, dtype, DEVICE, layout, generator=gen)
    total_q = sum(qo_lens)
    q = torch.randn(total_q, hq, D, generator=gen).to(dtype).to(DEVICE)
    qo_ptr = [0]
    for n in qo_lens:
        qo_ptr.append(qo_ptr[-1] + n)
    qo_indptr = torch.tensor(qo_ptr, dtype=torch.int32, device=DEVICE)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace(), kv_layout=layout)
    w.plan(qo_indptr, indptr, indices, last, hq, hkv, D, ps, causal=causal, q_data_type=dtype,
           **_split_kwargs(case["split"]))
    out = poisoned((total_q, hq, D), dtype)
    lse = poisoned((total_q, hq), torch.float32)
    w.run(q, cache, out=out, lse=lse)
    _check_rows(out, lse, q, ks, vs, qo_lens, dtype, causal)
    if case["split"] is None or len(kv_lens) == 1:
        return
    for i, n in enumerate(qo_lens):
        if n == 0:
            continue
        sub_indptr, sub_indices, sub_last = _sub_table(indptr.cpu(), indices, last, i)
        wi = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace(), kv_layout=layout)
        wi.plan(torch.tensor([0, n], dtype=torch.int32, device=DEVICE), sub_indptr, sub_indices, sub_last, hq, hkv, D,
                ps, causal=causal, q_data_type=dtype, **_split_kwargs(case["split"]))
        oi, li = wi.run(q[qo_ptr[i]:qo_ptr[i + 1]], cache, return_lse=True)
        assert torch.equal(oi, out[qo_ptr[i]:qo_ptr[i + 1]]), f"request {i}: batched output differs from alone"
        assert torch.equal(li, lse[qo_ptr[i]:qo_ptr[i + 1]]), f"request {i}: batched lse differs from alone"


@pytest.mark.parametrize("prefill", [False, True], ids=["decode", "prefill"])
def test_property_strategy_reaches_the_edges(prefill):
    """The strategies do generate the edge cases the properties are about (so a shrunk strategy
    cannot silently stop testing them): empty requests, one-token requests, several requests."""
    seen = dict(empty=False, one=False, multi=False, split=False)

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(_batch(prefill=prefill))
    def collect(case):
        seen["empty"] |= 0 in case["kv_lens"]
        seen["one"] |= 1 in case["kv_lens"]
        seen["multi"] |= len(case["kv_lens"]) > 1
        seen["split"] |= case["split"] not in (None, -1)

    collect()
    assert all(seen.values()), seen
