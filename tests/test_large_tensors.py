"""GPU tier (issue 13): 64-bit address arithmetic. One bf16 paged KV cache of more than 2^31
elements (about 4.6 GB); requests whose pages lie past element 2^31 (the last page of the cache
among them), straddle it, or lie at its start are read by batch decode and paged prefill and
written by ``append_paged_kv_cache``. A kernel that forms ``page_id * page_stride`` (or a K/V,
head or slot offset) in int32 reads or writes the wrong memory or faults there.

Every result is compared with (a) the float64 reference on just those pages and (b) the same
plan run on a compact copy of those pages (a cache under 2^31 elements): the answers must be
bit-equal, since the plan and the data are the same and only the addresses differ. The append
is compared exactly with the cache it must produce (every other element unchanged).

Skipped without a CUDA device (the CPU tier skips the module at collection) or with less free
GPU memory than it needs; the cache is freed at the end.
"""

import pytest
import torch

import flashinfer_triton as flashinfer
from tests.helpers import ON_GPU, assert_close_to_reference
from tests.reference.attention import attention_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not ON_GPU, reason="GPU tier: needs a CUDA/ROCm device")]

DTYPE = torch.bfloat16
PAGE, HKV, HQ, D = 16, 8, 32, 128
PAGE_ELEMS = 2 * PAGE * HKV * D  # 32768 elements a page (K and V)
BOUNDARY_PAGE = 2**31 // PAGE_ELEMS  # 65536: the first page starting at element 2^31
NUM_PAGES = BOUNDARY_PAGE + 4096  # 2.28e9 elements, 4.6 GB
NEED_BYTES = 3 * NUM_PAGES * PAGE_ELEMS * 2 + (2 << 30)  # the cache, a clone for the append check, a bool mask

# Request 0: 40 pages at the very end of the cache, in reverse order; request 1: 10 pages at its
# start (a control: correct even with 32-bit offsets); request 2: 16 pages straddling element 2^31.
PAGES = [list(range(NUM_PAGES - 1, NUM_PAGES - 41, -1)), list(range(10)),
         list(range(BOUNDARY_PAGE - 8, BOUNDARY_PAGE + 8))]
KV_LENS = [39 * PAGE + 5, 10 * PAGE - 3, 16 * PAGE]
QO_LENS = [7, 1, 20]


def _i32(values):
    return torch.tensor(values, dtype=torch.int32, device="cuda")


def _table(pages, kv_lens):
    indptr = [0]
    for p in pages:
        indptr.append(indptr[-1] + len(p))
    last = [n - (len(p) - 1) * PAGE for n, p in zip(kv_lens, pages)]
    return _i32(indptr), _i32([i for p in pages for i in p]), _i32(last)


