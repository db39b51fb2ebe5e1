"""append_paged_kv_cache, get_batch_indices_positions, get_seq_lens: exact against references; the
append must write exactly the appended slots and leave every other byte of the cache unchanged."""

import pytest
import torch

import flashinfer_triton as flashinfer
from tests.helpers import DEVICE, LOW_DTYPES, ON_GPU, gpu_or_cpu, requires_gpu
from tests.reference import page_cascade as ref

I32 = dict(dtype=torch.int32, device=DEVICE)


def _batch(page_size, batch_size, max_old, max_new, spare_pages=7):
    """A random page table after an append: old + new rows per request, pages drawn at random
    (non-contiguous) from a larger pool. Returns the table and the append indptr."""
    old = torch.randint(0, max_old + 1, (batch_size,))
    new = torch.randint(0, max_new + 1, (batch_size,))
    new[0] = max(int(new[0]), 1)
    if batch_size > 2:
        old[1], new[1] = 0, 0  # an empty request: no pages, last_page_len 0
    seq = old + new
    num_pages = (seq + page_size - 1) // page_size
    total_pages = int(num_pages.sum()) + spare_pages
    kv_indptr = torch.cat([torch.zeros(1, dtype=torch.long), num_pages.cumsum(0)])
    kv_indices = torch.randperm(total_pages)[: int(num_pages.sum())]
    last = torch.where(seq > 0, (seq - 1) % page_size + 1, torch.zeros_like(seq))
    append_indptr = torch.cat([torch.zeros(1, dtype=torch.long), new.cumsum(0)])
    return dict(
        total_pages=total_pages,
        kv_indptr=kv_indptr.to(**I32),
        kv_indices=kv_indices.to(**I32),
        kv_last_page_len=last.to(**I32),
        append_indptr=append_indptr.to(**I32),
        seq_lens=seq.to(**I32),
        nnz=int(new.sum()),
    )


def _cache(total_pages, page_size, h, d, dtype, layout, form):
    shape = (total_pages, page_size, h, d) if layout == "NHD" else (total_pages, h, page_size, d)
    if form == "5d":
        c = torch.randn(shape[0], 2, *shape[1:], device=DEVICE).to(dtype)
        return c, (c[:, 0], c[:, 1])
    k, v = torch.randn(shape, device=DEVICE).to(dtype), torch.randn(shape, device=DEVICE).to(dtype)
    return (k, v), (k, v)


def _bits(t):
    return t.contiguous().view(torch.uint8) if t.element_size() == 1 else t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32)


def _run_append(page_size, layout, form, cache_dtype, append_dtype, h, d, batch_size=5, max_old=gpu_or_cpu(20, 700),
                max_new=gpu_or_cpu(9, 300), noncontig_append=False):
    t = _batch(page_size, batch_size, max_old, max_new)
    batch_indices, positions = flashinfer.get_batch_indices_positions(t["append_indptr"], t["seq_lens"], t["nnz"])
    paged, (k_cache, v_cache) = _cache(t["total_pages"], page_size, h, d, cache_dtype, layout, form)
    if noncontig_append:
        k = torch.randn(t["nnz"], h + 1, d, device=DEVICE).to(append_dtype)[:, 1:]
        v = torch.randn(t["nnz"], 2 * h, d, device=DEVICE).to(append_dtype)[:, 1::2]
    else:
        k = torch.randn(t["nnz"], h, d, device=DEVICE).to(append_dtype)
        v = torch.randn(t["nnz"], h, d, device=DEVICE).to(append_dtype)
    if cache_dtype != append_dtype and not ON_GPU:
        # Triton 3.9's interpreter rounds fp16 -> fp8e4nv wrongly (half away from zero, and no carry
        # into the exponent: 31.7 -> 16); the GPU converts round-to-nearest-even. On the CPU tier the
        # converting path is checked with values that fp8 represents exactly.
        k, v = k.to(cache_dtype).to(append_dtype), v.to(cache_dtype).to(append_dtype)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    ref.append_paged_kv_cache(k, v, batch_indices, positions, want_k, want_v, t["kv_indices"], t["kv_indptr"], layout)
    flashinfer.append_paged_kv_cache(k, v, batch_indices, positions, paged, t["kv_indices"], t["kv_indptr"],
                                     t["kv_last_page_len"], kv_layout=layout)
    # Bitwise over the whole cache: the appended slots match, every other slot is untouched.
    assert torch.equal(_bits(k_cache), _bits(want_k)), "k_cache differs"
    assert torch.equal(_bits(v_cache), _bits(want_v)), "v_cache differs"
    assert t["nnz"] > 0 and not torch.equal(_bits(k_cache), _bits(want_k.clone().fill_(0)))