@pytest.fixture(scope="module")
def big_cache():
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    if free < NEED_BYTES:
        pytest.skip(f"needs {NEED_BYTES / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    cache = torch.zeros(NUM_PAGES, 2, PAGE, HKV, D, dtype=DTYPE, device="cuda")
    assert cache.numel() > 2**31
    gen = torch.Generator(device="cuda").manual_seed(0)
    used = torch.tensor([i for p in PAGES for i in p], device="cuda")
    cache[used] = torch.randn(used.numel(), 2, PAGE, HKV, D, generator=gen, device="cuda").to(DTYPE)
    yield cache
    del cache, used
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def _compact(cache, layout):
    """The used pages alone (a small cache) and the page table renumbered into it."""
    ids = torch.tensor([i for p in PAGES for i in p], device="cuda")
    small = cache[ids].clone()
    if layout == "HND":
        small = small.view(small.shape[0], 2, HKV, PAGE, D)
    renumbered, start = [], 0
    for p in PAGES:
        renumbered.append(list(range(start, start + len(p))))
        start += len(p)
    return small, renumbered


def _view(cache, layout):
    # The same memory read as an HND cache: another set of strides (heads before slots) over > 2^31 elements.
    return cache if layout == "NHD" else cache.view(NUM_PAGES, 2, HKV, PAGE, D)


def _kv_of_request(cache, layout, b):
    pages = cache[torch.tensor(PAGES[b], device="cuda")]
    if layout == "HND":
        pages = pages.transpose(2, 3)
    k = pages[:, 0].reshape(-1, HKV, D)[:KV_LENS[b]]
    v = pages[:, 1].reshape(-1, HKV, D)[:KV_LENS[b]]
    return k, v


def _workspace():
    return torch.empty(256 << 20, dtype=torch.uint8, device="cuda")


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("split", [None, -1], ids=["default-split", "no-split"])
def test_decode_past_2_31_elements(big_cache, layout, split):
    cache = _view(big_cache, layout)
    gen = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(3, HQ, D, generator=gen, device="cuda").to(DTYPE)
    opts = dict(disable_split_kv=True) if split == -1 else {}
    outs = []
    small, renumbered = _compact(big_cache, layout)
    for c, pages in ((cache, PAGES), (small, renumbered)):
        w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(), kv_layout=layout)
        w.plan(*_table(pages, KV_LENS), HQ, HKV, D, PAGE, q_data_type=DTYPE, **opts)
        outs.append(w.run(q, c, return_lse=True))
        outs.append(w.run(q, (c[:, 0], c[:, 1]), return_lse=True))  # the (k, v) tuple: views of > 2^30 elements
    torch.cuda.synchronize()
    (out, lse), (out_t, lse_t), (out_s, lse_s), _ = outs
    for b in range(3):
        k, v = _kv_of_request(cache, layout, b)
        ref, ref_lse = attention_ref(q[b:b + 1], k, v)
        low, low_lse = attention_ref(q[b:b + 1], k, v, compute_dtype=DTYPE)
        assert_close_to_reference(out[b:b + 1], ref, low, name=f"{layout} out[request {b}]")
        assert_close_to_reference(lse[b:b + 1], ref_lse, low_lse.float(), name=f"{layout} lse[request {b}]")
    assert torch.equal(out, out_s) and torch.equal(lse, lse_s), "big cache and compact copy disagree"
    assert torch.equal(out, out_t) and torch.equal(lse, lse_t), "5-D cache and (k, v) tuple disagree"


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_paged_prefill_past_2_31_elements(big_cache, layout):
    cache = _view(big_cache, layout)
    gen = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(sum(QO_LENS), HQ, D, generator=gen, device="cuda").to(DTYPE)
    qo_indptr = _i32([0, QO_LENS[0], QO_LENS[0] + QO_LENS[1], sum(QO_LENS)])
    small, renumbered = _compact(big_cache, layout)
    outs = []
    for c, pages in ((cache, PAGES), (small, renumbered)):
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace(), kv_layout=layout)
        w.plan(qo_indptr, *_table(pages, KV_LENS), HQ, HKV, D, PAGE, causal=True, q_data_type=DTYPE)
        outs.append(w.run(q, c, return_lse=True))
    torch.cuda.synchronize()
    (out, lse), (out_s, lse_s) = outs
    start = 0
    for b, n in enumerate(QO_LENS):
        rows = slice(start, start + n)
        start += n
        k, v = _kv_of_request(cache, layout, b)
        ref, ref_lse = attention_ref(q[rows], k, v, causal=True)
        low, low_lse = attention_ref(q[rows], k, v, causal=True, compute_dtype=DTYPE)
        assert_close_to_reference(out[rows], ref, low, name=f"{layout} out[request {b}]")
        assert_close_to_reference(lse[rows], ref_lse, low_lse.float(), name=f"{layout} lse[request {b}]")
    assert torch.equal(out, out_s) and torch.equal(lse, lse_s), "big cache and compact copy disagree"


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_append_past_2_31_elements(big_cache, layout):
    """Append 1-20 rows to each request (filling the last page and starting new ones, all past
    element 2^31 for requests 0 and 2's upper half); the whole cache must then equal the expected
    one exactly: the rows in their slots, every other element unchanged."""
    cache = _view(big_cache, layout)
    new = [20, 3, 9]
    # Each request grows into spare pages taken from the end region, past element 2^31.
    spare = iter(range(NUM_PAGES - 41, NUM_PAGES - 200, -1))
    pages = [list(p) for p in PAGES]
    seq = []
    for b, n in enumerate(new):
        total = KV_LENS[b] + n
        while len(pages[b]) * PAGE < total:
            pages[b].append(next(spare))
        seq.append(total)
    indptr, indices, last = _table(pages, seq)
    append_indptr = _i32([0, new[0], new[0] + new[1], sum(new)])
    batch_indices, positions = flashinfer.get_batch_indices_positions(append_indptr, _i32(seq), sum(new))
    gen = torch.Generator(device="cuda").manual_seed(3)
    k = torch.randn(sum(new), HKV, D, generator=gen, device="cuda").to(DTYPE)
    v = torch.randn(sum(new), HKV, D, generator=gen, device="cuda").to(DTYPE)
    touched = torch.tensor(sorted({pages[b][p // PAGE] for b, p in zip(batch_indices.tolist(), positions.tolist())}),
                           device="cuda")
    before = cache[touched].clone()  # restored at the end, for the other tests
    expected = cache.clone()
    for i, (b, p) in enumerate(zip(batch_indices.tolist(), positions.tolist())):
        page, slot = pages[b][p // PAGE], p % PAGE
        if layout == "NHD":
            expected[page, 0, slot], expected[page, 1, slot] = k[i], v[i]
        else:
            expected[page, 0, :, slot], expected[page, 1, :, slot] = k[i], v[i]
    assert any(pages[b][p // PAGE] >= BOUNDARY_PAGE for b, p in zip(batch_indices.tolist(), positions.tolist()))
    try:
        flashinfer.append_paged_kv_cache(k, v, batch_indices, positions, cache, indices, indptr, last, kv_layout=layout)
        torch.cuda.synchronize()
        if not torch.equal(cache.view(torch.int16), expected.view(torch.int16)):
            diff = (cache.view(torch.int16) != expected.view(torch.int16)).flatten().nonzero()
            pytest.fail(f"{layout}: {diff.numel()} elements differ from the expected cache, first flat offsets "
                        f"{diff[:5].flatten().tolist()}")
    finally:
        del expected
        cache[touched] = before