@pytest.mark.parametrize("form", ["5d", "tuple"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_append_paged_kv_cache(page_size, layout, form):
    dtype = LOW_DTYPES[0]
    _run_append(page_size, layout, form, dtype, dtype, h=3, d=gpu_or_cpu(40, 128))


@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_append_dtypes(dtype):
    _run_append(5, "HND", "5d", dtype, dtype, h=2, d=gpu_or_cpu(24, 256))


@pytest.mark.parametrize("append_dtype", [torch.float8_e4m3fn] + ([torch.float16, torch.bfloat16] if ON_GPU else [torch.float16]),
                         ids=lambda d: str(d).replace("torch.", ""))
def test_append_fp8_cache(append_dtype):
    _run_append(16, "NHD", "5d", torch.float8_e4m3fn, append_dtype, h=3, d=gpu_or_cpu(32, 128))


def test_append_noncontiguous_and_large_pages():
    _run_append(gpu_or_cpu(37, 128), "NHD", "tuple", LOW_DTYPES[0], LOW_DTYPES[0], h=2, d=16, noncontig_append=True,
                batch_size=3, max_old=gpu_or_cpu(40, 900), max_new=gpu_or_cpu(40, 300))


def test_get_batch_indices_positions_docstring_example():
    append_indptr = torch.tensor([0, 1, 3, 6, 10], **I32)
    seq_lens = torch.tensor([5, 5, 5, 5], device=DEVICE)  # int64, as in FlashInfer's example
    b, p = flashinfer.get_batch_indices_positions(append_indptr, seq_lens, 10)
    assert b.dtype == torch.int32 and p.dtype == torch.int32
    assert b.tolist() == [0, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    assert p.tolist() == [4, 3, 4, 2, 3, 4, 1, 2, 3, 4]


@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_get_batch_indices_positions_and_seq_lens(page_size):
    t = _batch(page_size, gpu_or_cpu(6, 300), gpu_or_cpu(300, 3000), gpu_or_cpu(300, 3000))  # rows > one block of 128
    seq_lens = flashinfer.get_seq_lens(t["kv_indptr"], t["kv_last_page_len"], page_size)
    assert seq_lens.dtype == torch.int32
    assert torch.equal(seq_lens.cpu(), ref.seq_lens(t["kv_indptr"], t["kv_last_page_len"], page_size).cpu())
    assert torch.equal(seq_lens, t["seq_lens"])
    b, p = flashinfer.get_batch_indices_positions(t["append_indptr"], seq_lens, t["nnz"])
    want_b, want_p = ref.batch_indices_positions(t["append_indptr"], seq_lens, t["nnz"])
    assert torch.equal(b.cpu(), want_b) and torch.equal(p.cpu(), want_p)


def test_page_errors():
    t = _batch(4, 3, 6, 5)
    b, p = flashinfer.get_batch_indices_positions(t["append_indptr"], t["seq_lens"], t["nnz"])
    paged, _ = _cache(t["total_pages"], 4, 2, 16, torch.float16, "NHD", "5d")
    k = torch.randn(t["nnz"], 2, 16, device=DEVICE).half()
    args = (k, k, b, p, paged, t["kv_indices"], t["kv_indptr"], t["kv_last_page_len"])

    def call(*, i=None, value=None, layout="NHD"):
        a = list(args)
        if i is not None:
            a[i] = value
        flashinfer.append_paged_kv_cache(*a, kv_layout=layout)

    with pytest.raises(ValueError, match="kv_layout"):
        call(layout="NDH")
    with pytest.raises(ValueError, match="wrong kv_layout"):
        call(layout="HND")
    for i, name in ((2, "batch_indices"), (3, "positions"), (5, "kv_indices"), (6, "kv_indptr"), (7, "kv_last_page_len")):
        with pytest.raises(TypeError, match=name):
            call(i=i, value=args[i].long())
    with pytest.raises(ValueError, match="positions"):
        call(i=3, value=p[:-1])
    with pytest.raises(ValueError, match="kv_last_page_len"):
        call(i=7, value=t["kv_last_page_len"][:-1])
    with pytest.raises(TypeError, match="append_key"):
        call(i=0, value=k.float())
    with pytest.raises(ValueError, match="append_value"):
        call(i=1, value=k[:, :1])
    with pytest.raises(TypeError, match="append_value"):
        call(i=1, value=k.to(torch.float8_e4m3fn))
    with pytest.raises(ValueError, match="dim 1"):
        call(i=4, value=torch.cat([paged, paged[:, :1]], 1))
    with pytest.raises(TypeError, match="paged_kv_cache"):
        call(i=4, value=[paged])
    with pytest.raises(TypeError, match="v_cache"):
        call(i=4, value=(paged[:, 0], paged[:, 1].float()))
    with pytest.raises(ValueError, match="last dimension"):
        call(i=0, value=torch.randn(t["nnz"], 2, 32, device=DEVICE).half()[..., ::2])
    with pytest.raises(TypeError, match="seq_lens"):
        flashinfer.get_batch_indices_positions(t["append_indptr"], t["seq_lens"].float(), t["nnz"])
    with pytest.raises(ValueError, match="seq_lens"):
        flashinfer.get_batch_indices_positions(t["append_indptr"], t["seq_lens"][:-1], t["nnz"])
    with pytest.raises(TypeError, match="kv_indptr"):
        flashinfer.get_seq_lens(t["kv_indptr"].long(), t["kv_last_page_len"], 4)
    with pytest.raises(ValueError, match="page_size"):
        flashinfer.get_seq_lens(t["kv_indptr"], t["kv_last_page_len"], 0)


def test_append_compile():
    """A fullgraph trace through the mutating op writes the 5-D cache in place, as eager does."""
    t = _batch(5, 3, 8, 6)
    b, p = flashinfer.get_batch_indices_positions(t["append_indptr"], t["seq_lens"], t["nnz"])
    paged, _ = _cache(t["total_pages"], 5, 2, 16, LOW_DTYPES[-1], "HND", "5d")
    k = torch.randn(t["nnz"], 2, 16, device=DEVICE).to(paged.dtype)
    v = torch.randn(t["nnz"], 2, 16, device=DEVICE).to(paged.dtype)
    want = paged.clone()
    flashinfer.append_paged_kv_cache(k, v, b, p, want, t["kv_indices"], t["kv_indptr"], t["kv_last_page_len"], "HND")

    def f(k, v, b, p, cache, ind, indptr, last):
        flashinfer.append_paged_kv_cache(k, v, b, p, cache, ind, indptr, last, kv_layout="HND")
        return cache.sum()

    backend = "inductor" if ON_GPU else "aot_eager"
    torch.compile(f, fullgraph=True, backend=backend)(k, v, b, p, paged, t["kv_indices"], t["kv_indptr"], t["kv_last_page_len"])
    assert torch.equal(paged, want)


@requires_gpu
def test_page_device_mismatch():
    t = _batch(4, 3, 6, 5)
    b, p = flashinfer.get_batch_indices_positions(t["append_indptr"], t["seq_lens"], t["nnz"])
    paged, _ = _cache(t["total_pages"], 4, 2, 16, torch.float16, "NHD", "5d")
    k = torch.randn(t["nnz"], 2, 16, device=DEVICE).half()
    with pytest.raises(ValueError, match="kv_indices"):
        flashinfer.append_paged_kv_cache(k, k, b, p, paged, t["kv_indices"].cpu(), t["kv_indptr"], t["kv_last_page_len"])
    with pytest.raises(ValueError, match="paged_kv_cache"):
        flashinfer.append_paged_kv_cache(k, k, b, p, paged.cpu(), t["kv_indices"], t["kv_indptr"], t["kv_last_page_len"])
